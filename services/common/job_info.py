"""A job as its owner sees it (``GET /v1/jobs/{id}``, and the body of its webhook event)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class WebhookDelivery(BaseModel):
    """How the job's webhook event is being delivered (README "Webhooks")."""

    status: Literal["pending", "retrying", "delivered", "failed", "skipped"]
    event_id: str
    attempts: int
    last_error: str | None = None
    last_attempt_at: float | None = None
    next_attempt_at: float | None = None


class JobInfo(BaseModel):
    id: str
    capability: str
    status: str
    progress: float
    message: str
    error: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    links: dict[str, str]
    # Set once the job has ended, when its API key (or open mode) has a webhook endpoint.
    webhook: WebhookDelivery | None = None
