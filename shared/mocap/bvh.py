"""BVH motion files: reading (hierarchy, channels, motion), forward kinematics, writing.

Conventions, as the BVH format and the files in ``data/mocap`` use them:

- A joint's channel values are Euler angles in degrees, applied in the listed order as intrinsic
  rotations (``Zrotation Xrotation Yrotation`` is ``R = Rz @ Rx @ Ry``); ``R`` maps the joint's
  child offsets into its parent's frame, so with all rotations zero the skeleton stands in its
  OFFSET rest posture.
- Position channels are added to the joint's OFFSET (the iClone files need this: their root OFFSET
  holds the hip height and the channels a small displacement), on the root and on any non-root
  joint that has six channels.
- The world is right-handed and Y-up; nothing here converts axes (see :mod:`shared.mocap.retarget`).

Lengths: :func:`read_bvh` converts to metres by default, with the file's unit found from the
skeleton's size (:func:`detect_unit`), since BVH files do not say which unit they use.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import roma
import torch

from shared.bodies.skeleton import BODY_JOINT_NAMES, BODY_PARENTS, BodySkeleton

# Metres per file unit of the units mocap BVH files come in. "cmu": the CMU ASF unit, in which the
# CMU-named conversions are written (1/0.45 inch: ASF files say "length 0.45").
UNITS: dict[str, float] = {
    "m": 1.0,
    "cm": 0.01,
    "mm": 0.001,
    "inch": 0.0254,
    "cmu": 0.0254 / 0.45,
}
# A skeleton's tree span (the longest path between two joints or end sites, following bones) over
# its standing height: fingertip to opposite toe runs through arm, spine and leg, ~1.3 heights.
_SPAN_OVER_HEIGHT = 1.3
_TYPICAL_HEIGHT_M = 1.7

_AXES = {"Xrotation": "X", "Yrotation": "Y", "Zrotation": "Z"}
_POSITIONS = ("Xposition", "Yposition", "Zposition")


class BvhError(ValueError):
    """A BVH file that cannot be read: the message names the file and what is wrong."""


@dataclass(frozen=True)
class BvhSkeleton:
    """A BVH hierarchy, joints in file order (parents before children).

    ``offsets`` (J, 3): each joint's position in its parent's frame at rest, file units unless
    converted. ``channels``: per joint, its channel names in file order. ``end_sites``: per joint,
    the offsets of its End Sites (usually zero or one) as an (E, 3) array.
    """

    names: tuple[str, ...]
    parents: tuple[int, ...]
    offsets: np.ndarray
    channels: tuple[tuple[str, ...], ...]
    end_sites: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        count = len(self.names)
        if not (len(self.parents) == len(self.channels) == len(self.end_sites) == count):
            raise ValueError("names, parents, channels and end_sites must have one entry per joint")
        if self.offsets.shape != (count, 3):
            raise ValueError(f"offsets must be ({count}, 3), got {self.offsets.shape}")

    @property
    def joint_count(self) -> int:
        return len(self.names)

    @property
    def channel_count(self) -> int:
        return sum(len(c) for c in self.channels)

    def index(self, name: str) -> int:
        """Position of joint ``name``; KeyError naming the joints there are otherwise."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"no joint {name!r} in this skeleton (joints: {self.names})") from None

    def children(self, joint: int) -> list[int]:
        return [j for j, p in enumerate(self.parents) if p == joint]

    def scaled(self, factor: float) -> BvhSkeleton:
        return replace(
            self,
            offsets=self.offsets * factor,
            end_sites=tuple(e * factor for e in self.end_sites),
        )


