"""Synthetic dataset throughput and label exactness: prints tables, optionally writes JSON.

    python bench/datasets.py throughput --images 256 --json out/bench_datasets.json
    python bench/datasets.py job --images 2000 --workers 2 --json out/bench_dataset_job.json

Per resolution (256² and 512²) and number of worker processes (1 and 2): labelled images per
second of the dataset maker (poses drawn, Anny posed, rendered, labelled, encoded, packed),
as a dataset worker runs it, each process making its own chunks of one spec. ``--check N``
also checks N samples' labels against their meshes (``shared/datasets/check.py``).
Poses come from ``uniform`` (no model server needed); the prior source adds one batched call
to the pose prior per 32 images.

``job``: the whole path on a local stack it starts (Redis, Triton, the gateway, ``--workers``
dataset worker processes): ``POST /v1/datasets`` with poses from the prior, then every shard is
downloaded, opened with the webdataset library and every sample's labels checked against its
mesh; the contact sheet is saved next to the JSON for a look.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False)


def _make(args: tuple[int, int, int, int, str]) -> float:
    """Make chunks ``range(first, count, step)`` of a spec; returns the seconds taken."""
    resolution, images, first, step, out = args
    import torch

    torch.set_num_threads(1)
    from shared.datasets.generate import DatasetMaker, FolderSink
    from shared.datasets.spec import DatasetSpec

    spec = DatasetSpec(
        count=images, resolution=resolution, shard_size=32, poses={"source": "uniform"}
    )
    maker = DatasetMaker(spec)
    maker.samples([0])  # warm up: Anny, the GL context
    started = time.perf_counter()
    for chunk in range(first, spec.chunks, step):
        maker.make_chunk(FolderSink(Path(out)), chunk)
    return time.perf_counter() - started


@app.command()
def throughput(
    images: int = typer.Option(256, help="Images per measurement."),
    check: int = typer.Option(0, help="Check this many samples' labels (0: none)."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the figures here."),
) -> None:
    os.environ.setdefault("BODYSERVE_TORCH_THREADS", "1")
    rows = []
    context = multiprocessing.get_context("spawn")
    for resolution in (256, 512):
        for workers in (1, 2):
            with tempfile.TemporaryDirectory() as out:
                jobs = [(resolution, images, w, workers, out) for w in range(workers)]
                started = time.perf_counter()
                with context.Pool(workers) as pool:
                    busy = pool.map(_make, jobs)
                wall = time.perf_counter() - started
                rate = images / max(busy)
                rows.append(
                    {
                        "resolution": resolution,
                        "workers": workers,
                        "images": images,
                        "images_per_s": round(rate, 1),
                        "per_worker": round(rate / workers, 1),
                        "wall_s": round(wall, 1),
                    }
                )
    table = Table(title="Synthetic datasets: labelled images per second (this machine)")
    for column in ("resolution", "workers", "images/s", "per worker"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            f"{row['resolution']}²", str(row["workers"]), str(row["images_per_s"]),
            str(row["per_worker"]),
        )  # fmt: skip
    Console().print(table)
    report: dict[str, object] = {"throughput": rows}
    if check:
        report["check"] = _check(check)
        Console().print(report["check"])
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=1))


def _check(count: int) -> dict[str, object]:
    from shared.datasets.check import check_sample
    from shared.datasets.generate import DatasetMaker
    from shared.datasets.shards import decode_record
    from shared.datasets.spec import DatasetSpec

    spec = DatasetSpec(
        count=count, resolution=256, shard_size=32, seed=1, poses={"source": "uniform"}
    )
    maker = DatasetMaker(spec)
    failed, worst = [], 0.0
    for start in range(0, count, 32):
        for record in maker.samples(list(range(start, min(start + 32, count)))):
            report = check_sample(decode_record(record), vertex_stride=8)
            worst = max(worst, report.depth_max_error_m)
            if not report.ok:
                failed.append({"key": report.key, "problems": report.problems})
    return {"samples": count, "failed": failed, "depth_max_error_mm": round(worst * 1000, 3)}


@app.command()
def job(
    images: int = typer.Option(2000, help="Images in the dataset."),
    workers: int = typer.Option(2, help="Dataset worker processes."),
    resolution: int = typer.Option(256),
    json_path: Path = typer.Option(Path("out/bench_dataset_job.json"), "--json"),
) -> None:
    import signal
    import subprocess
    import sys

    import httpx

    from services.tools.local_stack import CELERY_APP, LocalStack, StackConfig
    from shared.datasets.check import check_sample
    from shared.datasets.shards import iter_samples

    console = Console()
    with tempfile.TemporaryDirectory() as var_dir:
        stack = LocalStack(StackConfig.with_free_ports(Path(var_dir), queues=["datasets"]))
        extra: list[subprocess.Popen[bytes]] = []
        try:
            stack.up()
            for n in range(2, workers + 1):
                argv = [
                    sys.executable, "-m", "celery", "-A", CELERY_APP, "worker",
                    "-Q", "datasets,webhooks", "-c", "1", "--prefetch-multiplier", "1",
                    "-n", f"datasets{n}@%h", "--without-gossip", "--without-mingle",
                ]  # fmt: skip
                extra.append(subprocess.Popen(argv, env=stack.env(), start_new_session=True))
            spec = {"count": images, "resolution": resolution, "seed": 7, "name": "people"}
            with httpx.Client(base_url=stack.base_url, timeout=120) as client:
                reply = client.post("/v1/datasets", json=spec)
                reply.raise_for_status()
                location = reply.headers["Location"]
                started = time.perf_counter()
                while (status := client.get(location).json())["status"] in ("queued", "running"):
                    console.print(status["message"], end="\r")
                    time.sleep(2)
                seconds = time.perf_counter() - started
                if status["status"] != "succeeded":
                    raise SystemExit(f"the dataset job ended {status}")
                result = client.get(f"{location}/result").json()
                out = json_path.parent
                out.mkdir(parents=True, exist_ok=True)
                sheet = client.get(f"{location}/artifacts/contact_sheet.png").content
                (out / "dataset_contact_sheet.png").write_bytes(sheet)
                keys, failed, worst = [], [], 0.0
                checked_at = time.perf_counter()
                for name in result["shards"]:
                    shard = Path(var_dir) / name
                    shard.write_bytes(client.get(f"{location}/artifacts/{name}").content)
                    for sample in iter_samples(shard):
                        keys.append(sample["key"])
                        report = check_sample(sample, vertex_stride=16, full_image=False)
                        worst = max(worst, report.depth_max_error_m)
                        if not report.ok:
                            failed.append({"key": report.key, "problems": report.problems})
            figures = {
                "images": images,
                "workers": workers,
                "resolution": resolution,
                "job_seconds": round(seconds, 1),
                "images_per_s": round(images / seconds, 1),
                "shards": len(result["shards"]),
                "samples_read": len(keys),
                "distinct_keys": len(set(keys)),
                "complete": sorted(keys) == [f"{i:08d}" for i in range(images)],
                "labels_failed": failed,
                "depth_max_error_mm": round(worst * 1000, 3),
                "check_seconds": round(time.perf_counter() - checked_at, 1),
            }
            console.print(figures)
            json_path.write_text(json.dumps(figures, indent=1))
        finally:
            for proc in extra:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=60)
            stack.down()


if __name__ == "__main__":
    app()
