"""Anny <-> SMPL-X-convention pose parameters (global_orient, body_pose, hands, eyes, transl).

bodyserve fits Anny, but publishes every body in SMPL-X's parameter convention as well. No
mapping exists upstream that we may use, so this module defines one. ``docs/smplx_mapping.md``
is the long form (frames, rest-pose handling, limits); in short:

**Mapping** (:data:`SMPLX_TO_ANNY`): each SMPL-X joint is driven by a *group* of Anny bones,
listed proximal to distal. Forward (Anny -> SMPL-X), a joint's global rotation is read from the
LAST bone of its group (so the distal part of the segment is right); the toes group is read as
the mean rotation of the five ``toeN-1`` bones. Inverse (SMPL-X -> Anny), a joint's rotation is
put whole on the FIRST bone of its group and the other bones of the group follow it rigidly, so
the group moves like the single rigid SMPL-X segment it stands for. Anny bones outside every
group (``pelvis.L/R``, ``metacarpal1-4``, the toes' distal phalanges) follow their parent
rigidly. The jaw has no Anny bone: ``jaw_pose`` is always zero and is ignored on the way back.

**Frames**: Anny's world is Z-up, facing -Y; SMPL-X's canonical frame is Y-up, facing +Z
(:data:`~shared.bodies.base.ANNY_TO_SMPLX_WORLD` is ``C``, Anny world -> SMPL-X). With ``T_b``
the rotation taking bone ``b`` from its rest to its posed orientation (``bone_poses`` rotation
times the rest rotation's transpose) and ``F`` = ``world_to_frame``, the SMPL-X global rotation
of joint ``j`` is ``G_j = F T_b C^T A_j``; local rotations are ``r_j = G_parent^T G_j`` on
SMPL-X's kinematic tree; ``global_orient = r_0 = G_0``.

**Rest pose**: SMPL-X's rest is a T-pose, Anny's an A-pose with bent elbows. ``A_j`` (see
:func:`rest_offsets`) takes joint ``j``'s segment from the canonical T-pose (Anny's own rest
skeleton, at the given phenotype, with its arms straightened: upper arms, forearms and hands
along +-X, palms down, fingers straight in the palm plane) to Anny's rest. Everything else
(legs, spine, neck, head, feet, toes, collars, eyes) keeps Anny's rest as its SMPL-X rest.

**Shape**: not converted. ``betas`` and ``expression`` are zeros; proportions stay Anny's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, cast

import numpy as np
import roma
import torch
import torch.nn.functional as nnf

from shared.bodies.base import ANNY_TO_SMPLX_WORLD

# --------------------------------------------------------------------------- SMPL-X skeleton

# smplx.SMPLX.forward's keyword arguments, with the width of each per-person row (axis-angle
# rotations: 3 per joint; 21 body joints, 15 per hand; 10 shape and 10 expression coefficients).
SMPLX_PARAM_DIMS: dict[str, int] = {
    "global_orient": 3,
    "body_pose": 63,
    "left_hand_pose": 45,
    "right_hand_pose": 45,
    "jaw_pose": 3,
    "leye_pose": 3,
    "reye_pose": 3,
    "betas": 10,
    "expression": 10,
    "transl": 3,
}


SMPLX_JOINT_NAMES: tuple[str, ...] = (
    "pelvis",
    "left_hip",
    "right_hip",
    "spine1",
    "left_knee",
    "right_knee",
    "spine2",
    "left_ankle",
    "right_ankle",
    "spine3",
    "left_foot",
    "right_foot",
    "neck",
    "left_collar",
    "right_collar",
    "head",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "jaw",
    "left_eye_smplhf",
    "right_eye_smplhf",
    *(
        f"{side}_{finger}{k}"
        for side in ("left", "right")
        for finger in ("index", "middle", "pinky", "ring", "thumb")
        for k in (1, 2, 3)
    ),
)

# SMPL-X's kinematic tree (smplx's kintree_table[0]), parent index of each joint.
SMPLX_PARENTS: tuple[int, ...] = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15,
    20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,
    21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53,
)  # fmt: skip

SMPLX_BODY_JOINTS = SMPLX_JOINT_NAMES[1:22]  # body_pose order
NUM_BETAS = 10
NUM_EXPRESSION = 10

# --------------------------------------------------------------------------- Anny skeleton


def _anny_skeleton() -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Anny's default rig (``anny.Anny()``, 104 bones): labels and parent indices, in its order."""
    bones: list[tuple[str, str | None]] = [("root", None)]

    def chain(names: list[str], parent: str) -> None:
        for name in names:
            bones.append((name, parent))
            parent = name

    for s in "LR":
        chain([f"{n}.{s}" for n in ("pelvis", "upperleg01", "upperleg02")], "root")
        chain([f"{n}.{s}" for n in ("lowerleg01", "lowerleg02", "foot")], f"upperleg02.{s}")
        for toe in range(1, 6):
            chain([f"toe{toe}-{k}.{s}" for k in range(1, 3 if toe == 1 else 4)], f"foot.{s}")
    chain(["spine05", "spine04", "spine03", "spine02", "spine01"], "root")
    for s in "LR":
        arm = ("clavicle", "shoulder01", "upperarm01", "upperarm02", "lowerarm01", "lowerarm02")
        chain([f"{n}.{s}" for n in (*arm, "wrist")], "spine01")
        chain([f"finger1-{k}.{s}" for k in (1, 2, 3)], f"wrist.{s}")
        for finger in range(2, 6):
            chain(
                [f"metacarpal{finger - 1}.{s}", *(f"finger{finger}-{k}.{s}" for k in (1, 2, 3))],
                f"wrist.{s}",
            )
    chain(["neck01", "neck02", "neck03", "head"], "spine01")
    bones += [("eye.L", "head"), ("eye.R", "head")]
    labels = tuple(name for name, _ in bones)
    index = {name: i for i, name in enumerate(labels)}
    parents = tuple(-1 if p is None else index[p] for _, p in bones)
    return labels, parents


