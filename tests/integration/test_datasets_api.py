"""POST /v1/datasets on the real stack: two dataset workers, one killed mid-job, shards read
back with the webdataset library, labels checked against the meshes they describe."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from services.tools.local_stack import CELERY_APP
from shared.datasets.check import check_sample
from shared.datasets.shards import iter_samples
from shared.settings import get_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def second_dataset_worker(local_stack) -> Iterator[subprocess.Popen[bytes]]:  # type: ignore[no-untyped-def]
    """A second worker process on the datasets queue, beside the stack's own."""
    log = open(Path(local_stack.var_dir) / "worker-datasets-2.log", "wb")  # noqa: SIM115
    argv = [
        sys.executable, "-m", "celery", "-A", CELERY_APP, "worker", "-Q", "datasets,webhooks",
        "-c", "1", "--prefetch-multiplier", "1", "-n", "datasets2@%h",
        "--without-gossip", "--without-mingle", "--loglevel", "INFO",
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, env=local_stack.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _wait(client: httpx.Client, location: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while (status := client.get(location).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"dataset job did not end: {status}"
        time.sleep(0.5)
    return status


def test_dataset_survives_a_killed_worker(local_stack, second_dataset_worker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = {
        "count": 90,
        "resolution": 128,
        "shard_size": 6,
        "seed": 7,
        "poses": {"source": "prior"},
        "name": "skiers",
    }
    with httpx.Client(base_url=local_stack.base_url, timeout=60) as client:
        reply = client.post("/v1/datasets", json=spec)
        assert reply.status_code == 202, reply.text
        location = reply.headers["Location"]
        job_id = reply.json()["id"]

        # Kill the stack's dataset worker once a few chunks are in (it is then mid-chunk).
        deadline = time.monotonic() + 180
        while client.get(location).json()["progress"] < 0.15:
            assert time.monotonic() < deadline, client.get(location).json()
            time.sleep(0.2)
        assert local_stack.kill_worker("datasets") is not None
        status = _wait(client, location, 300)
        local_stack.start_worker("datasets")
        assert status["status"] == "succeeded", status
        assert second_dataset_worker.poll() is None  # the other worker did the rest

        result = client.get(f"{location}/result").json()
        assert result["images"] == 90 and len(result["shards"]) == 15
        keys: list[str] = []
        labels_checked = 0
        for name in result["shards"]:
            shard = tmp_path / name
            shard.write_bytes(client.get(f"{location}/artifacts/{name}").content)
            for n, sample in enumerate(iter_samples(shard)):  # the webdataset library
                keys.append(sample["key"])
                assert sample["rgb"].shape == (128, 128, 3)
                assert sample["mask"].any() and (sample["depth"][sample["mask"]] > 0).all()
                if n == 0:  # one sample per shard: the full check against its mesh
                    report = check_sample(sample, vertex_stride=16, full_image=False)
                    assert report.ok, (sample["key"], report.problems)
                    labels_checked += 1
        # Exactly the requested samples, each once, whatever was re-made after the kill.
        assert sorted(keys) == [f"{i:08d}" for i in range(90)]
        assert labels_checked == 15

        card = client.get(f"{location}/artifacts/card.json").json()
        assert card["images"] == 90 and card["fingerprint"] == result["fingerprint"]
        assert any("mocap.cs.cmu.edu" in line for line in card["licences"])
        sheet = Image.open(
            io.BytesIO(client.get(f"{location}/artifacts/contact_sheet.png").content)
        )
        assert sheet.width >= 8 * 100 and np.asarray(sheet).std() > 10
        # Another job's artifacts are not served under this one, nor uploads, nor odd names.
        assert client.get(f"{location}/artifacts/other-000001.pdf").status_code == 404
        assert job_id in location


def test_the_same_spec_gives_the_same_shards(local_stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = {
        "count": 4,
        "resolution": 96,
        "shard_size": 4,
        "seed": 3,
        "poses": {"source": "uniform"},
    }
    shards = []
    with httpx.Client(base_url=local_stack.base_url, timeout=60) as client:
        for _ in range(2):
            reply = client.post("/v1/datasets", json=spec)
            assert reply.status_code == 202, reply.text
            status = _wait(client, reply.headers["Location"], 180)
            assert status["status"] == "succeeded", status
            name = client.get(f"{reply.headers['Location']}/result").json()["shards"][0]
            shards.append(client.get(f"{reply.headers['Location']}/artifacts/{name}").content)
    assert shards[0] == shards[1]


def test_cancelling_a_dataset_stops_it(local_stack) -> None:  # type: ignore[no-untyped-def]
    spec = {"count": 5000, "resolution": 64, "shard_size": 10, "poses": {"source": "uniform"}}
    with httpx.Client(base_url=local_stack.base_url, timeout=60) as client:
        reply = client.post("/v1/datasets", json=spec)
        assert reply.status_code == 202, reply.text
        location = reply.headers["Location"]
        deadline = time.monotonic() + 120
        while client.get(location).json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert client.delete(location).json()["status"] == "cancelled"
        time.sleep(3)
        before = client.get(location).json()
        time.sleep(3)
        after = client.get(location).json()
        assert after["status"] == "cancelled" and after["progress"] == before["progress"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"count": 10**9}, "over the limit"),
        ({"poses": {"source": "dreams"}}, "poses.source"),
        ({"resolution": 4096}, "resolution"),
        ({"resolution": 16}, "resolution"),
        ({"backgrounds": {"source": "folder", "folder": "no-such-folder"}}, "not a folder"),
        ({"backgrounds": {"source": "folder", "folder": "../etc"}}, "without '..'"),
        ({"backgrounds": {"source": "folder", "folder": "mocap"}}, "holds no images"),
        # Once answered 500 (the file system's "embedded null byte" and ENAMETOOLONG).
        ({"backgrounds": {"source": "folder", "folder": "a\u0000b"}}, "printable characters"),
        ({"poses": {"source": "mocap", "folder": "x" * 256}}, "at most 255 bytes"),
        ({"shapes": {"ranges": {"age": [0.9, 0.1]}}}, "low <= high"),
        ({"camera": {"fov_deg": [10, 170]}}, "camera.fov_deg"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_specs_get_a_422_that_says_what_to_fix(local_stack, change, message) -> None:  # type: ignore[no-untyped-def]
    spec = {"count": 10} | change
    reply = httpx.post(f"{local_stack.base_url}/v1/datasets", json=spec, timeout=30)
    assert reply.status_code == 422, reply.text
    assert message in reply.json()["detail"], reply.json()
    # What to fix, never where the server keeps its data.
    assert str(get_settings().dataset_inputs_path.resolve()) not in reply.text


def test_diffusion_without_weights_is_a_503_naming_the_setting(local_stack) -> None:  # type: ignore[no-untyped-def]
    spec = {"count": 10, "generator": "diffusion", "prompt": "a skier"}
    reply = httpx.post(f"{local_stack.base_url}/v1/datasets", json=spec, timeout=30)
    assert reply.status_code == 503
    assert "BODYSERVE_DIFFUSION_MODEL_DIR" in reply.json()["detail"]
    assert json.loads(reply.text)["detail"]
