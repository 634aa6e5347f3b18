"""Image generation (Diffusion-HPC) on tiny random-weight Stable Diffusion + ControlNet
pipelines, built from configs, saved and loaded back through the production loader."""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

pytest.importorskip("diffusers")

from shared.diffusion.loop import GenerationOutput, depth_to_control, generate_images
from shared.diffusion.pipelines import (
    CONTROLNET_DEPTH_DIR,
    STABLE_DIFFUSION_DIR,
    DiffusionPipelines,
    DiffusionUnavailable,
    check_model_dir,
    load_pipelines,
    pick_device,
)
from shared.diffusion.tiny import build_tiny_pipelines
from shared.inference.local import InProcessBackend
from shared.schemas.images import ImageGenerateRequest

SIZE = 48  # pixels: a multiple of 8, small enough for 2-core CI


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pipelines(tmp_path_factory.mktemp("diffusion"))


@pytest.fixture(scope="module")
def pipelines(model_dir: Path) -> DiffusionPipelines:
    return load_pipelines(model_dir)


@pytest.fixture(scope="module")
def backend() -> InProcessBackend:
    return InProcessBackend()


def _request(**overrides: Any) -> ImageGenerateRequest:
    values: dict[str, Any] = {"prompt": "a photo of a person", "width": SIZE, "height": SIZE}
    values |= {"steps": 2, "seed": 11} | overrides
    return ImageGenerateRequest.model_validate(values)


def _pixels(output: GenerationOutput, name: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(output.artifacts[name])))


def _png_b64(depth: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(depth).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_tiny_pipelines_are_small_and_load_offline(model_dir: Path, pipelines: Any) -> None:
    size = sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file())
    assert size < 2_000_000, size
    assert check_model_dir(model_dir) == model_dir
    # float32 on CPU, float16 on CUDA.
    expected = torch.float16 if pipelines.device.startswith("cuda") else torch.float32
    assert pipelines.device == pick_device()
    assert pipelines.text_to_image.unet.dtype == pipelines.controlnet.dtype == expected
    # One set of weights: the ControlNet pipeline shares the text-to-image components.
    assert pipelines.depth_to_image.unet is pipelines.text_to_image.unet
    assert load_pipelines(model_dir) is pipelines  # cached per process


def test_missing_weights_say_what_is_missing(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DiffusionUnavailable, match="BODYSERVE_DIFFUSION_MODEL_DIR"):
        check_model_dir(None)
    broken = tmp_path / "weights"
    shutil.copytree(model_dir, broken)
    unet = broken / STABLE_DIFFUSION_DIR / "unet" / "diffusion_pytorch_model.safetensors"
    unet.rename(unet.with_suffix(".moved"))
    with pytest.raises(DiffusionUnavailable, match=r"stable-diffusion/.*unet/diffusion_pytorch"):
        check_model_dir(broken)
    unet.with_suffix(".moved").rename(unet)
    shutil.rmtree(broken / CONTROLNET_DEPTH_DIR)
    with pytest.raises(DiffusionUnavailable, match="no 'controlnet-depth/' folder"):
        check_model_dir(broken)


def test_text_loop_shapes_seeds_and_no_person(pipelines: Any, backend: InProcessBackend) -> None:
    output = generate_images(_request(n=2, width=64), pipelines, backend)
    result = output.result
    assert [image.seed for image in result.images] == [11, 12]
    for image in result.images:
        assert _pixels(output, image.image).shape == (SIZE, 64, 3)
        # Random weights draw noise: nobody is found, the image is not regenerated, and the
        # result says so.
        assert image.people == [] and image.conditioning == "none"
        assert image.reason == "no person was found in the first image: not regenerated"
        assert image.conditioning_depth is None and image.first_pass_image is None
    assert set(result.artifacts) == {"image-000.png", "image-001.png"}
    again = generate_images(_request(n=1, width=64), pipelines, backend)
    assert again.artifacts["image-000.png"] == output.artifacts["image-000.png"]
    assert not np.array_equal(_pixels(output, "image-000.png"), _pixels(output, "image-001.png"))


