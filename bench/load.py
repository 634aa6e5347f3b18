"""Load test of the job API: many concurrent clients, and no accepted job lost or run twice.

    python bench/load.py [--url http://127.0.0.1:8080] [--jobs 240] [--clients 32]
                         [--json out/bench_load.json] [--api-key KEY]

Starts its own local stack on free ports (and stops it afterwards) unless ``--url`` points at a
running gateway. ``--clients`` simulated clients (asyncio tasks, one HTTP connection each) share
``--jobs`` jobs; each client submits a job (timed), polls ``GET /v1/jobs/{id}`` (every read
timed) every ``--poll-interval`` seconds until the job ends, fetches the result of a succeeded
job, then takes the next job. One job of each kind runs first as a warm-up, not counted.

The mix is cheap so that a few hundred jobs end in minutes on 2 CPU cores: mostly
``/v1/poses/generate`` (n 1-4, 10-20 steps), ``/v1/poses/complete`` (k = 2, 10 steps) and
``/v1/poses/lift`` (N = 2, the COCO skier of ``../shared/data/keypoints2d``, jittered), and
``--photo-share`` of ``/v1/mesh-recovery`` on the real photos (30 iterations, JSON output only).
Every submission carries a unique seed (its tag) and an ``Idempotency-Key`` header.

What is counted:

- **submitted**: answered 202 (or 200); **rejected**: any other answer or a transport error, by
  code.
- **completed** / **failed** (with the reasons): the terminal status the client saw.
- **lost**: accepted, but not ended within ``--timeout`` seconds of its submission, or a 404 for
  its status or result at any time, including the final check.
- **duplicated**: a job whose record shows it ran more than once (``attempts`` > 1: the task body
  started twice; nothing is injected here, so a second start is a redelivery or retry, never a
  recovery), whose status went back from ended to running (a second run after the first ended),
  whose result answers another submission (the seed it echoes is not its own), or one submission
  that made two jobs (the same id for two submissions; with Redis reachable, another job record
  carrying the submission's tag). Two counts from the gateway's ``/metrics`` back it up: jobs
  recorded as submitted (``bodyserve_jobs_submitted_total``) and outcomes recorded by the workers
  (``bodyserve_jobs_total``; a job that finishes twice is counted twice), each against what the
  clients saw; they assume no other client uses the gateway during the run.
- Latency: p50/p99 of submissions, of status reads and of result fetches (ms), each job's time
  from submission to the status read that saw it end (s), jobs/s (completed jobs over the wall
  time of the load phase).

After the load, the bench waits ``--settle`` seconds and reads every accepted job once more
(not timed): each must still be ended, with one attempt. With its own stack (or ``--redis-url``)
it also scans the job records in Redis for the run's tags. Exits with status 1 when a job was
lost or duplicated.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import numpy as np
import redis
import typer
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.settings import get_settings

console = Console()
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
TERMINAL = {"succeeded", "failed", "cancelled"}
KINDS = ("generate", "complete", "lift", "mesh_recovery")
ROUTES = {
    "generate": "/v1/poses/generate",
    "complete": "/v1/poses/complete",
    "lift": "/v1/poses/lift",
    "mesh_recovery": "/v1/mesh-recovery",
}
# Seeds of one submission never overlap another's: pose i of a job uses seed + i, n <= 64.
TAG_STRIDE = 64
MAX_SEED = 2**31 - 1
# The COCO annotation of ../shared/data/keypoints2d (a skier, 640 x 425): [x, y, visible].
SKIER_COCO17 = [
    [367, 81, 1], [374, 73, 1], [360, 75, 1], [386, 78, 1], [356, 81, 1], [399, 108, 1],
    [358, 129, 1], [433, 142, 1], [341, 159, 1], [449, 165, 1], [309, 178, 1], [424, 203, 1],
    [393, 214, 1], [429, 294, 1], [367, 273, 1], [466, 362, 1], [396, 341, 1],
]  # fmt: skip
HIDDEN_PARTS = ("left_leg", "right_leg", "left_arm", "right_arm", "head", "spine")


# --------------------------------------------------------------------------- the jobs


@dataclass
class JobSpec:
    """One submission: its route and body; ``tag`` (the seed) identifies it in results."""

    index: int
    kind: str
    tag: int
    body: dict[str, Any] = field(default_factory=dict)  # JSON body, or form fields
    photo: Path | None = None  # mesh recovery's upload

    def request(self, photos: dict[Path, bytes]) -> dict[str, Any]:
        """Keyword arguments of ``AsyncClient.post`` for this submission."""
        headers = {"Idempotency-Key": f"load-{self.tag}"}
        if self.photo is None:
            return {"json": self.body, "headers": headers}
        image = (self.photo.name, photos[self.photo], "application/octet-stream")
        return {"files": {"image": image}, "data": self.body, "headers": headers}


def make_specs(
    count: int,
    *,
    first_tag: int,
    rng: random.Random,
    photos: list[Path],
    photo_share: float,
    complete_share: float,
    lift_share: float,
) -> list[JobSpec]:
    """``count`` submissions of the mix, shuffled; tags ``first_tag + i * TAG_STRIDE``."""
    n_photo = round(count * photo_share) if photos else 0
    n_complete = round(count * complete_share)
    n_lift = round(count * lift_share)
    n_generate = max(0, count - n_photo - n_complete - n_lift)
    kinds = (
        ["mesh_recovery"] * n_photo
        + ["complete"] * n_complete
        + ["lift"] * n_lift
        + ["generate"] * n_generate
    )[:count]
    rng.shuffle(kinds)
    return [
        spec_of(kind, i, first_tag + i * TAG_STRIDE, rng, photos) for i, kind in enumerate(kinds)
    ]


def spec_of(kind: str, index: int, tag: int, rng: random.Random, photos: list[Path]) -> JobSpec:
    if kind == "generate":
        body: dict[str, Any] = {
            "n": rng.choice((1, 2, 4)),
            "seed": tag,
            "steps": rng.choice((10, 16, 20)),
            "sampler": rng.choice(("ode", "sde")),
        }
        return JobSpec(index, kind, tag, body)
    if kind == "complete":
        pose = [[round(rng.gauss(0, 0.1), 4) for _ in range(3)] for _ in range(21)]
        body = {
            "body_pose": pose,
            "hidden_parts": [rng.choice(HIDDEN_PARTS)],
            "k": 2,
            "steps": 10,
            "seed": tag,
        }
        return JobSpec(index, kind, tag, body)
    if kind == "lift":
        person = [[x + rng.uniform(-3, 3), y + rng.uniform(-3, 3), v] for x, y, v in SKIER_COCO17]
        body = {
            "format": "coco17",
            "image_size": {"width": 640, "height": 425},
            "people": [person],
            "hypotheses": 2,
            "seed": tag,
        }
        return JobSpec(index, kind, tag, body)
    form = {"iterations": "30", "max_people": "2", "outputs": "json", "seed": str(tag)}
    return JobSpec(index, kind, tag, form, photo=photos[index % len(photos)])


# --------------------------------------------------------------------------- one job


@dataclass
class Outcome:
    """What one client saw of one submission."""

    index: int
    kind: str
    tag: int
    submit_code: str = ""  # "202", "422", "ConnectError", ...
    submit_ms: float | None = None
    job_id: str | None = None
    status: str | None = None  # the terminal status first seen
    error: str | None = None
    attempts: int = 0  # the most seen
    job_s: float | None = None  # submission to the read that saw it end
    result_ms: float | None = None
    lost: str | None = None  # why it counts as lost
    duplicate: list[str] = field(default_factory=list)  # why it counts as duplicated
    status_errors: int = 0  # status reads answered with neither 200 nor 404
    final_status: str | None = None  # at the final check

    @property
    def accepted(self) -> bool:
        return self.job_id is not None


async def run_job(
    client: httpx.AsyncClient,
    spec: JobSpec,
    photos: dict[Path, bytes],
    status_ms: list[float],
    *,
    poll_s: float,
    timeout_s: float,
) -> Outcome:
    """Submit ``spec``, poll its status until it ends, fetch its result."""
    outcome = Outcome(spec.index, spec.kind, spec.tag)
    started = time.perf_counter()
    try:
        reply = await client.post(ROUTES[spec.kind], **spec.request(photos))
    except httpx.HTTPError as exc:
        outcome.submit_code = type(exc).__name__
        outcome.error = str(exc)[:200]
        return outcome
    outcome.submit_ms = (time.perf_counter() - started) * 1000
    outcome.submit_code = str(reply.status_code)
    if reply.status_code not in (200, 202):
        outcome.error = reply.text[:200]
        return outcome
    body = reply.json()
    outcome.job_id = body.get("id") or body.get("job_id")
    location = f"/v1/jobs/{outcome.job_id}"
    deadline = started + timeout_s
    info: dict[str, Any] = {"status": body.get("status")}
    while info.get("status") not in TERMINAL:
        if time.perf_counter() > deadline:
            outcome.lost = f"not ended within {timeout_s:g} s (last: {info.get('status')})"
            return outcome
        await asyncio.sleep(poll_s)
        read_started = time.perf_counter()
        try:
            answer = await client.get(location)
        except httpx.HTTPError:
            outcome.status_errors += 1
            continue
        status_ms.append((time.perf_counter() - read_started) * 1000)
        if answer.status_code == 404:
            outcome.lost = "404 while polling"
            return outcome
        if answer.status_code != 200:
            outcome.status_errors += 1
            continue
        info = answer.json()
        outcome.attempts = max(outcome.attempts, int(info.get("attempts") or 0))
    outcome.job_s = time.perf_counter() - started
    outcome.status = str(info["status"])
    outcome.error = info.get("error")
    if outcome.status == "succeeded":
        await fetch_result(client, outcome, location)
    return outcome


async def fetch_result(client: httpx.AsyncClient, outcome: Outcome, location: str) -> None:
    """GET the result; a pose result must echo the submission's own seed."""
    started = time.perf_counter()
    try:
        answer = await client.get(f"{location}/result")
    except httpx.HTTPError as exc:
        outcome.error = f"result not fetched: {type(exc).__name__}"
        return
    outcome.result_ms = (time.perf_counter() - started) * 1000
    if answer.status_code == 404:
        outcome.lost = "result 404"
        return
    if answer.status_code != 200:
        outcome.error = f"result answered {answer.status_code}: {answer.text[:200]}"
        return
    seed = answer.json().get("seed")
    if outcome.kind != "mesh_recovery" and seed != outcome.tag:
        outcome.duplicate.append(f"result of another submission (seed {seed})")


