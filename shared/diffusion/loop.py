"""Diffusion-HPC's loop: generate, recover the body, render its depth, regenerate with it.

Per image i (seed ``seed + i`` for every pass, so a request is reproducible):

1. without guidance: Stable Diffusion draws an image from the prompt; mesh recovery (the
   worker's backend: detection + fitting) finds its bodies; their depth, rendered with the
   recovered camera, drives the depth ControlNet for a second pass from the same seed, which
   keeps the scene but fixes the anatomy (``refine``; no body found: the first image stays);
2. with guidance (a pose, rendered as an Anny body's depth, or a depth map): the depth
   ControlNet draws the image at once;
3. mesh recovery on the final image gives its labels: SMPL-X-convention bodies, or a reason.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, cast

import numpy as np
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from shared.bodies.anny_model import get_anny
from shared.camera import default_camera
from shared.diffusion.pipelines import DiffusionPipelines
from shared.inference.contracts import InferenceBackend
from shared.pipeline.mesh_recovery import RecoveryOutput, recover
from shared.render.anny_scene import place_in_view, pose_anny
from shared.render.renderer import render_layers
from shared.schemas.images import (
    GeneratedImage,
    ImageGenerateRequest,
    ImageGenerateResult,
    decode_depth_png,
    depth_name,
    first_pass_name,
    image_name,
)
from shared.schemas.mesh_recovery import MeshRecoveryOptions

ProgressCallback = Callable[[float, str], None]
Conditioning = Literal["none", "pose", "depth", "recovered_body"]
# The nearest surface is white, the farthest body point this grey, background black: the
# MiDaS-style inverse depth the depth ControlNets were trained on.
FAR_GREY = 0.25
# SMPL-X's canonical body (y up, facing +z) seen by an OpenCV camera (y down, z forward) is
# upright and facing the camera after this turn: global_orient = [pi, 0, 0].
_UPRIGHT_FACING_CAMERA = np.diag([1.0, -1.0, -1.0])
# An average adult Anny (every phenotype value in the middle of its range).
_AVERAGE_PHENOTYPE = np.full((1, 6), 0.5, np.float32)


@dataclass
class GenerationOutput:
    result: ImageGenerateResult
    artifacts: dict[str, bytes] = field(default_factory=dict)


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def depth_to_control(depth_m: np.ndarray) -> np.ndarray:
    """(H, W) metric depth (0: background) -> (H, W) uint8 ControlNet depth: inverse depth
    scaled so the nearest point is 255 and the farthest ``FAR_GREY`` of it."""
    out = np.zeros(depth_m.shape, np.float32)
    surface = depth_m > 0
    if surface.any():
        inverse = 1.0 / depth_m[surface]
        low, high = float(inverse.min()), float(inverse.max())
        scaled = (inverse - low) / (high - low) if high > low else np.ones_like(inverse)
        out[surface] = FAR_GREY + (1.0 - FAR_GREY) * scaled
    return np.asarray(np.rint(out * 255.0), np.uint8)


def _rotation(axis_angle: list[float]) -> np.ndarray:

    matrix = Rotation.from_rotvec(np.asarray(axis_angle, np.float64)).as_matrix()
    return cast(np.ndarray, matrix)  # (3, 3) float64; scipy has no type stubs here


def pose_depth(request: ImageGenerateRequest) -> np.ndarray:
    """The request's guidance pose as an average Anny body filling the image: its (H, W) uint8
    ControlNet depth."""

    assert request.guidance is not None and request.guidance.pose is not None
    pose = request.guidance.pose
    rotation = None
    if pose.global_orient is not None:
        # pose_anny's bodies are upright and facing the camera; global_orient is absolute.
        rotation = (_rotation(pose.global_orient) @ _UPRIGHT_FACING_CAMERA.T)[None]
    vertices = pose_anny(np.asarray(pose.body_pose, np.float32)[None], _AVERAGE_PHENOTYPE, rotation)
    fx, fy, cx, cy = (float(v) for v in default_camera(request.width, request.height, None))
    camera = (fx, fy, cx, cy)
    vertices = vertices + place_in_view(
        vertices[0], camera, height=request.height, width=request.width
    )
    layers = render_layers(
        [(vertices[0], get_anny().faces)], camera, height=request.height, width=request.width
    )
    return depth_to_control(layers.depth)


def user_depth(request: ImageGenerateRequest) -> np.ndarray:
    """The request's depth PNG as (H, W) uint8 at the request's size (16-bit maps scaled)."""
    assert request.guidance is not None and request.guidance.depth_png is not None
    with Image.open(io.BytesIO(decode_depth_png(request.guidance.depth_png))) as image:
        grey = np.asarray(image.convert("I") if image.mode.startswith("I") else image.convert("L"))
    if grey.dtype != np.uint8:
        grey = np.rint(grey.astype(np.float64) * 255.0 / max(float(grey.max()), 1.0))
    resized = Image.fromarray(grey.astype(np.uint8)).resize(
        (request.width, request.height), Image.Resampling.BILINEAR
    )
    return np.asarray(resized)


def recovered_depth(recovery: RecoveryOutput, height: int, width: int) -> np.ndarray:
    """The recovered bodies' depth, seen through the camera recovery used: (H, W) uint8."""

    assert recovery.fit is not None
    faces = get_anny().faces
    camera = recovery.result.camera
    layers = render_layers(
        [(v, faces) for v in recovery.fit.vertices],
        (camera.fx, camera.fy, camera.cx, camera.cy),
        height=height,
        width=width,
    )
    return depth_to_control(layers.depth)


