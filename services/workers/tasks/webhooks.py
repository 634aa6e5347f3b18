"""Webhook delivery: one event per ended job, POSTed by any worker, retried with backoff.

:func:`announce_job_end` is called wherever a job may end (the worker's job life cycle, the
gateway's cancellation); it queues the job's event once (the first caller claims it in the job
record) when the job's owner has a webhook endpoint. ``bodyserve.deliver_webhook`` runs on the
``webhooks`` queue, which every worker consumes besides its own, so an event never waits behind
a backlog of jobs: at most behind the job a worker is running. Each attempt POSTs the event
signed afresh (:mod:`services.common.webhooks`); a retryable failure is retried with Celery's
retry (a new message with a countdown: ``webhook_retry_base_s`` doubling per attempt up to
``webhook_retry_max_s``, with jitter) until ``webhook_max_attempts``; the job record shows the
delivery's state (``GET /v1/jobs/{id}``: ``webhook``).
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache

import httpx
import redis
from celery import Task

from services.common.jobs import OPEN_OWNER, JobNotFound, JobStore
from services.common.keys import key_store
from services.common.stores import job_store
from services.common.webhooks import (
    AttemptResult,
    DeliveryLog,
    WebhookEndpoint,
    delivery_state,
    http_client,
    job_event,
    open_mode_endpoint,
    post_event,
    public_base_url,
    retry_delay_s,
)
from services.gateway.schemas import WebhookDelivery
from services.workers.celery_app import WEBHOOK_TASK, WEBHOOKS_QUEUE, app
from shared.settings import get_settings

log = logging.getLogger("bodyserve.webhooks")


def endpoint_for(owner: str) -> WebhookEndpoint | None:
    """Where the events of ``owner``'s jobs go: its API key's endpoint, or in open mode the
    settings' one; None when there is none."""
    if owner == OPEN_OWNER:
        return open_mode_endpoint(get_settings())
    return key_store().webhook_endpoint(owner)


@lru_cache(maxsize=1)
def delivery_log() -> DeliveryLog:
    return DeliveryLog(job_store().redis)


@lru_cache(maxsize=1)
def _client() -> httpx.Client:
    # One per process: its connection pool is reused across deliveries to the same receiver.
    return http_client(get_settings().webhook_timeout_s)


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
        app.send_task(
            WEBHOOK_TASK,
            args=[job_id, job.owner, event.id, event.body],
            task_id=event.id,
            queue=WEBHOOKS_QUEUE,
        )
    except Exception as exc:
        log.exception("could not queue webhook event %s of job %s", event.id, job_id)
        failed = WebhookDelivery(
            status="failed", event_id=event.id, attempts=0, last_error=f"not queued: {exc}"
        )
        _record(deliveries, job_id, failed, outcome="failed")
        return None
    return event.id


def _record(
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


def _previous_error(deliveries: DeliveryLog, job_id: str) -> str | None:
    try:
        record = {"webhook": deliveries.redis.hget(JobStore.key(job_id), "webhook")}
        previous = delivery_state(record)
    except (redis.RedisError, ValueError):
        return None
    return previous.last_error if previous else None


@app.task(bind=True, name=WEBHOOK_TASK, max_retries=None)
def deliver_webhook(self: Task, job_id: str, owner: str, event_id: str, body: str) -> str:
    """One delivery attempt of event ``event_id``; retried by re-queueing itself."""
    settings = get_settings()
    deliveries = delivery_log()
    attempt = self.request.retries + 1
    endpoint = endpoint_for(owner)  # read now: the operator may have changed or removed it
    if endpoint is None:
        skipped = WebhookDelivery(
            status="skipped",
            event_id=event_id,
            attempts=attempt - 1,
            last_error="the webhook endpoint was removed before the event was delivered",
        )
        _record(deliveries, job_id, skipped, outcome="skipped")
        return "skipped"

    result = post_event(_client(), endpoint, event_id, body.encode())
    now = time.time()
    state = WebhookDelivery(
        status="delivered",
        event_id=event_id,
        attempts=attempt,
        last_error=result.error or _previous_error(deliveries, job_id),
        last_attempt_at=now,
    )
    if result.delivered:
        _record(deliveries, job_id, state, result, "delivered")
        return "delivered"
    if result.retryable and attempt < settings.webhook_max_attempts:
        delay = retry_delay_s(
            attempt,
            settings.webhook_retry_base_s,
            settings.webhook_retry_max_s,
            result.retry_after_s,
        )
        retrying = state.model_copy(update={"status": "retrying", "next_attempt_at": now + delay})
        _record(deliveries, job_id, retrying, result)
        log.info(
            "webhook %s of job %s: attempt %d failed (%s); retrying in %.1f s",
            event_id,
            job_id,
            attempt,
            result.error,
            delay,
        )
        raise self.retry(countdown=delay)
    _record(deliveries, job_id, state.model_copy(update={"status": "failed"}), result, "failed")
    log.warning(
        "webhook %s of job %s failed after %d attempts: %s", event_id, job_id, attempt, result.error
    )
    return "failed"