def test_depth_reaches_the_controlnet(pipelines: Any, backend: InProcessBackend) -> None:
    rng = np.random.default_rng(0)
    depth_a = rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    depth_b = np.ascontiguousarray(depth_a[::-1])
    seen: list[Any] = []

    def spy(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.append(kwargs["controlnet_cond"].detach().clone())

    hook = pipelines.controlnet.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        first = generate_images(
            _request(guidance={"depth_png": _png_b64(depth_a)}), pipelines, backend
        )
    finally:
        hook.remove()
    assert len(seen) == 2  # once per step
    # (2, 3, H, W): classifier-free guidance's two halves, the grey depth on every channel.
    cond = seen[0].numpy()
    assert cond.shape == (2, 3, SIZE, SIZE)
    np.testing.assert_allclose(cond[1, 0], depth_a / 255.0, atol=1e-6)
    np.testing.assert_allclose(cond[0, 2], depth_a / 255.0, atol=1e-6)
    image = first.result.images[0]
    assert image.conditioning == "depth" and image.first_pass_image is None
    assert np.array_equal(_pixels(first, "depth-000.png"), depth_a)

    same = generate_images(_request(guidance={"depth_png": _png_b64(depth_a)}), pipelines, backend)
    other = generate_images(_request(guidance={"depth_png": _png_b64(depth_b)}), pipelines, backend)
    assert same.artifacts["image-000.png"] == first.artifacts["image-000.png"]
    assert not np.array_equal(_pixels(first, "image-000.png"), _pixels(other, "image-000.png"))


def test_pose_guidance_renders_a_body(pipelines: Any, backend: InProcessBackend) -> None:
    standing = [[0.0, 0.0, 0.0]] * 21
    output = generate_images(
        _request(width=64, height=64, guidance={"pose": {"body_pose": standing}}),
        pipelines,
        backend,
    )
    image = output.result.images[0]
    assert image.conditioning == "pose" and image.conditioning_depth == "depth-000.png"
    depth = _pixels(output, "depth-000.png")
    assert depth.shape == (64, 64) and depth.max() == 255
    rows, cols = np.nonzero(depth)
    # Upright, framed to fill the image: taller than wide (arms out: nearly as wide), centred.
    assert rows.max() - rows.min() >= 0.7 * 64
    assert abs(cols.mean() - 31.5) < 4
    # global_orient is absolute, in the camera frame: zero is SMPL-X's canonical body (y up)
    # seen by an OpenCV camera (y down), upside down, so its outstretched arms (the widest
    # row) move from the upper half of the image to the lower half.
    flipped = generate_images(
        _request(
            width=64,
            height=64,
            guidance={"pose": {"body_pose": standing, "global_orient": [0.0, 0.0, 0.0]}},
        ),
        pipelines,
        backend,
    )
    upside_down = _pixels(flipped, "depth-000.png")
    assert int(np.argmax((depth > 0).sum(axis=1))) < 32
    assert int(np.argmax((upside_down > 0).sum(axis=1))) > 32


def test_depth_to_control_is_inverse_depth() -> None:
    depth = np.array([[0.0, 2.0], [4.0, 3.0]], np.float32)
    control = depth_to_control(depth)
    assert control[0, 0] == 0 and control[0, 1] == 255 and control[1, 0] == 64
    assert 64 < control[1, 1] < 255


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"width": 50}, "multiple of 8"),
        ({"height": 2048}, "less than or equal to 1024"),
        ({"n": 9}, "BODYSERVE_MAX_GENERATED_IMAGES"),
        ({"prompt": "   "}, "prompt must not be blank"),
        ({"prompt": "x" * 501}, "at most 500 characters"),
        ({"steps": 0}, "greater than or equal to 1"),
        ({"guidance_scale": 31}, "less than or equal to 30"),
        ({"guidance": {}}, "exactly one of 'pose' and 'depth_png'"),
        ({"guidance": {"depth_png": "bm90IGEgcG5n"}}, "must be a PNG"),
        ({"guidance": {"pose": {"body_pose": [[0.0, 0.0, 0.0]] * 20}}}, "body_pose"),
    ],
)
def test_bad_requests_say_what_to_fix(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _request(**overrides)
