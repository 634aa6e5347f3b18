"""Fit Anny to 2D keypoints, batched over people, deterministic under a seed.

Two stages:

1. Rigid start: Anny's reference pose is placed in front of the camera and only its global
   rotation and translation are fitted to the torso and head keypoints, from several headings at
   once (facing the camera, away, left, right); the best heading per person wins. This is cheap
   (no kinematics) and settles the front/back ambiguity before the joints move.
2. Full fit: every body joint (local-bone rotations), the phenotype (shape) and the translation,
   with a robust confidence-weighted reprojection loss, soft joint limits and a pose regulariser.

Everything is in the OpenCV camera frame: Anny's root rotation maps its world into the camera.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import roma
import torch

from shared.bodies.anny_model import FIT_KEYPOINTS, AnnyBody, get_anny
from shared.bodies.base import ANNY_TO_CAMERA
from shared.fitting.losses import JointLimits, project, reprojection_loss
from shared.inference import FitInputs, FitOutputs

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


class BodyFitter:
    """Callable: :class:`FitInputs` -> :class:`FitOutputs`. Thread-safe; models load once."""

    def __init__(self, body: AnnyBody | None = None) -> None:
        self.body = body or get_anny()
        self.limits = JointLimits.for_anny(self.body)
        self._lock = threading.Lock()
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

    def __call__(self, inputs: FitInputs) -> FitOutputs:
        with self._lock, torch.random.fork_rng():
            torch.manual_seed(inputs.seed)
            return self._fit(inputs)

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
        centre = _weighted_centre(rigid_target)
        xy0 = (centre - cam[:, 2:]) / cam[:, :2] * depth0.repeat_interleave(headings, 0)[:, None]

        rotvec = rotation0.clone().requires_grad_(True)
        xy = xy0.clone().requires_grad_(True)
        log_depth = depth0.log().repeat_interleave(headings, 0).clone().requires_grad_(True)
        optimiser = torch.optim.Adam([rotvec, xy, log_depth], lr=0.05)
        for _ in range(40):
            optimiser.zero_grad()
            loss = self._rigid_loss(points, rotvec, xy, log_depth, rigid_target, cam, scale_rep)
            loss.sum().backward()
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

    def _fit(self, inputs: FitInputs) -> FitOutputs:
        body = self.body
        target = self._targets(inputs)
        camera = torch.as_tensor(inputs.camera, dtype=torch.float32)
        people = target.shape[0]
        scale = _person_scale(target)

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
        for step in range(inputs.iterations):
            # Anneal the robust loss: far-off limbs are pulled in first, outliers cut off last.
            progress = step / max(inputs.iterations - 1, 1)
            sigma = SIGMA_START * (SIGMA_END / SIGMA_START) ** progress
            optimiser.zero_grad()
            loss, _ = self._full_loss(
                pose, xy, log_depth, phenotype_logit, target, camera, scale, sigma
            )
            loss.sum().backward()
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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        body = self.body
        phenotype = torch.sigmoid(phenotype_logit)
        coeffs = body.blendshape_coefficients(phenotype)
        transl = torch.cat([xy, log_depth.exp()[:, None]], -1)
        transforms, poses, _ = body.skeleton(pose, transl, coeffs)
        predicted = project(body.fit_keypoints(transforms, coeffs), camera)
        loss = reprojection_loss(predicted, target, scale, sigma)
        loss = loss + 1e-3 * self.limits.regulariser(pose)
        loss = loss + 0.1 * self.limits.penalty(pose)
        loss = loss + 2e-3 * (phenotype - 0.5).square().sum(-1)
        joints = poses[..., :3, 3]
        pelvis = joints[:, 0]
        ankles = joints[:, self._ankles].mean(1)
        for segment in (joints[:, self._neck] - pelvis, pelvis - ankles):
            loss = loss + TILT_WEIGHT * (segment[:, 2] / segment.norm(dim=-1)).square()
        return loss, predicted.detach()


def _depth_tilt(root_rotvec: torch.Tensor) -> torch.Tensor:
    """(B,) squared depth component of the body's up axis (Anny's +Z) in the camera frame."""
    return roma.rotvec_to_rotmat(root_rotvec)[:, 2, 2].square()


def _weighted_centre(target: torch.Tensor) -> torch.Tensor:
    w = target[..., 2:3]
    return (target[..., :2] * w).sum(1) / w.sum(1).clamp(min=1e-6)


def _person_scale(target: torch.Tensor) -> torch.Tensor:
    """Each person's size in pixels: the diagonal of their confident keypoints' box."""
    xy, conf = target[..., :2], target[..., 2:3] > 0
    big = torch.full_like(xy, 1e9)
    low = torch.where(conf, xy, big).min(1).values
    high = torch.where(conf, xy, -big).max(1).values
    return (high - low).norm(dim=-1).clamp(min=16.0)


def _reprojection_error(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(P,) mean pixel distance over confidently detected, mapped keypoints."""
    used = target[..., 2] >= 0.5
    distance = (predicted - target[..., :2]).norm(dim=-1)
    return (distance * used).sum(-1) / used.sum(-1).clamp(min=1)