@dataclass(frozen=True)
class BvhMotion:
    """A BVH file: its skeleton and its motion block ``values`` (T, C) in file channel order."""

    skeleton: BvhSkeleton
    values: np.ndarray
    frame_time: float
    metres_per_unit: float | None = None  # the conversion applied when read (None: file units)
    source: str = ""
    _fk_cache: dict[str, np.ndarray] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def frame_count(self) -> int:
        return int(self.values.shape[0])

    @property
    def fps(self) -> float:
        return 1.0 / self.frame_time

    def channel(self, joint: str | int, name: str) -> np.ndarray:
        """(T,) values of one channel of one joint."""
        j = self.skeleton.index(joint) if isinstance(joint, str) else joint
        start = sum(len(c) for c in self.skeleton.channels[:j])
        return self.values[:, start + self.skeleton.channels[j].index(name)]

    def frames(self, selection: slice | np.ndarray | Sequence[int]) -> BvhMotion:
        """A motion holding only the selected frames."""
        return replace(self, values=self.values[selection])

    def local_transforms(self) -> tuple[np.ndarray, np.ndarray]:
        """Per frame and joint, the local rotation (T, J, 3, 3) and translation (T, J, 3)."""
        skeleton, values = self.skeleton, self.values
        count = values.shape[0]
        rotations = np.broadcast_to(np.eye(3), (count, skeleton.joint_count, 3, 3)).copy()
        translations = np.broadcast_to(skeleton.offsets, (count, skeleton.joint_count, 3)).copy()
        by_order: dict[str, tuple[list[int], list[list[int]]]] = {}
        start = 0
        for j, channels in enumerate(skeleton.channels):
            rotation_columns = [start + k for k, c in enumerate(channels) if c in _AXES]
            if rotation_columns:
                order = "".join(_AXES[c] for c in channels if c in _AXES)
                joints, columns = by_order.setdefault(order, ([], []))
                joints.append(j)
                columns.append(rotation_columns)
            for axis, name in enumerate(_POSITIONS):
                if name in channels:
                    translations[:, j, axis] += values[:, start + channels.index(name)]
            start += len(channels)
        # One vectorised Euler conversion per distinct channel order.
        for order, (joints, columns) in by_order.items():
            rotations[:, joints] = euler_to_matrix(order, values[:, np.asarray(columns)])
        return rotations, translations

    def pruned(self, keep: Sequence[str]) -> BvhMotion:
        """The same motion on the joints ``keep`` and their ancestors only (FK of big rigs is
        dominated by fingers and face bones nobody reads)."""
        skeleton = self.skeleton
        wanted: set[int] = set()
        for name in keep:
            joint = skeleton.index(name)
            while joint >= 0 and joint not in wanted:
                wanted.add(joint)
                joint = skeleton.parents[joint]
        kept = sorted(wanted)
        new_index = {old: new for new, old in enumerate(kept)}
        starts = np.cumsum([0, *(len(c) for c in skeleton.channels)])
        columns = [c for j in kept for c in range(starts[j], starts[j + 1])]
        pruned = BvhSkeleton(
            names=tuple(skeleton.names[j] for j in kept),
            parents=tuple(new_index.get(skeleton.parents[j], -1) for j in kept),
            offsets=skeleton.offsets[kept],
            channels=tuple(skeleton.channels[j] for j in kept),
            end_sites=tuple(skeleton.end_sites[j] for j in kept),
        )
        return replace(self, skeleton=pruned, values=self.values[:, columns])

    def forward_kinematics(self) -> tuple[np.ndarray, np.ndarray]:
        """World rotations (T, J, 3, 3) and positions (T, J, 3) of every joint, every frame."""
        if "rotations" not in self._fk_cache:
            rotations, positions = forward_kinematics(self.skeleton, *self.local_transforms())
            self._fk_cache["rotations"], self._fk_cache["positions"] = rotations, positions
        return self._fk_cache["rotations"], self._fk_cache["positions"]

    def rest_positions(self) -> np.ndarray:
        """(J, 3) joint positions in the OFFSET rest posture (all rotations zero, root at 0)."""
        positions = np.zeros((self.skeleton.joint_count, 3))
        for j, parent in enumerate(self.skeleton.parents):
            if parent >= 0:
                positions[j] = positions[parent] + self.skeleton.offsets[j]
        return positions

    def end_site_positions(self, joint: str | int) -> np.ndarray:
        """(T, E, 3) world positions of the End Sites of ``joint``."""
        j = self.skeleton.index(joint) if isinstance(joint, str) else joint
        rotations, positions = self.forward_kinematics()
        sites = self.skeleton.end_sites[j]
        return np.asarray(positions[:, j, None] + np.einsum("tab,eb->tea", rotations[:, j], sites))


