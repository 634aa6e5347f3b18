"""The pose dataset the priors train on: real mocap, cleaned, retargeted, resampled, split.

:func:`build_dataset` walks a folder of BVH (and AMASS ``.npz``) files and, per file:

1. reads and retargets it to SMPL-X-convention body poses (:mod:`shared.mocap.retarget`,
   :mod:`shared.mocap.amass`);
2. drops the converters' synthetic frames, judged by content (:func:`synthetic_frames`): leading
   (and trailing) frames within ``tpose_tolerance_deg`` of the rig's T-pose, then the blend the
   cgspeed converter inserts from that T-pose into the motion (frames that still move faster than
   ``blend_speed_deg_s`` right after it, at most ``max_blend_s``);
3. cuts the motion at glitches (:func:`glitches`): a joint flipping faster than
   ``flip_speed_deg_s`` or jumping faster than ``max_joint_speed_m_s`` between two frames (both
   far outside human motion: a 180-degree flip in 1/60 s, a foot teleporting); pieces shorter than
   ``min_run_s`` are dropped, and a file where more than ``max_glitch_fraction`` of the frame
   transitions are glitches is skipped whole;
4. decides the TRUE capture rate (:func:`capture_fps`): the stamped rate, unless the CMU-listed
   rate (MANIFEST.csv ``cmu_listed_fps``) differs and the clip's flight phases say otherwise: while
   both feet are off the ground the pelvis falls with g = 9.81 m/s^2, which pins the frame rate
   (subject 16's files say 30 fps; their jumps fall at 9.8 m/s^2 only at 120 fps);
5. resamples every piece to ``fps`` (slerp of each joint's local rotation, linear pelvis) on the
   grid ``k / fps`` seconds from the file's first frame, so ``frame`` is ``k``.

Splits are by subject (MANIFEST.csv ``subject``, else ``NN_MM.bvh`` -> ``NN``, else the folder),
so validation is on people the model never saw.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import roma
import torch

from shared.bodies.skeleton import BodySkeleton, mirror_body_pose
from shared.mocap.amass import read_amass
from shared.mocap.bvh import read_bvh
from shared.mocap.retarget import BODY_JOINTS, BodyMotion, Retargeter
from shared.storage import file_sha256, resolves_inside

log = logging.getLogger(__name__)

DEFAULT_FPS = 30.0
DEFAULT_VALID_SUBJECTS: tuple[str, ...] = ("6", "9", "16")
DATASET_VERSION = "1"  # bump when the cleaning/retargeting changes what a build produces
GRAVITY = 9.81

_I = {name: i for i, name in enumerate(BODY_JOINTS)}
_LIMBS = [_I[f"{s}_{j}"] for s in ("left", "right") for j in ("hip", "knee", "shoulder", "elbow")]
_FEET = [_I[n] for n in ("left_ankle", "right_ankle", "left_foot", "right_foot")]


@dataclass(frozen=True)
class CleaningConfig:
    """Thresholds of the cleaning steps (see the module docstring)."""

    tpose_tolerance_deg: float = 15.0
    blend_speed_deg_s: float = 600.0
    max_blend_s: float = 0.25
    flip_speed_deg_s: float = 2500.0
    max_joint_speed_m_s: float = 15.0
    min_run_s: float = 0.5
    max_glitch_fraction: float = 0.1


# --------------------------------------------------------------------------- cleaning


def _geodesic_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle in degrees between rotation matrices (..., 3, 3)."""
    relative = np.swapaxes(a, -1, -2) @ b
    cos = (np.trace(relative, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.asarray(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def _limb_postures(globals_: np.ndarray) -> np.ndarray:
    """(T, 8, 3, 3) hips, knees, shoulders and elbows relative to the pelvis (heading-free)."""
    return np.asarray(np.swapaxes(globals_[:, :1], -1, -2) @ globals_[:, _LIMBS])


def synthetic_frames(
    motion: BodyMotion, fps: float, config: CleaningConfig = CleaningConfig()
) -> tuple[int, int]:
    """``(start, stop)``: the frames to keep once the converter's T-pose and blend frames at the
    start (and T-pose frames at the end) are dropped. Needs ``motion.reference`` (the rig's
    T-pose); without one nothing is dropped. ``fps`` is the true capture rate."""
    frames = motion.frame_count
    if motion.reference is None or frames == 0:
        return 0, frames
    limbs = _limb_postures(motion.global_rotations())
    tpose = _limb_postures(motion.reference[None])
    near_tpose = _geodesic_deg(limbs, tpose).max(1) < config.tpose_tolerance_deg
    start = int(np.argmin(near_tpose)) if not near_tpose.all() else frames
    stop = frames - int(np.argmin(near_tpose[::-1])) if not near_tpose.all() else frames
    if 0 < start < stop - 1:
        # The blend: frames that still move fast towards the motion (outgoing speed), "fast"
        # meaning over blend_speed_deg_s and twice the clip's median speed (brisk clips).
        speed = _geodesic_deg(limbs[1:], limbs[:-1]).max(1) * fps  # speed[i]: frame i -> i+1
        fast = max(config.blend_speed_deg_s, 2.0 * float(np.median(speed[start : stop - 1])))
        limit = start + max(1, round(config.max_blend_s * fps))
        while start < min(stop - 1, limit) and speed[start] > fast:
            start += 1
    return start, max(start, stop)


def glitches(
    motion: BodyMotion,
    skeleton: BodySkeleton,
    fps: float,
    config: CleaningConfig = CleaningConfig(),
) -> np.ndarray:
    """(T - 1,) bool: transition ``i -> i + 1`` is a glitch (a joint's local rotation flips, or a
    joint of ``skeleton`` jumps, faster than any human motion). ``fps``: the true capture rate."""
    if motion.frame_count < 2:
        return np.zeros(0, dtype=bool)
    local = motion.local_rotations()
    flips = _geodesic_deg(local[1:], local[:-1]).max(1) * fps > config.flip_speed_deg_s
    joints = body_joints(motion, skeleton)
    jumps = np.linalg.norm(np.diff(joints, axis=0), axis=-1).max(1) * fps
    return np.asarray(flips | (jumps > config.max_joint_speed_m_s))


def body_joints(motion: BodyMotion, skeleton: BodySkeleton) -> np.ndarray:
    """(T, 22, 3) joint positions of ``skeleton`` posed by ``motion`` (SMPL-X world, metres)."""
    key = f"joints{id(skeleton)}"
    if key not in motion._cache:
        dtype = skeleton.rest_joints.dtype
        with torch.no_grad():
            joints = skeleton(
                torch.from_numpy(motion.global_orient).to(dtype),
                torch.from_numpy(motion.body_pose).to(dtype),
                torch.from_numpy(motion.pelvis).to(dtype),
            )
        motion._cache[key] = joints.double().numpy()
    return motion._cache[key]


def runs(keep: np.ndarray, breaks: np.ndarray, min_length: int) -> list[tuple[int, int]]:
    """Maximal ``(start, stop)`` runs of kept frames not crossing a break, ``>= min_length``.

    ``keep`` (T,) bool frames; ``breaks`` (T - 1,) bool transitions that must not be crossed."""
    out = []
    start = None
    for i in range(len(keep) + 1):
        inside = i < len(keep) and keep[i] and (start is None or not breaks[i - 1])
        if start is not None and not inside:
            if i - start >= min_length:
                out.append((start, i))
            start = None
        if start is None and i < len(keep) and keep[i]:
            start = i
    return out


@dataclass(frozen=True)
class FlightPhase:
    """Frames ``start:stop`` with both feet off the ground; the pelvis height's parabola fit."""

    start: int
    stop: int
    acceleration: float  # metres per frame^2 (negative: falling)
    rise: float  # metres the pelvis rises from take-off to its highest point
    residual: float  # RMS of the fit, metres


def flight_phases(
    motion: BodyMotion, skeleton: BodySkeleton, min_frames: int = 8
) -> list[FlightPhase]:
    """Stretches where both ankles and both toes are 5 cm above their usual lowest height."""
    joints = body_joints(motion, skeleton)
    feet = joints[:, _FEET, 1]
    airborne = (feet > np.percentile(feet, 5, axis=0) + 0.05).all(1)
    height = joints[:, 0, 1]
    phases = []
    for start, stop in runs(airborne, np.zeros(max(0, len(airborne) - 1), bool), min_frames):
        t = np.arange(start + 1, stop - 1)  # without take-off and landing, where feet push
        fit = np.polyfit(t, height[t], 2)
        residual = float(np.sqrt(np.mean((height[t] - np.polyval(fit, t)) ** 2)))
        rise = float(height[start:stop].max() - height[start])
        phases.append(FlightPhase(start, stop, 2.0 * float(fit[0]), rise, residual))
    return phases


def capture_fps(
    motion: BodyMotion,
    skeleton: BodySkeleton,
    stamped: float,
    listed: float | None = None,
) -> tuple[float, str]:
    """The true capture rate and why.

    The stamped rate, unless CMU's ``listed`` rate differs and real jumps say otherwise: in flight
    phases where the pelvis rises at least 5 cm along a clean parabola (RMS under 5 mm), it falls
    at g = 9.81 m/s^2, so ``fps = sqrt(g / a)`` with ``a`` its acceleration per frame^2. The listed
    rate wins only if that estimate is within 15 % of it and at least 1.5x off the stamped rate
    (walks, relevés and noisy feet never get there; subject 16's jumps do)."""
    if listed is None or math.isclose(listed, stamped, rel_tol=0.01):
        return stamped, "stamped"
    jumps = [
        p
        for p in flight_phases(motion, skeleton)
        if p.rise >= 0.05 and p.residual <= 0.005 and p.acceleration < 0
    ]
    if not jumps:
        return stamped, f"stamped (listed {listed:g}; no clean jump to check against gravity)"
    implied = float(np.median([math.sqrt(GRAVITY / -p.acceleration) for p in jumps]))
    detail = f"gravity in {len(jumps)} jump(s) implies {implied:.0f} fps"
    if abs(math.log(listed / implied)) < math.log(1.15) and abs(
        math.log(stamped / implied)
    ) > math.log(1.5):
        return listed, f"listed {listed:g} ({detail}; stamped {stamped:g})"
    return stamped, f"stamped ({detail}; listed {listed:g})"


def resample(
    motion: BodyMotion, source_fps: float, start: int, stop: int, fps: float
) -> tuple[BodyMotion, np.ndarray]:
    """Frames ``start:stop`` (at ``source_fps``) resampled to ``fps`` on the grid ``k / fps``
    seconds from frame 0: geodesic (slerp) interpolation of every local rotation, linear pelvis.
    Returns the motion and the grid indices ``k`` (int)."""
    first = math.ceil(start * fps / source_fps - 1e-6)
    last = math.floor((stop - 1) * fps / source_fps + 1e-6)
    k = np.arange(first, last + 1)
    position = np.clip(k * source_fps / fps, start, stop - 1)  # fractional source frame
    below = np.minimum(np.floor(position).astype(int), max(start, stop - 2))
    above = np.minimum(below + 1, stop - 1)
    weight = (position - below)[:, None]

    local = motion.local_rotations()
    r0, r1 = local[below], local[above]
    delta = roma.rotmat_to_rotvec(torch.from_numpy(np.swapaxes(r0, -1, -2) @ r1)).numpy()
    step = roma.rotvec_to_rotmat(torch.from_numpy(delta * weight[..., None])).numpy()
    rotvecs = roma.rotmat_to_rotvec(torch.from_numpy(r0 @ step)).numpy()
    pelvis = motion.pelvis[below] * (1 - weight) + motion.pelvis[above] * weight
    out = BodyMotion(
        global_orient=rotvecs[:, 0],
        body_pose=rotvecs[:, 1:],
        pelvis=pelvis,
        fps=fps,
        kind=motion.kind,
        reference=motion.reference,
    )
    return out, k


# --------------------------------------------------------------------------- dataset


@dataclass(frozen=True, eq=False)
class PoseSequence(Mapping[str, np.ndarray]):
    """One contiguous piece of a clip (consecutive ``frame`` indices).

    A mapping of its per-frame arrays (``global_orient`` (L, 3), ``body_pose`` (L, 21, 3),
    ``pelvis`` (L, 3), ``frame`` (L,)), so ``{k: v[a:b] for k, v in seq.items()}`` is a window;
    ``clip``, ``subject``, ``split``, ``start_frame`` and ``fps`` describe it."""

    clip: str
    subject: str
    split: str
    start_frame: int
    fps: float
    global_orient: np.ndarray
    body_pose: np.ndarray
    pelvis: np.ndarray
    frame: np.ndarray
    KEYS: ClassVar[tuple[str, ...]] = ("global_orient", "body_pose", "pelvis", "frame")

    @property
    def frame_count(self) -> int:
        return int(self.global_orient.shape[0])

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self.KEYS:
            raise KeyError(key)
        return cast(np.ndarray, getattr(self, key))  # one of the KEYS fields

    def __iter__(self) -> Iterator[str]:
        return iter(self.KEYS)

    def __len__(self) -> int:
        return len(self.KEYS)


_ARRAYS = ("body_pose", "global_orient", "pelvis", "subject", "clip", "frame", "split")


@dataclass
class PoseDataset:
    """SMPL-X-convention body poses over N frames (SMPL-X world: Y up, metres; axis-angle).

    ``body_pose`` (N, 21, 3), ``global_orient`` (N, 3), ``pelvis`` (N, 3) float32; ``subject``
    (N,) str; ``clip`` (N,) int32 into ``clips`` (C,) str (paths relative to the data folder);
    ``frame`` (N,) int32 index at ``fps`` from the clip's first frame; ``split`` (N,) "train" or
    "valid"; ``metadata``: how it was built (JSON-serialisable).
    """

    body_pose: np.ndarray
    global_orient: np.ndarray
    pelvis: np.ndarray
    subject: np.ndarray
    clip: np.ndarray
    frame: np.ndarray
    split: np.ndarray
    clips: np.ndarray
    fps: float
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        count = self.body_pose.shape[0]
        expected = {
            "body_pose": (count, 21, 3),
            "global_orient": (count, 3),
            "pelvis": (count, 3),
            "subject": (count,),
            "clip": (count,),
            "frame": (count,),
            "split": (count,),
        }
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name} must be {shape}, got {getattr(self, name).shape}")
        if count and (self.clip.min() < 0 or self.clip.max() >= len(self.clips)):
            raise ValueError("clip indices must point into clips")

    def __len__(self) -> int:
        return int(self.body_pose.shape[0])

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write a plain ``.npz`` (no pickled objects; metadata as a JSON string)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {name: getattr(self, name) for name in _ARRAYS}
        arrays = {
            name: (value.astype(str) if value.dtype.kind in "OU" else value)
            for name, value in arrays.items()
        }
        with path.open("wb") as handle:
            np.savez_compressed(
                handle,
                **arrays,
                clips=self.clips.astype(str),
                fps=np.float64(self.fps),
                metadata=np.array(json.dumps(self.metadata, sort_keys=True)),
            )
        return path

    @classmethod
    def load(cls, path: str | Path) -> PoseDataset:
        """Read a file written by :meth:`save`."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [n for n in (*_ARRAYS, "clips", "fps", "metadata") if n not in data]
                if missing:
                    raise ValueError(f"{path}: not a PoseDataset file (missing {missing})")
                return cls(
                    body_pose=data["body_pose"].astype(np.float32),
                    global_orient=data["global_orient"].astype(np.float32),
                    pelvis=data["pelvis"].astype(np.float32),
                    subject=data["subject"],
                    clip=data["clip"].astype(np.int32),
                    frame=data["frame"].astype(np.int32),
                    split=data["split"],
                    clips=data["clips"],
                    fps=float(data["fps"]),
                    metadata=json.loads(str(data["metadata"])),
                )
        except (OSError, EOFError) as error:
            raise ValueError(f"{path}: cannot read the dataset ({error})") from error

    # ------------------------------------------------------------------ views
    def select(self, rows: np.ndarray) -> PoseDataset:
        """The rows ``rows`` (bool mask or indices); ``clips`` is kept whole."""
        return replace(
            self,
            **{name: getattr(self, name)[rows] for name in _ARRAYS},
            metadata=dict(self.metadata),
        )

    def subset(self, split: str) -> PoseDataset:
        """The rows of one split ("train" or "valid")."""
        if split not in ("train", "valid"):
            raise ValueError(f"split must be 'train' or 'valid', got {split!r}")
        return self.select(self.split == split)

    def sequences(self) -> Iterator[PoseSequence]:
        """Contiguous pieces (same clip, consecutive frames), in clip then frame order."""
        if not len(self):
            return
        order = np.lexsort((self.frame, self.clip))
        clip, frame = self.clip[order], self.frame[order]
        cuts = np.nonzero((np.diff(clip) != 0) | (np.diff(frame) != 1))[0] + 1
        for rows in np.split(order, cuts):
            first = rows[0]
            yield PoseSequence(
                clip=str(self.clips[self.clip[first]]),
                subject=str(self.subject[first]),
                split=str(self.split[first]),
                start_frame=int(self.frame[first]),
                fps=self.fps,
                global_orient=self.global_orient[rows],
                body_pose=self.body_pose[rows],
                pelvis=self.pelvis[rows],
                frame=self.frame[rows],
            )

    def mirrored(self) -> PoseDataset:
        """Left/right mirror image (reflection x -> -x of the SMPL-X world): left and right
        joints swap, each axis-angle ``(x, y, z)`` becomes ``(x, -y, -z)``, the pelvis ``-x``."""
        flip = np.array([1.0, -1.0, -1.0], dtype=self.body_pose.dtype)
        metadata = dict(self.metadata, mirrored=not self.metadata.get("mirrored", False))
        return replace(
            self,
            body_pose=mirror_body_pose(self.body_pose),
            global_orient=self.global_orient * flip,
            pelvis=self.pelvis * np.array([-1.0, 1.0, 1.0], dtype=self.pelvis.dtype),
            metadata=metadata,
        )


# --------------------------------------------------------------------------- building


def _manifest(data_dir: Path) -> dict[str, dict[str, str]]:
    """MANIFEST.csv rows by file path (relative to ``data_dir``), if there is one."""
    path = data_dir / "MANIFEST.csv"
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as handle:
        return {row["file"]: row for row in csv.DictReader(handle) if row.get("file")}


def subject_of(relative: str, manifest_row: dict[str, str] | None = None) -> str:
    """The capture subject of a file: MANIFEST ``subject``, else ``NN`` of ``NN_MM.bvh`` (as an
    integer string, so "002_01" and "02_01" agree), else its folder's name."""
    if manifest_row and manifest_row.get("subject", "").strip():
        value = manifest_row["subject"].strip()
        return str(int(value)) if value.isdigit() else value
    path = Path(relative)
    head, _, tail = path.stem.partition("_")
    if head.isdigit() and tail[:1].isdigit():
        return str(int(head))
    return path.parent.name or path.stem


def _software_version() -> str:
    try:
        return f"bodyserve {version('bodyserve')}, mocap dataset v{DATASET_VERSION}"
    except Exception:  # not installed as a package: the source tree's version is unknown
        return f"bodyserve (source), mocap dataset v{DATASET_VERSION}"


@dataclass
class _Piece:
    clip: int
    subject: str
    motion: BodyMotion
    frames: np.ndarray


def _load_motion(path: Path, retargeter: Retargeter) -> BodyMotion:
    if path.suffix.lower() == ".bvh":
        return retargeter(read_bvh(path))

    return read_amass(path)


def build_dataset(
    data_dir: str | Path,
    fps: float = DEFAULT_FPS,
    valid_subjects: Sequence[str] = DEFAULT_VALID_SUBJECTS,
    progress: Callable[[int, int, str], None] | None = None,
    skeleton: BodySkeleton | None = None,
    cleaning: CleaningConfig = CleaningConfig(),
    inside_only: bool = False,
) -> PoseDataset:
    """Build the pose dataset from every ``.bvh`` and AMASS ``.npz`` under ``data_dir``.

    Args:
        data_dir: folder walked recursively (``MANIFEST.csv`` at its top is used when present).
        fps: the common frame rate every clip is resampled to.
        valid_subjects: subjects (as in :func:`subject_of`) whose frames form the "valid" split.
        progress: called as ``progress(done, total, relative_path)`` after each file.
        inside_only: skip files whose real path (links followed) leaves ``data_dir`` (a
            dataset's input folder, named by a request, never reads data from elsewhere).
        skeleton: the body to retarget onto (default: Anny's neutral body).
        cleaning: thresholds of the cleaning steps.

    Raises:
        FileNotFoundError: ``data_dir`` is not a folder. ValueError: nothing usable in it.
    """
    # Thousands of 3x3 matrices per call: torch's intra-op threads only add overhead here (up to
    # 20x on a busy machine), so run single-threaded and restore the setting afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _build(data_dir, fps, valid_subjects, progress, skeleton, cleaning, inside_only)
    finally:
        torch.set_num_threads(threads)


def _build(
    data_dir: str | Path,
    fps: float,
    valid_subjects: Sequence[str],
    progress: Callable[[int, int, str], None] | None,
    skeleton: BodySkeleton | None,
    cleaning: CleaningConfig,
    inside_only: bool,
) -> PoseDataset:

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"mocap folder {data_dir} does not exist")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    files = sorted(
        p
        for p in data_dir.rglob("*")
        if p.is_file()
        and p.suffix.lower() in (".bvh", ".npz")
        and (not inside_only or resolves_inside(p, data_dir))
    )
    if not files:
        raise ValueError(f"no .bvh or .npz files under {data_dir}")
    skeleton = skeleton or BodySkeleton.neutral()
    skeleton = skeleton.to(torch.float64)
    retargeter = Retargeter(skeleton)
    manifest = _manifest(data_dir)
    valid = {str(s) for s in valid_subjects}

    pieces: list[_Piece] = []
    clips: list[str] = []
    report: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    hashes = []
    for done, path in enumerate(files, 1):
        relative = path.relative_to(data_dir).as_posix()
        hashes.append(f"{relative}\t{file_sha256(path)}")
        try:
            motion = _load_motion(path, retargeter)
            row = manifest.get(relative)
            listed = _float_or_none(row.get("cmu_listed_fps") if row else None)
            true_fps, why = capture_fps(motion, skeleton, motion.fps, listed)
            start, stop = synthetic_frames(motion, true_fps, cleaning)
            breaks = glitches(motion, skeleton, true_fps, cleaning)
            glitch_share = (
                float(breaks[start : max(start, stop - 1)].mean()) if stop > start + 1 else 0
            )
            if glitch_share > cleaning.max_glitch_fraction:
                raise ValueError(
                    f"{glitch_share:.0%} of its frame transitions are glitches (broken capture)"
                )
            keep = np.zeros(motion.frame_count, dtype=bool)
            keep[start:stop] = True
            pieces_here = runs(keep, breaks, max(2, round(cleaning.min_run_s * true_fps)))
            if not pieces_here:
                raise ValueError(f"no clean piece of at least {cleaning.min_run_s} s")
        except Exception as error:  # one bad file must not sink the build: say which and why
            reason = f"{type(error).__name__}: {error}"
            warnings.warn(f"skipping {path}: {reason}", stacklevel=3)
            skipped[relative] = reason
            if progress:
                progress(done, len(files), relative)
            continue
        clip = len(clips)
        clips.append(relative)
        subject = subject_of(relative, manifest.get(relative))
        frames_out = 0
        for a, b in pieces_here:
            resampled, k = resample(motion, true_fps, a, b, fps)
            pieces.append(_Piece(clip, subject, resampled, k))
            frames_out += len(k)
        report[relative] = {
            "kind": motion.kind,
            "subject": subject,
            "fps": round(true_fps, 3),
            "fps_decision": why,
            "source_frames": motion.frame_count,
            "dropped_start": start,
            "dropped_end": motion.frame_count - stop,
            "glitches": int(breaks[start : max(start, stop - 1)].sum()),
            "pieces": len(pieces_here),
            "frames": frames_out,
            "take": _take(relative, subject),
        }
        if np.ptp(motion.pelvis[start:stop, 1]) < 1e-3 < np.ptp(motion.pelvis[start:stop, 0]):
            report[relative]["note"] = "pelvis height constant: the converter dropped it"
        if progress:
            progress(done, len(files), relative)

    if not pieces:
        raise ValueError(
            f"nothing usable under {data_dir}: all {len(files)} files were skipped "
            f"(first reasons: {list(skipped.items())[:3]})"
        )
    dataset = _assemble(pieces, clips, valid, fps)
    kinds = Counter(r["kind"] for r in report.values())
    frames_per_kind: Counter[str] = Counter()
    for r in report.values():
        frames_per_kind[r["kind"]] += r["frames"]
    dataset.metadata = {
        "source_dir": str(data_dir.resolve()),
        "fps": fps,
        "valid_subjects": sorted(valid),
        "files_per_family": dict(kinds),
        "frames_per_family": dict(frames_per_kind),
        "frames_per_split": {s: int((dataset.split == s).sum()) for s in ("train", "valid")},
        "inputs_sha256": hashlib.sha256("\n".join(hashes).encode()).hexdigest(),
        "input_count": len(files),
        "software_version": _software_version(),
        "cleaning": cleaning.__dict__,
        "skipped": skipped,
        # The same capture converted twice (cgspeed and iClone): same subject, so same split.
        "same_take_in_several_files": {
            take: files for take, files in _takes(report).items() if len(files) > 1
        },
        "files": report,
        "frame": "SMPL-X world: Y up, body facing +Z at zero global_orient; metres",
        "licence": (
            "The data used in this project was obtained from mocap.cs.cmu.edu. The database "
            "was created with funding from NSF EIA-0196217."
        ),
    }
    return dataset


def _take(relative: str, subject: str) -> str:
    """``subject_trial`` for ``NN_MM`` file names (the CMU take), else the file's stem."""
    head, _, tail = Path(relative).stem.partition("_")
    trial = tail.split("_")[0]
    return f"{subject}_{int(trial)}" if head.isdigit() and trial.isdigit() else Path(relative).stem


def _takes(report: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    takes: dict[str, list[str]] = {}
    for relative, entry in report.items():
        takes.setdefault(entry["take"], []).append(relative)
    return takes


def _float_or_none(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _assemble(pieces: list[_Piece], clips: list[str], valid: set[str], fps: float) -> PoseDataset:
    subjects = np.concatenate([np.full(len(p.frames), p.subject) for p in pieces])
    return PoseDataset(
        body_pose=np.concatenate([p.motion.body_pose for p in pieces]).astype(np.float32),
        global_orient=np.concatenate([p.motion.global_orient for p in pieces]).astype(np.float32),
        pelvis=np.concatenate([p.motion.pelvis for p in pieces]).astype(np.float32),
        subject=subjects.astype(str),
        clip=np.concatenate([np.full(len(p.frames), p.clip) for p in pieces]).astype(np.int32),
        frame=np.concatenate([p.frames for p in pieces]).astype(np.int32),
        split=np.where(np.isin(subjects, sorted(valid)), "valid", "train"),
        clips=np.asarray(clips, dtype=str),
        fps=float(fps),
    )
