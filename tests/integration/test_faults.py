"""Survival under faults (README "Delivery guarantees"): Redis restarted or crashed mid-run,
Triton stopped and started again or down for good, a worker stopped with SIGTERM, Redis
unreachable from the gateway, a job's message lost.

These tests break the stack they run on, so the module has its own (Redis with AOF, Triton, a
worker for ``mesh_recovery`` and one for ``poses``, the gateway), with quick retries
(``FAULT_ENV``). Every test counts the jobs it got accepted (202), waits for all of them to end
and checks each with :func:`check_each_ran_once`: it ended as expected, with its result; none is
lost (every id has a final state); none ran twice: the job's record of runs
(``JobStore.runs``) shows one run that ended it, every run before it ended with a retry, began
after the previous one had ended and carries the next retry number (a message delivered twice
would run twice under one number), ``attempts`` counts exactly those runs, and the job's end
was recorded once (one wake-up pushed to ``job:<id>:done``).

Short jobs are pose generations (a few samples); the few long ones are mesh recoveries with
many iterations, which a fault hits while they run.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common.jobs import LEASE_TTL_S, JobStore
from services.tools.local_stack import LocalStack, StackConfig, pid_alive, worker_name
from services.tools.triton_launcher import TritonNotFound, find_tritonserver
from tests.conftest import missing
from tests.integration.stacks import started_stack

pytestmark = pytest.mark.integration

FAULT_ENV = {
    # Retries after a transient error: 0.5-1 s, 1-2 s, 2-4 s, then 2-4 s each, 30 times at
    # most (about a minute at the least): enough to outlast a Triton restart here.
    "BODYSERVE_JOB_MAX_RETRIES": "30",
    "BODYSERVE_JOB_RETRY_BACKOFF_S": "1",
    "BODYSERVE_JOB_RETRY_BACKOFF_MAX_S": "4",
    # A job whose message is lost is queued again after 10 s (default: 120 s).
    "BODYSERVE_JOB_ORPHAN_AFTER_S": "10",
    # The machine is shared: a slow model call must not turn into a retry (the fault does).
    "BODYSERVE_TRITON_TIMEOUT_S": "600",
}
TERMINAL = ("succeeded", "failed", "cancelled")
JOB_TIMEOUT_S = 240.0  # generous: the machine is shared
GATEWAY_ANSWER_S = 8.0  # "a few seconds": the clients' Redis socket timeout is 5 s
MULTI_PHOTO = "coco_000000541055_skiers_group_multi.jpg"  # 4 people: a long fit
SINGLE_PHOTO = "coco_000000000785_skier_single.jpg"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    try:
        find_tritonserver()
    except TritonNotFound as exc:
        missing(str(exc))
    if os.environ.get("BODYSERVE_TEST_REDIS_URL"):
        pytest.skip("the fault tests restart Redis: they need a redis-server of their own")
    config = StackConfig.with_free_ports(
        tmp_path_factory.mktemp("fault-stack"),
        queues=["mesh_recovery", "poses"],
        extra_env=dict(FAULT_ENV),
    )
    with started_stack(config, "the local stack") as local:
        yield local


@pytest.fixture(scope="module")
def client(stack: LocalStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
def store(stack: LocalStack) -> JobStore:
    """The stack's job store, read directly; its client rides out the Redis restarts."""
    return JobStore.from_url(stack.redis_url, result_ttl_s=3600, outage_s=60)


@pytest.fixture()
def photo(photos_dir: Path) -> Callable[[str], bytes]:
    return lambda name: (photos_dir / name).read_bytes()


# --------------------------------------------------------------------------- helpers


def submit_poses(client: httpx.Client, count: int) -> list[str]:
    """``count`` short jobs (3 poses each), every one accepted."""
    ids: list[str] = []
    for _ in range(count):
        reply = client.post("/v1/poses/generate", json={"n": 3, "seed": len(ids)})
        assert reply.status_code == 202, reply.text
        ids.append(reply.json()["id"])
    return ids


