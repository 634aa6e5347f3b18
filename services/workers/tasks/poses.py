"""Celery tasks of the queue ``poses``: pose generation, completion, lifting, motion denoising.

Thin adapters: each validates the job's options with its request schema and hands it to
:mod:`shared.pipeline.pose_jobs`, which asks the backend (Triton's ``pose_prior``, ``pose_lift``
and ``motion_denoise`` when ``BODYSERVE_TRITON_URL`` is set) for the heavy part. The job life cycle
(lease, heartbeat, cancellation, time limit, retries, failures) is :func:`run_job`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Task
from pydantic import BaseModel

from services.capabilities import CAPABILITIES
from services.workers.lifecycle import JobContext, JobOutput, backend, job_task, run_job
from shared.inference.contracts import InferenceBackend
from shared.pipeline import pose_jobs
from shared.pipeline.pose_jobs import PoseJobOutput
from shared.schemas.lifting import PoseLiftRequest
from shared.schemas.poses import MotionDenoiseRequest, PoseCompleteRequest, PoseGenerateRequest


@job_task(CAPABILITIES["pose_generation"])
def pose_generation(self: Task, job_id: str) -> str:
    return run_job(self, job_id, generate)


@job_task(CAPABILITIES["pose_completion"])
def pose_completion(self: Task, job_id: str) -> str:
    return run_job(self, job_id, complete)


@job_task(CAPABILITIES["pose_lifting"])
def pose_lifting(self: Task, job_id: str) -> str:
    return run_job(self, job_id, lift)


@job_task(CAPABILITIES["motion_denoising"])
def motion_denoising(self: Task, job_id: str) -> str:
    return run_job(self, job_id, denoise)


def _pose_job(
    schema: type[BaseModel], run: Callable[[Any, InferenceBackend, Any], PoseJobOutput]
) -> Callable[[JobContext], JobOutput]:
    """The job body of one pose capability: validate the options, run the pipeline."""

    def body(job: JobContext) -> JobOutput:
        output = run(schema.model_validate(job.options), backend(), job.progress)
        return JobOutput(output.result.model_dump(mode="json"), output.artifacts)

    return body


generate = _pose_job(PoseGenerateRequest, pose_jobs.generate_poses)
complete = _pose_job(PoseCompleteRequest, pose_jobs.complete_pose)
lift = _pose_job(PoseLiftRequest, pose_jobs.lift_poses)
denoise = _pose_job(MotionDenoiseRequest, pose_jobs.denoise_motion)
