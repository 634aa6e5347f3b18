"""Anny, the default body model (Apache-2.0, assets bundled), wrapped for bodyserve.

Pose convention used everywhere in bodyserve for Anny:

- ``pose``: ``(B, J, 3)`` axis-angle per bone in Anny's ``local-bone`` parameterisation (each
  bone's rotation relative to its reference pose, in its own reference axes; identity gives
  Anny's A-pose reference). The root's entry is the body's orientation in the output frame.
- ``transl``: ``(B, 3)`` position of the root bone's head in the output frame (metres).
- ``phenotype``: ``(B, 6)`` Anny phenotype values in ``[0, 1]`` (gender, age, muscle, weight,
  height, proportions).

The output frame is whatever frame the root rotation maps into; the fitter uses the OpenCV
camera frame. The model is float32 and loads once per process (:func:`get_anny`); its cache must
have been built beforehand (``bodyserve setup``), which takes a minute, never per request.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, cast

import numpy as np
import roma
import torch

from shared.keypoints.formats import COCO17_FEET, HAND21, MEDIAPIPE33

if TYPE_CHECKING:
    import anny

# Keypoints the fitter uses, in order: mediapipe33, then hand21 left, then hand21 right.
FIT_KEYPOINTS: tuple[str, ...] = (
    *MEDIAPIPE33,
    *(f"left_hand.{n}" for n in HAND21),
    *(f"right_hand.{n}" for n in HAND21),
)

# mediapipe33 points that Anny's bundled COCO+feet vertex regressor gives directly.
_FROM_COCO_REGRESSOR = {name: name for name in COCO17_FEET if name in MEDIAPIPE33} | {
    "left_foot_index": "left_big_toe",
    "right_foot_index": "right_big_toe",
}

# Finger chains: hand21 finger name -> Anny finger index (finger1 is the thumb).
_FINGERS = {"thumb": 1, "index": 2, "middle": 3, "ring": 4, "pinky": 5}
_THUMB_JOINTS = ("cmc", "mcp", "ip")
_FINGER_JOINTS = ("mcp", "pip", "dip")

_lock = threading.Lock()
_instance: AnnyBody | None = None


def get_anny() -> AnnyBody:
    """The process-wide Anny model (loaded on first use, then shared)."""
    global _instance
    with _lock:
        if _instance is None:
            _instance = AnnyBody()
        return _instance


def build_anny_cache() -> str:
    """Build Anny's cache (about a minute, 790 MB); a no-op when it exists. Returns its path."""
    # anny initialises Warp on import (seconds): only when a body is built.
    import anny

    anny.Anny()
    return str(anny.paths.get_anny_cache_path())


@dataclass
class AnnyOutput:
    vertices: torch.Tensor  # (B, V, 3)
    joints: torch.Tensor  # (B, J, 3) bone heads
    bone_poses: torch.Tensor  # (B, J, 4, 4) world transform of each bone
    rest_bone_poses: torch.Tensor  # (B, J, 4, 4)


