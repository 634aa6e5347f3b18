"""POST /v1/datasets: a synthetic dataset as a job (JSON spec -> WebDataset shards).

The spec is checked here, folders included, so that a bad one is a 422 at once; the job runs
as chunks on the ``datasets`` queue (the workers' dataset tasks). Its progress is on
``GET /v1/jobs/{id}``; ``DELETE /v1/jobs/{id}`` cancels it; its shards, card and contact sheet
are its artifacts (``GET /v1/jobs/{id}/artifacts/{name}``; the names are in its result).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from services.common.job_info import JobInfo
from services.gateway.errors import ApiError
from services.gateway.jobs_api import accept_job, job_responses
from shared.datasets.spec import DatasetSpec, SpecError, check_inputs
from shared.diffusion.pipelines import DiffusionUnavailable, check_model_dir
from shared.settings import get_settings

router = APIRouter(prefix="/v1", tags=["datasets"])


@router.post(
    "/datasets",
    status_code=202,
    response_model=JobInfo,
    responses=job_responses(
        None,
        {
            422: "Invalid spec; the message says what to fix.",
            503: "generator 'diffusion' without configured weights, or the job queue is "
            "unavailable.",
        },
    ),
)
async def create_dataset(
    spec: DatasetSpec,
    request: Request,
    response: Response,
    wait: Annotated[float, Query(ge=0, description="Seconds to wait for the result.")] = 0,
) -> JSONResponse | JobInfo:
    """Generate ``count`` labelled images of people (see the README's "Synthetic datasets")."""
    if spec.generator == "diffusion":
        try:
            check_model_dir(get_settings().diffusion_model_dir)
        except DiffusionUnavailable as exc:
            raise ApiError(
                503, f"generator 'diffusion': {exc}; generator 'render' needs no weights"
            ) from exc
    try:
        await run_in_threadpool(check_inputs, spec)
    except SpecError as exc:
        raise ApiError(422, str(exc)) from exc
    return await accept_job(
        request,
        response,
        "dataset_generation",
        {"spec": spec.model_dump(mode="json")},
        uploads={},
        wait_s=wait,
    )
