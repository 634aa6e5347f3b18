"""POST /v1/poses/generate, /v1/poses/complete, /v1/poses/lift and /v1/motions/denoise (jobs,
JSON bodies).

Each validates its JSON body (422 with a message that says what to fix), records a job on the
``poses`` queue and answers 202 with a Location header; ``?wait=SECONDS`` answers 200 with the
result instead when the job finishes in time. Results: ``/v1/jobs/{id}`` and
``/v1/jobs/{id}/result``; files: ``/v1/jobs/{id}/artifacts/{name}``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.responses import JSONResponse

from services.common.job_info import JobInfo
from services.gateway.jobs_api import accept_job, job_responses
from shared.schemas.lifting import PoseLiftRequest, PoseLiftResult
from shared.schemas.poses import (
    MotionDenoiseRequest,
    MotionDenoiseResult,
    PoseCompleteRequest,
    PoseCompleteResult,
    PoseGenerateRequest,
    PoseGenerateResult,
)

router = APIRouter(prefix="/v1", tags=["pose prior"])

Wait = Annotated[
    float, Query(ge=0, description="Seconds to wait for the result before answering 202.")
]


_STANDING = [[0.0, 0.0, 0.0]] * 21  # every joint at rest: a person standing
# The COCO annotation of ../shared/data/keypoints2d (a skier), [x, y, visible].
_SKIER = [
    [367, 81, 1], [374, 73, 1], [360, 75, 1], [386, 78, 1], [356, 81, 1], [399, 108, 1],
    [358, 129, 1], [433, 142, 1], [341, 159, 1], [449, 165, 1], [309, 178, 1], [424, 203, 1],
    [393, 214, 1], [429, 294, 1], [367, 273, 1], [466, 362, 1], [396, 341, 1],
]  # fmt: skip
# A request of each kind, for the OpenAPI document (and its readers).
EXAMPLES: dict[str, dict[str, Any]] = {
    "generate": {"poses": {"summary": "4 poses", "value": {"n": 4, "seed": 7}}},
    "complete": {
        "legs": {
            "summary": "10 ways to fill in a hidden left leg",
            "value": {"body_pose": _STANDING, "hidden_parts": ["left_leg"], "k": 10},
        }
    },
    "lift": {
        "skier": {
            "summary": "One COCO person, 10 hypotheses",
            "value": {
                "format": "coco17",
                "image_size": {"width": 640, "height": 425},
                "people": [_SKIER],
                "hypotheses": 10,
            },
        }
    },
    "denoise": {
        "still": {
            "summary": "A motion of 3 frames, as joint positions",
            "value": {"joints": [[[0.0, 0.9, 0.0]] * 22] * 3, "fps": 30},
        }
    },
}


@router.post(
    "/poses/generate",
    status_code=202,
    response_model=JobInfo | PoseGenerateResult,
    responses=job_responses(PoseGenerateResult),
)
async def generate_poses(
    body: Annotated[PoseGenerateRequest, Body(openapi_examples=EXAMPLES["generate"])],
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
    responses=job_responses(PoseCompleteResult),
)
async def complete_pose(
    body: Annotated[PoseCompleteRequest, Body(openapi_examples=EXAMPLES["complete"])],
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
    responses=job_responses(PoseLiftResult),
)
async def lift_poses(
    body: Annotated[PoseLiftRequest, Body(openapi_examples=EXAMPLES["lift"])],
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
    responses=job_responses(MotionDenoiseResult),
)
async def denoise_motion(
    body: Annotated[MotionDenoiseRequest, Body(openapi_examples=EXAMPLES["denoise"])],
    request: Request,
    response: Response,
    wait: Wait = 0,
) -> JSONResponse | JobInfo:
    """Denoise a motion (3D joints or per-frame SMPL-X poses): smooth, plausible, with a BVH."""
    return await accept_job(
        request, response, "motion_denoising", body.model_dump(mode="json"), uploads={}, wait_s=wait
    )
