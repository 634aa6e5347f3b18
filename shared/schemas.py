"""Request and result schemas shared by the gateway, the workers and the command line."""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any, Literal, get_args

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from shared.keypoints.formats import FORMATS
from shared.settings import get_settings


class Output(StrEnum):
    glb = "glb"
    obj = "obj"
    ply = "ply"
    overlay = "overlay"
    npz = "npz"
    json = "json"


DEFAULT_OUTPUTS = (Output.glb, Output.overlay, Output.npz, Output.json)

# Artifacts a mesh-recovery job can produce, with their content types.
CONTENT_TYPES = {
    "mesh.glb": "model/gltf-binary",
    "mesh.obj": "text/plain",
    "mesh.ply": "application/octet-stream",
    "overlay.png": "image/png",
    # With hypotheses > 1 and the overlay output: every hypothesis on the photo and from the side.
    "spread.png": "image/png",
    "params.npz": "application/octet-stream",
    "result.json": "application/json",
    # Pose generation / completion (outputs "mesh") and motion denoising.
    "poses.glb": "model/gltf-binary",
    "poses.obj": "text/plain",
    "motion.bvh": "text/plain",
}
# A dataset job's files besides its shards.
DATASET_FILES = {
    "card.json": "application/json",
    "index.json": "application/json",
    "contact_sheet.png": "image/png",
}
# Shards and their sidecars: <name>-<6 digits>.tar / .json (shared.datasets.spec.shard_name).
_DATASET_SHARD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*-\d{6}\.(tar|json)$")
# Image generation: per image i, image-<i>.png, its ControlNet depth-<i>.png and, when it was
# regenerated, the first pass first-<i>.png (shared.diffusion.schemas).
_GENERATED_IMAGE = re.compile(r"^(image|depth|first)-\d{3}\.png$")


def artifact_content_type(capability: str, name: str) -> str | None:
    """The content type of a job's artifact ``name``, or None when no such artifact is served
    (uploads, for one, never are)."""
    if capability == "dataset_generation":
        if name in DATASET_FILES:
            return DATASET_FILES[name]
        match = _DATASET_SHARD.match(name)
        if match:
            return "application/x-tar" if match.group(1) == "tar" else "application/json"
        return None
    if capability == "image_generation":
        return "image/png" if _GENERATED_IMAGE.match(name) else None
    return CONTENT_TYPES.get(name)


# The artifact each requested output is written to.
ARTIFACT_OF = {
    Output.glb: "mesh.glb",
    Output.obj: "mesh.obj",
    Output.ply: "mesh.ply",
    Output.overlay: "overlay.png",
    Output.npz: "params.npz",
    Output.json: "result.json",
}


# =========================================================================== request bounds
#
# Every list in a request has a most number of items and every number a range, so that no
# request makes the server build more than its limits allow, and no number overflows the
# float32 math it feeds (past 3.4e38). Fixed shapes (21 joints, 3 numbers, 33 keypoints) are
# enforced by pydantic (max_length); counts that follow a server setting (frames, people,
# samples) are checked by the validators below, whose messages name the setting, and shown in
# the OpenAPI document with the setting's current value.

MAX_ABS_RADIANS = 1_000.0  # axis-angle components: a few turns is all that makes sense
MAX_ABS_METRES = 10_000.0  # joint and pelvis positions
MAX_ABS_PIXELS = 1_000_000.0  # keypoint coordinates (as the intrinsics' principal point)
MAX_NAME_LENGTH = 32  # joint and body-part names (the longest is 14 characters)

Radians = Annotated[float, Field(ge=-MAX_ABS_RADIANS, le=MAX_ABS_RADIANS)]
Metres = Annotated[float, Field(ge=-MAX_ABS_METRES, le=MAX_ABS_METRES)]
# x, y in pixels and a confidence (checked to be in [0, 1] where the keypoints are read).
KeypointNumber = Annotated[float, Field(ge=-MAX_ABS_PIXELS, le=MAX_ABS_PIXELS)]
Name = Annotated[str, Field(max_length=MAX_NAME_LENGTH)]
# Axis-angle or position triples; their exact shapes are checked by check_array.
RadiansXYZ = Annotated[list[Radians], Field(max_length=3)]
MetresXYZ = Annotated[list[Metres], Field(max_length=3)]
Keypoint = Annotated[list[KeypointNumber], Field(max_length=3)]  # x, y, confidence
# The largest keypoint format (mediapipe33); each request's format is then checked exactly.
MAX_KEYPOINTS = 33
Keypoints = Annotated[list[Keypoint], Field(max_length=MAX_KEYPOINTS)]


