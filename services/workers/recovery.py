"""Give back the jobs of dead workers without waiting for the broker's visibility timeout.

With late acks, a job whose worker is killed stays in kombu's ``unacked`` hash until the
visibility timeout (an hour) restores it. Every worker runs this sweeper: an unacknowledged
message whose job lease has lapsed (no heartbeat for ``LEASE_TTL_S``), that has waited more
than a grace period and that no live worker holds belongs to a dead worker, so it is pushed
back onto its queue at once. A per-message lock makes sure only one sweeper restores it, and
the job lease makes sure a job is never run by two workers at the same time.

What keeps a live worker's messages from being taken for a dead one's:

- *held tags*: every sweeper publishes the delivery tags its worker holds (running, waiting
  for a pool slot, or waiting for a retry's countdown: none of these has a lease yet), under
  ``bodyserve:held:<worker>`` with a short expiry; a message held by a live worker is never
  restored, and a dead worker's set expires with it;
- *settling*: after Redis comes back (a restart, or an outage seen from this worker) the
  leases of running jobs may have lapsed; their heartbeats take them back within seconds, so
  nothing is restored until Redis has been up, and reachable from here, for ``SETTLE_S``.

A second, slower pass (one worker at a time, every ``job_orphan_after_s / 4``) re-queues
*orphans*: jobs that have not ended, hold no lease and whose message is nowhere (not queued,
not unacknowledged) for ``job_orphan_after_s``, seen twice. That is what a Redis host crash can
leave (AOF with fsync every second: the job's record written, its message lost), or a gateway
that recorded a job and lost Redis before it could queue it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterable

import redis
from celery import Celery
from celery.worker import state

from services.capabilities import CAPABILITIES, LEASED_TASKS
from services.common.jobs import HEARTBEAT_S, LEASE_TTL_S, PREFIX, JobNotFound, JobStore
from services.workers.lifecycle import JOB_TASK_NAMES
from shared.settings import get_settings

log = logging.getLogger("bodyserve.recovery")
SWEEP_INTERVAL_S = 3.0
GRACE_S = LEASE_TTL_S + 2
# Long enough for every live job's heartbeat to take its lapsed lease back after an outage.
SETTLE_S = LEASE_TTL_S + HEARTBEAT_S
HELD_PREFIX = f"{PREFIX}held:"
HELD_TTL_S = int(3 * SWEEP_INTERVAL_S) + 1
ORPHAN_LOCK = f"{PREFIX}orphan-sweep"


# --------------------------------------------------------------------------- held messages


def held_delivery_tags() -> set[str]:
    """The delivery tags of the messages this worker process's consumer holds: running,
    reserved for a pool slot, or scheduled for a retry's countdown."""

    pools = (state.reserved_requests, state.active_requests, state.scheduled_requests)
    for _ in range(10):
        try:
            requests = [request for pool in pools for request in list(pool)]
            break
        except RuntimeError:  # the consumer changed a set while it was read: read again
            time.sleep(0.01)
    else:
        raise RuntimeError("could not read the worker's requests")
    tags = set()
    for request in requests:
        tag = getattr(getattr(request, "message", None), "delivery_tag", None)
        if tag:
            tags.add(str(tag))
    return tags


def publish_held(client: redis.Redis, worker: str, tags: Iterable[str]) -> None:
    key = f"{HELD_PREFIX}{worker}"
    tags = list(tags)
    with client.pipeline() as pipe:
        pipe.delete(key)
        if tags:
            pipe.sadd(key, *tags)
            pipe.expire(key, HELD_TTL_S)
        pipe.execute()


def held_by_live_workers(client: redis.Redis) -> set[str]:
    keys = list(client.scan_iter(f"{HELD_PREFIX}*", count=100))
    members = client.sunion(keys) if keys else set()
    return {m.decode() if isinstance(m, bytes) else str(m) for m in members}


# --------------------------------------------------------------------------- dead workers


def _message_headers(raw: bytes | str) -> dict[str, object] | None:
    """The Celery headers of a message as kombu keeps it in Redis (None when unreadable)."""
    try:
        data = json.loads(raw)
        message = data[0] if isinstance(data, list) else data  # unacked: [message, ex, key]
        headers = message["headers"]
        return headers if isinstance(headers, dict) and "id" in headers else None
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def sweep_once(
    app: Celery, store: JobStore, client: redis.Redis, held: set[str] | None = None
) -> list[str]:
    """Restore the messages of jobs nobody is running; returns their job ids. ``held``: the
    delivery tags live workers hold (never restored)."""
    restored: list[str] = []
    now = time.time()
    entries = client.hgetall("unacked")
    if not entries:
        return restored
    held = held or set()
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for tag, raw in entries.items():
            tag = tag.decode() if isinstance(tag, bytes) else tag
            headers = _message_headers(raw)
            if headers is None:
                continue
            job_id = str(headers["id"])
            if headers.get("task") not in LEASED_TASKS:
                # No lease to look at (a webhook delivery waits here through its retry
                # countdown): the broker's visibility timeout gives it back.
                continue
            if tag in held:
                continue
            delivered_at = client.zscore("unacked_index", tag)
            if delivered_at is None or now - delivered_at < GRACE_S:
                continue
            if store.lease_held(job_id):
                continue
            try:
                job = store.get(job_id)
            except JobNotFound:
                job = None
            if not client.set(f"{PREFIX}restore:{tag}", "1", nx=True, ex=60):
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


