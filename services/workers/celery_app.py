r"""The workers' one Celery app: configuration only (the worker's start and stop hooks are
:mod:`services.workers.process`).

Its queues, task routes and task modules are the capability table's
(:mod:`services.capabilities`); late acks, prefetch 1, the job time limits by default.

Run a worker for one queue (and the webhooks queue that every worker serves) with:

    celery -A services.workers.celery_app:app worker -Q mesh_recovery,webhooks \
        -c 1 --prefetch-multiplier 1
"""

from __future__ import annotations

from celery import Celery

from services.capabilities import JOB_QUEUES, JOB_TIME_LIMITS, TASK_MODULES, TASK_ROUTES
from services.common.broker import queues, transport_options
from shared.settings import get_settings

settings = get_settings()
redis_url = settings.redis_url
# Every task's, but those the table gives limits of their own (image jobs, dataset chunks).
soft_time_limit_s, hard_time_limit_s = JOB_TIME_LIMITS.seconds(settings)

# The task modules, and the worker process's hooks (imported by the worker at start-up, before
# its pool forks, so every process has them connected).
app = Celery("bodyserve", broker=redis_url, include=[*TASK_MODULES, "services.workers.process"])
app.conf.update(
    task_queues=queues(),
    task_routes=dict(TASK_ROUTES),
    task_default_queue=JOB_QUEUES[0],
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
    task_soft_time_limit=soft_time_limit_s,
    task_time_limit=hard_time_limit_s,
    # Results live in our job store, not in Celery's backend.
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    # As the gateway's broker client publishes (services/common/broker.py).
    broker_transport_options=transport_options(settings),
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
)