# Mesh recovery's options (form fields, next to the image).
MAX_PEOPLE = 16  # the most BODYSERVE_MAX_PEOPLE can allow
MIN_ITERATIONS, MAX_ITERATIONS = 5, 500
MAX_FOCAL_LENGTH_PX = 100_000.0


def setting_limit(setting: str, keyword: str = "maxItems") -> Callable[[dict[str, Any]], None]:
    """Shows the current value of ``setting`` in a field's JSON schema (``keyword``: maxItems
    for a list, maximum for a number); the field's validator enforces it with a message that
    names the setting."""

    def show(schema: dict[str, Any]) -> None:
        schema[keyword] = getattr(get_settings(), setting)

    return show


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
        return _check_count(
            value, get_settings().max_lift_hypotheses, "hypotheses", "max_lift_hypotheses"
        )

    @model_validator(mode="after")
    def _lift_rows_within_limit(self) -> MeshRecoveryOptions:
        # Every detected person is lifted N times: bound the worst case like the lift route.
        if self.hypotheses > 1:
            _check_count(
                self.max_people * self.hypotheses,
                get_settings().max_lift_rows,
                f"max_people x hypotheses ({self.max_people} x {self.hypotheses})",
                "max_lift_rows",
            )
        return self


class SmplxParams(BaseModel):
    """SMPL-X-convention parameters (axis-angle, radians; camera frame for global_orient/transl)."""

    global_orient: list[float]  # 3
    body_pose: list[list[float]]  # 21 x 3, SMPL-X joint order
    left_hand_pose: list[list[float]]  # 15 x 3
    right_hand_pose: list[list[float]]  # 15 x 3
    jaw_pose: list[float]  # 3
    leye_pose: list[float]  # 3
    reye_pose: list[float]  # 3
    betas: list[float]  # 10 (zeros: shape is carried by the Anny phenotype)
    expression: list[float]  # 10
    transl: list[float]  # 3
    pelvis: list[float]  # 3, pelvis position in the camera frame


class AnnyParams(BaseModel):
    pose: list[list[float]]  # J x 3 axis-angle, local-bone; [0] is the global orientation
    phenotype: dict[str, float]
    transl: list[float]  # 3, root head in the camera frame (metres)


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

    # No return annotation: one would replace this model's schema in the OpenAPI document.
    @model_serializer(mode="wrap")
    def _omit_unsampled(self, handler: SerializerFunctionWrapHandler):
        return _omit_none(handler(self), self.hypotheses is None, _PERSON_SAMPLING_FIELDS)


_PERSON_SAMPLING_FIELDS = ("hypotheses", "uncertainty", "ambiguous_joints", "representative")


def _omit_none(data: Any, unset: bool, keys: tuple[str, ...]) -> Any:
    """``data`` without ``keys`` when ``unset``: answers without hypotheses keep today's shape."""
    if unset and isinstance(data, dict):
        for key in keys:
            data.pop(key, None)
    return data


class Camera(BaseModel):
    fx: float
    fy: float
    cx: float
    cy: float
    focal_length_source: Literal["request", "exif", "default"] = Field(
        "default",
        description="Where fx, fy came from: the request, the photo's EXIF (35 mm-equivalent "
        "focal length), or the default ~50° field of view.",
    )
    convention: str = "opencv: x right, y down, z ahead; metres"


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

    @model_serializer(mode="wrap")
    def _omit_unsampled(self, handler: SerializerFunctionWrapHandler):
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


class WebhookDelivery(BaseModel):
    """How the job's webhook event is being delivered (README "Webhooks")."""

    status: Literal["pending", "retrying", "delivered", "failed", "skipped"]
    event_id: str
    attempts: int
    last_error: str | None = None
    last_attempt_at: float | None = None
    next_attempt_at: float | None = None


class JobInfo(BaseModel):
    id: str
    capability: str
    status: str
    progress: float
    message: str
    error: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    links: dict[str, str]
    # Set once the job has ended, when its API key (or open mode) has a webhook endpoint.
    webhook: WebhookDelivery | None = None


class ErrorBody(BaseModel):
    detail: str


# =========================================================================== pose prior
#
# Poses are SMPL-X-convention body poses: ``body_pose`` is 21 x 3 axis-angle (radians), one
# row per joint of BODY_POSE_JOINTS; the prior models body_pose only (no global orientation).

# The 21 rows of body_pose: SMPL-X's body joints (shared.bodies.smplx_convention's
# SMPLX_BODY_JOINTS, spelled out here so that the gateway validates requests without importing
# torch; tests/unit/test_pose_schemas.py checks that both agree).
BODY_POSE_JOINTS: tuple[str, ...] = (
    "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar",
    "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
    "right_wrist",
)  # fmt: skip
# Pelvis + the 21: the rows of joints_3d and of a motion's joints (BODY_JOINT_NAMES).
SKELETON_JOINTS: tuple[str, ...] = ("pelvis", *BODY_POSE_JOINTS)

