"""Tiny Stable Diffusion + depth ControlNet pipelines with random weights, built from configs.

For tests and smoke runs without real weights: :func:`build_tiny_pipelines` writes a folder
in the layout :mod:`shared.diffusion.pipelines` loads (a few hundred KB, offline: the CLIP
tokenizer's vocabulary is written here). The images are noise, but every step of the real
diffusers path runs: tokenizer, text encoder, UNet, ControlNet, scheduler, VAE.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from shared.diffusion.pipelines import CONTROLNET_DEPTH_DIR, STABLE_DIFFUSION_DIR, offline

# A byte-level BPE vocabulary just big enough for ASCII prompts: every printable character,
# alone and as a word end ("</w>"), plus CLIP's start and end tokens.
_SPECIAL = ["<|startoftext|>", "<|endoftext|>"]


def _byte_characters() -> list[str]:
    """GPT-2's byte-to-character table (CLIP's too): the character each byte is spelled as."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    shifted = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(shifted)) for b in range(256)]


def _write_tokenizer(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_characters()
    tokens = chars + [c + "</w>" for c in chars] + _SPECIAL
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def build_tiny_pipelines(folder: Path, *, sample_size: int = 32, seed: int = 0) -> Path:
    """Write ``stable-diffusion/`` and ``controlnet-depth/`` with random weights under
    ``folder`` (``seed`` draws them); returns ``folder``. Images of ``8 * sample_size`` /
    ``sample_size`` ... any multiple of 8 work; 32-64 px keeps a test fast."""
    offline()
    # diffusers and transformers: the optional diffusion extra, loaded only to build a pipeline.
    import torch
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as scratch:
        _write_tokenizer(Path(scratch))
        tokenizer = CLIPTokenizer(
            str(Path(scratch) / "vocab.json"),
            str(Path(scratch) / "merges.txt"),
            model_max_length=32,
        )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=32,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    # The ignores: for type checkers diffusers' lazy top-level names resolve to its untyped
    # placeholder classes (utils/dummy_*_objects.py), not to the real ones.
    unet = UNet2DConditionModel(  # type: ignore[no-untyped-call]
        sample_size=sample_size // 8,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=2,
    )
    vae = AutoencoderKL(  # type: ignore[no-untyped-call]
        block_out_channels=(8, 16),
        norm_num_groups=4,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=sample_size,
    )
    scheduler = DDIMScheduler(  # type: ignore[no-untyped-call]
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipeline: Any = StableDiffusionPipeline(  # type: ignore[no-untyped-call]
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder / STABLE_DIFFUSION_DIR)
    # The ControlNet copies the UNet's encoder (as ControlNet training starts); its zero
    # convolutions are drawn at random too, or the depth would not change the image at all.
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16))
    zero_convolutions = [
        controlnet.controlnet_cond_embedding.conv_out,
        *controlnet.controlnet_down_blocks,
        controlnet.controlnet_mid_block,
    ]
    with torch.no_grad():
        for block in zero_convolutions:
            for parameter in block.parameters():
                parameter.normal_(0.0, 0.2)
    controlnet.save_pretrained(folder / CONTROLNET_DEPTH_DIR)
    return folder
