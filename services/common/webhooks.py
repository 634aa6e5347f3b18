"""Signed webhook events when a job ends: the event, its signature, one delivery attempt, and the
delivery's state and counters in Redis.

The endpoint never comes from a request (no fetching of user-given URLs): the operator sets it
per API key (``bodyserve keys webhook``), or for open mode in the settings.

:func:`announce_job_end` is called wherever a job may end (the worker's job life cycle, the
gateway's cancellation); it queues the job's event once, by task name through the broker client
(:mod:`services.common.broker`), so that the gateway needs no worker code. The Celery task that
delivers and retries, ``bodyserve.deliver_webhook``, lives in
:mod:`services.workers.tasks.webhooks`.

An event is POSTed as JSON ``{"id", "type", "created", "job"}`` (``job``: what ``GET
/v1/jobs/{id}`` answers, links included) with the headers ``Bodyserve-Event-Id`` (the same on
every attempt: receivers drop repeats by it) and ``Bodyserve-Signature: t=<unix>,v1=<hex>``,
where ``v1`` is HMAC-SHA256 with the endpoint's secret over ``f"{t}.{body}"`` (Stripe's
scheme: the timestamp is signed, so an old event cannot be replayed later; see
:func:`verify_signature`).

Keys (``bodyserve:`` prefix):

- ``job:<id>`` field ``webhook``: the delivery's state as JSON (``WebhookDelivery``), written
  only while the job record exists, so it expires and is deleted with the record.
- ``metrics:webhooks``: counters ``deliveries|<outcome>`` and ``attempts|<result>``, exported by
  the gateway's ``/metrics``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Literal

import httpx
import redis
from prometheus_client.core import CounterMetricFamily

from services.capabilities import WEBHOOK_TASK
from services.common import broker
from services.common.job_info import JobInfo, WebhookDelivery
from services.common.jobs import OPEN_OWNER, PREFIX, Job, JobNotFound, JobStatus, JobStore
from services.common.keys import key_store
from services.common.stores import job_store
from services.common.webhook_endpoints import WebhookEndpoint, open_mode_endpoint
from shared.settings import Settings, get_settings

log = logging.getLogger("bodyserve.webhooks")

EVENT_ID_HEADER = "Bodyserve-Event-Id"
SIGNATURE_HEADER = "Bodyserve-Signature"
USER_AGENT = "bodyserve-webhooks/0.1"
# How old a signed timestamp a receiver should accept (seconds); verify_signature's default.
DEFAULT_TOLERANCE_S = 300
EVENT_TYPES: dict[JobStatus, str] = {
    JobStatus.succeeded: "job.succeeded",
    JobStatus.failed: "job.failed",
    JobStatus.cancelled: "job.cancelled",
}
# Statuses other than these are retried: the receiver is down, overloaded or slow.
RETRYABLE_STATUSES = frozenset({408, 429})
METRICS_KEY = f"{PREFIX}metrics:webhooks"
DELIVERY_OUTCOMES = ("delivered", "failed", "skipped")
ATTEMPT_RESULTS = ("delivered", "retryable_error", "permanent_error")
_ERROR_EXCERPT_BYTES = 200


def endpoint_for(owner: str) -> WebhookEndpoint | None:
    """Where the events of ``owner``'s jobs go: its API key's endpoint, or in open mode the
    settings' one; None when there is none."""
    if owner == OPEN_OWNER:
        return open_mode_endpoint(get_settings())
    return key_store().webhook_endpoint(owner)


def public_base_url(settings: Settings) -> str:
    """The gateway's address for links in events: ``public_url``, else host and port."""
    if settings.public_url is not None:
        return str(settings.public_url).rstrip("/")
    return f"http://{settings.gateway_host}:{settings.gateway_port}"


# --------------------------------------------------------------------------- signatures


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``Bodyserve-Signature`` header of ``body`` sent at ``timestamp`` (unix seconds)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify_signature(
    secret: str,
    header: str,
    body: bytes | str,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    *,
    now: float | None = None,
) -> bool:
    """True when ``header`` (``Bodyserve-Signature``) signs ``body`` with ``secret`` and its
    timestamp is within ``tolerance_s`` of ``now``. ``body`` must be the raw bytes received
    (re-serialised JSON would not match). Several ``v1`` values may be given (any may match)."""
    raw = body.encode() if isinstance(body, str) else body
    pairs = [part.strip().split("=", 1) for part in header.split(",") if "=" in part]
    timestamps = [value for name, value in pairs if name == "t"]
    signatures = [value for name, value in pairs if name == "v1"]
    if len(timestamps) != 1 or not timestamps[0].isdigit() or not signatures:
        return False
    timestamp = int(timestamps[0])
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = sign(secret, raw, timestamp).split("v1=", 1)[1]
    return any(hmac.compare_digest(expected, signature) for signature in signatures)


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class JobEvent:
    id: str
    type: str
    body: str  # the exact JSON sent (and signed) on every attempt


