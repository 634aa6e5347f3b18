"""Drawn poses, shapes and cameras -> posed Anny bodies in the camera, and their exact labels.

One batched Anny pass per chunk gives the mesh and everything labelled from the same bones:
mediapipe-33 keypoints (COCO-17 is their subset by name; Anny's keypoint path of
:meth:`AnnyBody.fit_keypoints`, exact for the mesh), the 22 SMPL-X body joints, the
SMPL-X-convention parameters read back from the posed bones (:func:`anny_to_smplx`, as mesh
recovery reports them) and Anny's own parameters. The body is placed by a rigid shift after the
pass, so that its box spans the drawn share of the image at the drawn offset; labels are shifted
with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import roma
import torch

from shared.bodies.anny_model import get_anny
from shared.bodies.smplx_convention import anny_to_smplx, posed_body_joints
from shared.datasets.sampling import CameraDraw
from shared.keypoints.formats import COCO17, MEDIAPIPE33
from shared.prior.pose_outputs import anny_pose_from_smplx

COCO_IN_MEDIAPIPE = [MEDIAPIPE33.index(name) for name in COCO17]
# A keypoint is labelled visible when it is at most this far behind the surface the pixel shows
# (joint centres lie inside the body, up to ~12 cm under the skin at the hips and shoulders).
VISIBLE_DEPTH_M = 0.15


@dataclass
class PlacedBodies:
    """B bodies, one per sample, in their cameras (OpenCV frame, metres)."""

    vertices: np.ndarray  # (B, V, 3) float32
    faces: np.ndarray  # (F, 3) int64
    intrinsics: np.ndarray  # (B, 4) fx, fy, cx, cy
    keypoints3d: np.ndarray  # (B, 33, 3) mediapipe-33; NaN where Anny has no such point
    joints3d: np.ndarray  # (B, 22, 3) SMPL-X body joints, pelvis first
    anny_pose: np.ndarray  # (B, 104, 3) local-bone axis-angle; [0] = orientation in the camera
    anny_transl: np.ndarray  # (B, 3) root bone head in the camera
    phenotype: np.ndarray  # (B, 6)
    smplx: dict[str, np.ndarray]  # global_orient (B, 3), body_pose (B, 21, 3), ..., pelvis, transl

    def __len__(self) -> int:
        return int(self.vertices.shape[0])


def project(points: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """(..., N, 3) camera points and (..., 4) intrinsics -> (..., N, 2) pixels."""
    fx, fy, cx, cy = (intrinsics[..., k, None] for k in range(4))
    z = points[..., 2]
    return np.stack([fx * points[..., 0] / z + cx, fy * points[..., 1] / z + cy], -1)


def _placement(vertices: np.ndarray, cameras: CameraDraw, size: int) -> np.ndarray:
    """(B, 3) the shift that puts each body's box where its camera draw says.

    Depth first, so that the box spans ``fill`` of the image height (the larger of its two
    sides, so that a lying body fits too); then a shift parallel to the image plane centres it
    (plus the drawn offset). One refinement of the depth absorbs perspective.
    """
    intrinsics = cameras.intrinsics(size)
    focal = intrinsics[:, 1]
    low, high = vertices.min(1), vertices.max(1)
    centre = (low + high) / 2
    extent = np.maximum(high[:, 0] - low[:, 0], high[:, 1] - low[:, 1])
    depth = focal * extent / (cameras.fill * size) + (high[:, 2] - low[:, 2]) / 2
    shift: np.ndarray = np.zeros_like(centre)
    for _ in range(2):
        shift[:, 2] = depth - centre[:, 2]
        shift[:, :2] = -centre[:, :2]
        uv = project(vertices + shift[:, None], intrinsics)
        span = (uv.max(1) - uv.min(1)).max(1)
        depth = depth * span / (cameras.fill * size)
    shift[:, 2] = depth - centre[:, 2]
    shift[:, :2] = -centre[:, :2]
    uv = project(vertices + shift[:, None], intrinsics)
    box_centre = (uv.min(1) + uv.max(1)) / 2
    target = intrinsics[:, 2:4] + cameras.offset * size
    shift[:, :2] += (target - box_centre) * depth[:, None] / intrinsics[:, :2]
    return shift


@torch.no_grad()
def place_bodies(
    body_pose: np.ndarray, phenotype: np.ndarray, cameras: CameraDraw, size: int
) -> PlacedBodies:
    """Pose Anny (B bodies) from SMPL-X-convention ``body_pose`` (B, 21, 3) and ``phenotype``
    (B, 6), turn each into its camera and place it in a ``size``-pixel square image."""

    body = get_anny()
    anny = anny_pose_from_smplx(body_pose, phenotype=phenotype)
    to_camera = torch.as_tensor(cameras.rotations(), dtype=torch.float32)
    pose = anny.pose.clone()
    pose[:, 0] = roma.rotmat_to_rotvec(to_camera @ roma.rotvec_to_rotmat(anny.pose[:, 0]))
    transl = (to_camera @ anny.transl[..., None])[..., 0]

    coeffs = body.blendshape_coefficients(anny.phenotype)
    transforms, bone_poses, rest = body.skeleton(pose, transl, coeffs)
    vertices = body.model.get_skinned_vertices(body.model.get_rest_vertices(coeffs), transforms)
    keypoints = body.fit_keypoints(transforms, coeffs)[:, : len(MEDIAPIPE33)]
    # Anny has no eye corners or mouth corners: those six are not labelled (NaN here).
    keypoints[:, ~body.keypoint_mapped[: len(MEDIAPIPE33)]] = float("nan")

    # Every 4th vertex bounds the box to a pixel or so, at a quarter of the cost.
    shift_np = _placement(vertices[:, ::4].numpy(), cameras, size)
    shift = torch.as_tensor(shift_np, dtype=torch.float32)
    bone_poses = bone_poses.clone()
    bone_poses[..., :3, 3] += shift[:, None]
    smplx = anny_to_smplx(bone_poses, rest, world_to_frame=torch.eye(3))
    return PlacedBodies(
        vertices=(vertices + shift[:, None]).numpy().astype(np.float32),
        faces=body.faces,
        intrinsics=cameras.intrinsics(size),
        keypoints3d=(keypoints + shift[:, None]).numpy(),
        joints3d=posed_body_joints(bone_poses).numpy(),
        anny_pose=pose.numpy(),
        anny_transl=(transl + shift).numpy(),
        phenotype=anny.phenotype.numpy(),
        smplx={k: v.numpy() for k, v in smplx.items() if k not in ("betas", "expression")},
    )


def keypoint_visibility(
    keypoints3d: np.ndarray, pixels: np.ndarray, instance: np.ndarray, depth: np.ndarray, label: int
) -> np.ndarray:
    """(K,) 0 outside the image (or not labelled: NaN), 1 inside but hidden, 2 visible: the
    pixel shows this body (``instance == label``) at most :data:`VISIBLE_DEPTH_M` in front of
    the keypoint."""
    height, width = instance.shape
    finite = np.isfinite(pixels).all(1)
    col = np.floor(np.where(finite, pixels[:, 0], -1) + 0.5).astype(int)
    row = np.floor(np.where(finite, pixels[:, 1], -1) + 0.5).astype(int)
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    out = np.zeros(len(pixels), dtype=np.int64)
    c, r = col[inside], row[inside]
    seen = (instance[r, c] == label) & (keypoints3d[inside, 2] - depth[r, c] <= VISIBLE_DEPTH_M)
    out[inside] = np.where(seen, 2, 1)
    return out