ANNY_BONE_LABELS, ANNY_BONE_PARENTS = _anny_skeleton()
_ANNY = {name: i for i, name in enumerate(ANNY_BONE_LABELS)}

# --------------------------------------------------------------------------- the mapping

_ANNY_FINGER = {"thumb": 1, "index": 2, "middle": 3, "ring": 4, "pinky": 5}


def _mapping() -> dict[str, tuple[str, ...]]:
    table: dict[str, tuple[str, ...]] = {
        "pelvis": ("root",),
        "spine1": ("spine05", "spine04", "spine03"),
        "spine2": ("spine02",),
        "spine3": ("spine01",),
        "neck": ("neck01", "neck02", "neck03"),
        "head": ("head",),
        "jaw": (),
        "left_eye_smplhf": ("eye.L",),
        "right_eye_smplhf": ("eye.R",),
    }
    for side, s in (("left", "L"), ("right", "R")):
        table |= {
            f"{side}_hip": (f"upperleg01.{s}", f"upperleg02.{s}"),
            f"{side}_knee": (f"lowerleg01.{s}", f"lowerleg02.{s}"),
            f"{side}_ankle": (f"foot.{s}",),
            # Parallel group: the five toes' first phalanges (their common rotation).
            f"{side}_foot": tuple(f"toe{t}-1.{s}" for t in range(1, 6)),
            f"{side}_collar": (f"clavicle.{s}", f"shoulder01.{s}"),
            f"{side}_shoulder": (f"upperarm01.{s}", f"upperarm02.{s}"),
            f"{side}_elbow": (f"lowerarm01.{s}", f"lowerarm02.{s}"),
            f"{side}_wrist": (f"wrist.{s}",),
        }
        for finger, n in _ANNY_FINGER.items():
            for k in (1, 2, 3):
                table[f"{side}_{finger}{k}"] = (f"finger{n}-{k}.{s}",)
    return {name: table[name] for name in SMPLX_JOINT_NAMES}


# SMPL-X joint -> Anny bones driving it (proximal to distal; the feet: parallel toe bones).
SMPLX_TO_ANNY: dict[str, tuple[str, ...]] = _mapping()
PARALLEL_GROUPS = frozenset({"left_foot", "right_foot"})

_J = {name: i for i, name in enumerate(SMPLX_JOINT_NAMES)}
_JAW = _J["jaw"]
_FEET = (_J["left_foot"], _J["right_foot"])
_TOES = torch.tensor([[_ANNY[b] for b in SMPLX_TO_ANNY[SMPLX_JOINT_NAMES[j]]] for j in _FEET])


