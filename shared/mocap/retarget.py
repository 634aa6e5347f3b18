"""Mocap (BVH) -> SMPL-X-convention body poses on Anny's skeleton.

**Method.** For each SMPL-X body joint ``j`` the family table (:data:`FAMILIES`) names the BVH
joint ``a`` whose world rotation drives it and the BVH joint (or End Site) its segment points to.
Everything is computed in the SMPL-X world (Y up; the BVH files are Y-up and right-handed, so the
axis change is the identity; a body's heading stays as captured). The SMPL-X global rotation of
joint ``j`` (from the canonical T-pose, :class:`~shared.bodies.skeleton.BodySkeleton`) is::

    G_j(t) = R_a(t) R_a(ref)^T C_j,        C_j = F_ref,j F_T,j^T

with ``R_a(t)`` the BVH world rotation at frame ``t``, ``ref`` the rig's reference T-pose (the
OFFSET rest for the cgspeed and CMU-ASF rigs; for the iClone ``CC_Base`` rig, whose OFFSET rest
is no posture at all, the T-pose iClone prepends to some files, :data:`CC_BASE_TPOSE`), and
``F`` orthonormal frames built from the segment's direction plus a secondary direction that fixes
its twist: the body's forward axis (feet and toes: its up axis). ``F_T`` is built on the canonical
T-pose (forward +Z, up +Y), ``F_ref`` on the BVH reference posture (forward and up from the hips'
lateral axis and the world's up). So at the reference posture every segment points where the
BVH's does, with its forward side forward, and afterwards it turns exactly as the BVH joint does:
segment directions are reproduced exactly, twist comes from the BVH joint. The pelvis uses the
body frame (hips' lateral axis + up) as its segment frame. Local rotations follow on SMPL-X's
tree: ``r_j = G_parent^T G_j``.

This is the adapter's convention (``anny_to_smplx`` also reads each joint's global rotation and
takes it relative to the canonical T-pose) without building the 104 Anny bones in between;
checked: posing Anny itself with the result (``smplx_to_anny`` + Anny's bone transforms) puts its
limbs along the BVH's, and ``anny_to_smplx`` reads the same parameters back.

**Spine.** SMPL-X has spine1/2/3; the cgspeed and iClone spines have two driving segments (lower:
abdomen/Spine01, upper: chest/Spine02). spine1 takes the lower segment, spine3 the upper one,
and spine2 half of the rotation between them (``G_2 = G_1 slerp(I, G_1^T G_3, 1/2)``), so the
upper segment's bend is spread over spine2 and spine3 as a real thorax bends. The CMU-ASF rig has
three (lowerback, upperback, thorax): one each.

**Missing segments** (cgspeed has no toes; no rig here has a separate SMPL-X head top): the joint
keeps its T-pose relation to its parent (local rotation zero). Fingers are ignored.

**Pelvis position.** The BVH hips' midpoint, in metres, scaled by Anny's leg length over the
capture skeleton's (so with Anny's shorter or longer legs the feet still reach the floor and the
stride fits the legs), then moved to where Anny's pelvis joint sits relative to its hip joints.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import roma
import torch

from shared.bodies.skeleton import BodySkeleton
from shared.bodies.smplx_convention import SMPLX_JOINT_NAMES, SMPLX_PARENTS
from shared.mocap.bvh import BvhMotion, BvhSkeleton, euler_to_matrix, forward_kinematics

BODY_JOINTS: tuple[str, ...] = SMPLX_JOINT_NAMES[:22]
_PARENTS: tuple[int, ...] = SMPLX_PARENTS[:22]
_INDEX = {name: i for i, name in enumerate(BODY_JOINTS)}

# The canonical T-pose's segment for each SMPL-X joint: the child joint its segment points to, or
# a fixed direction where the 22-joint skeleton has no child (hands along +-X, head up, toes
# forward).
_T_CHILD: dict[str, str | tuple[float, float, float]] = {
    "spine1": "spine2",
    "spine2": "spine3",
    "spine3": "neck",
    "neck": "head",
    "head": (0.0, 1.0, 0.0),
}
for _side, _sign in (("left", 1.0), ("right", -1.0)):
    _T_CHILD |= {
        f"{_side}_hip": f"{_side}_knee",
        f"{_side}_knee": f"{_side}_ankle",
        f"{_side}_ankle": f"{_side}_foot",
        f"{_side}_foot": (0.0, 0.0, 1.0),
        f"{_side}_collar": f"{_side}_shoulder",
        f"{_side}_shoulder": f"{_side}_elbow",
        f"{_side}_elbow": f"{_side}_wrist",
        f"{_side}_wrist": (_sign, 0.0, 0.0),
    }
# Segments nearly parallel to the body's forward axis: their twist is fixed by the up axis.
_UP_SECONDARY = frozenset({"left_ankle", "right_ankle", "left_foot", "right_foot"})

FORWARD = np.array([0.0, 0.0, 1.0])
UP = np.array([0.0, 1.0, 0.0])


class RetargetError(ValueError):
    """A skeleton that cannot be retargeted: the message says what is missing or wrong."""


@dataclass(frozen=True)
class Segment:
    """The BVH side of one SMPL-X joint: ``joint`` drives it; at the reference posture its segment
    points from ``joint`` to ``target`` (a joint, ``"<joint>/end"`` for its End Site, or ``None``
    for the body's up axis)."""

    joint: str
    target: str | None


@dataclass(frozen=True)
class SkeletonFamily:
    """How one rig maps onto the SMPL-X body joints.

    ``segments``: SMPL-X joint -> :class:`Segment` (pelvis included; joints left out keep their
    T-pose relation to their parent). ``hips``: the left and right thigh joints (lateral axis and
    mid-hip point). ``halfway``: SMPL-X joints whose global rotation is halfway between two others.
    ``reference``: local rotations of the rig's T-pose as ``{joint: (z, y, x)}`` intrinsic ZYX Euler
    degrees (joints not listed: zero); ``None`` when the OFFSET rest is the T-pose.
    """

    name: str
    segments: Mapping[str, Segment]
    hips: tuple[str, str]
    halfway: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    reference: Mapping[str, tuple[float, float, float]] | None = None

    @property
    def required_joints(self) -> set[str]:
        names = {s.joint for s in self.segments.values()} | set(self.hips)
        for segment in self.segments.values():
            if segment.target is not None:
                names.add(segment.target.removesuffix("/end"))
        return names


def _both_sides(table: Mapping[str, tuple[str, str | None]], sides: tuple[str, str]) -> dict:
    """Expand ``{s}`` in names for the left and right side ("left_*" keys get the first token)."""
    out: dict[str, Segment] = {}
    for key, (joint, target) in table.items():
        if "{side}" not in key:
            out[key] = Segment(joint, target)
            continue
        for side, token in zip(("left", "right"), sides, strict=True):
            out[key.format(side=side)] = Segment(
                joint.format(s=token), None if target is None else target.format(s=token)
            )
    return out


# cgspeed's "DAZ-friendly" conversion of CMU (43 joints: hip, abdomen, chest, lThigh, ...).
CGSPEED = SkeletonFamily(
    name="cgspeed",
    segments=_both_sides(
        {
            "pelvis": ("hip", None),
            "spine1": ("abdomen", "chest"),
            "spine3": ("chest", "neck"),
            "neck": ("neck", "head"),
            "head": ("head", None),
            "{side}_hip": ("{s}Thigh", "{s}Shin"),
            "{side}_knee": ("{s}Shin", "{s}Foot"),
            "{side}_ankle": ("{s}Foot", "{s}Foot/end"),
            "{side}_collar": ("{s}Collar", "{s}Shldr"),
            "{side}_shoulder": ("{s}Shldr", "{s}ForeArm"),
            "{side}_elbow": ("{s}ForeArm", "{s}Hand"),
            "{side}_wrist": ("{s}Hand", "{s}Mid1"),
        },
        ("l", "r"),
    ),
    hips=("lThigh", "rThigh"),
    halfway={"spine2": ("spine1", "spine3")},
)

# CMU's own ASF joint names (31 joints: hip, lhipjoint, lfemur, ltibia, ...; subject 16 here).
CMU_ASF = SkeletonFamily(
    name="cmu-asf",
    segments=_both_sides(
        {
            "pelvis": ("hip", None),
            "spine1": ("lowerback", "upperback"),
            "spine2": ("upperback", "thorax"),
            "spine3": ("thorax", "upperneck"),
            "neck": ("upperneck", "head"),
            "head": ("head", None),
            "{side}_hip": ("{s}femur", "{s}tibia"),
            "{side}_knee": ("{s}tibia", "{s}foot"),
            "{side}_ankle": ("{s}foot", "{s}toes"),
            "{side}_foot": ("{s}toes", "{s}toes/end"),
            "{side}_collar": ("{s}clavicle", "{s}humerus"),
            "{side}_shoulder": ("{s}humerus", "{s}radius"),
            "{side}_elbow": ("{s}radius", "{s}wrist"),
            "{side}_wrist": ("{s}hand", "{s}fingers"),
        },
        ("l", "r"),
    ),
    hips=("lfemur", "rfemur"),
)

# The T-pose iClone prepends to some CC_Base files (007_03 to 007_12, identical in each): local
# rotations of the joints on the mapped chains, intrinsic ZYX degrees as in the files.
CC_BASE_TPOSE: dict[str, tuple[float, float, float]] = {
    "CC_Base_Pelvis": (0.0, 0.0, 11.77),
    "CC_Base_L_Thigh": (179.92, 0.06, 16.6),
    "CC_Base_L_Calf": (-0.06, -0.1, -9.46),
    "CC_Base_L_Foot": (-0.64, -6.13, 81.77),
    "CC_Base_L_ToeBase": (-1.8, 3.17, 18.57),
    "CC_Base_R_Thigh": (-179.47, 0.02, 16.05),
    "CC_Base_R_Calf": (0.03, 0.08, -8.37),
    "CC_Base_R_Foot": (0.61, 6.14, 81.25),
    "CC_Base_R_ToeBase": (1.78, -3.17, 18.57),
    "CC_Base_Waist": (0.19, 0.0, 16.24),
    "CC_Base_Spine01": (0.0, 0.0, -21.25),
    "CC_Base_Spine02": (0.0, 0.0, -5.31),
    "CC_Base_NeckTwist01": (0.0, 0.0, 21.56),
    "CC_Base_NeckTwist02": (0.0, 0.0, -1.59),
    "CC_Base_Head": (0.0, 0.0, -9.65),
    "CC_Base_L_Clavicle": (-88.42, 10.87, -14.68),
    "CC_Base_L_Upperarm": (-4.02, 0.56, 15.48),
    "CC_Base_L_Forearm": (1.25, 0.01, 0.15),
    "CC_Base_L_Hand": (-4.49, -0.28, -3.05),
    "CC_Base_R_Clavicle": (88.42, -10.87, -14.67),
    "CC_Base_R_Upperarm": (3.96, -0.78, 15.61),
    "CC_Base_R_Forearm": (-1.26, -0.01, 0.14),
    "CC_Base_R_Hand": (4.51, 0.29, -3.21),
}

# The iClone "CC_Base" rig (100 joints; 101 with an RL_BoneRoot above the hip).
CC_BASE = SkeletonFamily(
    name="iclone-cc",
    segments=_both_sides(
        {
            "pelvis": ("CC_Base_Pelvis", None),
            "spine1": ("CC_Base_Spine01", "CC_Base_Spine02"),
            "spine3": ("CC_Base_Spine02", "CC_Base_NeckTwist01"),
            "neck": ("CC_Base_NeckTwist02", "CC_Base_Head"),
            "head": ("CC_Base_Head", None),
            "{side}_hip": ("CC_Base_{s}_Thigh", "CC_Base_{s}_Calf"),
            "{side}_knee": ("CC_Base_{s}_Calf", "CC_Base_{s}_Foot"),
            "{side}_ankle": ("CC_Base_{s}_Foot", "CC_Base_{s}_ToeBase"),
            "{side}_foot": ("CC_Base_{s}_ToeBase", "CC_Base_{s}_MidToe1"),
            "{side}_collar": ("CC_Base_{s}_Clavicle", "CC_Base_{s}_Upperarm"),
            "{side}_shoulder": ("CC_Base_{s}_Upperarm", "CC_Base_{s}_Forearm"),
            "{side}_elbow": ("CC_Base_{s}_Forearm", "CC_Base_{s}_Hand"),
            "{side}_wrist": ("CC_Base_{s}_Hand", "CC_Base_{s}_Mid1"),
        },
        ("L", "R"),
    ),
    hips=("CC_Base_L_Thigh", "CC_Base_R_Thigh"),
    halfway={"spine2": ("spine1", "spine3")},
    reference=CC_BASE_TPOSE,
)

FAMILIES: tuple[SkeletonFamily, ...] = (CGSPEED, CMU_ASF, CC_BASE)


def detect_family(skeleton: BvhSkeleton) -> SkeletonFamily:
    """The family whose joints this skeleton has; RetargetError naming the closest one if none."""
    names = set(skeleton.names)
    for family in FAMILIES:
        if family.required_joints <= names:
            return family
    closest = min(FAMILIES, key=lambda f: len(f.required_joints - names))
    missing = sorted(closest.required_joints - names)
    raise RetargetError(
        f"unknown skeleton (root {skeleton.names[0]!r}, {skeleton.joint_count} joints): closest "
        f"family {closest.name!r} lacks {missing[:8]}; known families: "
        f"{[f.name for f in FAMILIES]}"
    )


# --------------------------------------------------------------------------- small helpers


def _unit(v: np.ndarray) -> np.ndarray:
    return np.asarray(v / np.linalg.norm(v, axis=-1, keepdims=True))


def _frame(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
    """(..., 3, 3) orthonormal frame, columns: primary, secondary made orthogonal, their cross."""
    x = _unit(primary)
    y = _unit(secondary - (secondary * x).sum(-1, keepdims=True) * x)
    return np.stack([x, y, np.cross(x, y)], -1)


def _angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle in degrees between direction arrays (..., 3)."""
    cos = (_unit(a) * _unit(b)).sum(-1)
    return np.asarray(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def _slerp_half(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(..., 3, 3) the rotation halfway between ``a`` and ``b`` (geodesic)."""
    relative = roma.rotmat_to_rotvec(torch.from_numpy(np.swapaxes(a, -1, -2) @ b))
    return np.asarray(a @ roma.rotvec_to_rotmat(relative / 2).numpy())  # roma is untyped


# --------------------------------------------------------------------------- reference posture


@dataclass(frozen=True)
class Reference:
    """The rig's reference T-pose: world rotations (J, 3, 3), positions (J, 3), body frame."""

    rotations: np.ndarray
    positions: np.ndarray
    lateral: np.ndarray  # (3,) right hip to left hip
    up: np.ndarray
    forward: np.ndarray


def reference_posture(skeleton: BvhSkeleton, family: SkeletonFamily) -> Reference:
    """FK of the rig's T-pose (root at the origin, unrotated), checked to be a standing T-pose."""
    count = skeleton.joint_count
    local = np.broadcast_to(np.eye(3), (1, count, 3, 3)).copy()
    for name, zyx in (family.reference or {}).items():
        local[0, skeleton.index(name)] = euler_to_matrix("ZYX", np.asarray(zyx))
    rotations, positions = forward_kinematics(skeleton, local, skeleton.offsets[None].copy())
    rotations, positions = rotations[0], positions[0]
    left, right = (positions[skeleton.index(n)] for n in family.hips)
    lateral = _unit(left - right)
    forward = _unit(np.cross(lateral, UP))
    up = np.cross(forward, lateral)
    reference = Reference(rotations, positions, lateral, up, forward)
    _check_tpose(skeleton, family, reference)
    return reference


def _segment_vector(
    skeleton: BvhSkeleton, positions: np.ndarray, rotations: np.ndarray, segment: Segment
) -> np.ndarray:
    """(..., 3) world vector of a segment from its joint to its target (not normalised)."""
    joint = skeleton.index(segment.joint)
    assert segment.target is not None
    if segment.target.endswith("/end"):
        owner = skeleton.index(segment.target.removesuffix("/end"))
        sites = skeleton.end_sites[owner]
        if len(sites) == 0:
            raise RetargetError(f"{skeleton.names[owner]} has no End Site")
        tip = positions[..., owner, :] + (rotations[..., owner, :, :] @ sites[0])
        return np.asarray(tip - positions[..., joint, :])
    return np.asarray(positions[..., skeleton.index(segment.target), :] - positions[..., joint, :])


def _check_tpose(skeleton: BvhSkeleton, family: SkeletonFamily, ref: Reference) -> None:
    """The reference must be a standing T-pose facing its own forward axis, else C_j is wrong."""
    seg = family.segments

    def direction(name: str) -> np.ndarray:
        return _unit(_segment_vector(skeleton, ref.positions, ref.rotations, seg[name]))

    problems = []
    for side in ("left", "right"):
        if abs(float(direction(f"{side}_shoulder") @ ref.up)) > 0.5:
            problems.append(f"{side} upper arm not horizontal")
        if float(direction(f"{side}_knee") @ ref.up) > -0.8:
            problems.append(f"{side} shin not pointing down")
        if float(direction(f"{side}_ankle") @ ref.forward) < 0.3:
            problems.append(f"{side} foot not pointing forward (left/right swapped?)")
    if float(direction("spine1") @ ref.up) < 0.8:
        problems.append("lower spine not pointing up")
    if problems:
        raise RetargetError(
            f"the {family.name!r} reference posture of this skeleton is not a standing T-pose "
            f"facing forward: {', '.join(problems)}"
        )


# --------------------------------------------------------------------------- retargeting


@dataclass
class BodyMotion:
    """SMPL-X-convention body motion: SMPL-X world (Y up), metres, axis-angle, at ``fps``.

    ``global_orient`` (T, 3), ``body_pose`` (T, 21, 3), ``pelvis`` (T, 3) the pelvis joint's
    position. ``kind``: where it came from (a BVH family name, or ``"amass-smplx"`` etc.).
    ``reference`` (22, 3, 3): for BVH rigs, each joint's global rotation at the rig's reference
    T-pose (what the converters' synthetic T-pose frames retarget to); ``None`` otherwise.
    """

    global_orient: np.ndarray
    body_pose: np.ndarray
    pelvis: np.ndarray
    fps: float
    kind: str
    reference: np.ndarray | None = None
    # Rotation matrices computed once per motion (rotvec <-> matrix conversions dominate).
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        frames = self.global_orient.shape[0]
        if self.global_orient.shape != (frames, 3):
            raise ValueError(f"global_orient must be (T, 3), got {self.global_orient.shape}")
        if self.body_pose.shape != (frames, 21, 3):
            raise ValueError(f"body_pose must be ({frames}, 21, 3), got {self.body_pose.shape}")
        if self.pelvis.shape != (frames, 3):
            raise ValueError(f"pelvis must be ({frames}, 3), got {self.pelvis.shape}")
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")

    @property
    def frame_count(self) -> int:
        return int(self.global_orient.shape[0])

    def local_rotations(self) -> np.ndarray:
        """(T, 22, 3, 3) global_orient then the 21 body joints' local rotations."""
        if "local" not in self._cache:
            rotvecs = np.concatenate([self.global_orient[:, None], self.body_pose], 1)
            self._cache["local"] = roma.rotvec_to_rotmat(
                torch.from_numpy(np.ascontiguousarray(rotvecs))
            ).numpy()
        return self._cache["local"]

    def global_rotations(self) -> np.ndarray:
        """(T, 22, 3, 3) each joint's rotation from the canonical T-pose (SMPL-X world)."""
        if "global" not in self._cache:
            local = self.local_rotations()
            out = local.copy()
            for j in range(1, 22):  # parents come first
                out[:, j] = out[:, _PARENTS[j]] @ local[:, j]
            self._cache["global"] = out
        return self._cache["global"]

    def frames(self, selection: slice | np.ndarray) -> BodyMotion:
        return BodyMotion(
            global_orient=self.global_orient[selection],
            body_pose=self.body_pose[selection],
            pelvis=self.pelvis[selection],
            fps=self.fps,
            kind=self.kind,
            reference=self.reference,
        )


def motion_from_globals(
    globals_: np.ndarray,
    pelvis: np.ndarray,
    fps: float,
    kind: str,
    reference: np.ndarray | None = None,
) -> BodyMotion:
    """A :class:`BodyMotion` from SMPL-X global rotations (T, 22, 3, 3) and pelvis (T, 3)."""
    parent = np.asarray([0, *_PARENTS[1:22]])
    local = np.swapaxes(globals_[:, parent], -1, -2) @ globals_
    local[:, 0] = globals_[:, 0]
    rotvecs = roma.rotmat_to_rotvec(torch.from_numpy(np.ascontiguousarray(local))).numpy()
    motion = BodyMotion(rotvecs[:, 0], rotvecs[:, 1:], pelvis, fps, kind, reference)
    motion._cache.update({"local": local, "global": globals_})
    return motion


@dataclass(frozen=True)
class RigConstants:
    """Per BVH skeleton: its family, ``X_j = R_a(ref)^T C_j`` per mapped SMPL-X joint, the
    reference T-pose's SMPL-X global rotations (22, 3, 3) and the capture skeleton's leg length."""

    family: SkeletonFamily
    offsets: dict[str, np.ndarray]
    reference: np.ndarray
    leg_length: float


class Retargeter:
    """Retargets BVH motions onto one SMPL-X-convention body skeleton (default: neutral Anny).

    ``Retargeter(skeleton)(motion)`` -> :class:`BodyMotion` at the BVH's stamped frame rate. The
    per-rig constants are computed once per distinct BVH skeleton.

    Args:
        skeleton: the SMPL-X-convention body to retarget onto (its T-pose and leg length).
        scale_to_body: scale the pelvis trajectory by the body's leg length over the capture
            skeleton's (default), or keep the captured metres.
    """

    def __init__(self, skeleton: BodySkeleton | None = None, scale_to_body: bool = True) -> None:
        if skeleton is None:
            skeleton = BodySkeleton.neutral()
        self.skeleton = skeleton
        self.rest = skeleton.rest_joints[0].detach().double().cpu().numpy()  # (22, 3)
        self.scale_to_body = scale_to_body
        self._t_frames = self._tpose_frames()
        self._cache: dict[tuple, RigConstants] = {}

    def _tpose_frames(self) -> dict[str, np.ndarray]:
        frames = {"pelvis": _frame(UP, FORWARD)}
        for name, child in _T_CHILD.items():
            if isinstance(child, tuple):
                direction = np.asarray(child)
            else:
                direction = self.rest[_INDEX[child]] - self.rest[_INDEX[name]]
            frames[name] = _frame(direction, UP if name in _UP_SECONDARY else FORWARD)
        return frames

    @property
    def leg_length(self) -> float:
        """Hip to knee to ankle of the target body (metres)."""
        r = self.rest
        return float(
            np.linalg.norm(r[_INDEX["left_knee"]] - r[_INDEX["left_hip"]])
            + np.linalg.norm(r[_INDEX["left_ankle"]] - r[_INDEX["left_knee"]])
        )

    def constants(
        self, skeleton: BvhSkeleton, family: SkeletonFamily | None = None
    ) -> RigConstants:
        """The rig's retargeting constants (cached per skeleton)."""
        key = (skeleton.names, skeleton.offsets.tobytes(), family.name if family else None)
        if key not in self._cache:
            self._cache[key] = self._constants(skeleton, family or detect_family(skeleton))
        return self._cache[key]

    def _constants(self, skeleton: BvhSkeleton, family: SkeletonFamily) -> RigConstants:
        ref = reference_posture(skeleton, family)
        offsets: dict[str, np.ndarray] = {}
        c: dict[str, np.ndarray] = {}
        for name, segment in family.segments.items():
            secondary = ref.up if name in _UP_SECONDARY else ref.forward
            if name == "pelvis":
                f_ref = _frame(ref.up, ref.forward)
            elif segment.target is None:
                f_ref = _frame(ref.up, secondary)
            else:
                vector = _segment_vector(skeleton, ref.positions, ref.rotations, segment)
                f_ref = _frame(vector, secondary)
            c[name] = f_ref @ self._t_frames[name].T
            offsets[name] = ref.rotations[skeleton.index(segment.joint)].T @ c[name]
        reference = self._globals(
            family,
            {
                name: ref.rotations[None, skeleton.index(s.joint)]
                for name, s in family.segments.items()
            },
            offsets,
            frames=1,
        )[0]
        legs = [
            np.linalg.norm(_segment_vector(skeleton, ref.positions, ref.rotations, s))
            for s in (family.segments["left_hip"], family.segments["left_knee"])
        ]
        return RigConstants(family, offsets, reference, float(sum(legs)))

    @staticmethod
    def _globals(
        family: SkeletonFamily,
        driver_rotations: Mapping[str, np.ndarray],
        offsets: Mapping[str, np.ndarray],
        frames: int,
    ) -> np.ndarray:
        """(T, 22, 3, 3) SMPL-X global rotations from the driving joints' world rotations."""
        globals_ = np.empty((frames, 22, 3, 3))
        for j, name in enumerate(BODY_JOINTS):  # parents come first
            if name in offsets:
                globals_[:, j] = driver_rotations[name] @ offsets[name]
            elif name not in family.halfway:
                globals_[:, j] = globals_[:, _PARENTS[j]]  # no segment: keep the T-pose relation
        for name, (low, high) in family.halfway.items():
            globals_[:, _INDEX[name]] = _slerp_half(
                globals_[:, _INDEX[low]], globals_[:, _INDEX[high]]
            )
        return globals_

    def __call__(self, motion: BvhMotion, family: SkeletonFamily | None = None) -> BodyMotion:
        """Retarget a motion read in metres (:func:`~shared.mocap.bvh.read_bvh`)."""
        if motion.metres_per_unit is None:
            raise RetargetError(
                f"{motion.source}: read the file in metres (read_bvh(path), not unit=None)"
            )
        rig = self.constants(motion.skeleton, family)
        motion = motion.pruned(sorted(rig.family.required_joints))
        skeleton, family = motion.skeleton, rig.family
        rotations, positions = motion.forward_kinematics()
        drivers = {
            name: rotations[:, skeleton.index(segment.joint)]
            for name, segment in family.segments.items()
        }
        globals_ = self._globals(family, drivers, rig.offsets, motion.frame_count)

        # Pelvis: the BVH mid-hip point (scaled to the body's legs), plus the body's own
        # mid-hip -> pelvis offset turned with the pelvis.
        mid_hip = positions[:, [skeleton.index(n) for n in family.hips]].mean(1)
        scale = self.leg_length / rig.leg_length if self.scale_to_body else 1.0
        rest_mid_hip = self.rest[[_INDEX["left_hip"], _INDEX["right_hip"]]].mean(0)
        pelvis = scale * mid_hip + globals_[:, 0] @ (self.rest[0] - rest_mid_hip)
        return motion_from_globals(globals_, pelvis, motion.fps, family.name, rig.reference)


def retarget(
    motion: BvhMotion, skeleton: BodySkeleton | None = None, family: SkeletonFamily | None = None
) -> BodyMotion:
    """One-off :class:`Retargeter` call (build a Retargeter to retarget many files)."""
    return Retargeter(skeleton)(motion, family)


# --------------------------------------------------------------------------- checking


def evaluation_segments(family: SkeletonFamily) -> dict[str, tuple[str, str, Segment]]:
    """Segments to compare after retargeting: name -> (SMPL-X from, SMPL-X to, BVH segment)."""
    pairs: dict[str, tuple[str, str, Segment]] = {}
    seg = family.segments
    for side in ("left", "right"):
        for a, b in (
            ("hip", "knee"),
            ("knee", "ankle"),
            ("ankle", "foot"),
            ("collar", "shoulder"),
            ("shoulder", "elbow"),
            ("elbow", "wrist"),
        ):
            name = f"{side}_{a}"
            segment = seg.get(name)
            if segment is not None and segment.target is not None:
                pairs[f"{name}->{b}"] = (name, f"{side}_{b}", segment)
    pairs["neck->head"] = ("neck", "head", seg["neck"])
    return pairs


def segment_errors(
    motion: BvhMotion,
    retargeted: BodyMotion,
    skeleton: BodySkeleton,
    family: SkeletonFamily | None = None,
) -> dict[str, np.ndarray]:
    """Per evaluation segment, the angle in degrees (T,) between the BVH segment and the same
    segment of ``skeleton`` posed with the retargeted parameters (its own FK): the limb segments
    of :func:`evaluation_segments`, plus ``"spine1->neck"`` (the trunk, from the joints driving
    spine1 and the neck; includes the rigs' different rest curvature and where their spine1 sits,
    a near-constant offset) and ``"hip-line"`` (right hip to left hip)."""
    family = family or detect_family(motion.skeleton)
    joints = (
        skeleton(
            torch.from_numpy(retargeted.global_orient).to(skeleton.rest_joints.dtype),
            torch.from_numpy(retargeted.body_pose).to(skeleton.rest_joints.dtype),
            torch.from_numpy(retargeted.pelvis).to(skeleton.rest_joints.dtype),
        )
        .double()
        .numpy()
    )
    rotations, positions = motion.forward_kinematics()
    errors = {}
    for name, (a, b, segment) in evaluation_segments(family).items():
        bvh = _segment_vector(motion.skeleton, positions, rotations, segment)
        ours = joints[:, _INDEX[b]] - joints[:, _INDEX[a]]
        errors[name] = _angle(bvh, ours)
    left, right = (motion.skeleton.index(n) for n in family.hips)
    spine = [motion.skeleton.index(family.segments[n].joint) for n in ("spine1", "neck")]
    errors["spine1->neck"] = _angle(
        positions[:, spine[1]] - positions[:, spine[0]],
        joints[:, _INDEX["neck"]] - joints[:, _INDEX["spine1"]],
    )
    errors["hip-line"] = _angle(
        positions[:, left] - positions[:, right],
        joints[:, _INDEX["left_hip"]] - joints[:, _INDEX["right_hip"]],
    )
    return errors