# --------------------------------------------------------------------------- the run


async def load(
    url: str,
    specs: list[JobSpec],
    photos: dict[Path, bytes],
    headers: dict[str, str],
    *,
    clients: int,
    poll_s: float,
    timeout_s: float,
) -> tuple[list[Outcome], list[float], float]:
    """Every spec through ``clients`` concurrent clients: outcomes, status read ms, wall s."""
    pending = iter(specs)
    outcomes: list[Outcome] = []
    status_ms: list[float] = []
    http_timeout = httpx.Timeout(60.0)

    async def client_loop() -> None:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=http_timeout) as c:
            # One task at a time on the event loop: next() needs no lock.
            while (spec := next(pending, None)) is not None:
                outcomes.append(
                    await run_job(c, spec, photos, status_ms, poll_s=poll_s, timeout_s=timeout_s)
                )

    started = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(clients)))
    wall = time.perf_counter() - started
    return sorted(outcomes, key=lambda o: o.index), status_ms, wall


async def final_check(
    url: str, outcomes: list[Outcome], headers: dict[str, str], clients: int
) -> None:
    """Read every accepted job once more: still ended, same status, one attempt."""
    gate = asyncio.Semaphore(clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60.0) as client:

        async def check(outcome: Outcome) -> None:
            async with gate:
                answer = await client.get(f"/v1/jobs/{outcome.job_id}")
            if answer.status_code == 404:
                outcome.lost = outcome.lost or "404 at the final check"
                return
            if answer.status_code != 200:
                outcome.status_errors += 1
                return
            info = answer.json()
            outcome.final_status = info["status"]
            outcome.attempts = max(outcome.attempts, int(info.get("attempts") or 0))
            if outcome.status is not None and info["status"] != outcome.status:
                outcome.duplicate.append(
                    f"status went from {outcome.status} to {info['status']} after it ended"
                )

        await asyncio.gather(*(check(o) for o in outcomes if o.accepted))
    for outcome in outcomes:
        if outcome.attempts > 1:
            outcome.duplicate.append(f"{outcome.attempts} attempts")


