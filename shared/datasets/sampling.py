"""The random choices behind each sample, as functions of ``(spec, index)`` alone.

Every draw of sample ``i`` comes from its own generators, ``numpy.random.default_rng([seed,
i, stream])``, one stream per kind of choice (pose, shape, camera, appearance). So a sample is
the same in whichever chunk, worker or retry it is made, and changing, say, the pose source
leaves every camera as it was.

Poses:

- ``prior``: the served pose prior's ancestral sampler, one seed per sample (a sample outside
  the anatomical limits is drawn again with the next seed of its stream, a few times at most);
- ``mocap``: a uniformly drawn frame of the pose dataset built from a folder of BVH / AMASS files;
- ``uniform``: per joint, a rotation about a uniform random axis with an angle uniform up to
  the joint's limit (hinges: flexion only), redrawn while outside the limits.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import numpy as np

from shared.bodies.base import ANNY_TO_CAMERA
from shared.bodies.limits import HINGES, MAX_ANGLE_DEG, limit_violations
from shared.bodies.smplx_convention import SMPLX_BODY_JOINTS
from shared.datasets.spec import PHENOTYPES, DatasetSpec
from shared.inference.contracts import InferenceBackend, PriorInputs
from shared.mocap.dataset import build_dataset
from shared.prior.rows import PriorTask
from shared.storage import resolves_inside, write_atomically

PRIOR_STEPS = 25
MAX_REDRAWS = 6

# Draws a batch of prior samples, one per seed: (B,) int64 seeds -> (B, 21, 3) body_pose.
PriorSampler = Callable[[np.ndarray], np.ndarray]


def prior_sampler(backend: InferenceBackend) -> PriorSampler:
    """Dataset poses from ``backend``'s pose prior: the SDE sampler (more varied than the ODE),
    :data:`PRIOR_STEPS` steps, one row per seed."""

    def sample(seeds: np.ndarray) -> np.ndarray:
        inputs = PriorInputs(int(PriorTask.GENERATE), seeds, PRIOR_STEPS, sampler="sde")
        return backend.prior(inputs).body_pose

    return sample


class Stream(IntEnum):
    pose = 0
    shape = 1
    camera = 2
    appearance = 3


def rng(seed: int, index: int, stream: Stream) -> np.random.Generator:
    return np.random.default_rng([seed, index, int(stream)])


@dataclass
class CameraDraw:
    """Where the camera is and how it sees the body (per sample; angles in radians)."""

    fov: np.ndarray  # (B,) vertical field of view
    elevation: np.ndarray  # (B,) camera above the body (+)
    heading: np.ndarray  # (B,) body turned about its vertical axis (0: facing the camera)
    roll: np.ndarray  # (B,)
    fill: np.ndarray  # (B,) share of the image height the body's box spans
    offset: np.ndarray  # (B, 2) centre jitter, in image sides

    def intrinsics(self, size: int) -> np.ndarray:
        """(B, 4) fx, fy, cx, cy of square ``size`` images (pixel centres, OpenCV)."""
        focal = 0.5 * size / np.tan(self.fov / 2)
        centre = np.full_like(focal, (size - 1) / 2)
        return np.stack([focal, focal, centre, centre], 1)

    def rotations(self) -> np.ndarray:
        """(B, 3, 3) Anny's world (Z up, facing -Y) -> the camera (OpenCV): the body turned by
        ``heading``, seen from ``elevation`` above, the camera rolled by ``roll``."""

        def about(axis: int, angle: np.ndarray) -> np.ndarray:
            c, s = np.cos(angle), np.sin(angle)
            out = np.zeros((angle.shape[0], 3, 3))
            i, j = [k for k in range(3) if k != axis]
            out[:, axis, axis] = 1.0
            out[:, i, i], out[:, i, j], out[:, j, i], out[:, j, j] = c, -s, s, c
            return out

        heading = about(2, self.heading)  # about Anny's up axis
        pitch = about(0, self.elevation)  # camera x: a camera above sees the top tilted away
        roll = about(2, self.roll)  # camera z: the optical axis
        return np.asarray(roll @ pitch @ ANNY_TO_CAMERA[None] @ heading)


def _uniform(generator: np.random.Generator, pair: Sequence[float]) -> float:
    return float(generator.uniform(pair[0], pair[1])) if pair[1] > pair[0] else float(pair[0])


def draw_shapes(spec: DatasetSpec, indices: Sequence[int]) -> np.ndarray:
    """(B, 6) Anny phenotypes (gender, age, muscle, weight, height, proportions)."""
    bounds = spec.shapes.bounds()
    rows = []
    for i in indices:
        g = rng(spec.seed, i, Stream.shape)
        rows.append([_uniform(g, bounds[name]) for name in PHENOTYPES])
    return np.asarray(rows, dtype=np.float32)


def draw_cameras(spec: DatasetSpec, indices: Sequence[int]) -> CameraDraw:
    c = spec.camera
    rows = []
    for i in indices:
        g = rng(spec.seed, i, Stream.camera)
        rows.append(
            [
                math.radians(_uniform(g, c.fov_deg)),
                math.radians(_uniform(g, c.elevation_deg)),
                math.radians(_uniform(g, c.heading_deg)),
                math.radians(_uniform(g, c.roll_deg)),
                _uniform(g, c.fill),
                g.uniform(-c.offset, c.offset),
                g.uniform(-c.offset, c.offset),
            ]
        )
    a = np.asarray(rows, dtype=np.float64).reshape(-1, 7)
    return CameraDraw(a[:, 0], a[:, 1], a[:, 2], a[:, 3], a[:, 4], a[:, 5:7])


def appearance_seeds(spec: DatasetSpec, indices: Sequence[int]) -> np.ndarray:
    """(B,) uint32 seeds for the renderer's appearance (skin, clothes, lights, background)."""
    return np.asarray(
        [rng(spec.seed, i, Stream.appearance).integers(2**32, dtype=np.uint64) for i in indices],
        dtype=np.uint64,
    )


