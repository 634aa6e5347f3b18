"""Sampling with the pose prior: generation, pose completion, diffusion denoising, and the
DPoser-style regulariser for optimisation.

Reverse steps ``t -> s`` are DPM-Solver++ steps (Lu et al. 2022) on the SDE's ``(alpha, sigma)``
family, with the prior's clean-pose prediction ``x0_hat = E[x_0 | x_t]``, the
log-SNR step ``h = lambda_s - lambda_t`` (``lambda = log(alpha / sigma)``) and

    x_s = sigma_s / sigma_t e^{-eta h} x_t + alpha_s (1 - e^{-(1 + eta) h}) D
          + sigma_s sqrt(1 - e^{-2 eta h}) z.

``eta = 0`` (the ``"ode"`` sampler) integrates the probability-flow ODE, ``eta = 1`` (``"sde"``)
the reverse SDE; with ``D = x0_hat`` the latter is exactly ancestral sampling from
``q(x_s | x_t, x0_hat)``. Both are second order (2M): ``D`` extrapolates ``x0_hat`` linearly in
log-SNR from the previous step, at no extra network evaluation; this also repairs most of the
variance that first-order ancestral sampling loses with few steps. Times are spaced quadratically
(dense near t = 0, where the pose detail is decided); the last step lands on ``t = 0`` and returns
``x0_hat``.

**Determinism**: each row's random draws come from its own ``torch.Generator`` seeded with
``seeds[r]``, all drawn up front in a fixed order (:func:`row_noise`; draw 0 gives ``x_1``), so a
row's result does not depend on the other rows of the batch. Everything runs under
``torch.no_grad()`` in float32 and never touches the global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from shared.prior.model import BODY_JOINTS, POSE_DIM, PosePrior

Sampler = Literal["ode", "sde"]
CompletionMethod = Literal["replace", "repaint"]

_SAMPLER_ETA: dict[str, float] = {"ode": 0.0, "sde": 1.0}


# --------------------------------------------------------------------------- helpers


def _seed_list(seeds: Sequence[int] | np.ndarray, rows: int | None = None) -> list[int]:
    seed_list = [int(s) for s in np.asarray(seeds).reshape(-1)]
    if rows is not None and len(seed_list) != rows:
        raise ValueError(f"need one seed per pose: got {len(seed_list)} seeds for {rows} poses")
    if not seed_list:
        raise ValueError("seeds is empty: give one integer seed per sample")
    if any(s < 0 or s >= 2**63 for s in seed_list):
        raise ValueError("seeds must be integers in [0, 2**63)")
    return seed_list


def row_noise(seeds: Sequence[int], draws: int) -> Tensor:
    """Standard normal draws for every row: (B, draws, 63), row r from a generator seeded with
    ``seeds[r]`` (``torch.randn((draws, 63), generator=...)``), on the CPU."""
    noise = torch.empty((len(seeds), draws, POSE_DIM), dtype=torch.float32)
    for row, seed in enumerate(seeds):
        generator = torch.Generator().manual_seed(seed)
        noise[row] = torch.randn((draws, POSE_DIM), generator=generator)
    return noise


def time_grid(prior: PosePrior, steps: int, t_start: float = 1.0) -> Tensor:
    """The ``steps`` times (steps,) at which the network is evaluated, from ``t_start`` down to
    the prior's ``t_eps``, spaced quadratically; the final step goes on to ``t = 0``."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    t_eps = prior.config.t_eps
    if not t_eps < t_start <= 1.0:
        raise ValueError(f"the start time must be in ({t_eps}, 1], got {t_start}")
    if steps == 1:
        return torch.tensor([t_start], dtype=torch.float32)
    fraction = torch.linspace(1.0, 0.0, steps, dtype=torch.float64) ** 2
    return (t_eps + (t_start - t_eps) * fraction).float()


@contextmanager
def _inference(prior: PosePrior) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd for the duration; restores the prior's mode."""
    was_training = prior.training
    prior.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        prior.train(was_training)


def _as_body_pose(body_pose: np.ndarray | Tensor, name: str = "body_pose") -> Tensor:
    array = torch.as_tensor(np.asarray(body_pose, dtype=np.float32))
    if array.ndim != 3 or tuple(array.shape[1:]) != (BODY_JOINTS, 3):
        raise ValueError(
            f"{name} must have shape (B, {BODY_JOINTS}, 3) (SMPL-X body_pose, axis-angle), got "
            f"{tuple(array.shape)}"
        )
    if not torch.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return array


