"""Anny bodies in synthetic scenes: random poses within limits, posing, framing, one-call render.

- :func:`random_body_pose`: SMPL-X-convention body poses (B, 21, 3) drawn joint by joint inside
  the anatomical limits of :mod:`shared.bodies.limits` (knees and elbows bend one way only).
- :func:`pose_anny`: those poses on Anny at any phenotype (through the adapter's inverse map,
  :func:`~shared.bodies.smplx_convention.smplx_to_anny`), as vertices in the OpenCV camera
  frame, upright and facing the camera, then turned by ``rotation`` and moved by
  ``translation`` (the pelvis lands there).
- :func:`place_in_view`: the translation that centres a body in the image at a given size.
- :func:`render_random_scene`: random appearance per body, lighting and background from one
  ``numpy.random.Generator``, then :func:`~shared.render.scene.render_scene`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import roma
import torch

from shared.bodies.anny_model import get_anny
from shared.bodies.base import ANNY_TO_CAMERA, ANNY_TO_SMPLX_WORLD
from shared.bodies.limits import HINGES, MAX_ANGLE_DEG, limit_violations
from shared.bodies.smplx_convention import SMPLX_BODY_JOINTS, smplx_to_anny, tpose_joints
from shared.render.appearance import anny_regions, sample_anny_material, sample_lighting
from shared.render.backgrounds import Backgrounds
from shared.render.renderer import Camera
from shared.render.scene import SceneBody, SceneImage, render_scene

__all__ = [
    "anny_scene_body",
    "place_in_view",
    "pose_anny",
    "random_body_pose",
    "random_phenotype",
    "render_random_scene",
]


def random_body_pose(
    rng: np.random.Generator, count: int = 1, spread: float = 0.4, *, arms_down: bool = True
) -> np.ndarray:
    """(count, 21, 3) float32 axis-angle body poses inside the anatomical limits.

    Each joint turns about a random axis by up to ``spread`` (0..1) of its largest rotation
    (:data:`~shared.bodies.limits.MAX_ANGLE_DEG`); knees and elbows only flex, about their
    hinge axis. ``arms_down`` first lowers the arms from the T-pose by 35 to 80 degrees (people
    rarely hold a T). A pose outside :func:`~shared.bodies.limits.limit_violations` is drawn
    again.
    """
    if not 0.0 <= spread <= 1.0:
        raise ValueError(f"spread must lie in [0, 1], got {spread}")
    shoulders = {
        name: SMPLX_BODY_JOINTS.index(name) for name in ("left_shoulder", "right_shoulder")
    }
    poses = np.zeros((count, len(SMPLX_BODY_JOINTS), 3))
    for row in range(count):
        for _ in range(100):
            pose = np.zeros((len(SMPLX_BODY_JOINTS), 3))
            for j, name in enumerate(SMPLX_BODY_JOINTS):
                limit = math.radians(MAX_ANGLE_DEG[name.split("_", 1)[-1]]) * spread
                if name in HINGES:
                    axis = np.asarray(HINGES[name])
                else:
                    axis = rng.normal(size=3)
                    axis /= np.linalg.norm(axis)
                pose[j] = axis * rng.uniform(0.0, limit)
            if arms_down:
                for name, j in shoulders.items():
                    # SMPL-X's T-pose arms lie along +x (left) and -x (right), y up.
                    lower = math.radians(rng.uniform(35, 80)) * (-1 if name[0] == "l" else 1)
                    base = roma.rotvec_to_rotmat(
                        torch.tensor([0.0, 0.0, lower], dtype=torch.float64)
                    )
                    turn = roma.rotvec_to_rotmat(torch.as_tensor(pose[j]))
                    pose[j] = roma.rotmat_to_rotvec(turn @ base).numpy()
            if not limit_violations(pose[None])[0]:
                poses[row] = pose
                break
        else:
            raise RuntimeError("no pose within the limits in 100 draws: lower spread")
    return poses.astype(np.float32)


def random_phenotype(rng: np.random.Generator, count: int = 1) -> np.ndarray:
    """(count, 6) float32 Anny phenotypes (gender, age, muscle, weight, height, proportions),
    uniform in [0, 1] but for age, kept to [0.35, 1] (young adults and older: no toddlers)."""
    phenotype = rng.uniform(0.0, 1.0, (count, 6))
    phenotype[:, 1] = rng.uniform(0.35, 1.0, count)
    return phenotype.astype(np.float32)


def pose_anny(
    body_pose: np.ndarray,
    phenotype: np.ndarray,
    rotation: np.ndarray | None = None,
    translation: np.ndarray | None = None,
) -> np.ndarray:
    """Anny's posed meshes in the OpenCV camera frame: (B, V, 3) float32 vertices.

    Args:
        body_pose: (B, 21, 3) SMPL-X-convention axis-angle (radians).
        phenotype: (B, 6) Anny phenotype values in [0, 1].
        rotation: (B, 3, 3) turns the body (upright, facing the camera) about its pelvis, in the
            camera frame; default none.
        translation: (B, 3) where the pelvis goes in the camera frame; default the origin.
    """

    body = get_anny()
    pose = torch.as_tensor(np.asarray(body_pose, np.float32))
    pheno = torch.as_tensor(np.asarray(phenotype, np.float32))
    if pose.ndim != 3 or pose.shape[1:] != (21, 3):
        raise ValueError(f"body_pose must be (B, 21, 3), got {tuple(pose.shape)}")
    batch = pose.shape[0]
    if pheno.shape != (batch, 6):
        raise ValueError(f"phenotype must be ({batch}, 6), got {tuple(pheno.shape)}")
    with torch.no_grad():
        coeffs = body.blendshape_coefficients(pheno)
        rest = body.rest_bone_poses(coeffs)
        # transl = -J0: the pelvis at the origin of SMPL-X's world (and so of the camera's).
        j0 = tpose_joints(rest)[:, 0]
        deltas = smplx_to_anny(
            {"global_orient": torch.zeros(batch, 3), "body_pose": pose, "transl": -j0},
            rest,
            reference_orientations=body.model.reference_bone_orientations,
            world_to_frame=ANNY_TO_SMPLX_WORLD,
            j0=j0,
            parameterization="local-bone",
        )
        # AnnyBody.forward, reusing the blendshapes and rest bones above and the adapter's
        # delta matrices as they are (no round trip through axis-angle).
        model = body.model
        transforms, _ = model.get_bone_transforms(deltas, rest, pose_parameterization="local-bone")
        posed = model.get_skinned_vertices(model.get_rest_vertices(coeffs), transforms)
    vertices = posed.numpy() @ ANNY_TO_CAMERA.T.astype(np.float32)
    if rotation is not None:
        r = np.asarray(rotation, np.float32).reshape(batch, 3, 3)
        vertices = np.einsum("bij,bvj->bvi", r, vertices)
    if translation is not None:
        vertices = vertices + np.asarray(translation, np.float32).reshape(batch, 1, 3)
    return np.asarray(vertices, np.float32)  # fresh: no copy needed


def place_in_view(
    vertices: np.ndarray, camera: Camera, *, height: int, width: int, fill: float = 0.8
) -> np.ndarray:
    """(3,) translation that puts the centre of ``vertices``' bounding box on the principal axis,
    far enough that the box (seen from there) spans ``fill`` of the image's height or width."""
    fx, fy, _, _ = (float(c) for c in camera)
    v = np.asarray(vertices, np.float64)
    low, high = v.min(axis=0), v.max(axis=0)
    centre, extent = (low + high) / 2.0, high - low
    # The box's front face is nearer than its centre: add half the depth.
    distance = max(fx * extent[0] / (fill * width), fy * extent[1] / (fill * height))
    distance += extent[2] / 2.0
    return np.array([-centre[0], -centre[1], distance - centre[2]], np.float32)


