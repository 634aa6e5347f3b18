"""Celery task: mesh recovery of one uploaded photo (a thin adapter over the shared pipeline)."""

from __future__ import annotations

from celery import Task

from services.capabilities import CAPABILITIES
from services.common.stores import UPLOAD_NAME
from services.workers.lifecycle import JobContext, JobOutput, backend, job_task, run_job
from shared.io.images import decode_image, exif_focal_length_px
from shared.pipeline.mesh_recovery import recover
from shared.schemas.mesh_recovery import MeshRecoveryOptions
from shared.settings import get_settings


@job_task(CAPABILITIES["mesh_recovery"])
def mesh_recovery(self: Task, job_id: str) -> str:
    return run_job(self, job_id, recover_photo)


def recover_photo(job: JobContext) -> JobOutput:
    """The job's uploaded photo -> bodies (result) and their files (artifacts)."""
    settings = get_settings()
    options = MeshRecoveryOptions.model_validate(job.options)
    upload = job.artifacts.get(job.job_id, UPLOAD_NAME)
    image = decode_image(
        upload,
        max_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_image_pixels,
        max_side=settings.max_image_side,
    )
    focal = exif_focal_length_px(upload, image.shape[1], image.shape[0])
    output = recover(image, options, backend(), job.progress, focal)
    return JobOutput(output.result.model_dump(mode="json"), output.artifacts)
