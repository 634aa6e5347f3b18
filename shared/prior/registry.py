"""Published pose priors: the version folders of ``model_repository/pose_prior``.

Triton's layout, read without Triton::

    model_repository/
      pose_prior/
        config.pbtxt
        model.py          the python model: its one implementation, for every version
        1/  prior.pt  record.json  model.py -> ../model.py   (a link: Triton runs <N>/model.py)
        2/  ...
        .staging-*/       a version being published (hidden: Triton ignores it)
        .rejected/
          3-20250101T120000Z/   a version Triton refused, kept for inspection

A version counts once it holds ``prior.pt`` and a readable ``record.json`` (how it was trained);
what a version guarantees: docs/model_versions.md.
Folder names follow Triton's rule: a positive integer without a leading zero; anything else
is ignored. (Rejected versions stay inside the model folder: Triton started with
``--load-model=*`` takes every folder at the repository's root, hidden or not, for a model, and
one that fails to load keeps the server from ever being ready.)

Nothing here imports Triton, so in-process backends and other models (``body_fit``) read the
same versions that Triton serves.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.prior.model import PRIOR_FILENAME, PosePrior
from shared.settings import get_settings

if TYPE_CHECKING:
    import torch

MODEL_NAME = "pose_prior"
RECORD_FILENAME = "record.json"
MODEL_FILENAME = "model.py"
REJECTED_DIR = ".rejected"
_VERSION_NAME = re.compile(r"[1-9][0-9]*")


def default_model_dir() -> Path:
    """``<settings.model_repository>/pose_prior``."""

    return Path(get_settings().model_repository) / MODEL_NAME


def _model_dir(model_dir: str | Path | None) -> Path:
    return default_model_dir() if model_dir is None else Path(model_dir)


def list_versions(model_dir: str | Path | None = None) -> list[int]:
    """Every version folder's number, ascending (complete or not); [] when there is none."""
    folder = _model_dir(model_dir)
    if not folder.is_dir():
        return []
    return sorted(
        int(entry.name)
        for entry in folder.iterdir()
        if entry.is_dir() and _VERSION_NAME.fullmatch(entry.name)
    )


def read_record(version_dir: str | Path) -> dict[str, Any]:
    """The ``record.json`` of a version folder, as a dict.

    Raises ``FileNotFoundError`` when it is missing and ``ValueError`` when it is not a JSON
    object.
    """
    path = Path(version_dir) / RECORD_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {version_dir} is not a published version")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); republish this version") from exc
    if not isinstance(record, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(record).__name__}")
    return record


def is_published(version_dir: str | Path) -> bool:
    """True when the folder holds ``prior.pt`` and a readable ``record.json``."""
    folder = Path(version_dir)
    if not (folder / PRIOR_FILENAME).is_file():
        return False
    try:
        read_record(folder)
    except (OSError, ValueError):
        return False
    return True


def latest_version(model_dir: str | Path | None = None) -> int | None:
    """The newest published version (prior.pt and a valid record), or None."""
    folder = _model_dir(model_dir)
    for version in reversed(list_versions(folder)):
        if is_published(folder / str(version)):
            return version
    return None


def rejected_dirs(model_dir: str | Path | None = None) -> list[Path]:
    """The folders of versions Triton refused (``<model_dir>/.rejected/<N>-<time>``), oldest
    first."""
    rejected = _model_dir(model_dir) / REJECTED_DIR
    if not rejected.is_dir():
        return []
    return sorted((e for e in rejected.iterdir() if e.is_dir()), key=lambda e: e.stat().st_mtime)


def next_version(model_dir: str | Path | None = None) -> int:
    """The number the next published version gets: one more than the newest version folder.

    Every version folder counts, complete or not (an incomplete one is never overwritten). The
    number of a rejected version (moved to ``.rejected/``) is used again on purpose: Triton
    2.51 keeps a version that failed to load as UNAVAILABLE, which makes a strict-readiness
    server report not ready until a version of that number loads (or it restarts).
    """
    return max(list_versions(model_dir), default=0) + 1


def version_dir(model_dir: str | Path | None, version: int) -> Path:
    """``<model_dir>/<version>``."""
    if version < 1:
        raise ValueError(f"versions are positive integers, got {version}")
    return _model_dir(model_dir) / str(version)


def load_prior_version(
    model_dir: str | Path | None, version: int, map_location: str | torch.device = "cpu"
) -> PosePrior:
    """The prior of one published version (eval mode)."""

    folder = version_dir(model_dir, version)
    if not is_published(folder):
        raise FileNotFoundError(
            f"{folder} is not a published pose prior (needs {PRIOR_FILENAME} and "
            f"{RECORD_FILENAME}); publish one with `bodyserve train prior`"
        )
    return PosePrior.load(folder / PRIOR_FILENAME, map_location=map_location)


class PublishedPrior:
    """The newest published prior of a model folder, for in-process users (the fitter, the
    in-process backend): loaded once, and again only when a newer version is published (a
    folder listing per call otherwise), as Triton's version policy serves the newest. A version
    that fails to load is logged and skipped: the one in use stays."""

    def __init__(self, model_dir: str | Path | None = None) -> None:
        self.model_dir = _model_dir(model_dir)
        self._current: tuple[int, PosePrior] | None = None

    def current(self) -> tuple[int, PosePrior] | None:
        """``(version, prior)`` of the newest loadable version, or None when none is."""
        version = latest_version(self.model_dir)
        if version is not None and (self._current is None or self._current[0] != version):
            try:
                self._current = (version, load_prior_version(self.model_dir, version))
            except Exception as exc:  # whatever is wrong with the file
                logging.getLogger(__name__).error(
                    "pose prior version %s in %s does not load: %s", version, self.model_dir, exc
                )
        return self._current


def load_latest_prior(
    model_dir: str | Path | None = None, map_location: str | torch.device = "cpu"
) -> PosePrior:
    """The newest published prior of ``model_dir`` (default: the settings' model repository).

    Raises ``FileNotFoundError`` with what to do when none is published.
    """
    folder = _model_dir(model_dir)
    version = latest_version(folder)
    if version is None:
        raise FileNotFoundError(
            f"no published pose prior in {folder}: train and publish one with "
            f"`bodyserve train prior --data <mocap dir> --out <run dir> --repository "
            f"{folder.parent}`"
        )
    return load_prior_version(folder, version, map_location)