def anny_scene_body(vertices: np.ndarray, rng: np.random.Generator) -> SceneBody:
    """Anny's posed ``vertices`` (camera frame) with a random look drawn from ``rng``."""

    regions = anny_regions()
    return SceneBody(
        vertices=vertices,
        faces=get_anny().faces,
        vertex_parts=regions.parts,
        material=sample_anny_material(rng, regions),
        closed=True,  # watertight pieces, outward normals: back faces can be skipped
    )


def render_random_scene(
    rng: np.random.Generator,
    bodies: Sequence[np.ndarray],
    camera: Camera,
    *,
    height: int,
    width: int,
    backgrounds: Backgrounds | None = None,
    supersample: int = 2,
) -> SceneImage:
    """Posed Anny ``bodies`` ((V, 3) vertices each, camera frame) with a random look each, random
    lighting and a random background (procedural unless ``backgrounds`` says otherwise), drawn
    from ``rng`` in that order: the same generator state gives the same image."""
    scene_bodies = [anny_scene_body(v, rng) for v in bodies]
    lighting = sample_lighting(rng)
    background = (backgrounds or Backgrounds()).sample(rng, height, width)
    return render_scene(
        scene_bodies,
        camera,
        height=height,
        width=width,
        lighting=lighting,
        background=background,
        supersample=supersample,
    )
