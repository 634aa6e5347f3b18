"""Every bad request gets a 4xx with a message that says what to fix; nothing else breaks."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(local_stack):  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=local_stack.base_url, timeout=60) as http:
        yield http


def png_bytes(width: int = 64, height: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    row = b"\x00" + b"\x00" * 3 * width
    data = zlib.compress(row * 16, 9)  # a few rows only: it would inflate to gigabytes
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def post(client: httpx.Client, content: bytes | None, name: str = "photo.png", **fields: str):  # type: ignore[no-untyped-def]
    files = {"image": (name, content)} if content is not None else None
    return client.post("/v1/mesh-recovery", files=files, data=fields or None)


def assert_error(reply: httpx.Response, status: int, *words: str) -> None:
    assert reply.status_code == status, reply.text
    detail = reply.json()["detail"].lower()
    for word in words:
        assert word in detail, detail


def test_not_an_image(client: httpx.Client) -> None:
    assert_error(post(client, b"hello, this is text", "notes.txt"), 415, "not an image", "jpeg")


def test_corrupt_image(client: httpx.Client, photos_dir: Path) -> None:
    data = (photos_dir / "codait_yogait_t5.jpg").read_bytes()
    assert_error(post(client, data[: len(data) // 3], "cut.jpg"), 422, "damaged")


def test_empty_upload(client: httpx.Client) -> None:
    assert_error(post(client, b"", "empty.png"), 422, "empty")


def test_over_the_byte_limit(client: httpx.Client) -> None:
    assert_error(post(client, png_bytes() + b"\0" * (21 * 1024 * 1024)), 413, "bytes")


def test_decompression_bomb(client: httpx.Client) -> None:
    assert_error(post(client, bomb_png(30000, 30000), "bomb.png"), 413, "pixels")


def test_missing_image_field(client: httpx.Client) -> None:
    assert_error(post(client, None, max_people="2"), 422, "image", "required")


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"max_people": "100"}, ["max_people"]),
        ({"max_people": "many"}, ["max_people"]),
        ({"outputs": "glb,hologram"}, ["outputs"]),
        ({"iterations": "0"}, ["iterations"]),
        ({"body_model": "smplx"}, ["bodyserve_smplx_model_path"]),
        ({"body_model": "scarecrow"}, ["body_model"]),
    ],
)
def test_bad_options(client: httpx.Client, fields: dict[str, str], words: list[str]) -> None:
    assert_error(post(client, png_bytes(), **fields), 422, *words)


def test_bad_wait(client: httpx.Client) -> None:
    reply = client.post(
        "/v1/mesh-recovery", params={"wait": -1}, files={"image": ("a.png", png_bytes())}
    )
    assert_error(reply, 422, "wait")


def test_unknown_job_and_artifact(client: httpx.Client) -> None:
    assert_error(client.get("/v1/jobs/00000000-0000-0000-0000-000000000000"), 404, "no job")
    assert_error(client.get("/v1/jobs/not..a..job"), 404, "no job")
    assert_error(client.delete("/v1/jobs/00000000-0000-0000-0000-000000000000"), 404, "no job")


def test_artifact_names_cannot_escape(client: httpx.Client) -> None:
    reply = client.post(
        "/v1/mesh-recovery", params={"wait": 60}, files={"image": ("a.png", png_bytes())}
    )
    job = reply.json()["job_id"]
    for name in ("..%2F..%2Fetc%2Fpasswd", "input.bin", ".hidden", "mesh.glb"):
        assert client.get(f"/v1/jobs/{job}/artifacts/{name}").status_code == 404


def test_stack_still_serves_after_bad_requests(client: httpx.Client) -> None:
    assert client.get("/readyz").status_code == 200
