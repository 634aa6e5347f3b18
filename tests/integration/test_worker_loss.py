"""A job survives its worker being killed with SIGKILL mid-job: no accepted job is lost."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration


def test_sigkill_mid_job_then_new_worker_completes_it(local_stack, photos_dir: Path) -> None:  # type: ignore[no-untyped-def]
    photo = photos_dir / "coco_000000541055_skiers_group_multi.jpg"
    with httpx.Client(base_url=local_stack.base_url, timeout=60) as client:
        reply = client.post(
            "/v1/mesh-recovery",
            files={"image": (photo.name, photo.read_bytes())},
            data={"max_people": "8", "iterations": "300"},  # long enough to be killed mid-way
        )
        assert reply.status_code == 202
        location = reply.headers["Location"]
        deadline = time.monotonic() + 120
        while client.get(location).json()["status"] != "running":
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.1)
        time.sleep(1.0)
        local_stack.kill_worker("mesh_recovery")  # SIGKILL, whole process group
        assert client.get(location).json()["status"] == "running"

        local_stack.start_worker("mesh_recovery")
        deadline = time.monotonic() + 240
        while (status := client.get(location).json())["status"] != "succeeded":
            assert status["status"] in ("queued", "running"), status
            assert time.monotonic() < deadline, f"job not recovered: {status}"
            time.sleep(0.5)
        assert status["attempts"] == 2  # run once, killed, run again: not lost, not run twice
        result = client.get(f"{location}/result").json()
        assert len(result["people"]) == 4
