"""Celery task: mesh recovery of one uploaded photo (a thin adapter over the shared pipeline)."""

from __future__ import annotations

import logging
import os
import socket
import threading
from functools import lru_cache

import redis
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from services.common.jobs import HEARTBEAT_S, JobNotFound, JobStatus, JobStore
from services.common.stores import UPLOAD_NAME, artifact_store, job_store
from services.common.triton import get_backend
from services.workers.celery_app import app
from shared.inference import InferenceBackend, InferenceUnavailable
from shared.io.images import decode_image, exif_focal_length_px
from shared.pipeline.mesh_recovery import recover
from shared.schemas import MeshRecoveryOptions
from shared.settings import get_settings

log = logging.getLogger("bodyserve.mesh_recovery")


class JobCancelled(Exception):
    pass


@lru_cache(maxsize=1)
def backend() -> InferenceBackend:
    return get_backend(get_settings())


def warm_up() -> None:
    """Load what every task needs, once per worker process."""
    from shared.bodies.anny_model import get_anny

    get_anny()
    backend()


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


@app.task(
    bind=True,
    name="bodyserve.mesh_recovery",
    autoretry_for=(InferenceUnavailable, redis.ConnectionError, redis.TimeoutError),
    retry_backoff=2,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=get_settings().job_max_retries,
)
def mesh_recovery(self: Task, job_id: str) -> str:
    store = job_store()
    owner = f"{socket.gethostname()}:{os.getpid()}:{self.request.id}"
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
            return _run(store, job_id, job.options)
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
    except (InferenceUnavailable, redis.ConnectionError, redis.TimeoutError) as exc:
        if self.request.retries >= self.max_retries:
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


def _run(store: JobStore, job_id: str, options_json: dict) -> str:
    settings = get_settings()
    artifacts = artifact_store()
    options = MeshRecoveryOptions.model_validate(options_json)
    upload = artifacts.get(job_id, UPLOAD_NAME)
    image = decode_image(
        upload,
        max_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_image_pixels,
        max_side=settings.max_image_side,
    )

    def progress(fraction: float, message: str) -> None:
        if store.get(job_id).status is JobStatus.cancelled:
            raise JobCancelled(job_id)
        store.progress(job_id, fraction, message)

    focal = exif_focal_length_px(upload, image.shape[1], image.shape[0])
    output = recover(image, options, backend(), progress, focal)
    for name, data in output.artifacts.items():
        artifacts.put(job_id, name, data)
    result = output.result.model_dump(mode="json")
    if store.finish(job_id, JobStatus.succeeded, result=result):
        return "succeeded"
    return store.get(job_id).status.value
