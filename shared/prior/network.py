"""The score network: a residual MLP over the flattened, normalised body pose (DPoser's
``ScoreModelFC`` in spirit), conditioned on diffusion time.

:class:`shared.prior.model.PosePrior` wraps it with EDM-style scalings, so that its input and
target have unit variance at every diffusion time, and derives the clean-pose prediction, the noise
and the score from its output. Every layer acts on
one row at a time (LayerNorm, no batch statistics), so a row's output does not depend on the rest
of the batch, which the samplers' per-row determinism relies on.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# Diffusion time t in [0, 1] is embedded as t * TIME_SCALE, so that the sinusoid frequencies span
# the same range as for DDPM's integer timesteps.
TIME_SCALE = 1000.0


def embedding_frequencies(dim: int) -> Tensor:
    """The ``dim // 2`` sinusoid frequencies of :func:`timestep_embedding`."""
    half = dim // 2
    return torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32) / half)


def timestep_embedding(t: Tensor, dim: int, frequencies: Tensor | None = None) -> Tensor:
    """Sinusoidal embedding of diffusion time: (B,) in [0, 1] -> (B, dim)."""
    if frequencies is None:
        frequencies = embedding_frequencies(dim).to(t.device)
    angles = (t.float() * TIME_SCALE)[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        embedding = nn.functional.pad(embedding, (0, 1))
    return embedding


class ResidualBlock(nn.Module):
    """Pre-norm residual MLP block whose hidden features are scaled and shifted by time (FiLM)."""

    def __init__(self, hidden: int, embed_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm_in = nn.LayerNorm(hidden)
        self.dense_in = nn.Linear(hidden, hidden)
        self.time_to_scale_shift = nn.Linear(embed_dim, 2 * hidden)
        self.norm_out = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)
        self.dense_out = nn.Linear(hidden, hidden)
        # The block starts as the identity: deep stacks train stably from the first step.
        nn.init.zeros_(self.dense_out.weight)
        nn.init.zeros_(self.dense_out.bias)

    def forward(self, h: Tensor, time_embedding: Tensor) -> Tensor:
        """(B, hidden), (B, embed_dim) -> (B, hidden)."""
        scale, shift = self.time_to_scale_shift(time_embedding).chunk(2, dim=1)
        y: Tensor = self.dense_in(nn.functional.silu(self.norm_in(h)))  # a Module call is Any
        y = self.norm_out(y) * (1.0 + scale) + shift
        y = self.dense_out(self.dropout(nn.functional.silu(y)))
        return h + y


class ScoreModelFC(nn.Module):
    """Score network ``F(x, t)``: (B, dim), (B,) -> (B, dim) (see ``PosePrior.denoise``)."""

    def __init__(
        self, dim: int, hidden: int, blocks: int, embed_dim: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if min(dim, hidden, embed_dim) < 1 or blocks < 0:
            raise ValueError(
                f"network sizes must be positive (dim={dim}, hidden={hidden}, "
                f"embed_dim={embed_dim}, blocks={blocks})"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.embed_dim = embed_dim
        self.frequencies: Tensor
        # Not persistent: derived from embed_dim, so not part of a saved prior.
        self.register_buffer("frequencies", embedding_frequencies(embed_dim), persistent=False)
        self.time_mlp = nn.Sequential(
            nn.Linear(embed_dim, 2 * embed_dim),
            nn.SiLU(),
            nn.Linear(2 * embed_dim, embed_dim),
            nn.SiLU(),
        )
        self.dense_in = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            ResidualBlock(hidden, embed_dim, dropout) for _ in range(blocks)
        )
        self.norm_out = nn.LayerNorm(hidden)
        self.dense_out = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """(B, dim) scaled noisy pose, (B,) time -> (B, dim) scaled correction."""
        time_embedding = self.time_mlp(timestep_embedding(t, self.embed_dim, self.frequencies))
        h = self.dense_in(x)
        for block in self.blocks:
            h = block(h, time_embedding)
        correction: Tensor = self.dense_out(nn.functional.silu(self.norm_out(h)))  # Module: Any
        return correction
