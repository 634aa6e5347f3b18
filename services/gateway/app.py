"""The FastAPI gateway: validates requests, records and queues jobs, serves their results."""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, Request, Response

from services.gateway import errors
from services.gateway.deps import job_store
from services.gateway.metrics import LATENCY, REQUESTS, RedisJobCollector, registry
from services.gateway.routes import health, jobs, mesh_recovery, poses


def create_app() -> FastAPI:
    app = FastAPI(
        title="bodyserve",
        version="0.1.0",
        description="Inference server for 3D human understanding. Jobs are accepted with 202 "
        "and a Location header; poll it, or pass ?wait=SECONDS to get the result in one call.",
    )
    errors.install(app)
    app.include_router(health.router)
    app.include_router(mesh_recovery.router)
    app.include_router(poses.router)
    app.include_router(jobs.router)
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