def job_links(job_id: str, status: JobStatus, base_url: str) -> dict[str, str]:
    """The links of ``GET /v1/jobs/{id}`` (tests/integration/test_webhooks.py compares them)."""
    links = {"self": f"{base_url}/v1/jobs/{job_id}"}
    if status is JobStatus.succeeded:
        links["result"] = f"{base_url}/v1/jobs/{job_id}/result"
    return links


def job_event(job: Job, base_url: str, *, now: float | None = None) -> JobEvent:
    """The event of an ended job: its id, type and JSON body."""
    if not job.status.terminal:
        raise ValueError(f"job {job.id} has not ended ({job.status.value})")
    record = {k: v for k, v in asdict(job).items() if k not in ("options", "owner")}
    info = JobInfo(**record, links=job_links(job.id, job.status, base_url))
    event_id = f"evt_{uuid.uuid4().hex}"
    event_type = EVENT_TYPES[job.status]
    event = {
        "id": event_id,
        "type": event_type,
        "created": time.time() if now is None else now,
        "job": info.model_dump(mode="json", exclude={"webhook"}),
    }
    return JobEvent(event_id, event_type, json.dumps(event, separators=(",", ":")))


# --------------------------------------------------------------------------- one attempt


@dataclass(frozen=True)
class AttemptResult:
    delivered: bool
    retryable: bool
    error: str | None = None
    status_code: int | None = None
    retry_after_s: float | None = None

    @property
    def result(self) -> str:
        """Its label in ``bodyserve_webhook_attempts_total``."""
        if self.delivered:
            return "delivered"
        return "retryable_error" if self.retryable else "permanent_error"


def http_client(timeout_s: float) -> httpx.Client:
    """A client for deliveries: short timeouts, no redirects, no proxies from the environment
    (an operator-set endpoint is reached directly)."""
    return httpx.Client(
        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": USER_AGENT},
    )


def _excerpt(response: httpx.Response) -> str:
    """The first bytes of an error response's body (the receiver's reason), never all of it."""
    data = b""
    try:
        for chunk in response.iter_bytes():
            data += chunk
            if len(data) >= _ERROR_EXCERPT_BYTES:
                break
    except httpx.HTTPError:
        pass
    text = " ".join(data[:_ERROR_EXCERPT_BYTES].decode("utf-8", "replace").split())
    return f": {text}" if text else ""


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    return float(value) if value.isdigit() else None


def post_event(
    client: httpx.Client,
    endpoint: WebhookEndpoint,
    event_id: str,
    body: bytes,
    *,
    now: float | None = None,
) -> AttemptResult:
    """POST one signed event and classify the answer: 2xx delivered; connection errors,
    timeouts, 408, 429 and 5xx worth retrying; anything else (other 4xx, a redirect, which is
    not followed) refused for good."""
    timestamp = int(time.time() if now is None else now)
    headers = {
        "Content-Type": "application/json",
        EVENT_ID_HEADER: event_id,
        SIGNATURE_HEADER: sign(endpoint.secret, body, timestamp),
    }
    try:
        with client.stream("POST", endpoint.url, content=body, headers=headers) as response:
            status = response.status_code
            if 200 <= status < 300:
                return AttemptResult(delivered=True, retryable=False, status_code=status)
            if 300 <= status < 400:
                where = response.headers.get("Location", "?")
                return AttemptResult(
                    delivered=False,
                    retryable=False,
                    status_code=status,
                    error=f"HTTP {status}: redirects are not followed (to {where}); configure "
                    "the final URL",
                )
            retryable = status >= 500 or status in RETRYABLE_STATUSES
            return AttemptResult(
                delivered=False,
                retryable=retryable,
                status_code=status,
                error=f"HTTP {status}{_excerpt(response)}",
                retry_after_s=_retry_after(response) if retryable else None,
            )
    except httpx.TimeoutException as exc:
        return AttemptResult(False, True, f"timed out ({type(exc).__name__})")
    except httpx.TransportError as exc:
        return AttemptResult(False, True, f"connection failed: {type(exc).__name__}: {exc}")


def retry_delay_s(
    attempt: int,
    base_s: float,
    max_s: float,
    retry_after_s: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): ``base_s * 2**(attempt-1)``
    up to ``max_s``, drawn between half of it and all of it (jitter: receivers that come back
    are not hit by every sender at once), and no less than the receiver's ``Retry-After``
    (itself capped at ``max_s``)."""
    ceiling = min(max_s, base_s * 2 ** (attempt - 1))
    delay = (rng or random).uniform(ceiling / 2, ceiling)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, max_s))
    return delay


# --------------------------------------------------------------------------- state and counters

# Write the job's ``webhook`` field only while the job record exists (a deleted or expired job
# must not come back as a record without expiry); 'claim' writes it only if it is not set yet.
# KEYS: job hash. ARGV: 'claim' | 'update', the state's JSON. Returns 1 when written.
_WRITE_STATE_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if ARGV[1] == 'claim' then
  return redis.call('HSETNX', KEYS[1], 'webhook', ARGV[2])
end
redis.call('HSET', KEYS[1], 'webhook', ARGV[2])
return 1
"""

