"""The job life cycle every Celery task shares, written once.

A capability's task is a thin adapter: it names a *work* function that turns the job's options
(and uploaded inputs) into a result and artifacts; :func:`run_job` does the rest:

- drops a message whose job record is gone (expired) or already ended (cancelled before it ran,
  a redelivered duplicate);
- takes the job's lease (a second delivery of the same job while it runs elsewhere is dropped)
  and keeps it alive with a heartbeat thread, so that the sweeper of
  :mod:`services.workers.recovery` gives the job of a dead worker back to the queue;
- marks the job running, calls the work, stores its artifacts, records the result once;
- turns the soft time limit into a failed job with a message that says so, a cancellation seen
  through :meth:`JobContext.progress` into a quiet stop, a transient error (model server or
  Redis unreachable) into a retry with backoff (failed after the last one), anything else into
  a failed job carrying the error's message.

Define a task with :func:`job_task`, which adds the retry policy::

    @job_task("bodyserve.pose_generation")
    def pose_generation(self: Task, job_id: str) -> str:
        return run_job(self, job_id, generate_work)
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import redis
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from services.common.jobs import HEARTBEAT_S, JobNotFound, JobStatus, JobStore
from services.common.stores import artifact_store, job_store
from services.common.triton import get_backend
from services.workers.celery_app import app
from shared.inference import InferenceBackend, InferenceUnavailable
from shared.settings import get_settings
from shared.storage import ArtifactStore

log = logging.getLogger("bodyserve.jobs")

# Errors that say "not now" rather than "never": the task is retried with backoff.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    InferenceUnavailable,
    redis.ConnectionError,
    redis.TimeoutError,
)


class JobCancelled(Exception):
    """The client cancelled the job while it ran (seen at the next progress report)."""


@lru_cache(maxsize=1)
def backend() -> InferenceBackend:
    """This worker process's inference backend (Triton when configured, else in-process)."""
    return get_backend(get_settings())


def warm_up() -> None:
    """Load what every task needs, once per worker process."""
    from shared.bodies.anny_model import get_anny

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


def job_task(name: str) -> Callable[[Callable[..., str]], Any]:
    """``@app.task`` for a job: bound, named ``name``, retried on :data:`TRANSIENT_ERRORS`."""
    return app.task(
        bind=True,
        name=name,
        autoretry_for=TRANSIENT_ERRORS,
        retry_backoff=2,
        retry_backoff_max=30,
        retry_jitter=True,
        max_retries=get_settings().job_max_retries,
    )


class _Heartbeat:
    """Keeps the job's lease alive while the task runs (a daemon thread)."""

    def __init__(self, store: JobStore, job_id: str, owner: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(store, job_id, owner), daemon=True)

    def _run(self, store: JobStore, job_id: str, owner: str) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                store.refresh_lease(job_id, owner)
            except redis.RedisError:
                log.warning("heartbeat for %s failed", job_id)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()


def run_job(task: Task, job_id: str, work: JobWork) -> str:
    """Run ``work`` for job ``job_id`` inside the job life cycle; returns the outcome's name.

    Transient errors are re-raised (after the job is put back to ``queued``) so that Celery's
    ``autoretry_for`` retries the task; every other outcome is recorded in the job store.
    """
    store = job_store()
    owner = f"{socket.gethostname()}:{os.getpid()}:{task.request.id}"
    try:
        job = store.get(job_id)
    except JobNotFound:
        log.warning("job %s has no record (expired?); dropping", job_id)
        return "missing"
    if job.status.terminal:
        return job.status.value  # cancelled before it ran, or a redelivered duplicate
    if not store.acquire_lease(job_id, owner):
        return "running elsewhere"

    try:
        with _Heartbeat(store, job_id, owner):
            store.start(job_id, owner)
            context = JobContext(job_id, job.options, store, artifact_store())
            output = work(context)
            for name, data in output.artifacts.items():
                context.artifacts.put(job_id, name, data)
            if store.finish(job_id, JobStatus.succeeded, result=output.result):
                return "succeeded"
            return store.get(job_id).status.value  # cancelled while the last step ran
    except SoftTimeLimitExceeded:
        store.finish(
            job_id,
            JobStatus.failed,
            error=f"the job took longer than {get_settings().job_soft_time_limit_s} s "
            "and was stopped",
        )
        return "failed"
    except JobCancelled:
        return "cancelled"
    except TRANSIENT_ERRORS as exc:
        if task.request.retries >= task.max_retries:
            store.finish(job_id, JobStatus.failed, error=f"model server unavailable: {exc}")
            return "failed"
        store.requeue(job_id, f"retrying after a transient error: {exc}")
        raise
    except Exception as exc:
        log.exception("job %s failed", job_id)
        store.finish(job_id, JobStatus.failed, error=f"{type(exc).__name__}: {exc}")
        return "failed"
    finally:
        store.release_lease(job_id, owner)
