"""Webhook signatures, URL checks, backoff, one delivery attempt against a real HTTP server, and
the delivery state and key endpoints on a real Redis."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import httpx
import pytest
import redis
from pydantic import ValidationError

from services.common.job_info import WebhookDelivery
from services.common.jobs import JobStatus, JobStore
from services.common.keys import KeyNotFound, KeyStore
from services.common.webhook_endpoints import WebhookEndpoint, check_webhook_url
from services.common.webhooks import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    AttemptResult,
    DeliveryLog,
    delivery_state,
    http_client,
    job_event,
    metric_families,
    post_event,
    retry_delay_s,
    sign,
    verify_signature,
)
from shared.settings import REPO_ROOT, Settings
from tests.conftest import free_port

SECRET = "whsec_test-secret"
BODY = b'{"id":"evt_1","type":"job.succeeded"}'


# --------------------------------------------------------------------------- signatures


def test_signature_verifies_and_binds_secret_body_and_time() -> None:
    now = 1_700_000_000
    header = sign(SECRET, BODY, now)
    assert re.fullmatch(r"t=1700000000,v1=[0-9a-f]{64}", header)
    assert verify_signature(SECRET, header, BODY, now=now + 10)
    assert verify_signature(SECRET, header, BODY.decode(), now=now + 10)  # str body too
    assert not verify_signature("whsec_other", header, BODY, now=now)
    assert not verify_signature(SECRET, header, BODY.replace(b"succeeded", b"failed"), now=now)
    # Replays: outside the tolerance either way, the signature no longer counts.
    assert not verify_signature(SECRET, header, BODY, tolerance_s=300, now=now + 301)
    assert not verify_signature(SECRET, header, BODY, tolerance_s=300, now=now - 301)
    # The timestamp is signed: moving it breaks the signature.
    moved = header.replace("t=1700000000", "t=1700000100")
    assert not verify_signature(SECRET, moved, BODY, now=now + 100)


def test_signature_header_parsing_is_strict_but_allows_several_signatures() -> None:
    now = 1_700_000_000
    good = sign(SECRET, BODY, now).split("v1=")[1]
    assert verify_signature(SECRET, f"t={now},v1={'0' * 64},v1={good}", BODY, now=now)
    assert verify_signature(SECRET, f" t={now} , v1={good} ", BODY, now=now)
    for header in ("", f"v1={good}", f"t={now}", f"t=abc,v1={good}", f"t={now},t={now},v1={good}"):
        assert not verify_signature(SECRET, header, BODY, now=now), header


def _readme_verify() -> Any:
    """The receiver's snippet of README "Webhooks", executed as written."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("### Webhooks", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code, "README's Webhooks section has no Python snippet"
    namespace: dict[str, Any] = {}
    exec(code.group(1), namespace)
    return namespace["verify"]


def test_readme_snippet_agrees_with_verify_signature() -> None:
    readme_verify = _readme_verify()
    now = int(time.time())
    header = sign(SECRET, BODY, now)
    cases = [
        (SECRET, header, BODY),
        ("whsec_other", header, BODY),
        (SECRET, header, BODY + b" "),
        (SECRET, sign(SECRET, BODY, now - 3600), BODY),
        (SECRET, f"t={now}", BODY),
    ]
    for secret, head, body in cases:
        assert readme_verify(secret, head, body) == verify_signature(secret, head, body)
    assert readme_verify(SECRET, header, BODY) is True


# --------------------------------------------------------------------------- URLs, backoff


def test_webhook_urls_need_http_or_https_and_a_host() -> None:
    assert check_webhook_url("https://example.com/hooks?x=1") == "https://example.com/hooks?x=1"
    assert check_webhook_url(" http://127.0.0.1:8080/h ") == "http://127.0.0.1:8080/h"
    bad_urls = ("ftp://example.com/h", "example.com/hook", "https://", "mailto:a@b.org", "", "x")
    for bad in bad_urls:
        with pytest.raises(ValueError, match="give an http:// or https:// URL with a host"):
            check_webhook_url(bad)