def scan_redis(redis_url: str, outcomes: list[Outcome]) -> dict[str, Any]:
    """Job records in Redis carrying the run's tags: extra jobs for one submission."""
    client = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=10)
    keys = [k for k in client.scan_iter(match="bodyserve:job:*", count=1000) if k.count(":") == 2]
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hget(key, "options")
        options = pipe.execute()
    by_tag: dict[int, list[str]] = {}
    for key, raw in zip(keys, options, strict=True):
        seed = json.loads(raw or "{}").get("seed")
        if isinstance(seed, int):
            by_tag.setdefault(seed, []).append(key.rsplit(":", 1)[1])
    extra = 0
    orphans = []  # records of submissions the client saw rejected (a 503 does create one)
    for outcome in outcomes:
        ids = by_tag.get(outcome.tag, [])
        others = [i for i in ids if i != outcome.job_id]
        if outcome.accepted and others:
            outcome.duplicate.append(f"{len(others)} more job record(s) with its tag: {others}")
            extra += len(others)
        elif not outcome.accepted and ids:
            orphans.append({"tag": outcome.tag, "submit": outcome.submit_code, "jobs": ids})
    return {"job_records_scanned": len(keys), "extra_records": extra, "orphans": orphans}


async def outcomes_recorded(client: httpx.AsyncClient) -> float | None:
    """Job outcomes the workers recorded (``bodyserve_jobs_total`` on /metrics), all summed."""
    try:
        reply = await client.get("/metrics")
    except httpx.HTTPError:
        return None
    if reply.status_code != 200:
        return None
    return sum(
        sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
        if sample.name == "bodyserve_jobs_total"
    )