# Named body parts, as the joints of body_pose they cover (used to say which parts are hidden).
_SIDE_PARTS = {
    "leg": ("hip", "knee", "ankle", "foot"),
    "arm": ("collar", "shoulder", "elbow", "wrist"),
}
BODY_PARTS: dict[str, tuple[str, ...]] = {
    f"{side}_{part}": tuple(f"{side}_{joint}" for joint in joints)
    for part, joints in _SIDE_PARTS.items()
    for side in ("left", "right")
}
BODY_PARTS |= {
    "legs": BODY_PARTS["left_leg"] + BODY_PARTS["right_leg"],
    "arms": BODY_PARTS["left_arm"] + BODY_PARTS["right_arm"],
    "spine": ("spine1", "spine2", "spine3"),
    "head": ("neck", "head"),
}
BODY_PARTS |= {
    "upper_body": BODY_PARTS["spine"] + BODY_PARTS["head"] + BODY_PARTS["arms"],
    "lower_body": BODY_PARTS["legs"],
}

MIN_STEPS, MAX_STEPS, DEFAULT_STEPS = 10, 200, 50
MAX_SEED = 2**31 - 1


class PoseOutput(StrEnum):
    params = "params"  # the poses' parameters in the result (always included)
    mesh = "mesh"  # the posed Anny bodies as one file (mesh_format), an artifact


POSE_MESH_ARTIFACT = {"glb": "poses.glb", "obj": "poses.obj"}
MOTION_BVH_ARTIFACT = "motion.bvh"


def _invalid(kind: str, message: str) -> PydanticCustomError:
    """A validation error whose message is shown as is (no "Value error, " prefix)."""
    return PydanticCustomError(kind, message)


def check_array(value: Any, shape: tuple[int | None, ...], name: str, what: str) -> np.ndarray:
    """``value`` as a float64 array of ``shape`` (None: any length), or a clear error.

    ``what`` says what the numbers are, e.g. "21 SMPL-X body joints x 3 axis-angle, radians".
    """
    wanted = " x ".join("T" if n is None else str(n) for n in shape)
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise _invalid(
            "shape", f"{name} must be a {wanted} array of numbers ({what}); got ragged rows"
        ) from None
    if array.ndim != len(shape) or any(
        n is not None and n != m for n, m in zip(shape, array.shape, strict=False)
    ):
        got = " x ".join(str(n) for n in array.shape) or "a single number"
        raise _invalid("shape", f"{name} must be {wanted} ({what}), got {got}")
    if not np.isfinite(array).all():
        raise _invalid("finite", f"{name} holds NaN or infinite values; send finite numbers")
    return array


def _check_names(names: list[str], valid: tuple[str, ...] | list[str], field: str) -> None:
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise _invalid(
            "names",
            f"{field}: unknown name(s) {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}",
        )


def _check_count(value: int, limit: int, field: str, setting: str) -> int:
    if value > limit:
        raise _invalid(
            "limit",
            f"{field} must be at most {limit} (the server's limit, BODYSERVE_{setting.upper()}); "
            "ask for fewer, or send several requests",
        )
    return value


class PoseGenerateRequest(BaseModel):
    """POST /v1/poses/generate: draw ``n`` body poses from the pose prior."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    n: int = Field(
        1,
        ge=1,
        json_schema_extra=setting_limit("max_pose_samples", "maximum"),
        description="Number of poses (at most BODYSERVE_MAX_POSE_SAMPLES).",
    )
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Pose i is drawn with seed + i: same seed, same poses."
    )
    steps: int = Field(
        DEFAULT_STEPS, ge=MIN_STEPS, le=MAX_STEPS, description="Reverse diffusion steps."
    )
    sampler: Literal["ode", "sde"] = Field(
        "ode", description="ode: deterministic probability-flow ODE; sde: ancestral sampling."
    )
    outputs: list[PoseOutput] = Field(
        default_factory=lambda: [PoseOutput.params],
        max_length=len(PoseOutput),
        description="params (always returned) and optionally mesh: the posed Anny bodies as "
        "one file (mesh_format), 1 m apart along x.",
    )
    mesh_format: Literal["glb", "obj"] = "glb"

    @field_validator("n")
    @classmethod
    def _n_within_limit(cls, value: int) -> int:
        return _check_count(value, get_settings().max_pose_samples, "n", "max_pose_samples")

    @field_validator("outputs")
    @classmethod
    def _with_params(cls, value: list[PoseOutput]) -> list[PoseOutput]:
        return list(dict.fromkeys([PoseOutput.params, *value]))

    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.n)]


class SmplxPoseInput(BaseModel):
    """SMPL-X-convention parameters as mesh recovery returns them (``smplx`` of a person);
    only ``body_pose`` (and ``global_orient``, kept as is) are used, other keys are ignored."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    body_pose: list[RadiansXYZ] = Field(
        max_length=len(BODY_POSE_JOINTS), description="21 x 3 axis-angle, radians."
    )
    global_orient: RadiansXYZ | None = Field(None, description="3 axis-angle; default zero.")

    @field_validator("body_pose")
    @classmethod
    def _shape(cls, value: list[list[float]]) -> list[list[float]]:
        check_array(value, (21, 3), "body_pose", "21 SMPL-X body joints x 3 axis-angle, radians")
        return value

    @field_validator("global_orient")
    @classmethod
    def _orient(cls, value: list[float] | None) -> list[float] | None:
        if value is not None:
            check_array(value, (3,), "global_orient", "axis-angle, radians")
        return value


