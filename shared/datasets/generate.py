"""Make a synthetic dataset chunk by chunk: the work of every dataset worker and of the CLI.

A dataset of ``count`` samples is ``spec.chunks`` chunks of ``shard_size`` samples; chunk ``k``
makes shard ``k`` (:mod:`shared.datasets.shards`). :meth:`DatasetMaker.make_chunk` is idempotent:
a chunk whose shard and sidecar are already stored and agree is not made again, and making it
again anyway gives the same bytes. So a chunk can be retried after any failure, by any worker,
and the dataset still holds exactly ``count`` samples, each once. :meth:`DatasetMaker.finish`
writes the index, the card and the contact sheet from what the chunks stored.

Per batch of samples: draw poses, shapes and cameras (:mod:`shared.datasets.sampling`), pose
and place the bodies (:mod:`shared.datasets.bodies`), then per sample draw the appearance,
render (:func:`shared.render.scene.render_scene`), label and encode.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from shared.datasets import sampling
from shared.datasets.bodies import (
    COCO_IN_MEDIAPIPE,
    PlacedBodies,
    keypoint_visibility,
    place_bodies,
    project,
)
from shared.datasets.card import contact_sheet, dataset_card
from shared.datasets.shards import (
    ShardInfo,
    check_shard,
    encode_sample,
    pack_shard,
    samples_from_bytes,
    sidecar_name,
)
from shared.datasets.spec import (
    PHENOTYPES,
    DatasetSpec,
    resolve_input_folder,
)
from shared.render import appearance
from shared.render.backgrounds import Backgrounds
from shared.render.parts import BODY_PARTS, anny_vertex_parts
from shared.render.scene import SceneBody, render_scene
from shared.settings import get_settings
from shared.storage import check_name, write_atomically

BATCH = 32  # bodies posed per Anny pass
CONTACT_SHEET_IMAGES = 48
INDEX_NAME = "index.json"
CARD_NAME = "card.json"
CONTACT_SHEET_NAME = "contact_sheet.png"
DIGITS = 6

Progress = Callable[[int], None]  # samples of this chunk made so far
# Paints a sample's image following its body's depth: (H, W) metres (0: none), seed -> RGB.
Painter = Callable[[np.ndarray, int], np.ndarray]


class Sink(Protocol):
    """Where a dataset's files go: an artifact store's job folder, or a plain folder."""

    def put(self, name: str, data: bytes) -> None: ...

    def get(self, name: str) -> bytes: ...

    def exists(self, name: str) -> bool: ...


class FolderSink:
    """Files in a local folder, written atomically (the CLI's output)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def put(self, name: str, data: bytes) -> None:
        write_atomically(self.folder / check_name(name), data)

    def get(self, name: str) -> bytes:
        return (self.folder / name).read_bytes()

    def exists(self, name: str) -> bool:
        return (self.folder / name).is_file()


@dataclass
class ChunkReport:
    info: ShardInfo
    made: bool  # False: the stored shard was already complete
    seconds: float


@dataclass
class Timings:
    """Seconds per stage, summed over a chunk (for the benchmark)."""

    draw: float = 0.0
    pose: float = 0.0
    render: float = 0.0
    label: float = 0.0
    encode: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)


def _round(array: np.ndarray, decimals: int = DIGITS) -> list[Any]:
    """Nested lists of rounded numbers; rows holding NaN (not labelled) become ``None``."""
    values = np.round(np.asarray(array, dtype=np.float64), decimals)
    if values.ndim == 2 and np.isnan(values).any():
        return [None if np.isnan(row).any() else row.tolist() for row in values]
    rounded: list[Any] = values.tolist()
    return rounded


