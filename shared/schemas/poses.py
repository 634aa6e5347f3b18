"""POST /v1/poses/generate, /v1/poses/complete and /v1/motions/denoise: requests and results.

Poses are SMPL-X-convention body poses: ``body_pose`` is 21 x 3 axis-angle (radians), one
row per joint of BODY_POSE_JOINTS; the prior models body_pose only (no global orientation).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from shared.bodies.joint_names import BODY_PARTS, BODY_POSE_JOINTS, SKELETON_JOINTS
from shared.schemas.bodies import AnnyParams, SmplxParams
from shared.schemas.common import (
    MAX_SEED,
    MetresXYZ,
    Name,
    RadiansXYZ,
    check_array,
    check_count,
    check_names,
    invalid,
    setting_limit,
)
from shared.settings import get_settings

MIN_STEPS, MAX_STEPS, DEFAULT_STEPS = 10, 200, 50


class PoseOutput(StrEnum):
    params = "params"  # the poses' parameters in the result (always included)
    mesh = "mesh"  # the posed Anny bodies as one file (mesh_format), an artifact


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
        return check_count(value, get_settings().max_pose_samples, "n", "max_pose_samples")

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
        return check_count(value, get_settings().max_pose_samples, "k", "max_pose_samples")

    @field_validator("outputs")
    @classmethod
    def _with_params(cls, value: list[PoseOutput]) -> list[PoseOutput]:
        return list(dict.fromkeys([PoseOutput.params, *value]))

    @model_validator(mode="after")
    def _one_of_each(self) -> PoseCompleteRequest:
        if (self.body_pose is None) == (self.smplx is None):
            raise invalid(
                "one_of",
                "give the pose as exactly one of body_pose (21 x 3) or smplx (SMPL-X "
                "parameters with a body_pose)",
            )
        if (self.known_joints is None) == (self.hidden_parts is None):
            raise invalid(
                "one_of",
                "say what is known with exactly one of known_joints (joints that are KNOWN) "
                "or hidden_parts (body parts that are HIDDEN)",
            )
        if self.known_joints is not None:
            check_names(self.known_joints, BODY_POSE_JOINTS, "known_joints")
        if self.hidden_parts is not None:
            check_names(self.hidden_parts, list(BODY_PARTS), "hidden_parts")
        mask = self.known_mask()
        if not any(mask):
            raise invalid(
                "nothing_known",
                "no joint is known, so there is nothing to complete from; name some known "
                "joints, or use POST /v1/poses/generate to draw whole poses",
            )
        if all(mask):
            raise invalid(
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
            raise invalid(
                "one_of",
                "give the motion as exactly one of joints (T x 22 x 3 positions) or poses "
                "(global_orient T x 3, body_pose T x 21 x 3, optional pelvis T x 3)",
            )
        frames = self.frame_count()
        if frames < 1:
            raise invalid("empty", "the motion has no frames; send at least one")
        check_count(frames, get_settings().max_motion_frames, "T (frames)", "max_motion_frames")
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
# The lifter ignores keypoints below this confidence (shared.lifting.lift.MIN_CONFIDENCE, spelled
