"""Request body limits, enforced before authentication and routing.

:class:`BodySizeLimit` is a pure ASGI middleware: a request whose ``Content-Length`` is over the
limit gets 413 at once, without a byte of its body being read (and without the app being
called, so no key lookup, no routing); a body without ``Content-Length`` (chunked) is counted
as it streams in and cut off with 413 at the limit. The limit depends on the route: the upload
routes (multipart) allow ``max_upload_bytes`` plus a little room for the other form fields,
every other route ``max_json_bytes``.

Starlette's ``RequestBodyLimitMiddleware`` (and FastAPI's ``max_body_size``) do the same
counting but answer a plain-text "Content Too Large" that names neither the limit nor the
setting to change, and take one limit per route after routing; hence this small one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Room for the form fields next to the image (options, part headers, boundaries): they are a
# few hundred bytes; 64 KiB leaves room for long file names without allowing a second image.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class BodyLimit:
    """The most bytes a request body may have, and how to tell the client about it."""

    max_bytes: int
    setting: str  # the environment variable that sets it
    advice: str  # what to send instead

    def message(self, size: int | None) -> str:
        """What the client is told: ``size`` is the declared length (None: while streaming)."""
        if size is None:
            got = f"is larger than the {self.max_bytes} bytes this route accepts"
        else:
            got = f"is {size} bytes; this route accepts at most {self.max_bytes} bytes"
        return f"the request body {got} ({self.setting}): {self.advice}"


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` once a streamed body passes its limit.

    An :class:`HTTPException`, so that FastAPI's body reading passes it on as it is (it turns
    other exceptions into a 400) and its handler answers ``{"detail": ...}`` with 413.
    """

    def __init__(self, limit: BodyLimit) -> None:
        # Connection: close: the rest of the body is still on the wire; reading it to reuse
        # the connection would be reading what was just refused.
        super().__init__(413, limit.message(None), headers={"Connection": "close"})


class BodySizeLimit:
    """Pure ASGI middleware: 413 for bodies over the limit of their route (see the module)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        default: BodyLimit,
        uploads: BodyLimit,
        upload_paths: frozenset[str],
    ) -> None:
        self.app = app
        self.default = default
        self.uploads = uploads
        self.upload_paths = upload_paths

    def limit_for(self, path: str) -> BodyLimit:
        return self.uploads if path.rstrip("/") in self.upload_paths else self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit.max_bytes:
            # Answered from the header alone: the body is never read, the app never runs.
            await _send_413(send, limit.message(declared))
            return

        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                # Counted whatever Content-Length said: the bytes that arrive are what count.
                received += len(message.get("body", b""))
                if received > limit.max_bytes:
                    raise BodyTooLarge(limit)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge as exc:
            # Normally answered by the app's HTTPException handler; this is for a body read
            # outside of it (a middleware further in). Too late once a response has begun.
            if response_started:
                raise
            await _send_413(send, str(exc.detail))


def _content_length(scope: Scope) -> int | None:
    """The declared body length; None when absent or unreadable (then the bytes are counted)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_413(send: Send, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                # The unread body is still on the wire: the connection cannot be reused.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
