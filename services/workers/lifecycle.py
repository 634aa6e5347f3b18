"""The job life cycle every Celery task shares, written once.

A capability's task is a thin adapter: it names a *work* function that turns the job's options
(and uploaded inputs) into a result and artifacts; :func:`run_job` does the rest:

- drops a message whose job record is gone (expired) or already ended (cancelled before it ran,
  a redelivered duplicate);
- takes the job's lease (a second delivery of the same job while it runs elsewhere is dropped)
  and keeps it alive with a heartbeat thread (which takes it back after a Redis outage), so
  that the sweeper of :mod:`services.workers.recovery` gives the job of a dead worker back to
  the queue;
- fails a job whose runs were lost with their worker ``MAX_LOST_RUNS`` times (a job that
  crashes or exhausts its worker would otherwise come back for ever);
- marks the job running and records the run (``JobStore.runs``), calls the work, stores its
  artifacts, records the result once;
- turns the soft time limit into a failed job with a message that says so, a cancellation seen
  through :meth:`JobContext.progress` into a quiet stop, a transient error (model server or
  Redis unreachable) into a retry with backoff (``job_retry_backoff_s`` doubling up to
  ``job_retry_backoff_max_s``, with jitter; a new message, so the worker is free meanwhile),
  failed after ``job_max_retries`` retries with a reason that says what was unavailable and
  how many attempts were made; anything else into a failed job carrying the error's message.

Redis commands of the job life cycle go through :func:`worker_job_store`, whose client retries
for ``worker_redis_outage_s``: a job running across a Redis restart finishes normally.

Define a task with :func:`job_task`, which takes its name and time limits from the capability
table (:mod:`services.capabilities`)::

    @job_task(CAPABILITIES["pose_generation"])
    def pose_generation(self: Task, job_id: str) -> str:
        return run_job(self, job_id, generate_work)
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import redis
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import task_failure

from services.capabilities import Capability
from services.common.backends import get_backend
from services.common.jobs import HEARTBEAT_S, JobNotFound, JobStatus, JobStore
from services.common.stores import artifact_store, job_store
from services.common.webhooks import announce_job_end
from services.workers.celery_app import app
from shared.bodies.anny_model import get_anny
from shared.inference.contracts import InferenceBackend, InferenceUnavailable
from shared.settings import get_settings
from shared.storage import ArtifactStore

log = logging.getLogger("bodyserve.jobs")

# Errors that say "not now" rather than "never": the task is retried with backoff.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    InferenceUnavailable,
    redis.ConnectionError,
    redis.TimeoutError,
)
# Runs of a job that may be lost with their worker (killed, out of memory) before the job is
# failed instead of being given back again.
MAX_LOST_RUNS = 3
# The job tasks (run_job's), as opposed to helper tasks such as webhook deliveries: the
# sweeper re-queues their jobs when a message is lost.
JOB_TASK_NAMES: set[str] = set()


class JobCancelled(Exception):
    """The client cancelled the job while it ran (seen at the next progress report)."""


@lru_cache(maxsize=1)
def worker_job_store() -> JobStore:
    """This worker process's job store; its Redis commands ride out a Redis restart."""
    settings = get_settings()
    return JobStore.from_url(
        settings.redis_url, settings.result_ttl_s, outage_s=settings.worker_redis_outage_s
    )


@lru_cache(maxsize=1)
def backend() -> InferenceBackend:
    """This worker process's inference backend (Triton when configured, else in-process)."""
    return get_backend(get_settings())


def warm_up() -> None:
    """Load what every task needs, once per worker process."""

    get_anny()
    backend()


@dataclass
class JobOutput:
    """What a work function produces: the JSON result and the artifacts to store (name -> data)."""

    result: dict[str, Any]
    artifacts: dict[str, bytes] = field(default_factory=dict)


@dataclass
class JobContext:
    """What a work function gets: the job's id and options, its stores, a progress reporter."""

    job_id: str
    options: dict[str, Any]
    store: JobStore
    artifacts: ArtifactStore

    def progress(self, fraction: float, message: str) -> None:
        """Record progress; raises :class:`JobCancelled` when the client cancelled the job."""
        if self.store.get(self.job_id).status is JobStatus.cancelled:
            raise JobCancelled(self.job_id)
        self.store.progress(self.job_id, fraction, message)


JobWork = Callable[[JobContext], JobOutput]


def job_task(capability: Capability) -> Callable[[Callable[..., str]], Any]:
    """``@app.task`` for the job of ``capability``: bound, named after its task, with its time
    limits (the table's); :func:`run_job` retries it on :data:`TRANSIENT_ERRORS` up to
    ``job_max_retries`` times."""
    JOB_TASK_NAMES.add(capability.task)
    settings = get_settings()
    return app.task(
        bind=True,
        name=capability.task,
        max_retries=settings.job_max_retries,
        **capability.time_limits.celery_options(settings),
    )


def retry_delay_s(retries: int, rng: random.Random | None = None) -> float:
    """Seconds before retry ``retries + 1``: ``job_retry_backoff_s * 2**retries`` up to
    ``job_retry_backoff_max_s``, drawn between half of it and all of it (a restarted model
    server is not hit by every job at once, and never sooner than half the backoff)."""
    settings = get_settings()
    ceiling = min(settings.job_retry_backoff_max_s, settings.job_retry_backoff_s * 2**retries)
    return (rng or random).uniform(ceiling / 2, ceiling)


def unavailable(exc: Exception) -> str:
    """What a transient error says was unavailable."""
    if isinstance(exc, InferenceUnavailable):
        return "the model server was unavailable"
    return "the job store (Redis) was unavailable"


