"""The SMPL-X-convention body skeleton (pelvis + 21 body joints) on Anny's proportions.

Forward kinematics for everything that works in SMPL-X-convention body parameters without a
mesh: the pose prior, mocap ingestion and export, motion denoising, lifting. The rest skeleton is
the adapter's canonical T-pose (:func:`~shared.bodies.smplx_convention.tpose_joints`), so posing it
with the parameters :func:`~shared.bodies.smplx_convention.anny_to_smplx` reads off an Anny body
puts each joint exactly where that Anny body has it.

Frame: SMPL-X's (Y up, the body faces +Z at zero ``global_orient``), metres.
"""

from __future__ import annotations

import numpy as np
import roma
import torch

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


_LEVELS = tree_levels(BODY_PARENTS)
_PARENT = torch.tensor([0, *BODY_PARENTS[1:]])


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
    return body_pose[:, list(MIRROR_INDEX)] * flip


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
    def for_phenotype(cls, phenotype: torch.Tensor | None = None) -> BodySkeleton:
        """The skeleton of Anny at ``phenotype`` (B, 6) in [0, 1]; default: the neutral body."""
        from shared.bodies.anny_model import get_anny

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
        local = roma.rotvec_to_rotmat(torch.cat([global_orient[:, None], body_pose], 1))
        rotations = local
        for level in _LEVELS:  # one batched product per tree depth
            rotations = rotations.index_copy(
                1, level, rotations[:, _PARENT[level]] @ local[:, level]
            )
        return rotations

    def __call__(
        self, global_orient: torch.Tensor, body_pose: torch.Tensor, pelvis: torch.Tensor
    ) -> torch.Tensor:
        rotations = self.global_rotations(global_orient, body_pose.reshape(-1, 21, 3))
        offsets = self._offsets.to(rotations.dtype)
        # Each bone vector turned by its parent's rotation, then summed down the tree.
        steps = (rotations[:, _PARENT] @ offsets[..., None])[..., 0]
        positions = pelvis[:, None].expand(-1, 22, -1)
        for level in _LEVELS:
            positions = positions.index_copy(
                1, level, positions[:, _PARENT[level]] + steps[:, level]
            )
        return positions
