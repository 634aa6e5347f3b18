"""POST /v1/mesh-recovery: its options (form fields) and its result."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from shared.bodies.joint_names import SKELETON_JOINTS
from shared.schemas.artifacts import DEFAULT_OUTPUTS, Output
from shared.schemas.bodies import AnnyParams, Camera, LiftedPose, SmplxParams
from shared.schemas.common import check_count, setting_limit
from shared.settings import get_settings

# Mesh recovery's options (form fields, next to the image).
MAX_PEOPLE = 16  # the most BODYSERVE_MAX_PEOPLE can allow
MIN_ITERATIONS, MAX_ITERATIONS = 5, 500
MAX_FOCAL_LENGTH_PX = 100_000.0


class MeshRecoveryOptions(BaseModel):
    """Options of one mesh-recovery request (sent as form fields next to the image)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    body_model: Literal["anny", "smplx"] = Field(
        "anny",
        description="Body model to fit. 'smplx' needs BODYSERVE_SMPLX_MODEL_PATH on the server; "
        "SMPL-X-convention parameters come with every answer either way.",
    )
    max_people: int = Field(
        4, ge=1, le=MAX_PEOPLE, description="Largest number of people to recover."
    )
    outputs: list[Output] = Field(
        default_factory=lambda: list(DEFAULT_OUTPUTS),
        max_length=len(Output),
        description="Artifacts to produce, each at most once: glb, obj, ply (meshes), overlay "
        "(PNG), npz, json.",
    )
    focal_length_px: float | None = Field(
        None,
        gt=0,
        le=MAX_FOCAL_LENGTH_PX,
        description="Camera focal length in pixels; default: from the photo's EXIF (35 mm-"
        "equivalent focal length), else a ~50° field of view.",
    )
    iterations: int = Field(
        60, ge=MIN_ITERATIONS, le=MAX_ITERATIONS, description="Fitting iterations."
    )
    seed: int = Field(0, ge=0, le=2**31 - 1)
    prior: Literal["pose_prior", "none"] | None = Field(
        None,
        description="Pose prior of the fit: 'pose_prior' (the learned prior; fails when none is "
        "published) or 'none' (a simple regulariser). Default: 'pose_prior' when a prior is "
        "published, else 'none'; the result says which was used.",
    )
    hypotheses: int = Field(
        1,
        ge=1,
        json_schema_extra=setting_limit("max_lift_hypotheses", "maximum"),
        description="3D bodies per person: 1 (default) is the deterministic fit alone; 2 up to "
        "BODYSERVE_MAX_LIFT_HYPOTHESES also samples that many bodies per person consistent with "
        "the photo (guided by the pose prior), with each joint's uncertainty, and adds "
        "spread.png to the overlay output.",
    )

    @field_validator("outputs")
    @classmethod
    def _unique(cls, value: list[Output]) -> list[Output]:
        return list(dict.fromkeys(value))

    @field_validator("hypotheses")
    @classmethod
    def _hypotheses_within_limit(cls, value: int) -> int:
        return check_count(
            value, get_settings().max_lift_hypotheses, "hypotheses", "max_lift_hypotheses"
        )

    @model_validator(mode="after")
    def _lift_rows_within_limit(self) -> MeshRecoveryOptions:
        # Every detected person is lifted N times: bound the worst case like the lift route.
        if self.hypotheses > 1:
            check_count(
                self.max_people * self.hypotheses,
                get_settings().max_lift_rows,
                f"max_people x hypotheses ({self.max_people} x {self.hypotheses})",
                "max_lift_rows",
            )
        return self


class PersonResult(BaseModel):
    index: int
    bbox: list[float]  # x0, y0, x1, y1 pixels
    detection_score: float
    keypoints_2d: list[list[float]]  # 33 x 3 detected, mediapipe33
    fitted_keypoints_2d: list[list[float]]  # 33 x 2 reprojected from the fitted body
    # The fitted body's mediapipe33 points in the camera frame (metres); null for the points
    # Anny has no counterpart of (eye and mouth corners).
    keypoints_3d: list[list[float] | None]
    reprojection_error_px: float
    hands_detected: list[str]
    smplx: SmplxParams
    anny: AnnyParams
    # With hypotheses > 1 only (left out of the answer otherwise, which stays as it was).
    hypotheses: list[LiftedPose] | None = Field(
        None,
        description="N sampled bodies consistent with the photo, SMPL-X convention in the camera "
        "frame; keypoints_2d are mediapipe33. The fit above stays the person's main body.",
    )
    uncertainty: dict[str, float] | None = Field(
        None,
        description="Per joint (sampling.joint_names): the hypotheses' spread about their mean, "
        "pelvis-relative, per-axis standard deviation in millimetres.",
    )
    ambiguous_joints: list[str] | None = Field(
        None, description="Joints whose spread exceeds sampling.ambiguous_spread_mm."
    )
    representative: int | None = Field(
        None, description="Index of the medoid hypothesis (closest on average to the others)."
    )

    # No return annotation: pydantic would take it for the serialized schema, which would
    # replace this model's schema in the OpenAPI document (``-> Any`` makes it ``{}``).
    @model_serializer(mode="wrap")
    def _omit_unsampled(self, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        return _omit_none(handler(self), self.hypotheses is None, _PERSON_SAMPLING_FIELDS)


_PERSON_SAMPLING_FIELDS = ("hypotheses", "uncertainty", "ambiguous_joints", "representative")


def _omit_none(data: Any, unset: bool, keys: tuple[str, ...]) -> Any:
    """``data`` without ``keys`` when ``unset``: answers without hypotheses keep today's shape."""
    if unset and isinstance(data, dict):
        for key in keys:
            data.pop(key, None)
    return data


class MeshRecoveryResult(BaseModel):
    body_model: str
    image_width: int
    image_height: int
    camera: Camera
    people: list[PersonResult]
    prior: Literal["pose_prior", "none"] | None = Field(
        None, description="The pose prior the fit used (null when nobody was fitted)."
    )
    prior_version: int | None = Field(
        None, description="The published pose_prior version used, with prior 'pose_prior'."
    )
    reason: str | None = Field(None, description="Why no body was recovered, if none was.")
    artifacts: dict[str, str] = Field(
        default_factory=dict, description="Artifact name -> content type."
    )
    timings_ms: dict[str, float] = Field(default_factory=dict)
    sampling: HypothesisSampling | None = Field(
        None,
        description="How each person's hypotheses were sampled (left out with hypotheses=1).",
    )

    @model_serializer(mode="wrap")  # unannotated, as PersonResult's
    def _omit_unsampled(self, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        return _omit_none(handler(self), self.sampling is None, ("sampling",))


class HypothesisSampling(BaseModel):
    """The hypotheses of a mesh recovery with hypotheses > 1."""

    hypotheses: int = Field(description="N bodies per person.")
    seeds: list[int] = Field(description="The seed of each person's hypotheses: seed + i.")
    prior_version: int = Field(description="The pose_prior version that guided the sampling.")
    joint_names: list[str] = Field(
        default_factory=lambda: list(SKELETON_JOINTS),
        description="Row names of each hypothesis' joints_3d.",
    )
    ambiguous_spread_mm: float = Field(description="The spread above which a joint is ambiguous.")
    frame: str = "camera (OpenCV): x right, y down, z ahead; metres"
