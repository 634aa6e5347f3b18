"""POST /v1/images/generate: the request and its result (Diffusion-HPC image generation)."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.schemas.bodies import Camera
from shared.schemas.common import MAX_SEED, check_count, setting_limit
from shared.schemas.mesh_recovery import MAX_PEOPLE, PersonResult
from shared.schemas.poses import SmplxPoseInput
from shared.settings import get_settings

MAX_PROMPT_CHARS = 500
MIN_SIDE, MAX_SIDE = 32, 1024
MAX_STEPS = 100
MAX_GUIDANCE_SCALE = 30.0
# A 1024 x 1024 16-bit PNG of noise is about 2 MiB; base64 adds a third.
MAX_DEPTH_PNG_CHARS = 4 * 1024 * 1024
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def image_name(index: int) -> str:
    return f"image-{index:03d}.png"


def depth_name(index: int) -> str:
    return f"depth-{index:03d}.png"


def first_pass_name(index: int) -> str:
    return f"first-{index:03d}.png"


class Guidance(BaseModel):
    """What the depth ControlNet follows from the first step: a body pose (rendered as the
    depth of an Anny body) or your own depth map. Exactly one."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    pose: SmplxPoseInput | None = Field(
        None,
        description="SMPL-X-convention body_pose (21 x 3) and optional global_orient (camera "
        "frame, OpenCV axes, as mesh recovery reports it; default: upright, facing the "
        "camera). The body is an average Anny adult, framed to fill the image.",
    )
    depth_png: str | None = Field(
        None,
        max_length=MAX_DEPTH_PNG_CHARS,
        description="A depth map as a base64 PNG (grey, 8 or 16 bit), ControlNet convention: "
        "brighter is nearer, 0 is background. Resized to width x height.",
    )

    @field_validator("depth_png")
    @classmethod
    def _png(cls, value: str | None) -> str | None:
        if value is not None:
            decode_depth_png(value)
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Guidance:
        if (self.pose is None) == (self.depth_png is None):
            raise ValueError("guidance takes exactly one of 'pose' and 'depth_png'")
        return self


def decode_depth_png(value: str) -> bytes:
    """The PNG bytes of a base64 depth map, checked (ValueError says what is wrong)."""

    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("depth_png must be base64 (standard alphabet, padded)") from exc
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError("depth_png must be a PNG image (base64 of the file's bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size  # from the header: nothing decoded yet
            if max(width, height) > MAX_SIDE:
                raise ValueError(f"depth_png is {width} x {height}; at most {MAX_SIDE} px a side")
            image.load()
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"depth_png is not a readable PNG: {exc}") from exc
    return data


class ImageGenerateRequest(BaseModel):
    """Generate ``n`` images of people for a text prompt, with their recovered bodies."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: str = Field(
        min_length=1, max_length=MAX_PROMPT_CHARS, description="What to draw, in English."
    )
    negative_prompt: str | None = Field(
        None, max_length=MAX_PROMPT_CHARS, description="What to keep out of the images."
    )
    n: int = Field(
        1,
        ge=1,
        json_schema_extra=setting_limit("max_generated_images", "maximum"),
        description="Number of images (at most BODYSERVE_MAX_GENERATED_IMAGES).",
    )
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Image i uses seed + i: same request, same images."
    )
    width: int = Field(512, ge=MIN_SIDE, le=MAX_SIDE, description="Pixels, a multiple of 8.")
    height: int = Field(512, ge=MIN_SIDE, le=MAX_SIDE, description="Pixels, a multiple of 8.")
    steps: int = Field(30, ge=1, le=MAX_STEPS, description="Denoising steps per pass.")
    guidance_scale: float = Field(
        7.5, ge=0.0, le=MAX_GUIDANCE_SCALE, description="Classifier-free guidance (text)."
    )
    controlnet_scale: float = Field(
        1.0, ge=0.0, le=2.0, description="Weight of the depth conditioning."
    )
    guidance: Guidance | None = Field(
        None,
        description="Pose or depth to follow from the first step; without it, Diffusion-HPC's "
        "loop: generate, recover the body, regenerate following its depth.",
    )
    refine: bool = Field(
        True,
        description="Without guidance: regenerate each image following the depth of the body "
        "recovered in it (false: keep the first image).",
    )
    max_people: int = Field(4, ge=1, le=MAX_PEOPLE, description="Most bodies recovered per image.")

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must not be blank")
        return value

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"must be a multiple of 8 (the VAE's scale), got {value}")
        return value

    @field_validator("n")
    @classmethod
    def _n_within_limit(cls, value: int) -> int:
        return check_count(value, get_settings().max_generated_images, "n", "max_generated_images")

    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.n)]


class GeneratedImage(BaseModel):
    index: int
    seed: int
    image: str = Field(description="Artifact name of the image (PNG).")
    conditioning: Literal["none", "pose", "depth", "recovered_body"] = Field(
        description="What the depth ControlNet followed: nothing (text only), the request's "
        "pose or depth map, or the body recovered in the first image (Diffusion-HPC)."
    )
    conditioning_depth: str | None = Field(
        None, description="Artifact name of the depth map given to the ControlNet (PNG)."
    )
    first_pass_image: str | None = Field(
        None, description="Artifact name of the text-only first image, when it was regenerated."
    )
    camera: Camera
    people: list[PersonResult] = Field(
        description="Bodies recovered in the final image (mesh recovery's person results)."
    )
    reason: str | None = Field(None, description="Why people is empty, or why no regeneration.")


class ImageGenerateResult(BaseModel):
    prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    device: str
    images: list[GeneratedImage]
    artifacts: dict[str, str] = Field(description="Artifact name -> content type.")
    timings_ms: dict[str, float] = Field(default_factory=dict)
