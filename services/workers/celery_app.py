r"""The one Celery app: one queue per capability, late acks, prefetch 1, time limits.

Run a worker for one queue (and the webhooks queue that every worker serves) with:

    celery -A services.workers.celery_app:app worker -Q mesh_recovery,webhooks \
        -c 1 --prefetch-multiplier 1
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
# model), so one worker service serves them all; add replicas of it to scale. Dataset jobs run
# as many chunk tasks on "datasets" (services/workers/tasks/datasets.py): add workers there to
# make a dataset faster.
QUEUES: dict[str, str] = {
    "mesh_recovery": "mesh_recovery",
    "pose_generation": "poses",
    "pose_completion": "poses",
    "pose_lifting": "poses",
    "motion_denoising": "poses",
    "dataset_generation": "datasets",
    # Diffusion-HPC images run on the generation (datasets) workers, which hold the pipelines.
    "image_generation": "datasets",
}
TASKS: dict[str, str] = {
    "mesh_recovery": "bodyserve.mesh_recovery",
    "pose_generation": "bodyserve.pose_generation",
    "pose_completion": "bodyserve.pose_completion",
    "pose_lifting": "bodyserve.pose_lifting",
    "motion_denoising": "bodyserve.motion_denoising",
    "dataset_generation": "bodyserve.dataset_generation",
    "image_generation": "bodyserve.image_generation",
}
# Tasks that hold a lease on their task id while they run (jobs, and a dataset's chunks and
# finish): the sweeper restores their messages when the lease lapses with a dead worker.
LEASED_TASKS: frozenset[str] = frozenset(
    [*TASKS.values(), "bodyserve.dataset_chunk", "bodyserve.dataset_finish"]
)
# Webhook deliveries (services/workers/tasks/webhooks.py): a queue that every worker consumes
# besides its own (`-Q <queue>,webhooks`), so that an event never waits behind a job backlog.
WEBHOOKS_QUEUE = "webhooks"
WEBHOOK_TASK = "bodyserve.deliver_webhook"

settings = get_settings()
redis_url = settings.redis_url

app = Celery(
    "bodyserve",
    broker=redis_url,
    include=[
        "services.workers.tasks.mesh_recovery",
        "services.workers.tasks.poses",
        "services.workers.tasks.webhooks",
        "services.workers.tasks.datasets",
        "services.workers.tasks.images",
    ],
)
app.conf.update(
    task_queues=[Queue(name) for name in dict.fromkeys([*QUEUES.values(), WEBHOOKS_QUEUE])],
    task_routes={
        **{TASKS[c]: {"queue": q} for c, q in QUEUES.items()},
        WEBHOOK_TASK: {"queue": WEBHOOKS_QUEUE},
    },
    task_default_queue="mesh_recovery",
    task_serializer="json",
    accept_content=["json"],
    # A job is acknowledged only when it ends; a worker lost mid-job gives the message back.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # A lost broker connection (Redis restarting) does not stop the running job: it finishes
    # and records its result through its own Redis client, which rides out the outage; a copy
    # of its message given back meanwhile is dropped by the job's lease. (Cancelling would run
    # every job in progress again after each broker blip.)
    worker_cancel_long_running_tasks_on_connection_loss=False,
    worker_prefetch_multiplier=1,
    task_soft_time_limit=settings.job_soft_time_limit_s,
    task_time_limit=settings.job_hard_time_limit_s,
    # Results live in our job store, not in Celery's backend.
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    broker_transport_options={
        # Longer than the longest task; dead workers' jobs come back sooner via the sweeper.
        "visibility_timeout": max(3600, settings.job_hard_time_limit_s * 2),
        # A Redis that stops answering without closing its connections (frozen, failed over,
        # a dropped NAT entry) fails a publish after 10 s instead of hanging it for ever
        # (kombu waits forever by default); consumers reconnect as after a restart.
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
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
    from services.workers.lifecycle import warm_up

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
    # Deletes the artifacts of expired jobs, one worker per cleanup_interval_s (a Redis lock).
    from services.common.retention import run_periodic_cleanup

    threading.Thread(
        target=run_periodic_cleanup,
        args=(_sweeper_stop, name),
        name="bodyserve-cleanup",
        daemon=True,
    ).start()


@worker_shutdown.connect
def _stop_sweeper(**_: object) -> None:
    _sweeper_stop.set()