def submit_mesh(client: httpx.Client, image: bytes, iterations: int) -> str:
    reply = client.post(
        "/v1/mesh-recovery",
        files={"image": ("photo.jpg", image)},
        data={"max_people": "8", "iterations": str(iterations), "outputs": "json"},
    )
    assert reply.status_code == 202, reply.text
    return str(reply.json()["id"])


def job_info(client: httpx.Client, job_id: str) -> dict[str, Any] | None:
    """The job as GET /v1/jobs/{id} shows it; None while the gateway cannot read Redis."""
    try:
        reply = client.get(f"/v1/jobs/{job_id}")
    except httpx.TransportError:
        return None
    if reply.status_code == 503:
        return None
    assert reply.status_code == 200, f"job {job_id} lost: {reply.status_code} {reply.text}"
    return dict(reply.json())


def wait_for(what: str, condition: Callable[[], bool], timeout_s: float = JOB_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s:.0f} s: {what}"
        time.sleep(0.2)


def wait_running(client: httpx.Client, job_id: str) -> None:
    def running() -> bool:
        info = job_info(client, job_id)
        assert info is None or info["status"] in ("queued", "running"), info
        return info is not None and info["status"] == "running"

    wait_for(f"job {job_id} running", running)


def wait_all_ended(
    client: httpx.Client, ids: list[str], timeout_s: float = JOB_TIMEOUT_S
) -> dict[str, dict[str, Any]]:
    """Every job's final record; fails when one is unknown (lost) or has not ended in time."""
    ended: dict[str, dict[str, Any]] = {}
    last: dict[str, Any] = {}
    deadline = time.monotonic() + timeout_s
    while len(ended) < len(ids):
        for job_id in ids:
            if job_id in ended:
                continue
            info = job_info(client, job_id)
            if info is not None:
                last[job_id] = (info["status"], info["attempts"], info["message"])
                if info["status"] in TERMINAL:
                    ended[job_id] = info
        if len(ended) < len(ids):
            waiting = {j: last.get(j) for j in ids if j not in ended}
            assert time.monotonic() < deadline, f"{len(waiting)} of {len(ids)} jobs: {waiting}"
            time.sleep(0.5)
    return ended


def check_each_ran_once(
    client: httpx.Client,
    store: JobStore,
    ended: dict[str, dict[str, Any]],
    status: str = "succeeded",
) -> None:
    """Each job ended with ``status`` (and its result when it succeeded), ran to its end once:
    a single run ended it, the runs before it ended with a retry, one after the other."""
    for job_id, info in ended.items():
        assert info["status"] == status, info
        runs = store.runs(job_id)
        assert runs, f"{job_id}: no run recorded"
        assert info["attempts"] == len(runs), (info, runs)
        assert [run.outcome for run in runs[:-1]] == ["retry"] * (len(runs) - 1), runs
        assert runs[-1].outcome == status, runs
        # Each run is the next retry of the one before: a message delivered twice (a copy
        # restored while its worker still held it) would run again with the same number.
        assert [run.retry for run in runs] == list(range(len(runs))), runs
        for before, after in itertools.pairwise(runs):
            assert before.ended_at is not None and after.started_at >= before.ended_at, runs
        assert store.redis.llen(JobStore.key(job_id, "done")) == 1, f"{job_id} ended twice"
        if status == "succeeded":
            reply = client.get(f"/v1/jobs/{job_id}/result")
            assert reply.status_code == 200, reply.text
            assert reply.json(), f"{job_id}: empty result"


def statuses(client: httpx.Client, ids: list[str]) -> list[str]:
    return [info["status"] if (info := job_info(client, j)) else "?" for j in ids]


