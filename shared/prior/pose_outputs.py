"""Poses of the prior, made useful: on Anny, as skeletons and meshes, and how much they vary.

The prior speaks SMPL-X-convention ``body_pose`` (B, 21, 3). Everything a client gets next to
it is computed here, once for every route:

- :func:`anny_pose_from_smplx`: the same pose on Anny (neutral phenotype) as Anny's
  ``local-bone`` axis-angle pose (B, 104, 3) and root position (B, 3), through the adapter's
  inverse map (:func:`~shared.bodies.smplx_convention.smplx_to_anny`). Reading the posed Anny
  back with :func:`~shared.bodies.smplx_convention.anny_to_smplx` gives the body_pose again.
- :func:`skeleton_joints`: the 22 SMPL-X body joints (pelvis first) posed on Anny's neutral
  proportions (:class:`~shared.bodies.skeleton.BodySkeleton`).
- :func:`rotation_spread_deg`: per joint, how far hypotheses spread around their mean rotation.
- :func:`pose_meshes`: the posed Anny meshes as one GLB or OBJ file.

Frames: SMPL-X parameters and joints in SMPL-X's (Y up, the body facing +Z at zero
``global_orient``), metres; the Anny pose in Anny's own world (Z up, facing -Y), the same body
(``ANNY_TO_SMPLX_WORLD`` takes one frame to the other).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal, NamedTuple

import numpy as np
import roma
import torch

from shared.bodies.anny_model import get_anny
from shared.bodies.base import ANNY_TO_CAMERA, ANNY_TO_SMPLX_WORLD
from shared.bodies.skeleton import BodySkeleton
from shared.bodies.smplx_convention import smplx_to_anny, tpose_joints
from shared.io.exports import export_meshes

# Bodies in one mesh file stand this far apart along x, so that they do not overlap.
MESH_SPACING_M = 1.0


class AnnyPose(NamedTuple):
    pose: torch.Tensor  # (B, 104, 3) local-bone axis-angle; [0] = root, in Anny's world
    transl: torch.Tensor  # (B, 3) root bone head, Anny's world, metres
    phenotype: torch.Tensor  # (B, 6) the phenotype posed (neutral: 0.5)


@lru_cache(maxsize=1)
def _neutral_rest() -> tuple[torch.Tensor, torch.Tensor]:
    """Anny's neutral phenotype (1, 6) and its rest bone poses (1, 104, 4, 4)."""

    body = get_anny()
    phenotype = torch.full((1, len(body.phenotype_labels)), 0.5, dtype=body.dtype)
    with torch.no_grad():
        rest = body.rest_bone_poses(body.blendshape_coefficients(phenotype))
    return phenotype, rest


def _as_tensor(array: np.ndarray | torch.Tensor, shape: tuple[int, ...], name: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(array, dtype=np.float32))
    if tuple(tensor.shape[1:]) != shape:
        wanted = ", ".join(map(str, shape))
        raise ValueError(f"{name} must have shape (B, {wanted}), got {tuple(tensor.shape)}")
    return tensor


def anny_pose_from_smplx(
    body_pose: np.ndarray | torch.Tensor,
    global_orient: np.ndarray | torch.Tensor | None = None,
    phenotype: np.ndarray | torch.Tensor | None = None,
) -> AnnyPose:
    """SMPL-X-convention body pose -> the same pose on Anny's body (neutral by default).

    Args:
        body_pose: (B, 21, 3) axis-angle, radians, SMPL-X body joint order.
        global_orient: (B, 3) axis-angle in SMPL-X's frame; default zero (upright, facing +Z).
        phenotype: (B, 6) Anny phenotypes; default the neutral one (0.5 each).

    Returns:
        :class:`AnnyPose`: ``pose`` (B, 104, 3) Anny local-bone axis-angle, ``transl`` (B, 3),
        ``phenotype`` (B, 6); pose Anny with ``AnnyBody.forward(pose, transl, phenotype)``.
    """

    pose = _as_tensor(body_pose, (21, 3), "body_pose")
    batch = pose.shape[0]
    orient = (
        torch.zeros(batch, 3)
        if global_orient is None
        else _as_tensor(global_orient, (3,), "global_orient")
    )
    if phenotype is None:
        phenotype, rest = _neutral_rest()
    else:
        body = get_anny()
        phenotype = _as_tensor(phenotype, (len(body.phenotype_labels),), "phenotype")
        with torch.no_grad():
            rest = body.rest_bone_poses(body.blendshape_coefficients(phenotype))
    with torch.no_grad():
        deltas = smplx_to_anny(
            {"global_orient": orient, "body_pose": pose},
            rest,
            reference_orientations=get_anny().model.reference_bone_orientations,
            world_to_frame=ANNY_TO_SMPLX_WORLD,
            parameterization="local-bone",
        )
    return AnnyPose(
        pose=roma.rotmat_to_rotvec(deltas[..., :3, :3]),
        transl=deltas[:, 0, :3, 3].clone(),
        phenotype=phenotype.expand(batch, -1).clone(),
    )