class PoseCompleteRequest(BaseModel):
    """POST /v1/poses/complete: fill in the joints of a pose that are not known.

    The pose: ``body_pose`` (21 x 3) or ``smplx`` (an SMPL-X parameter object), exactly one.
    What is known: ``known_joints`` (names of the body_pose joints that are KNOWN and kept) or
    ``hidden_parts`` (names of the body parts that are HIDDEN and filled in), exactly one.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    body_pose: list[RadiansXYZ] | None = Field(
        None,
        max_length=len(BODY_POSE_JOINTS),
        description="21 x 3 axis-angle (radians), SMPL-X body joint order.",
    )
    smplx: SmplxPoseInput | None = Field(
        None, description="Or SMPL-X parameters (e.g. a mesh-recovery person's smplx)."
    )
    known_joints: list[Name] | None = Field(
        None,
        max_length=len(BODY_POSE_JOINTS),
        description=f"Joints that are KNOWN (kept): any of {', '.join(BODY_POSE_JOINTS)}.",
    )
    hidden_parts: list[Name] | None = Field(
        None,
        max_length=len(BODY_PARTS),
        description=f"Parts that are HIDDEN (filled in): any of {', '.join(BODY_PARTS)}.",
    )
    k: int = Field(
        10,
        ge=1,
        json_schema_extra=setting_limit("max_pose_samples", "maximum"),
        description="Hypotheses (at most BODYSERVE_MAX_POSE_SAMPLES).",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Hypothesis i is drawn with seed + i.")
    steps: int = Field(DEFAULT_STEPS, ge=MIN_STEPS, le=MAX_STEPS)
    outputs: list[PoseOutput] = Field(
        default_factory=lambda: [PoseOutput.params], max_length=len(PoseOutput)
    )
    mesh_format: Literal["glb", "obj"] = "glb"

    @field_validator("body_pose")
    @classmethod
    def _shape(cls, value: list[list[float]] | None) -> list[list[float]] | None:
        if value is not None:
            check_array(
                value, (21, 3), "body_pose", "21 SMPL-X body joints x 3 axis-angle, radians"
            )
        return value

    @field_validator("k")
    @classmethod
    def _k_within_limit(cls, value: int) -> int:
        return _check_count(value, get_settings().max_pose_samples, "k", "max_pose_samples")

    @field_validator("outputs")
    @classmethod
    def _with_params(cls, value: list[PoseOutput]) -> list[PoseOutput]:
        return list(dict.fromkeys([PoseOutput.params, *value]))

    @model_validator(mode="after")
    def _one_of_each(self) -> PoseCompleteRequest:
        if (self.body_pose is None) == (self.smplx is None):
            raise _invalid(
                "one_of",
                "give the pose as exactly one of body_pose (21 x 3) or smplx (SMPL-X "
                "parameters with a body_pose)",
            )
        if (self.known_joints is None) == (self.hidden_parts is None):
            raise _invalid(
                "one_of",
                "say what is known with exactly one of known_joints (joints that are KNOWN) "
                "or hidden_parts (body parts that are HIDDEN)",
            )
        if self.known_joints is not None:
            _check_names(self.known_joints, BODY_POSE_JOINTS, "known_joints")
        if self.hidden_parts is not None:
            _check_names(self.hidden_parts, list(BODY_PARTS), "hidden_parts")
        mask = self.known_mask()
        if not any(mask):
            raise _invalid(
                "nothing_known",
                "no joint is known, so there is nothing to complete from; name some known "
                "joints, or use POST /v1/poses/generate to draw whole poses",
            )
        if all(mask):
            raise _invalid(
                "nothing_hidden",
                "every joint is known, so there is nothing to complete; leave some joints out "
                "of known_joints (or name hidden_parts)",
            )
        return self

    def pose(self) -> np.ndarray:
        """(21, 3) the body_pose to complete."""
        value = self.body_pose if self.smplx is None else self.smplx.body_pose
        return np.asarray(value, dtype=np.float32)

    def global_orient(self) -> np.ndarray:
        """(3,) the pose's global orientation (zero unless given with smplx)."""
        if self.smplx is None or self.smplx.global_orient is None:
            return np.zeros(3, np.float32)
        return np.asarray(self.smplx.global_orient, dtype=np.float32)

    def known_mask(self) -> list[bool]:
        """(21,) True for each joint of body_pose that is known (kept as given)."""
        if self.known_joints is not None:
            known = set(self.known_joints)
        else:
            hidden = {j for part in self.hidden_parts or [] for j in BODY_PARTS[part]}
            known = set(BODY_POSE_JOINTS) - hidden
        return [joint in known for joint in BODY_POSE_JOINTS]

    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.k)]


