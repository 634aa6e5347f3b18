"""Access control of the gateway: API keys, job ownership, rate limits, quotas, open mode.

The gateway runs as a real uvicorn process in keys mode (and another in open mode) on a real
Redis, which is also its Celery broker, so submissions are recorded and queued for real. No
worker runs: jobs stay queued, which is what the concurrent-job quota counts. Where a finished
job is needed, the test ends it through the job store, as a worker would.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from services.common.jobs import JobStatus, JobStore
from services.common.keys import KeyStore
from services.tools.local_stack import free_ports
from shared.settings import REPO_ROOT
from shared.storage import LocalArtifactStore

pytestmark = pytest.mark.integration

POSES = "/v1/poses/generate"
BODY = {"n": 1, "seed": 0}


@dataclass
class Gateway:
    url: str
    log: Path
    artifacts: Path  # its BODYSERVE_ARTIFACT_DIR
    process: subprocess.Popen[bytes]


def _start_gateway(
    name: str, redis_url: str, folder: Path, env: dict[str, str]
) -> Iterator[Gateway]:
    (port,) = free_ports(1)
    log = folder / f"{name}.log"
    full_env = {
        **os.environ,
        "BODYSERVE_REDIS_URL": redis_url,
        "BODYSERVE_VAR_DIR": str(folder),
        "BODYSERVE_ARTIFACT_DIR": str(folder / "artifacts"),
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    full_env.pop("BODYSERVE_TRITON_URL", None)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "services.gateway.app:app",
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO_ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the {name} gateway did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield Gateway(url, log, folder / "artifacts", process)
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture(scope="module")
def access_redis(redis_url: str) -> str:
    """A database of this module's own on the session's Redis (jobs, keys, Celery queues)."""
    url = redis_url.rsplit("/", 1)[0] + "/10"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("access")


@pytest.fixture(scope="module")
def gateway(access_redis: str, folder: Path) -> Iterator[Gateway]:
    # Generous defaults: only the keys made for the limit tests are limited.
    env = {
        "BODYSERVE_AUTH_MODE": "keys",
        "BODYSERVE_KEY_RATE_PER_MINUTE": "1000",
        "BODYSERVE_KEY_MAX_CONCURRENT": "0",
    }
    yield from _start_gateway("keys", access_redis, folder, env)


@pytest.fixture(scope="module")
def open_gateway(access_redis: str, folder: Path) -> Iterator[Gateway]:
    yield from _start_gateway("open", access_redis, folder, {"BODYSERVE_AUTH_MODE": "open"})


@pytest.fixture(scope="module")
def keys(access_redis: str) -> KeyStore:
    return KeyStore.from_url(access_redis)


@pytest.fixture(scope="module")
def store(access_redis: str) -> JobStore:
    return JobStore.from_url(access_redis, result_ttl_s=3600)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def submit(gateway: Gateway, token: str | None) -> httpx.Response:
    headers = bearer(token) if token else {}
    return httpx.post(gateway.url + POSES, json=BODY, headers=headers, timeout=30)


def assert_unauthorized(reply: httpx.Response, reason: str) -> None:
    assert reply.status_code == 401, reply.text
    assert reply.headers["www-authenticate"] == "Bearer"
    detail = reply.json()["detail"]
    assert reason in detail
    assert "Authorization: Bearer" in detail and "bodyserve keys create" in detail


def test_no_key_is_401_on_every_v1_route(gateway: Gateway) -> None:
    job = str(uuid.uuid4())
    replies = [
        submit(gateway, None),
        httpx.post(f"{gateway.url}/v1/mesh-recovery", files={"image": ("a.png", b"x")}),
        httpx.post(f"{gateway.url}/v1/poses/complete", json={}),
        httpx.post(f"{gateway.url}/v1/poses/lift", json={}),
        httpx.post(f"{gateway.url}/v1/motions/denoise", json={}),
        httpx.get(f"{gateway.url}/v1/jobs/{job}"),
        httpx.get(f"{gateway.url}/v1/jobs/{job}/result"),
        httpx.get(f"{gateway.url}/v1/jobs/{job}/artifacts/mesh.glb"),
        httpx.delete(f"{gateway.url}/v1/jobs/{job}"),
        # Another scheme than Bearer is no key either.
        httpx.get(f"{gateway.url}/v1/jobs/{job}", headers={"Authorization": "Basic dTpw"}),
    ]
    for reply in replies:
        assert_unauthorized(reply, "needs an API key")
    # Operations and docs need no key.
    for path in ("/healthz", "/metrics", "/docs", "/openapi.json"):
        assert httpx.get(gateway.url + path).status_code == 200, path
    schemes = httpx.get(gateway.url + "/openapi.json").json()["components"]["securitySchemes"]
    assert schemes["HTTPBearer"]["scheme"] == "bearer"


def test_bad_and_revoked_keys_are_401(gateway: Gateway, keys: KeyStore) -> None:
    key, token = keys.create("soon revoked")
    _, other = keys.create("other")
    for bad in (
        "not-a-key",
        token[:-2],
        f"bsk_{key.id}_{other.split('_', 2)[2]}",  # a real secret, of another key
        f"bsk_{'0' * 12}_{token.split('_', 2)[2]}",
    ):
        assert_unauthorized(submit(gateway, bad), "not valid")
    assert submit(gateway, token).status_code == 202
    keys.revoke(key.id)
    assert_unauthorized(submit(gateway, token), "revoked")
    assert submit(gateway, other).status_code == 202


def test_another_keys_job_is_404(gateway: Gateway, keys: KeyStore, store: JobStore) -> None:
    _, alice = keys.create("alice")
    _, bob = keys.create("bob")
    finished = submit(gateway, alice)
    assert finished.status_code == 202, finished.text
    job_id = finished.json()["id"]
    assert finished.headers["location"].endswith(f"/v1/jobs/{job_id}")
    assert "owner" not in finished.json()
    # Finish it as a worker would: a result and an artifact.
    assert store.finish(job_id, JobStatus.succeeded, result={"poses": []})
    LocalArtifactStore(gateway.artifacts).put(job_id, "poses.glb", b"glTF-bytes")

    job_url = f"{gateway.url}/v1/jobs/{job_id}"
    urls = [job_url, f"{job_url}/result", f"{job_url}/artifacts/poses.glb"]
    for url in urls:
        assert httpx.get(url, headers=bearer(alice)).status_code == 200, url
    assert httpx.get(urls[2], headers=bearer(alice)).content == b"glTF-bytes"

    unknown = str(uuid.uuid4())
    unknown_detail = httpx.get(f"{gateway.url}/v1/jobs/{unknown}", headers=bearer(bob)).json()
    expected = unknown_detail["detail"].replace(unknown, job_id)
    replies = [httpx.get(url, headers=bearer(bob)) for url in urls]
    replies.append(httpx.delete(job_url, headers=bearer(bob)))
    for reply in replies:
        assert reply.status_code == 404, reply.request.url
        assert reply.json()["detail"] == expected  # nothing tells it exists

    # Bob cannot cancel Alice's queued job either; Alice can.
    queued = submit(gateway, alice).json()["id"]
    queued_url = f"{gateway.url}/v1/jobs/{queued}"
    assert httpx.delete(queued_url, headers=bearer(bob)).status_code == 404
    assert store.get(queued).status is JobStatus.queued
    cancelled = httpx.delete(queued_url, headers=bearer(alice))
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"


def test_rate_limit_is_429_with_retry_after(gateway: Gateway, keys: KeyStore) -> None:
    _, token = keys.create("rate limited", rate_per_minute=3, max_concurrent=0)
    accepted = [submit(gateway, token) for _ in range(3)]
    assert [r.status_code for r in accepted] == [202, 202, 202]
    refused = submit(gateway, token)
    assert refused.status_code == 429, refused.text
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert "3 jobs per minute" in refused.json()["detail"]
    # Polling is not counted against submissions.
    job_url = accepted[0].headers["location"]
    for _ in range(20):
        assert httpx.get(job_url, headers=bearer(token)).status_code == 200
    # Another key is not slowed down.
    _, other = keys.create("unlimited")
    assert submit(gateway, other).status_code == 202


def test_concurrent_quota_is_429_and_frees_when_a_job_ends(
    gateway: Gateway, keys: KeyStore, store: JobStore
) -> None:
    _, token = keys.create("two at a time", rate_per_minute=0, max_concurrent=2)
    first, second = (submit(gateway, token) for _ in range(2))
    assert (first.status_code, second.status_code) == (202, 202)
    refused = submit(gateway, token)
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["retry-after"]) >= 1
    assert "2 jobs queued or running" in refused.json()["detail"]

    # A job that ends (here: a worker reports it failed) frees its slot...
    assert store.finish(first.json()["id"], JobStatus.failed, error="test")
    third = submit(gateway, token)
    assert third.status_code == 202, third.text
    assert submit(gateway, token).status_code == 429
    # ...and so does a job its owner cancels.
    cancel = httpx.delete(second.headers["location"], headers=bearer(token))
    assert cancel.status_code == 200
    assert submit(gateway, token).status_code == 202


def test_open_mode_needs_no_key(open_gateway: Gateway, gateway: Gateway, keys: KeyStore) -> None:
    reply = submit(open_gateway, None)
    assert reply.status_code == 202, reply.text
    status = httpx.get(reply.headers["location"])
    assert status.status_code == 200 and status.json()["status"] == "queued"
    # No limits in open mode.
    assert all(submit(open_gateway, None).status_code == 202 for _ in range(5))
    # A key's job stays that key's, whichever gateway is asked.
    _, token = keys.create("private")
    private = submit(gateway, token).json()["id"]
    assert httpx.get(f"{open_gateway.url}/v1/jobs/{private}").status_code == 404
    # And open-mode jobs are not a key's.
    own = reply.json()["id"]
    assert httpx.get(f"{gateway.url}/v1/jobs/{own}", headers=bearer(token)).status_code == 404
    assert "open mode" in open_gateway.log.read_text()
    assert "open mode" not in gateway.log.read_text()


def _answer_to_announced_body(gateway: Gateway, headers: dict[str, str]) -> bytes:
    """Announce a 15 MB JSON body, send its first kilobyte only, and read what comes back
    (b"" when the gateway waits for the rest of the body instead of answering)."""
    host, port = gateway.url.removeprefix("http://").split(":")
    lines = [
        "POST /v1/poses/lift HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {15 * 2**20}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + b"[" + b"0," * 512)
        try:
            return conn.recv(65536)
        except TimeoutError:
            return b""


def test_a_request_without_a_valid_key_is_refused_before_its_body_is_read(
    gateway: Gateway, keys: KeyStore
) -> None:
    # Once the gateway read and parsed the whole body (16 MB of JSON: 1.7 s each) first.
    for headers in ({}, bearer("bsk_nope_nope"), {"Authorization": "Basic dXNlcjpwYXNz"}):
        answer = _answer_to_announced_body(gateway, headers)
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        assert b"www-authenticate: Bearer" in answer.lower().replace(b"bearer", b"Bearer")
    # A valid key is let through to read the body (which never comes): no early answer.
    _, token = keys.create("patient client")
    assert _answer_to_announced_body(gateway, bearer(token)) == b""


def test_a_flood_of_large_bodies_without_a_key_leaves_other_keys_served(
    gateway: Gateway, keys: KeyStore
) -> None:
    """4 clients send 15 MB JSON bodies without a key for 6 s (each once took 1.7 s of the
    gateway's event loop to parse before its 401); meanwhile another key's status reads stay
    fast and are never refused."""
    _, token = keys.create("bystander")
    job = submit(gateway, token).json()["id"]
    host, port = gateway.url.removeprefix("http://").split(":")
    body = b"[" + b"0," * (15 * 2**19 - 1) + b"0]"  # 15 MiB of JSON
    head = (
        f"POST /v1/poses/lift HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    stop = time.monotonic() + 6
    sent = 0

    def flood() -> None:
        nonlocal sent
        while time.monotonic() < stop:
            sent += 1
            with socket.create_connection((host, int(port)), timeout=10) as conn:
                # Refused and closed mid-body (what the fix does): the rest cannot be sent.
                with contextlib.suppress(OSError):
                    conn.sendall(head + body)
                with contextlib.suppress(OSError):
                    conn.recv(64)  # the 401, unless the close reset the connection first

    latencies, statuses = [], []
    with ThreadPoolExecutor(4) as pool, httpx.Client(headers=bearer(token), timeout=30) as c:
        floods = [pool.submit(flood) for _ in range(4)]
        while time.monotonic() < stop:
            started = time.monotonic()
            statuses.append(c.get(f"{gateway.url}/v1/jobs/{job}").status_code)
            latencies.append(time.monotonic() - started)
            time.sleep(0.02)
        for f in floods:
            f.result()
    assert sent >= 4
    assert set(statuses) == {200}, statuses
    p99 = sorted(latencies)[int(0.99 * (len(latencies) - 1))]
    assert p99 < 0.1, f"status read p99 {p99 * 1000:.0f} ms during the flood"