@contextmanager
def worker_env(stack: LocalStack, queue: str, **env: str) -> Iterator[None]:
    """Run the worker of ``queue`` with ``env`` added (restarted), then as before."""
    saved = dict(stack.config.extra_env)
    stack.config.extra_env.update(env)
    stack.restart(worker_name(queue))
    try:
        yield
    finally:
        stack.config.extra_env.clear()
        stack.config.extra_env.update(saved)
        stack.restart(worker_name(queue))


# --------------------------------------------------------------------------- Redis


def test_stack_redis_runs_with_aof(stack: LocalStack, store: JobStore) -> None:
    config = store.redis.config_get("append*")
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "everysec"


def test_redis_restart_with_aof_mid_run(
    stack: LocalStack, client: httpx.Client, store: JobStore, photo: Callable[[str], bytes]
) -> None:
    """SIGTERM to Redis while jobs are queued and two run (a mesh recovery, a pose job), down
    for longer than a job's lease, then started again on the same port and directory: every
    job ends succeeded, each in one run (the running ones ride it out: their Redis commands
    wait, their heartbeats take the lapsed leases back, the sweepers give nothing back)."""
    ids = [submit_mesh(client, photo(MULTI_PHOTO), 300) for _ in range(2)]
    ids += submit_poses(client, 8)
    wait_running(client, ids[0])
    time.sleep(1.0)
    before = statuses(client, ids)
    assert before[0] == "running" and "queued" in before, before

    stack.restart("redis", down_s=LEASE_TTL_S + 2)

    ended = wait_all_ended(client, ids)
    check_each_ran_once(client, store, ended)
    assert [info["attempts"] for info in ended.values()] == [1] * len(ids)


def test_redis_crash_with_aof_everysec(
    stack: LocalStack, client: httpx.Client, store: JobStore, photo: Callable[[str], bytes]
) -> None:
    """SIGKILL to Redis mid-run, started again 3 s later.

    The guarantee of ``appendfsync everysec``: Redis writes every command to its AOF before it
    answers, and fsyncs the file every second. A crash of the Redis *process* (this test; an
    OOM kill, a container killed) loses nothing it acknowledged, since the kernel still has
    the writes; a crash of the *host* (power, kernel) can lose the last second or so of
    acknowledged writes (Redis documents two seconds at worst): jobs accepted in that second
    may be gone (GET answers 404) or have kept their record but lost their message, which the
    orphan sweep queues again (``test_job_whose_message_was_lost_is_queued_again``). What is
    asserted here: every accepted job ends succeeded, none lost, none run twice.
    """
    ids = [submit_mesh(client, photo(MULTI_PHOTO), 300)]
    ids += submit_poses(client, 8)
    wait_running(client, ids[0])
    time.sleep(1.0)
    before = statuses(client, ids)
    assert before[0] == "running" and "queued" in before, before

    stack.restart("redis", hard=True, down_s=3)

    ended = wait_all_ended(client, ids)
    check_each_ran_once(client, store, ended)
    assert [info["attempts"] for info in ended.values()] == [1] * len(ids)


def test_job_whose_message_was_lost_is_queued_again(
    stack: LocalStack, client: httpx.Client, store: JobStore, photo: Callable[[str], bytes]
) -> None:
    """A job recorded without its message (what a host crash can leave behind with AOF
    everysec, or a gateway losing Redis between recording a job and queueing it) is queued
    again by the orphan sweep after ``BODYSERVE_JOB_ORPHAN_AFTER_S`` (10 s here)."""
    running = submit_mesh(client, photo(MULTI_PHOTO), 300)
    wait_running(client, running)
    waiting = submit_mesh(client, photo(SINGLE_PHOTO), 60)
    # Its message waits in the queue behind the running job (one at a time): lose it.
    messages = [
        raw
        for raw in store.redis.lrange("mesh_recovery", 0, -1)
        if json.loads(raw)["headers"]["id"] == waiting
    ]
    assert len(messages) == 1, "the second job's message is not waiting in its queue"
    assert store.redis.lrem("mesh_recovery", 0, str(messages[0])) == 1

    ended = wait_all_ended(client, [running, waiting])
    check_each_ran_once(client, store, ended)
    waited = store.runs(waiting)[0].started_at - ended[waiting]["created_at"]
    assert waited >= 10, f"run {waited:.1f} s after it was recorded: not as an orphan"
    logs = "".join(stack.log_path(worker_name(q)).read_text() for q in ("mesh_recovery", "poses"))
    assert f"queued job {waiting} again: its message was lost" in logs


