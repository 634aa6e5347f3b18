"""The in-process :class:`~shared.inference.contracts.InferenceBackend`: every model runs here.

Library and command-line use, and the Triton models themselves (each ``model.py`` wraps one
method of it). Models load once, on first use (or :meth:`InProcessBackend.load`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from shared.inference.contracts import (
    FitInputs,
    FitOutputs,
    LiftInputs,
    LiftOutputs,
    MotionInputs,
    MotionOutputs,
    PriorInputs,
    PriorRows,
)
from shared.keypoints.formats import PersonKeypoints

if TYPE_CHECKING:
    from shared.fitting.fit import BodyFitter
    from shared.keypoints.detect import PersonDetector
    from shared.prior.model import PosePrior
    from shared.prior.registry import PublishedPrior


# Each method imports its model's module itself: a Triton model imports this module for one
# method, and its process should not load the others' libraries (mediapipe, torch, Anny).


class InProcessBackend:
    """Runs detection and fitting in this process; models load once, on first use."""

    def __init__(self) -> None:
        self._detector: PersonDetector | None = None
        self._fitter: BodyFitter | None = None
        self._prior: PublishedPrior | None = None

    def load(self, detect: bool = True, fit: bool = True) -> None:
        """Load the models now rather than on first use (Triton ``initialize``, warm-up)."""
        if detect and self._detector is None:
            from shared.keypoints.detect import PersonDetector  # deferred: see the class

            self._detector = PersonDetector()
        if fit and self._fitter is None:
            from shared.fitting.fit import BodyFitter  # deferred: see the class

            self._fitter = BodyFitter()

    def detect(self, image: np.ndarray, max_people: int) -> list[PersonKeypoints]:
        if self._detector is None:
            from shared.keypoints.detect import PersonDetector  # deferred: see the class

            self._detector = PersonDetector()
        return self._detector(image, max_people=max_people)

    def fit(self, inputs: FitInputs) -> FitOutputs:
        if self._fitter is None:
            from shared.fitting.fit import BodyFitter  # deferred: see the class

            self._fitter = BodyFitter()
        return self._fitter(inputs)

    def prior(self, inputs: PriorInputs) -> PriorRows:
        from shared.prior.rows import run_prior_rows  # deferred: see the class

        version, prior = self._latest_prior()
        body_pose = run_prior_rows(
            prior,
            inputs.task,
            inputs.pose,
            inputs.known,
            inputs.seeds,
            inputs.steps,
            inputs.noise_level,
            inputs.sampler,  # type: ignore[arg-type]
        )
        return PriorRows(body_pose=body_pose, version=version)

    def denoise_motion(self, inputs: MotionInputs) -> MotionOutputs:
        # deferred: see the class
        from shared.fitting.motion import DEFAULT_ITERATIONS, denoise_motion

        inputs.check()
        version: int | None
        prior: PosePrior | None
        try:
            version, prior = self._latest_prior()
        except FileNotFoundError:  # nothing published: skeleton and smoothness alone
            version, prior = None, None
        poses = None
        if inputs.joints is None:
            assert inputs.global_orient is not None and inputs.body_pose is not None
            poses = (inputs.global_orient, inputs.body_pose, inputs.pelvis)
        iterations = DEFAULT_ITERATIONS if inputs.iterations is None else inputs.iterations
        result = denoise_motion(
            joints=inputs.joints,
            poses=poses,
            fps=inputs.fps,
            prior=prior,
            iterations=iterations,
            seed=inputs.seed,
        )
        return MotionOutputs(
            global_orient=result.global_orient,
            body_pose=result.body_pose,
            pelvis=result.pelvis,
            joints=result.joints,
            phenotype=result.phenotype,
            prior_version=version,
        )

    def lift(self, inputs: LiftInputs) -> LiftOutputs:
        from shared.lifting.lift import lift  # deferred: see the class

        version, prior = self._latest_prior()
        result = lift(prior, inputs.keypoints, inputs.camera, inputs.hypotheses, inputs.seeds)
        return LiftOutputs(**vars(result), prior_version=version)

    def _latest_prior(self) -> tuple[int, PosePrior]:
        """The newest published prior of the model repository (reloaded when a newer one is
        published, as Triton's version policy serves the newest)."""
        from shared.prior.registry import PublishedPrior  # deferred: see the class

        if self._prior is None:
            self._prior = PublishedPrior()
        current = self._prior.current()
        if current is None:
            raise FileNotFoundError(
                f"no published pose prior in {self._prior.model_dir}: publish one with "
                "`bodyserve train prior`"
            )
        return current
