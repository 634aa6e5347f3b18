"""POST /v1/images/generate through the real gateway, Redis, a real Celery worker on the
``datasets`` queue and Triton (body recovery), on tiny random-weight diffusers pipelines."""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from services.tools.local_stack import LocalStack, StackConfig
from shared.diffusion.pipelines import STABLE_DIFFUSION_DIR
from tests.integration.gateway_only import gateway_only
from tests.integration.stacks import started_stack

pytest.importorskip("diffusers")
from shared.diffusion.tiny import build_tiny_pipelines

pytestmark = pytest.mark.integration
SIZE = 48
STANDING = [[0.0, 0.0, 0.0]] * 21
ARMS_DOWN = [[0.0, 0.0, 0.0]] * 15 + [[0.0, 0.0, -1.2], [0.0, 0.0, 1.2]] + [[0.0, 0.0, 0.0]] * 4


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pipelines(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def image_stack(
    local_stack: LocalStack, tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalStack]:
    """Redis, a gateway and one generation worker that see the tiny weights; bodies are
    recovered by the session stack's Triton."""
    config = StackConfig.with_free_ports(
        tmp_path_factory.mktemp("images"),
        components=["redis", "workers", "gateway"],
        queues=["datasets"],
        extra_env={
            "BODYSERVE_DIFFUSION_MODEL_DIR": str(tiny_weights),
            "BODYSERVE_TRITON_URL": local_stack.triton_url,
            "BODYSERVE_TORCH_THREADS": "1",
        },
    )
    with started_stack(config, "the image generation stack") as stack:
        yield stack


def _generate(client: httpx.Client, body: dict[str, Any], timeout_s: float = 180) -> dict:
    response = client.post("/v1/images/generate", json=body)
    assert response.status_code == 202, response.text
    location = response.headers["location"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(location).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            assert job["status"] == "succeeded", job
            return client.get(f"{location}/result").json() | {"_location": location}
        time.sleep(0.5)
    pytest.fail(f"the job did not end in {timeout_s} s: {job}")


def _artifact(client: httpx.Client, result: dict, name: str) -> bytes:
    response = client.get(f"{result['_location']}/artifacts/{name}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return response.content


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_no_weights_is_503_naming_the_setting(local_stack: LocalStack) -> None:
    response = httpx.post(
        f"{local_stack.base_url}/v1/images/generate", json={"prompt": "a person"}, timeout=30
    )
    assert response.status_code == 503, response.text
    assert "BODYSERVE_DIFFUSION_MODEL_DIR" in response.text


def test_incomplete_weights_is_503_naming_the_piece(tiny_weights: Path, tmp_path: Path) -> None:
    broken = tmp_path / "weights"
    shutil.copytree(tiny_weights, broken, ignore=shutil.ignore_patterns("text_encoder"))
    with gateway_only(tmp_path / "var", BODYSERVE_DIFFUSION_MODEL_DIR=str(broken)) as gateway:
        response = httpx.post(
            f"{gateway.url}/v1/images/generate",
            json={"prompt": "a person"},
            headers=gateway.auth,
            timeout=30,
        )
    assert response.status_code == 503, response.text
    assert f"'{STABLE_DIFFUSION_DIR}/' is incomplete" in response.text
    assert "text_encoder/config.json" in response.text


def test_generate_end_to_end(image_stack: LocalStack) -> None:
    with httpx.Client(base_url=image_stack.base_url, timeout=30) as client:
        bad = client.post("/v1/images/generate", json={"prompt": "a person", "width": 50})
        assert bad.status_code == 422 and "multiple of 8" in bad.text

        text = _generate(client, {"prompt": "a person", "n": 2, "seed": 5, "steps": 2,
                                  "width": 64, "height": SIZE})  # fmt: skip
        assert [image["seed"] for image in text["images"]] == [5, 6]
        first = [_artifact(client, text, image["image"]) for image in text["images"]]
        assert all(_pixels(data).shape == (SIZE, 64, 3) for data in first)
        assert first[0] != first[1]
        for image in text["images"]:
            # Noise from random weights: nobody found, said so, not regenerated.
            assert image["people"] == [] and image["conditioning"] == "none"
            assert "no person was found" in image["reason"]

        posed = {"prompt": "a person", "seed": 3, "steps": 2, "width": SIZE, "height": SIZE}
        one = _generate(client, posed | {"guidance": {"pose": {"body_pose": STANDING}}})
        again = _generate(client, posed | {"guidance": {"pose": {"body_pose": STANDING}}})
        other = _generate(client, posed | {"guidance": {"pose": {"body_pose": ARMS_DOWN}}})
    # The rendered pose reached the ControlNet: same pose and seed, same image; another pose,
    # with the same seed and prompt, another image.
    image = one["images"][0]
    assert image["conditioning"] == "pose" and image["people"] == [] and image["reason"]
    with httpx.Client(base_url=image_stack.base_url, timeout=30) as client:
        depth = _pixels(_artifact(client, one, image["conditioning_depth"]))
        other_depth = _pixels(_artifact(client, other, "depth-000.png"))
        pictures = [_artifact(client, r, "image-000.png") for r in (one, again, other)]
    assert depth.shape == (SIZE, SIZE) and depth.max() == 255
    assert not np.array_equal(depth, other_depth)
    assert pictures[0] == pictures[1]
    assert pictures[0] != pictures[2]


def test_a_dataset_painted_by_diffusion(image_stack: LocalStack, tmp_path: Path) -> None:
    """generator "diffusion": the datasets route, chunks on the generation worker, the tiny
    pipelines painting each sample over its body's depth; shards read back with webdataset."""
    from shared.datasets.shards import iter_samples

    spec = {"count": 3, "resolution": 64, "shard_size": 2, "seed": 4, "generator": "diffusion",
            "prompt": "a person on a beach", "poses": {"source": "uniform"}}  # fmt: skip
    with httpx.Client(base_url=image_stack.base_url, timeout=60) as client:
        reply = client.post("/v1/datasets", json=spec)
        assert reply.status_code == 202, reply.text
        location = reply.headers["Location"]
        deadline = time.monotonic() + 240
        while (job := client.get(location).json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, job
            time.sleep(0.5)
        assert job["status"] == "succeeded", job
        result = client.get(f"{location}/result").json()
        keys = []
        for name in result["shards"]:
            (tmp_path / name).write_bytes(client.get(f"{location}/artifacts/{name}").content)
            for sample in iter_samples(tmp_path / name):
                keys.append(sample["key"])
                assert sample["rgb"].shape == (64, 64, 3) and sample["mask"].any()
        assert keys == ["00000000", "00000001", "00000002"]
        card = client.get(f"{location}/artifacts/card.json").json()
        assert any("painted by the Stable Diffusion" in line for line in card["licences"])
