"""Fixtures shared by every test: real photos and a real Redis server of the tests' own."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image

from shared.settings import get_settings


def missing(reason: str) -> None:
    """Skip locally when a prerequisite is missing, but fail in CI, where it must be there."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI must have it: run ./scripts/setup.sh)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def photos_dir() -> Path:
    path = get_settings().photos_dir
    if not path.is_dir():
        missing(f"the shared photos are not at {path} (set BODYSERVE_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def load_photo(photos_dir: Path):  # type: ignore[no-untyped-def]
    def load(name: str) -> np.ndarray:
        return np.asarray(Image.open(photos_dir / name).convert("RGB"))

    return load


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throw-away redis-server on a free port (never the machine's own instance)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run ./scripts/setup.sh")
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield url
    process.terminate()
    process.wait(10)
