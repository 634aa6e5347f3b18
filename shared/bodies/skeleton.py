"""The SMPL-X-convention body skeleton (pelvis + 21 body joints) on Anny's proportions.

Forward kinematics for everything that works in SMPL-X-convention body parameters without a
mesh: the pose prior, mocap ingestion and export, motion denoising, lifting. The rest skeleton is
the adapter's canonical T-pose (:func:`~shared.bodies.smplx_convention.tpose_joints`), so posing it
with the parameters :func:`~shared.bodies.smplx_convention.anny_to_smplx` reads off an Anny body
puts each joint exactly where that Anny body has it.

Frame: SMPL-X's (Y up, the body faces +Z at zero ``global_orient``), metres.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from shared.bodies.anny_model import get_anny
from shared.bodies.smplx_convention import (
    SMPLX_BODY_JOINTS,
    SMPLX_JOINT_NAMES,
    SMPLX_PARENTS,
    tpose_joints,
    tree_levels,
)

BODY_JOINT_NAMES: tuple[str, ...] = SMPLX_JOINT_NAMES[:22]
BODY_PARENTS: tuple[int, ...] = SMPLX_PARENTS[:22]
NUM_BODY_JOINTS = 21  # body_pose rows (the pelvis is global_orient)


_PARENT = torch.tensor([0, *BODY_PARENTS[1:]])


def rodrigues(rotvec: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis-angle -> (..., 3, 3), Rodrigues' formula ``I + a K + b K^2``.

    The same as :func:`roma.rotvec_to_rotmat` (to float rounding) in a third of the tensor
    operations: fitting and lifting call it hundreds of times per request on small batches,
    where the per-operation overhead, not arithmetic, is the cost. Smooth at zero: below
    1e-4 rad the coefficients come from their Taylor series.
    """
    theta2 = rotvec.square().sum(-1, keepdim=True)
    theta = (theta2 + 1e-12).sqrt()
    small = theta2 < 1e-8
    a = torch.where(small, 1.0 - theta2 / 6.0, theta.sin() / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - theta.cos()) / (theta2 + 1e-12))
    x, y, z = rotvec.unbind(-1)
    zero = torch.zeros_like(x)
    # torch.unflatten: the same op as the method, which torch leaves unannotated.
    k = torch.unflatten(torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1), -1, (3, 3))
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device)
    return eye + a[..., None] * k + b[..., None] * (k @ k)


def _jump_ancestors(parents: tuple[int, ...]) -> list[torch.Tensor]:
    """Ancestor pointers for prefix products down the tree by pointer jumping.

    Joint ``j`` starts holding its own local value and pointing at its parent; each round it
    takes in the value of the joint it points at and then points at that joint's target, so
    after round ``r`` it holds the product of ``2**r`` links of its chain. A virtual root (index
    ``len(parents)``, holding the identity) ends every chain. log2(depth) rounds of one gather
    and one batched product each, instead of one round per tree level: the 22-joint body is 8
    levels deep, 3 rounds.
    """
    root = len(parents)
    pointer = torch.tensor([root if p < 0 else p for p in parents] + [root])
    depth = len(tree_levels(parents)) + 1
    rounds = []
    for _ in range(max(1, math.ceil(math.log2(depth)))):
        rounds.append(pointer)
        pointer = pointer[pointer]
    return rounds


_JUMPS = _jump_ancestors(BODY_PARENTS)


def _twin(name: str) -> str:
    for a, b in (("left_", "right_"), ("right_", "left_")):
        if name.startswith(a):
            return b + name[len(a) :]
    return name


# body_pose row of each joint's left/right twin (itself for the spine, neck and head).
MIRROR_INDEX: tuple[int, ...] = tuple(SMPLX_BODY_JOINTS.index(_twin(n)) for n in SMPLX_BODY_JOINTS)


def mirror_body_pose(body_pose: np.ndarray) -> np.ndarray:
    """Left/right mirror image of body poses, (N, 21, 3) -> (N, 21, 3).

    Reflecting SMPL-X's frame in x swaps each left joint with its right twin and negates the y and
    z components of every axis-angle (a global orientation mirrors the same way, without the swap).
    """
    flip = np.array([1.0, -1.0, -1.0], dtype=body_pose.dtype)
    return np.asarray(body_pose[:, list(MIRROR_INDEX)] * flip)


class BodySkeleton:
    """Callable: ``(global_orient (B, 3), body_pose (B, 21, 3), pelvis (B, 3)) -> (B, 22, 3)``.

    Differentiable in every argument. ``rest_joints`` is ``(B or 1, 22, 3)``, the T-pose joints
    relative to the pelvis.
    """

    def __init__(self, rest_joints: torch.Tensor) -> None:
        if rest_joints.ndim != 3 or rest_joints.shape[1:] != (22, 3):
            raise ValueError(f"rest_joints must be (B, 22, 3), got {tuple(rest_joints.shape)}")
        self.rest_joints = rest_joints - rest_joints[:, :1]
        # Bone vectors from each joint's parent, in the rest pose.
        self._offsets = self.rest_joints - self.rest_joints[:, _PARENT]

    @classmethod
    @lru_cache(maxsize=1)
    def neutral(cls) -> BodySkeleton:
        """The neutral body's skeleton, built once per process (treat it as read-only)."""
        return cls.for_phenotype(None)

    @classmethod
    def for_phenotype(cls, phenotype: torch.Tensor | None = None) -> BodySkeleton:
        """The skeleton of Anny at ``phenotype`` (B, 6) in [0, 1]; default: the neutral body."""

        body = get_anny()
        if phenotype is None:
            phenotype = torch.full((1, len(body.phenotype_labels)), 0.5)
        coeffs = body.blendshape_coefficients(phenotype.to(body.dtype))
        rest = body.rest_bone_poses(coeffs)
        return cls(tpose_joints(rest)[:, :22])

    def to(self, dtype: torch.dtype) -> BodySkeleton:
        return BodySkeleton(self.rest_joints.to(dtype))

    def global_rotations(
        self, global_orient: torch.Tensor, body_pose: torch.Tensor
    ) -> torch.Tensor:
        """(B, 22, 3, 3) each joint's rotation from the rest pose to the posed one."""
        local = rodrigues(torch.cat([global_orient[:, None], body_pose], 1))
        identity = torch.eye(3, dtype=local.dtype, device=local.device).expand(len(local), 1, 3, 3)
        rotations = torch.cat([local, identity], 1)
        for pointer in _JUMPS:
            rotations = rotations[:, pointer] @ rotations
        return rotations[:, :22]

    def __call__(
        self, global_orient: torch.Tensor, body_pose: torch.Tensor, pelvis: torch.Tensor
    ) -> torch.Tensor:
        return self.posed(global_orient, body_pose, pelvis)[1]

    def posed(
        self, global_orient: torch.Tensor, body_pose: torch.Tensor, pelvis: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Global rotations (B, 22, 3, 3) and joint positions (B, 22, 3) in one pass."""
        rotations = self.global_rotations(global_orient, body_pose.reshape(-1, 21, 3))
        offsets = self._offsets.to(rotations.dtype)
        # Each bone vector turned by its parent's rotation, then summed down the tree.
        steps = (rotations[:, _PARENT] @ offsets[..., None])[..., 0]
        # (The root's bone vector is zero; the virtual root's, appended, too.)
        steps = torch.cat([steps, torch.zeros_like(steps[:, :1])], 1)
        for pointer in _JUMPS:
            steps = steps[:, pointer] + steps
        positions = pelvis[:, None] + steps[:, :22]
        return rotations, positions