DeliveryStatus = Literal["pending", "retrying", "delivered", "failed", "skipped"]


class DeliveryLog:
    """Each job's delivery state (the ``webhook`` field of its record) and the counters."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._write = client.register_script(_WRITE_STATE_SCRIPT)

    def claim(self, job_id: str, event_id: str) -> bool:
        """Mark the job's event pending; False when it already has one (or no record): the
        one event per job, however many callers see it end."""
        state = WebhookDelivery(status="pending", event_id=event_id, attempts=0)
        return bool(
            self._write(keys=[JobStore.key(job_id)], args=["claim", state.model_dump_json()])
        )

    def update(self, job_id: str, state: WebhookDelivery) -> None:
        self._write(keys=[JobStore.key(job_id)], args=["update", state.model_dump_json()])

    def count(self, attempt: AttemptResult | None = None, outcome: str | None = None) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            if attempt is not None:
                pipe.hincrby(METRICS_KEY, f"attempts|{attempt.result}", 1)
            if outcome is not None:
                pipe.hincrby(METRICS_KEY, f"deliveries|{outcome}", 1)
            pipe.execute()


def delivery_state(record: Mapping[Any, Any]) -> WebhookDelivery | None:
    """The ``webhook`` field of a job record (``HGETALL`` with decoded responses), or None."""
    raw = record.get("webhook")
    return WebhookDelivery.model_validate_json(raw) if raw else None


def metric_families(client: redis.Redis) -> list[CounterMetricFamily]:
    """``bodyserve_webhook_deliveries_total{outcome}`` and ``bodyserve_webhook_attempts_total
    {result}``, read from Redis (every worker's deliveries in one scrape of the gateway)."""
    raw: dict[Any, Any] = client.hgetall(METRICS_KEY)
    counts = {str(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in raw.items()}
    deliveries = CounterMetricFamily(
        "bodyserve_webhook_deliveries",
        "Webhook events by final outcome: delivered, failed (refused, or out of attempts), "
        "skipped (the endpoint was removed before delivery).",
        labels=["outcome"],
    )
    for outcome in DELIVERY_OUTCOMES:
        deliveries.add_metric([outcome], counts.get(f"deliveries|{outcome}", 0.0))
    attempts = CounterMetricFamily(
        "bodyserve_webhook_attempts",
        "Webhook POSTs by result: delivered (2xx), retryable_error (connection, timeout, 408, "
        "429, 5xx), permanent_error (other 4xx, redirects).",
        labels=["result"],
    )
    for result in ATTEMPT_RESULTS:
        attempts.add_metric([result], counts.get(f"attempts|{result}", 0.0))
    return [deliveries, attempts]


# --------------------------------------------------------------------------- announcing an end


@lru_cache(maxsize=1)
def delivery_log() -> DeliveryLog:
    """This process's delivery log, on the job store's Redis."""
    return DeliveryLog(job_store().redis)


def record_delivery(
    deliveries: DeliveryLog,
    job_id: str,
    state: WebhookDelivery,
    attempt: AttemptResult | None = None,
    outcome: str | None = None,
) -> None:
    """Write the state and counters; a Redis hiccup here must not undo a delivery."""
    try:
        deliveries.update(job_id, state)
        deliveries.count(attempt, outcome)
    except redis.RedisError:
        log.warning("could not record webhook state of job %s", job_id, exc_info=True)


def announce_job_end(job_id: str) -> str | None:
    """Queue the event of job ``job_id`` if it has ended and its owner has a webhook endpoint.

    Once per job: every place where a job may end calls it, the first call claims the event.
    Returns the event id when this call queued it, else None. Never raises: a job's outcome
    does not depend on its webhook (a failure is logged, and shown on the job when it can be).
    """
    deliveries = delivery_log()
    try:
        job = job_store().get(job_id)
        if not job.status.terminal or endpoint_for(job.owner) is None:
            return None
        event = job_event(job, public_base_url(get_settings()))
        if not deliveries.claim(job_id, event.id):
            return None
    except JobNotFound:
        return None
    except redis.RedisError as exc:  # the job's own retry (or the client) will see it too
        log.warning("no webhook event for job %s: Redis unavailable (%s)", job_id, exc)
        return None
    except Exception:
        log.exception("could not prepare the webhook event of job %s", job_id)
        return None
    try:
        # By name, to the webhooks queue (the table's route): any worker delivers it.
        broker.send_task(WEBHOOK_TASK, [job_id, job.owner, event.id, event.body], event.id)
    except Exception as exc:
        log.exception("could not queue webhook event %s of job %s", event.id, job_id)
        failed = WebhookDelivery(
            status="failed", event_id=event.id, attempts=0, last_error=f"not queued: {exc}"
        )
        record_delivery(deliveries, job_id, failed, outcome="failed")
        return None
    return event.id
