"""POST /v1/images/generate: images of people for a text prompt, with their recovered bodies
(Diffusion-HPC), as a job on the generation workers' ``datasets`` queue.

The weights folder (``BODYSERVE_DIFFUSION_MODEL_DIR``) is checked here, without loading
anything: not configured, or a piece missing, is a 503 that says which. The images and their
depth maps are the job's artifacts (``GET /v1/jobs/{id}/artifacts/image-000.png``, ...).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from services.common.job_info import JobInfo
from services.gateway.errors import ApiError
from services.gateway.jobs_api import accept_job, job_responses
from shared.diffusion.pipelines import DiffusionUnavailable, check_model_dir
from shared.schemas.images import ImageGenerateRequest, ImageGenerateResult
from shared.settings import get_settings

router = APIRouter(prefix="/v1", tags=["image generation"])

EXAMPLES: dict[str, dict[str, Any]] = {
    "text": {
        "summary": "4 images from a prompt (generate, recover, regenerate with the body's depth)",
        "value": {"prompt": "a photo of a person doing yoga", "n": 4, "seed": 7},
    },
    "pose": {
        "summary": "Follow a pose: every joint at rest (standing)",
        "value": {
            "prompt": "a photo of a person standing in a park",
            "guidance": {"pose": {"body_pose": [[0.0, 0.0, 0.0]] * 21}},
        },
    },
}


@router.post(
    "/images/generate",
    status_code=202,
    response_model=JobInfo | ImageGenerateResult,
    responses=job_responses(
        ImageGenerateResult,
        {
            503: "No weights configured (BODYSERVE_DIFFUSION_MODEL_DIR), a piece of them "
            "missing (the message says which), or the job queue is unavailable."
        },
    ),
)
async def generate_images(
    body: Annotated[ImageGenerateRequest, Body(openapi_examples=EXAMPLES)],
    request: Request,
    response: Response,
    wait: Annotated[
        float, Query(ge=0, description="Seconds to wait for the result before answering 202.")
    ] = 0,
) -> JSONResponse | JobInfo:
    """Generate ``n`` images of people (image i with seed ``seed + i``), each with the bodies
    recovered in it, the depth map its ControlNet followed and its seed."""
    try:
        await run_in_threadpool(check_model_dir, get_settings().diffusion_model_dir)
    except DiffusionUnavailable as exc:
        raise ApiError(503, str(exc)) from exc
    return await accept_job(
        request, response, "image_generation", body.model_dump(mode="json"), uploads={}, wait_s=wait
    )
