"""Celery task of image generation (Diffusion-HPC), on the generation workers' ``datasets`` queue.

A thin adapter: validates the job's options, loads the Stable Diffusion + depth ControlNet
pipelines from ``BODYSERVE_DIFFUSION_MODEL_DIR`` once per worker process, and runs
:func:`shared.diffusion.loop.generate_images` with the worker's inference backend (Triton's
``keypoints_2d`` and ``body_fit`` when ``BODYSERVE_TRITON_URL`` is set) for body recovery. The
job life cycle (lease, heartbeat, cancellation, time limit, retries) is :func:`run_job`'s.
"""

from __future__ import annotations

from celery import Task

from services.capabilities import CAPABILITIES
from services.workers.lifecycle import JobContext, JobOutput, backend, job_task, run_job
from shared.diffusion.loop import generate_images
from shared.diffusion.pipelines import load_pipelines
from shared.schemas.images import ImageGenerateRequest
from shared.settings import get_settings


# Its own time limit (image_job_time_limit_s): two diffusion passes per image, up to
# max_generated_images images, take longer than other jobs.
@job_task(CAPABILITIES["image_generation"])
def image_generation(self: Task, job_id: str) -> str:
    return run_job(self, job_id, generate)


def generate(job: JobContext) -> JobOutput:
    request = ImageGenerateRequest.model_validate(job.options)
    # Raises DiffusionUnavailable (the job fails with its message) when the folder is missing
    # or incomplete on this worker, though the gateway found it.
    pipelines = load_pipelines(get_settings().diffusion_model_dir)
    output = generate_images(request, pipelines, backend(), job.progress)
    return JobOutput(output.result.model_dump(mode="json"), output.artifacts)
