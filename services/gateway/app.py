"""The FastAPI gateway: validates requests, records and queues jobs, serves their results."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import Depends, FastAPI, Request, Response

from services.gateway import errors
from services.gateway.auth import authenticate
from services.gateway.deps import job_store, settings
from services.gateway.metrics import LATENCY, REQUESTS, RedisJobCollector, registry
from services.gateway.routes import health, jobs, mesh_recovery, poses

log = logging.getLogger("bodyserve.gateway")


def create_app() -> FastAPI:
    app = FastAPI(
        title="bodyserve",
        version="0.1.0",
        description="Inference server for 3D human understanding. Jobs are accepted with 202 "
        "and a Location header; poll it, or pass ?wait=SECONDS to get the result in one call.",
    )
    errors.install(app)
    app.include_router(health.router)  # /healthz, /readyz, /metrics: no key
    # Every /v1 route: an API key (401 without), whose principal owns the jobs it submits.
    for router in (mesh_recovery.router, poses.router, jobs.router):
        app.include_router(router, dependencies=[Depends(authenticate)])
    if settings().auth_mode == "open":
        log.warning(
            "open mode (BODYSERVE_AUTH_MODE=open): no API key is needed, every client sees "
            "every job and no limit applies; for local demos only"
        )
    registry.register(RedisJobCollector(job_store()))

    @app.middleware("http")
    async def _measure(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        LATENCY.labels(path, request.method).observe(time.perf_counter() - started)
        REQUESTS.labels(path, request.method, str(response.status_code)).inc()
        return response

    return app


app = create_app()
