"""WebDataset shards: one tar per chunk, written atomically, checked when read back.

Each sample of a shard is five files sharing the key ``<index:08d>``:

- ``rgb.jpg`` (or ``rgb.png``): the image, 8-bit RGB;
- ``mask.png``: 8-bit, 255 where the person is, 0 elsewhere;
- ``depth.png``: 16-bit, the camera-frame depth of the visible surface in millimetres, 0 where
  there is no body (metres = value / 1000; up to 65.5 m);
- ``parts.png``: 8-bit body-part labels, 0 background (the table is in the dataset card);
- ``json``: the labels (see :func:`shared.datasets.generate.sample_labels`).

A shard is packed in memory and stored whole (the artifact store writes atomically), then its
``.json`` sidecar (count, first index, size, SHA-256): a shard counts as made only when its
sidecar exists and matches it. Re-making a chunk rewrites its shard byte for byte (the same
samples, the same tar member times), which is what makes a chunk's retry harmless.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from PIL import Image

SAMPLE_SUFFIXES: tuple[str, ...] = ("mask.png", "depth.png", "parts.png", "json")
DEPTH_SCALE = 1000.0  # depth.png units per metre
JPEG_QUALITY = 92


class ShardError(ValueError):
    """A shard that is missing, truncated or not what its sidecar says."""


@dataclass
class ShardInfo:
    name: str
    samples: int
    first_index: int
    bytes: int
    sha256: str


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    # compress_level 1: a third of the default's time, files a few per cent larger.
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def encode_sample(
    index: int,
    rgb: np.ndarray,
    mask: np.ndarray,
    depth: np.ndarray,
    parts: np.ndarray,
    labels: Mapping[str, Any],
    image_format: str = "jpg",
) -> dict[str, Any]:
    """One sample as a WebDataset record: ``__key__`` and encoded files."""
    buffer = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    if image_format == "jpg":
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(buffer, format="PNG", compress_level=1)
    millimetres = np.clip(np.rint(depth * DEPTH_SCALE), 0, np.iinfo(np.uint16).max)
    return {
        "__key__": f"{index:08d}",
        f"rgb.{image_format}": buffer.getvalue(),
        "mask.png": _png(np.where(mask, 255, 0).astype(np.uint8)),
        "depth.png": _png(millimetres.astype(np.uint16)),
        "parts.png": _png(parts.astype(np.uint8)),
        "json": json.dumps(labels, separators=(",", ":")).encode(),
    }


def pack_shard(name: str, samples: Iterable[Mapping[str, Any]]) -> tuple[bytes, ShardInfo]:
    """``samples`` (records of :func:`encode_sample`) as the bytes of the tar ``name``."""

    buffer = io.BytesIO()
    # mtime fixed: the same samples give the same bytes, whenever they are made.
    writer = wds.TarWriter(buffer, mtime=0.0)
    count, first = 0, -1
    for sample in samples:
        writer.write(dict(sample))
        if first < 0:
            first = int(sample["__key__"])
        count += 1
    writer.close()
    data = buffer.getvalue()
    return data, ShardInfo(name, count, first, len(data), hashlib.sha256(data).hexdigest())


def sidecar_name(shard: str) -> str:
    return shard.removesuffix(".tar") + ".json"


def check_shard(data: bytes, sidecar: bytes) -> ShardInfo | None:
    """The sidecar's record when ``data`` is the complete shard it describes, else None."""
    try:
        info = ShardInfo(**json.loads(sidecar))
    except (ValueError, TypeError):
        return None
    if info.bytes != len(data) or info.sha256 != hashlib.sha256(data).hexdigest():
        return None
    return info


def decode_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A raw record (``__key__`` and encoded files) as arrays: ``rgb`` (H, W, 3) uint8,
    ``mask`` bool, ``depth`` float32 metres, ``parts`` uint8, ``labels`` dict, ``key``."""
    image_key = "rgb.jpg" if "rgb.jpg" in record else "rgb.png"
    missing = [s for s in (image_key, *SAMPLE_SUFFIXES) if s not in record]
    if missing:
        raise ShardError(f"sample {record.get('__key__')} lacks {missing}")
    return {
        "key": record["__key__"],
        "rgb": np.asarray(Image.open(io.BytesIO(record[image_key])).convert("RGB")),
        "mask": np.asarray(Image.open(io.BytesIO(record["mask.png"]))) > 127,
        "depth": np.asarray(Image.open(io.BytesIO(record["depth.png"])), dtype=np.float32)
        / DEPTH_SCALE,
        "parts": np.asarray(Image.open(io.BytesIO(record["parts.png"]))),
        "labels": json.loads(record["json"]),
    }


def iter_samples(path: Path) -> Iterator[dict[str, Any]]:
    """The samples of one shard file, read with the webdataset library, decoded."""

    for record in wds.WebDataset(str(path), shardshuffle=False, empty_check=False):
        yield decode_record(record)


def samples_from_bytes(data: bytes) -> Iterator[dict[str, Any]]:
    """The samples of one shard held in memory, decoded (members grouped by key, in order)."""
    record: dict[str, Any] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            key, _, suffix = member.name.partition(".")
            if record and record["__key__"] != key:
                yield decode_record(record)
                record = {}
            handle = tar.extractfile(member)
            if handle is not None:
                record["__key__"] = key
                record[suffix] = handle.read()
    if record:
        yield decode_record(record)


def tar_members(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()
