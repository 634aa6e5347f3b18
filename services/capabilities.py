"""What bodyserve does, in one table: each capability's queue, task, Triton models, limits and
routes.

Everything else reads it: the workers' Celery app (queues, routes, task modules), the tasks
(their names and time limits), the sweeper (which tasks hold leases), the gateway (which task
and queue a job goes to, ``GET /v1/capabilities``, the queue-depth metrics), the local stack
and the Triton launcher (queues to run workers for, models to wait for), and the deployment
files' tests (one worker service, Deployment and ScaledObject per queue; readiness probes wait
for :data:`TRITON_MODELS`).

A leaf module: it imports no gateway or worker code (task modules are named, not imported), so
the gateway, the workers and the tools may all import it.

A new capability is one :class:`Capability` here; one on a new queue also needs its worker
service in docker-compose.yml, its Deployment and ScaledObject under deploy/kubernetes/ (the
deployment tests say which are missing); a new Triton model also needs its folder in
model_repository/ and its name in the Triton readiness probes and alert.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from shared.settings import Settings

# A task's hard time limit when the table names no setting for it: its soft limit plus this,
# so that the soft limit's message (the job failed, and why) has time to be recorded.
HARD_AFTER_SOFT_S = 60


@dataclass(frozen=True)
class TimeLimits:
    """A task's Celery time limits, as the settings that hold them (seconds)."""

    soft_setting: str
    hard_setting: str | None = None  # None: HARD_AFTER_SOFT_S after the soft limit

    def seconds(self, settings: Settings) -> tuple[int, int]:
        """(soft, hard) in seconds, as ``settings`` say now."""
        soft = int(getattr(settings, self.soft_setting))
        if self.hard_setting is None:
            return soft, soft + HARD_AFTER_SOFT_S
        return soft, int(getattr(settings, self.hard_setting))

    def celery_options(self, settings: Settings) -> dict[str, int]:
        """``soft_time_limit`` and ``time_limit`` of ``@app.task``."""
        soft, hard = self.seconds(settings)
        return {"soft_time_limit": soft, "time_limit": hard}


# The Celery app's defaults (task_soft_time_limit / task_time_limit): every job task but those
# that name their own.
JOB_TIME_LIMITS = TimeLimits("job_soft_time_limit_s", "job_hard_time_limit_s")


@dataclass(frozen=True)
class HelperTask:
    """A task a job sends itself (a dataset's chunks and finish): it holds a lease on its task
    id while it runs, so the sweeper gives its message back when its worker dies."""

    name: str
    queue: str
    time_limits: TimeLimits = JOB_TIME_LIMITS


@dataclass(frozen=True)
class Capability:
    """One thing bodyserve does: a route that submits a job, the task that runs it."""

    name: str  # the job's ``capability`` (job records, metrics labels)
    description: str
    routes: tuple[str, ...]  # the paths of the routes (POST) that submit its jobs
    queue: str  # the Celery queue of its task (one worker service per queue)
    task: str  # the Celery task's name
    module: str  # the worker module that defines the task (the Celery app's ``include``)
    triton_models: tuple[str, ...]  # the Triton models its job calls
    time_limits: TimeLimits = JOB_TIME_LIMITS  # its task's
    # Settings fields that bound its requests (shown by GET /v1/capabilities, current values).
    request_limits: tuple[str, ...] = ()
    helper_tasks: tuple[HelperTask, ...] = ()


# Every submission may wait up to max_wait_s for its result (?wait=SECONDS).
_WAIT = ("max_wait_s",)
DATASETS_QUEUE = "datasets"
DATASET_CHUNK = HelperTask(
    "bodyserve.dataset_chunk", DATASETS_QUEUE, TimeLimits("dataset_chunk_time_limit_s")
)
DATASET_FINISH = HelperTask("bodyserve.dataset_finish", DATASETS_QUEUE)

