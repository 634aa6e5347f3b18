"""Mesh-recovery latency and throughput: through HTTP on the local stack vs in-process.

    python bench/mesh_recovery.py --data ../shared/data/photos [--json out/bench.json]

Prints p50/p95 latency per photo kind through HTTP (gateway → Celery worker → Triton) and for
the same pipeline called in-process, their ratio, and throughput with 1, 4 and 16 concurrent
clients. Starts its own local stack on free ports unless --url points at a running gateway.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.inference.local import InProcessBackend
from shared.io.images import decode_image
from shared.pipeline.mesh_recovery import recover
from shared.schemas.mesh_recovery import MeshRecoveryOptions

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
console = Console()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def http_once(client: httpx.Client, photo: Path) -> tuple[float, int]:
    """One job through HTTP: submit with ?wait, poll the Location if it outlasts the wait."""
    started = time.perf_counter()
    reply = client.post(
        "/v1/mesh-recovery",
        params={"wait": 60},
        files={"image": (photo.name, photo.read_bytes())},
    )
    if reply.status_code == 202:
        location = reply.headers["Location"]
        while (status := client.get(location).json())["status"] in ("queued", "running"):
            time.sleep(0.05)
        if status["status"] != "succeeded":
            raise RuntimeError(f"{photo.name}: {status}")
        result = client.get(f"{location}/result").json()
    elif reply.status_code == 200:
        result = reply.json()["result"]
    else:
        raise RuntimeError(f"{photo.name}: {reply.status_code} {reply.text[:200]}")
    return time.perf_counter() - started, len(result["people"])


def main(
    data: Annotated[Path, typer.Option(help="Folder of photos.")],
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the figures here.")
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="Running gateway; default: start a stack.")
    ] = None,
    repeats: Annotated[int, typer.Option(help="Timed runs per photo and path.")] = 3,
    throughput_jobs: Annotated[int, typer.Option(help="Jobs per concurrency level.")] = 16,
) -> None:
    photos = sorted(p for p in data.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not photos:
        raise typer.BadParameter(f"no photos in {data}")
    stack = None
    if url is None:
        from services.tools.local_stack import LocalStack, StackConfig

        var_dir = Path(tempfile.mkdtemp(prefix="bodyserve-bench-"))
        stack = LocalStack(StackConfig.with_free_ports(var_dir))
        with console.status("starting the local stack"):
            stack.up()
        url = stack.base_url
    try:
        figures = run(photos, url, repeats, throughput_jobs)
    finally:
        if stack is not None:
            stack.down()
    show(figures)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(figures, indent=1))
        console.print(f"wrote {json_path}")


def run(photos: list[Path], url: str, repeats: int, throughput_jobs: int) -> dict:
    options = MeshRecoveryOptions()
    backend = InProcessBackend()
    people: dict[str, int] = {}
    http: dict[str, list[float]] = {}
    local: dict[str, list[float]] = {}
    with httpx.Client(base_url=url, timeout=300) as client:
        # Warm both paths once (model loading is not part of a request's latency).
        http_once(client, photos[0])
        recover(decode(photos[0]), options, backend)
        for photo in photos:
            for _ in range(repeats):
                elapsed, count = http_once(client, photo)
                http.setdefault(photo.name, []).append(elapsed)
                people[photo.name] = count
                started = time.perf_counter()
                recover(decode(photo), options, backend)
                local.setdefault(photo.name, []).append(time.perf_counter() - started)
            console.print(
                f"{photo.name}: {people[photo.name]} people, HTTP "
                f"{statistics.median(http[photo.name]):.2f} s, in-process "
                f"{statistics.median(local[photo.name]):.2f} s"
            )
        throughput = {
            str(clients): measure_throughput(url, photos, clients, throughput_jobs)
            for clients in (1, 4, 16)
        }

    def summary(kind: str, names: list[str]) -> dict:
        h = [t for n in names for t in http[n]]
        i = [t for n in names for t in local[n]]
        if not h:
            return {}
        return {
            "photos": len(names),
            "http_p50_s": round(percentile(h, 50), 3),
            "http_p95_s": round(percentile(h, 95), 3),
            "inprocess_p50_s": round(percentile(i, 50), 3),
            "inprocess_p95_s": round(percentile(i, 95), 3),
            "overhead_ratio_p50": round(percentile(h, 50) / percentile(i, 50), 3),
        }

    single = [n for n, c in people.items() if c == 1]
    multi = [n for n, c in people.items() if c > 1]
    return {
        "latency": {
            "single_person": summary("single", single),
            "multi_person": summary("multi", multi),
            "all": summary("all", list(people)),
        },
        "throughput_jobs_per_s": throughput,
        "per_photo": {
            n: {"people": people[n], "http_s": http[n], "inprocess_s": local[n]} for n in people
        },
        "repeats": repeats,
    }


def decode(photo: Path):  # type: ignore[no-untyped-def]
    return decode_image(photo.read_bytes(), max_bytes=1 << 26, max_pixels=1 << 26, max_side=20000)


def measure_throughput(url: str, photos: list[Path], clients: int, jobs: int) -> dict:
    work = [photos[i % len(photos)] for i in range(max(jobs, clients))]
    started = time.perf_counter()
    with (
        httpx.Client(
            base_url=url, timeout=600, limits=httpx.Limits(max_connections=clients)
        ) as client,
        ThreadPoolExecutor(clients) as pool,
    ):
        latencies = [t for t, _ in pool.map(lambda p: http_once(client, p), work)]
    elapsed = time.perf_counter() - started
    return {
        "jobs": len(work),
        "seconds": round(elapsed, 2),
        "jobs_per_s": round(len(work) / elapsed, 3),
        "latency_p50_s": round(percentile(latencies, 50), 3),
        "latency_p95_s": round(percentile(latencies, 95), 3),
    }


def show(figures: dict) -> None:
    table = Table(title="mesh recovery latency (seconds)")
    for column in (
        "photos",
        "n",
        "HTTP p50",
        "HTTP p95",
        "in-process p50",
        "in-process p95",
        "ratio p50",
    ):
        table.add_column(column)
    for kind, row in figures["latency"].items():
        if row:
            table.add_row(
                kind,
                str(row["photos"]),
                f"{row['http_p50_s']:.2f}",
                f"{row['http_p95_s']:.2f}",
                f"{row['inprocess_p50_s']:.2f}",
                f"{row['inprocess_p95_s']:.2f}",
                f"{row['overhead_ratio_p50']:.2f}",
            )
    console.print(table)
    table = Table(title="throughput through HTTP")
    for column in ("clients", "jobs", "seconds", "jobs/s", "latency p50", "latency p95"):
        table.add_column(column)
    for clients, row in figures["throughput_jobs_per_s"].items():
        table.add_row(
            clients,
            str(row["jobs"]),
            f"{row['seconds']:.1f}",
            f"{row['jobs_per_s']:.2f}",
            f"{row['latency_p50_s']:.2f}",
            f"{row['latency_p95_s']:.2f}",
        )
    console.print(table)


if __name__ == "__main__":
    typer.run(main)
