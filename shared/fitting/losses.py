"""Fitting terms: robust reprojection, joint limits, a simple pose regulariser and the learned
pose prior.

The simple regulariser is a per-bone weighted L2 on the axis-angle; :class:`PosePriorTerm` (the
DPoser-style diffusion prior on the SMPL-X-convention body pose) replaces it on request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch

from shared.bodies.anny_model import AnnyBody
from shared.bodies.smplx_convention import anny_to_smplx
from shared.prior.sampling import PriorLoss

if TYPE_CHECKING:
    from shared.prior.model import PosePrior


def project(points: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
    """(B, K, 3) camera-frame points + (B, 4) fx, fy, cx, cy -> (B, K, 2) pixels."""
    z = points[..., 2:3].clamp(min=1e-2)
    xy = points[..., :2] / z
    return xy * camera[:, None, :2] + camera[:, None, 2:]


def person_scale(target: torch.Tensor) -> torch.Tensor:
    """(..., K, 3) keypoints -> (...,) the diagonal of the confident keypoints' box, pixels:
    each person's size in the image, which normalises reprojection residuals."""
    xy, confident = target[..., :2], target[..., 2:3] > 0
    big = torch.full_like(xy, 1e9)
    low = torch.where(confident, xy, big).min(-2).values
    high = torch.where(confident, xy, -big).max(-2).values
    diagonal: torch.Tensor = (high - low).norm(dim=-1)  # Tensor.norm is typed to return Any
    return diagonal.clamp(min=16.0)


def weighted_centre(target: torch.Tensor) -> torch.Tensor:
    """(..., K, 3) keypoints -> (..., 2) their confidence-weighted centre, pixels."""
    weight = target[..., 2:3]
    return (target[..., :2] * weight).sum(-2) / weight.sum(-2).clamp(min=1e-6)


def geman_mcclure(squared: torch.Tensor, sigma: float) -> torch.Tensor:
    """Robust penalty of a squared residual: quadratic near 0, saturating at 1 for outliers."""
    return squared / (squared + sigma**2)


def reprojection_loss(
    predicted_px: torch.Tensor,
    target: torch.Tensor,
    scale_px: torch.Tensor,
    sigma: float = 0.08,
) -> torch.Tensor:
    """Confidence-weighted robust reprojection error, per person (B,).

    ``target`` is (B, K, 3) pixels + confidence; residuals are normalised by each person's size
    in pixels so one loss weight serves people near and far.
    """
    residual = (predicted_px - target[..., :2]) / scale_px[:, None, None]
    per_point = geman_mcclure(residual.square().sum(-1), sigma)
    confidence = target[..., 2]
    return (confidence * per_point).sum(-1) / confidence.sum(-1).clamp(min=1e-6)


