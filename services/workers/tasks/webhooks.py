"""Webhook delivery: one event per ended job, POSTed by any worker, retried with backoff.

:func:`services.common.webhooks.announce_job_end` queues a job's event (once) wherever the job
may end. ``bodyserve.deliver_webhook`` runs on the ``webhooks`` queue, which every worker
consumes besides its own, so an event never waits behind a backlog of jobs: at most behind the
job a worker is running. Each attempt POSTs the event signed afresh
(:mod:`services.common.webhooks`); a retryable failure is retried with Celery's retry (a new
message with a countdown: ``webhook_retry_base_s`` doubling per attempt up to
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

from services.capabilities import WEBHOOK_TASK
from services.common.job_info import WebhookDelivery
from services.common.jobs import JobStore
from services.common.webhooks import (
    DeliveryLog,
    delivery_log,
    delivery_state,
    endpoint_for,
    http_client,
    post_event,
    record_delivery,
    retry_delay_s,
)
from services.workers.celery_app import app
from shared.settings import get_settings

log = logging.getLogger("bodyserve.webhooks")


@lru_cache(maxsize=1)
def _client() -> httpx.Client:
    # One per process: its connection pool is reused across deliveries to the same receiver.
    return http_client(get_settings().webhook_timeout_s)


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
        record_delivery(deliveries, job_id, skipped, outcome="skipped")
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
        record_delivery(deliveries, job_id, state, result, "delivered")
        return "delivered"
    if result.retryable and attempt < settings.webhook_max_attempts:
        delay = retry_delay_s(
            attempt,
            settings.webhook_retry_base_s,
            settings.webhook_retry_max_s,
            result.retry_after_s,
        )
        retrying = state.model_copy(update={"status": "retrying", "next_attempt_at": now + delay})
        record_delivery(deliveries, job_id, retrying, result)
        log.info(
            "webhook %s of job %s: attempt %d failed (%s); retrying in %.1f s",
            event_id,
            job_id,
            attempt,
            result.error,
            delay,
        )
        raise self.retry(countdown=delay)
    record_delivery(
        deliveries, job_id, state.model_copy(update={"status": "failed"}), result, "failed"
    )
    log.warning(
        "webhook %s of job %s failed after %d attempts: %s", event_id, job_id, attempt, result.error
    )
    return "failed"
