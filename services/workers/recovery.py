"""Give back the jobs of dead workers without waiting for the broker's visibility timeout.

With late acks, a job whose worker is killed stays in kombu's ``unacked`` hash until the
visibility timeout (an hour) restores it. Every worker runs this sweeper: an unacknowledged
message whose job lease has lapsed (no heartbeat for ``LEASE_TTL_S``) and that has waited more
than a grace period belongs to a dead worker, so it is pushed back onto its queue at once. A
per-message lock makes sure only one sweeper restores it, and the job lease makes sure a job is
never run by two workers at the same time.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import redis
from celery import Celery

from services.common.jobs import LEASE_TTL_S, JobStatus, JobStore
from shared.settings import get_settings

log = logging.getLogger("bodyserve.recovery")
SWEEP_INTERVAL_S = 3.0
GRACE_S = LEASE_TTL_S + 2


def sweep_once(app: Celery, store: JobStore, client: redis.Redis) -> list[str]:
    """Restore the messages of jobs nobody is running; returns their job ids."""
    restored: list[str] = []
    now = time.time()
    entries = client.hgetall("unacked")
    if not entries:
        return restored
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for tag, raw in entries.items():
            tag = tag.decode() if isinstance(tag, bytes) else tag
            try:
                message = json.loads(raw)[0]
                job_id = message["headers"]["id"]
            except (ValueError, KeyError, IndexError, TypeError):
                continue
            delivered_at = client.zscore("unacked_index", tag)
            if delivered_at is None or now - delivered_at < GRACE_S:
                continue
            if store.lease_held(job_id):
                continue
            try:
                job = store.get(job_id)
            except KeyError:
                job = None
            if not client.set(f"bodyserve:restore:{tag}", "1", nx=True, ex=60):
                continue
            if job is not None and job.status.terminal:
                # Finished but the ack was lost with its worker: drop the message.
                channel.qos._remove_from_indices(tag).execute()
                continue
            channel.qos.restore_by_tag(tag)
            if job is not None:
                store.requeue(job_id, "requeued: its worker stopped answering")
            restored.append(job_id)
            log.warning("restored job %s from a dead worker", job_id)
    return restored


def run_sweeper(app: Celery, stop: threading.Event, name: str) -> None:
    settings = get_settings()
    store = JobStore.from_url(settings.redis_url, settings.result_ttl_s)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    queues = ",".join(sorted(q.name for q in app.conf.task_queues))
    while True:
        try:
            # The gateway's /readyz counts these keys to know a worker is there.
            client.set(f"bodyserve:worker:{name}", queues, ex=int(3 * SWEEP_INTERVAL_S) + 1)
            sweep_once(app, store, client)
        except redis.RedisError:
            log.debug("sweeper %s: Redis unavailable, retrying", name, exc_info=True)
        except Exception:
            log.exception("sweeper %s failed; continuing", name)
        if stop.wait(SWEEP_INTERVAL_S):
            client.delete(f"bodyserve:worker:{name}")
            return


__all__ = ["JobStatus", "run_sweeper", "sweep_once"]