class AnnyBody:
    """Anny with a fast, exact keypoint path for fitting and a full-mesh path for outputs."""

    name = "anny"

    def __init__(self, device: str | torch.device = "cpu") -> None:
        cache_dir = os.environ.get("BODYSERVE_ANNY_CACHE_DIR")
        # anny initialises Warp on import (seconds): only when a body is built.
        import anny

        if cache_dir:
            anny.paths.set_anny_cache_path(cache_dir)
        # Dense LBS: plain torch, deterministic, no JIT kernel compilation at start-up.
        model = anny.Anny(skinning_method="lbs").to(dtype=torch.float32, device=device)
        model.eval()
        self.model: anny.Anny = model
        self.bone_labels: list[str] = list(model.bone_labels)
        self.bone_parents: list[int] = list(model.bone_parents)
        self.phenotype_labels: list[str] = list(model.phenotype_labels)
        self._bone_index = {name: i for i, name in enumerate(self.bone_labels)}
        self._build_keypoint_basis()

    # ------------------------------------------------------------------ structure
    @property
    def joint_count(self) -> int:
        return len(self.bone_labels)

    @property
    def vertex_count(self) -> int:
        return int(self.model.template_vertices.shape[0])

    @property
    def joint_names(self) -> list[str]:
        return self.bone_labels

    @cached_property
    def faces(self) -> np.ndarray:
        """(F, 3) int64 triangles (Anny's quads split in two)."""
        return cast(torch.Tensor, self.model.get_triangular_faces()).cpu().numpy()  # anny: untyped

    def bone(self, name: str) -> int:
        return self._bone_index[name]

    @property
    def dtype(self) -> torch.dtype:
        return cast(torch.dtype, self.model.dtype)  # anny is untyped

    # ------------------------------------------------------------------ kinematics
    def blendshape_coefficients(self, phenotype: torch.Tensor) -> torch.Tensor:
        """(B, 6) phenotype -> (B, A) blendshape coefficients."""
        empty = phenotype.new_zeros((phenotype.shape[0], 0))
        coeffs = self.model._get_phenotype_blendshape_coefficients(phenotype, empty, empty)
        return cast(torch.Tensor, coeffs)  # anny is untyped

    def rest_bone_poses(self, coeffs: torch.Tensor) -> torch.Tensor:
        """(B, A) coefficients -> (B, J, 4, 4) rest bone poses, without the full mesh."""
        m = self.model
        heads = m.template_bone_heads[None] + torch.einsum(
            "ba,ajk->bjk", coeffs, m.bone_heads_blendshapes
        )
        cov = m.bone_template_orientation_matrices[None] + torch.einsum(
            "ba,akij->bkij", coeffs, m.bone_orientation_blendshapes
        )
        rotations = roma.special_procrustes(cov)
        return cast(torch.Tensor, roma.Rigid(linear=rotations, translation=heads).to_homogeneous())

    def deltas(self, pose: torch.Tensor, transl: torch.Tensor) -> torch.Tensor:
        """(B, J, 3) axis-angle + (B, 3) root position -> (B, J, 4, 4) delta transforms."""
        batch = pose.shape[0]
        delta = torch.zeros(batch, self.joint_count, 4, 4, dtype=pose.dtype, device=pose.device)
        delta[:, :, :3, :3] = roma.rotvec_to_rotmat(pose)
        delta[:, :, 3, 3] = 1.0
        delta[:, 0, :3, 3] = transl
        return delta

    def skeleton(
        self, pose: torch.Tensor, transl: torch.Tensor, coeffs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Bone transforms (for skinning), posed bone poses and rest bone poses, (B, J, 4, 4)."""
        rest = self.rest_bone_poses(coeffs)
        transforms, poses = self.model.get_bone_transforms(
            self.deltas(pose, transl), rest, pose_parameterization="local-bone"
        )
        return transforms, poses, rest

    # ------------------------------------------------------------------ keypoints
    def _build_keypoint_basis(self) -> None:
        """Precompute each fit keypoint as bone-attached points linear in the blendshapes.

        A keypoint regressed from skinned vertices is exactly ``sum_b T_b [p_kb, a_kb]`` with
        ``p_kb = sum_v w_kv W_vb v_rest_v`` and ``a_kb = sum_v w_kv W_vb``; ``v_rest`` is linear in
        the blendshape coefficients, so ``p_kb`` is too. A bone head is the special case of one
        bone with weight one. Fitting then never touches the 13,718 vertices.
        """
        # anny initialises Warp on import (seconds): only when a body is built.
        import anny

        m = self.model
        n_vertices, n_bones = self.vertex_count, self.joint_count
        skin = torch.zeros(n_vertices, n_bones, dtype=torch.float32)
        skin.scatter_add_(1, m.vertex_bone_indices.long(), m.vertex_bone_weights.float())

        coco = anny.KeypointsRegressor.coco(m)
        coco_index = {label: i for i, label in enumerate(coco.labels)}
        fingertips = self._fingertip_vertices(skin)

        n_kp = len(FIT_KEYPOINTS)
        vertex_weights = torch.zeros(n_kp, n_vertices)
        head_of = torch.full((n_kp,), -1, dtype=torch.long)
        mapped = torch.zeros(n_kp, dtype=torch.bool)
        for k, name in enumerate(FIT_KEYPOINTS):
            if name in _FROM_COCO_REGRESSOR:
                weights = coco.regression_weights[coco_index[_FROM_COCO_REGRESSOR[name]]]
                vertex_weights[k] = weights.float()
                mapped[k] = True
                continue
            bone_or_vertex = self._hand_keypoint_source(name, fingertips)
            if bone_or_vertex is None:
                continue
            kind, index = bone_or_vertex
            if kind == "bone":
                head_of[k] = index
            else:
                vertex_weights[k, index] = 1.0
            mapped[k] = True

        # Vertex-based keypoints: (K, J) bone weights and (K, J, 3) points, plus blendshapes.
        per_bone = vertex_weights[:, :, None] * skin[None]  # (K, V, J)
        alpha = per_bone.sum(1)
        template = m.template_vertices.float()
        base = torch.einsum("kvj,vd->kjd", per_bone, template)
        blend = torch.einsum("kvj,avd->akjd", per_bone, m.blendshapes.float())
        # Bone-head keypoints.
        for k in torch.nonzero(head_of >= 0).flatten().tolist():
            b = int(head_of[k])
            alpha[k, b] = 1.0
            base[k, b] = m.template_bone_heads[b].float()
            blend[:, k, b] = m.bone_heads_blendshapes[:, b].float()
        # Keep only bones that matter to some keypoint: fewer flops per fitting step.
        used = torch.nonzero(alpha.abs().sum(0) > 1e-6).flatten()
        self._kp_bones = used
        self._kp_alpha = alpha[:, used].contiguous()
        self._kp_base = base[:, used].contiguous()
        self._kp_blend = blend[:, :, used].contiguous()
        self.keypoint_mapped = mapped

    def _fingertip_vertices(self, skin: torch.Tensor) -> dict[str, int]:
        """A vertex at the tip of each finger: the far end of its last phalanx, in the rest mesh."""
        rest = self.model.template_vertices.float()
        heads = self.model.template_bone_heads.float()
        tips: dict[str, int] = {}
        for side in ("L", "R"):
            for finger in range(1, 6):
                last, before = (
                    self.bone(f"finger{finger}-3.{side}"),
                    self.bone(f"finger{finger}-2.{side}"),
                )
                direction = heads[last] - heads[before]
                direction = direction / direction.norm()
                owned = torch.nonzero(skin[:, last] > 0.5).flatten()
                reach = (rest[owned] - heads[last]) @ direction
                tips[f"{side}{finger}"] = int(owned[torch.argmax(reach)])
        return tips

    def _hand_keypoint_source(
        self, name: str, fingertips: dict[str, int]
    ) -> tuple[str, int] | None:
        """Where a non-regressor keypoint comes from: ("bone", head of bone) or ("vertex", id)."""
        side_of = {"left": "L", "right": "R"}
        if name.endswith(("_pinky", "_index", "_thumb")) and "." not in name:
            side, finger = name.split("_", 1)
            # BlazePose's hand points: pinky and index knuckles, and the thumb's IP joint.
            bone = {"pinky": "finger5-1", "index": "finger2-1", "thumb": "finger1-3"}[finger]
            return "bone", self.bone(f"{bone}.{side_of[side]}")
        if "." not in name:
            return None  # eye corners, mouth corners: no reliable Anny counterpart
        hand, point = name.split(".")
        side = side_of[hand.removesuffix("_hand")]
        if point == "wrist":
            return "bone", self.bone(f"wrist.{side}")
        finger, joint = point.split("_")
        index = _FINGERS[finger]
        if joint == "tip":
            return "vertex", fingertips[f"{side}{index}"]
        joints = _THUMB_JOINTS if finger == "thumb" else _FINGER_JOINTS
        return "bone", self.bone(f"finger{index}-{joints.index(joint) + 1}.{side}")

    def fit_keypoints(self, transforms: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
        """(B, J, 4, 4) bone transforms + (B, A) coefficients -> (B, K, 3) fit keypoints."""
        points = self._kp_base[None] + torch.einsum("ba,akjd->bkjd", coeffs, self._kp_blend)
        t = transforms[:, self._kp_bones]  # (B, J', 4, 4)
        rotated = torch.einsum("bjde,bkje->bkjd", t[..., :3, :3], points)
        moved = rotated + t[:, None, :, :3, 3] * self._kp_alpha[None, :, :, None]
        return moved.sum(2)

    # ------------------------------------------------------------------ full model
    @torch.no_grad()
    def forward(
        self, pose: torch.Tensor, transl: torch.Tensor, phenotype: torch.Tensor
    ) -> AnnyOutput:
        """Full posed mesh: (B, J, 3) pose, (B, 3) transl, (B, 6) phenotype."""
        coeffs = self.blendshape_coefficients(phenotype)
        transforms, poses, rest = self.skeleton(pose, transl, coeffs)
        rest_vertices = self.model.get_rest_vertices(coeffs)
        vertices = self.model.get_skinned_vertices(rest_vertices, transforms)
        return AnnyOutput(
            vertices=vertices, joints=poses[:, :, :3, 3], bone_poses=poses, rest_bone_poses=rest
        )
