"""The inference contract: what the heavy steps take and give, and the interface that runs them.

The mesh-recovery pipeline calls an :class:`InferenceBackend` for its two heavy steps (2D
keypoint detection, body fitting); the pose routes call it for the pose prior (``prior``:
rows of SMPL-X body poses to generate, complete or denoise).
:class:`~shared.inference.local.InProcessBackend` runs them in this process (library and
command-line use, and inside the Triton models themselves); the workers use the Triton client
backend from ``services.common.triton_backend`` when ``BODYSERVE_TRITON_URL`` is set. How each
Triton model carries these types as tensors: :mod:`shared.inference.wire`. Domain code only ever
sees arrays, never Triton.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from shared.keypoints.formats import PersonKeypoints


class InferenceUnavailable(RuntimeError):
    """The inference service could not be reached or could not take the request right now.

    Transient and retryable: the server is down or restarting, a model is (re)loading, the
    connection dropped, the deadline passed. Callers (the Celery tasks) retry with backoff.
    """


class InferenceError(RuntimeError):
    """The model ran and rejected or failed the request (bad input, a bug, a NaN...).

    Not retryable: the same request would fail the same way. The message is the server's.
    """


# The pose prior a fit uses: the learned one ("pose_prior") or the simple regulariser ("none").
PriorChoice = Literal["pose_prior", "none"]
PRIOR_CHOICES: tuple[PriorChoice, ...] = ("pose_prior", "none")


@dataclass
class FitInputs:
    """A batch of people to fit, all arrays stacked over people (P)."""

    body: np.ndarray  # (P, 33, 3) float32, mediapipe33 in pixels + confidence
    hands: np.ndarray  # (P, 2, 21, 3) float32, hand21 left then right; confidence 0 if absent
    camera: np.ndarray  # (P, 4) float32 pinhole intrinsics fx, fy, cx, cy in pixels
    iterations: int = 60
    seed: int = 0
    # None: "pose_prior" when a prior is published, else "none"; "pose_prior" without a
    # published prior fails (shared.fitting.fit.PriorNotPublished).
    prior: PriorChoice | None = None


@dataclass
class FitOutputs:
    """Fitted bodies, stacked over people (P), camera frame (OpenCV: x right, y down, z ahead)."""

    pose: np.ndarray  # (P, J, 3) float32 Anny bone rotations, axis-angle ("local-bone"; [0] = root)
    phenotype: np.ndarray  # (P, 6) float32 Anny phenotype values in [0, 1]
    transl: np.ndarray  # (P, 3) float32 root translation in the camera frame, metres
    global_orient: np.ndarray  # (P, 3) float32 root rotation, axis-angle, camera frame
    vertices: np.ndarray  # (P, V, 3) float32 posed mesh in the camera frame, metres
    joints: np.ndarray  # (P, J, 3) float32 bone heads in the camera frame, metres
    keypoints_2d: np.ndarray  # (P, 33, 2) float32 model keypoints reprojected, pixels
    keypoints_3d: np.ndarray  # (P, 33, 3) float32 model keypoints, camera frame, metres
    reprojection_error: np.ndarray  # (P,) float32 mean px error over confident keypoints
    # (P,) int32 the pose prior's published version used (model_repository/pose_prior/<N>);
    # 0: no learned prior ("none"), -1: a prior that was not published (tests, experiments).
    prior_version: np.ndarray

    def person(self, i: int) -> FitOutputs:
        return FitOutputs(**{k: v[i : i + 1] for k, v in self.__dict__.items()})


@dataclass
class PriorInputs:
    """B rows for the pose prior, all of one task (SMPL-X convention, axis-angle)."""

    task: int  # a shared.prior.rows.PriorTask code: generate, complete or denoise
    seeds: np.ndarray  # (B,) int64, one per row
    steps: int  # sampler steps
    pose: np.ndarray | None = None  # (B, 21, 3) float32 body_pose (complete, denoise)
    known: np.ndarray | None = None  # (B, 21) bool, True where the joint is given (complete)
    noise_level: float = 0.0  # in (0, 1]: how noisy the poses are (denoise)
    sampler: str = "ode"  # "ode" or "sde" (generate)


@dataclass
class PriorRows:
    """What the pose prior returned for a batch of rows (samples)."""

    body_pose: np.ndarray  # (B, 21, 3) float32 SMPL-X body_pose axis-angle, row r from seed r
    version: int  # the published prior version (model_repository/pose_prior/<version>) used


@dataclass
class MotionInputs:
    """A motion to denoise, T frames: ``joints``, or ``global_orient`` + ``body_pose`` (poses).

    SMPL-X convention: joints in ``shared.bodies.skeleton.BODY_JOINT_NAMES`` order (pelvis
    first), axis-angle rotations, metres.
    """

    joints: np.ndarray | None = None  # (T, 22, 3) float32 noisy joint positions
    global_orient: np.ndarray | None = None  # (T, 3) float32 (poses)
    body_pose: np.ndarray | None = None  # (T, 21, 3) float32 (poses)
    pelvis: np.ndarray | None = None  # (T, 3) float32 (poses, optional: default at the origin)
    fps: float = 30.0
    iterations: int | None = None  # None: shared.fitting.motion.DEFAULT_ITERATIONS
    seed: int = 0

    def check(self) -> None:
        """A ValueError saying what to fix when the fields do not make one motion."""
        has_poses = self.global_orient is not None or self.body_pose is not None
        if (self.joints is None) == (not has_poses):
            raise ValueError(
                "give the motion as exactly one of joints (T, 22, 3) or poses (global_orient "
                "(T, 3) and body_pose (T, 21, 3), optional pelvis (T, 3))"
            )
        if has_poses and (self.global_orient is None or self.body_pose is None):
            raise ValueError("poses need both global_orient (T, 3) and body_pose (T, 21, 3)")
        if self.joints is not None and self.pelvis is not None:
            raise ValueError("pelvis goes with poses; with joints, the pelvis is joints[:, 0]")


@dataclass
class MotionOutputs:
    """A denoised motion, T frames (the input's frame, SMPL-X convention)."""

    global_orient: np.ndarray  # (T, 3) float32 axis-angle
    body_pose: np.ndarray  # (T, 21, 3) float32 axis-angle
    pelvis: np.ndarray  # (T, 3) float32 metres
    joints: np.ndarray  # (T, 22, 3) float32 metres, BODY_JOINT_NAMES order
    phenotype: np.ndarray  # (6,) float32 Anny phenotype of the skeleton (neutral for poses)
    prior_version: int | None  # the published pose prior version used; None: none published


@dataclass
class LiftInputs:
    """Tracks of 2D keypoints to lift to 3D hypotheses: S tracks of T frames (one image of P
    people: S = P, T = 1). Keypoints are ``shared.lifting.keypoints.LIFT_KEYPOINTS``
    (mediapipe33) in pixels + confidence; convert other formats first."""

    keypoints: np.ndarray  # (S, T, 33, 3) float32 pixels + confidence (0: missing)
    camera: np.ndarray  # (S, 4) float32 fx, fy, cx, cy in pixels
    hypotheses: int  # N per track and frame
    seeds: np.ndarray  # (S,) int64, one per track


@dataclass
class LiftOutputs:
    """N hypotheses per track and frame, OpenCV camera frame, metres, SMPL-X convention."""

    global_orient: np.ndarray  # (S, T, N, 3) float32 axis-angle
    body_pose: np.ndarray  # (S, T, N, 21, 3) float32 axis-angle
    pelvis: np.ndarray  # (S, T, N, 3) float32
    joints: np.ndarray  # (S, T, N, 22, 3) float32, shared.bodies.skeleton.BODY_JOINT_NAMES
    keypoints_2d: np.ndarray  # (S, T, N, 33, 2) float32 reprojected keypoints, pixels
    reprojection_error: np.ndarray  # (S, T, N) float32 mean px error, confident keypoints
    prior_version: int  # the published pose prior version used


class InferenceBackend(Protocol):
    def detect(self, image: np.ndarray, max_people: int) -> list[PersonKeypoints]:
        """People in an RGB uint8 ``(H, W, 3)`` image, most confident first."""
        ...

    def fit(self, inputs: FitInputs) -> FitOutputs:
        """Fit the body model to each person's 2D keypoints (batched over people)."""
        ...

    def prior(self, inputs: PriorInputs) -> PriorRows:
        """Run the pose prior on B rows of one task (generate, complete or denoise). Rows are
        independent: row r depends only on its own inputs and ``inputs.seeds[r]``."""
        ...

    def denoise_motion(self, inputs: MotionInputs) -> MotionOutputs:
        """A jittery motion made smooth and plausible (``shared.fitting.motion``), with the
        newest published pose prior (without one when none is published)."""
        ...

    def lift(self, inputs: LiftInputs) -> LiftOutputs:
        """2D keypoint tracks -> N 3D hypotheses per frame by the prior's reprojection-guided
        sampler (``shared.lifting.lift``), with the newest published pose prior."""
        ...