_TABLE = (
    Capability(
        name="mesh_recovery",
        description="A photo in, the 3D bodies of the people in it out (SMPL-X-convention "
        "parameters, meshes, an overlay), optionally with sampled hypotheses per person.",
        routes=("/v1/mesh-recovery",),
        queue="mesh_recovery",
        task="bodyserve.mesh_recovery",
        module="services.workers.tasks.mesh_recovery",
        # pose_lift only with hypotheses > 1.
        triton_models=("keypoints_2d", "body_fit", "pose_lift"),
        request_limits=(
            "max_upload_bytes",
            "max_image_pixels",
            "max_image_side",
            "max_people",
            "max_lift_hypotheses",
            "max_lift_rows",
            *_WAIT,
        ),
    ),
    # The pose-prior capabilities share the queue "poses": each job is a few short calls to the
    # pose_prior / pose_lift / motion_denoise Triton models (the worker holds no model), so one
    # worker service serves them all; add replicas of it to scale.
    Capability(
        name="pose_generation",
        description="Body poses drawn from the learned pose prior.",
        routes=("/v1/poses/generate",),
        queue="poses",
        task="bodyserve.pose_generation",
        module="services.workers.tasks.poses",
        triton_models=("pose_prior",),
        request_limits=("max_json_bytes", "max_pose_samples", *_WAIT),
    ),
    Capability(
        name="pose_completion",
        description="The unknown joints of a pose filled in: k hypotheses, the known joints "
        "kept, with each joint's spread.",
        routes=("/v1/poses/complete",),
        queue="poses",
        task="bodyserve.pose_completion",
        module="services.workers.tasks.poses",
        triton_models=("pose_prior",),
        request_limits=("max_json_bytes", "max_pose_samples", *_WAIT),
    ),
    Capability(
        name="pose_lifting",
        description="2D keypoints (people of one image, or tracks over frames) lifted to 3D "
        "pose hypotheses, with their spread and ambiguous joints.",
        routes=("/v1/poses/lift",),
        queue="poses",
        task="bodyserve.pose_lifting",
        module="services.workers.tasks.poses",
        triton_models=("pose_lift",),
        request_limits=(
            "max_json_bytes",
            "max_lift_hypotheses",
            "max_lift_rows",
            "max_motion_frames",
            *_WAIT,
        ),
    ),
    Capability(
        name="motion_denoising",
        description="A motion (3D joints or per-frame SMPL-X poses) made smooth and plausible, "
        "with a BVH.",
        routes=("/v1/motions/denoise",),
        queue="poses",
        task="bodyserve.motion_denoising",
        module="services.workers.tasks.poses",
        triton_models=("motion_denoise",),
        request_limits=("max_json_bytes", "max_motion_frames", *_WAIT),
    ),
    # One job, many chunk tasks on "datasets": add workers there to make a dataset faster.
    Capability(
        name="dataset_generation",
        description="A synthetic dataset of labelled images of people (rendered, or painted "
        "by diffusion), as WebDataset shards with a card and a contact sheet.",
        routes=("/v1/datasets",),
        queue=DATASETS_QUEUE,
        task="bodyserve.dataset_generation",
        module="services.workers.tasks.datasets",
        # Poses drawn from the prior (poses.source "prior"); the renderer runs in the worker.
        triton_models=("pose_prior",),
        request_limits=("max_json_bytes", "max_dataset_images", *_WAIT),
        helper_tasks=(DATASET_CHUNK, DATASET_FINISH),
    ),
    # Diffusion-HPC images run on the generation (datasets) workers, which hold the pipelines.
    Capability(
        name="image_generation",
        description="Images of people for a text prompt (Diffusion-HPC), each with the bodies "
        "recovered in it.",
        routes=("/v1/images/generate",),
        queue=DATASETS_QUEUE,
        task="bodyserve.image_generation",
        module="services.workers.tasks.images",
        triton_models=("keypoints_2d", "body_fit"),
        # Two diffusion passes per image, up to max_generated_images images: longer than others.
        time_limits=TimeLimits("image_job_time_limit_s"),
        request_limits=("max_json_bytes", "max_generated_images", *_WAIT),
    ),
)

CAPABILITIES: MappingProxyType[str, Capability] = MappingProxyType({c.name: c for c in _TABLE})
"""Capability name -> its entry, in the table's order."""

# Webhook deliveries (services/workers/tasks/webhooks.py): a queue that every worker consumes
# besides its own (`-Q <queue>,webhooks`), so that an event never waits behind a job backlog.
WEBHOOKS_QUEUE = "webhooks"
WEBHOOK_TASK = "bodyserve.deliver_webhook"
WEBHOOK_MODULE = "services.workers.tasks.webhooks"

# --------------------------------------------------------------------------- derived views

JOB_QUEUES: tuple[str, ...] = tuple(dict.fromkeys(c.queue for c in _TABLE))
"""The capabilities' queues, each served by its own worker service (compose, Kubernetes)."""
ALL_QUEUES: tuple[str, ...] = (*JOB_QUEUES, WEBHOOKS_QUEUE)
"""Every Celery queue: the job queues and the webhooks queue."""
TRITON_MODELS: tuple[str, ...] = tuple(dict.fromkeys(m for c in _TABLE for m in c.triton_models))
"""Every Triton model a capability calls: what a ready Triton serves."""
HELPER_TASKS: tuple[HelperTask, ...] = tuple(h for c in _TABLE for h in c.helper_tasks)
LEASED_TASKS: frozenset[str] = frozenset(
    [*(c.task for c in _TABLE), *(h.name for h in HELPER_TASKS)]
)
"""Tasks that hold a lease on their task id while they run (jobs, and a dataset's chunks and
finish): the sweeper restores their messages when the lease lapses with a dead worker."""
TASK_ROUTES: MappingProxyType[str, dict[str, str]] = MappingProxyType(
    {
        **{c.task: {"queue": c.queue} for c in _TABLE},
        **{h.name: {"queue": h.queue} for h in HELPER_TASKS},
        WEBHOOK_TASK: {"queue": WEBHOOKS_QUEUE},
    }
)
"""Celery's ``task_routes``: task name -> its queue (a task sent by name goes there)."""
TASK_MODULES: tuple[str, ...] = (*dict.fromkeys(c.module for c in _TABLE), WEBHOOK_MODULE)
"""The worker modules that define the tasks (the Celery app's ``include``)."""