class Stepper:
    """Reverse steps ``t -> s`` of a prior, for a batch."""

    def __init__(self, prior: PosePrior) -> None:
        self.prior = prior
        self.device = prior.mean.device

    def marginal(self, t: float) -> tuple[float, float]:
        """``(alpha_t, sigma_t)`` at a scalar time, computed in float64."""
        return self.prior.sde.marginal_at(t)

    def denoise(self, x: Tensor, t: float) -> Tensor:
        """(B, 63) at time t -> clean-pose prediction x0_hat (B, 63)."""
        return self.prior.denoise_at(x, t)

    def log_snr_step(self, t: float, s: float) -> float:
        (alpha_t, sigma_t), (alpha_s, sigma_s) = self.marginal(t), self.marginal(s)
        return math.log(alpha_s / sigma_s) - math.log(alpha_t / sigma_t)

    def step(
        self, x: Tensor, prediction: Tensor, t: float, s: float, eta: float, z: Tensor
    ) -> Tensor:
        """DPM-Solver++ step from x (B, 63) at t to s in (0, t) with clean-pose prediction D."""
        (_, sigma_t), (alpha_s, sigma_s) = self.marginal(t), self.marginal(s)
        h = self.log_snr_step(t, s)
        x_s = (sigma_s / sigma_t * math.exp(-eta * h)) * x
        x_s = x_s - (alpha_s * math.expm1(-(1.0 + eta) * h)) * prediction
        if eta > 0.0:
            x_s = x_s + (sigma_s * math.sqrt(-math.expm1(-2.0 * eta * h))) * z
        return x_s

    def forward_diffuse(self, x_s: Tensor, s: float, t: float, z: Tensor) -> Tensor:
        """Forward transition ``x_s -> x_t`` (t > s) with noise z (B, 63)."""
        (alpha_t, sigma_t), (alpha_s, sigma_s) = self.marginal(t), self.marginal(s)
        ratio = alpha_t / alpha_s
        return ratio * x_s + math.sqrt(max(sigma_t**2 - ratio**2 * sigma_s**2, 0.0)) * z


def _check_sampler(sampler: str) -> float:
    if sampler not in _SAMPLER_ETA:
        raise ValueError(f"unknown sampler {sampler!r}: use 'ode' or 'sde'")
    return _SAMPLER_ETA[sampler]


def _reverse(stepper: Stepper, x: Tensor, times: Tensor, eta: float, noise: Tensor) -> Tensor:
    """DPM-Solver++(2M) from x (B, 63) at ``times[0]`` through ``times`` and on to t = 0;
    ``noise`` (B, steps, 63) holds one draw per step."""
    grid = [*times.tolist(), 0.0]
    previous: tuple[Tensor, float] | None = None  # x0_hat and log-SNR step of the last step
    for i in range(len(grid) - 1):
        t, s = grid[i], grid[i + 1]
        x0_hat = stepper.denoise(x, t)
        if s <= 0.0:
            return x0_hat
        h = stepper.log_snr_step(t, s)
        prediction = x0_hat
        if previous is not None:  # linear extrapolation of x0_hat in log-SNR over the step
            previous_x0, previous_h = previous
            prediction = x0_hat + (h / (2.0 * previous_h)) * (x0_hat - previous_x0)
        previous = (x0_hat, h)
        x = stepper.step(x, prediction, t, s, eta, noise[:, i])
    return x


# --------------------------------------------------------------------------- generation


def generate(
    prior: PosePrior,
    seeds: Sequence[int] | np.ndarray,
    steps: int = 50,
    sampler: Sampler = "ode",
) -> np.ndarray:
    """Samples one body pose per seed: -> (B, 21, 3) float32 axis-angle (SMPL-X body_pose).

    ``sampler``: ``"ode"`` (deterministic probability-flow ODE) or ``"sde"`` (ancestral).
    """
    seed_list = _seed_list(seeds)
    eta = _check_sampler(sampler)
    times = time_grid(prior, steps)
    with _inference(prior):
        stepper = Stepper(prior)
        noise = row_noise(seed_list, steps + 1).to(stepper.device)
        x = noise[:, 0] * prior.sde.prior_std()
        x = _reverse(stepper, x, times, eta, noise[:, 1:])
        return prior.denormalise(x).cpu().numpy().astype(np.float32)


# --------------------------------------------------------------------------- completion


