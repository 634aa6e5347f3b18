"""Stable Diffusion and its depth ControlNet, loaded from a local folder (never downloaded).

The folder (``BODYSERVE_DIFFUSION_MODEL_DIR``) holds diffusers ``save_pretrained`` folders::

    <dir>/stable-diffusion/     a StableDiffusionPipeline (model_index.json, unet/, vae/,
                                text_encoder/, tokenizer/, scheduler/), e.g. SD 1.5
    <dir>/controlnet-depth/     a ControlNetModel for depth maps trained for that SD
                                (config.json + weights), e.g. control_v11f1p_sd15_depth

:func:`check_model_dir` says what is missing without importing diffusers (the gateway calls
it); :func:`load_pipelines` loads both once per process (float32 on CPU, float16 on CUDA).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

STABLE_DIFFUSION_DIR = "stable-diffusion"
CONTROLNET_DEPTH_DIR = "controlnet-depth"
SETTING = "BODYSERVE_DIFFUSION_MODEL_DIR"
# The files without which each piece cannot load (weights: any of these names).
_REQUIRED: dict[str, tuple[str, ...]] = {
    STABLE_DIFFUSION_DIR: (
        "model_index.json",
        "unet/config.json",
        "vae/config.json",
        "text_encoder/config.json",
        "tokenizer/tokenizer_config.json",
        "scheduler/scheduler_config.json",
    ),
    CONTROLNET_DEPTH_DIR: ("config.json",),
}
_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
)


class DiffusionUnavailable(RuntimeError):
    """No weights are configured, or the configured folder lacks a piece (the message says
    which, and the setting to change)."""


def offline() -> None:
    """Forbid the Hugging Face libraries any network access (set before they are imported)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def check_model_dir(model_dir: Path | None) -> Path:
    """The folder, checked: :class:`DiffusionUnavailable` naming what is missing."""
    if model_dir is None:
        raise DiffusionUnavailable(
            f"image generation needs Stable Diffusion and depth ControlNet weights in a local "
            f"folder: set {SETTING} (none is configured here; see the README's "
            f"'Image generation (Diffusion-HPC)' for the layout)"
        )
    root = Path(model_dir)
    if not root.is_dir():
        raise DiffusionUnavailable(f"{SETTING}={root} is not a folder")
    for piece, files in _REQUIRED.items():
        folder = root / piece
        if not folder.is_dir():
            raise DiffusionUnavailable(
                f"{SETTING}={root} has no '{piece}/' folder (diffusers layout, "
                f"save_pretrained); see the README's 'Image generation (Diffusion-HPC)'"
            )
        missing = [name for name in files if not (folder / name).is_file()]
        weights = [folder] if piece == CONTROLNET_DEPTH_DIR else [folder / "unet", folder / "vae"]
        missing += [
            f"{w.relative_to(folder)}/{_WEIGHTS[0]}" if w != folder else _WEIGHTS[0]
            for w in weights
            if not any((w / name).is_file() for name in _WEIGHTS)
        ]
        if missing:
            raise DiffusionUnavailable(
                f"{SETTING}={root}: '{piece}/' is incomplete, missing {', '.join(missing)}"
            )
    return root


@dataclass(frozen=True)
class DiffusionPipelines:
    """Text-to-image, and the same components with the depth ControlNet."""

    text_to_image: Any  # diffusers.StableDiffusionPipeline
    depth_to_image: Any  # diffusers.StableDiffusionControlNetPipeline
    device: str
    model_dir: Path

    @property
    def controlnet(self) -> Any:
        return self.depth_to_image.controlnet


def pick_device() -> str:
    # diffusers (an optional extra) and torch load only with a pipeline: the gateway imports this
    # module.
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@lru_cache(maxsize=2)
def load_pipelines(model_dir: Path | None, device: str | None = None) -> DiffusionPipelines:
    """Both pipelines from ``model_dir`` (checked first: :class:`DiffusionUnavailable`), once
    per process and folder."""
    root = check_model_dir(model_dir)
    offline()
    # diffusers (an optional extra) and torch load only with a pipeline: the gateway imports this
    # module.
    import torch
    from diffusers import (
        ControlNetModel,
        StableDiffusionControlNetPipeline,
        StableDiffusionPipeline,
    )

    device = device or pick_device()
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    # The ignores: for type checkers diffusers' lazy top-level names resolve to its untyped
    # placeholder classes (utils/dummy_*_objects.py), not to the real ones.
    text_to_image: Any = StableDiffusionPipeline.from_pretrained(  # type: ignore[no-untyped-call]
        root / STABLE_DIFFUSION_DIR,
        dtype=dtype,
        local_files_only=True,
        safety_checker=None,
        requires_safety_checker=False,
    )
    controlnet = ControlNetModel.from_pretrained(  # type: ignore[no-untyped-call]
        root / CONTROLNET_DEPTH_DIR, dtype=dtype, local_files_only=True
    )
    # One copy of the weights: the ControlNet pipeline reuses the text-to-image components.
    components = {k: v for k, v in text_to_image.components.items() if k not in ("image_encoder",)}
    depth_to_image: Any = StableDiffusionControlNetPipeline(  # type: ignore[no-untyped-call]
        **components, controlnet=controlnet
    )
    text_to_image.to(device)
    depth_to_image.to(device)
    for pipeline in (text_to_image, depth_to_image):
        pipeline.set_progress_bar_config(disable=True)
    return DiffusionPipelines(text_to_image, depth_to_image, device, root)
