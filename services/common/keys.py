"""API keys and what each may do: who a request is (a principal) and how much it may submit.

A key reads ``bsk_<id>_<secret>``: ``id`` (12 hex digits) names it in logs, job records and
``bodyserve keys list``; ``secret`` (32 random bytes, URL-safe base64) proves it. Only a hash of
the secret is stored, so a copy of Redis gives no usable key.

Keys (``bodyserve:`` prefix):

- ``apikey:<id>``: hash with id, name, secret_sha256, created_at, revoked (``0``/``1``),
  rate_per_minute and max_concurrent (empty: the settings' defaults, read at each request, so
  changing a default reaches every key that has none of its own), and where the key has a
  webhook endpoint (set by the operator, never by a request), webhook_url and webhook_secret.
  The webhook secret is stored as it is, since it signs every event; it lets no one use the
  API, only forge events to that endpoint.
- ``apikeys``: the set of key ids, for listing.
- ``ratelimit:...``: the submission windows of :class:`SubmissionLimiter`.

The concurrent-job quota is enforced where jobs are created and ended
(:meth:`services.common.jobs.JobStore.create`), not here.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import redis
from limits import RateLimitItemPerMinute
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from services.common.jobs import OPEN_OWNER, PREFIX
from services.common.webhook_endpoints import WebhookEndpoint, check_webhook_url, new_secret
from shared.settings import get_settings

TOKEN_PREFIX = "bsk"
ID_HEX_DIGITS = 12


class KeyNotFound(KeyError):
    pass


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: jobs are owned by ``id``; 0 in a limit means unlimited."""

    id: str
    name: str
    rate_per_minute: int
    max_concurrent: int


# Open mode (local demos): one principal for everyone, without limits.
OPEN_PRINCIPAL = Principal(id=OPEN_OWNER, name="open mode", rate_per_minute=0, max_concurrent=0)


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    created_at: float
    revoked: bool
    rate_per_minute: int | None  # None: the default of the settings
    max_concurrent: int | None
    webhook_url: str | None = None  # where its jobs' events go (its secret is not kept here)

    def principal(self, default_rate_per_minute: int, default_max_concurrent: int) -> Principal:
        return Principal(
            id=self.id,
            name=self.name,
            rate_per_minute=default_rate_per_minute
            if self.rate_per_minute is None
            else self.rate_per_minute,
            max_concurrent=default_max_concurrent
            if self.max_concurrent is None
            else self.max_concurrent,
        )


def _hash_secret(secret: str) -> str:
    # A plain SHA-256 is enough: the secret is 256 random bits, so nobody can guess it from its
    # hash; slow password hashes (bcrypt, argon2) defend low-entropy passwords against guessing
    # and would add their cost to every request.
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed key, else None."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not parts[2]:
        return None
    key_id = parts[1]
    if len(key_id) != ID_HEX_DIGITS or any(c not in "0123456789abcdef" for c in key_id):
        return None
    return key_id, parts[2]


def _limit(value: str | None) -> int | None:
    return int(value) if value else None


