"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from services.common.triton_backend import triton_ready
from services.gateway.deps import job_store
from services.gateway.metrics import registry
from shared.settings import get_settings

router = APIRouter(tags=["operations"])
WORKER_KEY = "bodyserve:worker:*"


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _readiness() -> dict[str, str]:
    settings = get_settings()
    checks: dict[str, str] = {}
    client = job_store().redis
    try:
        client.ping()
        checks["redis"] = "ok"
        workers = list(client.scan_iter(WORKER_KEY, count=100))
        checks["workers"] = f"ok ({len(workers)})" if workers else "no worker is running"
    except redis.RedisError as exc:
        checks["redis"] = f"unreachable: {exc}"
        checks["workers"] = "unknown (redis unreachable)"
    if settings.triton_url:
        checks["triton"] = "ok" if triton_ready(settings.triton_url) else "not ready"
    else:
        checks["triton"] = "not configured (models run in the workers)"
    return checks


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, str] = Field(
        description="Per dependency (redis, workers, triton): ok or why not."
    )


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={
        503: {
            "model": Readiness,
            "description": "Not ready: Redis, a worker or Triton is not reachable (see checks).",
        }
    },
)
async def readyz() -> JSONResponse:
    checks = await run_in_threadpool(_readiness)
    ready = all(v.startswith(("ok", "not configured")) for v in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, 200 if ready else 503)


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
