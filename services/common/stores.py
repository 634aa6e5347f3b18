"""The per-process job store and artifact storage, shared by the gateway and the workers."""

from __future__ import annotations

from functools import lru_cache

from services.common.jobs import JobStore
from shared.settings import get_settings
from shared.storage import LocalArtifactStore

# Name under which a job's uploaded input is stored next to its artifacts.
UPLOAD_NAME = "input.bin"


@lru_cache(maxsize=1)
def job_store() -> JobStore:
    settings = get_settings()
    return JobStore.from_url(settings.redis_url, settings.result_ttl_s)


@lru_cache(maxsize=1)
def artifact_store() -> LocalArtifactStore:
    return LocalArtifactStore(get_settings().artifacts_path)
