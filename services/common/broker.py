"""A broker-only Celery client: queues tasks by name, imports no task code.

The gateway (a job's task, a cancellation's revoke) and the webhook announcer (every place a job
may end, workers included) send through it, so the gateway needs none of the workers' code:
the table of :mod:`services.capabilities` routes each task name to its queue. It publishes as
the workers' app does (:func:`transport_options`, JSON).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from celery import Celery
from kombu import Queue

from services.capabilities import ALL_QUEUES, TASK_ROUTES
from shared.settings import Settings, get_settings


def transport_options(settings: Settings) -> dict[str, Any]:
    """kombu's Redis transport options, the same for the workers' app and this client."""
    return {
        # Longer than the longest task; dead workers' jobs come back sooner via the sweeper.
        "visibility_timeout": max(3600, settings.job_hard_time_limit_s * 2),
        # A Redis that stops answering without closing its connections (frozen, failed over,
        # a dropped NAT entry) fails a publish after 10 s instead of hanging it for ever
        # (kombu waits forever by default); consumers reconnect as after a restart.
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
    }


def queues() -> list[Queue]:
    """Every queue of the table, declared alike by the workers' app and this client."""
    return [Queue(name) for name in ALL_QUEUES]


@lru_cache(maxsize=1)
def client() -> Celery:
    """This process's client of the broker (``redis_url``); never the current Celery app, so
    that in a worker process the workers' app stays the one tasks belong to."""
    settings = get_settings()
    app = Celery("bodyserve-client", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_queues=queues(),
        task_routes=dict(TASK_ROUTES),
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options=transport_options(settings),
    )
    return app


def send_task(name: str, args: Sequence[Any], task_id: str) -> None:
    """Queue task ``name`` (routed to its queue by the table) with ``args``; raises when the
    broker cannot be reached."""
    client().send_task(name, args=list(args), task_id=task_id)


def revoke(task_id: str) -> None:
    """Tell every worker to drop task ``task_id`` if it has not started it."""
    client().control.revoke(task_id)
