"""API keys, per-key submission rates and concurrent-job quotas, on a real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis

from services.common.jobs import OPEN_OWNER, JobStatus, JobStore, QuotaExceeded
from services.common.keys import (
    KeyNotFound,
    KeyStore,
    Principal,
    RateLimited,
    SubmissionLimiter,
    parse_token,
)
from shared.settings import REPO_ROOT


@pytest.fixture
def url(redis_url: str) -> Iterator[str]:
    """A database of these tests' own on the session's Redis, emptied for each test."""
    url = redis_url.rsplit("/", 1)[0] + "/9"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.close()


@pytest.fixture
def keys(url: str) -> KeyStore:
    return KeyStore.from_url(url)


@pytest.fixture
def store(url: str) -> JobStore:
    return JobStore.from_url(url, result_ttl_s=60)


def test_create_and_verify(keys: KeyStore) -> None:
    key, token = keys.create("team a", rate_per_minute=5)
    assert token.startswith(f"bsk_{key.id}_")
    assert parse_token(token) is not None
    assert len(token.split("_", 2)[2]) >= 40  # 32 random bytes
    found = keys.verify(token)
    assert found == key
    assert found.name == "team a" and not found.revoked
    assert (found.rate_per_minute, found.max_concurrent) == (5, None)
    # Explicit limits win, missing ones take the defaults given at request time.
    assert found.principal(60, 8) == Principal(key.id, "team a", 5, 8)


def test_only_a_hash_of_the_secret_is_stored(keys: KeyStore) -> None:
    key, token = keys.create("ops")
    secret = token.split("_", 2)[2]
    stored = keys.redis.hgetall(keys.key(key.id))
    assert secret not in json.dumps(stored)
    assert len(stored["secret_sha256"]) == 64  # type: ignore[index]


def test_wrong_or_malformed_tokens_are_refused(keys: KeyStore) -> None:
    key, token = keys.create("a")
    other_key, other_token = keys.create("b")
    wrong_secret = f"bsk_{key.id}_{other_token.split('_', 2)[2]}"
    for bad in (
        wrong_secret,
        token[:-1],
        token + "x",
        f"bsk_{'0' * 12}_{token.split('_', 2)[2]}",  # no such id
        "bsk_" + key.id,
        "",
        "Bearer " + token,
        token.replace("bsk_", "xyz_"),
        f"bsk_{key.id.upper()}_{token.split('_', 2)[2]}",
    ):
        assert keys.verify(bad) is None, bad
    assert keys.verify(other_token) == other_key


def test_list_and_revoke(keys: KeyStore) -> None:
    first, first_token = keys.create("first", max_concurrent=0)
    second, _ = keys.create("second")
    assert [k.id for k in keys.list()] == [first.id, second.id]
    revoked = keys.revoke(first.id)
    assert revoked.revoked
    # A revoked key still verifies as itself (the gateway tells its holder why it is refused).
    found = keys.verify(first_token)
    assert found is not None and found.revoked
    assert [k.revoked for k in keys.list()] == [True, False]
    with pytest.raises(KeyNotFound):
        keys.revoke("0123456789ab")


def test_invalid_names_and_limits(keys: KeyStore) -> None:
    with pytest.raises(ValueError, match="name"):
        keys.create("  ")
    with pytest.raises(ValueError, match="rate_per_minute"):
        keys.create("x", rate_per_minute=-1)


def test_rate_limit_moving_window(url: str) -> None:
    limiter = SubmissionLimiter(url)
    principal = Principal("abc123abc123", "rate", rate_per_minute=3, max_concurrent=0)
    for _ in range(3):
        limiter.hit(principal)
    with pytest.raises(RateLimited) as refused:
        limiter.hit(principal)
    assert refused.value.limit == 3
    assert 55 <= refused.value.retry_after_s <= 60
    # Other principals have their own windows; 0 is unlimited.
    limiter.hit(Principal("other0other0", "other", 3, 0))
    unlimited = Principal("free00free00", "free", 0, 0)
    for _ in range(100):
        limiter.hit(unlimited)


def test_concurrent_quota_frees_when_jobs_end(store: JobStore) -> None:
    jobs = [store.create("pose_generation", {}, owner="k1", max_active=2) for _ in range(2)]
    assert all(job.owner == "k1" for job in jobs)
    with pytest.raises(QuotaExceeded) as refused:
        store.create("pose_generation", {}, owner="k1", max_active=2)
    assert refused.value.limit == 2
    # The refused job was not recorded; another owner is not affected.
    assert store.redis.smembers(store.active_key("k1")) == {j.id for j in jobs}
    store.create("pose_generation", {}, owner="k2", max_active=2)
    # A running job still counts; a finished or cancelled one does not.
    store.start(jobs[0].id, "worker-1")
    with pytest.raises(QuotaExceeded):
        store.create("pose_generation", {}, owner="k1", max_active=2)
    store.finish(jobs[0].id, JobStatus.succeeded, result={})
    third = store.create("pose_generation", {}, owner="k1", max_active=2)
    store.cancel(third.id)
    store.create("pose_generation", {}, owner="k1", max_active=2)
    assert store.redis.scard(store.active_key("k1")) == 2


def test_quota_drops_jobs_whose_record_is_gone(store: JobStore) -> None:
    job = store.create("pose_generation", {}, owner="k1", max_active=1)
    store.redis.delete(store.key(job.id))  # lost without a finish (deleted by hand)
    store.create("pose_generation", {}, owner="k1", max_active=1)


def test_records_without_owner_belong_to_open_mode(store: JobStore) -> None:
    store.redis.hset(
        store.key("old-job"),
        mapping={"id": "old-job", "capability": "mesh_recovery", "status": "queued",
                 "created_at": repr(time.time())},
    )  # fmt: skip
    assert store.get("old-job").owner == OPEN_OWNER
    assert store.create("mesh_recovery", {}).owner == OPEN_OWNER
    assert store.finish("old-job", JobStatus.failed, error="x")


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BODYSERVE_REDIS_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "services.tools.cli", "keys", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_keys_command_line(url: str, keys: KeyStore) -> None:
    created = _cli(url, "create", "ci bot", "--rate-per-minute", "7", "--max-concurrent", "2")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()  # the key alone on stdout
    key = keys.verify(token)
    assert key is not None and key.name == "ci bot"
    assert (key.rate_per_minute, key.max_concurrent) == (7, 2)
    assert "not shown again" in created.stderr

    listed = _cli(url, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert token.split("_", 2)[2] not in listed.stdout
    [entry] = json.loads(listed.stdout)
    assert entry["id"] == key.id and entry["revoked"] is False

    assert _cli(url, "revoke", key.id).returncode == 0
    assert keys.get(key.id).revoked
    missing = _cli(url, "revoke", "0123456789ab")
    assert missing.returncode == 1 and "no API key" in missing.stdout