class MotionPosesInput(BaseModel):
    """A motion as SMPL-X-convention parameters per frame (SMPL-X frame: Y up, metres)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    global_orient: list[RadiansXYZ] = Field(
        json_schema_extra=setting_limit("max_motion_frames"),
        description="T x 3 axis-angle, radians.",
    )
    body_pose: list[Annotated[list[RadiansXYZ], Field(max_length=len(BODY_POSE_JOINTS))]] = Field(
        json_schema_extra=setting_limit("max_motion_frames"),
        description="T x 21 x 3 axis-angle, radians.",
    )
    pelvis: list[MetresXYZ] | None = Field(
        None,
        json_schema_extra=setting_limit("max_motion_frames"),
        description="T x 3 pelvis positions in metres; default: standing still at 0.",
    )

    @model_validator(mode="after")
    def _shapes(self) -> MotionPosesInput:
        orient = check_array(self.global_orient, (None, 3), "poses.global_orient", "axis-angle")
        frames = len(orient)
        check_array(self.body_pose, (frames, 21, 3), "poses.body_pose", "T x 21 joints x 3")
        if self.pelvis is not None:
            check_array(self.pelvis, (frames, 3), "poses.pelvis", "T x 3 positions, metres")
        return self


class MotionDenoiseRequest(BaseModel):
    """POST /v1/motions/denoise: a jittery motion in, a smooth and plausible one out.

    The motion: ``joints`` (T x 22 x 3 positions, metres, SMPL-X frame, in SKELETON_JOINTS
    order: pelvis then the 21 body joints) or ``poses`` (per-frame SMPL-X parameters), exactly one.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    joints: list[Annotated[list[MetresXYZ], Field(max_length=len(SKELETON_JOINTS))]] | None = Field(
        None,
        json_schema_extra=setting_limit("max_motion_frames"),
        description=f"T x 22 x 3 metres, joint order: {', '.join(SKELETON_JOINTS)}.",
    )
    poses: MotionPosesInput | None = None
    fps: float = Field(30.0, gt=0, le=1000, description="Frames per second of the motion.")
    iterations: int | None = Field(
        None,
        ge=0,
        le=1000,
        description="Optimisation iterations (0: the starting estimate); default: the server's.",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED)

    @field_validator("joints")
    @classmethod
    def _joints(cls, value: list[list[list[float]]] | None) -> list[list[list[float]]] | None:
        if value is not None:
            check_array(value, (None, 22, 3), "joints", "T frames x 22 joints x 3, metres")
        return value

    @model_validator(mode="after")
    def _one_motion(self) -> MotionDenoiseRequest:
        if (self.joints is None) == (self.poses is None):
            raise _invalid(
                "one_of",
                "give the motion as exactly one of joints (T x 22 x 3 positions) or poses "
                "(global_orient T x 3, body_pose T x 21 x 3, optional pelvis T x 3)",
            )
        frames = self.frame_count()
        if frames < 1:
            raise _invalid("empty", "the motion has no frames; send at least one")
        _check_count(frames, get_settings().max_motion_frames, "T (frames)", "max_motion_frames")
        return self

    def frame_count(self) -> int:
        if self.joints is not None:
            return len(self.joints)
        return len(self.poses.global_orient) if self.poses is not None else 0


