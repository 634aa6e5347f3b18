"""Job status, results, artifacts and cancellation: the same routes for every capability.

A job is visible only to the principal that submitted it: another API key gets the same 404 as
for a job that does not exist, so job ids reveal nothing.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.common.jobs import Job, JobNotFound, JobStatus, JobStore
from services.gateway.auth import current_principal
from services.gateway.deps import artifact_store, job_store
from services.gateway.errors import ApiError
from services.gateway.jobs_api import async_redis, job_info
from services.workers.celery_app import app as celery_app
from shared.schemas import CONTENT_TYPES, JobInfo
from shared.storage import ArtifactNotFound, check_job_id, check_name

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _job(job_id: str, request: Request) -> Job:
    """The caller's job ``job_id``; 404 when there is none, or it is another principal's."""
    unknown = ApiError(404, f"no job with id {job_id!r} (unknown, or its results expired)")
    try:
        check_job_id(job_id)
        job = job_store().get(job_id)
    except (JobNotFound, ValueError) as exc:
        raise unknown from exc
    if job.owner != current_principal(request).id:
        raise unknown
    return job


@router.get("/{job_id}", response_model=JobInfo, name="get_job")
async def get_job(job_id: str, request: Request) -> JobInfo:
    # The route clients poll: served on the event loop with the async Redis client, without a
    # worker-thread hop, so that status reads stay fast while the gateway is busy.
    unknown = ApiError(404, f"no job with id {job_id!r} (unknown, or its results expired)")
    try:
        check_job_id(job_id)
    except ValueError as exc:
        raise unknown from exc
    record = await async_redis().hgetall(JobStore.key(job_id))
    if not record:
        raise unknown
    job = Job.from_hash({str(k): str(v) for k, v in record.items()})  # decode_responses=True
    if job.owner != current_principal(request).id:
        raise unknown
    return job_info(request, job)


@router.get("/{job_id}/result", name="get_job_result")
def get_job_result(job_id: str, request: Request) -> dict[str, Any]:
    job = _job(job_id, request)
    if job.status is JobStatus.failed:
        raise ApiError(409, f"the job failed: {job.error}")
    if job.status is JobStatus.cancelled:
        raise ApiError(409, "the job was cancelled")
    if job.status is not JobStatus.succeeded:
        raise ApiError(409, f"the job is {job.status.value}; poll /v1/jobs/{job_id} until it ends")
    result = job_store().result(job_id)
    if result is None:
        raise ApiError(404, "the job's result has expired")
    return result


@router.get("/{job_id}/artifacts/{name}", name="get_job_artifact")
def get_job_artifact(job_id: str, name: str, request: Request) -> Response:
    job = _job(job_id, request)
    try:
        check_name(name)
    except ValueError as exc:
        raise ApiError(404, f"no artifact named {name!r}") from exc
    if name not in CONTENT_TYPES or job.status is not JobStatus.succeeded:
        raise ApiError(404, f"no artifact named {name!r} for this job")
    try:
        data = artifact_store().get(job_id, name)
    except ArtifactNotFound as exc:
        raise ApiError(404, f"no artifact named {name!r} for this job (not requested?)") from exc
    return Response(
        data,
        media_type=CONTENT_TYPES[name],
        headers={"Content-Disposition": f'attachment; filename="{job_id}-{name}"'},
    )


@router.delete("/{job_id}", response_model=JobInfo)
def cancel_job(job_id: str, request: Request) -> JobInfo:
    job = _job(job_id, request)
    if not job.status.terminal:
        job = job_store().cancel(job_id)
        celery_app.control.revoke(job_id)
    return job_info(request, job)