def _read_bones() -> torch.Tensor:
    """Per SMPL-X joint, the Anny bone whose rotation it takes (the jaw: the head's)."""
    read = []
    for name in SMPLX_JOINT_NAMES:
        group = SMPLX_TO_ANNY[name] or SMPLX_TO_ANNY["head"]
        read.append(_ANNY[group[-1]])
    return torch.tensor(read)


def _owners() -> torch.Tensor:
    """Per Anny bone, the SMPL-X joint whose rotation it follows in the inverse map."""
    first = {}
    for j, name in enumerate(SMPLX_JOINT_NAMES):
        group = SMPLX_TO_ANNY[name]
        for bone in group if name in PARALLEL_GROUPS else group[:1]:
            first[_ANNY[bone]] = j
    owner: list[int] = []
    for b, parent in enumerate(ANNY_BONE_PARENTS):  # parents come first in Anny's order
        owner.append(first[b] if b in first else owner[parent])
    return torch.tensor(owner)


_READ = _read_bones()
ANNY_BONE_OWNER = _owners()
_SMPLX_PARENT_INDEX = torch.tensor([0, *SMPLX_PARENTS[1:]])
_ANNY_PARENT_INDEX = torch.tensor([0, *ANNY_BONE_PARENTS[1:]])


def tree_levels(parents: tuple[int, ...]) -> list[torch.Tensor]:
    """Joints grouped by depth in a kinematic tree (``parents[0]`` is the root), root excluded:
    forward kinematics takes one batched step per level."""
    depth = [0] * len(parents)
    for j in range(1, len(parents)):
        depth[j] = depth[parents[j]] + 1
    return [
        torch.tensor([j for j in range(len(parents)) if depth[j] == d])
        for d in range(1, max(depth) + 1)
    ]


_SMPLX_LEVELS = tree_levels(SMPLX_PARENTS)

# Finger bones in SMPL-X's hand order, (side, finger, phalanx) -> Anny bone index.
_FINGER_BONES = torch.tensor(
    [
        [[_ANNY[f"finger{_ANNY_FINGER[f]}-{k}.{s}"] for k in (1, 2, 3)] for f in _ANNY_FINGER]
        for s in "LR"
    ]
)[:, [1, 2, 4, 3, 0]]  # thumb, index, middle, ring, pinky -> index, middle, pinky, ring, thumb
_HAND_JOINTS = torch.arange(25, 55).view(2, 5, 3)


def _side_bones(*names: str) -> torch.Tensor:
    return torch.tensor([[_ANNY[f"{n}.{s}"] for n in names] for s in "LR"])


# (side, 6): shoulder, elbow and wrist heads; middle, index and pinky knuckles.
_ARM_BONES = _side_bones("upperarm01", "lowerarm01", "wrist", "finger3-1", "finger2-1", "finger5-1")
_ARM_JOINTS = torch.tensor(
    [[_J[f"{side}_{n}"] for n in ("shoulder", "elbow", "wrist")] for side in ("left", "right")]
)


# --------------------------------------------------------------------------- small helpers


def _as_rotation(matrix: torch.Tensor | np.ndarray | None, like: torch.Tensor) -> torch.Tensor:
    """(3, 3) or (B, 3, 3) rotation as a (B or 1, 3, 3) tensor like ``like``."""
    if matrix is None:
        matrix = ANNY_TO_SMPLX_WORLD
    out = torch.as_tensor(matrix, dtype=like.dtype, device=like.device)
    return out if out.dim() == 3 else out[None]


