"""The ``bodyserve`` command line."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.common.keys import KeyNotFound, key_store
from services.common.retention import cleanup as run_cleanup
from services.common.stores import artifact_store, job_store
from services.common.webhook_endpoints import check_webhook_url
from services.tools.dataset_commands import dataset_app
from services.tools.stack_commands import stack_app, triton_app
from services.tools.triton_launcher import prepare_backend_dir
from services.trainer.train_prior import train_app
from shared.io.images import decode_image, exif_focal_length_px
from shared.schemas.mesh_recovery import MeshRecoveryOptions
from shared.settings import get_settings

app = typer.Typer(help="bodyserve: 3D human understanding, served.", no_args_is_help=True)
keys_app = typer.Typer(
    help="API keys of the gateway (BODYSERVE_AUTH_MODE=keys), in BODYSERVE_REDIS_URL.",
    no_args_is_help=True,
)
console = Console()


def _mount_subapps() -> None:

    app.add_typer(stack_app, name="stack", help="Start, stop or inspect the local stack.")
    app.add_typer(triton_app, name="triton", help="Run Triton with bodyserve's models.")
    app.add_typer(train_app, name="train", help="Train models (pose prior) and publish them.")
    app.add_typer(dataset_app, name="dataset", help="Make synthetic datasets in-process.")
    app.add_typer(
        keys_app, name="keys", help="Issue, list and revoke API keys; set their webhooks."
    )


_mount_subapps()


# --------------------------------------------------------------------------- API keys


def _limit(value: int | None, default: int) -> str:
    """A key's limit as shown: its own, or the settings' default (0: unlimited)."""
    effective = default if value is None else value
    text = "unlimited" if effective == 0 else str(effective)
    return f"{text} (default)" if value is None else text


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="Who or what uses the key (a team, a service).")],
    rate_per_minute: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Job submissions per minute; 0: unlimited. "
            "Default: BODYSERVE_KEY_RATE_PER_MINUTE at each request.",
        ),
    ] = None,
    max_concurrent: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Jobs queued or running at once; 0: unlimited. "
            "Default: BODYSERVE_KEY_MAX_CONCURRENT at each request.",
        ),
    ] = None,
    webhook_url: Annotated[
        str | None,
        typer.Option(
            help="POST a signed event here when each of the key's jobs ends (http or https); "
            "prints the signing secret once."
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print the key (and webhook secret) as JSON on stdout."),
    ] = False,
) -> None:
    """Issue a key and print it once (only its hash is stored)."""

    if webhook_url is not None:
        try:
            check_webhook_url(webhook_url)  # before the key exists: no key with a bad URL
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--webhook-url") from None
    store = key_store()
    key, token = store.create(name, rate_per_minute=rate_per_minute, max_concurrent=max_concurrent)
    secret = None
    if webhook_url is not None:
        key, secret = store.set_webhook(key.id, webhook_url)
    if as_json:
        typer.echo(
            json.dumps(
                {**key.__dict__, "key": token, "webhook_secret": secret}, indent=2, default=str
            )
        )
        return
    settings = get_settings()
    # The token alone on stdout (KEY=$(bodyserve keys create ci)); the rest on stderr.
    err = Console(stderr=True)
    err.print(
        f"key {key.id} ({key.name}): {_limit(key.rate_per_minute, settings.key_rate_per_minute)} "
        f"submissions/min, {_limit(key.max_concurrent, settings.key_max_concurrent)} concurrent "
        "jobs. Store it now: it is not shown again. Use: Authorization: Bearer <key>"
    )
    if secret is not None:
        err.print(_webhook_secret_message(key.webhook_url, secret), soft_wrap=True)
    typer.echo(token)


def _webhook_secret_message(url: str | None, secret: str) -> str:
    return (
        f"webhook: {url}, signed with {secret} (its secret: store it with the receiver "
        'now, it is not shown again; README "Webhooks" shows how to verify)'
    )


@keys_app.command("webhook")
def keys_webhook(
    key_id: Annotated[str, typer.Argument(help="The key's id (keys list).")],
    url: Annotated[
        str | None, typer.Argument(help="Where to POST its jobs' events (http or https).")
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Send no more events.")] = False,
    rotate_secret: Annotated[
        bool, typer.Option("--rotate-secret", help="Replace the signing secret (printed once).")
    ] = False,
) -> None:
    """Set, change or clear where a key's job events go.

    A new signing secret is printed once when the key had none (or with --rotate-secret);
    changing the URL keeps the secret."""

    if clear == (url is not None):
        raise typer.BadParameter("give either a URL or --clear", param_hint="URL")
    store = key_store()
    try:
        if url is None:
            key = store.clear_webhook(key_id)
            console.print(f"key {key.id} ({key.name}): no webhook (queued events are skipped)")
            return
        key, secret = store.set_webhook(key_id, url, rotate_secret=rotate_secret)
    except KeyNotFound:
        console.print(f"[red]no API key with id {key_id!r} (see `bodyserve keys list`)")
        raise typer.Exit(1) from None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="URL") from None
    if secret is None:
        console.print(f"key {key.id} ({key.name}): webhook {key.webhook_url}, same secret")
    else:
        # The secret alone on stdout (SECRET=$(bodyserve keys webhook ID URL)).
        Console(stderr=True).print(_webhook_secret_message(key.webhook_url, secret))
        typer.echo(secret)


@keys_app.command("list")
def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Every key: id, name, created, revoked, limits (never the secrets)."""

    keys = key_store().list()
    if as_json:
        typer.echo(json.dumps([key.__dict__ for key in keys], indent=2))
        return
    settings = get_settings()
    table = Table(title=f"{len(keys)} API keys", title_justify="left")
    columns = ("id", "name", "created", "state", "submissions/min", "concurrent jobs", "webhook")
    for column in columns:
        table.add_column(column)
    for key in keys:
        table.add_row(
            key.id,
            key.name,
            time.strftime("%Y-%m-%d %H:%M", time.localtime(key.created_at)),
            "revoked" if key.revoked else "active",
            _limit(key.rate_per_minute, settings.key_rate_per_minute),
            _limit(key.max_concurrent, settings.key_max_concurrent),
            key.webhook_url or "-",
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (keys list).")]) -> None:
    """Revoke a key at once: its requests get 401 (jobs it already queued still run)."""

    try:
        key = key_store().revoke(key_id)
    except KeyNotFound:
        console.print(f"[red]no API key with id {key_id!r} (see `bodyserve keys list`)")
        raise typer.Exit(1) from None
    console.print(f"revoked key {key.id} ({key.name})")


# --------------------------------------------------------------------------- retention


@app.command()
def cleanup(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be deleted; delete nothing.")
    ] = False,
    grace_s: Annotated[
        int | None,
        typer.Option(
            min=0, help="Keep folders younger than this. Default: BODYSERVE_CLEANUP_GRACE_S."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Delete the artifacts (uploads, outputs) of jobs whose record has expired or was
    deleted, in BODYSERVE_ARTIFACT_DIR; the workers also do it every
    BODYSERVE_CLEANUP_INTERVAL_S."""

    settings = get_settings()
    grace = settings.cleanup_grace_s if grace_s is None else grace_s
    report = run_cleanup(job_store(), artifact_store(), grace, dry_run=dry_run)
    if as_json:
        data = {
            "dry_run": dry_run,
            "deleted": [folder.__dict__ for folder in report.deleted],
            "deleted_bytes": report.deleted_bytes,
            "kept_with_record": report.kept_with_record,
            "kept_too_new": report.kept_too_new,
        }
        typer.echo(json.dumps(data, indent=2))
        return
    verb = "would delete" if dry_run else "deleted"
    for folder in report.deleted:
        typer.echo(f"{verb} {folder.job_id}  {folder.bytes} bytes, {folder.age_s / 3600:.1f} h old")
    typer.echo(
        f"{verb} {len(report.deleted)} folders ({report.deleted_bytes} bytes) in "
        f"{settings.artifacts_path}; kept {report.kept_with_record} with a job record and "
        f"{report.kept_too_new} younger than {grace} s"
    )


# --------------------------------------------------------------------------- pipeline


@app.command()
def setup() -> None:
    """Build Anny's cache (once, about a minute) and prepare Triton's backend folder."""
    # Model libraries load in the commands that use them: `bodyserve keys ...` and --help stay fast.
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
    # torch, Anny and mediapipe load here, not for every command.
    from shared.inference.local import InProcessBackend
    from shared.pipeline.mesh_recovery import recover as run

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
    api_key: Annotated[
        str | None,
        typer.Option(envvar="BODYSERVE_API_KEY", help="API key (not needed in open mode)."),
    ] = None,
    max_people: int = 4,
    outputs: str = "glb,overlay,npz,json",
    timeout: float = 120.0,
) -> None:
    """Send photos to a running gateway (see `bodyserve stack up`) and download the results."""

    settings = get_settings()
    base = url or f"http://{settings.gateway_host}:{settings.gateway_port}"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=base, timeout=timeout + 10, headers=headers) as client:
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
