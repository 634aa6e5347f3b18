"""Who is calling: the API key of a ``/v1`` request (``Authorization: Bearer bsk_...``).

``authenticate`` guards every ``/v1`` router (see ``app.py``); it leaves the caller's
:class:`~services.common.keys.Principal` in ``request.state.principal`` for the routes, which
submit jobs as it (``jobs_api.accept_job``) and show it only its own jobs (``routes/jobs.py``).
In open mode (``BODYSERVE_AUTH_MODE=open``) nobody needs a key and everyone is the one
``open`` principal, without limits.
"""

from __future__ import annotations

from typing import cast

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

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


async def authenticate(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
) -> Principal:
    """The caller's principal; 401 (with ``WWW-Authenticate: Bearer``) without a valid key."""
    settings = get_settings()
    if settings.auth_mode == "open":
        principal = OPEN_PRINCIPAL
    else:
        if credentials is None:
            raise _unauthorized("this route needs an API key")
        key = await _verify(credentials.credentials)
        if key is None:
            raise _unauthorized("the API key is not valid")
        if key.revoked:
            raise _unauthorized("the API key was revoked")
        principal = key.principal(settings.key_rate_per_minute, settings.key_max_concurrent)
    request.state.principal = principal
    return principal


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