# --------------------------------------------------------------------------- Triton


def test_triton_stop_and_restart(
    stack: LocalStack, client: httpx.Client, store: JobStore, photo: Callable[[str], bytes]
) -> None:
    """Triton stopped (SIGTERM) while a mesh recovery runs, jobs submitted while it is down,
    Triton started again: each job is retried with backoff (a new message each time; its
    worker is free meanwhile) and succeeds once Triton is back."""
    running = submit_mesh(client, photo(MULTI_PHOTO), 300)
    wait_running(client, running)
    time.sleep(0.5)
    stack.stop("triton")  # finishes the requests in flight (10 s at most), refuses new ones
    during = [*submit_poses(client, 4), submit_mesh(client, photo(SINGLE_PHOTO), 60)]

    def all_retried() -> bool:
        return all(any(run.outcome == "retry" for run in store.runs(j)) for j in during)

    wait_for("every job submitted while Triton is down failed once and waits", all_retried)
    info = job_info(client, during[0])
    assert info is not None and info["status"] in ("queued", "running"), info
    stack.start("triton")

    ended = wait_all_ended(client, [running, *during])
    check_each_ran_once(client, store, ended)
    assert all(ended[job_id]["attempts"] >= 2 for job_id in during)


def test_triton_permanently_down_fails_job_with_reason(
    stack: LocalStack, client: httpx.Client, store: JobStore
) -> None:
    """Triton down for good: after its retries (3 here: about 1 + 2 + 4 s of backoff at most)
    the job fails with a reason that says the model server was unavailable, how many attempts
    were made and over how long."""
    with worker_env(stack, "poses", BODYSERVE_JOB_MAX_RETRIES="3"):
        stack.stop("triton")
        try:
            started = time.monotonic()
            ids = submit_poses(client, 2)
            ended = wait_all_ended(client, ids, timeout_s=120)
            took = time.monotonic() - started
        finally:
            stack.start("triton")
    check_each_ran_once(client, store, ended, status="failed")
    reason = re.compile(
        r"the model server was unavailable: gave up after 4 attempts over \d+ s "
        r"\(last error: Triton pose_prior: .+\)"
    )
    for info in ended.values():
        assert info["attempts"] == 4
        assert reason.fullmatch(info["error"]), info["error"]
    assert took < 60, f"failing took {took:.0f} s"


# --------------------------------------------------------------------------- workers


def test_graceful_shutdown_drains_running_job(
    stack: LocalStack, client: httpx.Client, store: JobStore, photo: Callable[[str], bytes]
) -> None:
    """SIGTERM to a worker's main process (as Docker and Kubernetes stop a container) while
    a job runs and two wait: Celery's warm shutdown lets the running job finish (once), then
    the worker exits; the waiting jobs stay queued in Redis and a new worker runs them."""
    name = worker_name("mesh_recovery")
    running = submit_mesh(client, photo(MULTI_PHOTO), 300)
    waiting = [submit_mesh(client, photo(SINGLE_PHOTO), 60) for _ in range(2)]
    wait_running(client, running)
    time.sleep(0.5)
    pid = stack.pid(name)
    assert pid is not None
    stopped_at = time.time()

    stack.stop(name, grace_s=200)  # longer than a job's hard limit, as compose and Kubernetes

    assert not pid_alive(pid)
    info = job_info(client, running)
    assert info is not None and info["status"] == "succeeded", info
    assert info["attempts"] == 1 and info["finished_at"] > stopped_at, info
    assert statuses(client, waiting) == ["queued", "queued"]
    queued = [
        json.loads(raw)["headers"]["id"] for raw in store.redis.lrange("mesh_recovery", 0, -1)
    ]
    assert sorted(queued) == sorted(waiting)

    stack.start(name)
    ended = wait_all_ended(client, [running, *waiting])
    check_each_ran_once(client, store, ended)
    assert [info["attempts"] for info in ended.values()] == [1, 1, 1]


