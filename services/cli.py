"""The ``bodyserve`` command line."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from shared.settings import get_settings

app = typer.Typer(help="bodyserve: 3D human understanding, served.", no_args_is_help=True)
console = Console()


def _mount_subapps() -> None:
    from services.cli_stack import stack_app, triton_app
    from services.trainer.cli import train_app

    app.add_typer(stack_app, name="stack", help="Start, stop or inspect the local stack.")
    app.add_typer(triton_app, name="triton", help="Run Triton with bodyserve's models.")
    app.add_typer(train_app, name="train", help="Train models (pose prior) and publish them.")


_mount_subapps()


@app.command()
def setup() -> None:
    """Build Anny's cache (once, about a minute) and prepare Triton's backend folder."""
    from services.triton_server import prepare_backend_dir
    from shared.bodies.anny_model import build_anny_cache

    with console.status("building Anny's cache (first time only: about a minute)"):
        started = time.perf_counter()
        path = build_anny_cache()
    console.print(f"Anny cache ready at {path} ({time.perf_counter() - started:.0f} s)")
    try:
        backend_dir = prepare_backend_dir(get_settings())
        console.print(f"Triton backends ready at {backend_dir}")
    except (ImportError, FileNotFoundError) as exc:
        console.print(f"[yellow]Triton not prepared ({exc}); in-process use still works[/]")


def _photos(photos: list[Path]) -> list[Path]:
    missing = [p for p in photos if not p.is_file()]
    if missing:
        raise typer.BadParameter(f"no such file: {', '.join(map(str, missing))}")
    return photos


def _print_people(name: str, result: dict, folder: Path) -> None:
    table = Table(title=f"{name}: {len(result['people'])} people", title_justify="left")
    for column in ("person", "score", "reprojection error (px)", "hands"):
        table.add_column(column)
    for person in result["people"]:
        table.add_row(
            str(person["index"]),
            f"{person['detection_score']:.2f}",
            f"{person['reprojection_error_px']:.1f}",
            ", ".join(person["hands_detected"]) or "-",
        )
    console.print(table)
    if result.get("reason"):
        console.print(f"  {result['reason']}")
    for artifact in sorted(folder.iterdir()):
        console.print(f"  wrote {artifact}")


@app.command()
def recover(
    photos: Annotated[list[Path], typer.Argument(help="One or more photos.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")] = Path("out"),
    max_people: int = 4,
    outputs: str = "glb,overlay,npz,json",
    iterations: int = 60,
    seed: int = 0,
    hypotheses: Annotated[
        int, typer.Option(help="Also sample N bodies per person (spread.png with overlay).")
    ] = 1,
) -> None:
    """Recover 3D bodies from photos, in this process (no server needed)."""
    from shared.inference import InProcessBackend
    from shared.io.images import decode_image, exif_focal_length_px
    from shared.pipeline.mesh_recovery import recover as run
    from shared.schemas import MeshRecoveryOptions

    settings = get_settings()
    options = MeshRecoveryOptions(
        max_people=max_people,
        outputs=[o.strip() for o in outputs.split(",")],
        iterations=iterations,
        seed=seed,
        hypotheses=hypotheses,
    )
    backend = InProcessBackend()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        overall = bar.add_task("photos", total=len(photos))
        for photo in _photos(photos):
            step = bar.add_task(photo.name, total=1.0)
            data = photo.read_bytes()
            image = decode_image(
                data,
                max_bytes=settings.max_upload_bytes,
                max_pixels=settings.max_image_pixels,
                max_side=settings.max_image_side,
            )

            def report(
                fraction: float, message: str, step: TaskID = step, label: str = photo.name
            ) -> None:
                bar.update(step, completed=fraction, description=f"{label}: {message}")

            focal = exif_focal_length_px(data, image.shape[1], image.shape[0])
            output = run(image, options, backend, report, focal)
            folder = out / photo.stem
            folder.mkdir(parents=True, exist_ok=True)
            for name, data in output.artifacts.items():
                (folder / name).write_bytes(data)
            bar.update(step, completed=1.0, description=f"{photo.name}: done")
            bar.advance(overall)
            bar.console.print()
            _print_people(photo.name, output.result.model_dump(mode="json"), folder)


@app.command()
def submit(
    photos: Annotated[list[Path], typer.Argument(help="One or more photos.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")] = Path("out"),
    url: Annotated[str | None, typer.Option(help="Gateway URL.")] = None,
    max_people: int = 4,
    outputs: str = "glb,overlay,npz,json",
    timeout: float = 120.0,
) -> None:
    """Send photos to a running gateway (see `bodyserve stack up`) and download the results."""
    import httpx

    settings = get_settings()
    base = url or f"http://{settings.gateway_host}:{settings.gateway_port}"
    with httpx.Client(base_url=base, timeout=timeout + 10) as client:
        for photo in _photos(photos):
            started = time.perf_counter()
            with console.status(f"{photo.name}: queued at {base}"):
                reply = client.post(
                    "/v1/mesh-recovery",
                    params={"wait": min(timeout, settings.max_wait_s)},
                    files={"image": (photo.name, photo.read_bytes())},
                    data={"max_people": str(max_people), "outputs": outputs},
                )
                if reply.status_code >= 400:
                    raise typer.Exit(_fail(photo, reply))
                job_url = reply.headers["Location"]
                body = reply.json()
                while reply.status_code == 202:
                    time.sleep(0.5)
                    status = client.get(job_url).json()
                    if status["status"] in ("succeeded", "failed", "cancelled"):
                        body = {"status": status["status"], "error": status["error"]}
                        if status["status"] == "succeeded":
                            body["result"] = client.get(job_url + "/result").json()
                        break
                    if time.perf_counter() - started > timeout:
                        console.print(
                            f"[red]{photo.name}: still {status['status']} after {timeout} s"
                        )
                        raise typer.Exit(1)
            if body["status"] != "succeeded":
                console.print(f"[red]{photo.name}: {body['status']}: {body.get('error')}")
                raise typer.Exit(1)
            result = body["result"]
            folder = out / photo.stem
            folder.mkdir(parents=True, exist_ok=True)
            for name in result["artifacts"]:
                (folder / name).write_bytes(client.get(f"{job_url}/artifacts/{name}").content)
            if "result.json" not in result["artifacts"]:
                (folder / "result.json").write_text(json.dumps(result, indent=1))
            console.print(f"{photo.name}: done in {time.perf_counter() - started:.2f} s via {base}")
            _print_people(photo.name, result, folder)


def _fail(photo: Path, reply: Any) -> int:
    console.print(f"[red]{photo.name}: {reply.status_code}: {reply.json().get('detail')}")
    return 1


if __name__ == "__main__":
    app()
