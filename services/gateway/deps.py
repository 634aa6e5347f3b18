"""Shared gateway state: settings, the job store, artifact storage."""

from __future__ import annotations

from services.common.stores import artifact_store, job_store
from shared.settings import Settings, get_settings

__all__ = ["artifact_store", "job_store", "settings"]


def settings() -> Settings:
    return get_settings()
