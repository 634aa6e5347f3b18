"""Job bookkeeping shared by every capability's route: submit, wait, describe."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

import redis
import redis.asyncio as aioredis
from fastapi import Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from services.common.jobs import Job, JobStatus, JobStore
from services.common.stores import artifact_store, job_store
from services.gateway.errors import ApiError
from services.workers.celery_app import QUEUES, TASKS
from services.workers.celery_app import app as celery_app
from shared.schemas import JobInfo
from shared.settings import get_settings
from shared.storage import ArtifactStore

_async_redis: aioredis.Redis | None = None


def async_redis() -> aioredis.Redis:
    global _async_redis
    if _async_redis is None:
        _async_redis = aioredis.Redis.from_url(get_settings().redis_url, decode_responses=True)
    return _async_redis


def submit_job(
    capability: str,
    options: dict[str, Any],
    *,
    uploads: dict[str, bytes],
    store: JobStore,
    artifacts: ArtifactStore,
) -> Job:
    """Record the job, store its inputs, then enqueue it; the job exists before its message."""
    job = store.create(capability, options)
    for name, data in uploads.items():
        artifacts.put(job.id, name, data)
    try:
        celery_app.send_task(
            TASKS[capability], args=[job.id], task_id=job.id, queue=QUEUES[capability]
        )
    except Exception as exc:  # broker down: the job must not look accepted
        store.finish(job.id, JobStatus.failed, error="could not be queued: broker unavailable")
        raise ApiError(
            503, "the job queue is unavailable right now; retry shortly", {"Retry-After": "5"}
        ) from exc
    return job


async def wait_for_job(job_id: str, timeout_s: float) -> dict[str, Any] | None:
    """The finished job's result body, or None if it did not finish within ``timeout_s``."""
    client = async_redis()
    key = JobStore.key(job_id)
    status = await client.hget(key, "status")
    deadline = time.monotonic() + timeout_s
    while status is None or not JobStatus(str(status)).terminal:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            # Short slices: redis-py's async client gives up reading after its socket
            # timeout (5 s by default), even on a blocking command with a longer timeout.
            await client.blpop([JobStore.key(job_id, "done")], timeout=min(remaining, 2.0))
        except redis.RedisError:
            return None
        status = await client.hget(key, "status")
    if status is None or not JobStatus(str(status)).terminal:
        return None
    if status == JobStatus.succeeded.value:
        raw = await client.get(JobStore.key(job_id, "result"))
        return {"job_id": job_id, "status": status, "result": json.loads(raw) if raw else None}
    error = await client.hget(key, "error")
    return {"job_id": job_id, "status": status, "error": error or None}


def job_info(request: Request, job: Job) -> JobInfo:
    links = {"self": str(request.url_for("get_job", job_id=job.id))}
    if job.status is JobStatus.succeeded:
        links["result"] = str(request.url_for("get_job_result", job_id=job.id))
    # Every field of the job record but its options (the request, not its state).
    record = {k: v for k, v in asdict(job).items() if k != "options"}
    return JobInfo(**record, links=links)


async def accept_job(
    request: Request,
    response: Response,
    capability: str,
    options: dict[str, Any],
    *,
    uploads: dict[str, bytes],
    wait_s: float,
) -> JSONResponse | JobInfo:
    """Submit a job and answer as every capability's route does: 200 with the result when the
    job ends within ``wait_s`` (capped by ``max_wait_s``), else 202 with the job and its
    Location."""
    job = await run_in_threadpool(
        submit_job,
        capability,
        options,
        uploads=uploads,
        store=job_store(),
        artifacts=artifact_store(),
    )
    location = str(request.url_for("get_job", job_id=job.id))
    if wait_s > 0:
        finished = await wait_for_job(job.id, min(wait_s, get_settings().max_wait_s))
        if finished is not None:
            return JSONResponse(finished, status_code=200, headers={"Location": location})
    response.headers["Location"] = location
    return job_info(request, await run_in_threadpool(job_store().get, job.id))
