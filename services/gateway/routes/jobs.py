"""Job status, results, artifacts, cancellation and deletion: the same routes for every
capability.

A job is visible only to the principal that submitted it: another API key gets the same 404 as
for a job that does not exist, so job ids reveal nothing.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.common import broker
from services.common.job_info import JobInfo
from services.common.jobs import Job, JobNotFound, JobStatus, JobStore
from services.common.retention import delete_job
from services.common.webhooks import announce_job_end, delivery_state
from services.gateway.auth import current_principal
from services.gateway.deps import artifact_store, job_store
from services.gateway.errors import ApiError, error_responses
from services.gateway.jobs_api import job_info, read_job_record
from shared.schemas.artifacts import artifact_content_type
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
    record = await read_job_record(job_id)  # not its options: megabytes for a big lift
    if not record:
        raise unknown
    fields = {str(k): str(v) for k, v in record.items()}  # decode_responses=True
    job = Job.from_hash(fields)
    if job.owner != current_principal(request).id:
        raise unknown
    return job_info(request, job).model_copy(update={"webhook": delivery_state(fields)})


@router.get(
    "/{job_id}/result",
    name="get_job_result",
    responses=error_responses({409: "The job has not succeeded (yet): no result."}),
)
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
    media_type = artifact_content_type(job.capability, name)
    if media_type is None or job.status is not JobStatus.succeeded:
        raise ApiError(404, f"no artifact named {name!r} for this job")
    try:
        data = artifact_store().get(job_id, name)
    except ArtifactNotFound as exc:
        raise ApiError(404, f"no artifact named {name!r} for this job (not requested?)") from exc
    return Response(
        data,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{job_id}-{name}"'},
    )


@router.delete(
    "/{job_id}",
    response_model=JobInfo,
    responses={204: {"description": "The job had ended: it is deleted, files and all."}},
)
def cancel_or_delete_job(job_id: str, request: Request) -> JobInfo | Response:
    """Cancel a job that has not ended; delete one that has.

    - queued or running: cancelled (200 with the job, status ``cancelled``; a running job stops
      at its next step). Its record, upload and webhook event stay: DELETE it again to delete.
      If it ended meanwhile, 200 with the job as it ended (nothing cancelled, nothing deleted).
    - succeeded, failed or cancelled: deleted at once (204): its uploaded input and output files,
      its result and its record. ``GET /v1/jobs/{id}`` is 404 afterwards.
    """
    job = _job(job_id, request)
    store = job_store()
    if job.status.terminal:
        delete_job(store, artifact_store(), job_id)
        return Response(status_code=204)
    store.finish(job_id, JobStatus.cancelled, error="cancelled by the client")
    broker.revoke(job_id)
    announce_job_end(job_id)  # its event, if the job ended (cancelled here, or by its worker)
    record = store.redis.hgetall(JobStore.key(job_id))
    info = job_info(request, store.get(job_id))
    return info.model_copy(update={"webhook": delivery_state(record)})