class PoseSample(BaseModel):
    """One pose, in both body conventions, with its skeleton."""

    smplx: SmplxParams = Field(description="SMPL-X-convention parameters, SMPL-X's Y-up frame.")
    anny: AnnyParams = Field(
        description="The same pose on Anny (neutral phenotype): 104 x 3 local-bone axis-angle "
        "and root position in Anny's world (Z up, facing -Y)."
    )
    joints_3d: list[list[float]] = Field(
        description="22 x 3 joint positions (metres, SMPL-X frame), order: joint_names."
    )


class _PoseResultBase(BaseModel):
    prior_version: int = Field(description="The pose_prior model version that answered.")
    seed: int
    seeds: list[int] = Field(description="The seed of each pose, in order.")
    steps: int
    joint_names: list[str] = Field(default_factory=lambda: list(SKELETON_JOINTS))
    frame: str = "SMPL-X: Y up, the body facing +Z at zero global_orient; metres"
    artifacts: dict[str, str] = Field(
        default_factory=dict, description="Artifact name -> content type."
    )
    timings_ms: dict[str, float] = Field(default_factory=dict)


class PoseGenerateResult(_PoseResultBase):
    sampler: str
    poses: list[PoseSample]


class PoseCompleteResult(_PoseResultBase):
    hypotheses: list[PoseSample]
    known_joints: list[str] = Field(description="Joints kept as given in every hypothesis.")
    hidden_joints: list[str] = Field(description="Joints filled in by the prior.")
    spread_deg: dict[str, float] = Field(
        description="Per body_pose joint: the spread of its rotation over the hypotheses "
        "(root-mean-square angle to their mean rotation, degrees); 0 for known joints."
    )


class MotionDenoiseResult(BaseModel):
    frames: int
    fps: float
    global_orient: list[list[float]] = Field(description="T x 3 axis-angle, SMPL-X frame.")
    body_pose: list[list[list[float]]] = Field(description="T x 21 x 3 axis-angle.")
    pelvis: list[list[float]] = Field(description="T x 3 pelvis positions, metres.")
    joints: list[list[list[float]]] = Field(description="T x 22 x 3 metres, order: joint_names.")
    joint_names: list[str] = Field(default_factory=lambda: list(SKELETON_JOINTS))
    prior_version: int | None = Field(None, description="The pose prior version used, if any.")
    frame: str = "SMPL-X: Y up, the body facing +Z at zero global_orient; metres"
    artifacts: dict[str, str] = Field(default_factory=dict)
    timings_ms: dict[str, float] = Field(default_factory=dict)


# =========================================================================== lifting
#
# POST /v1/poses/lift: 2D keypoints (one image of several people, or tracks over frames) in a
# named format -> N 3D hypotheses each, in the OpenCV camera frame, with a summary.

LiftFormat = Literal["coco17", "coco17_feet", "mediapipe33"]
LIFT_FORMATS: tuple[str, ...] = get_args(LiftFormat)
# The lifter ignores keypoints below this confidence (shared.lifting.lift.MIN_CONFIDENCE, spelled
# out so that the gateway validates without torch; tests/unit/test_lift_schemas.py checks both).
LIFT_MIN_CONFIDENCE = 0.3
# The most bodies one lifting mesh file may hold (each ~14k vertices).
MAX_LIFT_MESH_BODIES = 64


