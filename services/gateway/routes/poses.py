"""POST /v1/poses/generate, /v1/poses/complete, /v1/poses/lift and /v1/motions/denoise (jobs,
JSON bodies).

Each validates its JSON body (422 with a message that says what to fix), records a job on the
``poses`` queue and answers 202 with a Location header; ``?wait=SECONDS`` answers 200 with the
result instead when the job finishes in time. Results: ``/v1/jobs/{id}`` and
``/v1/jobs/{id}/result``; files: ``/v1/jobs/{id}/artifacts/{name}``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from services.gateway.jobs_api import accept_job
from shared.schemas import (
    JobInfo,
    MotionDenoiseRequest,
    MotionDenoiseResult,
    PoseCompleteRequest,
    PoseCompleteResult,
    PoseGenerateRequest,
    PoseGenerateResult,
    PoseLiftRequest,
    PoseLiftResult,
)

router = APIRouter(prefix="/v1", tags=["pose prior"])

Wait = Annotated[
    float, Query(ge=0, description="Seconds to wait for the result before answering 202.")
]


def _responses(result: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    return {
        200: {"model": result, "description": "Finished within ?wait=SECONDS."},
        202: {"model": JobInfo, "description": "Accepted; poll the Location header."},
        422: {"description": "Invalid request; the message says what to fix."},
        503: {"description": "The job queue is unavailable; retry shortly."},
    }


@router.post(
    "/poses/generate",
    status_code=202,
    response_model=JobInfo | PoseGenerateResult,
    responses=_responses(PoseGenerateResult),
)
async def generate_poses(
    body: PoseGenerateRequest,
    request: Request,
    response: Response,
    wait: Wait = 0,
) -> JSONResponse | JobInfo:
    """Draw ``n`` body poses from the pose prior (pose i with seed ``seed + i``)."""
    return await accept_job(
        request, response, "pose_generation", body.model_dump(mode="json"), uploads={}, wait_s=wait
    )


@router.post(
    "/poses/complete",
    status_code=202,
    response_model=JobInfo | PoseCompleteResult,
    responses=_responses(PoseCompleteResult),
)
async def complete_pose(
    body: PoseCompleteRequest,
    request: Request,
    response: Response,
    wait: Wait = 0,
) -> JSONResponse | JobInfo:
    """Fill in the joints of a pose that are not known: ``k`` hypotheses, known joints kept,
    and the spread of each joint over the hypotheses."""
    return await accept_job(
        request, response, "pose_completion", body.model_dump(mode="json"), uploads={}, wait_s=wait
    )


@router.post(
    "/poses/lift",
    status_code=202,
    response_model=JobInfo | PoseLiftResult,
    responses=_responses(PoseLiftResult),
)
async def lift_poses(
    body: PoseLiftRequest,
    request: Request,
    response: Response,
    wait: Wait = 0,
) -> JSONResponse | JobInfo:
    """Lift 2D keypoints (people of one image, or tracks over frames) to ``hypotheses`` 3D
    poses each, by the pose prior's reprojection-guided sampler, with a summary: the
    representative hypothesis, each joint's spread in mm and the ambiguous joints."""
    return await accept_job(
        request, response, "pose_lifting", body.model_dump(mode="json"), uploads={}, wait_s=wait
    )


@router.post(
    "/motions/denoise",
    status_code=202,
    response_model=JobInfo | MotionDenoiseResult,
    responses=_responses(MotionDenoiseResult),
)
async def denoise_motion(
    body: MotionDenoiseRequest,
    request: Request,
    response: Response,
    wait: Wait = 0,
) -> JSONResponse | JobInfo:
    """Denoise a motion (3D joints or per-frame SMPL-X poses): smooth, plausible, with a BVH."""
    return await accept_job(
        request, response, "motion_denoising", body.model_dump(mode="json"), uploads={}, wait_s=wait
    )
