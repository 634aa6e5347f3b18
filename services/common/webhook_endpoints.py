"""Where a key's webhook events go: an endpoint (URL and signing secret), checked and made.

API keys (:mod:`services.common.keys`) store an endpoint each; the delivery
(:mod:`services.common.webhooks`) reads it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from pydantic import HttpUrl, TypeAdapter, ValidationError

from shared.settings import Settings

SECRET_PREFIX = "whsec_"
_URL = TypeAdapter(HttpUrl)


def check_webhook_url(url: str) -> str:
    """``url`` normalised, or ValueError saying what a webhook URL must be."""
    try:
        parsed = _URL.validate_python(url.strip())
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"]
        raise ValueError(
            f"invalid webhook URL {url!r} ({reason}): give an http:// or https:// URL with a "
            "host, e.g. https://example.com/hooks/bodyserve"
        ) from None
    return str(parsed)


def new_secret() -> str:
    """A signing secret: 32 random bytes, URL-safe base64, after ``whsec_``."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class WebhookEndpoint:
    url: str
    secret: str

    def __repr__(self) -> str:  # never print the secret in logs or tracebacks
        return f"WebhookEndpoint(url={self.url!r}, secret=***)"


def open_mode_endpoint(settings: Settings) -> WebhookEndpoint | None:
    """The settings' endpoint (``webhook_url`` + ``webhook_secret``), for open-mode jobs."""
    if settings.webhook_url is None or settings.webhook_secret is None:
        return None
    return WebhookEndpoint(str(settings.webhook_url), settings.webhook_secret.get_secret_value())