def sample_labels(
    index: int,
    bodies: PlacedBodies,
    row: int,
    mask: np.ndarray,
    depth: np.ndarray,
    size: int,
) -> dict[str, Any]:
    """The labels of sample ``index`` (row ``row`` of ``bodies``), its mask and depth drawn."""
    camera = bodies.intrinsics[row]
    keypoints3d = bodies.keypoints3d[row]
    pixels = project(keypoints3d, camera)
    visible = keypoint_visibility(keypoints3d, pixels, np.where(mask, 0, -1), depth, 0)
    # Not labelled (Anny has no eye or mouth corners): [0, 0, 0], as COCO writes unlabelled.
    mediapipe = np.concatenate([np.nan_to_num(pixels, nan=0.0), visible[:, None]], 1)
    rows, cols = np.nonzero(mask)
    bbox = [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1]
    smplx = {name: _round(value[row]) for name, value in bodies.smplx.items()}
    return {
        "index": index,
        "image_size": [size, size],
        "camera": dict(zip(("fx", "fy", "cx", "cy"), _round(camera), strict=True)),
        "keypoints2d": {
            "coco17": _round(mediapipe[COCO_IN_MEDIAPIPE], 3),
            "mediapipe33": _round(mediapipe, 3),
        },
        "keypoints3d": {"mediapipe33": _round(keypoints3d)},
        "joints3d": _round(bodies.joints3d[row]),
        "smplx": smplx,
        "anny": {
            "pose": _round(bodies.anny_pose[row]),
            "transl": _round(bodies.anny_transl[row]),
            "phenotype": dict(zip(PHENOTYPES, _round(bodies.phenotype[row]), strict=True)),
        },
        "bbox": bbox,
    }


