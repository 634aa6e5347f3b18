"""Request limits and hardening of the gateway, through real HTTP to a real uvicorn process.

Body limits (``services/gateway/limits.py``): a body over its route's limit is refused with 413
before authentication and routing, from its Content-Length alone when it has one (the body is
never read), or once the streamed bytes pass the limit when it has none (chunked). The largest
legal requests still go through, and requests that lie about their length break nothing.
Artifact names cannot leave their job's folder, and image limits are checked from the header.

A gateway on its own (Redis and uvicorn, keys mode, no worker: accepted jobs stay queued).
"""

from __future__ import annotations

import io
import json
import random
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from services.common.jobs import JobStatus, JobStore
from services.gateway.limits import MULTIPART_OVERHEAD_BYTES
from shared.settings import get_settings
from shared.storage import LocalArtifactStore
from tests.integration.gateway_only import GatewayOnly, gateway_only

pytestmark = pytest.mark.integration

SETTINGS = get_settings()
JSON_LIMIT = SETTINGS.max_json_bytes
UPLOAD_LIMIT = SETTINGS.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
MIB = 1 << 20


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayOnly]:
    with gateway_only(Path(tmp_path_factory.mktemp("limits"))) as running:
        yield running


@pytest.fixture
def http(gateway: GatewayOnly) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=120) as client:
        yield client


def raw_exchange(gateway: GatewayOnly, request: bytes, *, half_close: bool = False) -> bytes:
    """Send ``request`` as it is on a new connection, then read until the server closes it
    (or 15 s pass): what the server answered, b"" for nothing."""
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return answer