def test_open_mode_webhook_needs_url_and_secret_together() -> None:
    with pytest.raises(ValidationError, match="BODYSERVE_WEBHOOK_SECRET"):
        Settings(_env_file=None, webhook_url="https://example.com/h")
    with pytest.raises(ValidationError, match="BODYSERVE_WEBHOOK_URL"):
        Settings(_env_file=None, webhook_secret="s")
    with pytest.raises(ValidationError):
        Settings(_env_file=None, webhook_url="ftp://x/h", webhook_secret="s")
    settings = Settings(_env_file=None, webhook_url="https://example.com/h", webhook_secret="s")
    assert "s" not in repr(settings.webhook_secret)


def test_backoff_doubles_with_jitter_is_capped_and_honours_retry_after() -> None:
    rng = random.Random(0)
    for attempt, ceiling in [(1, 15.0), (2, 30.0), (3, 60.0), (6, 480.0), (7, 900.0), (9, 900.0)]:
        delays = [retry_delay_s(attempt, 15.0, 900.0, rng=rng) for _ in range(200)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling, attempt
        assert max(delays) - min(delays) > ceiling / 4, "jitter spreads the retries"
    assert retry_delay_s(1, 15.0, 900.0, retry_after_s=120, rng=rng) == 120
    assert retry_delay_s(1, 15.0, 900.0, retry_after_s=86400, rng=rng) == 900  # capped
    # The defaults: 8 attempts spread over roughly half an hour (7 waits).
    defaults = Settings(_env_file=None)
    waits = range(1, defaults.webhook_max_attempts)
    low = sum(min(900.0, 15.0 * 2 ** (a - 1)) / 2 for a in waits)
    high = sum(min(900.0, 15.0 * 2 ** (a - 1)) for a in waits)
    assert (defaults.webhook_retry_base_s, defaults.webhook_retry_max_s) == (15.0, 900.0)
    assert 15 * 60 < low < high < 32 * 60


# --------------------------------------------------------------------------- one attempt


class _Receiver(BaseHTTPRequestHandler):
    """Answers each path as scripted: /ok 200, /down 503, /busy 429 + Retry-After, /bad 400,
    /moved 302 to /ok, /slow waits 3 s."""

    requests: ClassVar[list[tuple[str, dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.requests.append((self.path, dict(self.headers), body))
        if self.path == "/slow":
            time.sleep(3)
        status, headers, reply = {
            "/ok": (200, {}, b"thanks"),
            "/down": (503, {}, b"maintenance"),
            "/busy": (429, {"Retry-After": "7"}, b""),
            "/bad": (400, {}, b"no such hook\n" + b"x" * 1000),
            "/moved": (302, {"Location": "/ok"}, b""),
            "/slow": (200, {}, b""),
        }[self.path]
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _post(receiver: str, path: str, timeout_s: float = 2.0) -> Any:
    with http_client(timeout_s) as client:
        return post_event(client, WebhookEndpoint(receiver + path, SECRET), "evt_7", BODY)


def test_post_event_signs_and_classifies_answers(receiver: str) -> None:
    _Receiver.requests.clear()
    ok = _post(receiver, "/ok")
    assert (ok.delivered, ok.status_code, ok.error, ok.result) == (True, 200, None, "delivered")
    _, headers, body = _Receiver.requests[-1]
    assert body == BODY and headers["Content-Type"] == "application/json"
    assert headers[EVENT_ID_HEADER] == "evt_7"
    assert verify_signature(SECRET, headers[SIGNATURE_HEADER], body)

    down = _post(receiver, "/down")
    assert (down.delivered, down.retryable, down.result) == (False, True, "retryable_error")
    assert down.error == "HTTP 503: maintenance"
    busy = _post(receiver, "/busy")
    assert busy.retryable and busy.retry_after_s == 7.0 and busy.error == "HTTP 429"
    bad = _post(receiver, "/bad")
    assert (bad.retryable, bad.result) == (False, "permanent_error")
    assert bad.error is not None and bad.error.startswith("HTTP 400: no such hook xxx")
    assert len(bad.error) < 250, "only an excerpt of the receiver's answer"

    _Receiver.requests.clear()
    moved = _post(receiver, "/moved")
    assert not moved.retryable and "redirects are not followed (to /ok)" in (moved.error or "")
    assert [p for p, _, _ in _Receiver.requests] == ["/moved"], "the redirect was followed"


def test_post_event_retries_timeouts_and_connection_errors(receiver: str) -> None:
    started = time.monotonic()
    slow = _post(receiver, "/slow", timeout_s=0.5)
    assert slow.retryable and "timed out" in (slow.error or "")
    assert time.monotonic() - started < 2.5
    refused = _post(f"http://127.0.0.1:{free_port()}", "/ok")  # nothing listens there
    assert refused.retryable and "connection failed" in (refused.error or "")


# --------------------------------------------------------------------------- Redis


@pytest.fixture
def url(redis_url: str) -> Iterator[str]:
    """A database of these tests' own on the session's Redis, emptied for each test."""
    url = redis_url.rsplit("/", 1)[0] + "/14"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.close()


@pytest.fixture
def store(url: str) -> JobStore:
    return JobStore.from_url(url, result_ttl_s=600)


def test_job_event_is_the_job_as_the_status_route_shows_it(store: JobStore) -> None:
    job = store.create("pose_generation", {"n": 1}, owner="abc")
    with pytest.raises(ValueError, match="has not ended"):
        job_event(job, "http://gw")
    store.finish(job.id, JobStatus.succeeded, result={})
    event = job_event(store.get(job.id), "https://gw.example.com", now=123.0)
    payload = json.loads(event.body)
    assert payload["id"] == event.id and event.id.startswith("evt_")
    assert payload["type"] == event.type == "job.succeeded" and payload["created"] == 123.0
    assert payload["job"]["id"] == job.id and payload["job"]["status"] == "succeeded"
    assert payload["job"]["links"] == {
        "self": f"https://gw.example.com/v1/jobs/{job.id}",
        "result": f"https://gw.example.com/v1/jobs/{job.id}/result",
    }
    assert "owner" not in payload["job"] and "options" not in payload["job"]
    assert "webhook" not in payload["job"]


def test_delivery_state_is_claimed_once_and_never_outlives_its_job(store: JobStore) -> None:
    log = DeliveryLog(store.redis)
    job = store.create("pose_generation", {})
    store.finish(job.id, JobStatus.failed, error="x")
    assert log.claim(job.id, "evt_a")
    assert not log.claim(job.id, "evt_b"), "one event per job"
    state = delivery_state(store.redis.hgetall(JobStore.key(job.id)))
    assert state == WebhookDelivery(status="pending", event_id="evt_a", attempts=0)
    ttl = store.redis.ttl(JobStore.key(job.id))
    log.update(job.id, WebhookDelivery(status="delivered", event_id="evt_a", attempts=2))
    assert 0 < store.redis.ttl(JobStore.key(job.id)) <= ttl, "the record keeps its expiry"
    # A job deleted (or expired) meanwhile is not brought back as a record without expiry.
    store.redis.delete(JobStore.key(job.id))
    log.update(job.id, WebhookDelivery(status="failed", event_id="evt_a", attempts=3))
    assert not log.claim(job.id, "evt_c")
    assert not store.redis.exists(JobStore.key(job.id))


def test_metric_families_count_outcomes_and_attempts(store: JobStore) -> None:
    def samples() -> dict[tuple[str, str], float]:
        return {
            (s.name, next(iter(s.labels.values()))): s.value
            for family in metric_families(store.redis)
            for s in family.samples
        }

    assert samples()[("bodyserve_webhook_deliveries_total", "delivered")] == 0
    log = DeliveryLog(store.redis)
    log.count(AttemptResult(False, True, "HTTP 503"))
    log.count(AttemptResult(True, False), "delivered")
    log.count(AttemptResult(False, False, "HTTP 400"), "failed")
    counted = samples()
    assert counted[("bodyserve_webhook_deliveries_total", "delivered")] == 1
    assert counted[("bodyserve_webhook_deliveries_total", "failed")] == 1
    assert counted[("bodyserve_webhook_deliveries_total", "skipped")] == 0
    assert counted[("bodyserve_webhook_attempts_total", "retryable_error")] == 1
    assert counted[("bodyserve_webhook_attempts_total", "permanent_error")] == 1
    assert counted[("bodyserve_webhook_attempts_total", "delivered")] == 1


def test_key_webhooks_set_keep_rotate_and_clear(url: str) -> None:
    keys = KeyStore.from_url(url)
    key, _ = keys.create("team a")
    assert key.webhook_url is None and keys.webhook_endpoint(key.id) is None
    with pytest.raises(ValueError, match="http:// or https://"):
        keys.set_webhook(key.id, "file:///etc/passwd")
    assert keys.webhook_endpoint(key.id) is None
    with pytest.raises(KeyNotFound):
        keys.set_webhook("0123456789ab", "https://example.com/h")

    key, secret = keys.set_webhook(key.id, "https://example.com/h")
    assert secret is not None and secret.startswith("whsec_") and len(secret) > 40
    assert key.webhook_url == "https://example.com/h"
    assert keys.webhook_endpoint(key.id) == WebhookEndpoint("https://example.com/h", secret)
    assert secret not in repr(keys.webhook_endpoint(key.id))
    # Moving the URL keeps the secret (the receiver need not change); rotating replaces it.
    _, kept = keys.set_webhook(key.id, "https://example.com/new")
    assert kept is None and keys.webhook_endpoint(key.id) == WebhookEndpoint(
        "https://example.com/new", secret
    )
    _, rotated = keys.set_webhook(key.id, "https://example.com/new", rotate_secret=True)
    assert rotated not in (None, secret)
    assert keys.clear_webhook(key.id).webhook_url is None
    assert keys.webhook_endpoint(key.id) is None


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.tools.cli", "keys", *args],
        cwd=REPO_ROOT,
        # Wide, so that rich does not wrap the messages checked below.
        env={**os.environ, "BODYSERVE_REDIS_URL": url, "COLUMNS": "400"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_keys_command_line_webhooks(url: str) -> None:
    keys = KeyStore.from_url(url)
    bad = _cli(url, "create", "x", "--webhook-url", "example.com/hook")
    assert bad.returncode == 2 and "http:// or https://" in bad.stderr
    assert keys.list() == [], "no key is issued with a bad webhook URL"

    created = _cli(url, "create", "team b", "--webhook-url", "https://b.example.com/h")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()  # still the key alone on stdout
    key = keys.verify(token)
    assert key is not None and key.webhook_url == "https://b.example.com/h"
    endpoint = keys.webhook_endpoint(key.id)
    assert endpoint is not None and endpoint.secret in created.stderr
    assert "not shown again" in created.stderr

    as_json = json.loads(
        _cli(url, "create", "team c", "--json", "--webhook-url", "http://c/h").stdout
    )
    assert as_json["key"].startswith("bsk_") and as_json["webhook_url"] == "http://c/h"
    assert keys.webhook_endpoint(as_json["id"]).secret == as_json["webhook_secret"]  # type: ignore[union-attr]

    listed = _cli(url, "list", "--json")
    assert endpoint.secret not in listed.stdout and as_json["webhook_secret"] not in listed.stdout
    assert {k["webhook_url"] for k in json.loads(listed.stdout)} == {
        "https://b.example.com/h",
        "http://c/h",
    }

    rotated = _cli(url, "webhook", key.id, "https://b.example.com/v2", "--rotate-secret")
    assert rotated.returncode == 0, rotated.stderr
    new_secret = rotated.stdout.strip()
    assert keys.webhook_endpoint(key.id) == WebhookEndpoint("https://b.example.com/v2", new_secret)
    assert _cli(url, "webhook", key.id, "--clear").returncode == 0
    assert keys.webhook_endpoint(key.id) is None
    assert _cli(url, "webhook", key.id).returncode == 2  # neither a URL nor --clear
    missing = _cli(url, "webhook", "0123456789ab", "https://x.example.com/h")
    assert missing.returncode == 1 and "no API key" in missing.stdout


def test_http_client_has_short_timeouts_and_follows_no_redirects() -> None:
    with http_client(10.0) as client:
        assert client.follow_redirects is False
        assert client.timeout == httpx.Timeout(10.0, connect=5.0)