class KeyStore:
    """Issue, verify, list and revoke API keys in Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    @classmethod
    def from_url(cls, url: str) -> KeyStore:
        client = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=5, socket_connect_timeout=2
        )
        return cls(client)

    @staticmethod
    def key(key_id: str) -> str:
        return f"{PREFIX}apikey:{key_id}"

    INDEX = f"{PREFIX}apikeys"

    def create(
        self, name: str, *, rate_per_minute: int | None = None, max_concurrent: int | None = None
    ) -> tuple[ApiKey, str]:
        """A new key and its token; the token is not stored and cannot be shown again."""
        if not name.strip():
            raise ValueError("a key needs a name (who or what uses it)")
        limits = {"rate_per_minute": rate_per_minute, "max_concurrent": max_concurrent}
        for label, value in limits.items():
            if value is not None and value < 0:
                raise ValueError(f"{label} must be 0 (unlimited) or more")
        while True:
            key_id = secrets.token_hex(ID_HEX_DIGITS // 2)
            secret = secrets.token_urlsafe(32)
            record = {
                "id": key_id,
                "name": name,
                "secret_sha256": _hash_secret(secret),
                "created_at": repr(time.time()),
                "revoked": "0",
                "rate_per_minute": "" if rate_per_minute is None else str(rate_per_minute),
                "max_concurrent": "" if max_concurrent is None else str(max_concurrent),
            }
            # HSETNX on the id first: two keys never share an id, however unlikely.
            if self.redis.hsetnx(self.key(key_id), "id", key_id):
                break
        with self.redis.pipeline() as pipe:
            pipe.hset(self.key(key_id), mapping=dict[Any, Any](record))
            pipe.sadd(self.INDEX, key_id)
            pipe.execute()
        return self._from_hash(record), f"{TOKEN_PREFIX}_{key_id}_{secret}"

    @staticmethod
    def _from_hash(data: dict[str, str]) -> ApiKey:
        return ApiKey(
            id=data["id"],
            name=data.get("name", ""),
            created_at=float(data.get("created_at") or 0.0),
            revoked=data.get("revoked") == "1",
            rate_per_minute=_limit(data.get("rate_per_minute")),
            max_concurrent=_limit(data.get("max_concurrent")),
            webhook_url=data.get("webhook_url") or None,
        )

    def get(self, key_id: str) -> ApiKey:
        data = self.redis.hgetall(self.key(key_id))
        if not data or "secret_sha256" not in data:
            raise KeyNotFound(key_id)
        return self._from_hash(data)  # type: ignore[arg-type]

    def verify(self, token: str) -> ApiKey | None:
        """The key a token belongs to (revoked ones included: check ``revoked``), or None."""
        parsed = parse_token(token)
        if parsed is None:
            return None
        key_id, secret = parsed
        data: dict[str, str] = self.redis.hgetall(self.key(key_id))  # type: ignore[assignment]
        return self.check_secret(secret, data)

    @classmethod
    def check_secret(cls, secret: str, record: dict[str, str]) -> ApiKey | None:
        """The key stored as ``record`` (its hash, as read) if ``secret`` is its secret, else
        None. Apart from the read, so that the gateway can read with its async client."""
        stored = record.get("secret_sha256")
        if not stored or not hmac.compare_digest(stored, _hash_secret(secret)):
            return None
        return cls._from_hash(record)

    def list(self) -> list[ApiKey]:
        keys = []
        for key_id in sorted(self.redis.smembers(self.INDEX)):
            try:
                keys.append(self.get(str(key_id)))
            except KeyNotFound:
                continue
        return sorted(keys, key=lambda k: k.created_at)

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke for good (the record stays, so its jobs keep a named owner)."""
        key = self.get(key_id)
        self.redis.hset(self.key(key_id), "revoked", "1")
        return ApiKey(**{**key.__dict__, "revoked": True})

    # ------------------------------------------------------------------ webhooks
    def set_webhook(
        self, key_id: str, url: str, *, rotate_secret: bool = False
    ) -> tuple[ApiKey, str | None]:
        """Send the events of the key's jobs to ``url`` (ValueError when it is not an http(s)
        URL with a host). Returns the key and its new signing secret, to show once: a key
        without a secret gets one, ``rotate_secret`` replaces it; otherwise None (the
        receiver's secret stays valid when only the URL moves)."""
        url = check_webhook_url(url)
        self.get(key_id)  # KeyNotFound
        fields = {"webhook_url": url}
        secret = None
        if rotate_secret or not self.redis.hget(self.key(key_id), "webhook_secret"):
            secret = fields["webhook_secret"] = new_secret()
        self.redis.hset(self.key(key_id), mapping=dict[Any, Any](fields))
        return self.get(key_id), secret

    def clear_webhook(self, key_id: str) -> ApiKey:
        """No more events for the key's jobs (events already queued are skipped)."""
        self.get(key_id)
        self.redis.hdel(self.key(key_id), "webhook_url", "webhook_secret")
        return self.get(key_id)

    def webhook_endpoint(self, key_id: str) -> WebhookEndpoint | None:
        """Where the events of ``key_id``'s jobs go, with the secret that signs them."""
        url, secret = self.redis.hmget(self.key(key_id), ["webhook_url", "webhook_secret"])
        if not url or not secret:
            return None
        return WebhookEndpoint(str(url), str(secret))


class RateLimited(Exception):
    def __init__(self, limit: int, retry_after_s: int) -> None:
        super().__init__(f"over {limit} submissions per minute; retry in {retry_after_s} s")
        self.limit = limit
        self.retry_after_s = retry_after_s


class SubmissionLimiter:
    """Per-principal job submissions per minute, over a moving window (the ``limits`` package's
    atomic Lua scripts in Redis: concurrent gateways share the count)."""

    def __init__(self, url: str) -> None:
        storage = RedisStorage(url, key_prefix=f"{PREFIX}ratelimit", socket_timeout=5)
        self.limiter = MovingWindowRateLimiter(storage)

    def hit(self, principal: Principal) -> None:
        """Count one submission; :class:`RateLimited` when the principal is over its rate."""
        if principal.rate_per_minute <= 0:
            return
        item = RateLimitItemPerMinute(principal.rate_per_minute)
        if self.limiter.hit(item, principal.id):
            return
        # The window frees a slot when its oldest submission is a minute old.
        reset_at = self.limiter.get_window_stats(item, principal.id).reset_time
        retry_after = max(1, math.ceil(reset_at - time.time()))
        raise RateLimited(principal.rate_per_minute, retry_after)


@lru_cache(maxsize=1)
def key_store() -> KeyStore:
    return KeyStore.from_url(get_settings().redis_url)


@lru_cache(maxsize=1)
def submission_limiter() -> SubmissionLimiter:
    return SubmissionLimiter(get_settings().redis_url)