def head_of(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of a raw HTTP/1.1 answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def request_head(path: str, content_type: str, length: int, auth: dict[str, str]) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Content-Type: {content_type}",
        f"Content-Length: {length}",
        *(f"{name}: {value}" for name, value in auth.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# --------------------------------------------------------------------------- body limits


@pytest.mark.parametrize("with_key", [False, True], ids=["no key", "key"])
def test_an_oversized_upload_is_413_from_its_header_alone(
    gateway: GatewayOnly, with_key: bool
) -> None:
    """The headers only: 413 comes back although not one byte of the 30 MB was sent, so it
    was decided before the body, the key lookup and the route."""
    auth = gateway.auth if with_key else {}
    head = request_head("/v1/mesh-recovery", "multipart/form-data; boundary=x", 30 * MIB, auth)
    started = time.monotonic()
    status, headers, body = head_of(raw_exchange(gateway, head))
    assert status == 413
    assert time.monotonic() - started < 10
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    detail = json.loads(body)["detail"]
    assert f"is {30 * MIB} bytes" in detail
    assert f"at most {UPLOAD_LIMIT} bytes" in detail
    assert "BODYSERVE_MAX_UPLOAD_BYTES" in detail and "smaller image" in detail


def test_an_oversized_json_body_is_413_from_its_header_alone(gateway: GatewayOnly) -> None:
    length = JSON_LIMIT + 1
    head = request_head("/v1/poses/lift", "application/json", length, gateway.auth)
    status, _, body = head_of(raw_exchange(gateway, head))
    assert status == 413
    detail = json.loads(body)["detail"]
    assert f"is {length} bytes" in detail and f"at most {JSON_LIMIT} bytes" in detail
    assert "BODYSERVE_MAX_JSON_BYTES" in detail
    # JSON routes never get the upload limit, even for a multipart body.
    multipart = request_head("/v1/poses/generate", "multipart/form-data", length, {})
    assert head_of(raw_exchange(gateway, multipart))[0] == 413


class Offered:
    """A chunked body (no Content-Length): ``total`` bytes, counting what was taken."""

    def __init__(self, prefix: bytes, total: int) -> None:
        self.prefix, self.total, self.taken = prefix, total, 0

    def __iter__(self) -> Iterator[bytes]:
        yield self.prefix
        self.taken = len(self.prefix)
        while self.taken < self.total:
            piece = min(MIB, self.total - self.taken)
            self.taken += piece
            yield b" " * piece


@pytest.mark.parametrize(
    ("path", "content_type", "prefix", "limit", "with_key"),
    [
        ("/v1/poses/generate", "application/json", b'{"n": 1', JSON_LIMIT, True),
        (
            "/v1/mesh-recovery",
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n',
            UPLOAD_LIMIT,
            True,
        ),
        # Without a key nothing of the body is read at all: 401 from the headers.
        ("/v1/poses/generate", "application/json", b'{"n": 1', JSON_LIMIT, False),
    ],
    ids=["json", "multipart", "json, no key"],
)
def test_a_chunked_body_is_cut_off_at_the_limit(
    gateway: GatewayOnly, path: str, content_type: str, prefix: bytes, limit: int, with_key: bool
) -> None:
    offered = Offered(prefix, 8 * limit)
    headers = {"Content-Type": content_type, **(gateway.auth if with_key else {})}
    with httpx.Client(base_url=gateway.url, timeout=120) as client:
        reply = client.post(path, content=offered, headers=headers)
    if not with_key:
        assert reply.status_code == 401, reply.text
        assert reply.headers["connection"] == "close"
        assert offered.taken < limit, "the body was read before the key was checked"
        return
    assert reply.status_code == 413, reply.text
    assert reply.headers["connection"] == "close"
    assert f"larger than the {limit} bytes this route accepts" in reply.json()["detail"]
    # The rest was not read: the client stopped well before offering all of it.
    assert offered.taken < offered.total


def test_the_largest_legal_requests_go_through(gateway: GatewayOnly, http: httpx.Client) -> None:
    """A lift of BODYSERVE_MAX_LIFT_ROWS mediapipe33 people with full-precision coordinates,
    and an image of exactly BODYSERVE_MAX_UPLOAD_BYTES, are accepted; a byte more is not."""
    rng = random.Random(0)
    people = [
        [[rng.uniform(0, 4000), rng.uniform(0, 4000), rng.random()] for _ in range(33)]
        for _ in range(SETTINGS.max_lift_rows)
    ]
    lift = {
        "format": "mediapipe33",
        "image_size": {"width": 4000, "height": 4000},
        "people": people,
        "hypotheses": 1,
    }
    body = json.dumps(lift).encode()
    assert 0.4 * JSON_LIMIT < len(body) < JSON_LIMIT
    json_headers = {"Content-Type": "application/json", **gateway.auth}
    reply = http.post("/v1/poses/lift", content=body, headers=json_headers)
    assert reply.status_code == 202, reply.text[:500]
    assert http.get(f"/v1/jobs/{reply.json()['id']}", headers=gateway.auth).status_code == 200

    buffer = io.BytesIO()
    Image.fromarray(np.full((480, 640, 3), 128, np.uint8)).save(buffer, format="JPEG")
    # JPEG readers stop at the end-of-image marker: the padding keeps it a valid image.
    image = buffer.getvalue().ljust(SETTINGS.max_upload_bytes, b"\0")
    files = {"image": ("large.jpg", image, "image/jpeg")}
    reply = http.post(
        "/v1/mesh-recovery", files=files, data={"outputs": "json"}, headers=gateway.auth
    )
    assert reply.status_code == 202, reply.text[:500]
    files = {"image": ("larger.jpg", image + b"\0", "image/jpeg")}
    reply = http.post("/v1/mesh-recovery", files=files, headers=gateway.auth)
    assert reply.status_code == 413
    assert str(SETTINGS.max_upload_bytes) in reply.json()["detail"]


LYING_REQUESTS = {
    # Content-Length says more than is sent, then the client stops sending.
    "longer than sent": (b'{"n": 1}', 100, True),
    # Says less than is sent: the rest reads as a (broken) next request.
    "shorter than sent": (b'{"n": 1, "seed": 3}', 5, False),
    "not a number": (b"{}", "abc", False),
    "negative": (b"{}", -5, False),
    "beyond 64 bits": (b"{}", 10**30, False),
}


@pytest.mark.parametrize("case", LYING_REQUESTS, ids=list(LYING_REQUESTS))
def test_a_lying_content_length_breaks_nothing(
    gateway: GatewayOnly, http: httpx.Client, case: str
) -> None:
    body, length, half_close = LYING_REQUESTS[case]
    head = (
        b"POST /v1/poses/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\n"
        + f"Content-Length: {length}\r\n".encode()
        + "".join(f"{k}: {v}\r\n" for k, v in gateway.auth.items()).encode()
        + b"\r\n"
    )
    answer = raw_exchange(gateway, head + body, half_close=half_close)
    if answer:  # a refusal, never a server error; or no answer to a half-sent request
        assert head_of(answer)[0] in (400, 413, 422), answer[:300]
    # The gateway is still up and serves the next client as before.
    assert http.get("/healthz").status_code == 200
    reply = http.post("/v1/poses/generate", json={"n": 1}, headers=gateway.auth)
    assert reply.status_code == 202, reply.text


def test_conflicting_lengths_are_refused(gateway: GatewayOnly, http: httpx.Client) -> None:
    """Two Content-Lengths, or one with chunked encoding (request smuggling): 400."""
    for framing in (
        b"Content-Length: 2\r\nContent-Length: 50\r\n\r\n{}",
        b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    ):
        request = b"POST /v1/poses/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n" + framing
        assert head_of(raw_exchange(gateway, request))[0] == 400
    assert http.get("/healthz").status_code == 200


def test_refusals_are_counted(http: httpx.Client) -> None:
    """413s show in the gateway's metrics, whether refused before routing or while read."""
    text = http.get("/metrics").text
    refused = sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "bodyserve_http_requests"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels["status"] == "413"
    )
    assert refused >= 1


# --------------------------------------------------------------------------- images


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds a few rows: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress((b"\0" + b"\0" * 3 * width) * 4, 9)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("width", "height", "words"),
    [
        (SETTINGS.max_image_side + 1, 1, ["longest side may be at most"]),
        (8_000, 8_000, ["64.0 megapixels", "at most 40.0 megapixels"]),
    ],
    ids=["side", "pixels"],
)
def test_image_limits_are_checked_from_the_header(
    gateway: GatewayOnly, http: httpx.Client, width: int, height: int, words: list[str]
) -> None:
    bomb = _png_header_only(width, height)
    assert len(bomb) < 100_000
    started = time.monotonic()
    files = {"image": ("bomb.png", bomb, "image/png")}
    reply = http.post("/v1/mesh-recovery", files=files, headers=gateway.auth)
    assert reply.status_code == 413, reply.text
    assert time.monotonic() - started < 10
    for word in words:
        assert word in reply.json()["detail"]


