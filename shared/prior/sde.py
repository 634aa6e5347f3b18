"""Continuous-time diffusion SDEs of the pose prior (Song et al. 2021, "Score-Based Generative
Modeling through Stochastic Differential Equations"), as DPoser uses them.

Both SDEs have a linear drift ``f(x, t) = -1/2 beta(t) x`` with ``beta(t) = beta_min + t (beta_max -
beta_min)``, so the perturbation kernel is Gaussian: ``x_t = alpha(t) x_0 + sigma(t) z``,
``z ~ N(0, I)``, with ``alpha(t) = exp(-1/2 int_0^t beta)`` and

- ``"vp"``:    ``sigma(t) = sqrt(1 - alpha(t)^2)``, diffusion ``g(t)^2 = beta(t)``;
- ``"subvp"``: ``sigma(t) = 1 - alpha(t)^2``,       diffusion ``g(t)^2 = beta(t) (1 - alpha(t)^4)``.

Every sampler here works on this ``(alpha, sigma)`` family, which is all a linear SDE's marginals
and transitions need: ``x_t | x_s ~ N(alpha_t/alpha_s x_s, sigma_t^2 - (alpha_t/alpha_s)^2
sigma_s^2)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

SDEKind = Literal["vp", "subvp"]


@dataclass(frozen=True)
class DiffusionSDE:
    """A VP or sub-VP SDE with a linear ``beta(t)`` on ``t in [0, 1]``."""

    kind: SDEKind = "subvp"
    beta_min: float = 0.1
    beta_max: float = 20.0

    def __post_init__(self) -> None:
        if self.kind not in ("vp", "subvp"):
            raise ValueError(f"unknown SDE kind {self.kind!r}: use 'vp' or 'subvp'")
        if not 0 < self.beta_min < self.beta_max:
            raise ValueError(
                f"need 0 < beta_min < beta_max, got beta_min={self.beta_min}, "
                f"beta_max={self.beta_max}"
            )

    def beta(self, t: Tensor) -> Tensor:
        """(B,) -> (B,) noise rate ``beta(t)``."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t: Tensor) -> Tensor:
        """(B,) -> (B,) ``log alpha(t) = -1/2 int_0^t beta(s) ds``."""
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha(self, t: Tensor) -> Tensor:
        """(B,) -> (B,) scale of ``x_0`` in ``x_t``."""
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: Tensor) -> Tensor:
        """(B,) -> (B,) standard deviation of the noise in ``x_t``."""
        # -expm1(2 log a) = 1 - a^2, accurate for small t where a is close to 1.
        one_minus_alpha_sq = -torch.expm1(2.0 * self.log_alpha(t))
        if self.kind == "vp":
            return torch.sqrt(one_minus_alpha_sq)
        return one_minus_alpha_sq

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(B,) -> ``(alpha, sigma)``, each (B,)."""
        return self.alpha(t), self.sigma(t)

    def marginal_at(self, t: float) -> tuple[float, float]:
        """``(alpha, sigma)`` at one time, in float64 Python arithmetic (for samplers' steps)."""
        log_alpha = -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        one_minus_alpha_sq = -math.expm1(2.0 * log_alpha)
        sigma = math.sqrt(one_minus_alpha_sq) if self.kind == "vp" else one_minus_alpha_sq
        return math.exp(log_alpha), sigma

    def marginal_prob(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Perturbation kernel ``p_t(x | x0)``: (B, D), (B,) -> mean (B, D), std (B,)."""
        alpha, sigma = self.marginal(t)
        return alpha[:, None] * x0, sigma

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Forward SDE coefficients: (B, D), (B,) -> drift (B, D), diffusion ``g(t)`` (B,)."""
        beta = self.beta(t)
        drift = -0.5 * beta[:, None] * x
        if self.kind == "vp":
            return drift, torch.sqrt(beta)
        return drift, torch.sqrt(beta * -torch.expm1(4.0 * self.log_alpha(t)))

    def prior_std(self) -> float:
        """Standard deviation of ``x_1`` for data near the origin: where sampling starts."""
        return float(self.sigma(torch.ones(())))
