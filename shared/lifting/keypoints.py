"""Surface keypoints on the SMPL-X-convention body skeleton, exact for Anny, without the mesh.

Lifting searches over SMPL-X body poses, so it needs the 2D detector's keypoints (mediapipe33:
nose, eyes, ears, shoulders... the points a detector sees on the skin, not the joint centres)
as a function of ``(global_orient, body_pose, pelvis)`` that costs a few microseconds.

Anny regresses each keypoint from skinned vertices, which is a blend over bones of bone-attached
points (``AnnyBody.fit_keypoints``). A body posed from SMPL-X parameters by the adapter's inverse
map (:func:`~shared.bodies.smplx_convention.smplx_to_anny`) moves every Anny bone rigidly with
the SMPL-X joint that owns it. Grouping the blend by owner therefore gives, per keypoint ``k``
and body joint ``j``, a weight ``w_kj`` and a T-pose point ``q_kj`` with

    keypoint_k = sum_j  w_kj * p_j + R_j (q_kj - w_kj * r_j)

where ``p_j`` and ``R_j`` are joint ``j``'s posed position and global rotation
(:class:`~shared.bodies.skeleton.BodySkeleton`) and ``r_j`` its T-pose position. This is exact
(float rounding) for every pose of the neutral Anny that the adapter produces; finger, eye and
jaw owners fold into the wrist and the head, exact for the flat hand the adapter poses.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import roma
import torch

from shared.bodies.anny_model import FIT_KEYPOINTS, get_anny
from shared.bodies.base import ANNY_TO_SMPLX_WORLD
from shared.bodies.skeleton import BODY_JOINT_NAMES, BodySkeleton
from shared.bodies.smplx_convention import (
    ANNY_BONE_OWNER,
    SMPLX_PARENTS,
    smplx_to_anny,
    tpose_joints,
)
from shared.keypoints.formats import MEDIAPIPE33

LIFT_KEYPOINTS: tuple[str, ...] = MEDIAPIPE33
"""The keypoint order lifting works in; other formats are converted to it first."""


def _body_owner(owner: int) -> int:
    """The body joint (0..21) an SMPL-X joint folds into: itself, or the nearest body ancestor."""

    while owner > 21:
        owner = SMPLX_PARENTS[owner]
    return owner


class KeypointSkeleton:
    """Callable: ``(global_orient (B, 3), body_pose (B, 21, 3), pelvis (B, 3))`` ->
    ``(joints (B, 22, 3), keypoints (B, 33, 3))`` in the frame ``global_orient`` maps into.

    ``mapped`` (33,) says which :data:`LIFT_KEYPOINTS` Anny has (mediapipe's eye corners and
    mouth corners it has not: their rows are the head joint, and must get zero confidence).
    """

    def __init__(
        self,
        skeleton: BodySkeleton,
        weights: torch.Tensor,
        points: torch.Tensor,
        rest_joints: torch.Tensor,
        mapped: torch.Tensor,
    ) -> None:
        self.skeleton = skeleton
        self.weights = weights  # (K, 22)
        # Points relative to their joint's T-pose position, weight included: (K, 22, 3).
        self.offsets = points - weights[..., None] * rest_joints[None]
        self.rest_joints = rest_joints  # (22, 3)
        self.mapped = mapped  # (K,) bool

    def __call__(
        self, global_orient: torch.Tensor, body_pose: torch.Tensor, pelvis: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        body_pose = body_pose.reshape(-1, 21, 3)
        rotations, joints = self.skeleton.posed(global_orient, body_pose, pelvis)
        offsets = self.offsets.to(joints.dtype)
        turned = torch.einsum("bjde,kje->bkd", rotations, offsets)
        return joints, turned + torch.einsum("kj,bjd->bkd", self.weights.to(joints.dtype), joints)

    @classmethod
    @lru_cache(maxsize=1)
    def neutral(cls) -> KeypointSkeleton:
        """The neutral Anny body's keypoint skeleton (built once per process, about 0.1 s)."""
        return cls.for_phenotype(None)

    @classmethod
    def for_phenotype(cls, phenotype: Sequence[float] | None) -> KeypointSkeleton:
        """The keypoint skeleton of Anny at ``phenotype`` (6 values in [0, 1]; None: neutral)."""

        body = get_anny()
        values = [0.5] * len(body.phenotype_labels) if phenotype is None else list(phenotype)
        with torch.no_grad():
            coeffs = body.blendshape_coefficients(torch.tensor([values], dtype=body.dtype))
            rest = body.rest_bone_poses(coeffs)
            # Anny in the adapter's T-pose (zero SMPL-X parameters).
            deltas = smplx_to_anny(
                {"global_orient": torch.zeros(1, 3), "body_pose": torch.zeros(1, 21, 3)},
                rest,
                reference_orientations=body.model.reference_bone_orientations,
                world_to_frame=ANNY_TO_SMPLX_WORLD,
                parameterization="local-bone",
            )
            transforms, _, _ = body.skeleton(
                roma.rotmat_to_rotvec(deltas[..., :3, :3]), deltas[:, 0, :3, 3], coeffs
            )
            # Each bone's share of each keypoint in the T-pose, Anny's world: (K, J', 3).
            points = body._kp_base + torch.einsum("a,akjd->kjd", coeffs[0], body._kp_blend)
            t = transforms[0, body._kp_bones]
            shares = torch.einsum("jde,kje->kjd", t[:, :3, :3], points)
            shares = shares + t[None, :, :3, 3] * body._kp_alpha[..., None]
            to_smplx = torch.as_tensor(ANNY_TO_SMPLX_WORLD, dtype=shares.dtype)
            shares = shares @ to_smplx.T

            count = len(LIFT_KEYPOINTS)
            names = list(FIT_KEYPOINTS)
            rows = [names.index(n) for n in LIFT_KEYPOINTS]
            weights = torch.zeros(count, 22)
            grouped = torch.zeros(count, 22, 3)
            for column, bone in enumerate(body._kp_bones.tolist()):
                joint = _body_owner(int(ANNY_BONE_OWNER[bone]))
                weights[:, joint] += body._kp_alpha[rows, column]
                grouped[:, joint] += shares[rows, column]
            mapped = body.keypoint_mapped[rows].clone()
            rest_joints = tpose_joints(rest)[0, :22].float()
            head = BODY_JOINT_NAMES.index("head")
            # Unmapped points sit on the head joint (never compared: their confidence is zero).
            weights[~mapped] = 0.0
            weights[~mapped, head] = 1.0
            grouped[~mapped] = 0.0
            grouped[~mapped, head] = rest_joints[head]
            skeleton = BodySkeleton(rest_joints[None])
        return cls(skeleton, weights, grouped, rest_joints, mapped)

    @property
    def rest_pelvis(self) -> torch.Tensor:
        """(3,) the pelvis joint in the T-pose (SMPL-X frame): where zero ``transl`` puts it."""
        return self.rest_joints[0]
