"""Retention: job records expire in Redis, artifacts on disk follow them; deletion on request.

A job's record and result expire ``result_ttl_s`` after it ends (``JobStore.finish``); its
folder in the artifact store (the upload and the outputs) is deleted by :func:`cleanup` once the
record is gone, but never while the folder is younger than ``cleanup_grace_s`` (a folder written
just before its record, or while a record is being replaced, is never touched). The workers run
:func:`cleanup` every ``cleanup_interval_s``: each worker asks every minute (or every interval,
if shorter), and the one that takes the Redis key ``cleanup:lock`` (``SET NX`` with the
interval as expiry) runs the pass, so one pass runs per interval however many workers there
are. ``bodyserve cleanup [--dry-run]`` runs it on demand.

:func:`delete_job` deletes one ended job at once (``DELETE /v1/jobs/{id}``): its files first
(the photo is what a user wants gone), then its record and result.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from services.common.jobs import DELETED, JOB_KEY_SUFFIXES, PREFIX, JobStore
from shared.settings import Settings, get_settings
from shared.storage import ArtifactStore, LocalArtifactStore, check_job_id

log = logging.getLogger("bodyserve.retention")
LOCK_KEY = f"{PREFIX}cleanup:lock"
# How often a worker checks whether the pass is due (the interval itself may be longer).
CHECK_EVERY_S = 60.0
# Records checked per Redis round trip.
BATCH = 500


@dataclass(frozen=True)
class ArtifactFolder:
    job_id: str
    bytes: int
    age_s: float  # since its newest file was written


@dataclass
class CleanupReport:
    """What a pass deleted (or, in a dry run, would delete) and what it kept."""

    dry_run: bool
    deleted: list[ArtifactFolder] = field(default_factory=list)
    kept_with_record: int = 0
    kept_too_new: int = 0

    @property
    def deleted_bytes(self) -> int:
        return sum(folder.bytes for folder in self.deleted)


def _folders(root: Path) -> Iterator[Path]:
    """The job folders under ``root`` (anything else there is not ours to delete)."""
    if not root.is_dir():
        return
    for path in root.iterdir():
        try:
            check_job_id(path.name)
        except ValueError:
            continue
        if path.is_dir() and not path.is_symlink():
            yield path


def _measure(folder: Path, now: float) -> ArtifactFolder:
    # A folder's mtime moves when a file is created in it (the store writes temp + rename); its
    # files' mtimes are taken too, in case one was rewritten in place.
    stats = [folder.stat(), *(p.stat() for p in folder.iterdir() if p.is_file())]
    newest = max(s.st_mtime for s in stats)
    size = sum(s.st_size for s in stats[1:])
    return ArtifactFolder(folder.name, size, now - newest)


def _chunks(paths: Iterator[Path], size: int) -> Iterator[list[Path]]:
    chunk: list[Path] = []
    for path in paths:
        chunk.append(path)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def cleanup(
    store: JobStore,
    artifacts: LocalArtifactStore,
    grace_s: float,
    *,
    dry_run: bool = False,
    now: float | None = None,
) -> CleanupReport:
    """Delete the artifact folders whose job record is gone and that are older than
    ``grace_s``; ``dry_run`` only reports them."""
    now = time.time() if now is None else now
    report = CleanupReport(dry_run=dry_run)
    for chunk in _chunks(_folders(artifacts.root), BATCH):
        with store.redis.pipeline(transaction=False) as pipe:
            for folder in chunk:
                pipe.exists(JobStore.key(folder.name))
            has_record = pipe.execute()
        for folder, recorded in zip(chunk, has_record, strict=True):
            if recorded:
                report.kept_with_record += 1
                continue
            try:
                measured = _measure(folder, now)
            except FileNotFoundError:  # deleted meanwhile (DELETE, another pass)
                continue
            if measured.age_s < grace_s:
                report.kept_too_new += 1
                continue
            if not dry_run:
                artifacts.delete_job(folder.name)
            report.deleted.append(measured)
    if report.deleted and not dry_run:
        log.info(
            "cleanup: deleted the artifacts of %d expired jobs (%d bytes)",
            len(report.deleted),
            report.deleted_bytes,
        )
    return report


def cleanup_if_due(
    store: JobStore, artifacts: LocalArtifactStore, settings: Settings, holder: str
) -> CleanupReport | None:
    """Run :func:`cleanup` when no pass ran in the last ``cleanup_interval_s`` (across every
    worker sharing this Redis); None when it was not due or is disabled (interval 0)."""
    interval = settings.cleanup_interval_s
    if interval <= 0 or not store.redis.set(LOCK_KEY, holder, nx=True, ex=interval):
        return None
    return cleanup(store, artifacts, settings.cleanup_grace_s)


def run_periodic_cleanup(stop: threading.Event, holder: str) -> None:
    """A worker's cleanup loop (a daemon thread) until ``stop`` is set; see the module doc."""
    settings = get_settings()
    if settings.cleanup_interval_s <= 0:
        return
    store = JobStore.from_url(settings.redis_url, settings.result_ttl_s)
    artifacts = LocalArtifactStore(settings.artifacts_path)
    while True:
        try:
            cleanup_if_due(store, artifacts, settings, holder)
        except redis.RedisError:
            log.debug("cleanup %s: Redis unavailable, retrying", holder, exc_info=True)
        except Exception:
            log.exception("cleanup %s failed; trying again later", holder)
        if stop.wait(min(CHECK_EVERY_S, settings.cleanup_interval_s)):
            return


def delete_job(
    store: JobStore, artifacts: ArtifactStore, job_id: str, tombstone_s: int | None = None
) -> None:
    """Delete an ended job now: its artifacts (upload included), then its record, result and
    other keys, leaving a tombstone (``job:<id>:deleted``) for ``tombstone_s`` (default: the
    idempotency keys' lifetime). The caller checks that the job has ended and is the caller's."""
    artifacts.delete_job(job_id)
    ttl_s = get_settings().idempotency_ttl_s if tombstone_s is None else tombstone_s
    with store.redis.pipeline() as pipe:
        pipe.delete(
            JobStore.key(job_id), *(JobStore.key(job_id, suffix) for suffix in JOB_KEY_SUFFIXES)
        )
        pipe.set(JobStore.key(job_id, DELETED), "1", ex=max(1, ttl_s))
        pipe.execute()