def complete(
    prior: PosePrior,
    body_pose: np.ndarray,
    known: np.ndarray,
    seeds: Sequence[int] | np.ndarray,
    steps: int = 50,
    *,
    method: CompletionMethod = "replace",
    resample: int = 2,
    sampler: Sampler = "sde",
    temperature: float = 0.4,
) -> np.ndarray:
    """Fills in the unknown joints of each pose: (B, 21, 3), (B, 21) bool -> (B, 21, 3).

    Known joints are returned unchanged; each row is one hypothesis drawn with its own seed (repeat
    rows with different seeds for several hypotheses). Methods:

    - ``"replace"``: ScoreSDE inpainting; after every reverse step the known dims are replaced by
      the observation diffused to that time with the row's own noise.
    - ``"repaint"``: replacement plus RePaint resampling: each step is redone ``resample`` times,
      going back up by the forward transition in between, so the unknown dims agree with the
      known ones (``resample`` times the network evaluations).

    ``temperature`` scales all of the sampler's noise (the start ``x_1``, every step's draw and
    the diffused observation, so the network sees one noise level in every dim): below 1 the
    hypotheses gather closer to the likeliest completions, trading a little of the best
    hypothesis' error for a lower mean error. The defaults (replacement, ancestral sampler,
    temperature 0.4) were chosen on held-out mocap subjects (the validation split, which
    ``bench/prior.py`` also reports on) with a hidden left leg or arm, 10 hypotheses each: there
    the best and the mean hypothesis both beat nearest-neighbour and mean-pose completion; at 0.6
    the best hypothesis is about 2 mm better and the mean about 1 mm worse, at 0.3 the reverse.
    Leaving the observation at full noise cost 1-2 mm on a hidden leg; RePaint cost twice as
    much and was no better; reconstruction guidance (Ho et al. 2022) made every figure worse.
    """
    pose = _as_body_pose(body_pose)
    known_array = np.array(known)  # a writable copy (torch.as_tensor shares its memory)
    if known_array.shape != (pose.shape[0], BODY_JOINTS) or known_array.dtype != np.bool_:
        raise ValueError(
            f"known must be a bool array of shape ({pose.shape[0]}, {BODY_JOINTS}): True where "
            f"the joint is given, got {known_array.dtype} {known_array.shape}"
        )
    if method not in ("replace", "repaint"):
        raise ValueError(f"unknown completion method {method!r}: use 'replace' or 'repaint'")
    if resample < 1:
        raise ValueError(f"resample must be at least 1, got {resample}")
    if not 0.0 < temperature <= 2.0:
        raise ValueError(f"temperature must be in (0, 2], got {temperature}")
    seed_list = _seed_list(seeds, rows=pose.shape[0])
    eta = _check_sampler(sampler)
    times = time_grid(prior, steps)
    rounds = resample if method == "repaint" else 1
    with _inference(prior):
        stepper = Stepper(prior)
        device = stepper.device
        mask = torch.as_tensor(np.repeat(known_array, 3, axis=1), device=device)  # (B, 63)
        y = prior.normalise(pose.to(device))
        # Per row: x_1, then per step and round: the step's noise, the observation's noise, and
        # the noise that takes the sample back up for the next round.
        noise = row_noise(seed_list, 1 + 3 * steps * rounds).to(device)
        cursor = iter(range(1, noise.shape[1]))

        def draw() -> Tensor:
            return noise[:, next(cursor)]

        grid = [*times.tolist(), 0.0]
        x = noise[:, 0] * (prior.sde.prior_std() * temperature)
        for i in range(len(grid) - 1):
            t, s = grid[i], grid[i + 1]
            # Resampling only between noisy times: the final step to t = 0 runs once.
            rounds_here = rounds if s > 0.0 else 1
            for r in range(rounds_here):
                x0_hat = stepper.denoise(x, t)
                z_step, z_obs, z_up = draw(), draw(), draw()
                if s <= 0.0:
                    x = torch.where(mask, y, x0_hat)
                    break
                x_s = stepper.step(x, x0_hat, t, s, eta, z_step * temperature)
                # The observation at time s, diffused with this row's own noise at the same
                # temperature as the rest of the sample: the network sees one noise level.
                alpha_s, sigma_s = stepper.marginal(s)
                x_s = torch.where(mask, alpha_s * y + (sigma_s * temperature) * z_obs, x_s)
                # Between rounds, back up to time t for another try at this step.
                x = (
                    stepper.forward_diffuse(x_s, s, t, z_up * temperature)
                    if r + 1 < rounds_here
                    else x_s
                )
        completed = prior.denormalise(x).cpu()
    out = torch.where(torch.as_tensor(known_array)[:, :, None], pose, completed)
    return out.numpy().astype(np.float32)


