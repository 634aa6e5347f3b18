"""The Triton readiness probe of compose and Kubernetes, against a stand-in HTTP server."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from services.capabilities import TRITON_MODELS
from services.tools.triton_probe import not_ready


class _Triton(BaseHTTPRequestHandler):
    """Answers Triton's per-model readiness: 200 for the models in ``ready``, 400 otherwise."""

    ready: ClassVar[set[str]] = set()

    def do_GET(self) -> None:
        parts = self.path.strip("/").split("/")  # v2/models/<name>/ready
        ok = len(parts) == 4 and parts[:2] == ["v2", "models"] and parts[2] in self.ready
        self.send_response(200 if ok else 400)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def triton() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Triton)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_ready_only_when_every_model_of_the_table_is(triton: str) -> None:
    _Triton.ready = set(TRITON_MODELS)
    assert not_ready(triton) == []
    _Triton.ready = set(TRITON_MODELS) - {"pose_lift"}
    assert not_ready(triton) == ["pose_lift"]


def test_the_command_exits_non_zero_and_names_what_is_missing(triton: str) -> None:
    _Triton.ready = {"keypoints_2d"}
    probe = [sys.executable, "-m", "services.tools.triton_probe", triton]
    result = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "body_fit" in result.stderr and "keypoints_2d" not in result.stderr
    _Triton.ready = set(TRITON_MODELS)
    assert subprocess.run(probe, capture_output=True, timeout=30).returncode == 0


def test_an_unreachable_server_is_not_ready() -> None:
    assert not_ready("http://127.0.0.1:1") == list(TRITON_MODELS)
