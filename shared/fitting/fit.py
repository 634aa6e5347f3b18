"""Fit Anny to 2D keypoints, batched over people, deterministic under a seed.

Two stages:

1. Rigid start: Anny's reference pose is placed in front of the camera and only its global
   rotation and translation are fitted to the torso and head keypoints, from several headings at
   once (facing the camera, away, left, right); the best heading per person wins. This is cheap
   (no kinematics) and settles the front/back ambiguity before the joints move.
2. Full fit: every body joint (local-bone rotations), the phenotype (shape) and the translation,
   with a robust confidence-weighted reprojection loss, soft joint limits and a pose prior.

The pose prior is chosen per request (:attr:`FitInputs.prior`):

- ``"pose_prior"``: the learned diffusion prior (DPoser's denoising regulariser on the SMPL-X
  body pose, :class:`~shared.fitting.losses.PosePriorTerm`), the newest one published in
  ``<model repository>/pose_prior``. It replaces the simple regulariser on the bones it sees
  (the body's; fingers, toes and eyes keep it). The depth-tilt prior stays: the learned prior
  knows nothing of how the whole body leans towards the camera.
- ``"none"``: a per-bone L2 regulariser plus a depth-tilt prior that keeps people upright.
- unset: ``"pose_prior"`` when a prior is published, else ``"none"``.

Everything is in the OpenCV camera frame: Anny's root rotation maps its world into the camera.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import numpy as np
import roma
import torch

from shared.bodies.anny_model import FIT_KEYPOINTS, AnnyBody, get_anny
from shared.bodies.base import ANNY_TO_CAMERA
from shared.bodies.smplx_convention import SMPLX_BODY_JOINTS, SMPLX_TO_ANNY
from shared.fitting.losses import (
    JointLimits,
    PosePriorTerm,
    person_scale,
    project,
    reprojection_loss,
    weighted_centre,
)
from shared.inference.contracts import PRIOR_CHOICES, FitInputs, FitOutputs, PriorChoice
from shared.prior.registry import PublishedPrior

if TYPE_CHECKING:
    from shared.prior.model import PosePrior
    from shared.prior.registry import PublishedPrior


# Keypoints below this detector confidence are ignored.
MIN_CONFIDENCE = 0.3
# Keypoints that define the torso and head for the rigid start.
_RIGID_NAMES = (
    "left_shoulder",
    "right_shoulder",
    "left_hip",
    "right_hip",
    "nose",
    "left_ear",
    "right_ear",
)
_HEADINGS = (0.0, math.pi, math.pi / 2, -math.pi / 2)
# Leaning towards or away from the camera barely changes the 2D keypoints, so without a prior
# the fit trades it against body proportions; in-plane lean is visible and left free.
TILT_WEIGHT = 0.3
# Robust-loss scale, as a fraction of the person's size in the image, from start to end.
SIGMA_START, SIGMA_END = 0.4, 0.08
# The learned prior's weight against the reprojection loss, its diffusion-time range (annealed
# from the first to the second over the fit) and the tilt prior's weight with it: tuned on
# synthetic noisy projections (1 % noise, 15 % dropped) of training-subject mocap poses. The
# prior sees body_pose only, not how the body leans towards the camera: without the tilt prior
# the fits lean badly (+70 mm MPJPE), so it stays.
PRIOR_WEIGHT = 0.03
PRIOR_T_RANGE = (0.5, 0.1)
PRIOR_TILT_WEIGHT = 0.3
# prior_version of a fit without the learned prior, and of a prior that was handed to the fitter
# rather than published (published versions are 1, 2, ...).
NO_PRIOR_VERSION = 0
UNPUBLISHED_PRIOR_VERSION = -1


class PriorNotPublished(ValueError):
    """``prior="pose_prior"`` was asked for, but no pose prior is published."""


class BodyFitter:
    """Callable: :class:`FitInputs` -> :class:`FitOutputs`. Thread-safe; models load once."""

    def __init__(
        self,
        body: AnnyBody | None = None,
        prior: PosePrior | Literal["published"] | None = "published",
        prior_version: int = UNPUBLISHED_PRIOR_VERSION,
        model_dir: str | Path | None = None,
    ) -> None:
        """``prior``: the learned pose prior for ``"pose_prior"`` requests. ``"published"``
        (default): the newest version published in ``model_dir`` (default
        ``<settings.model_repository>/pose_prior``), loaded once, and again when a newer one is
        published; ``None``: no learned prior (every fit uses ``"none"``). ``prior_version``:
        what results report for a prior handed in directly."""
        self.body = body or get_anny()
        self.limits = JointLimits.for_anny(self.body)
        self._lock = threading.Lock()
        self._prior_term: PosePriorTerm | None = None
        self.prior_version = NO_PRIOR_VERSION
        self.prior_weight = PRIOR_WEIGHT
        self.prior_tilt_weight = PRIOR_TILT_WEIGHT
        self._published: PublishedPrior | None = None
        if prior == "published":
            self._published = PublishedPrior(model_dir)
            self._refresh_prior()
        elif prior is not None:
            self._prior_term = PosePriorTerm(prior, t_range=PRIOR_T_RANGE)
            self.prior_version = prior_version
        # Bones whose rotations the prior sees (through the SMPL-X body joints they drive): the
        # simple regulariser is dropped on them when the prior is on, kept on the others
        # (fingers, toes, eyes) that nothing else holds.
        body_bones = {b for joint in SMPLX_BODY_JOINTS for b in SMPLX_TO_ANNY[joint]}
        self._regulariser_outside_prior = self.limits.regulariser_weight * torch.tensor(
            [name not in body_bones for name in self.body.bone_labels], dtype=torch.float32
        )
        self._mapped = self.body.keypoint_mapped.clone()
        self._rigid_index = torch.tensor([FIT_KEYPOINTS.index(n) for n in _RIGID_NAMES])
        # Reference-pose keypoints in Anny's world (its root head at the origin): the rigid stage.
        coeffs = self.body.blendshape_coefficients(torch.full((1, 6), 0.5))
        zero = torch.zeros(1, self.body.joint_count, 3)
        transforms, _, _ = self.body.skeleton(zero, torch.zeros(1, 3), coeffs)
        with torch.no_grad():
            self._reference_keypoints = self.body.fit_keypoints(transforms, coeffs)[0]
        self._anny_to_camera = torch.tensor(ANNY_TO_CAMERA, dtype=torch.float32)
        self._neck = self.body.bone("neck01")
        self._ankles = [self.body.bone("foot.L"), self.body.bone("foot.R")]

    @property
    def prior(self) -> PosePrior | None:
        """The learned pose prior ``"pose_prior"`` fits use, if any."""
        return None if self._prior_term is None else self._prior_term.prior

    def resolve_prior(self, choice: PriorChoice | None) -> PriorChoice:
        """The prior a request gets: its choice, or by default the learned one when there is
        one. Raises :class:`PriorNotPublished` for ``"pose_prior"`` without a published prior."""
        if choice is None:
            return "pose_prior" if self._prior_term is not None else "none"
        if choice not in PRIOR_CHOICES:
            raise ValueError(f"unknown prior {choice!r}: use one of {', '.join(PRIOR_CHOICES)}")
        if choice == "pose_prior" and self._prior_term is None:
            where = self._published.model_dir if self._published else "this fitter"
            raise PriorNotPublished(
                f"prior='pose_prior' needs a published pose prior, and {where} has none: "
                "publish one with `bodyserve train prior`, or ask for prior='none'"
            )
        return choice

    def __call__(self, inputs: FitInputs) -> FitOutputs:
        with self._lock, torch.random.fork_rng():
            self._refresh_prior()
            choice = self.resolve_prior(inputs.prior)
            torch.manual_seed(inputs.seed)
            return self._fit(inputs, choice == "pose_prior")

    def _refresh_prior(self) -> None:
        """Loads the newest published prior when it is not the one in use (cheap otherwise: a
        folder listing)."""
        current = None if self._published is None else self._published.current()
        if current is None or current[0] == self.prior_version:
            return
        self.prior_version = current[0]
        self._prior_term = PosePriorTerm(current[1], t_range=PRIOR_T_RANGE)

    # ------------------------------------------------------------------ stages
    def _targets(self, inputs: FitInputs) -> torch.Tensor:
        body = torch.as_tensor(inputs.body, dtype=torch.float32)
        hands = torch.as_tensor(inputs.hands, dtype=torch.float32).reshape(-1, 42, 3)
        target = torch.cat([body, hands], dim=1).clone()
        confident = target[..., 2] >= MIN_CONFIDENCE
        target[..., 2] = torch.where(confident & self._mapped, target[..., 2], 0.0)
        return target

    def _rigid_start(
        self, target: torch.Tensor, camera: torch.Tensor, scale: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Best global rotation (P, 3) and root position (P, 3) of the reference pose."""
        people, headings = target.shape[0], len(_HEADINGS)
        points = self._reference_keypoints[self._rigid_index]
        rigid_target = target[:, self._rigid_index].repeat_interleave(headings, 0)
        cam = camera.repeat_interleave(headings, 0)
        scale_rep = scale.repeat_interleave(headings, 0)

        yaw = torch.tensor(_HEADINGS).repeat(people)
        # Heading about Anny's vertical (Z) axis, then into the camera.
        turn = roma.rotvec_to_rotmat(torch.stack([0 * yaw, 0 * yaw, yaw], -1))
        rotation0 = roma.rotmat_to_rotvec(self._anny_to_camera @ turn)
        depth0 = self._initial_depth(target, camera)
        centre = weighted_centre(rigid_target)
        xy0 = (centre - cam[:, 2:]) / cam[:, :2] * depth0.repeat_interleave(headings, 0)[:, None]

        rotvec = rotation0.clone().requires_grad_(True)
        xy = xy0.clone().requires_grad_(True)
        log_depth = depth0.log().repeat_interleave(headings, 0).clone().requires_grad_(True)
        optimiser = torch.optim.Adam([rotvec, xy, log_depth], lr=0.05)
        for _ in range(40):
            optimiser.zero_grad()
            loss = self._rigid_loss(points, rotvec, xy, log_depth, rigid_target, cam, scale_rep)
            torch.autograd.backward(loss.sum())  # what Tensor.backward (untyped) runs
            optimiser.step()
        with torch.no_grad():
            loss = self._rigid_loss(points, rotvec, xy, log_depth, rigid_target, cam, scale_rep)
            best = loss.view(people, headings).argmin(1) + torch.arange(people) * headings
            transl = torch.cat([xy, log_depth.exp()[:, None]], -1)
        return rotvec.detach()[best], transl[best]

    @staticmethod
    def _rigid_loss(
        points: torch.Tensor,
        rotvec: torch.Tensor,
        xy: torch.Tensor,
        log_depth: torch.Tensor,
        target: torch.Tensor,
        camera: torch.Tensor,
        scale: torch.Tensor,
    ) -> torch.Tensor:
        transl = torch.cat([xy, log_depth.exp()[:, None]], -1)
        moved = points[None] @ roma.rotvec_to_rotmat(rotvec).transpose(-1, -2) + transl[:, None]
        fit = reprojection_loss(project(moved, camera), target, scale, sigma=0.2)
        return fit + TILT_WEIGHT * _depth_tilt(rotvec)

    def _initial_depth(self, target: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        """Depth from the apparent torso (or shoulder) size against the reference body's."""
        idx = {n: FIT_KEYPOINTS.index(n) for n in _RIGID_NAMES}
        ref = self._reference_keypoints

        def mid(points: torch.Tensor, a: str, b: str) -> torch.Tensor:
            return (points[..., idx[a], :] + points[..., idx[b], :]) / 2

        torso_m = mid(ref, "left_shoulder", "right_shoulder") - mid(ref, "left_hip", "right_hip")
        shoulders_m = ref[idx["left_shoulder"]] - ref[idx["right_shoulder"]]
        xy = target[..., :2]
        torso_px = mid(xy, "left_shoulder", "right_shoulder") - mid(xy, "left_hip", "right_hip")
        shoulders_px = xy[:, idx["left_shoulder"]] - xy[:, idx["right_shoulder"]]
        conf = target[..., 2]
        has_torso = (
            conf[
                :, [idx["left_shoulder"], idx["right_shoulder"], idx["left_hip"], idx["right_hip"]]
            ]
            > 0
        ).all(-1)
        focal = camera[:, :2].mean(-1)
        depth_torso = focal * torso_m.norm() / torso_px.norm(dim=-1).clamp(min=4.0)
        depth_shoulders = focal * shoulders_m.norm() / shoulders_px.norm(dim=-1).clamp(min=4.0)
        depth = torch.where(has_torso, depth_torso, depth_shoulders)
        return depth.clamp(0.3, 200.0)

    def _fit(self, inputs: FitInputs, use_prior: bool) -> FitOutputs:
        body = self.body
        target = self._targets(inputs)
        camera = torch.as_tensor(inputs.camera, dtype=torch.float32)
        people = target.shape[0]
        scale = person_scale(target)

        global_rotvec, transl0 = self._rigid_start(target, camera, scale)

        pose = torch.zeros(people, body.joint_count, 3)
        pose[:, 0] = global_rotvec
        pose.requires_grad_(True)
        # With local-bone deltas the root's delta is its world pose: transl is the root's head.
        xy = transl0[:, :2].clone().requires_grad_(True)
        log_depth = transl0[:, 2].clamp(min=0.3).log().requires_grad_(True)
        phenotype_logit = torch.zeros(people, len(body.phenotype_labels), requires_grad=True)
        optimiser = torch.optim.Adam(
            [
                {"params": [pose], "lr": 0.06},
                {"params": [xy, log_depth], "lr": 0.02},
                {"params": [phenotype_logit], "lr": 0.05},
            ]
        )
        # Decay to a tenth of the step size by the last iteration: coarse moves, then settling.
        decay = torch.optim.lr_scheduler.ExponentialLR(
            optimiser, gamma=0.1 ** (1 / max(inputs.iterations, 1))
        )
        # The prior's noise: every person draws the same sequence from the fit's seed, whoever
        # shares the batch.
        generators = (
            [torch.Generator().manual_seed(inputs.seed) for _ in range(people)]
            if use_prior
            else None
        )
        for step in range(inputs.iterations):
            # Anneal the robust loss: far-off limbs are pulled in first, outliers cut off last.
            progress = step / max(inputs.iterations - 1, 1)
            sigma = SIGMA_START * (SIGMA_END / SIGMA_START) ** progress
            optimiser.zero_grad()
            loss, _ = self._full_loss(
                pose, xy, log_depth, phenotype_logit, target, camera, scale, sigma,
                progress, generators,
            )  # fmt: skip
            torch.autograd.backward(loss.sum())
            optimiser.step()
            decay.step()

        with torch.no_grad():
            _, predicted = self._full_loss(
                pose, xy, log_depth, phenotype_logit, target, camera, scale, SIGMA_END
            )
            coeffs = body.blendshape_coefficients(torch.sigmoid(phenotype_logit))
            transforms, _, _ = body.skeleton(
                pose, torch.cat([xy, log_depth.exp()[:, None]], -1), coeffs
            )
            keypoints_3d = body.fit_keypoints(transforms, coeffs)[:, :33]
            transl = torch.cat([xy, log_depth.exp()[:, None]], -1)
            phenotype = torch.sigmoid(phenotype_logit)
            output = body.forward(pose, transl, phenotype)
        error = _reprojection_error(predicted[:, : len(inputs.body[0])], target[:, :33])
        return FitOutputs(
            pose=pose.detach().numpy().astype(np.float32),
            phenotype=phenotype.numpy().astype(np.float32),
            transl=transl.numpy().astype(np.float32),
            global_orient=pose[:, 0].detach().numpy().astype(np.float32),
            vertices=output.vertices.numpy().astype(np.float32),
            joints=output.joints.numpy().astype(np.float32),
            keypoints_2d=predicted[:, :33].numpy().astype(np.float32),
            keypoints_3d=keypoints_3d.numpy().astype(np.float32),
            reprojection_error=error.numpy().astype(np.float32),
            prior_version=np.full(
                people, self.prior_version if use_prior else NO_PRIOR_VERSION, np.int32
            ),
        )

    def _full_loss(
        self,
        pose: torch.Tensor,
        xy: torch.Tensor,
        log_depth: torch.Tensor,
        phenotype_logit: torch.Tensor,
        target: torch.Tensor,
        camera: torch.Tensor,
        scale: torch.Tensor,
        sigma: float,
        progress: float = 1.0,
        generators: list[torch.Generator] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(P,) loss and (P, K, 2) predicted pixels; the learned prior when ``generators``."""
        body = self.body
        phenotype = torch.sigmoid(phenotype_logit)
        coeffs = body.blendshape_coefficients(phenotype)
        transl = torch.cat([xy, log_depth.exp()[:, None]], -1)
        transforms, poses, rest = body.skeleton(pose, transl, coeffs)
        predicted = project(body.fit_keypoints(transforms, coeffs), camera)
        loss = reprojection_loss(predicted, target, scale, sigma)
        loss = loss + 0.1 * self.limits.penalty(pose)
        loss = loss + 2e-3 * (phenotype - 0.5).square().sum(-1)
        if generators is not None and self._prior_term is not None:
            # The prior judges the pose, not the body's shape: no gradient into the phenotype.
            prior = self._prior_term(poses, rest.detach(), progress, generators)
            loss = loss + self.prior_weight * prior
            outside = self._regulariser_outside_prior * pose.square().sum(-1)
            loss = loss + 1e-3 * outside.sum(-1)
            tilt_weight = self.prior_tilt_weight
        else:
            loss = loss + 1e-3 * self.limits.regulariser(pose)
            tilt_weight = TILT_WEIGHT
        if tilt_weight > 0:
            joints = poses[..., :3, 3]
            pelvis = joints[:, 0]
            ankles = joints[:, self._ankles].mean(1)
            for segment in (joints[:, self._neck] - pelvis, pelvis - ankles):
                loss = loss + tilt_weight * (segment[:, 2] / segment.norm(dim=-1)).square()
        return loss, predicted.detach()


def _depth_tilt(root_rotvec: torch.Tensor) -> torch.Tensor:
    """(B,) squared depth component of the body's up axis (Anny's +Z) in the camera frame."""
    return cast(torch.Tensor, roma.rotvec_to_rotmat(root_rotvec))[:, 2, 2].square()  # roma: untyped


def _reprojection_error(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(P,) mean pixel distance over confidently detected, mapped keypoints."""
    used = target[..., 2] >= 0.5
    distance: torch.Tensor = (predicted - target[..., :2]).norm(dim=-1)  # Tensor.norm: Any
    return (distance * used).sum(-1) / used.sum(-1).clamp(min=1)