async def measure(
    url: str,
    specs: list[JobSpec],
    warm: list[JobSpec],
    photos: dict[Path, bytes],
    headers: dict[str, str],
    *,
    clients: int,
    poll_s: float,
    timeout_s: float,
    settle_s: float,
) -> tuple[list[Outcome], list[float], float, dict[str, Any]]:
    """Warm-up, the load, the final check: outcomes, status read ms, wall s, checks."""
    checks: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60.0) as client:
        warmed = [
            await run_job(client, spec, photos, [], poll_s=poll_s, timeout_s=timeout_s)
            for spec in warm
        ]
        checks["warmup"] = {o.kind: o.status or o.lost or o.submit_code for o in warmed}
        before = await outcomes_recorded(client)
        with console.status(f"{len(specs)} jobs, {clients} clients"):
            outcomes, status_ms, wall = await load(
                url, specs, photos, headers, clients=clients, poll_s=poll_s, timeout_s=timeout_s
            )
        await asyncio.sleep(settle_s)
        await final_check(url, outcomes, headers, clients)
        after = await outcomes_recorded(client)
    # Each job that ended is one outcome; a job that finished twice is counted twice. A 5xx at
    # submission may have recorded a failed job (the broker was down).
    ended = sum(o.final_status in TERMINAL for o in outcomes)
    maybe = sum(o.submit_code.startswith("5") for o in outcomes)
    if before is not None and after is not None:
        extra = max(0, int(after - before) - ended - maybe)
        checks["metrics"] = {"outcomes_recorded": int(after - before), "jobs_ended": ended}
        checks["metrics"]["extra_outcomes"] = extra
    else:
        checks["metrics"] = "not readable"
    return outcomes, status_ms, wall, checks


# --------------------------------------------------------------------------- figures


def percentiles(values: list[float], digits: int = 1) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    array = np.asarray(values)
    return {
        "n": len(values),
        "p50": round(float(np.percentile(array, 50)), digits),
        "p99": round(float(np.percentile(array, 99)), digits),
        "max": round(float(array.max()), digits),
    }