def _axis_rotations(axis: str, radians: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations by ``radians`` about the X, Y or Z axis."""
    cos, sin = np.cos(radians), np.sin(radians)
    i, j = {"X": (1, 2), "Y": (2, 0), "Z": (0, 1)}[axis]
    out = np.zeros((*radians.shape, 3, 3))
    out[..., 3 - i - j, 3 - i - j] = 1.0
    out[..., i, i], out[..., j, j] = cos, cos
    out[..., i, j], out[..., j, i] = -sin, sin
    return out


def euler_to_matrix(order: str, degrees: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation of intrinsic Euler angles (..., len(order)) in degrees, BVH style:
    ``order="ZXY"`` gives ``Rz @ Rx @ Ry``. (Plain numpy: 4x faster than scipy's, 20x roma's.)"""
    radians = np.radians(degrees)
    out = _axis_rotations(order[0], radians[..., 0])
    for k in range(1, len(order)):
        out = out @ _axis_rotations(order[k], radians[..., k])
    return out


def forward_kinematics(
    skeleton: BvhSkeleton, local_rotations: np.ndarray, local_translations: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """World rotations (T, J, 3, 3) and positions (T, J, 3) from local rotations (T, J, 3, 3)
    and translations (T, J, 3) (the OFFSETs plus any position channels)."""
    rotations, positions = local_rotations.copy(), local_translations.copy()
    for level in _levels(skeleton.parents):
        parent = np.asarray([skeleton.parents[j] for j in level])
        rotations[:, level] = rotations[:, parent] @ local_rotations[:, level]
        positions[:, level] = positions[:, parent] + np.einsum(
            "tjab,tjb->tja", rotations[:, parent], local_translations[:, level]
        )
    return rotations, positions


def _levels(parents: Sequence[int]) -> list[list[int]]:
    """Joints grouped by depth (root excluded), so each FK step is one vectorised update."""
    depth = [0] * len(parents)
    for j, parent in enumerate(parents):
        depth[j] = depth[parent] + 1 if parent >= 0 else 0
    deepest = max(depth, default=0)
    return [[j for j, d in enumerate(depth) if d == level] for level in range(1, deepest + 1)]


# --------------------------------------------------------------------------- reading


def _parse_hierarchy(tokens: list[str], where: str) -> BvhSkeleton:
    names: list[str] = []
    parents: list[int] = []
    offsets: list[list[float]] = []
    channels: list[tuple[str, ...]] = []
    end_sites: list[list[list[float]]] = []
    stack: list[int] = []  # open joints; -2 marks an open End Site
    i = 1 if tokens and tokens[0] == "HIERARCHY" else 0
    pending: int | None = None
    try:
        while i < len(tokens):
            token = tokens[i]
            if token in ("ROOT", "JOINT"):
                if token == "ROOT" and names:
                    raise BvhError(f"{where}: more than one ROOT (only one skeleton per file)")
                names.append(tokens[i + 1])
                parents.append(stack[-1] if stack else -1)
                offsets.append([0.0, 0.0, 0.0])
                channels.append(())
                end_sites.append([])
                pending = len(names) - 1
                i += 2
            elif token == "End":
                if not stack:
                    raise BvhError(f"{where}: End Site outside any joint")
                end_sites[stack[-1]].append([0.0, 0.0, 0.0])
                pending = -2
                i += 2  # "End Site"
            elif token == "{":
                if pending is None:
                    raise BvhError(f"{where}: '{{' without a ROOT, JOINT or End Site before it")
                stack.append(pending)
                pending = None
                i += 1
            elif token == "}":
                stack.pop()
                i += 1
            elif token == "OFFSET":
                vector = [float(v) for v in tokens[i + 1 : i + 4]]
                if stack[-1] == -2:
                    owner = stack[-2]
                    end_sites[owner][-1] = vector
                else:
                    offsets[stack[-1]] = vector
                i += 4
            elif token == "CHANNELS":
                count = int(tokens[i + 1])
                names_here = tuple(tokens[i + 2 : i + 2 + count])
                unknown = [c for c in names_here if c not in _AXES and c not in _POSITIONS]
                if unknown:
                    raise BvhError(f"{where}: unknown channel(s) {unknown} on {names[stack[-1]]}")
                channels[stack[-1]] = names_here
                i += 2 + count
            else:
                raise BvhError(f"{where}: unexpected {token!r} in the HIERARCHY")
    except (IndexError, ValueError) as error:
        if isinstance(error, BvhError):
            raise
        raise BvhError(f"{where}: malformed HIERARCHY ({error})") from error
    if stack:
        raise BvhError(f"{where}: HIERARCHY ends with {len(stack)} unclosed '{{'")
    if not names:
        raise BvhError(f"{where}: no ROOT joint in the HIERARCHY")
    return BvhSkeleton(
        names=tuple(names),
        parents=tuple(parents),
        offsets=np.asarray(offsets, dtype=np.float64),
        channels=tuple(channels),
        end_sites=tuple(np.asarray(e, dtype=np.float64).reshape(-1, 3) for e in end_sites),
    )


def parse_bvh(text: str, source: str = "<string>") -> BvhMotion:
    """Parse BVH text (file units, no conversion). ``source`` names it in error messages."""
    head, separator, motion = text.partition("MOTION")
    if not separator:
        raise BvhError(f"{source}: no MOTION section (is this a BVH file?)")
    if "HIERARCHY" not in head:
        raise BvhError(f"{source}: no HIERARCHY section (is this a BVH file?)")
    skeleton = _parse_hierarchy(head.split(), source)

    # "Frames: N" and "Frame Time: t", then the numbers of the whole block, parsed at once.
    lines = motion.lstrip().split("\n", 2)
    try:
        frames_line, time_line = lines[0], lines[1]
        declared = int(frames_line.split(":")[1])
        frame_time = float(time_line.split(":")[1])
    except (IndexError, ValueError) as error:
        raise BvhError(
            f"{source}: MOTION must start with 'Frames: N' and 'Frame Time: t'"
        ) from error
    if frame_time <= 0:
        raise BvhError(f"{source}: Frame Time must be positive, got {frame_time}")
    block = lines[2] if len(lines) > 2 else ""
    try:
        numbers = np.array(block.split(), dtype=np.float64)
    except ValueError as error:
        raise BvhError(f"{source}: non-numeric value in the MOTION block ({error})") from error
    width = skeleton.channel_count
    if width == 0:
        raise BvhError(f"{source}: the skeleton has no channels")
    if numbers.size % width:
        raise BvhError(
            f"{source}: the MOTION block has {numbers.size} numbers, not a multiple of the "
            f"{width} channels (truncated file?)"
        )
    values = numbers.reshape(-1, width)
    # Some converters miscount by a frame: trust the data then, but never invent frames.
    if abs(values.shape[0] - declared) > 1:
        raise BvhError(
            f"{source}: 'Frames: {declared}' but the MOTION block holds {values.shape[0]}"
        )
    if values.shape[0] == 0:
        raise BvhError(f"{source}: no frames in the MOTION block")
    if not np.isfinite(values).all():
        raise BvhError(f"{source}: the MOTION block contains NaN or infinite values")
    return BvhMotion(skeleton=skeleton, values=values, frame_time=frame_time, source=source)


def tree_span(skeleton: BvhSkeleton) -> float:
    """Longest path between two joints or end sites along the bones (file units).

    Bones above the first joint with several children are left out (the iClone rigs hang the hip
    under a ground-level root by a hip-height bone that is no part of the body)."""
    top = 0
    while len(skeleton.children(top)) == 1:
        top = skeleton.children(top)[0]
    lengths = np.linalg.norm(skeleton.offsets, axis=1)
    deepest: dict[int, float] = {}  # longest downward path from each joint
    best = 0.0
    for j in reversed(range(skeleton.joint_count)):
        branches = [deepest[c] + lengths[c] for c in skeleton.children(j)]
        branches += [float(np.linalg.norm(e)) for e in skeleton.end_sites[j]]
        branches.sort(reverse=True)
        deepest[j] = branches[0] if branches else 0.0
        if _is_below(skeleton, j, top):
            best = max(best, sum(branches[:2]))
    return best


def _is_below(skeleton: BvhSkeleton, joint: int, top: int) -> bool:
    while joint >= 0:
        if joint == top:
            return True
        joint = skeleton.parents[joint]
    return False


def detect_unit(skeleton: BvhSkeleton) -> str:
    """The unit (a key of :data:`UNITS`) that gives this skeleton the most typical human height,
    judged from its tree span (posture-independent: works whatever the OFFSET rest looks like)."""
    span = tree_span(skeleton)
    if span <= 0:
        raise BvhError("the skeleton has no length (all OFFSETs are zero)")
    heights = {unit: span * scale / _SPAN_OVER_HEIGHT for unit, scale in UNITS.items()}
    return min(heights, key=lambda unit: abs(math.log(heights[unit] / _TYPICAL_HEIGHT_M)))


def read_bvh(path: str | Path, unit: str | float | None = "auto") -> BvhMotion:
    """Read a BVH file.

    Args:
        path: the ``.bvh`` file.
        unit: what one file unit is: ``"auto"`` (default: :func:`detect_unit`), a key of
            :data:`UNITS`, metres per unit as a number, or ``None`` to keep file units.

    Returns:
        The motion with offsets and position channels in metres (unless ``unit`` is ``None``),
        ``metres_per_unit`` saying which conversion was applied; rotations are untouched.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise BvhError(f"{path}: cannot read ({error.strerror})") from error
    motion = parse_bvh(text, source=str(path))
    if unit is None:
        return motion
    if unit == "auto":
        unit = detect_unit(motion.skeleton)
    if isinstance(unit, str):
        if unit not in UNITS:
            raise ValueError(f"unknown unit {unit!r}: use one of {sorted(UNITS)} or a number")
        scale = UNITS[unit]
    else:
        scale = float(unit)
    return to_metres(motion, scale)


def to_metres(motion: BvhMotion, metres_per_unit: float) -> BvhMotion:
    """The same motion with lengths multiplied by ``metres_per_unit`` (position channels too)."""
    values = motion.values.copy()
    start = 0
    for channels in motion.skeleton.channels:
        for k, name in enumerate(channels):
            if name in _POSITIONS:
                values[:, start + k] *= metres_per_unit
        start += len(channels)
    return BvhMotion(
        skeleton=motion.skeleton.scaled(metres_per_unit),
        values=values,
        frame_time=motion.frame_time,
        metres_per_unit=metres_per_unit * (motion.metres_per_unit or 1.0),
        source=motion.source,
    )


# --------------------------------------------------------------------------- writing


def write_bvh(
    path: str | Path,
    global_orient: np.ndarray | torch.Tensor,
    body_pose: np.ndarray | torch.Tensor,
    pelvis: np.ndarray | torch.Tensor,
    fps: float,
    rest_joints: np.ndarray | torch.Tensor | None = None,
    unit: str = "cm",
) -> Path:
    """Write SMPL-X-convention body poses as BVH on the 22-joint SMPL-X body skeleton.

    The skeleton's OFFSETs are the canonical T-pose (``rest_joints``; default: Anny's neutral body,
    :class:`~shared.bodies.skeleton.BodySkeleton`), so each joint's BVH rotation is exactly its
    SMPL-X local rotation and any BVH reader poses the same joints :class:`BodySkeleton` does.
    Channels: the root ``Xposition Yposition Zposition Zrotation Yrotation Xrotation``, the other
    joints ``Zrotation Yrotation Xrotation``; Y-up world, the body facing +Z at zero orientation.

    Args:
        path: where to write (parent folders are created).
        global_orient: (T, 3) axis-angle. body_pose: (T, 21, 3) or (T, 63). pelvis: (T, 3) metres.
        fps: frames per second.
        rest_joints: (22, 3) or (1, 22, 3) T-pose joint positions in metres (only differences
            are used).
        unit: length unit of the file: a key of :data:`UNITS` (default centimetres).
    """

    orient = _as_numpy(global_orient).reshape(-1, 3)
    frames = orient.shape[0]
    pose = _as_numpy(body_pose).reshape(frames, -1)
    if pose.shape[1] != 63:
        raise ValueError(f"body_pose must be (T, 21, 3) or (T, 63), got {tuple(pose.shape)}")
    position = _as_numpy(pelvis).reshape(frames, 3)
    if frames == 0:
        raise ValueError("nothing to write: zero frames")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r}: use one of {sorted(UNITS)}")
    if rest_joints is None:
        rest_joints = BodySkeleton.neutral().rest_joints
    rest = _as_numpy(rest_joints).reshape(-1, 22, 3)[0]
    per_unit = 1.0 / UNITS[unit]

    rotvecs = np.concatenate([orient[:, None], pose.reshape(frames, 21, 3)], 1)
    rotations = roma.rotvec_to_rotmat(torch.from_numpy(rotvecs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gimbal-lock notices: the matrix stays exact
        euler = torch.stack(
            roma.rotmat_to_euler("ZYX", rotations, degrees=True, as_tuple=True), -1
        ).numpy()  # (T, 22, 3)

    children = {j: [c for c, p in enumerate(BODY_PARENTS) if p == j] for j in range(22)}
    lines = ["HIERARCHY"]

    def emit(joint: int, depth: int) -> None:
        pad = "  " * depth
        parent = BODY_PARENTS[joint]
        offset = np.zeros(3) if parent < 0 else (rest[joint] - rest[parent]) * per_unit
        keyword = "ROOT" if parent < 0 else "JOINT"
        lines.append(f"{pad}{keyword} {BODY_JOINT_NAMES[joint]}")
        lines.append(f"{pad}{{")
        lines.append(f"{pad}  OFFSET {offset[0]:.6f} {offset[1]:.6f} {offset[2]:.6f}")
        if parent < 0:
            lines.append(
                f"{pad}  CHANNELS 6 Xposition Yposition Zposition Zrotation Yrotation Xrotation"
            )
        else:
            lines.append(f"{pad}  CHANNELS 3 Zrotation Yrotation Xrotation")
        for child in children[joint]:
            emit(child, depth + 1)
        if not children[joint]:
            # End Site: the joint's own segment continued (hand, head top, toe tip), 8 cm.
            direction = rest[joint] - rest[parent]
            tip = direction / np.linalg.norm(direction) * 0.08 * per_unit
            lines.append(f"{pad}  End Site")
            lines.append(f"{pad}  {{")
            lines.append(f"{pad}    OFFSET {tip[0]:.6f} {tip[1]:.6f} {tip[2]:.6f}")
            lines.append(f"{pad}  }}")
        lines.append(f"{pad}}}")

    emit(0, 0)
    # Channel order per row: root position, then each joint's Z Y X in the hierarchy's order.
    order: list[int] = []

    def visit(joint: int) -> None:
        order.append(joint)
        for child in children[joint]:
            visit(child)

    visit(0)
    motion = np.concatenate([position * per_unit, euler[:, order].reshape(frames, -1)], 1)
    lines += ["MOTION", f"Frames: {frames}", f"Frame Time: {1.0 / fps:.8f}"]
    body = "\n".join(" ".join(f"{v:.6f}" for v in row) for row in motion)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n" + body + "\n", encoding="utf-8")
    return path


def _as_numpy(array: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().double().numpy()
    return np.asarray(array, dtype=np.float64)
