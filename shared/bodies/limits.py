"""Anatomical limits of the SMPL-X-convention body pose: what no human joint does.

Loose bounds, for telling plausible poses from broken ones (benchmarks) and for keeping an
optimiser out of the impossible (lifting's refinement): the largest rotation of each joint,
and the hinges (knees, elbows), which do not hyperextend; a knee does not bend sideways
either. An elbow's rotation also carries the forearm's twist, so only its flexion is limited.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from shared.bodies.smplx_convention import SMPLX_BODY_JOINTS

MAX_ANGLE_DEG: dict[str, float] = {
    "hip": 130, "knee": 160, "ankle": 100, "foot": 50, "spine1": 60, "spine2": 40, "spine3": 40,
    "neck": 60, "head": 70, "collar": 45, "shoulder": 170, "elbow": 165, "wrist": 100,
}  # fmt: skip
# Flexion axes of the hinges (SMPL-X: knees about +x; elbows about -y / +y).
HINGES: dict[str, tuple[float, float, float]] = {
    "left_knee": (1.0, 0.0, 0.0),
    "right_knee": (1.0, 0.0, 0.0),
    "left_elbow": (0.0, -1.0, 0.0),
    "right_elbow": (0.0, 1.0, 0.0),
}
HINGE_SLACK_DEG = 30.0
"""Hyperextension (and a knee's sideways bend) that :func:`limit_violations` tolerates."""

_MAX_ANGLE = torch.tensor(
    [math.radians(MAX_ANGLE_DEG[name.split("_", 1)[-1]]) for name in SMPLX_BODY_JOINTS]
)
_HINGE_ROWS = torch.tensor([SMPLX_BODY_JOINTS.index(name) for name in HINGES])
_HINGE_AXES = torch.tensor(list(HINGES.values()))
_KNEE = torch.tensor(["knee" in name for name in HINGES])


def _hinge_angles(pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 21, 3) -> flexion (B, 4) and off-axis rotation (B, 4) of the hinges, radians."""
    rotvec = pose[:, _HINGE_ROWS]
    axes = _HINGE_AXES.to(pose.dtype)
    flexion = (rotvec * axes).sum(-1)
    off_axis = (rotvec - flexion[..., None] * axes).norm(dim=-1)
    return flexion, off_axis


def limit_violations(body_pose: np.ndarray) -> np.ndarray:
    """(B, 21, 3) axis-angle -> (B,) bool: some joint outside the limits (with the slack)."""
    pose = torch.as_tensor(np.asarray(body_pose), dtype=torch.float64)
    bad: torch.Tensor = (pose.norm(dim=-1) > _MAX_ANGLE.double()).any(-1)  # Tensor.norm: Any
    flexion, off_axis = _hinge_angles(pose)
    slack = math.radians(HINGE_SLACK_DEG)
    bad |= (-flexion > slack).any(-1)
    bad |= ((off_axis > slack) & _KNEE).any(-1)
    return bad.numpy()


def limit_penalty(body_pose: torch.Tensor, margin_deg: float = 5.0) -> torch.Tensor:
    """(B, 21, 3) -> (B,) differentiable: squared radians beyond the limits (hinges allowed
    ``margin_deg`` of hyperextension, knees three times that sideways)."""
    margin = math.radians(margin_deg)
    # Tensor.norm is typed to return Any.
    excess: torch.Tensor = (body_pose.norm(dim=-1) - _MAX_ANGLE.to(body_pose.dtype)).clamp(min=0.0)
    flexion, off_axis = _hinge_angles(body_pose)
    hyperextension = (-flexion - margin).clamp(min=0.0)
    sideways = ((off_axis - 3 * margin).clamp(min=0.0)) * _KNEE.to(body_pose.dtype)
    return excess.square().sum(-1) + hyperextension.square().sum(-1) + sideways.square().sum(-1)