# --------------------------------------------------------------------------- the gateway


def test_gateway_answers_503_while_redis_is_down_and_recovers(
    stack: LocalStack, client: httpx.Client, store: JobStore, photo: Callable[[str], bytes]
) -> None:
    """Redis stopped, then frozen (SIGSTOP: connections open, no answer): submissions, status
    reads (the async Redis client), results and cancellations (the sync one) get 503 with
    Retry-After and a JSON message within a few seconds, never a 500 or a hang; when Redis is
    back the same gateway process serves again by itself."""
    [known] = submit_poses(client, 1)
    wait_all_ended(client, [known])
    gateway_pid = stack.pid("gateway")
    image = photo(SINGLE_PHOTO)
    calls: dict[str, Callable[[httpx.Client], httpx.Response]] = {
        "status": lambda c: c.get(f"/v1/jobs/{known}"),
        "result": lambda c: c.get(f"/v1/jobs/{known}/result"),
        "cancel": lambda c: c.delete(f"/v1/jobs/{known}"),
        "submit": lambda c: c.post("/v1/poses/generate", json={"n": 2}),
        "submit and wait": lambda c: c.post("/v1/poses/generate?wait=5", json={"n": 2}),
        "idempotent submit": lambda c: c.post(
            "/v1/poses/generate", json={"n": 2}, headers={"Idempotency-Key": str(uuid.uuid4())}
        ),
        "upload": lambda c: c.post(
            "/v1/mesh-recovery", files={"image": ("photo.jpg", image)}, data={"iterations": "5"}
        ),
    }

    def answer(call: Callable[[httpx.Client], httpx.Response]) -> tuple[httpx.Response, float]:
        with httpx.Client(base_url=stack.base_url, timeout=30) as own:
            started = time.monotonic()
            reply = call(own)
            return reply, time.monotonic() - started

    def signal_redis(sig: int) -> None:
        pid = stack.pid("redis")
        assert pid is not None, "redis-server is not running"
        os.kill(pid, sig)

    redis_faults: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "stopped": (lambda: stack.stop("redis"), lambda: stack.start("redis")),
        "frozen": (lambda: signal_redis(signal.SIGSTOP), lambda: signal_redis(signal.SIGCONT)),
    }
    for fault, (break_redis, mend_redis) in redis_faults.items():
        break_redis()
        try:
            with ThreadPoolExecutor(len(calls) + 1) as pool:
                replies = dict(zip(calls, pool.map(answer, calls.values()), strict=True))
                ready, _ = pool.submit(answer, lambda c: c.get("/readyz")).result()
        finally:
            mend_redis()
        for call, (reply, took) in replies.items():
            where = f"{call} with Redis {fault}"
            assert reply.status_code == 503, f"{where}: {reply.status_code} {reply.text}"
            assert int(reply.headers["Retry-After"]) > 0, where
            assert reply.json()["detail"], where
            assert took < GATEWAY_ANSWER_S, f"{where}: answered after {took:.1f} s"
        assert ready.status_code == 503
        assert ready.json()["checks"]["redis"].startswith("unreachable"), ready.json()

        # The same gateway process, not restarted, serves again.
        wait_for(f"status reads after Redis {fault}", lambda: job_info(client, known) is not None)
        ended = wait_all_ended(client, submit_poses(client, 2))
        check_each_ran_once(client, store, ended)
        assert client.get("/readyz").status_code == 200
        assert stack.pid("gateway") == gateway_pid
