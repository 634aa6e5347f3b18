"""The one Celery app: one queue per capability, late acks, prefetch 1, time limits.

Run a worker for one queue with:

    celery -A services.workers.celery_app:app worker -Q mesh_recovery -c 1 --prefetch-multiplier 1
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutdown
from kombu import Queue

from shared.settings import get_settings

# Capability -> queue. The pose-prior capabilities share the queue "poses": each job is a few
# short calls to the pose_prior / pose_lift / motion_denoise Triton models (the worker holds no
# model), so one worker service serves them all; add replicas of it to scale. Later issues
# add datasets.
QUEUES: dict[str, str] = {
    "mesh_recovery": "mesh_recovery",
    "pose_generation": "poses",
    "pose_completion": "poses",
    "pose_lifting": "poses",
    "motion_denoising": "poses",
}
TASKS: dict[str, str] = {
    "mesh_recovery": "bodyserve.mesh_recovery",
    "pose_generation": "bodyserve.pose_generation",
    "pose_completion": "bodyserve.pose_completion",
    "pose_lifting": "bodyserve.pose_lifting",
    "motion_denoising": "bodyserve.motion_denoising",
}

settings = get_settings()
redis_url = settings.redis_url

app = Celery(
    "bodyserve",
    broker=redis_url,
    include=["services.workers.tasks.mesh_recovery", "services.workers.tasks.poses"],
)
app.conf.update(
    task_queues=[Queue(name) for name in dict.fromkeys(QUEUES.values())],
    task_routes={TASKS[c]: {"queue": q} for c, q in QUEUES.items()},
    task_default_queue="mesh_recovery",
    task_serializer="json",
    accept_content=["json"],
    # A job is acknowledged only when it ends; a worker lost mid-job gives the message back.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_soft_time_limit=settings.job_soft_time_limit_s,
    task_time_limit=settings.job_hard_time_limit_s,
    # Results live in our job store, not in Celery's backend.
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    broker_transport_options={
        # Longer than the longest task; dead workers' jobs come back sooner via the sweeper.
        "visibility_timeout": max(3600, settings.job_hard_time_limit_s * 2),
    },
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
)

log = logging.getLogger("bodyserve.worker")
_sweeper_stop = threading.Event()


@worker_process_init.connect
def _load_models(**_: object) -> None:
    """Load the heavy models once per worker process, not per task."""
    import torch

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    from services.workers.tasks.common import warm_up

    warm_up()


@worker_ready.connect
def _start_sweeper(sender: object = None, **_: object) -> None:
    from services.workers.recovery import run_sweeper

    if settings.worker_metrics_port:
        # Process metrics of the worker; job outcomes are counted in Redis and exported by
        # the gateway, so that any number of workers adds up in one place.
        from prometheus_client import start_http_server

        start_http_server(settings.worker_metrics_port, addr="0.0.0.0")

    name = f"{os.getpid()}@{socket.gethostname()}"
    thread = threading.Thread(
        target=run_sweeper, args=(app, _sweeper_stop, name), name="bodyserve-sweeper", daemon=True
    )
    thread.start()


@worker_shutdown.connect
def _stop_sweeper(**_: object) -> None:
    _sweeper_stop.set()
