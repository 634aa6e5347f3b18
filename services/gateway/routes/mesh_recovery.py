"""POST /v1/mesh-recovery: a photo in, SMPL-X-convention bodies out (as a job)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from services.common.job_info import JobInfo
from services.common.stores import UPLOAD_NAME
from services.gateway.deps import settings
from services.gateway.errors import ApiError
from services.gateway.jobs_api import accept_job, job_responses
from shared.io.images import ImageError, decode_image
from shared.schemas.artifacts import DEFAULT_OUTPUTS, Output
from shared.schemas.common import MAX_SEED, setting_limit
from shared.schemas.mesh_recovery import (
    MAX_FOCAL_LENGTH_PX,
    MAX_ITERATIONS,
    MAX_PEOPLE,
    MIN_ITERATIONS,
    MeshRecoveryOptions,
    MeshRecoveryResult,
)
from shared.settings import Settings

router = APIRouter(prefix="/v1", tags=["mesh recovery"])
CAPABILITY = "mesh_recovery"
IMAGE_CONTENT_TYPES = (
    "image/jpeg", "image/png", "image/webp", "image/bmp", "image/tiff", "image/gif",
)  # fmt: skip
# Every output once, comma-separated ("glb,obj,ply,overlay,npz,json"), with room for spaces.
OUTPUTS_TEXT_LENGTH = 2 * len(",".join(Output))
IMAGE_ERROR_STATUS = {
    "empty_upload": 422,
    "upload_too_large": 413,
    "image_too_large": 413,
    "unsupported_format": 415,
    "corrupt_image": 422,
}


async def _read_upload(upload: UploadFile, limit: int) -> bytes:
    chunks, size = [], 0
    while chunk := await upload.read(1 << 20):
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the image is larger than {limit} bytes; send a smaller file")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/mesh-recovery",
    status_code=202,
    response_model=JobInfo | MeshRecoveryResult,
    responses=job_responses(
        MeshRecoveryResult,
        {
            400: "Not a readable multipart form, or more fields or files than a mesh-recovery "
            "request has.",
            413: "The upload is over BODYSERVE_MAX_UPLOAD_BYTES, or the image over "
            "BODYSERVE_MAX_IMAGE_PIXELS / BODYSERVE_MAX_IMAGE_SIDE.",
            415: "Not an image in a supported format.",
            422: "A damaged image, a missing image, or invalid options.",
        },
    ),
    # The form holds one image and a handful of short options: refuse anything bigger while
    # it is parsed (400), not after.
    form_limits={"max_files": 1, "max_fields": 16, "max_part_size": 1024},
    # What the image part may be (the bytes are what count: the format is read from them).
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "encoding": {"image": {"contentType": ", ".join(IMAGE_CONTENT_TYPES)}}
                }
            }
        }
    },
)
async def create_mesh_recovery(
    request: Request,
    response: Response,
    image: Annotated[UploadFile, File(description="Photo: JPEG, PNG, WebP, BMP, TIFF or GIF.")],
    body_model: Annotated[
        Literal["anny", "smplx"], Form(description="anny (default) or smplx")
    ] = "anny",
    max_people: Annotated[
        int, Form(ge=1, le=MAX_PEOPLE, description="1 to BODYSERVE_MAX_PEOPLE (16)")
    ] = 4,
    outputs: Annotated[
        str,
        Form(
            max_length=OUTPUTS_TEXT_LENGTH,
            description="Comma-separated, each at most once: glb, obj, ply, overlay, npz, json",
        ),
    ] = ",".join(o.value for o in DEFAULT_OUTPUTS),
    focal_length_px: Annotated[
        float | None,
        Form(gt=0, le=MAX_FOCAL_LENGTH_PX, description="Default: the photo's EXIF, else ~50°"),
    ] = None,
    iterations: Annotated[int, Form(ge=MIN_ITERATIONS, le=MAX_ITERATIONS)] = 60,
    seed: Annotated[int, Form(ge=0, le=MAX_SEED)] = 0,
    prior: Annotated[
        str | None,
        Form(
            max_length=len("pose_prior"),
            description="pose_prior (the learned prior) or none (a simple regulariser); "
            "default: pose_prior when one is published, else none",
        ),
    ] = None,
    hypotheses: Annotated[
        int,
        Form(
            ge=1,
            json_schema_extra=setting_limit("max_lift_hypotheses", "maximum"),
            description="3D bodies per person: 1 (the fit alone) up to "
            "BODYSERVE_MAX_LIFT_HYPOTHESES; above 1 also returns each person's hypotheses, "
            "per-joint uncertainty and spread.png (with the overlay output)",
        ),
    ] = 1,
    wait: Annotated[
        float, Query(ge=0, description="Seconds to wait for the result before answering 202.")
    ] = 0,
    config: Settings = Depends(settings),
) -> JSONResponse | JobInfo:
    try:
        options = MeshRecoveryOptions(
            body_model=body_model,
            max_people=max_people,
            outputs=[o.strip() for o in outputs.split(",") if o.strip()],
            focal_length_px=focal_length_px,
            iterations=iterations,
            seed=seed,
            prior=prior or None,
            hypotheses=hypotheses,
        )
    except ValidationError as exc:
        raise ApiError(422, _options_message(exc)) from exc
    if options.body_model == "smplx" and config.smplx_model_path is None:
        raise ApiError(
            422,
            "body_model=smplx needs SMPL-X model files on the server: set "
            "BODYSERVE_SMPLX_MODEL_PATH, or use body_model=anny (SMPL-X-convention parameters "
            "are returned either way)",
        )
    if options.max_people > config.max_people:
        raise ApiError(422, f"max_people must be at most {config.max_people}")

    data = await _read_upload(image, config.max_upload_bytes)
    try:
        decode_image(
            data,
            max_bytes=config.max_upload_bytes,
            max_pixels=config.max_image_pixels,
            max_side=config.max_image_side,
        )
    except ImageError as exc:
        raise ApiError(IMAGE_ERROR_STATUS.get(exc.code, 422), str(exc)) from exc

    return await accept_job(
        request,
        response,
        CAPABILITY,
        options.model_dump(mode="json"),
        uploads={UPLOAD_NAME: data},
        wait_s=wait,
    )


def _options_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "options"
        parts.append(f"{where}: {error['msg']}")
    return "invalid options: " + "; ".join(parts)