@dataclass
class JointLimits:
    """Soft anatomical limits on Anny's local-bone rotations.

    - ``max_angle``: (J,) largest comfortable rotation of each bone (radians); beyond it, a
      quadratic penalty. Bones with 0 are not meant to move in fitting (eyes, metacarpals).
    - hinge bones (elbows, knees) bend about one axis, in one direction only;
    - twist bones (the second segment of upper arm, forearm, thigh, shin) only twist about
      their own axis.
    """

    max_angle: torch.Tensor  # (J,)
    regulariser_weight: torch.Tensor  # (J,)
    hinge_bones: torch.Tensor  # (H,)
    hinge_axes: torch.Tensor  # (H, 3) unit, in each bone's local frame; positive = flexion
    hinge_max: torch.Tensor  # (H,)
    twist_bones: torch.Tensor  # (T,)
    twist_axes: torch.Tensor  # (T, 3) unit, local

    @classmethod
    def for_anny(cls, body: AnnyBody) -> JointLimits:
        names = body.bone_labels
        max_angle = torch.zeros(len(names))
        weight = torch.zeros(len(names))

        def setting(name: str) -> tuple[float, float]:
            base = name.split(".")[0]
            table: dict[str, tuple[float, float]] = {
                "spine": (0.2, 20.0),
                "neck": (0.25, 10.0),
                "head": (0.7, 1.0),
                "clavicle": (0.3, 4.0),
                "shoulder01": (0.4, 4.0),
                "upperarm01": (2.6, 0.05),
                "upperarm02": (1.3, 0.2),
                "lowerarm01": (2.7, 0.02),
                "lowerarm02": (1.4, 0.2),
                "wrist": (1.2, 0.3),
                "upperleg01": (2.2, 0.05),
                "upperleg02": (0.8, 0.5),
                "lowerleg01": (2.6, 0.02),
                "lowerleg02": (0.5, 0.5),
                "foot": (0.8, 0.5),
                "finger": (1.6, 0.1),
            }
            for prefix, value in table.items():
                if base.startswith(prefix):
                    return value
            return (0.0, 10.0)

        for j, name in enumerate(names):
            if j == 0:
                continue  # the root is the global orientation: free
            max_angle[j], weight[j] = setting(name)

        rest = body.model.forward()  # identity deltas: Anny's reference pose, world frame
        poses = rest["bone_poses"][0].float()
        heads = poses[:, :3, 3]
        front = torch.tensor([0.0, -1.0, 0.0])

        def child_direction(j: int) -> torch.Tensor:
            child = body.bone_parents.index(j)
            d = heads[child] - heads[j]
            return cast(torch.Tensor, d / d.norm())  # anny's poses are untyped

        hinge_bones, hinge_axes, hinge_max = [], [], []
        for side in ("L", "R"):
            for name, sign in ((f"lowerarm01.{side}", 1.0), (f"lowerleg01.{side}", -1.0)):
                j = body.bone(name)
                upper = heads[j] - heads[body.bone_parents[body.bone_parents[j]]]
                axis = sign * torch.linalg.cross(upper / upper.norm(), front)
                local = poses[j, :3, :3].T @ (axis / axis.norm())
                hinge_bones.append(j)
                hinge_axes.append(local)
                hinge_max.append(2.6)
        twist_bones, twist_axes = [], []
        for side in ("L", "R"):
            for name in ("upperarm02", "lowerarm02", "upperleg02", "lowerleg02"):
                j = body.bone(f"{name}.{side}")
                twist_bones.append(j)
                twist_axes.append(poses[j, :3, :3].T @ child_direction(j))
        return cls(
            max_angle=max_angle,
            regulariser_weight=weight,
            hinge_bones=torch.tensor(hinge_bones),
            hinge_axes=torch.stack(hinge_axes),
            hinge_max=torch.tensor(hinge_max),
            twist_bones=torch.tensor(twist_bones),
            twist_axes=torch.stack(twist_axes),
        )

    def penalty(self, pose: torch.Tensor) -> torch.Tensor:
        """(B, J, 3) local-bone axis-angle -> (B,) limit violation (0 inside the limits)."""
        angle = pose.norm(dim=-1)
        beyond = torch.relu(angle - self.max_angle)
        loss = beyond.square().sum(-1)

        hinge = pose[:, self.hinge_bones]
        flex = (hinge * self.hinge_axes).sum(-1)
        off_axis = hinge - flex[..., None] * self.hinge_axes
        loss = loss + (torch.relu(-flex).square() + torch.relu(flex - self.hinge_max).square()).sum(
            -1
        )
        loss = loss + 4.0 * off_axis.square().sum((-1, -2))

        twist = pose[:, self.twist_bones]
        along = (twist * self.twist_axes).sum(-1)
        sideways = twist - along[..., None] * self.twist_axes
        return loss + 4.0 * sideways.square().sum((-1, -2))

    def regulariser(self, pose: torch.Tensor) -> torch.Tensor:
        """(B, J, 3) -> (B,) simple pose prior: weighted squared rotation angles."""
        return (self.regulariser_weight * pose.square().sum(-1)).sum(-1)


class PosePriorTerm:
    """The learned pose prior as a fitting term on Anny: DPoser's truncated-timestep denoising
    regulariser (:class:`shared.prior.sampling.PriorLoss`) on the SMPL-X-convention ``body_pose``
    read off the posed Anny bones with the differentiable adapter.

    ``body_pose`` is made of rotations local to each joint's parent, so it does not depend on
    the frame the bones are posed in (camera or world): the adapter reads it with the identity.

    Each person's noise comes from its own generator, so a person's fit does not depend on who
    else is in the batch.
    """

    def __init__(self, prior: PosePrior, t_range: tuple[float, float] = (0.3, 0.05)) -> None:

        self.prior = prior
        self.loss = PriorLoss(prior, t_range=t_range)
        self._identity = torch.eye(3)

    def body_pose(self, bone_poses: torch.Tensor, rest_bone_poses: torch.Tensor) -> torch.Tensor:
        """(B, J, 4, 4) posed + (B or 1, J, 4, 4) rest bone poses -> (B, 21, 3) body_pose."""
        frame = self._identity.to(bone_poses)
        return anny_to_smplx(bone_poses, rest_bone_poses, world_to_frame=frame)["body_pose"]

    def __call__(
        self,
        bone_poses: torch.Tensor,
        rest_bone_poses: torch.Tensor,
        progress: float,
        generators: list[torch.Generator],
    ) -> torch.Tensor:
        """(B,) prior loss; ``generators``: one per person (B), advanced by every call."""
        body_pose = self.body_pose(bone_poses, rest_bone_poses)
        if len(generators) != body_pose.shape[0]:
            raise ValueError(f"need one generator per person, got {len(generators)}")
        return torch.cat(
            [
                self.loss(body_pose[i : i + 1], progress, generator)
                for i, generator in enumerate(generators)
            ]
        )