def anny_pose_in_camera(
    global_orient: np.ndarray | torch.Tensor,
    body_pose: np.ndarray | torch.Tensor,
    pelvis: np.ndarray | torch.Tensor,
) -> AnnyPose:
    """SMPL-X-convention bodies in the OpenCV camera frame -> the same bodies on Anny's neutral
    body, its root mapping Anny's world into the camera (the convention of mesh recovery's
    Anny parameters: ``pose[0]`` the orientation in the camera, ``transl`` the root bone's head
    in the camera).

    Args:
        global_orient: (B, 3) axis-angle, SMPL-X body frame -> camera.
        body_pose: (B, 21, 3) axis-angle.
        pelvis: (B, 3) the pelvis joint in the camera frame, metres.
    """
    rotation = roma.rotvec_to_rotmat(_as_tensor(global_orient, (3,), "global_orient"))
    # Posed in SMPL-X's world with orientation FLIP @ R, then taken into the camera by
    # ANNY_TO_CAMERA = FLIP @ ANNY_TO_SMPLX_WORLD: a rigid motion of the whole body, which is
    # the same as turning and moving its root.
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0]))
    anny = anny_pose_from_smplx(body_pose, roma.rotmat_to_rotvec(flip @ rotation))
    to_camera = torch.as_tensor(ANNY_TO_CAMERA, dtype=torch.float32)
    shift = _as_tensor(pelvis, (3,), "pelvis") - pelvis_rest() @ flip.T
    pose = anny.pose.clone()
    pose[:, 0] = roma.rotmat_to_rotvec(to_camera @ roma.rotvec_to_rotmat(anny.pose[:, 0]))
    return AnnyPose(pose=pose, transl=anny.transl @ to_camera.T + shift, phenotype=anny.phenotype)


def skeleton_joints(
    body_pose: np.ndarray | torch.Tensor, global_orient: np.ndarray | torch.Tensor | None = None
) -> np.ndarray:
    """(B, 21, 3) body pose (+ (B, 3) orientation) -> (B, 22, 3) joint positions, metres.

    The 22 SMPL-X body joints (pelvis first) on Anny's neutral proportions, the pelvis where the
    posed Anny of :func:`anny_pose_from_smplx` has it.
    """

    pose = _as_tensor(body_pose, (21, 3), "body_pose")
    batch = pose.shape[0]
    orient = torch.zeros(batch, 3) if global_orient is None else torch.as_tensor(global_orient)
    skeleton = BodySkeleton.neutral()
    pelvis = pelvis_rest().expand(batch, 3)
    with torch.no_grad():
        return skeleton(orient.float(), pose, pelvis).numpy()


@lru_cache(maxsize=1)
def pelvis_rest() -> torch.Tensor:
    """(1, 3) the neutral body's pelvis joint (J0) in SMPL-X's frame: where zero transl puts it."""

    _, rest = _neutral_rest()
    with torch.no_grad():
        return tpose_joints(rest)[:, 0]


def rotation_spread_deg(body_pose: np.ndarray) -> np.ndarray:
    """(K, J, 3) axis-angle hypotheses -> (J,) spread of each joint's rotation, degrees.

    The root-mean-square geodesic angle between each hypothesis and the joints' mean rotation
    (the chordal L2 mean, :func:`roma.special_procrustes` of the summed matrices): a standard
    deviation on the rotation group; 0 where every hypothesis agrees.
    """
    rotations = roma.rotvec_to_rotmat(torch.as_tensor(np.asarray(body_pose, np.float64)))
    mean = roma.special_procrustes(rotations.sum(0))  # (J, 3, 3)
    angles = roma.rotmat_geodesic_distance(rotations, mean.expand_as(rotations))  # (K, J)
    return np.asarray(np.degrees(angles.square().mean(0).sqrt().numpy()))  # roma is untyped


def pose_meshes(anny: AnnyPose, fmt: Literal["glb", "obj"]) -> bytes:
    """The posed Anny bodies as one file, a node/object per pose (``pose_0``, ``pose_1``, ...),
    standing :data:`MESH_SPACING_M` apart along x. As every mesh of bodyserve, in the OpenCV
    camera frame (the body upright, facing the camera): GLB turns it to glTF's Y up."""

    body = get_anny()
    output = body.forward(anny.pose, anny.transl, anny.phenotype)
    vertices = output.vertices.numpy().astype(np.float64) @ ANNY_TO_CAMERA.T
    vertices[:, :, 0] += MESH_SPACING_M * np.arange(len(vertices))[:, None]
    meshes = [(v, body.faces) for v in vertices]
    names = [f"pose_{i}" for i in range(len(meshes))]
    return export_meshes(meshes, fmt, names)
