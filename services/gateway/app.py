"""The FastAPI gateway: validates requests, records and queues jobs, serves their results."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, params
from fastapi.routing import APIRoute

from services.gateway import errors
from services.gateway.auth import KeyCheck, authenticate
from services.gateway.deps import job_store, settings
from services.gateway.errors import error_responses
from services.gateway.limits import MULTIPART_OVERHEAD_BYTES, BodyLimit, BodySizeLimit
from services.gateway.metrics import RedisJobCollector, RequestMetrics, registry
from services.gateway.routes import (
    capabilities,
    datasets,
    health,
    images,
    jobs,
    mesh_recovery,
    poses,
)
from services.gateway.schemas import ErrorBody

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
    # Every /v1 route: an API key (401 without), whose principal owns the jobs it submits; and
    # the errors each router's routes may answer besides their own.
    submission_routers = (mesh_recovery.router, poses.router, datasets.router, images.router)
    v1_routers = (
        *((router, V1_ERRORS | SUBMISSION_ERRORS) for router in submission_routers),
        (jobs.router, V1_ERRORS | JOB_ERRORS),
        (capabilities.router, V1_ERRORS),
    )
    for router, responses in v1_routers:
        app.include_router(
            router, dependencies=[Depends(authenticate)], responses=error_responses(responses)
        )
    _document_validation_errors_as_answered(app)
    if settings().auth_mode == "open":
        log.warning(
            "open mode (BODYSERVE_AUTH_MODE=open): no API key is needed, every client sees "
            "every job and no limit applies; for local demos only"
        )
    registry.register(RedisJobCollector(job_store()))

    # Pure ASGI middlewares, the last added outermost: metrics see every answer, the body
    # limit refuses oversized bodies before authentication and routing, and the key check
    # refuses a request without a valid key before its body is read.
    config = settings()
    app.add_middleware(KeyCheck, prefix="/v1")
    app.add_middleware(
        BodySizeLimit,
        default=BodyLimit(
            config.max_json_bytes,
            "BODYSERVE_MAX_JSON_BYTES",
            "send fewer people, frames or poses per request, or split it into several",
        ),
        uploads=BodyLimit(
            config.max_upload_bytes + MULTIPART_OVERHEAD_BYTES,
            f"BODYSERVE_MAX_UPLOAD_BYTES, {config.max_upload_bytes} bytes for the image, plus "
            f"{MULTIPART_OVERHEAD_BYTES} bytes for the other form fields",
            "send a smaller image (downscaled, or saved as JPEG)",
        ),
        upload_paths=_upload_paths(router for router, _ in v1_routers),
    )
    app.add_middleware(RequestMetrics)
    return app


# The errors every /v1 route may answer, and every route that submits a job.
V1_ERRORS = {
    401: "No API key, or one that is not valid or was revoked (keys mode).",
    503: "The job store or queue (Redis) is unavailable; retry after Retry-After seconds.",
}
SUBMISSION_ERRORS = {
    400: "The body could not be read: not JSON encoded as UTF-8, or not a multipart form.",
    409: "A request with this Idempotency-Key is still being processed; retry shortly.",
    413: "The request body is over BODYSERVE_MAX_JSON_BYTES (JSON) or the upload over "
    "BODYSERVE_MAX_UPLOAD_BYTES (multipart); refused before it is read.",
    422: "Invalid request: the message says what to fix.",
    429: "Over the API key's submission rate or concurrent-job limit; retry after Retry-After.",
}
JOB_ERRORS = {
    404: "No such job for this API key (unknown, expired, or another key's), or no such "
    "artifact of it.",
}


def _document_validation_errors_as_answered(app: FastAPI) -> None:
    """FastAPI documents its own 422 body (``detail``: a list of errors) wherever a route has
    parameters, but ``errors.install`` answers every error as ``{"detail": "what to fix"}``
    (ErrorBody): the OpenAPI document says so instead."""
    generate = app.openapi
    fastapi_error = "#/components/schemas/HTTPValidationError"

    def openapi() -> dict[str, Any]:
        schema = generate()
        components = schema.get("components", {}).get("schemas", {})
        for operation in (op for path in schema["paths"].values() for op in path.values()):
            for response in operation.get("responses", {}).values():
                for media in response.get("content", {}).values():
                    if media.get("schema", {}).get("$ref") == fastapi_error:
                        media["schema"] = {"$ref": "#/components/schemas/ErrorBody"}
                        components.setdefault("ErrorBody", ErrorBody.model_json_schema())
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _upload_paths(routers: Iterable[APIRouter]) -> frozenset[str]:
    """The paths of the routes that take a file upload (multipart, a File parameter)."""
    return frozenset(
        route.path
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute)
        and any(isinstance(p.field_info, params.File) for p in route.dependant.body_params)
    )


app = create_app()