class Generator:
    """Runs the two pipelines for one request (seeded per image)."""

    def __init__(self, pipelines: DiffusionPipelines, request: ImageGenerateRequest) -> None:
        self.pipelines, self.request = pipelines, request

    def _common(self, seed: int) -> dict[str, object]:

        request = self.request
        return {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "height": request.height,
            "width": request.width,
            "num_inference_steps": request.steps,
            "guidance_scale": request.guidance_scale,
            # A CPU generator: the same seed draws the same latents on any device.
            "generator": torch.Generator(device="cpu").manual_seed(seed),
            "output_type": "np",
        }

    @staticmethod
    def _uint8(images: np.ndarray) -> np.ndarray:
        return np.asarray(np.rint(np.clip(images[0], 0.0, 1.0) * 255.0), np.uint8)

    def text(self, seed: int) -> np.ndarray:
        return self._uint8(self.pipelines.text_to_image(**self._common(seed)).images)

    def depth(self, seed: int, depth: np.ndarray) -> np.ndarray:
        control = Image.fromarray(np.repeat(depth[..., None], 3, axis=2))
        images = self.pipelines.depth_to_image(
            **self._common(seed),
            image=control,
            controlnet_conditioning_scale=self.request.controlnet_scale,
        ).images
        return self._uint8(images)


@contextmanager
def _stopwatch(timings: dict[str, float], key: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + (time.perf_counter() - started) * 1000.0


def _guidance_depth(request: ImageGenerateRequest) -> tuple[np.ndarray | None, Conditioning]:
    if request.guidance is None:
        return None, "none"
    if request.guidance.pose is not None:
        return pose_depth(request), "pose"
    return user_depth(request), "depth"


def generate_images(
    request: ImageGenerateRequest,
    pipelines: DiffusionPipelines,
    backend: InferenceBackend,
    progress: ProgressCallback | None = None,
) -> GenerationOutput:
    """Run the loop for every image of ``request``; the result and its PNG artifacts."""
    report = progress or (lambda fraction, message: None)
    timings: dict[str, float] = {}
    generator = Generator(pipelines, request)
    options = MeshRecoveryOptions(max_people=request.max_people, outputs=[])
    artifacts: dict[str, bytes] = {}
    images: list[GeneratedImage] = []
    with _stopwatch(timings, "render"):
        guided, guided_kind = _guidance_depth(request)

    for i, seed in enumerate(request.seeds()):

        def say(fraction: float, what: str, i: int = i) -> None:
            report((i + fraction) / request.n, f"image {i + 1}/{request.n}: {what}")

        first: np.ndarray | None = None
        depth, kind, reason = guided, guided_kind, None
        recovery: RecoveryOutput | None = None
        say(0.0, "generating")
        if guided is not None:
            with _stopwatch(timings, "generate"):
                image = generator.depth(seed, guided)
        else:
            with _stopwatch(timings, "generate"):
                image = first = generator.text(seed)
            say(0.4, "recovering bodies")
            with _stopwatch(timings, "recover"):
                recovery = recover(first, options, backend)
            if request.refine and not recovery.result.people:
                reason = "no person was found in the first image: not regenerated"
            elif request.refine:
                with _stopwatch(timings, "render"):
                    depth = recovered_depth(recovery, request.height, request.width)
                kind = "recovered_body"
                say(0.6, "regenerating with the body's depth")
                with _stopwatch(timings, "generate"):
                    image = generator.depth(seed, depth)
        if recovery is None or image is not first:
            say(0.8, "recovering bodies")
            with _stopwatch(timings, "recover"):
                recovery = recover(image, options, backend)
        people = recovery.result.people
        if not people and reason is None:
            reason = recovery.result.reason or "no person was found in the image"

        artifacts[image_name(i)] = png_bytes(image)
        if depth is not None:
            artifacts[depth_name(i)] = png_bytes(depth)
        regenerated = first is not None and image is not first
        if first is not None and regenerated:
            artifacts[first_pass_name(i)] = png_bytes(first)
        images.append(
            GeneratedImage(
                index=i,
                seed=seed,
                image=image_name(i),
                conditioning=kind,
                conditioning_depth=depth_name(i) if depth is not None else None,
                first_pass_image=first_pass_name(i) if regenerated else None,
                camera=recovery.result.camera,
                people=people,
                reason=reason,
            )
        )
    report(1.0, f"{request.n} images generated")
    result = ImageGenerateResult(
        prompt=request.prompt,
        width=request.width,
        height=request.height,
        steps=request.steps,
        guidance_scale=request.guidance_scale,
        device=pipelines.device,
        images=images,
        artifacts=dict.fromkeys(artifacts, "image/png"),
        timings_ms={k: round(v, 1) for k, v in timings.items()},
    )
    return GenerationOutput(result, artifacts)


def depth_painter(
    pipelines: DiffusionPipelines, prompt: str, size: int, steps: int = 30
) -> Callable[[np.ndarray, int], np.ndarray]:
    """A synthetic dataset's painter (``generator: diffusion``): ``(depth in metres, seed) ->``
    a ``size``-pixel RGB image of ``prompt`` that follows the body's depth (the depth
    ControlNet, as Diffusion-HPC's second pass)."""
    generator = Generator(
        pipelines, ImageGenerateRequest(prompt=prompt, width=size, height=size, steps=steps)
    )

    def paint(depth_m: np.ndarray, seed: int) -> np.ndarray:
        return generator.depth(seed, depth_to_control(depth_m))

    return paint