def figures(
    outcomes: list[Outcome],
    status_ms: list[float],
    wall_s: float,
    checks: dict[str, Any],
) -> dict[str, Any]:
    accepted = [o for o in outcomes if o.accepted]
    completed = [o for o in accepted if o.status == "succeeded" and not o.lost]
    failed = [o for o in accepted if o.status in ("failed", "cancelled") and not o.lost]
    lost = [o for o in accepted if o.lost]
    duplicated = [o for o in accepted if o.duplicate]
    # Outcomes recorded twice (checks["metrics"]): not tied to a job, added to the count.
    metrics = checks.get("metrics")
    twice = int(metrics.get("extra_outcomes", 0)) if isinstance(metrics, dict) else 0
    per_kind = {}
    for kind in KINDS:
        mine = [o for o in outcomes if o.kind == kind]
        if mine:
            per_kind[kind] = {
                "jobs": len(mine),
                "submitted": sum(o.accepted for o in mine),
                "completed": sum(o in completed for o in mine),
                "failed": sum(o in failed for o in mine),
                "lost": sum(o in lost for o in mine),
                "duplicated": sum(o in duplicated for o in mine),
                "job_s": percentiles([o.job_s for o in mine if o.job_s is not None], 3),
            }
    return {
        "counts": {
            "jobs": len(outcomes),
            "submitted": len(accepted),
            "rejected": len(outcomes) - len(accepted),
            "completed": len(completed),
            "failed": len(failed),
            "lost": len(lost),
            "duplicated": len(duplicated) + twice,
            "status_read_errors": sum(o.status_errors for o in outcomes),
        },
        "rejected_by_code": dict(Counter(o.submit_code for o in outcomes if not o.accepted)),
        "failure_reasons": dict(Counter(str(o.error)[:160] for o in failed)),
        "lost_jobs": [{"id": o.job_id, "kind": o.kind, "why": o.lost} for o in lost],
        "duplicated_jobs": [
            {"id": o.job_id, "kind": o.kind, "why": o.duplicate} for o in duplicated
        ],
        "latency_ms": {
            "submission": percentiles([o.submit_ms for o in outcomes if o.submit_ms is not None]),
            "status_read": percentiles(status_ms),
            "result_fetch": percentiles([o.result_ms for o in outcomes if o.result_ms is not None]),
        },
        "job_s": percentiles([o.job_s for o in accepted if o.job_s is not None], 3),
        "jobs_per_s": round(len(completed) / wall_s, 3) if wall_s > 0 else None,
        "wall_s": round(wall_s, 2),
        "per_kind": per_kind,
        "checks": checks,
        "jobs": [asdict(o) for o in outcomes],
    }


def show(result: dict[str, Any]) -> None:
    counts, latency = result["counts"], result["latency_ms"]
    config = result["config"]
    table = Table(title=f"load: {counts['jobs']} jobs, {config['clients']} clients")
    columns = ("submitted", "rejected", "completed", "failed", "lost", "duplicated")
    for column in columns:
        table.add_column(column, justify="right")
    table.add_row(*(str(counts[c]) for c in columns))
    console.print(table)

    table = Table(title="latency")
    for column in ("", "n", "p50", "p99", "max"):
        table.add_column(column, justify="right")
    for name, row in latency.items():
        table.add_row(
            f"{name.replace('_', ' ')} (ms)", str(row["n"]), *_cells(row, ("p50", "p99", "max"))
        )
    job = result["job_s"]
    table.add_row("job, submit to end (s)", str(job["n"]), *_cells(job, ("p50", "p99", "max")))
    console.print(table)
    console.print(
        f"{result['jobs_per_s']} jobs/s; load phase {result['wall_s']} s; "
        f"status read errors {counts['status_read_errors']}"
    )

    table = Table(title="per kind")
    for column in ("kind", "jobs", "completed", "failed", "lost", "duplicated", "job p50 (s)"):
        table.add_column(column, justify="right")
    for kind, row in result["per_kind"].items():
        table.add_row(
            kind,
            *(str(row[c]) for c in ("jobs", "completed", "failed", "lost", "duplicated")),
            str(row["job_s"]["p50"]),
        )
    console.print(table)
    for title, key in (
        ("rejected", "rejected_by_code"),
        ("failed", "failure_reasons"),
        ("lost", "lost_jobs"),
        ("duplicated", "duplicated_jobs"),
    ):
        if result[key]:
            console.print(f"[bold red]{title}[/]:", result[key])
    console.print("checks:", result["checks"])


