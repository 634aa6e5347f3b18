"""Errors that reach clients: a status code and a message that says what to fix."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis
from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.gateway.schemas import ErrorBody

# FastAPI's detail for a body it could not parse (fastapi.routing, request handling).
FASTAPI_UNREADABLE_BODY = "There was an error parsing the body"

# The header that comes with some errors (name, what it says), for the OpenAPI document.
_ERROR_HEADERS = {
    401: ("WWW-Authenticate", "Bearer: the scheme of the credentials to send."),
    429: ("Retry-After", "Seconds until a submission would be accepted."),
    503: ("Retry-After", "Seconds to wait before retrying."),
}


def error_responses(descriptions: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for errors, each answered as ``{"detail": "what to fix"}``."""
    responses: dict[int | str, dict[str, Any]] = {}
    for code, description in descriptions.items():
        responses[code] = {"model": ErrorBody, "description": description}
        if code in _ERROR_HEADERS:
            name, meaning = _ERROR_HEADERS[code]
            responses[code]["headers"] = {
                name: {"description": meaning, "schema": {"type": "string"}}
            }
    return responses


class ApiError(Exception):
    def __init__(self, status_code: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.headers = headers


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for error in exc.errors():
            if error.get("type") == "json_invalid":  # loc: ("body", character position)
                position = error.get("loc", ("body", "?"))[-1]
                reason = error.get("ctx", {}).get("error", "invalid")
                parts.append(f"the body is not valid JSON (character {position}: {reason})")
                continue
            loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path")]
            field = ".".join(loc) or "request"
            message = error.get("msg", "invalid")
            if error.get("type") == "missing":
                message = "this field is required"
            parts.append(f"{field}: {message}")
        return JSONResponse({"detail": "; ".join(parts)}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        # FastAPI's answer to a body it cannot read (not UTF-8, a broken multipart form) says
        # only that; say what to send instead. Every other HTTP error is answered as FastAPI does.
        if exc.status_code == 400 and exc.detail == FASTAPI_UNREADABLE_BODY:
            multipart = request.headers.get("content-type", "").startswith("multipart/")
            expected = (
                "a multipart form (multipart/form-data) with the image and the options"
                if multipart
                else "JSON, encoded as UTF-8, with Content-Type: application/json"
            )
            return JSONResponse(
                {"detail": f"the request body could not be read: send {expected}"}, 400
            )
        return await http_exception_handler(request, exc)

    @app.exception_handler(redis.RedisError)
    async def _redis_down(_: Request, exc: redis.RedisError) -> JSONResponse:
        return JSONResponse(
            {"detail": "the job store is unavailable right now; retry shortly"},
            503,
            headers={"Retry-After": "5"},
        )
