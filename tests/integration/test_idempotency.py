"""Idempotency keys: a repeated POST with the same ``Idempotency-Key`` answers with the job of
its first try instead of creating another.

As in ``test_access.py``: a real uvicorn gateway (keys mode) on a real Redis that is also its
Celery broker, no worker, so jobs stay queued; the owner's set of active jobs counts how many
jobs a key created. Where a finished job is needed, the test ends it through the job store.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from services.common.jobs import JobStatus, JobStore
from services.common.keys import KeyStore
from tests.integration.test_access import Gateway, _start_gateway, bearer

pytestmark = pytest.mark.integration

POSES = "/v1/poses/generate"
BODY = {"n": 1, "seed": 0}


@pytest.fixture(scope="module")
def idem_redis(redis_url: str) -> str:
    """A database of this module's own on the session's Redis."""
    url = redis_url.rsplit("/", 1)[0] + "/11"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(scope="module")
def gateway(idem_redis: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    env = {
        "BODYSERVE_AUTH_MODE": "keys",
        "BODYSERVE_KEY_RATE_PER_MINUTE": "0",
        "BODYSERVE_KEY_MAX_CONCURRENT": "0",
    }
    folder: Path = tmp_path_factory.mktemp("idempotency")
    yield from _start_gateway("idempotency", idem_redis, folder, env)


@pytest.fixture(scope="module")
def keys(idem_redis: str) -> KeyStore:
    return KeyStore.from_url(idem_redis)


@pytest.fixture(scope="module")
def store(idem_redis: str) -> JobStore:
    return JobStore.from_url(idem_redis, result_ttl_s=3600)


def post(
    gateway: Gateway,
    token: str,
    key: str | None,
    body: dict[str, int] = BODY,
    query: str = "",
) -> httpx.Response:
    headers = bearer(token)
    if key is not None:
        headers["Idempotency-Key"] = key
    return httpx.post(gateway.url + POSES + query, json=body, headers=headers, timeout=30)


def jobs_of(store: JobStore, key_id: str) -> set[str]:
    """The key's jobs that have not ended: with no worker, every job it created."""
    return set(store.redis.smembers(store.active_key(key_id)))  # type: ignore[arg-type]


def test_same_key_twice_is_one_job(gateway: Gateway, keys: KeyStore, store: JobStore) -> None:
    key, token = keys.create("retrying client")
    first = post(gateway, token, "order-1")
    assert first.status_code == 202, first.text
    assert "idempotent-replayed" not in first.headers
    again = post(gateway, token, "order-1")
    assert again.status_code == 202, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert jobs_of(store, key.id) == {first.json()["id"]}

    # Once the job is done, a repeat that waits gets its result at once.
    assert store.finish(first.json()["id"], JobStatus.succeeded, result={"poses": []})
    done = post(gateway, token, "order-1", query="?wait=5")
    assert done.status_code == 200, done.text
    assert done.headers["idempotent-replayed"] == "true"
    assert done.json() == {"job_id": first.json()["id"], "status": "succeeded",
                           "result": {"poses": []}}  # fmt: skip


def test_concurrent_requests_with_one_key_make_one_job(
    gateway: Gateway, keys: KeyStore, store: JobStore
) -> None:
    key, token = keys.create("impatient client")
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda _: post(gateway, token, "same-key"), range(16)))
    assert [r.status_code for r in replies] == [202] * 16, [r.text for r in replies]
    ids = {r.json()["id"] for r in replies}
    assert len(ids) == 1
    assert sum("idempotent-replayed" not in r.headers for r in replies) == 1
    assert jobs_of(store, key.id) == ids


