"""What the benchmarks share: torch threads, the pose prior to test, the mocap split, Procrustes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer

from shared.mocap.dataset import DEFAULT_VALID_SUBJECTS, PoseDataset, build_dataset
from shared.prior import PosePrior
from shared.prior.registry import default_model_dir, latest_version, version_dir
from shared.settings import get_settings

# The command-line options every mocap benchmark takes.
JsonOption = Annotated[Path | None, typer.Option("--json", help="Write the figures here.")]
PriorOption = Annotated[Path | None, typer.Option("--prior", help="prior.pt or its folder.")]
ValidSubjectsOption = Annotated[str, typer.Option(help="Comma-separated subject ids.")]
DatasetCacheOption = Annotated[
    Path | None, typer.Option(help="Reuse/write the ingested dataset here (.npz).")
]
DEFAULT_SUBJECTS = ",".join(DEFAULT_VALID_SUBJECTS)


def subject_list(valid_subjects: str) -> tuple[str, ...]:
    """``"6, 9,16"`` -> ``("6", "9", "16")``."""
    return tuple(s.strip() for s in valid_subjects.split(",") if s.strip())


def apply_torch_threads() -> int:
    """Use ``BODYSERVE_TORCH_THREADS`` when set; returns the threads torch now has."""
    threads = get_settings().torch_threads
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def load_prior(path: Path | None) -> tuple[PosePrior, str]:
    """The prior at ``path`` (``prior.pt`` or its folder), else the newest published one."""
    if path is not None:
        return PosePrior.load(path), str(path)
    model_dir = default_model_dir()
    version = latest_version(model_dir)
    if version is None:
        raise typer.BadParameter(f"no published prior in {model_dir}; train one or pass --prior")
    return PosePrior.load(version_dir(model_dir, version)), f"pose_prior version {version}"


def load_split(
    data: Path, subjects: tuple[str, ...], cache: Path | None = None
) -> tuple[PoseDataset, PoseDataset]:
    """(train, valid) of the mocap under ``data``, split by subject as the trainer does;
    ``cache``: reuse (or write) the ingested dataset there."""
    if cache is not None and cache.exists():
        dataset = PoseDataset.load(cache)
    else:
        dataset = build_dataset(data, valid_subjects=subjects)
        if cache is not None:
            dataset.save(cache)
    train, valid = dataset.subset("train"), dataset.subset("valid")
    if len(valid.body_pose) == 0:
        raise typer.BadParameter(f"no frames of the validation subjects {subjects} in {data}")
    return train, valid


def procrustes_aligned(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(B, J, 3) predicted similarity-aligned to truth per row."""
    p = predicted - predicted.mean(1, keepdims=True)
    t = truth - truth.mean(1, keepdims=True)
    u, s, vt = np.linalg.svd(np.einsum("bji,bjk->bik", p, t))
    sign = np.sign(np.linalg.det(np.einsum("bij,bjk->bik", u, vt)))
    s[:, -1] *= sign
    u[:, :, -1] *= sign[:, None]
    rotation = np.einsum("bij,bjk->bik", u, vt)
    scale = s.sum(1) / np.square(p).sum((1, 2))
    return scale[:, None, None] * np.einsum("bji,bik->bjk", p, rotation) + truth.mean(
        1, keepdims=True
    )