class DatasetMaker:
    """Makes the chunks of one dataset spec (one per worker process and dataset).

    ``prior``: draws prior poses (the worker passes its inference backend's pose prior); needed
    for the ``prior`` pose source only. ``cache_dir``: where ingested mocap poses are kept.
    ``painter``: for generator ``diffusion`` (:func:`shared.diffusion.loop.depth_painter`).
    """

    def __init__(
        self,
        spec: DatasetSpec,
        prior: sampling.PriorSampler | None = None,
        cache_dir: Path | None = None,
        input_root: Path | None = None,
        painter: Painter | None = None,
    ) -> None:

        self.spec = spec
        self.prior = prior
        if spec.generator == "diffusion" and painter is None:
            raise ValueError("generator 'diffusion' needs a painter (the diffusion pipelines)")
        self.painter = painter
        self.cache_dir = cache_dir
        self.input_root = input_root
        self.vertex_parts = anny_vertex_parts()
        self._mocap: np.ndarray | None = None
        self._backgrounds: Backgrounds | None = None
        self.timings = Timings()

    # --- inputs ----------------------------------------------------------------------------

    def _mocap_poses(self) -> np.ndarray | None:
        if self.spec.poses.source != "mocap":
            return None
        if self._mocap is None:
            folder = resolve_input_folder(
                self.spec.poses.folder or "mocap", "poses.folder", self.input_root
            )
            cache = self.cache_dir or (get_settings().var_dir / "cache")
            self._mocap = sampling.mocap_body_poses(folder, cache)
        return self._mocap

    def _backgrounds_source(self) -> Backgrounds:
        if self._backgrounds is None:
            folder = None
            if self.spec.backgrounds.source == "folder":
                assert self.spec.backgrounds.folder is not None
                folder = resolve_input_folder(
                    self.spec.backgrounds.folder, "backgrounds.folder", self.input_root
                )
            self._backgrounds = Backgrounds(folder)
        return self._backgrounds

    # --- samples ---------------------------------------------------------------------------

    def samples(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """The encoded records of samples ``indices`` (any indices: the result depends on each
        index alone)."""

        spec, size = self.spec, self.spec.resolution
        started = time.perf_counter()
        poses = sampling.draw_poses(spec, indices, self.prior, self._mocap_poses())
        shapes = sampling.draw_shapes(spec, indices)
        cameras = sampling.draw_cameras(spec, indices)
        seeds = sampling.appearance_seeds(spec, indices)
        backgrounds = self._backgrounds_source()
        posed_at = time.perf_counter()
        bodies = place_bodies(poses, shapes, cameras, size)
        self.timings.draw += posed_at - started
        self.timings.pose += time.perf_counter() - posed_at

        records = []
        for row, index in enumerate(indices):
            t0 = time.perf_counter()
            generator = np.random.default_rng(int(seeds[row]))
            material = appearance.sample_anny_material(generator)
            lighting = appearance.sample_lighting(generator, spec.lighting)
            background = backgrounds.sample(generator, size, size)
            scene = render_scene(
                [SceneBody(bodies.vertices[row], bodies.faces, self.vertex_parts, material)],
                tuple(bodies.intrinsics[row]),
                height=size,
                width=size,
                lighting=lighting,
                background=background,
            )
            rgb = scene.rgb
            if self.painter is not None:
                # Diffusion-HPC: the image follows the body's depth; the labels are the body's.
                rgb = self.painter(scene.depth, int(seeds[row] % (2**31)))
            t1 = time.perf_counter()
            mask = scene.mask == 0
            labels = sample_labels(index, bodies, row, mask, scene.depth, size)
            t2 = time.perf_counter()
            records.append(
                encode_sample(index, rgb, mask, scene.depth, scene.parts, labels, spec.image_format)
            )
            self.timings.render += t1 - t0
            self.timings.label += t2 - t1
            self.timings.encode += time.perf_counter() - t2
        return records

    # --- chunks ----------------------------------------------------------------------------

    def stored_chunk(self, sink: Sink, chunk: int) -> ShardInfo | None:
        """The chunk's shard record when its shard and sidecar are stored and agree."""
        name = self.spec.shard_name(chunk)
        if not (sink.exists(name) and sink.exists(sidecar_name(name))):
            return None
        info = check_shard(sink.get(name), sink.get(sidecar_name(name)))
        expected = self.spec.chunk_range(chunk)
        if info is None or info.samples != len(expected) or info.first_index != expected.start:
            return None
        return info

    def make_chunk(self, sink: Sink, chunk: int, progress: Progress | None = None) -> ChunkReport:
        """Make chunk ``chunk`` into ``sink`` (or find it made). Idempotent."""
        started = time.perf_counter()
        existing = self.stored_chunk(sink, chunk)
        if existing is not None:
            return ChunkReport(existing, made=False, seconds=time.perf_counter() - started)
        indices = list(self.spec.chunk_range(chunk))
        records: list[dict[str, Any]] = []
        for start in range(0, len(indices), BATCH):
            records += self.samples(indices[start : start + BATCH])
            if progress is not None:
                progress(len(records))
        name = self.spec.shard_name(chunk)
        data, info = pack_shard(name, records)
        sink.put(name, data)
        # The sidecar last: a shard counts as made only once its sidecar says so.
        sink.put(sidecar_name(name), json.dumps(asdict(info), indent=1).encode())
        return ChunkReport(info, made=True, seconds=time.perf_counter() - started)

    # --- the end ---------------------------------------------------------------------------

    def finish(
        self,
        sink: Sink,
        prior_record: dict[str, Any] | None = None,
        stats: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Check every shard, then write the index, the card and the contact sheet.

        Raises ``RuntimeError`` naming the chunks whose shard is missing or damaged.
        """

        infos, broken = [], []
        for chunk in range(self.spec.chunks):
            info = self.stored_chunk(sink, chunk)
            if info is None:
                broken.append(chunk)
            else:
                infos.append(info)
        if broken:
            raise RuntimeError(f"chunks {broken} have no complete shard; make them again")
        total = sum(info.samples for info in infos)
        if total != self.spec.count:
            raise RuntimeError(f"the shards hold {total} samples, not {self.spec.count}")
        card = dataset_card(self.spec, infos, BODY_PARTS, prior_record, stats)
        sink.put(CARD_NAME, json.dumps(card, indent=1).encode())
        sink.put(
            INDEX_NAME,
            json.dumps({"shards": [info.name for info in infos], "count": total}).encode(),
        )
        images: list[np.ndarray] = []
        keypoints: list[np.ndarray] = []
        for info in infos:
            for sample in samples_from_bytes(sink.get(info.name)):
                images.append(sample["rgb"])
                keypoints.append(np.asarray(sample["labels"]["keypoints2d"]["coco17"]))
                if len(images) >= CONTACT_SHEET_IMAGES:
                    break
            if len(images) >= CONTACT_SHEET_IMAGES:
                break
        sink.put(CONTACT_SHEET_NAME, contact_sheet(images, keypoints))
        return card
