"""Artifact storage: uploads and results of jobs, by job id and file name.

A local directory by default; the :class:`ArtifactStore` protocol is what an S3-compatible
store implements (put/get/exists/delete by key). Names are validated so that no key can escape
its job's folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

# Matched whole (fullmatch): "$" would also accept a trailing newline.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_JOB_ID = re.compile(r"[A-Za-z0-9-]{8,64}")


class ArtifactNotFound(KeyError):
    pass


def check_name(name: str) -> str:
    """An artifact name: letters, digits, '.', '_', '-'; no path separators, no leading dot."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"invalid artifact name {name!r}")
    return name


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all: a temporary file beside it, renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's contents (hex), read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolves_inside(path: Path, folder: Path) -> bool:
    """Whether ``path``'s real location (links followed) lies inside ``folder``'s: a file of a
    user's input folder that links elsewhere must not bring in data from outside it."""
    return path.resolve().is_relative_to(folder.resolve())


def check_job_id(job_id: str) -> str:
    if not _JOB_ID.fullmatch(job_id):
        raise ValueError(f"invalid job id {job_id!r}")
    return job_id


class ArtifactStore(Protocol):
    def put(self, job_id: str, name: str, data: bytes) -> None: ...

    def get(self, job_id: str, name: str) -> bytes: ...

    def exists(self, job_id: str, name: str) -> bool: ...

    def delete_job(self, job_id: str) -> None: ...


class LocalArtifactStore:
    """Files under ``root/<job_id>/<name>``, written atomically (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, job_id: str, name: str) -> Path:
        return self.root / check_job_id(job_id) / check_name(name)

    def put(self, job_id: str, name: str, data: bytes) -> None:
        write_atomically(self._path(job_id, name), data)

    def get(self, job_id: str, name: str) -> bytes:
        path = self._path(job_id, name)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise ArtifactNotFound(name) from exc

    def exists(self, job_id: str, name: str) -> bool:
        return self._path(job_id, name).is_file()

    def delete_job(self, job_id: str) -> None:
        shutil.rmtree(self.root / check_job_id(job_id), ignore_errors=True)
