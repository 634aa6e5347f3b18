"""Celery tasks of the queue ``poses``: pose generation, completion, lifting, motion denoising.

Thin adapters: each validates the job's options with its request schema and hands it to
:mod:`shared.pipeline.poses`, which asks the backend (Triton's ``pose_prior``, ``pose_lift``
and ``motion_denoise`` when ``BODYSERVE_TRITON_URL`` is set) for the heavy part. The job life cycle
(lease, heartbeat, cancellation, time limit, retries, failures) is :func:`run_job`'s.
"""

from __future__ import annotations

from celery import Task

from services.workers.tasks.common import JobContext, JobOutput, backend, job_task, run_job
from shared.pipeline import poses
from shared.schemas import (
    MotionDenoiseRequest,
    PoseCompleteRequest,
    PoseGenerateRequest,
    PoseLiftRequest,
)


@job_task("bodyserve.pose_generation")
def pose_generation(self: Task, job_id: str) -> str:
    return run_job(self, job_id, generate)


@job_task("bodyserve.pose_completion")
def pose_completion(self: Task, job_id: str) -> str:
    return run_job(self, job_id, complete)


@job_task("bodyserve.pose_lifting")
def pose_lifting(self: Task, job_id: str) -> str:
    return run_job(self, job_id, lift)


@job_task("bodyserve.motion_denoising")
def motion_denoising(self: Task, job_id: str) -> str:
    return run_job(self, job_id, denoise)


def generate(job: JobContext) -> JobOutput:
    request = PoseGenerateRequest.model_validate(job.options)
    output = poses.generate_poses(request, backend(), job.progress)
    return JobOutput(output.result.model_dump(mode="json"), output.artifacts)


def complete(job: JobContext) -> JobOutput:
    request = PoseCompleteRequest.model_validate(job.options)
    output = poses.complete_pose(request, backend(), job.progress)
    return JobOutput(output.result.model_dump(mode="json"), output.artifacts)


def lift(job: JobContext) -> JobOutput:
    request = PoseLiftRequest.model_validate(job.options)
    output = poses.lift_poses(request, backend(), job.progress)
    return JobOutput(output.result.model_dump(mode="json"), output.artifacts)


def denoise(job: JobContext) -> JobOutput:
    request = MotionDenoiseRequest.model_validate(job.options)
    output = poses.denoise_motion(request, backend(), job.progress)
    return JobOutput(output.result.model_dump(mode="json"), output.artifacts)