# --------------------------------------------------------------------------- lost messages


def _queued_job_ids(app: Celery, client: redis.Redis) -> set[str]:
    """The ids of every job message in Redis: queued, or delivered and not acknowledged."""
    raws: list[bytes | str] = list(client.hvals("unacked"))
    for queue in app.conf.task_queues:
        raws.extend(client.lrange(queue.name, 0, -1))
    ids = set()
    for raw in raws:
        headers = _message_headers(raw)
        if headers is not None:
            ids.add(str(headers["id"]))
    return ids


def requeue_orphans(
    app: Celery, store: JobStore, client: redis.Redis, orphan_after_s: float
) -> list[str]:
    """Queue again the jobs whose message is lost; returns their ids.

    A job is an orphan when it has not ended, was created more than ``orphan_after_s`` ago,
    holds no lease and has no message anywhere, at two passes at least ``orphan_after_s / 4``
    apart (a message moving from the queue to a worker is in neither for an instant).
    """

    now = time.time()
    candidates = []
    for key in client.scan_iter(f"{PREFIX}owner:*:active", count=100):
        for member in client.smembers(key):
            job_id = member.decode() if isinstance(member, bytes) else str(member)
            try:
                job = store.get(job_id)
            except JobNotFound:
                continue
            capability = CAPABILITIES.get(job.capability)
            if job.status.terminal or capability is None or capability.task not in JOB_TASK_NAMES:
                continue
            if now - job.created_at < orphan_after_s or store.lease_held(job_id):
                continue
            candidates.append(job)
    if not candidates:
        return []
    present = _queued_job_ids(app, client)
    requeued = []
    for job in candidates:
        mark = f"{PREFIX}job:{job.id}:orphan"
        if job.id in present:
            client.delete(mark)
            continue
        if client.set(mark, repr(now), nx=True, ex=int(4 * orphan_after_s)):
            continue  # first seen: look again at the next pass
        first_seen = float(client.get(mark) or now)
        if now - first_seen < orphan_after_s / 4:
            continue
        if not store.requeue(job.id, "queued again: its message was lost"):
            continue  # it ended meanwhile
        capability = CAPABILITIES[job.capability]
        app.send_task(capability.task, args=[job.id], task_id=job.id, queue=capability.queue)
        client.delete(mark)
        requeued.append(job.id)
        log.warning("queued job %s again: its message was lost", job.id)
    return requeued


# --------------------------------------------------------------------------- the sweeper


def run_sweeper(app: Celery, stop: threading.Event, name: str) -> None:
    settings = get_settings()
    store = JobStore.from_url(settings.redis_url, settings.result_ttl_s)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
    queues = ",".join(sorted(q.name for q in app.conf.task_queues))
    orphan_interval_s = max(SWEEP_INTERVAL_S, settings.job_orphan_after_s / 4)
    reachable_since: float | None = None  # since when Redis has answered this sweeper
    while True:
        try:
            # The gateway's /readyz counts these keys to know a worker is there.
            client.set(f"{PREFIX}worker:{name}", queues, ex=int(3 * SWEEP_INTERVAL_S) + 1)
            publish_held(client, name, held_delivery_tags())
            if reachable_since is None:
                reachable_since = time.monotonic()
            uptime_s = float(client.info("server")["uptime_in_seconds"])
            if min(time.monotonic() - reachable_since, uptime_s) >= SETTLE_S:
                sweep_once(app, store, client, held_by_live_workers(client))
                if client.set(ORPHAN_LOCK, name, nx=True, ex=max(1, int(orphan_interval_s))):
                    requeue_orphans(app, store, client, settings.job_orphan_after_s)
        except redis.RedisError:
            reachable_since = None
            log.debug("sweeper %s: Redis unavailable, retrying", name, exc_info=True)
        except Exception:
            log.exception("sweeper %s failed; continuing", name)
        if stop.wait(SWEEP_INTERVAL_S):
            with contextlib.suppress(redis.RedisError):
                client.delete(f"{PREFIX}worker:{name}", f"{HELD_PREFIX}{name}")
            return


__all__ = ["requeue_orphans", "run_sweeper", "sweep_once"]