class ImageSize(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width: int = Field(ge=1, le=100_000, description="Image width, pixels.")
    height: int = Field(ge=1, le=100_000, description="Image height, pixels.")


class Intrinsics(BaseModel):
    """Pinhole intrinsics in pixels (OpenCV: x right, y down, origin at the top-left corner)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    fx: float = Field(gt=0, le=1_000_000)
    fy: float = Field(gt=0, le=1_000_000)
    cx: float = Field(ge=-1_000_000, le=1_000_000)
    cy: float = Field(ge=-1_000_000, le=1_000_000)


class PoseLiftRequest(BaseModel):
    """POST /v1/poses/lift: 2D keypoints -> N 3D pose hypotheses per person (or per frame).

    The keypoints: ``people`` (P people of one image, each K x [x, y, confidence]) or ``tracks``
    (tracks of T frames of one person each, lifted with temporal consistency), exactly one.
    K is the ``format``'s keypoint count; confidence 0 marks a missing keypoint (COCO
    visibility: send 0 for v=0 and 1 for v>0).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    format: LiftFormat = Field(
        description="Keypoint format: coco17 (17), coco17_feet (23: COCO-WholeBody's feet "
        "too) or mediapipe33 (33, BlazePose)."
    )
    people: list[Keypoints] | None = Field(
        None,
        json_schema_extra=setting_limit("max_lift_rows"),
        description="P people x K keypoints x [x, y, confidence], pixels (P x hypotheses at "
        "most BODYSERVE_MAX_LIFT_ROWS).",
    )
    tracks: (
        list[
            Annotated[list[Keypoints], Field(json_schema_extra=setting_limit("max_motion_frames"))]
        ]
        | None
    ) = Field(
        None,
        json_schema_extra=setting_limit("max_lift_rows"),
        description="Tracks x T frames x K keypoints x [x, y, confidence], pixels (T at most "
        "BODYSERVE_MAX_MOTION_FRAMES; all frames x hypotheses at most BODYSERVE_MAX_LIFT_ROWS).",
    )
    image_size: ImageSize = Field(description="Sets the default camera (a ~50° field of view).")
    intrinsics: Intrinsics | None = Field(
        None, description="Camera intrinsics in pixels; default from image_size."
    )
    hypotheses: int = Field(
        10,
        ge=1,
        json_schema_extra=setting_limit("max_lift_hypotheses", "maximum"),
        description="N per person or frame (at most BODYSERVE_MAX_LIFT_HYPOTHESES).",
    )
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Person (or track) i is lifted with seed + i."
    )
    outputs: list[PoseOutput] = Field(
        default_factory=lambda: [PoseOutput.params],
        max_length=len(PoseOutput),
        description="params (always returned) and optionally mesh: the lifted Anny bodies in "
        "the camera frame as one file (mesh_format), of mesh_hypotheses.",
    )
    mesh_format: Literal["glb", "obj"] = "glb"
    anny_params: bool = Field(
        False,
        description="Also give each hypothesis as Anny parameters (104 x 3 local-bone "
        "axis-angle, root into the camera frame): about 4 kB per hypothesis.",
    )
    mesh_hypotheses: Literal["representative", "all"] = Field(
        "representative",
        description="The bodies of the mesh: each person's (frame's) representative hypothesis, "
        f"or all hypotheses (at most {MAX_LIFT_MESH_BODIES} bodies in all).",
    )

    @field_validator("hypotheses")
    @classmethod
    def _n_within_limit(cls, value: int) -> int:
        return _check_count(
            value, get_settings().max_lift_hypotheses, "hypotheses", "max_lift_hypotheses"
        )

    @field_validator("outputs")
    @classmethod
    def _with_params(cls, value: list[PoseOutput]) -> list[PoseOutput]:
        return list(dict.fromkeys([PoseOutput.params, *value]))

    @model_validator(mode="after")
    def _keypoints(self) -> PoseLiftRequest:
        if (self.people is None) == (self.tracks is None):
            raise _invalid(
                "one_of",
                "give the keypoints as exactly one of people (P x K x [x, y, confidence], one "
                "image) or tracks (tracks x T frames x K x [x, y, confidence])",
            )
        settings = get_settings()
        names = FORMATS[self.format]
        what = f"{len(names)} {self.format} keypoints x [x, y, confidence]"
        if self.people is not None and not self.people:
            raise _invalid("empty", "people is empty: send at least one person")
        if self.tracks is not None and not self.tracks:
            raise _invalid("empty", "tracks is empty: send at least one track")
        for i, track in enumerate(self.tracks or []):
            if not track:
                raise _invalid("empty", f"tracks[{i}] has no frames; send at least one")
            _check_count(
                len(track),
                settings.max_motion_frames,
                f"tracks[{i}]: T (frames)",
                "max_motion_frames",
            )
        # The counts first, the keypoints after: a request over the limits costs no more than
        # counting its rows.
        rows = self.row_count()
        _check_count(
            rows * self.hypotheses,
            settings.max_lift_rows,
            f"{'people' if self.people is not None else 'frames'} x hypotheses "
            f"({rows} x {self.hypotheses})",
            "max_lift_rows",
        )
        for i, person in enumerate(self.people or []):
            _check_keypoints(
                check_array(person, (len(names), 3), f"people[{i}]", what), f"people[{i}]"
            )
        for i, track in enumerate(self.tracks or []):
            name = f"tracks[{i}]"
            frames = check_array(track, (None, len(names), 3), name, f"T frames x {what}")
            for t, frame in enumerate(frames):
                _check_keypoints(frame, f"{name} frame {t}")
        if PoseOutput.mesh in self.outputs:
            bodies = rows * (self.hypotheses if self.mesh_hypotheses == "all" else 1)
            if bodies > MAX_LIFT_MESH_BODIES:
                raise _invalid(
                    "limit",
                    f"the mesh would hold {bodies} bodies, at most {MAX_LIFT_MESH_BODIES} fit "
                    "in one file: ask for mesh_hypotheses 'representative', fewer hypotheses, "
                    "or leave mesh out of outputs",
                )
        return self

    def row_count(self) -> int:
        """People, or frames over all tracks: what the hypotheses multiply."""
        if self.people is not None:
            return len(self.people)
        return sum(len(track) for track in self.tracks or [])

    def track_keypoints(self) -> list[np.ndarray]:
        """One (T, K, 3) float32 array per track; each person is a track of one frame."""
        if self.people is not None:
            return [np.asarray(person, np.float32)[None] for person in self.people]
        return [np.asarray(track, np.float32) for track in self.tracks or []]

    def seeds(self) -> list[int]:
        """The seed of each person (track): ``seed + i``."""
        count = len(self.people if self.people is not None else self.tracks or [])
        return [self.seed + i for i in range(count)]