def _c(like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(ANNY_TO_SMPLX_WORLD, dtype=like.dtype, device=like.device)


def _rmin(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) smallest rotation taking direction ``a`` to direction ``b`` (not opposite)."""
    a, b = nnf.normalize(a, dim=-1), nnf.normalize(b, dim=-1)
    v = torch.linalg.cross(a, b)
    cos = (a * b).sum(-1)[..., None, None]
    zero = torch.zeros_like(v[..., 0])
    vx, vy, vz = v.unbind(-1)
    # torch.unflatten: the same op as the method, which torch leaves unannotated.
    skew = torch.unflatten(
        torch.stack([zero, -vz, vy, vz, zero, -vx, -vy, vx, zero], -1), -1, (3, 3)
    )
    # Rodrigues with sin = |v|, cos = a.b: I + [v]x + [v]x^2 / (1 + cos).
    return torch.eye(3, dtype=a.dtype, device=a.device) + skew + skew @ skew / (1 + cos)


def _frame(primary: torch.Tensor, secondary: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) orthonormal frame, columns: primary, secondary made orthogonal, their cross."""
    x = nnf.normalize(primary, dim=-1)
    y = nnf.normalize(secondary - (secondary * x).sum(-1, keepdim=True) * x, dim=-1)
    return torch.stack([x, y, torch.linalg.cross(x, y)], dim=-1)


def _apply(rotation: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    return (rotation @ vector[..., None])[..., 0]


def _batch_rest(rest_bone_poses: torch.Tensor, batch: int) -> torch.Tensor:
    if rest_bone_poses.shape[0] == batch:
        return rest_bone_poses
    if rest_bone_poses.shape[0] != 1:
        raise ValueError(f"rest_bone_poses has batch {rest_bone_poses.shape[0]}, expected {batch}")
    return rest_bone_poses.expand(batch, -1, -1, -1)


# --------------------------------------------------------------------------- rest offsets


def _straightening(rest_bone_poses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per SMPL-X joint, the global rotation ``S_j`` that takes its segment from Anny's rest to
    the canonical T-pose, in SMPL-X's frame (B, 55, 3, 3), and Anny's rest heads in that frame
    (B, 104, 3). ``A_j = S_j^T``."""
    c = _c(rest_bone_poses)
    heads = rest_bone_poses[..., :3, 3] @ c.T  # (B, 104, 3)
    y_axes = (c @ rest_bone_poses[..., :3, :3])[..., 1]  # (B, 104, 3) bone axes (Blender's y)
    batch = heads.shape[0]
    eye = torch.eye(3, dtype=heads.dtype, device=heads.device)
    s = eye.expand(batch, len(SMPLX_JOINT_NAMES), 3, 3).clone()

    # Arms. Targets: +X for the left arm, -X for the right; the index side of the hand forward.
    sign = heads.new_tensor([1.0, -1.0])
    x_t = torch.stack([sign, 0 * sign, 0 * sign], -1)[None].expand(batch, 2, 3)
    z_t = heads.new_tensor([0.0, 0.0, 1.0]).expand(batch, 2, 3)
    p = heads[:, _ARM_BONES]  # (B, 2, 6, 3)
    shoulder, elbow, wrist, middle, index, pinky = p.unbind(2)
    across = index - pinky  # knuckles, pinky to index: forward in the T-pose (palm down)
    s_shoulder = _rmin(elbow - shoulder, x_t)
    s_elbow = _frame(x_t, z_t) @ _frame(wrist - elbow, across).transpose(-1, -2)
    s_wrist = _frame(x_t, z_t) @ _frame(middle - wrist, across).transpose(-1, -2)
    s[:, _ARM_JOINTS] = torch.stack([s_shoulder, s_elbow, s_wrist], 2)

    # Fingers: phalanges straightened one after the other by smallest rotations, each finger
    # along its first phalanx laid in the palm plane (XZ); the thumb along its first phalanx.
    f = heads[:, _FINGER_BONES]  # (B, 2, 5, 3, 3)
    dirs = torch.stack(
        [
            f[..., 1, :] - f[..., 0, :],
            f[..., 2, :] - f[..., 1, :],
            y_axes[:, _FINGER_BONES[..., 2]],
        ],
        3,
    )
    parent = s_wrist[:, :, None].expand(batch, 2, 5, 3, 3)
    first = _apply(parent, dirs[..., 0, :])
    palm = first * heads.new_tensor([1.0, 0.0, 1.0])
    target = torch.cat([palm[:, :, :4], first[:, :, 4:]], 2)  # thumb (last): unchanged
    phalanges = []
    for k in range(3):
        parent = _rmin(_apply(parent, dirs[..., k, :]), target) @ parent
        phalanges.append(parent)
    s[:, _HAND_JOINTS] = torch.stack(phalanges, 3)
    return s, heads


def rest_offsets(rest_bone_poses: torch.Tensor) -> torch.Tensor:
    """(B, 55, 3, 3) ``A_j`` in SMPL-X's frame: takes joint ``j``'s segment from the canonical
    T-pose to Anny's rest pose (identity except the arms, hands and fingers)."""
    return _straightening(rest_bone_poses)[0].transpose(-1, -2)


def _anchors(heads: torch.Tensor) -> torch.Tensor:
    """(B, 55, 3) where each SMPL-X joint sits on Anny's rest skeleton (SMPL-X frame): the head
    of its group's first bone; the feet: the toes' mean head; the jaw (no Anny bone): in front of
    the head joint, halfway to the eyes."""
    first = [_ANNY[SMPLX_TO_ANNY[n][0]] if SMPLX_TO_ANNY[n] else 0 for n in SMPLX_JOINT_NAMES]
    anchors = heads[:, first].clone()
    anchors[:, list(_FEET)] = heads[:, _TOES].mean(2)
    head = heads[:, _ANNY["head"]]
    eyes = (heads[:, _ANNY["eye.L"]] + heads[:, _ANNY["eye.R"]]) / 2
    anchors[:, _JAW] = head + (eyes - head) * heads.new_tensor([0.0, 0.0, 0.5])
    return anchors


def posed_body_joints(bone_poses: torch.Tensor) -> torch.Tensor:
    """(B, 104, 4, 4) posed Anny bone poses -> (B, 22, 3) the SMPL-X body joints (pelvis first)
    where the adapter puts them on that body, in the bone poses' frame: the head of each joint's
    first Anny bone, the feet at their toes' mean head (as :func:`_anchors` does at rest)."""
    heads = bone_poses[..., :3, 3]
    first = [_ANNY[SMPLX_TO_ANNY[n][0]] for n in SMPLX_JOINT_NAMES[:22]]
    joints = heads[:, first].clone()
    joints[:, list(_FEET)] = heads[:, _TOES].mean(2)
    return joints


def tpose_joints(rest_bone_poses: torch.Tensor) -> torch.Tensor:
    """(B, 55, 3) the canonical T-pose skeleton in SMPL-X's frame (metres, Anny's origin): Anny's
    rest joints at this phenotype, arms straightened as in :func:`rest_offsets`. This is the
    SMPL-X rest skeleton the adapter's parameters are exact for; ``[:, 0]`` is its pelvis (J0)."""
    s, heads = _straightening(rest_bone_poses)
    anchors = _anchors(heads)
    joints = anchors.clone()
    for level in _SMPLX_LEVELS:
        parent = _SMPLX_PARENT_INDEX[level]
        offset = _apply(s[:, parent], anchors[:, level] - anchors[:, parent])
        joints[:, level] = joints[:, parent] + offset
    return joints


# --------------------------------------------------------------------------- translation


def smplx_transl(pelvis: torch.Tensor, j0: torch.Tensor) -> torch.Tensor:
    """SMPL-X ``transl`` placing the pelvis joint at ``pelvis`` (B, 3), output frame.

    SMPL-X rotates the body by ``global_orient`` about its rest pelvis joint ``J0`` (which
    depends on the model file and the betas), then adds ``transl``: the posed pelvis is
    ``J0 + transl`` whatever the orientation, hence ``transl = pelvis - J0``."""
    return pelvis - j0


def _default_j0(rest_bone_poses: torch.Tensor) -> torch.Tensor:
    return rest_bone_poses[:, 0, :3, 3] @ _c(rest_bone_poses).T


# --------------------------------------------------------------------------- forward


def anny_to_smplx(
    bone_poses: torch.Tensor,
    rest_bone_poses: torch.Tensor,
    world_to_frame: torch.Tensor | np.ndarray | None = None,
    j0: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Posed Anny bones -> SMPL-X-convention parameters (axis-angle, radians; metres).

    Args:
        bone_poses: (B, 104, 4, 4) posed bone poses (Anny's ``bone_poses`` output) in some
            frame W: whatever Anny's root rotation maps into (Anny's world for a plain
            ``anny.Anny()`` forward; the camera frame for bodyserve's fitter).
        rest_bone_poses: (B or 1, 104, 4, 4) rest bone poses at the body's phenotype, in Anny's
            world (Anny's ``rest_bone_poses`` output, or ``AnnyBody.rest_bone_poses``).
        world_to_frame: (3, 3) or (B, 3, 3) rotation from W to the frame the SMPL-X body should
            be expressed in (which sets ``global_orient``, ``pelvis`` and ``transl``). Default
            ``ANNY_TO_SMPLX_WORLD`` (W = Anny's world, output = SMPL-X's Y-up world). Pass
            ``ANNY_TO_CAMERA`` for a body posed in Anny's world that should land in an OpenCV
            camera, and the identity for the fitter, whose bone poses are already in the camera.
        j0: (3,) or (B, 3) the SMPL-X model's rest pelvis joint (``SmplxBody.pelvis_rest``), used
            for ``transl`` only. Default: the canonical T-pose's pelvis (Anny's rest root head in
            SMPL-X's frame), exact for SMPL-X files built on Anny's skeleton but NOT for a real
            SMPL-X model (whose J0 differs by tens of cm): pass the model's J0 then.

    Returns:
        ``global_orient`` (B, 3), ``body_pose`` (B, 21, 3), ``left_hand_pose`` and
        ``right_hand_pose`` (B, 15, 3; relative to the FLAT hand: smplx's ``flat_hand_mean=True``),
        ``jaw_pose`` (B, 3; always zero), ``leye_pose`` and ``reye_pose`` (B, 3), ``betas`` (B, 10)
        and ``expression`` (B, 10) zeros, ``pelvis`` (B, 3) the pelvis position in the output
        frame, ``transl`` (B, 3) = ``pelvis - j0``.
    """
    batch = bone_poses.shape[0]
    rest = _batch_rest(rest_bone_poses, batch)
    c = _c(bone_poses)
    frame = _as_rotation(world_to_frame, bone_poses)

    # T_b: rest -> posed rotation of each Anny bone (Anny world -> W).
    transforms = bone_poses[..., :3, :3] @ rest[..., :3, :3].transpose(-1, -2)
    per_joint = transforms[:, _READ].clone()  # (B, 55, 3, 3)
    per_joint[:, list(_FEET)] = roma.special_procrustes(transforms[:, _TOES].sum(2))
    g = frame[:, None] @ per_joint @ c.T @ rest_offsets(rest)  # (B, 55, 3, 3) SMPL-X globals

    local = g[:, _SMPLX_PARENT_INDEX].transpose(-1, -2) @ g
    local[:, 0] = g[:, 0]
    local[:, _JAW] = torch.eye(3, dtype=g.dtype, device=g.device)
    rotvec = roma.rotmat_to_rotvec(local)

    pelvis = _apply(frame, bone_poses[:, 0, :3, 3])
    j0 = _default_j0(rest) if j0 is None else torch.as_tensor(j0, dtype=pelvis.dtype)
    zeros = pelvis.new_zeros
    return {
        "global_orient": rotvec[:, 0],
        "body_pose": rotvec[:, 1:22],
        "jaw_pose": rotvec[:, 22],
        "leye_pose": rotvec[:, 23],
        "reye_pose": rotvec[:, 24],
        "left_hand_pose": rotvec[:, 25:40],
        "right_hand_pose": rotvec[:, 40:55],
        "betas": zeros(batch, NUM_BETAS),
        "expression": zeros(batch, NUM_EXPRESSION),
        "pelvis": pelvis,
        "transl": smplx_transl(pelvis, j0.to(pelvis.device)),
    }


# --------------------------------------------------------------------------- inverse


def _local_rotations(params: Mapping[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """(B, 55, 3, 3) SMPL-X local rotations from a params dict (missing entries: zero)."""
    sizes = {
        "global_orient": 1,
        "body_pose": 21,
        "jaw_pose": 1,
        "leye_pose": 1,
        "reye_pose": 1,
        "left_hand_pose": 15,
        "right_hand_pose": 15,
    }
    batch = next(
        (torch.as_tensor(params[k]).shape[0] for k in sizes if params.get(k) is not None), 1
    )
    parts = []
    for key, count in sizes.items():
        value = params.get(key)
        if value is None:
            parts.append(like.new_zeros(batch, count, 3))
        else:
            parts.append(
                torch.as_tensor(value, dtype=like.dtype, device=like.device).reshape(
                    batch, count, 3
                )
            )
    return cast(torch.Tensor, roma.rotvec_to_rotmat(torch.cat(parts, 1)))  # roma is untyped


def _smplx_globals(local: torch.Tensor) -> torch.Tensor:
    g = local.clone()
    for level in _SMPLX_LEVELS:
        g[:, level] = g[:, _SMPLX_PARENT_INDEX[level]] @ local[:, level]
    return g


def smplx_to_anny(
    params: Mapping[str, torch.Tensor],
    rest_bone_poses: torch.Tensor,
    reference_orientations: torch.Tensor | None = None,
    world_to_frame: torch.Tensor | np.ndarray | None = None,
    j0: torch.Tensor | None = None,
    parameterization: Literal["local-ref", "local-bone"] = "local-ref",
) -> torch.Tensor:
    """SMPL-X-convention parameters -> Anny pose parameters (B, 104, 4, 4), the inverse of
    :func:`anny_to_smplx` for the same ``world_to_frame`` and ``j0``.

    Each SMPL-X joint's rotation goes whole on the FIRST Anny bone of its group (each toe's first
    phalanx for the feet); the group's other bones, and bones outside every group, keep their
    rest orientation relative to their parent (a rigid segment, as in SMPL-X). ``jaw_pose`` is
    ignored (Anny has no jaw bone). The root delta carries the pelvis position
    ``world_to_frame^T (transl + j0)`` (``transl`` missing: zero), so posing Anny with the result
    gives bones in the coordinates ``anny_to_smplx`` read them from.

    Args:
        params: ``global_orient``, ``body_pose`` (B, 21, 3) or (B, 63), ``left_hand_pose`` /
            ``right_hand_pose`` (B, 15, 3) or (B, 45) relative to the flat hand, ``leye_pose``,
            ``reye_pose``, ``transl``; missing entries are zero.
        rest_bone_poses: (B or 1, 104, 4, 4) Anny's rest bone poses at the phenotype.
        reference_orientations: (104, 3, 3) the model's ``reference_bone_orientations``. Anny's
            default rig has them (they differ from the rest orientations by up to ~6 degrees):
            pass ``model.reference_bone_orientations``. ``None``: the reference orientations are
            the rest orientations (then "follows its parent rigidly" is the identity delta).
        world_to_frame, j0: as in :func:`anny_to_smplx`.
        parameterization: Anny's ``"local-ref"`` (default) or ``"local-bone"`` (bodyserve's
            ``AnnyBody``): the deltas to feed ``get_bone_transforms`` / ``forward`` with.
    """
    like = rest_bone_poses
    local = _local_rotations(params, like)
    batch = local.shape[0]
    rest = _batch_rest(rest_bone_poses, batch)
    c = _c(like)
    frame = _as_rotation(world_to_frame, like)

    g = _smplx_globals(local)
    per_joint = frame.transpose(-1, -2)[:, None] @ g @ rest_offsets(rest).transpose(-1, -2) @ c
    transforms = per_joint[:, ANNY_BONE_OWNER]  # (B, 104, 3, 3) rest -> posed, per Anny bone
    rest_rot = rest[..., :3, :3]
    world = transforms @ rest_rot  # posed orientations V
    ref = (
        rest_rot
        if reference_orientations is None
        else torch.as_tensor(
            reference_orientations, dtype=like.dtype, device=like.device
        ).expand_as(rest_rot)
    )

    parent = _ANNY_PARENT_INDEX
    # Parent's posed orientation relative to its reference: V_p U_p^T, the frame deltas act in.
    parent_frame = world[:, parent] @ ref[:, parent].transpose(-1, -2)
    if parameterization == "local-ref":  # V_c = V_p U_p^T D_c U_c
        delta = parent_frame.transpose(-1, -2) @ world @ ref.transpose(-1, -2)
        root = ref[:, 0] @ world[:, 0] @ ref[:, 0].transpose(-1, -2)
    elif parameterization == "local-bone":  # V_c = V_p U_p^T U_c D_c
        delta = ref.transpose(-1, -2) @ parent_frame.transpose(-1, -2) @ world
        root = world[:, 0]
    else:
        raise ValueError(f"Unsupported parameterization {parameterization!r}")

    j0 = _default_j0(rest) if j0 is None else torch.as_tensor(j0, dtype=like.dtype)
    transl = params.get("transl")
    pelvis = j0.to(like.device).expand(batch, 3)
    if transl is not None:
        pelvis = pelvis + torch.as_tensor(transl, dtype=like.dtype, device=like.device)
    root_head = _apply(frame.transpose(-1, -2), pelvis)
    if parameterization == "local-ref":
        root_head = _apply(ref[:, 0], root_head)

    out = torch.zeros(batch, len(ANNY_BONE_LABELS), 4, 4, dtype=like.dtype, device=like.device)
    out[:, :, :3, :3] = delta
    out[:, 0, :3, :3] = root
    out[:, 0, :3, 3] = root_head
    out[:, :, 3, 3] = 1.0
    return out
