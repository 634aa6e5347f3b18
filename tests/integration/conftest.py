"""Fixtures that run the real services as processes on 127.0.0.1 (free ports, temporary var dir).

- ``local_stack``: the whole local stack (Redis, Triton, one Celery worker per queue, the
  gateway), session-scoped. Its own ``redis-server`` unless ``BODYSERVE_TEST_REDIS_URL`` names
  one to use (then pick a database of its own, e.g. ``redis://host:6379/7``: the queues and
  job keys are not namespaced per stack). Yields a :class:`services.tools.local_stack.LocalStack`:
  ``base_url``, ``redis_url``, ``triton_url``, ``var_dir``, ``env()``, ``kill_worker(queue)``,
  ``start_worker(queue)``, ``restart_worker(queue)``, ``status()``.
- ``triton_server``: Triton alone (lighter), session-scoped; yields a :class:`TritonServer`.

Tests that use them are marked ``@pytest.mark.integration`` (``pytest -m integration``).
Both skip when ``tritonserver`` (``pip install -e .[triton]``) or ``redis-server`` is missing.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.tools.local_stack import LocalStack, StackConfig
from services.tools.triton_launcher import TritonNotFound, find_tritonserver
from tests.conftest import missing
from tests.integration.stacks import started_stack


def _require_triton() -> None:
    try:
        find_tritonserver()
    except TritonNotFound as exc:
        missing(str(exc))


@dataclass
class TritonServer:
    """A running tritonserver on the repository's ``model_repository``."""

    url: str  # gRPC host:port (BODYSERVE_TRITON_URL)
    http_url: str
    metrics_url: str
    var_dir: Path
    startup_s: float  # from launch to every model ready
    stack: LocalStack


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    _require_triton()
    var_dir = tmp_path_factory.mktemp("triton")
    start = time.monotonic()
    config = StackConfig.with_free_ports(var_dir, components=["triton"])
    with started_stack(config, "tritonserver") as stack:
        cfg = stack.config
        yield TritonServer(
            url=stack.triton_url,
            http_url=f"http://{cfg.host}:{cfg.triton_http_port}",
            metrics_url=f"http://{cfg.host}:{cfg.triton_metrics_port}/metrics",
            var_dir=var_dir,
            startup_s=time.monotonic() - start,
            stack=stack,
        )


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    _require_triton()
    redis_url = os.environ.get("BODYSERVE_TEST_REDIS_URL") or None
    if redis_url is None and shutil.which("redis-server") is None:
        missing("redis-server not installed and BODYSERVE_TEST_REDIS_URL not set")
    var_dir = tmp_path_factory.mktemp("stack")
    with started_stack(StackConfig.with_free_ports(var_dir, redis_url=redis_url)) as stack:
        yield stack
