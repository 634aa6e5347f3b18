"""POST /v1/poses/lift: its request and result."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from shared.bodies.joint_names import SKELETON_JOINTS
from shared.keypoints.formats import FORMATS
from shared.schemas.bodies import Camera, LiftedPose
from shared.schemas.common import (
    MAX_SEED,
    Keypoints,
    check_array,
    check_count,
    invalid,
    setting_limit,
)
from shared.schemas.poses import PoseOutput
from shared.settings import get_settings

# out so that the gateway validates without torch; tests/unit/test_lift_schemas.py checks both).
LIFT_MIN_CONFIDENCE = 0.3
# The most bodies one lifting mesh file may hold (each ~14k vertices).
MAX_LIFT_MESH_BODIES = 64


# POST /v1/poses/lift: 2D keypoints (one image of several people, or tracks over frames) in a
# named format -> N 3D hypotheses each, in the OpenCV camera frame, with a summary.

LiftFormat = Literal["coco17", "coco17_feet", "mediapipe33"]
LIFT_FORMATS: tuple[str, ...] = get_args(LiftFormat)


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
        return check_count(
            value, get_settings().max_lift_hypotheses, "hypotheses", "max_lift_hypotheses"
        )

    @field_validator("outputs")
    @classmethod
    def _with_params(cls, value: list[PoseOutput]) -> list[PoseOutput]:
        return list(dict.fromkeys([PoseOutput.params, *value]))

    @model_validator(mode="after")
    def _keypoints(self) -> PoseLiftRequest:
        if (self.people is None) == (self.tracks is None):
            raise invalid(
                "one_of",
                "give the keypoints as exactly one of people (P x K x [x, y, confidence], one "
                "image) or tracks (tracks x T frames x K x [x, y, confidence])",
            )
        settings = get_settings()
        names = FORMATS[self.format]
        what = f"{len(names)} {self.format} keypoints x [x, y, confidence]"
        if self.people is not None and not self.people:
            raise invalid("empty", "people is empty: send at least one person")
        if self.tracks is not None and not self.tracks:
            raise invalid("empty", "tracks is empty: send at least one track")
        for i, track in enumerate(self.tracks or []):
            if not track:
                raise invalid("empty", f"tracks[{i}] has no frames; send at least one")
            check_count(
                len(track),
                settings.max_motion_frames,
                f"tracks[{i}]: T (frames)",
                "max_motion_frames",
            )
        # The counts first, the keypoints after: a request over the limits costs no more than
        # counting its rows.
        rows = self.row_count()
        check_count(
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
                raise invalid(
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
        raise invalid(
            "confidence",
            f"{name}: a confidence (the third number of a keypoint) must be in [0, 1], got "
            f"{confidence[bad[0]]:g} at keypoint {bad[0]}; COCO visibility flags: send 0 for "
            "v=0 (missing) and 1 for v>0",
        )
    if not (confidence >= LIFT_MIN_CONFIDENCE).any():
        raise invalid(
            "no_keypoints",
            f"{name} has no keypoint with confidence >= {LIFT_MIN_CONFIDENCE}: nothing to lift "
            "(leave it out, or fill the frame in from its neighbours)",
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
