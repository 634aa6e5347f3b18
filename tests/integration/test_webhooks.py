"""Signed webhooks when jobs end, end to end: real gateway, worker, Redis, Triton and receiver.

The session's ``local_stack`` runs in open mode; API keys (each with its own webhook) need keys
mode, so this module runs a gateway in keys mode and a ``poses`` worker (which, like every
worker, also serves the ``webhooks`` queue) on a Redis database of their own, calling the
session stack's Triton. Retries are fast here (``BODYSERVE_WEBHOOK_RETRY_BASE_S``), everything
else is as deployed. The receiver is a threaded ``http.server`` in this process on 127.0.0.1,
answering each path as the test scripts it.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from services.common.jobs import JobStore
from services.common.keys import KeyStore
from services.common.webhooks import EVENT_ID_HEADER, SIGNATURE_HEADER, verify_signature
from services.tools.local_stack import LocalStack, StackConfig
from shared.settings import REPO_ROOT
from tests.integration.stacks import started_stack

pytestmark = pytest.mark.integration

RETRY_BASE_S = 0.5  # retries after 0.25-0.5 s, then 0.5-1 s, ...
JOB_TIMEOUT_S = 120.0  # generous: the machine is shared
DELIVERY_TIMEOUT_S = 60.0
QUIET_S = 3.0  # how long "nothing more arrives" is watched (several retry periods)
POSES = "/v1/poses/generate"
POSE_BODY = {"n": 1, "seed": 3, "steps": 10}


# --------------------------------------------------------------------------- the receiver


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic()

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


class Receiver:
    """A webhook receiver: per path, the statuses of its first answers (then 200)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.scripts: dict[str, list[int]] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.received.append(
                        Received(self.path, dict(self.headers), body, time.monotonic())
                    )
                    script = receiver.scripts.get(self.path, [])
                    status = script.pop(0) if script else 200
                reply = {400: b"bad endpoint for this test", 503: b"try later"}.get(status, b"ok")
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def script(self, path: str, statuses: list[int]) -> str:
        with self.lock:
            self.scripts[path] = list(statuses)
        return self.url + path

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def about(self, job_id: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.event["job"]["id"] == job_id]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


# --------------------------------------------------------------------------- the keys stack


@pytest.fixture(scope="module")
def keys_stack(
    local_stack: LocalStack, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalStack]:
    """Gateway (keys mode) and ``poses`` worker on database 11 of the tests' Redis server, with
    the session stack's Triton."""
    url = redis_url.rsplit("/", 1)[0] + "/11"
    redis.Redis.from_url(url).flushdb()
    var_dir = tmp_path_factory.mktemp("webhooks-stack")
    config = StackConfig.with_free_ports(
        var_dir,
        redis_url=url,
        components=["workers", "gateway"],
        queues=["poses"],
        extra_env={
            "BODYSERVE_AUTH_MODE": "keys",
            "BODYSERVE_TRITON_URL": local_stack.triton_url,
            "BODYSERVE_WEBHOOK_RETRY_BASE_S": str(RETRY_BASE_S),
            "BODYSERVE_WEBHOOK_MAX_ATTEMPTS": "5",
            "BODYSERVE_WEBHOOK_TIMEOUT_S": "5",
            "BODYSERVE_ARTIFACT_DIR": str(var_dir / "artifacts"),
        },
    )
    with started_stack(config, "the keys-mode gateway and worker") as stack:
        yield stack


