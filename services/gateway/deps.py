"""Shared gateway state: settings, the job store, artifact storage, the async Redis client."""

from __future__ import annotations

import redis.asyncio as aioredis

from services.common.stores import artifact_store, job_store
from shared.settings import Settings, get_settings

__all__ = ["artifact_store", "async_redis", "job_store", "settings"]

_async_redis: aioredis.Redis | None = None


def async_redis() -> aioredis.Redis:
    """The gateway's async Redis client (key checks, status reads, waits), made on first use."""
    global _async_redis
    if _async_redis is None:
        _async_redis = aioredis.Redis.from_url(get_settings().redis_url, decode_responses=True)
    return _async_redis


def settings() -> Settings:
    return get_settings()
