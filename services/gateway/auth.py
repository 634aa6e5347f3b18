"""Who is calling: the API key of a ``/v1`` request (``Authorization: Bearer bsk_...``).

:class:`KeyCheck`, a pure ASGI middleware, checks the key of every ``/v1`` request from its
headers alone, before a byte of its body is read or parsed: a request without a valid key gets
its 401 at once, however large a body it announces. It leaves the caller's
:class:`~services.common.keys.Principal` in ``request.state.principal``; ``authenticate``, the
dependency of every ``/v1`` router (see ``app.py``), hands it to the routes, which submit jobs
as it (``jobs_api.accept_job``) and show it only its own jobs (``routes/jobs.py``).
In open mode (``BODYSERVE_AUTH_MODE=open``) nobody needs a key and everyone is the one
``open`` principal, without limits.
"""

from __future__ import annotations

from typing import cast

import redis
from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from services.common.keys import OPEN_PRINCIPAL, ApiKey, KeyStore, Principal, parse_token
from services.gateway.deps import async_redis
from services.gateway.errors import ApiError
from shared.settings import get_settings

HOW_TO_GET_A_KEY = (
    "send an API key as `Authorization: Bearer <key>`; an operator issues keys with "
    "`bodyserve keys create NAME`"
)
CHALLENGE = {"WWW-Authenticate": "Bearer"}

# auto_error=False: a missing key gets this module's 401 and message, not FastAPI's 403.
bearer = HTTPBearer(
    auto_error=False,
    bearerFormat="bsk_<id>_<secret>",
    description="An API key from `bodyserve keys create` (not needed in open mode).",
)


def _unauthorized(reason: str) -> ApiError:
    return ApiError(401, f"{reason}: {HOW_TO_GET_A_KEY}", CHALLENGE)


async def principal_for(token: str | None) -> Principal:
    """The principal of a bearer ``token`` (None: no key sent); 401 (with
    ``WWW-Authenticate: Bearer``) without a valid key. Open mode: the one open principal."""
    settings = get_settings()
    if settings.auth_mode == "open":
        return OPEN_PRINCIPAL
    if token is None:
        raise _unauthorized("this route needs an API key")
    key = await _verify(token)
    if key is None:
        raise _unauthorized("the API key is not valid")
    if key.revoked:
        raise _unauthorized("the API key was revoked")
    return key.principal(settings.key_rate_per_minute, settings.key_max_concurrent)


async def authenticate(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
) -> Principal:
    """The caller's principal, as :class:`KeyCheck` found it (checked here when the app runs
    without it); 401 without a valid key. ``bearer`` documents the scheme in OpenAPI."""
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):
        principal = await principal_for(credentials.credentials if credentials else None)
        request.state.principal = principal
    return principal


def bearer_token(scope: Scope) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme in any case)."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return None
            return token.strip()
    return None


class KeyCheck:
    """Pure ASGI middleware: the API key of each request under ``prefix``, checked from its
    headers before the app reads its body (see the module). Refusals close the connection: the
    body the client may still be sending is not read."""

    def __init__(self, app: ASGIApp, prefix: str = "/v1") -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        try:
            principal = await principal_for(bearer_token(scope))
        except ApiError as exc:
            headers = {**(exc.headers or {}), "Connection": "close"}
            await JSONResponse({"detail": exc.detail}, exc.status_code, headers)(
                scope, receive, send
            )
            return
        except redis.RedisError:  # as the app answers a Redis outage (errors.py)
            await JSONResponse(
                {"detail": "the job store is unavailable right now; retry shortly"},
                503,
                {"Retry-After": "5", "Connection": "close"},
            )(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


async def _verify(token: str) -> ApiKey | None:
    """``KeyStore.verify`` on the event loop, with the gateway's async Redis client: every
    /v1 request passes here, and a worker-thread hop per request cost more than the lookup."""
    parsed = parse_token(token)
    if parsed is None:
        return None
    key_id, secret = parsed
    record = await async_redis().hgetall(KeyStore.key(key_id))
    return KeyStore.check_secret(secret, cast("dict[str, str]", record))  # decode_responses


def current_principal(request: Request) -> Principal:
    """The principal ``authenticate`` found for this request."""
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):  # a /v1 router mounted without authenticate
        raise RuntimeError("authenticate did not run for this route")
    return principal