def _publish_retry_policy() -> dict[str, float]:
    """How a retry's message is published: tried for about as long as a job rides out a
    Redis outage (Celery's default policy gives up after about a second)."""
    outage_s = get_settings().worker_redis_outage_s
    return {
        "max_retries": max(3, int(outage_s // 2)),
        "interval_start": 0.5,
        "interval_step": 0.5,
        "interval_max": 2.0,
    }


@task_failure.connect
def _fail_job_past_hard_limit(
    sender: Task | None = None,
    exception: BaseException | None = None,
    args: tuple[Any, ...] | None = None,
    **_: object,
) -> None:
    """The hard time limit kills the pool process with no chance to record the outcome, and
    the message is acknowledged: record it here (the worker's main process), or the job would
    stay ``running`` until the orphan sweep ran it again."""
    if not isinstance(exception, TimeLimitExceeded) or sender is None or not args:
        return
    if sender.name not in JOB_TASK_NAMES:
        return
    job_id = str(args[0])
    limit_s = sender.time_limit or get_settings().job_hard_time_limit_s
    with contextlib.suppress(redis.RedisError):  # the main process: no long Redis retries
        job_store().finish(
            job_id, JobStatus.failed, error=f"the job took longer than {limit_s} s and was killed"
        )
    announce_job_end(job_id)  # its webhook event, as run_job's ending sends it


class LeaseHeartbeat:
    """Keeps the job's lease alive while the task runs (a daemon thread); takes it back when a
    Redis outage let it lapse."""

    def __init__(self, store: JobStore, job_id: str, owner: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(store, job_id, owner), daemon=True)

    def _run(self, store: JobStore, job_id: str, owner: str) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if not store.refresh_lease(job_id, owner):
                    log.error("the lease of %s is held by another worker", job_id)
            except redis.RedisError:
                log.warning("heartbeat for %s failed", job_id)

    def __enter__(self) -> LeaseHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        # A refresh still on its way would take the lease back after the caller released it
        # (and make the job's next retry look as running elsewhere): let it land first.
        self._thread.join()


def run_job(task: Task, job_id: str, work: JobWork) -> str:
    """Run ``work`` for job ``job_id`` inside the job life cycle; returns the outcome's name.

    A transient error puts the job back to ``queued`` and raises Celery's ``Retry`` (a new
    message with a countdown) until the last retry, which fails the job; every other outcome
    is recorded in the job store.
    """
    store = worker_job_store()
    # One id per run: the lease's owner and the run's record (a redelivery is a new run).
    run_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    retries = int(task.request.retries or 0)
    try:
        job = store.get(job_id)
    except JobNotFound:
        log.warning("job %s has no record (expired?); dropping", job_id)
        return "missing"
    if job.status.terminal:
        return job.status.value  # cancelled before it ran, or a redelivered duplicate
    if not store.acquire_lease(job_id, run_id):
        return "running elsewhere"

    outcome = "failed"
    try:
        with LeaseHeartbeat(store, job_id, run_id):
            runs = store.runs(job_id)
            # Holding the lease, no other run is live: a run without an end lost its worker.
            lost = sum(1 for run in runs if run.outcome is None)
            if lost >= MAX_LOST_RUNS:
                store.finish(
                    job_id,
                    JobStatus.failed,
                    error=f"its worker stopped {lost} times while running it (killed or out "
                    "of memory?); it is not tried again",
                )
                return "failed"
            job = store.start(job_id, run_id, retry=retries)
            if job.status.terminal:
                outcome = job.status.value  # cancelled since it was read
                return outcome
            context = JobContext(job_id, job.options, store, artifact_store())
            output = work(context)
            for name, data in output.artifacts.items():
                context.artifacts.put(job_id, name, data)
            store.finish(job_id, JobStatus.succeeded, result=output.result)
            # Not succeeded when the client cancelled it while the last step ran.
            outcome = store.get(job_id).status.value
            return outcome
    except SoftTimeLimitExceeded:
        store.finish(
            job_id,
            JobStatus.failed,
            error=f"the job took longer than "
            f"{task.soft_time_limit or get_settings().job_soft_time_limit_s} s and was stopped",
        )
        return "failed"
    except JobCancelled:
        outcome = "cancelled"
        return outcome
    except TRANSIENT_ERRORS as exc:
        if retries >= task.max_retries:
            # The attempts as the job record counts them (a run lost with its worker too).
            started = [run.started_at for run in store.runs(job_id)] or [time.time()]
            store.finish(
                job_id,
                JobStatus.failed,
                error=f"{unavailable(exc)}: gave up after {len(started)} attempts over "
                f"{time.time() - min(started):.0f} s (last error: {exc})",
            )
            return "failed"
        delay = retry_delay_s(retries)
        outcome = "retry"
        store.requeue(
            job_id,
            f"{unavailable(exc)} (try {retries + 1} of {task.max_retries + 1}); retrying in "
            f"{delay:.0f} s: {exc}",
        )
        raise task.retry(exc=exc, countdown=delay, retry_policy=_publish_retry_policy()) from exc
    except Exception as exc:
        log.exception("job %s failed", job_id)
        store.finish(job_id, JobStatus.failed, error=f"{type(exc).__name__}: {exc}")
        return "failed"
    finally:
        # Best effort when Redis is down for good: the lease lapses by itself, and the message
        # (not acknowledged) comes back through the sweeper.
        with contextlib.suppress(redis.RedisError):
            store.end_run(job_id, run_id, outcome)
        with contextlib.suppress(redis.RedisError):
            store.release_lease(job_id, run_id)
        # Its webhook event, if the job ended here (once per job; never raises).
        announce_job_end(job_id)
