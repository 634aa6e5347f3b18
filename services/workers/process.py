"""The worker process's start and stop hooks (Celery signals).

- each pool process loads its models once (``worker_process_init``);
- the worker starts the sweeper (dead workers' jobs back to the queue), the retention cleanup
  and, when configured, its metrics endpoint (``worker_ready``), and stops them on shutdown.

The Celery app includes this module, so a worker connects the hooks at start-up.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

import torch
from celery.signals import worker_process_init, worker_ready, worker_shutdown
from prometheus_client import start_http_server

from services.common.retention import run_periodic_cleanup
from services.workers.celery_app import app, settings
from services.workers.lifecycle import warm_up
from services.workers.recovery import run_sweeper

log = logging.getLogger("bodyserve.worker")
_sweeper_stop = threading.Event()


@worker_process_init.connect
def _load_models(**_: object) -> None:
    """Load the heavy models once per worker process, not per task."""
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    warm_up()


@worker_ready.connect
def _start_sweeper(sender: object = None, **_: object) -> None:
    if settings.worker_metrics_port:
        # Process metrics of the worker; job outcomes are counted in Redis and exported by
        # the gateway, so that any number of workers adds up in one place.
        start_http_server(settings.worker_metrics_port, addr="0.0.0.0")

    name = f"{os.getpid()}@{socket.gethostname()}"
    thread = threading.Thread(
        target=run_sweeper, args=(app, _sweeper_stop, name), name="bodyserve-sweeper", daemon=True
    )
    thread.start()
    # Deletes the artifacts of expired jobs, one worker per cleanup_interval_s (a Redis lock).
    threading.Thread(
        target=run_periodic_cleanup,
        args=(_sweeper_stop, name),
        name="bodyserve-cleanup",
        daemon=True,
    ).start()


@worker_shutdown.connect
def _stop_sweeper(**_: object) -> None:
    _sweeper_stop.set()