# --------------------------------------------------------------------------- artifact names

SECRET = b"outside the job's folder"


@pytest.fixture(scope="module")
def finished_job(gateway: GatewayOnly) -> str:
    """A job that succeeded with one artifact, ended as a worker ends it, with files next to
    its folder that no artifact name may reach."""
    with httpx.Client(base_url=gateway.url, headers=gateway.auth, timeout=60) as client:
        reply = client.post("/v1/poses/generate", json={"n": 1, "outputs": ["params", "mesh"]})
        assert reply.status_code == 202, reply.text
        other = client.post("/v1/poses/generate", json={"n": 2})
    job_id, other_id = reply.json()["id"], other.json()["id"]
    artifacts = LocalArtifactStore(gateway.artifacts)
    artifacts.put(job_id, "poses.glb", b"glTF the job's own mesh")
    artifacts.put(other_id, "poses.glb", SECRET)
    (gateway.artifacts / "secret.txt").write_bytes(SECRET)
    (gateway.stack.var_dir / "secret.txt").write_bytes(SECRET)
    store = JobStore.from_url(gateway.stack.redis_url, 3600)
    assert store.finish(job_id, JobStatus.succeeded, result={"poses": []})
    store.redis.close()
    return job_id


ESCAPES = [
    "..",
    "...",
    "../secret.txt",
    "..%2Fsecret.txt",
    "%2e%2e%2fsecret.txt",
    "%2E%2E%2F%2E%2E%2Fsecret.txt",
    ".%2e/secret.txt",
    "%252e%252e%252fsecret.txt",  # encoded twice
    "..%5Csecret.txt",  # a backslash
    "%2Fetc%2Fpasswd",  # an absolute path
    "/etc/passwd",
    "%2F..%2Fsecret.txt",
    "poses.glb%00",  # NUL
    "poses.glb%00.txt",
    "secret.txt",
    ".secret",
    "poses.glb%2F..%2F..%2Fsecret.txt",
    "x" * 300,
]


@pytest.mark.parametrize("name", ESCAPES)
def test_artifact_names_cannot_leave_the_job_folder(
    gateway: GatewayOnly, finished_job: str, name: str
) -> None:
    """Sent as they are (http.client does not normalise paths): 404 (or 400 for what is not
    HTTP), and nothing outside the job's folder is read."""
    host, port = gateway.url.removeprefix("http://").split(":")
    connection = HTTPConnection(host, int(port), timeout=30)
    try:
        path = f"/v1/jobs/{finished_job}/artifacts/{name}"
        connection.request("GET", path, headers=gateway.auth)
        reply = connection.getresponse()
        body = reply.read()
    finally:
        connection.close()
    assert reply.status == 404, (name, reply.status, body[:200])
    assert SECRET not in body
    assert "detail" in json.loads(body)


def test_the_job_s_own_artifact_is_served(gateway: GatewayOnly, finished_job: str) -> None:
    """The same route with the job's real artifact name: the control of the test above."""
    reply = httpx.get(
        f"{gateway.url}/v1/jobs/{finished_job}/artifacts/poses.glb", headers=gateway.auth
    )
    assert reply.status_code == 200
    assert reply.content == b"glTF the job's own mesh"


def test_no_request_field_is_fetched_as_a_url(gateway: GatewayOnly, http: httpx.Client) -> None:
    """URLs where data is expected are data, never fetched: no field takes a URL, so they are
    refused as the wrong type (the document has no uri-format field either)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.5)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/image.jpg"
    try:
        replies = [
            http.post("/v1/mesh-recovery", data={"image": url}, headers=gateway.auth),
            http.post(
                "/v1/poses/lift",
                json={"format": "coco17", "image_size": {"width": 1, "height": 1}, "people": url},
                headers=gateway.auth,
            ),
        ]
        for reply in replies:
            assert reply.status_code == 422, reply.text
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody connected to the URL
    finally:
        listener.close()
    document = http.get("/openapi.json").text
    assert '"format": "uri"' not in document and '"format":"uri"' not in document