# --------------------------------------------------------------------------- poses

_LIMIT = np.radians([MAX_ANGLE_DEG[name.split("_", 1)[-1]] for name in SMPLX_BODY_JOINTS])
_HINGE_AXIS = {SMPLX_BODY_JOINTS.index(name): np.asarray(axis) for name, axis in HINGES.items()}
# Uniform poses keep the spine, neck and head to a third of their range: a uniform 60 degree
# spine bend on each of three vertebrae folds the body in two, which no dataset asks for.
_UNIFORM_SCALE = np.asarray(
    [1 / 3 if name.split("_", 1)[-1].startswith(("spine", "neck")) else 1.0
     for name in SMPLX_BODY_JOINTS]
)  # fmt: skip


def _uniform_pose(g: np.random.Generator) -> np.ndarray:
    axis = g.normal(size=(21, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    angle = g.uniform(0.0, 1.0, size=21) * _LIMIT * _UNIFORM_SCALE
    pose: np.ndarray = axis * angle[:, None]
    for joint, hinge in _HINGE_AXIS.items():
        pose[joint] = hinge * g.uniform(0.0, _LIMIT[joint] * 0.9)  # flexion only
    return pose


def _seed_of(seed: int, index: int, attempt: int) -> int:
    return int(rng(seed, index, Stream.pose).integers(2**31 - 1, size=attempt + 1)[attempt])


def draw_poses(
    spec: DatasetSpec,
    indices: Sequence[int],
    prior: PriorSampler | None = None,
    mocap_poses: np.ndarray | None = None,
) -> np.ndarray:
    """(B, 21, 3) float32 SMPL-X body_pose per sample, from the spec's pose source."""
    source = spec.poses.source
    count = len(indices)
    if source == "mocap":
        if mocap_poses is None or not len(mocap_poses):
            raise ValueError("the mocap pose source needs the pose dataset's body poses")
        picks = [int(rng(spec.seed, i, Stream.pose).integers(len(mocap_poses))) for i in indices]
        return np.asarray(mocap_poses[picks], dtype=np.float32)
    if source == "uniform":
        poses = np.zeros((count, 21, 3))
        for row, i in enumerate(indices):
            g = rng(spec.seed, i, Stream.pose)
            for _ in range(MAX_REDRAWS * 10):
                poses[row] = _uniform_pose(g)
                if not limit_violations(poses[row : row + 1])[0]:
                    break
        return poses.astype(np.float32)
    if prior is None:
        raise ValueError("the prior pose source needs a prior sampler")
    poses = np.asarray(prior(np.asarray([_seed_of(spec.seed, i, 0) for i in indices])))
    for attempt in range(1, MAX_REDRAWS + 1):
        bad = np.flatnonzero(limit_violations(poses))
        if not len(bad):
            break
        seeds = np.asarray([_seed_of(spec.seed, indices[r], attempt) for r in bad])
        poses[bad] = prior(seeds)
    return poses.astype(np.float32)


def _usable(path: Path, folder: Path) -> bool:
    return path.is_file() and resolves_inside(path, folder)


def _folder_fingerprint(folder: Path) -> str:
    """A hash of the pose files under ``folder`` (names, sizes, modification times)."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in (".bvh", ".npz") and _usable(path, folder):
            stat = path.stat()
            digest.update(
                f"{path.relative_to(folder)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode()
            )
    return digest.hexdigest()[:20]


def mocap_body_poses(folder: Path, cache_dir: Path) -> np.ndarray:
    """(N, 21, 3) every body pose of the BVH / AMASS files under ``folder`` (both splits).

    Ingesting a folder takes a while (the shared CMU data: about a minute), so the poses are
    cached under ``cache_dir`` by the folder's fingerprint: the first chunk of a dataset builds
    them, the others (and later datasets) read them. Written atomically, so that two workers
    building at once is only wasted time.
    """

    cache = Path(cache_dir) / f"mocap-poses-{_folder_fingerprint(folder)}.npy"
    if cache.is_file():
        return np.asarray(np.load(cache))  # a .npy file: one array (np.load may give an npz)
    poses = np.asarray(build_dataset(folder, inside_only=True).body_pose, dtype=np.float32)
    buffer = io.BytesIO()
    np.save(buffer, poses)
    write_atomically(cache, buffer.getvalue())
    return poses