@pytest.fixture(scope="module")
def keys(keys_stack: LocalStack) -> KeyStore:
    return KeyStore.from_url(keys_stack.redis_url)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wait_for(what: str, check: Callable[[], Any], timeout_s: float) -> Any:
    """``check()``'s first truthy value, polled until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def run_pose_job(stack: LocalStack, token: str) -> dict[str, Any]:
    """A pose generation job of ``token``'s key, run to success; its GET /v1/jobs/ID."""
    reply = httpx.post(
        stack.base_url + POSES,
        params={"wait": 90},
        json=POSE_BODY,
        headers=bearer(token),
        timeout=JOB_TIMEOUT_S,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == "succeeded", reply.json()
    return job_status(stack, reply.headers["location"], token)


def job_status(stack: LocalStack, location: str, token: str) -> dict[str, Any]:
    reply = httpx.get(location, headers=bearer(token), timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.json()


def webhook_settled(stack: LocalStack, job: dict[str, Any], token: str) -> dict[str, Any]:
    """The job once its webhook is delivered or failed (not pending, not retrying)."""

    def settled() -> dict[str, Any] | None:
        status = job_status(stack, job["links"]["self"], token)
        hook = status["webhook"]
        return status if hook and hook["status"] in ("delivered", "failed") else None

    return wait_for("the webhook to settle", settled, DELIVERY_TIMEOUT_S)


def webhook_counters(stack: LocalStack) -> dict[tuple[str, str], float]:
    text = httpx.get(stack.base_url + "/metrics", timeout=30).text
    return {
        (sample.name, next(iter(sample.labels.values()))): sample.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("bodyserve_webhook_")
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def create_key_with_cli(stack: LocalStack, name: str, webhook_url: str) -> dict[str, Any]:
    """``bodyserve keys create NAME --webhook-url URL --json``, as an operator would."""
    created = subprocess.run(
        [sys.executable, "-m", "services.tools.cli", "keys", "create", name,
         "--webhook-url", webhook_url, "--json"],
        cwd=REPO_ROOT,
        env={**os.environ, "BODYSERVE_REDIS_URL": stack.redis_url},
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    return dict(json.loads(created.stdout))


# --------------------------------------------------------------------------- tests


def test_event_is_retried_until_delivered_signed_and_shown_on_the_job(
    keys_stack: LocalStack, receiver: Receiver
) -> None:
    url = receiver.script("/flaky", [503, 503])  # two failures, then 200
    key = create_key_with_cli(keys_stack, "flaky receiver", url)
    secret, token = key["webhook_secret"], key["key"]
    assert secret.startswith("whsec_")
    before = webhook_counters(keys_stack)

    job = run_pose_job(keys_stack, token)
    final = webhook_settled(keys_stack, job, token)
    time.sleep(QUIET_S)  # no further attempt arrives after the delivery
    attempts = receiver.at("/flaky")
    assert len(attempts) == 3, [a.headers.get(EVENT_ID_HEADER) for a in attempts]

    hook = final["webhook"]
    assert hook["status"] == "delivered" and hook["attempts"] == 3, hook
    assert hook["last_error"] == "HTTP 503: try later"  # the last failure, for the operator
    assert hook["next_attempt_at"] is None and hook["last_attempt_at"] >= final["finished_at"]
    # One event: the same id and the same body on every attempt, each signed afresh.
    assert {a.headers[EVENT_ID_HEADER] for a in attempts} == {hook["event_id"]}
    assert len({a.body for a in attempts}) == 1
    for attempt in attempts:
        assert attempt.headers["Content-Type"] == "application/json"
        signature = attempt.headers[SIGNATURE_HEADER]
        assert verify_signature(secret, signature, attempt.body, tolerance_s=300)
        assert not verify_signature("whsec_" + "x" * 43, signature, attempt.body)
        altered = attempt.body.replace(b"succeeded", b"failed")
        assert not verify_signature(secret, signature, altered)
        signed_at = int(signature.split(",")[0].removeprefix("t="))
        assert not verify_signature(secret, signature, attempt.body, 300, now=signed_at + 301)

    # The payload is the job as the status route shows it, at its end.
    event = attempts[-1].event
    assert event["id"] == hook["event_id"] and event["type"] == "job.succeeded"
    assert abs(event["created"] - final["finished_at"]) < 30
    assert event["job"] == {k: v for k, v in final.items() if k != "webhook"}
    assert event["job"]["links"]["result"].endswith(f"/v1/jobs/{job['id']}/result")

    # Exponential backoff with jitter: 0.25-0.5 s, then 0.5-1 s (plus the machine's delays).
    gaps = [b.at - a.at for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= RETRY_BASE_S / 2 * 0.9 and gaps[1] >= RETRY_BASE_S * 0.9, gaps

    after = webhook_counters(keys_stack)
    delivered = ("bodyserve_webhook_deliveries_total", "delivered")
    retried = ("bodyserve_webhook_attempts_total", "retryable_error")
    assert after[delivered] - before.get(delivered, 0) == 1
    assert after[retried] - before.get(retried, 0) == 2


def test_a_refused_event_is_tried_once_and_the_job_shows_why(
    keys_stack: LocalStack, keys: KeyStore, receiver: Receiver
) -> None:
    key, token = keys.create("refusing receiver")
    keys.set_webhook(key.id, receiver.script("/refuse", [400] * 10))
    before = webhook_counters(keys_stack)

    job = run_pose_job(keys_stack, token)
    final = webhook_settled(keys_stack, job, token)
    time.sleep(QUIET_S)
    assert len(receiver.at("/refuse")) == 1, "a 4xx is not retried"
    hook = final["webhook"]
    assert hook["status"] == "failed" and hook["attempts"] == 1, hook
    assert hook["last_error"] == "HTTP 400: bad endpoint for this test"
    failed = ("bodyserve_webhook_deliveries_total", "failed")
    assert webhook_counters(keys_stack)[failed] - before.get(failed, 0) == 1


def test_a_key_without_a_webhook_gets_no_event(
    keys_stack: LocalStack, keys: KeyStore, receiver: Receiver
) -> None:
    _, token = keys.create("no webhook")
    job = run_pose_job(keys_stack, token)
    time.sleep(QUIET_S)
    assert receiver.about(job["id"]) == []
    assert job_status(keys_stack, job["links"]["self"], token)["webhook"] is None


def _tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 180, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_cancelled_job_gets_an_event_and_a_second_delete_deletes_it(
    keys_stack: LocalStack, keys: KeyStore, receiver: Receiver
) -> None:
    key, token = keys.create("cancels")
    _, secret = keys.set_webhook(key.id, receiver.script("/cancelled", []))
    assert secret is not None
    _, other = keys.create("someone else")
    # No mesh-recovery worker in this stack: the job stays queued until it is cancelled.
    photo = _tiny_png()
    submitted = httpx.post(
        keys_stack.base_url + "/v1/mesh-recovery",
        files={"image": ("tiny.png", photo)},
        headers=bearer(token),
        timeout=30,
    )
    assert submitted.status_code == 202, submitted.text
    job_id, location = submitted.json()["id"], submitted.headers["location"]
    upload = Path(keys_stack.env()["BODYSERVE_ARTIFACT_DIR"]) / job_id / "input.bin"
    assert upload.read_bytes() == photo

    cancelled = httpx.delete(location, headers=bearer(token), timeout=30)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["webhook"]["status"] in ("pending", "delivered")

    [delivery] = wait_for("the cancellation event", lambda: receiver.about(job_id), 60)
    assert delivery.path == "/cancelled"
    assert verify_signature(secret, delivery.headers[SIGNATURE_HEADER], delivery.body)
    event = delivery.event
    assert event["type"] == "job.cancelled"
    assert event["job"]["status"] == "cancelled" and event["job"]["error"] == (
        "cancelled by the client"
    )
    assert "result" not in event["job"]["links"]
    final = webhook_settled(keys_stack, {"links": {"self": location}}, token)
    assert final["webhook"]["status"] == "delivered" and final["webhook"]["attempts"] == 1
    assert upload.is_file(), "cancelling keeps the upload"

    # Another key can neither see nor delete it.
    assert httpx.delete(location, headers=bearer(other), timeout=30).status_code == 404
    assert upload.is_file()
    # Its owner deletes it: record and upload go at once.
    deleted = httpx.delete(location, headers=bearer(token), timeout=30)
    assert deleted.status_code == 204, deleted.text
    assert not upload.parent.exists()
    assert not redis.Redis.from_url(keys_stack.redis_url).exists(JobStore.key(job_id))
    assert httpx.get(location, headers=bearer(token), timeout=30).status_code == 404
    assert len(receiver.about(job_id)) == 1, "deleting sends no event"
