"""Idempotency keys: a client that retries a POST with the same ``Idempotency-Key`` gets the
job its first try created, never a second one.

A key is scoped to its owner (two API keys may use the same string) and bound in Redis
(``bodyserve:idem:<owner>:<sha256 of the key>``) to the job id and a fingerprint of the request,
for ``idempotency_ttl_s``. The binding is made with ``SET NX`` *before* the job is created, under
a job id chosen in advance, so of concurrent identical requests exactly one creates the job and
the others answer with its id. A submission that fails (quota, broker down) releases the key.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from fastapi import Request

from services.common.jobs import PREFIX
from services.gateway.errors import ApiError

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 200
_PRINTABLE = re.compile(r"[\x20-\x7e]+")

# Delete the binding only if it is still ours: a later request may have bound the key again.
_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class Binding:
    job_id: str
    fingerprint: str

    def dump(self) -> str:
        return json.dumps({"job_id": self.job_id, "fingerprint": self.fingerprint})


def idempotency_key(request: Request) -> str | None:
    """The request's ``Idempotency-Key``, or None; 422 when it is not 1-200 printable ASCII."""
    value = request.headers.get(HEADER)
    if value is None:
        return None
    if not (1 <= len(value) <= MAX_KEY_LENGTH) or not _PRINTABLE.fullmatch(value):
        raise ApiError(
            422,
            f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable ASCII characters "
            "(a UUID is a good choice)",
        )
    return value


def fingerprint(capability: str, options: dict[str, Any], uploads: dict[str, bytes]) -> str:
    """What makes two requests the same: capability, options and the digests of the uploads
    (not ``?wait``, which only changes how long the answer takes)."""
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in uploads.items()}
    canonical = json.dumps(
        {"capability": capability, "options": options, "uploads": digests},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotencyKeys:
    def __init__(self, client: aioredis.Redis, ttl_s: int) -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self._release = client.register_script(_RELEASE_SCRIPT)

    @staticmethod
    def redis_key(owner: str, key: str) -> str:
        # Hashed: the key is the client's string, of any printable characters.
        return f"{PREFIX}idem:{owner}:{hashlib.sha256(key.encode()).hexdigest()}"

    async def get(self, owner: str, key: str) -> Binding | None:
        raw = await self.redis.get(self.redis_key(owner, key))
        if raw is None:
            return None
        data = json.loads(raw)
        return Binding(str(data["job_id"]), str(data["fingerprint"]))

    async def claim(self, owner: str, key: str, binding: Binding) -> Binding | None:
        """Bind ``key`` to ``binding`` unless it is bound already; returns the binding that
        was there (None: this one was made)."""
        name = self.redis_key(owner, key)
        while True:
            if await self.redis.set(name, binding.dump(), nx=True, ex=self.ttl_s):
                return None
            existing = await self.get(owner, key)
            if existing is not None:
                return existing
            # Released (or expired) between SET NX and GET: try again.

    async def release(self, owner: str, key: str, binding: Binding) -> None:
        await self._release(keys=[self.redis_key(owner, key)], args=[binding.dump()])


def mismatch() -> ApiError:
    return ApiError(
        422,
        f"{HEADER} reused with a different request: a key stands for one request (same "
        "route, options and uploads); use a new key for a new request",
    )