# --------------------------------------------------------------------------- denoising


def denoise_poses(
    prior: PosePrior,
    body_pose: np.ndarray,
    noise_level: float,
    seeds: Sequence[int] | np.ndarray,
    steps: int = 25,
    *,
    sampler: Sampler = "ode",
) -> np.ndarray:
    """Diffusion purification (SDEdit): diffuses each pose to ``t = noise_level`` in (0, 1] with
    its row's seed, then runs the reverse steps back to 0: (B, 21, 3) -> (B, 21, 3).

    Small ``noise_level`` (0.05-0.2) removes jitter and keeps the pose; 1 forgets the input.
    """
    pose = _as_body_pose(body_pose)
    if not prior.config.t_eps < noise_level <= 1.0:
        raise ValueError(f"noise_level must be in ({prior.config.t_eps}, 1], got {noise_level}")
    seed_list = _seed_list(seeds, rows=pose.shape[0])
    eta = _check_sampler(sampler)
    times = time_grid(prior, steps, t_start=noise_level)
    with _inference(prior):
        stepper = Stepper(prior)
        noise = row_noise(seed_list, steps + 1).to(stepper.device)
        x0 = prior.normalise(pose.to(stepper.device))
        alpha, sigma = stepper.marginal(noise_level)
        x = alpha * x0 + sigma * noise[:, 0]
        x = _reverse(stepper, x, times, eta, noise[:, 1:])
        return prior.denormalise(x).cpu().numpy().astype(np.float32)


# --------------------------------------------------------------------------- regulariser


class PriorLoss:
    """DPoser's regulariser for optimisation over body pose (fitting, motion denoising).

    For a pose x (normalised), draw t in the annealed range, perturb ``x_t = alpha x + sigma z``,
    denoise in one step with the network (``x0_hat``, no gradient) and penalise
    ``w(t) * mean_d (x - x0_hat)^2``: the gradient pulls x towards what the prior would denoise it
    to. ``t`` is truncated: early in the optimisation (``progress`` 0) it is drawn from
    ``[t_end, t_start]``, and the upper end anneals linearly to ``t_end`` at ``progress`` 1, so the
    prior first corrects coarsely, then only fine detail.

    ``weight_by``: ``"snr"`` (DPoser's weighted loss, ``w = alpha / sigma``) or ``"none"``.
    """

    def __init__(
        self,
        prior: PosePrior,
        t_range: tuple[float, float] = (0.3, 0.05),
        weight_by: Literal["snr", "none"] = "snr",
    ) -> None:
        t_start, t_end = (float(t) for t in t_range)
        if not prior.config.t_eps <= t_end <= t_start <= 1.0:
            raise ValueError(
                f"t_range must be (t_start, t_end) with {prior.config.t_eps} <= t_end <= t_start "
                f"<= 1, got {t_range}"
            )
        if weight_by not in ("snr", "none"):
            raise ValueError(f"unknown weight_by {weight_by!r}: use 'snr' or 'none'")
        self.prior = prior.eval()  # no dropout: the regulariser is the published network
        self.t_start, self.t_end = t_start, t_end
        self.weight_by = weight_by

    def t_bounds(self, progress: float) -> tuple[float, float]:
        """The range ``(low, high)`` that t is drawn from at ``progress`` in [0, 1]."""
        if not 0.0 <= progress <= 1.0:
            raise ValueError(f"progress must be in [0, 1], got {progress}")
        return self.t_end, self.t_start + (self.t_end - self.t_start) * progress

    def __call__(
        self, body_pose: Tensor, progress: float, generator: torch.Generator | None = None
    ) -> Tensor:
        """(B, 21, 3), differentiable -> (B,) loss. ``generator`` (on the pose's device) makes
        the draws reproducible; without one they come from the global RNG."""
        low, high = self.t_bounds(progress)
        x = self.prior.normalise(body_pose.float())
        rows = x.shape[0]
        u = torch.rand((rows,), generator=generator, device=x.device)
        t = low + (high - low) * u
        z = torch.randn(x.shape, generator=generator, device=x.device)
        alpha, sigma = self.prior.sde.marginal(t)
        with torch.no_grad():
            x0_hat = self.prior.denoise(alpha[:, None] * x + sigma[:, None] * z, t)
        loss = (x - x0_hat).square().mean(dim=1)
        if self.weight_by == "snr":
            loss = loss * (alpha / sigma)
        return loss
