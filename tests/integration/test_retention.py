"""Retention on the real stack: deleting an ended job over HTTP, the cleanup pass after a job's
record expires, ``bodyserve cleanup [--dry-run]``, and the workers' periodic pass.

The session's ``local_stack`` (open mode) runs the jobs. The cleanup pass is run against its
Redis and artifact folder; folders it must delete are aged with ``os.utime`` rather than by
lowering the grace period, so that no other test's files are ever at risk. The periodic pass is
watched on a worker of its own (its own Redis database and artifact folder, a 1 s interval).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from services.common.jobs import DELETED, JobStatus, JobStore
from services.common.retention import LOCK_KEY, cleanup
from services.tools.local_stack import LocalStack, StackConfig
from shared.settings import REPO_ROOT
from shared.storage import LocalArtifactStore
from tests.integration.stacks import started_stack

pytestmark = pytest.mark.integration

HOUR = 3600.0
GRACE_S = 3600  # the default of BODYSERVE_CLEANUP_GRACE_S, which these passes use


def artifacts_root(stack: LocalStack) -> Path:
    return Path(stack.env().get("BODYSERVE_ARTIFACT_DIR") or Path(stack.var_dir) / "artifacts")


def age(folder: Path, seconds: float) -> None:
    """Make ``folder`` and its files look last written ``seconds`` ago."""
    when = time.time() - seconds
    for path in (*folder.iterdir(), folder):
        os.utime(path, (when, when))


def orphan(root: Path, age_s: float) -> Path:
    """A job folder without a job record, last written ``age_s`` ago."""
    job_id = str(uuid.uuid4())
    LocalArtifactStore(root).put(job_id, "input.bin", b"someone's photo")
    folder = root / job_id
    age(folder, age_s)
    return folder


@pytest.fixture(scope="module")
def store(local_stack: LocalStack) -> JobStore:
    return JobStore.from_url(local_stack.redis_url, result_ttl_s=600)


def test_delete_removes_an_ended_jobs_record_result_and_photo(
    local_stack: LocalStack, store: JobStore, photos_dir: Path
) -> None:
    photo = (photos_dir / "codait_yogait_t6.jpg").read_bytes()
    with httpx.Client(base_url=local_stack.base_url, timeout=180) as client:
        reply = client.post(
            "/v1/mesh-recovery",
            params={"wait": 150},
            files={"image": ("me.jpg", photo)},
            data={"max_people": "1", "iterations": "5", "outputs": "json"},
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["status"] == "succeeded", reply.json()
        location = reply.headers["location"]
        job_id = reply.json()["job_id"]
        folder = artifacts_root(local_stack) / job_id
        assert (folder / "input.bin").read_bytes() == photo
        assert (folder / "result.json").is_file()
        assert client.get(f"{location}/result").status_code == 200

        deleted = client.delete(location)
        assert deleted.status_code == 204, deleted.text
        assert deleted.content == b""
        assert not folder.exists(), "the photo and the outputs are gone from disk"
        # Only the tombstone that tells a replayed Idempotency-Key its job is gone.
        left = [str(k) for k in store.redis.scan_iter(f"{JobStore.key(job_id)}*")]
        assert left == [JobStore.key(job_id, DELETED)], "keys were left"
        for url in (location, f"{location}/result", f"{location}/artifacts/result.json"):
            assert client.get(url).status_code == 404, url
        assert client.delete(location).status_code == 404


def test_cleanup_deletes_an_ended_jobs_artifacts_once_its_record_is_gone(
    local_stack: LocalStack, store: JobStore
) -> None:
    with httpx.Client(base_url=local_stack.base_url, timeout=180) as client:
        reply = client.post(
            "/v1/poses/generate",
            params={"wait": 120},
            json={"n": 1, "seed": 5, "steps": 10, "outputs": ["params", "mesh"]},
        )
    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == "succeeded", reply.json()
    job_id = reply.json()["job_id"]
    root = artifacts_root(local_stack)
    folder = root / job_id
    assert (folder / "poses.glb").is_file()
    artifacts = LocalArtifactStore(root)

    # However old its files, a job whose record is there keeps them.
    age(folder, 2 * HOUR)
    report = cleanup(store, artifacts, GRACE_S)
    assert job_id not in [f.job_id for f in report.deleted] and folder.is_dir()

    # The record expires (as it does result_ttl_s after the job ended)...
    for key in (JobStore.key(job_id), JobStore.key(job_id, "result")):
        assert store.redis.expire(key, 1)
    deadline = time.monotonic() + 30
    while store.redis.exists(JobStore.key(job_id)):
        assert time.monotonic() < deadline, "the record did not expire"
        time.sleep(0.2)
    # ...and the next pass deletes its files.
    report = cleanup(store, artifacts, GRACE_S)
    [gone] = [f for f in report.deleted if f.job_id == job_id]
    assert gone.bytes > 0 and gone.age_s >= 2 * HOUR - 60
    assert not folder.exists()


def _cleanup_cli(stack: LocalStack, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "BODYSERVE_REDIS_URL": stack.redis_url,
        "BODYSERVE_ARTIFACT_DIR": str(root),
        "COLUMNS": "400",
    }
    env.pop("BODYSERVE_CLEANUP_GRACE_S", None)  # the default grace period, one hour
    return subprocess.run(
        [sys.executable, "-m", "services.tools.cli", "cleanup", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cleanup_command_dry_run_lists_without_deleting(
    local_stack: LocalStack, store: JobStore, tmp_path: Path
) -> None:
    root = tmp_path / "artifacts"
    expired = orphan(root, 2 * HOUR)
    fresh = orphan(root, 60)  # without a record, but younger than the grace period
    job = store.create("mesh_recovery", {})
    store.finish(job.id, JobStatus.succeeded, result={})
    LocalArtifactStore(root).put(job.id, "input.bin", b"photo")
    age(root / job.id, 2 * HOUR)

    dry = _cleanup_cli(local_stack, root, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    report: dict[str, Any] = json.loads(dry.stdout)
    assert [f["job_id"] for f in report["deleted"]] == [expired.name]
    assert (report["dry_run"], report["kept_with_record"], report["kept_too_new"]) == (True, 1, 1)
    assert expired.is_dir() and fresh.is_dir() and (root / job.id).is_dir()
    text = _cleanup_cli(local_stack, root, "--dry-run")
    assert f"would delete {expired.name}" in text.stdout
    assert "would delete 1 folders" in text.stdout and expired.is_dir()

    done = _cleanup_cli(local_stack, root)
    assert done.returncode == 0, done.stderr
    assert f"deleted {expired.name}" in done.stdout
    assert not expired.exists()
    assert fresh.is_dir() and (root / job.id).is_dir()


@pytest.fixture(scope="module")
def cleaning_worker(
    local_stack: LocalStack, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LocalStack, Path]]:
    """One worker (serving only the webhooks queue) on database 12 of the tests' Redis, with
    an artifact folder of its own, a cleanup pass every second and a 20 s grace period."""
    url = redis_url.rsplit("/", 1)[0] + "/12"
    redis.Redis.from_url(url).flushdb()
    var_dir = tmp_path_factory.mktemp("cleanup-worker")
    root = var_dir / "artifacts"
    config = StackConfig.with_free_ports(
        var_dir,
        redis_url=url,
        components=["workers"],
        queues=["webhooks"],
        extra_env={
            "BODYSERVE_TRITON_URL": local_stack.triton_url,
            "BODYSERVE_ARTIFACT_DIR": str(root),
            "BODYSERVE_CLEANUP_INTERVAL_S": "1",
            "BODYSERVE_CLEANUP_GRACE_S": "20",
        },
    )
    with started_stack(config, "the worker") as stack:
        yield stack, root


def test_workers_delete_expired_artifacts_periodically(
    cleaning_worker: tuple[LocalStack, Path],
) -> None:
    stack, root = cleaning_worker
    store = JobStore.from_url(stack.redis_url, result_ttl_s=600)
    job = store.create("mesh_recovery", {})
    store.finish(job.id, JobStatus.succeeded, result={})
    LocalArtifactStore(root).put(job.id, "input.bin", b"photo")
    age(root / job.id, 2 * HOUR)
    expired = orphan(root, 2 * HOUR)
    fresh = orphan(root, 0)

    deadline = time.monotonic() + 30
    while expired.exists():
        assert time.monotonic() < deadline, "no worker deleted the expired folder"
        time.sleep(0.2)
    assert fresh.is_dir(), "a folder younger than the grace period (20 s) is kept"
    assert (root / job.id).is_dir(), "a job with a record keeps its files"
    # The passes are scheduled with the Redis lock (held for the 1 s interval by the worker).
    deadline = time.monotonic() + 10
    while not (holder := store.redis.get(LOCK_KEY)):
        assert time.monotonic() < deadline, "the cleanup lock is never taken"
        time.sleep(0.05)
    assert str(holder).split("@")[0].isdigit(), holder  # <pid>@<host>, a worker's name
    # The fresh folder goes once older than the grace period; the job's when its record goes.
    store.redis.delete(JobStore.key(job.id), JobStore.key(job.id, "result"))
    deadline = time.monotonic() + 60
    while fresh.exists() or (root / job.id).exists():
        assert time.monotonic() < deadline, "the workers stopped cleaning up"
        time.sleep(0.2)