def test_same_key_different_request_is_422(gateway: Gateway, keys: KeyStore) -> None:
    _, token = keys.create("sloppy client")
    assert post(gateway, token, "k").status_code == 202
    reply = post(gateway, token, "k", body={"n": 2, "seed": 0})
    assert reply.status_code == 422, reply.text
    assert "reused with a different request" in reply.json()["detail"]
    # Another route with the same key is another request too.
    other = httpx.post(
        gateway.url + "/v1/poses/complete",
        json={"body_pose": [[0.0] * 3] * 21, "hidden_parts": ["left_arm"]},
        headers={**bearer(token), "Idempotency-Key": "k"},
    )
    assert other.status_code == 422, other.text
    assert "reused with a different request" in other.json()["detail"]


def test_keys_are_per_owner(gateway: Gateway, keys: KeyStore, store: JobStore) -> None:
    alice, alice_token = keys.create("alice")
    bob, bob_token = keys.create("bob")
    a = post(gateway, alice_token, "shared-string")
    b = post(gateway, bob_token, "shared-string")
    assert (a.status_code, b.status_code) == (202, 202)
    assert a.json()["id"] != b.json()["id"]
    assert "idempotent-replayed" not in b.headers
    assert jobs_of(store, alice.id) == {a.json()["id"]}
    assert jobs_of(store, bob.id) == {b.json()["id"]}


@pytest.mark.parametrize("bad", [b"", b"x" * 201, "caf\u00e9".encode(), b"tab\there"])
def test_bad_key_is_422(gateway: Gateway, keys: KeyStore, bad: bytes) -> None:
    _, token = keys.create("bad header")
    headers: dict[str, str | bytes] = {**bearer(token), "Idempotency-Key": bad}
    reply = httpx.post(gateway.url + POSES, json=BODY, headers=headers)
    assert reply.status_code == 422, reply.text
    assert "Idempotency-Key must be 1 to 200 printable ASCII" in reply.json()["detail"]


def test_no_key_makes_a_job_each_time(gateway: Gateway, keys: KeyStore, store: JobStore) -> None:
    key, token = keys.create("no idempotency")
    replies = [post(gateway, token, None) for _ in range(3)]
    assert [r.status_code for r in replies] == [202] * 3
    assert all("idempotent-replayed" not in r.headers for r in replies)
    assert len(jobs_of(store, key.id)) == 3


def test_refused_submission_releases_the_key(
    gateway: Gateway, keys: KeyStore, store: JobStore
) -> None:
    key, token = keys.create("one at a time", rate_per_minute=0, max_concurrent=1)
    running = post(gateway, token, None)
    assert running.status_code == 202
    refused = post(gateway, token, "retry-me")
    assert refused.status_code == 429, refused.text
    # The key was not bound to the refused request: its retry, once a slot is free, submits.
    assert store.finish(running.json()["id"], JobStatus.succeeded, result={})
    retried = post(gateway, token, "retry-me")
    assert retried.status_code == 202, retried.text
    assert "idempotent-replayed" not in retried.headers
    assert jobs_of(store, key.id) == {retried.json()["id"]}


def test_a_key_whose_job_was_deleted_submits_anew(
    gateway: Gateway, keys: KeyStore, store: JobStore
) -> None:
    key, token = keys.create("tidy client")
    first = post(gateway, token, "order-7")
    assert first.status_code == 202, first.text
    job_id = first.json()["id"]
    assert store.finish(job_id, JobStatus.succeeded, result={"poses": []})
    deleted = httpx.delete(f"{gateway.url}/v1/jobs/{job_id}", headers=bearer(token), timeout=30)
    assert deleted.status_code == 204, deleted.text
    # Once answered 409 "still being processed" after a 10 s wait, for the key's 24 hours.
    started = time.monotonic()
    again = post(gateway, token, "order-7")
    assert again.status_code == 202, again.text
    assert time.monotonic() - started < 5
    assert "idempotent-replayed" not in again.headers
    assert again.json()["id"] != job_id
    assert jobs_of(store, key.id) == {again.json()["id"]}
    # The key is bound to the new job now: a repeat replays it.
    assert post(gateway, token, "order-7").json()["id"] == again.json()["id"]
