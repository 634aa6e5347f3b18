"""Request limits in-process: the body-limit and metrics middlewares as ASGI apps, the bounds of
the request schemas, the size of the largest legal request, and image limits in every format.

Through real HTTP, with the real gateway: tests/integration/test_request_limits.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile
from pydantic import ValidationError
from starlette.types import Message, Receive, Scope, Send

from services.gateway.limits import BodyLimit, BodySizeLimit, BodyTooLarge
from services.gateway.metrics import REQUESTS, RequestMetrics
from shared.bodies.joint_names import BODY_PARTS
from shared.io.images import ImageTooLargeError, decode_image
from shared.schemas.common import MAX_ABS_PIXELS
from shared.schemas.lifting import PoseLiftRequest
from shared.schemas.poses import MotionDenoiseRequest, PoseCompleteRequest, PoseGenerateRequest
from shared.settings import Settings, get_settings

JSON = BodyLimit(1000, "BODYSERVE_MAX_JSON_BYTES", "send less")
UPLOADS = BodyLimit(5000, "BODYSERVE_MAX_UPLOAD_BYTES", "send a smaller image")


class BodyReader:
    """The app behind the middleware: reads the whole body, answers 200 with its length."""

    def __init__(self) -> None:
        self.calls = 0
        self.received = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        while True:
            message = await receive()
            self.received += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = str(self.received).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


def run(
    app: Any, path: str, chunks: list[bytes], content_length: int | str | None
) -> tuple[list[Message], int]:
    """Send a POST with ``chunks`` as its body through ``app``: the messages sent back, and
    how many chunks the app asked for."""
    headers = [] if content_length is None else [(b"content-length", str(content_length).encode())]
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    pending = list(chunks)
    asked = 0

    async def receive() -> Message:
        nonlocal asked
        asked += 1
        body = pending.pop(0) if pending else b""
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent, asked


def limited(inner: Any) -> BodySizeLimit:
    return BodySizeLimit(
        inner, default=JSON, uploads=UPLOADS, upload_paths=frozenset({"/v1/mesh-recovery"})
    )


def status_and_detail(sent: list[Message]) -> tuple[int, str | None]:
    status = sent[0]["status"]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return status, json.loads(body)["detail"] if status == 413 else None


def test_a_declared_length_over_the_limit_is_413_without_reading_or_calling_the_app() -> None:
    inner = BodyReader()
    sent, asked = run(limited(inner), "/v1/poses/lift", [b"x" * 10], content_length=1001)
    status, detail = status_and_detail(sent)
    assert status == 413 and inner.calls == 0 and asked == 0
    assert detail == (
        "the request body is 1001 bytes; this route accepts at most 1000 bytes "
        "(BODYSERVE_MAX_JSON_BYTES): send less"
    )
    assert (b"connection", b"close") in sent[0]["headers"]


def test_the_upload_route_has_the_upload_limit() -> None:
    for path in ("/v1/mesh-recovery", "/v1/mesh-recovery/"):
        sent, _ = run(limited(BodyReader()), path, [b"x" * 4000], content_length=4000)
        assert status_and_detail(sent)[0] == 200
    sent, _ = run(limited(BodyReader()), "/v1/mesh-recovery", [], content_length=5001)
    assert "BODYSERVE_MAX_UPLOAD_BYTES" in str(status_and_detail(sent)[1])
    sent, _ = run(limited(BodyReader()), "/v1/poses/lift", [], content_length=4000)
    assert status_and_detail(sent)[0] == 413


@pytest.mark.parametrize("content_length", [None, "not a number"], ids=["chunked", "unreadable"])
def test_a_streamed_body_is_counted_and_cut_off_at_the_limit(
    content_length: str | None,
) -> None:
    inner = BodyReader()
    sent, asked = run(limited(inner), "/v1/poses/lift", [b"x" * 400] * 3, content_length)
    status, detail = status_and_detail(sent)
    assert status == 413 and asked == 3  # the third chunk passed the limit: no fourth read
    assert detail == (
        "the request body is larger than the 1000 bytes this route accepts "
        "(BODYSERVE_MAX_JSON_BYTES): send less"
    )
    inner = BodyReader()
    sent, _ = run(limited(inner), "/v1/poses/lift", [b"x" * 400] * 2, content_length)
    assert status_and_detail(sent)[0] == 200 and inner.received == 800


def test_a_body_longer_than_its_content_length_is_cut_off_too() -> None:
    """The bytes that arrive count, not what the header claims (an ASGI server in front of
    the app may not enforce it)."""
    sent, _ = run(limited(BodyReader()), "/v1/poses/lift", [b"x" * 600] * 2, content_length=10)
    assert status_and_detail(sent)[0] == 413


def test_past_the_start_of_a_response_the_error_is_not_answered_twice() -> None:
    async def answers_then_reads(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while (await receive()).get("more_body"):
            pass

    with pytest.raises(BodyTooLarge):
        run(limited(answers_then_reads), "/v1/poses/lift", [b"x" * 600] * 2, None)


def test_non_http_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    async def nothing() -> Message:
        return {}

    async def ignore(message: Message) -> None:
        return None

    asyncio.run(limited(app)({"type": "lifespan"}, nothing, ignore))
    assert seen == ["lifespan"]


# --------------------------------------------------------------------------- metrics


class Route:
    path = "/unit-test/{item}"


def _count(route: str, method: str, status: str) -> float:
    return REQUESTS.labels(route, method, status)._value.get()


@pytest.mark.parametrize(
    ("method", "raises", "label", "status"),
    [("GET", False, "GET", "204"), ("BREW", False, "other", "204"), ("POST", True, "POST", "500")],
)
def test_requests_are_counted_by_route_template_method_and_status(
    method: str, raises: bool, label: str, status: str
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = Route()  # as the router leaves it
        if raises:
            raise RuntimeError("boom")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    before = _count(Route.path, label, status)
    scope = {"type": "http", "method": method, "path": "/unit-test/7", "headers": []}

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        return None

    if raises:
        with pytest.raises(RuntimeError):
            asyncio.run(RequestMetrics(app)(scope, receive, send))
    else:
        asyncio.run(RequestMetrics(app)(scope, receive, send))
    assert _count(Route.path, label, status) == before + 1


# --------------------------------------------------------------------------- schema bounds

STANDING = [[0.0, 0.0, 0.0]] * 21


def _message(exc: pytest.ExceptionInfo[ValidationError]) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.value.errors())


@pytest.mark.parametrize(
    ("model", "fields", "expected"),
    [
        (PoseCompleteRequest, {"body_pose": [*STANDING, [0.0] * 3], "hidden_parts": ["legs"]},
         "body_pose: List should have at most 21 items"),
        (PoseCompleteRequest, {"body_pose": [[0.0] * 4] * 21, "hidden_parts": ["legs"]},
         "body_pose.0: List should have at most 3 items"),
        (PoseCompleteRequest, {"body_pose": [[1e30, 0.0, 0.0], *STANDING[1:]],
                               "hidden_parts": ["legs"]},
         "body_pose.0.0: Input should be less than or equal to 1000"),
        (PoseCompleteRequest, {"body_pose": STANDING, "hidden_parts": ["legs"] * 11},
         f"hidden_parts: List should have at most {len(BODY_PARTS)} items"),
        (PoseCompleteRequest, {"body_pose": STANDING, "known_joints": ["x" * 33]},
         "known_joints.0: String should have at most 32 characters"),
        (PoseGenerateRequest, {"outputs": ["params", "mesh", "mesh"]},
         "outputs: List should have at most 2 items"),
        (MotionDenoiseRequest, {"joints": [[[0.0, 0.0, 0.0]] * 23]},
         "joints.0: List should have at most 22 items"),
        (MotionDenoiseRequest, {"joints": [[[0.0, 2e4, 0.0]] * 22]},
         "joints.0.0.1: Input should be less than or equal to 10000"),
        (PoseLiftRequest, {"format": "coco17", "image_size": {"width": 9, "height": 9},
                           "people": [[[1.0, 1.0, 1.0]] * 34]},
         "people.0: List should have at most 33 items"),
        (PoseLiftRequest, {"format": "coco17", "image_size": {"width": 9, "height": 9},
                           "people": [[[1.0, MAX_ABS_PIXELS * 2, 1.0]] * 17]},
         "people.0.0.1: Input should be less than or equal to 1000000"),
        (PoseLiftRequest, {"format": "coco17", "image_size": {"width": 9, "height": 9},
                           "people": [[[1.0, math.inf, 1.0]] * 17]},
         "people.0.0.1: Input should be a finite number"),
    ],
)  # fmt: skip
def test_lists_and_numbers_of_requests_are_bounded(
    model: type, fields: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ValidationError) as exc:
        model.model_validate(fields)
    assert expected in _message(exc)


def test_a_lift_over_the_row_limit_is_refused_before_its_keypoints_are_read() -> None:
    """Counted first: a person with broken keypoints beyond the limit is not what is reported."""
    rows = get_settings().max_lift_rows
    people = [[[1.0, 1.0, 1.0]] * 17] * rows + [[[1.0, 1.0]]]
    with pytest.raises(ValidationError) as exc:
        PoseLiftRequest.model_validate(
            {"format": "coco17", "image_size": {"width": 9, "height": 9}, "people": people,
             "hypotheses": 1}
        )  # fmt: skip
    assert f"people x hypotheses ({rows + 1} x 1) must be at most {rows}" in _message(exc)


def test_the_document_shows_the_server_s_limits() -> None:
    """Counts set by the settings are shown with their current values in the JSON schema."""
    settings = get_settings()
    lift = PoseLiftRequest.model_json_schema()["properties"]
    assert lift["people"]["maxItems"] == settings.max_lift_rows
    assert lift["hypotheses"]["maximum"] == settings.max_lift_hypotheses
    motion = MotionDenoiseRequest.model_json_schema()["properties"]
    assert motion["joints"]["maxItems"] == settings.max_motion_frames
    assert PoseGenerateRequest.model_json_schema()["properties"]["n"]["maximum"] == (
        settings.max_pose_samples
    )


def test_the_largest_legal_request_fits_in_the_json_limit() -> None:
    """BODYSERVE_MAX_JSON_BYTES holds a lift of BODYSERVE_MAX_LIFT_ROWS mediapipe33 people
    with every number at its longest (24 characters), written compactly or indented."""
    settings = Settings()
    longest = -1.2345678901234567e-100
    assert len(repr(longest)) == 24
    person = [[longest, longest, 0.5]] * 33
    request = {
        "format": "mediapipe33",
        "image_size": {"width": 100_000, "height": 100_000},
        "people": [person] * settings.max_lift_rows,
        "hypotheses": 1,
        "seed": 2**31 - 1,
        "outputs": ["params"],  # a mesh holds at most 64 bodies
        "anny_params": True,
    }
    compact = len(json.dumps(request))
    indented = len(json.dumps(request, indent=1))
    assert compact < indented < settings.max_json_bytes
    assert PoseLiftRequest.model_validate(request).row_count() == settings.max_lift_rows


# --------------------------------------------------------------------------- images


def _encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


BOMBS = {
    "PNG": {"optimize": True},
    "JPEG": {"quality": 5},
    "GIF": {},
    "TIFF": {"compression": "tiff_adobe_deflate"},
    "WEBP": {"lossless": True},
    "BMP": {},
}


@pytest.mark.parametrize("fmt", BOMBS)
def test_images_over_the_pixel_limit_are_refused_from_the_header_in_every_format(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each accepted format: an image over max_pixels (a flat one, that compresses to next to
    nothing) is refused without its pixels being decoded."""
    data = _encode(Image.new("L", (1200, 1000)), fmt, **BOMBS[fmt])
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded"))
    with pytest.raises(ImageTooLargeError, match=r"1200x1000 pixels \(1\.2 megapixels\)"):
        decode_image(data, max_bytes=len(data), max_pixels=1_000_000, max_side=12_000)


def test_an_image_within_the_limits_decodes() -> None:
    data = _encode(Image.fromarray(np.zeros((20, 30, 3), np.uint8)), "PNG")
    assert decode_image(data, max_bytes=len(data), max_pixels=600, max_side=30).shape == (
        20,
        30,
        3,
    )
