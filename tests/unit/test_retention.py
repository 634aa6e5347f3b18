"""The cleanup pass, its once-per-interval lock and deleting a job, on a real Redis and real
folders."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.common.jobs import CHUNKS_DONE, DELETED, FINISHING, JobStatus, JobStore
from services.common.retention import (
    LOCK_KEY,
    cleanup,
    cleanup_if_due,
    delete_job,
    run_periodic_cleanup,
)
from shared.settings import Settings, get_settings
from shared.storage import LocalArtifactStore

HOUR = 3600.0


@pytest.fixture
def store(redis_url: str) -> Iterator[JobStore]:
    """A database of these tests' own on the session's Redis, emptied for each test."""
    url = redis_url.rsplit("/", 1)[0] + "/15"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield JobStore.from_url(url, result_ttl_s=600)
    client.close()


@pytest.fixture
def artifacts(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "artifacts")


def _folder(artifacts: LocalArtifactStore, job_id: str, age_s: float = 0.0) -> Path:
    """A job folder with an upload and an output, last written ``age_s`` ago."""
    artifacts.put(job_id, "input.bin", b"a photo")
    artifacts.put(job_id, "result.json", b"{}")
    folder = artifacts.root / job_id
    when = time.time() - age_s
    for path in (*folder.iterdir(), folder):
        os.utime(path, (when, when))
    return folder


def test_cleanup_deletes_only_old_folders_without_a_record(
    store: JobStore, artifacts: LocalArtifactStore
) -> None:
    ended = store.create("mesh_recovery", {})
    store.finish(ended.id, JobStatus.succeeded, result={})
    with_record = _folder(artifacts, ended.id, age_s=2 * HOUR)
    expired = _folder(artifacts, str(uuid.uuid4()), age_s=2 * HOUR)
    fresh = _folder(artifacts, str(uuid.uuid4()), age_s=60)
    stranger = artifacts.root / "not a job folder"
    stranger.mkdir()
    (artifacts.root / "loose-file-0001").write_bytes(b"x")

    dry = cleanup(store, artifacts, grace_s=HOUR, dry_run=True)
    assert [f.job_id for f in dry.deleted] == [expired.name]
    assert dry.deleted[0].bytes == len(b"a photo") + 2
    assert 2 * HOUR - 5 < dry.deleted[0].age_s < 2 * HOUR + 5
    assert (dry.kept_with_record, dry.kept_too_new) == (1, 1)
    assert expired.is_dir(), "a dry run deletes nothing"

    report = cleanup(store, artifacts, grace_s=HOUR)
    assert [f.job_id for f in report.deleted] == [expired.name]
    assert report.deleted_bytes == 9
    assert not expired.exists()
    assert with_record.is_dir() and fresh.is_dir() and stranger.is_dir()
    assert (artifacts.root / "loose-file-0001").is_file()

    # The fresh folder goes once it is older than the grace period.
    assert cleanup(store, artifacts, grace_s=HOUR, now=time.time() + HOUR).deleted[0].job_id == (
        fresh.name
    )
    assert not fresh.exists() and with_record.is_dir()


def test_a_file_written_lately_keeps_an_old_folder(
    store: JobStore, artifacts: LocalArtifactStore
) -> None:
    folder = _folder(artifacts, str(uuid.uuid4()), age_s=2 * HOUR)
    (folder / "result.json").write_bytes(b"{}")  # in place: the folder's own mtime stays old
    now = time.time()
    os.utime(folder, (now - 2 * HOUR, now - 2 * HOUR))
    assert cleanup(store, artifacts, grace_s=HOUR).kept_too_new == 1
    assert folder.is_dir()


def test_one_pass_per_interval_across_workers(
    store: JobStore, artifacts: LocalArtifactStore
) -> None:
    settings = Settings(_env_file=None, cleanup_interval_s=60, cleanup_grace_s=0)
    orphan = _folder(artifacts, str(uuid.uuid4()), age_s=10)
    first = cleanup_if_due(store, artifacts, settings, "worker-a")
    assert first is not None and [f.job_id for f in first.deleted] == [orphan.name]
    assert store.redis.get(LOCK_KEY) == "worker-a"
    assert 0 < store.redis.ttl(LOCK_KEY) <= 60
    _folder(artifacts, str(uuid.uuid4()), age_s=10)
    assert cleanup_if_due(store, artifacts, settings, "worker-b") is None, "not due yet"
    store.redis.delete(LOCK_KEY)  # the interval has passed
    assert cleanup_if_due(store, artifacts, settings, "worker-b") is not None
    disabled = Settings(_env_file=None, cleanup_interval_s=0)
    store.redis.delete(LOCK_KEY)
    assert cleanup_if_due(store, artifacts, disabled, "worker-a") is None
    assert not store.redis.exists(LOCK_KEY)


def test_periodic_loop_runs_and_stops(
    store: JobStore, artifacts: LocalArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = store.redis.connection_pool.connection_kwargs
    monkeypatch.setenv("BODYSERVE_REDIS_URL", f"redis://{url['host']}:{url['port']}/{url['db']}")
    monkeypatch.setenv("BODYSERVE_ARTIFACT_DIR", str(artifacts.root))
    monkeypatch.setenv("BODYSERVE_CLEANUP_INTERVAL_S", "1")
    monkeypatch.setenv("BODYSERVE_CLEANUP_GRACE_S", "0")
    get_settings.cache_clear()
    try:
        orphan = _folder(artifacts, str(uuid.uuid4()), age_s=5)
        stop = threading.Event()
        thread = threading.Thread(target=run_periodic_cleanup, args=(stop, "test"), daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while orphan.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not orphan.exists()
        stop.set()
        thread.join(5)
        assert not thread.is_alive()
    finally:
        get_settings.cache_clear()


def test_delete_job_removes_files_record_and_result(
    store: JobStore, artifacts: LocalArtifactStore
) -> None:
    job = store.create("mesh_recovery", {})
    folder = _folder(artifacts, job.id)
    store.start(job.id, "a worker")  # the whole life cycle, so every key a job has is there
    store.finish(job.id, JobStatus.succeeded, result={"people": []})
    # A dataset job's chunk bookkeeping too (it outlived DELETE for the result's 7 days).
    store.redis.sadd(JobStore.key(job.id, CHUNKS_DONE), 0, 1)
    store.redis.set(JobStore.key(job.id, FINISHING), "1")
    other = store.create("mesh_recovery", {})
    assert len(list(store.redis.scan_iter(f"{JobStore.key(job.id)}*"))) >= 3
    delete_job(store, artifacts, job.id)
    assert not folder.exists()
    # Nothing but the tombstone that tells a replayed Idempotency-Key its job is gone.
    left = {str(k) for k in store.redis.scan_iter(f"{JobStore.key(job.id)}*")}
    assert left == {JobStore.key(job.id, DELETED)}, "a key was left"
    assert 0 < store.redis.ttl(JobStore.key(job.id, DELETED)) <= get_settings().idempotency_ttl_s
    assert store.get(other.id).status is JobStatus.queued