def _cells(row: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    return ["-" if row[k] is None else f"{row[k]:g}" for k in keys]


# --------------------------------------------------------------------------- command


def main(
    url: Annotated[
        str | None, typer.Option(help="Running gateway; default: start a local stack.")
    ] = None,
    jobs: Annotated[int, typer.Option(min=1, help="Jobs to submit (not counting warm-up).")] = 240,
    clients: Annotated[int, typer.Option(min=1, help="Concurrent clients.")] = 32,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the figures here.")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="BODYSERVE_API_KEY", help="Sent as 'Authorization: Bearer KEY'."),
    ] = None,
    photos_dir: Annotated[
        Path | None, typer.Option("--photos", help="Photos for mesh recovery; default: shared.")
    ] = None,
    photo_share: Annotated[float, typer.Option(min=0, max=1)] = 0.05,
    complete_share: Annotated[float, typer.Option(min=0, max=1)] = 0.15,
    lift_share: Annotated[float, typer.Option(min=0, max=1)] = 0.15,
    poll_interval: Annotated[float, typer.Option(min=0, help="Seconds between polls.")] = 0.2,
    timeout: Annotated[
        float, typer.Option(min=1, help="Seconds from submission to the job's end.")
    ] = 600.0,
    settle: Annotated[float, typer.Option(min=0, help="Seconds before the final check.")] = 5.0,
    redis_url: Annotated[
        str | None, typer.Option(help="Scan the job records here (own stack: its Redis).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the job mix.")] = 0,
    warmup: Annotated[bool, typer.Option(help="One job per kind first, not counted.")] = True,
) -> None:
    if photo_share + complete_share + lift_share > 1:
        raise typer.BadParameter("the shares of photo, complete and lift add up to more than 1")
    photo_folder = photos_dir or get_settings().photos_dir
    photo_list = (
        sorted(p for p in photo_folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if photo_share > 0 and photo_folder.is_dir()
        else []
    )
    if photo_share > 0 and not photo_list:
        raise typer.BadParameter(f"no photos in {photo_folder}; set --photos or --photo-share 0")
    rng = random.Random(seed)
    # Tags unique to this run, so that a shared gateway's older jobs never match them.
    first_tag = random.Random(uuid.uuid4().int).randrange(0, MAX_SEED - TAG_STRIDE * (jobs + 8))
    specs = make_specs(
        jobs,
        first_tag=first_tag,
        rng=rng,
        photos=photo_list,
        photo_share=photo_share,
        complete_share=complete_share,
        lift_share=lift_share,
    )
    warm = [
        spec_of(kind, jobs + i, first_tag + (jobs + i) * TAG_STRIDE, rng, photo_list)
        for i, kind in enumerate(sorted({s.kind for s in specs}) if warmup else ())
    ]
    photos = {p: p.read_bytes() for p in {s.photo for s in specs + warm} if p is not None}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    stack = None
    if url is None:
        from services.tools.local_stack import LocalStack, StackConfig

        var_dir = Path(tempfile.mkdtemp(prefix="bodyserve-load-"))
        stack = LocalStack(StackConfig.with_free_ports(var_dir))
        console.print(f"local stack in {var_dir} (logs: {var_dir / 'stack'})")
        try:
            with console.status("starting the local stack"):
                stack.up()
        except BaseException:
            stack.down()
            raise
        url = stack.base_url
        redis_url = redis_url or stack.redis_url
    url = url.rstrip("/")
    config = {
        "url": url,
        "own_stack": stack is not None,
        "jobs": jobs,
        "clients": clients,
        "poll_interval_s": poll_interval,
        "timeout_s": timeout,
        "mix": {kind: sum(s.kind == kind for s in specs) for kind in KINDS},
        "seed": seed,
        "first_tag": first_tag,
    }
    try:
        outcomes, status_ms, wall, checks = asyncio.run(
            measure(
                url,
                specs,
                warm,
                photos,
                headers,
                clients=clients,
                poll_s=poll_interval,
                timeout_s=timeout,
                settle_s=settle,
            )
        )
        if redis_url:
            checks["redis"] = scan_redis(redis_url, outcomes)
    finally:
        if stack is not None:
            with console.status("stopping the local stack"):
                stack.down()
    result = {"config": config, **figures(outcomes, status_ms, wall, checks)}
    show(result)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=1))
        console.print(f"wrote {json_path}")
    if result["counts"]["lost"] or result["counts"]["duplicated"]:
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
