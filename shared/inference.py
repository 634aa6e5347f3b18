"""Where the heavy steps run: one interface, two homes.

The mesh-recovery pipeline calls an :class:`InferenceBackend` for its two heavy steps (2D
keypoint detection, body fitting). :class:`InProcessBackend` runs them in this process (library
and command-line use, and inside the Triton models themselves); the workers use the Triton
client backend from ``services.common.triton`` when ``BODYSERVE_TRITON_URL`` is set. Domain code
only ever sees arrays, never Triton.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Protocol

import numpy as np

from shared.keypoints.formats import PersonKeypoints

if TYPE_CHECKING:
    from shared.fitting.fit import BodyFitter
    from shared.keypoints.detect import PersonDetector


class InferenceUnavailable(RuntimeError):
    """The inference service could not be reached or could not take the request right now.

    Transient and retryable: the server is down or restarting, a model is (re)loading, the
    connection dropped, the deadline passed. Callers (the Celery tasks) retry with backoff.
    """


class InferenceError(RuntimeError):
    """The model ran and rejected or failed the request (bad input, a bug, a NaN...).

    Not retryable: the same request would fail the same way. The message is the server's.
    """


@dataclass
class FitInputs:
    """A batch of people to fit, all arrays stacked over people (P)."""

    body: np.ndarray  # (P, 33, 3) float32, mediapipe33 in pixels + confidence
    hands: np.ndarray  # (P, 2, 21, 3) float32, hand21 left then right; confidence 0 if absent
    camera: np.ndarray  # (P, 4) float32 pinhole intrinsics fx, fy, cx, cy in pixels
    iterations: int = 60
    seed: int = 0


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

    def person(self, i: int) -> FitOutputs:
        return FitOutputs(**{k: v[i : i + 1] for k, v in self.__dict__.items()})


# Triton's body_fit output tensors: each FitOutputs field, upper-cased.
FIT_OUTPUT_TENSORS: dict[str, str] = {f.name.upper(): f.name for f in fields(FitOutputs)}


class InferenceBackend(Protocol):
    def detect(self, image: np.ndarray, max_people: int) -> list[PersonKeypoints]:
        """People in an RGB uint8 ``(H, W, 3)`` image, most confident first."""
        ...

    def fit(self, inputs: FitInputs) -> FitOutputs:
        """Fit the body model to each person's 2D keypoints (batched over people)."""
        ...


class InProcessBackend:
    """Runs detection and fitting in this process; models load once, on first use."""

    def __init__(self) -> None:
        self._detector: PersonDetector | None = None
        self._fitter: BodyFitter | None = None

    def load(self, detect: bool = True, fit: bool = True) -> None:
        """Load the models now rather than on first use (Triton ``initialize``, warm-up)."""
        if detect and self._detector is None:
            from shared.keypoints.detect import PersonDetector

            self._detector = PersonDetector()
        if fit and self._fitter is None:
            from shared.fitting.fit import BodyFitter

            self._fitter = BodyFitter()

    def detect(self, image: np.ndarray, max_people: int) -> list[PersonKeypoints]:
        if self._detector is None:
            from shared.keypoints.detect import PersonDetector

            self._detector = PersonDetector()
        return self._detector(image, max_people=max_people)

    def fit(self, inputs: FitInputs) -> FitOutputs:
        if self._fitter is None:
            from shared.fitting.fit import BodyFitter

            self._fitter = BodyFitter()
        return self._fitter(inputs)