def _check_keypoints(keypoints: np.ndarray, name: str) -> None:
    """(K, 3) keypoints: confidences in [0, 1], at least one the lifter uses."""
    confidence = keypoints[:, 2]
    bad = np.flatnonzero((confidence < 0) | (confidence > 1))
    if len(bad):
        raise _invalid(
            "confidence",
            f"{name}: a confidence (the third number of a keypoint) must be in [0, 1], got "
            f"{confidence[bad[0]]:g} at keypoint {bad[0]}; COCO visibility flags: send 0 for "
            "v=0 (missing) and 1 for v>0",
        )
    if not (confidence >= LIFT_MIN_CONFIDENCE).any():
        raise _invalid(
            "no_keypoints",
            f"{name} has no keypoint with confidence >= {LIFT_MIN_CONFIDENCE}: nothing to lift "
            "(leave it out, or fill the frame in from its neighbours)",
        )


class SmplxBodyParams(BaseModel):
    """SMPL-X-convention body parameters in the camera frame (OpenCV: x right, y down, z ahead;
    metres). Hands, face and shape are neutral (flat hands, zero betas)."""

    global_orient: list[float] = Field(description="3 axis-angle: body frame -> camera.")
    body_pose: list[list[float]] = Field(description="21 x 3 axis-angle, SMPL-X joint order.")
    transl: list[float] = Field(description="3, SMPL-X transl (pelvis minus the rest pelvis).")
    pelvis: list[float] = Field(description="3, the pelvis joint in the camera frame.")


class LiftedPose(BaseModel):
    """One 3D hypothesis of one person in one image (or one frame of a track)."""

    smplx: SmplxBodyParams
    joints_3d: list[list[float]] = Field(
        description="22 x 3 joint positions in the camera frame (metres), order: joint_names."
    )
    keypoints_2d: list[list[float] | None] = Field(
        description="K x 2 the hypothesis' keypoints reprojected (pixels), in the request's "
        "format; null for the keypoints the body model has no counterpart of."
    )
    reprojection_error_px: float = Field(
        description="Mean distance to the keypoints given with confidence >= 0.3, pixels."
    )
    anny: AnnyParams | None = Field(
        None,
        description="The same body on Anny (neutral phenotype; root into the camera frame), "
        "when the request sets anny_params.",
    )


class LiftSummary(BaseModel):
    representative: int = Field(
        description="Index of the medoid hypothesis (closest on average to the others)."
    )
    spread_mm: dict[str, float] = Field(
        description="Per joint (pelvis-relative): the hypotheses' standard deviation per axis, "
        "millimetres."
    )
    ambiguous_joints: list[str] = Field(
        description="Joints whose spread exceeds ambiguous_spread_mm."
    )


class LiftedFrame(BaseModel):
    hypotheses: list[LiftedPose]
    summary: LiftSummary


class LiftedTrack(BaseModel):
    seed: int
    frames: list[LiftedFrame]


class PoseLiftResult(BaseModel):
    format: str
    keypoint_names: list[str] = Field(description="Row names of keypoints_2d (the format's).")
    joint_names: list[str] = Field(default_factory=lambda: list(SKELETON_JOINTS))
    camera: Camera
    hypotheses: int
    seed: int
    people: list[LiftedFrame] | None = Field(
        None, description="Per person of the request (people), in order; person i: seed + i."
    )
    tracks: list[LiftedTrack] | None = Field(
        None, description="Per track of the request (tracks), in order; track i: seed + i."
    )
    ambiguous_spread_mm: float = Field(description="The spread above which a joint is ambiguous.")
    prior_version: int = Field(description="The pose_prior version that guided the sampling.")
    frame: str = "camera (OpenCV): x right, y down, z ahead; metres"
    artifacts: dict[str, str] = Field(
        default_factory=dict, description="Artifact name -> content type."
    )
    timings_ms: dict[str, float] = Field(default_factory=dict)
