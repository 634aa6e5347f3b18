"""The pose prior: a score network over SMPL-X-convention body pose plus its normalisation.

Pose space is SMPL-X's ``body_pose``: 21 joints x 3 axis-angle (``SMPLX_BODY_JOINTS``), flattened
to 63 dims and normalised per dimension with the training set's mean and standard deviation.
Global orientation is not modelled.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from shared.prior.network import ScoreModelFC
from shared.prior.sde import DiffusionSDE, SDEKind

BODY_JOINTS = 21
POSE_DIM = BODY_JOINTS * 3
PRIOR_FILENAME = "prior.pt"
_FORMAT = "bodyserve.pose_prior"
_FORMAT_VERSION = 1


@dataclass
class PriorConfig:
    """Network size and SDE of a :class:`PosePrior`."""

    # Sized for CPU training and inference (see TrainConfig): 1.45 M parameters.
    hidden: int = 512
    blocks: int = 2
    embed_dim: int = 128
    dropout: float = 0.1
    beta_min: float = 0.1
    beta_max: float = 20.0
    sde: str = "subvp"
    # Smallest diffusion time used in training and sampling: the SDE is singular at t = 0.
    t_eps: float = 1e-3
    # Lower bound of a dimension's normalising std (radians), so that a nearly constant dimension
    # of the training set does not blow up small deviations into huge normalised values.
    std_floor: float = 0.02

    def __post_init__(self) -> None:
        if self.sde not in ("vp", "subvp"):
            raise ValueError(f"PriorConfig.sde must be 'vp' or 'subvp', got {self.sde!r}")
        if not 0.0 < self.t_eps < 0.1:
            raise ValueError(f"PriorConfig.t_eps must be in (0, 0.1), got {self.t_eps}")
        if self.std_floor <= 0:
            raise ValueError(f"PriorConfig.std_floor must be positive, got {self.std_floor}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PriorConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown PriorConfig fields {unknown}; known: {sorted(known)}")
        return cls(**values)


def _check_body_pose(body_pose: Tensor) -> None:
    if body_pose.ndim != 3 or tuple(body_pose.shape[1:]) != (BODY_JOINTS, 3):
        raise ValueError(
            f"body_pose must have shape (B, {BODY_JOINTS}, 3) (SMPL-X body joints, axis-angle), "
            f"got {tuple(body_pose.shape)}"
        )


class PosePrior(nn.Module):
    """Score-based diffusion prior over normalised SMPL-X body pose (B, 63).

    Buffers ``mean`` (63,) and ``std`` (63,) are the training set's body_pose statistics.
    """

    config: PriorConfig
    mean: Tensor
    std: Tensor

    def __init__(
        self,
        config: PriorConfig | None = None,
        mean: Tensor | None = None,
        std: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.config = config if config is not None else PriorConfig()
        self.sde = DiffusionSDE(
            kind=_sde_kind(self.config.sde),
            beta_min=self.config.beta_min,
            beta_max=self.config.beta_max,
        )
        self.net = ScoreModelFC(
            dim=POSE_DIM,
            hidden=self.config.hidden,
            blocks=self.config.blocks,
            embed_dim=self.config.embed_dim,
            dropout=self.config.dropout,
        )
        mean = torch.zeros(POSE_DIM) if mean is None else mean.detach().float().reshape(-1)
        std = torch.ones(POSE_DIM) if std is None else std.detach().float().reshape(-1)
        if mean.shape != (POSE_DIM,) or std.shape != (POSE_DIM,):
            raise ValueError(f"mean and std must hold {POSE_DIM} values each")
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clamp_min(self.config.std_floor))

    # ------------------------------------------------------------------ normalisation

    def set_statistics(self, body_pose: Tensor) -> None:
        """Sets ``mean``/``std`` from training poses (N, 21, 3)."""
        _check_body_pose(body_pose)
        flat = body_pose.detach().float().reshape(-1, POSE_DIM)
        self.mean.copy_(flat.mean(dim=0))
        self.std.copy_(flat.std(dim=0).clamp_min(self.config.std_floor))

    def normalise(self, body_pose: Tensor) -> Tensor:
        """(B, 21, 3) axis-angle -> (B, 63) normalised."""
        _check_body_pose(body_pose)
        return (body_pose.reshape(-1, POSE_DIM) - self.mean) / self.std

    def denormalise(self, x: Tensor) -> Tensor:
        """(B, 63) normalised -> (B, 21, 3) axis-angle."""
        if x.ndim != 2 or x.shape[1] != POSE_DIM:
            raise ValueError(f"x must have shape (B, {POSE_DIM}), got {tuple(x.shape)}")
        return (x * self.std + self.mean).reshape(-1, BODY_JOINTS, 3)

    # ------------------------------------------------------------------ score

    def preconditioning(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """EDM-style scalings (Karras et al. 2022) at times (B,): ``(c_in, c_skip, c_out,
        sigma_tilde)``, each (B, 1), for ``x0_hat = c_skip x~ + c_out F(c_in x~, t)`` with
        ``x~ = x_t / alpha`` and ``sigma_tilde = sigma / alpha`` (data std 1 after normalising).

        The network's input and its target ``(x0 - c_skip x~) / c_out`` have unit variance at
        every t; a plain noise predictor would have to output the identity to within
        ``alpha(1) ~ 0.007`` at large t, and its errors there, divided by alpha, wreck sampling.
        """
        alpha, sigma = self.sde.marginal(t)
        return _scalings(alpha[:, None], sigma[:, None])

    def denoise(self, x: Tensor, t: Tensor) -> Tensor:
        """Clean-pose prediction ``E[x_0 | x_t]``: (B, 63), (B,) -> (B, 63), normalised."""
        alpha, sigma = self.sde.marginal(t)
        return self._denoise(x, t, alpha[:, None], sigma[:, None])

    def denoise_at(self, x: Tensor, t: float) -> Tensor:
        """:meth:`denoise` with every row at the same time t: (B, 63) -> (B, 63). Cheaper per
        call: the scalings are Python floats (samplers call this once per step)."""
        alpha, sigma = self.sde.marginal_at(t)
        return self._denoise(x, torch.full((x.shape[0],), t, device=x.device), alpha, sigma)

    def _denoise(
        self, x: Tensor, t: Tensor, alpha: Tensor | float, sigma: Tensor | float
    ) -> Tensor:
        c_in, c_skip, c_out, _ = _scalings(alpha, sigma)
        x_tilde = x / alpha
        # The scalings are Tensors or floats (Any); times the Tensor x_tilde, a Tensor.
        denoised: Tensor = c_skip * x_tilde + c_out * self.net(c_in * x_tilde, t)
        return denoised

    def predict_noise(self, x: Tensor, t: Tensor) -> Tensor:
        """Noise in ``x_t = alpha x_0 + sigma epsilon``: (B, 63), (B,) -> (B, 63)."""
        alpha, sigma = self.sde.marginal(t)
        return (x - alpha[:, None] * self.denoise(x, t)) / sigma[:, None]

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        """Score ``grad_x log p_t(x)`` in normalised space: (B, 63), (B,) -> (B, 63)."""
        return -self.predict_noise(x, t) / self.sde.sigma(t)[:, None]

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> None:
        """Writes ``path`` (a ``.pt`` file, or a folder that gets ``prior.pt``)."""
        path = Path(path)
        if path.suffix != ".pt":
            path = path / PRIOR_FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "config": self.config.to_dict(),
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()},
        }
        tmp = path.with_suffix(".pt.tmp")
        torch.save(payload, tmp)
        tmp.replace(path)  # readers never see a half-written file

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> PosePrior:
        """Loads a prior from a ``prior.pt`` file or a folder holding one, in eval mode."""
        path = Path(path)
        if path.is_dir():
            path = path / PRIOR_FILENAME
        if not path.is_file():
            raise FileNotFoundError(
                f"no pose prior at {path}: train one with `bodyserve train prior` or point to a "
                f"folder holding {PRIOR_FILENAME}"
            )
        payload = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a bodyserve pose prior file")
        if payload.get("version") != _FORMAT_VERSION:
            raise ValueError(
                f"{path} has pose prior format version {payload.get('version')}; this code reads "
                f"version {_FORMAT_VERSION}: retrain the prior"
            )
        prior = cls(PriorConfig.from_dict(payload["config"]))
        prior.load_state_dict(payload["state_dict"])
        prior.to(map_location)
        return prior.eval()


def _scalings(alpha: Any, sigma: Any) -> tuple[Any, Any, Any, Any]:
    """``(c_in, c_skip, c_out, sigma_tilde)`` from alpha and sigma (tensors or floats)."""
    sigma_tilde = sigma / alpha
    scale = (sigma_tilde**2 + 1.0) ** 0.5
    return 1.0 / scale, 1.0 / scale**2, sigma_tilde / scale, sigma_tilde


def _sde_kind(name: str) -> SDEKind:
    if name == "vp":
        return "vp"
    if name == "subvp":
        return "subvp"
    raise ValueError(f"unknown SDE {name!r}: use 'vp' or 'subvp'")
