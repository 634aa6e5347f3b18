"""The gateway's own HTTP types: an error body, and what the server can do
(``GET /v1/capabilities``). A job as clients see it is ``services.common.job_info.JobInfo``."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    detail: str


class TaskTimeLimits(BaseModel):
    """The time limits of one task a capability's job runs, as the settings say now."""

    task: str = Field(description="The Celery task.")
    soft_s: int = Field(description="Seconds after which the job is stopped and fails.")
    hard_s: int = Field(description="Seconds after which its worker process is killed.")
    soft_setting: str = Field(description="The setting of soft_s (BODYSERVE_<SETTING>).")
    hard_setting: str | None = Field(
        description="The setting of hard_s; null: a minute after soft_s."
    )


class CapabilityInfo(BaseModel):
    """One thing this server does: where to ask for it, what runs it, its limits."""

    name: str = Field(description="The capability of its jobs (GET /v1/jobs/{id}).")
    description: str
    routes: list[str] = Field(description="The paths (POST) that submit its jobs.")
    queue: str = Field(description="The job queue its jobs wait in.")
    triton_models: list[str] = Field(description="The Triton models its jobs call.")
    time_limits: list[TaskTimeLimits] = Field(
        description="Per task its job runs: the job's own, then its helpers (dataset chunks)."
    )
    request_limits: dict[str, int | float] = Field(
        description="The settings that bound its requests (BODYSERVE_<SETTING>) and their "
        "current values: sizes in bytes, counts, max_wait_s in seconds."
    )


class Capabilities(BaseModel):
    capabilities: list[CapabilityInfo]
