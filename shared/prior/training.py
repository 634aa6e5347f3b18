"""Training loop of the pose prior: denoising score matching under the prior's SDE.

``train`` takes arrays of SMPL-X body_pose (N, 21, 3) and writes into ``out_dir``:

- ``checkpoints/step_XXXXXXX.pt``: everything needed to continue exactly (model, EMA, optimiser,
  scheduler, step, RNG states, config), the last ``keep_checkpoints`` kept;
- ``metrics.jsonl``: one JSON line per evaluation;
- ``prior.pt``: the EMA weights (the published ones), via :meth:`PosePrior.save`.

A run stopped at any point and started again with ``resume=True`` continues from its newest
checkpoint and ends with the same weights as a run that was never stopped.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from shared.bodies.skeleton import mirror_body_pose
from shared.prior.model import BODY_JOINTS, POSE_DIM, PosePrior, PriorConfig

CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
_CHECKPOINT_FORMAT = "bodyserve.pose_prior.checkpoint"
_VALID_CHUNK = 4096
# Fields that only change what is written or reported, not the weights: a run may be resumed with
# other values for them.
_BOOKKEEPING_FIELDS = frozenset(
    {"checkpoint_every", "keep_checkpoints", "eval_every", "progress_every", "threads"}
)


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run.

    The defaults are the recommended CPU run: 44k steps of batch 256 with the default
    :class:`PriorConfig` (hidden 512, 2 blocks) run at 29-35 steps/s on the 2-core development
    machine with both cores (21-24 on one), i.e. 21-25 minutes. Longer runs keep improving
    completion of held-out subjects (hidden leg, mean of 10 hypotheses, today's sampler: 20.7 mm
    after 15k steps, 20.1 after 44k) although the validation denoising loss is lowest after a few
    hundred steps.
    """

    steps: int = 44_000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 500
    # The cosine schedule decays the learning rate to lr * min_lr_ratio at the last step.
    min_lr_ratio: float = 0.02
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    eval_every: int = 500
    progress_every: int = 10
    # Adds every training pose's left/right mirror image to the training set.
    mirror: bool = True
    # Validation loss on at most this many validation poses (fixed noise and times).
    valid_max: int = 8192
    # Torch CPU threads while training (None: leave torch's setting). Small matrices gain little
    # from a second thread, and on a busy machine spinning threads cost far more than they give.
    threads: int | None = None
    model: PriorConfig = field(default_factory=PriorConfig)

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = PriorConfig.from_dict(self.model)
        positive = ("steps", "batch_size", "checkpoint_every", "keep_checkpoints", "eval_every")
        for name in (*positive, "progress_every", "valid_max"):
            if int(getattr(self, name)) < 1:
                raise ValueError(
                    f"TrainConfig.{name} must be at least 1, got {getattr(self, name)}"
                )
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError("TrainConfig needs lr > 0, weight_decay >= 0, warmup_steps >= 0")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"TrainConfig.ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"TrainConfig.threads must be at least 1 or None, got {self.threads}")
        if self.grad_clip <= 0:
            raise ValueError(f"TrainConfig.grad_clip must be positive, got {self.grad_clip}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known: {sorted(known)}")
        return cls(**values)


@dataclass(frozen=True)
class TrainProgress:
    """What the progress callback gets every ``progress_every`` steps."""

    step: int
    total: int
    loss: float  # running mean of the training loss since the last evaluation
    valid_loss: float | None  # set on evaluation steps
    steps_per_s: float
    eta_s: float


@dataclass(frozen=True)
class TrainResult:
    path: Path  # the published prior.pt (EMA weights)
    steps: int
    metrics: dict[str, Any]  # the last metrics.jsonl line
    elapsed_s: float  # training time over all sessions of the run


# --------------------------------------------------------------------------- data


def _check_poses(poses: np.ndarray, name: str, allow_empty: bool = False) -> np.ndarray:
    array = np.asarray(poses, dtype=np.float32)
    if array.ndim != 3 or array.shape[1:] != (BODY_JOINTS, 3):
        raise ValueError(
            f"{name} must have shape (N, {BODY_JOINTS}, 3) (SMPL-X body_pose, axis-angle), got "
            f"{array.shape}"
        )
    if not allow_empty and array.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return array


def _fingerprint(poses: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(poses).tobytes()).hexdigest()[:16]


# --------------------------------------------------------------------------- schedule and state


def lr_factor(step: int, config: TrainConfig) -> float:
    """Learning rate multiplier at ``step`` (0-based): linear warm-up, then cosine decay."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine


def _numpy_rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "name": str(name),
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _set_numpy_rng_state(state: dict[str, Any]) -> None:
    np.random.set_state(
        (
            state["name"],
            state["keys"].numpy().astype(np.uint32),
            state["pos"],
            state["has_gauss"],
            state["cached_gaussian"],
        )
    )


def _checkpoint_path(out_dir: Path, step: int) -> Path:
    return out_dir / CHECKPOINT_DIR / f"step_{step:07d}.pt"


def _checkpoints(out_dir: Path) -> list[Path]:
    return sorted((out_dir / CHECKPOINT_DIR).glob("step_*.pt"))


def _comparable(config: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k not in _BOOKKEEPING_FIELDS}


class _Run:
    """The mutable state of a training run."""

    def __init__(self, config: TrainConfig, train_poses: np.ndarray) -> None:
        self.config = config
        self.model = PosePrior(config.model)
        self.model.set_statistics(torch.from_numpy(train_poses))
        self.ema = copy.deepcopy(self.model).eval()
        for parameter in self.ema.parameters():
            parameter.requires_grad_(False)
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for parameter in self.model.net.parameters():
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": config.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=config.lr,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, config)
        )
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.loss_sum = 0.0
        self.loss_count = 0
        self.elapsed_before = 0.0  # seconds trained in earlier sessions of this run

    def state(self, data_fingerprint: str, elapsed_s: float) -> dict[str, Any]:
        return {
            "format": _CHECKPOINT_FORMAT,
            "step": self.step,
            "config": self.config.to_dict(),
            "data_fingerprint": data_fingerprint,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": _numpy_rng_state(),
            "loss_sum": self.loss_sum,
            "loss_count": self.loss_count,
            "elapsed_s": elapsed_s,
        }

    def restore(self, path: Path, data_fingerprint: str) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") != _CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a pose prior training checkpoint")
        saved = TrainConfig.from_dict(state["config"])
        if _comparable(saved) != _comparable(self.config):
            raise ValueError(
                f"{path} was written with another training config; resume with the same config, "
                f"or start over with resume=False (or another output folder)"
            )
        if state["data_fingerprint"] != data_fingerprint:
            raise ValueError(
                f"{path} was trained on other poses; resume with the same data, or start over "
                f"with resume=False (or another output folder)"
            )
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        _set_numpy_rng_state(state["numpy_rng"])
        self.step = int(state["step"])
        self.loss_sum = float(state["loss_sum"])
        self.loss_count = int(state["loss_count"])
        self.elapsed_before = float(state["elapsed_s"])

    def update_ema(self) -> None:
        # Warm-up of the decay: early weights are forgotten quickly.
        decay = min(self.config.ema_decay, (1.0 + self.step) / (10.0 + self.step))
        with torch.no_grad():
            for ema_param, param in zip(
                self.ema.parameters(), self.model.parameters(), strict=True
            ):
                ema_param.lerp_(param, 1.0 - decay)


# --------------------------------------------------------------------------- losses


def denoising_loss(prior: PosePrior, x0: Tensor, t: Tensor, z: Tensor) -> Tensor:
    """Denoising score matching: (B, 63) clean normalised poses, (B,) times, (B, 63) noise ->
    (B,) loss. It is ``|x0_hat - x0|^2 / c_out^2`` (mean over dims), i.e. the noise-prediction
    error weighted by ``1 + (sigma / alpha)^2``, in the network's unit-variance output scale."""
    alpha, sigma = prior.sde.marginal(t)
    x_t = alpha[:, None] * x0 + sigma[:, None] * z
    _, _, c_out, _ = prior.preconditioning(t)
    return ((prior.denoise(x_t, t) - x0) / c_out).square().mean(dim=1)


def _sample_times(rows: int, t_eps: float, generator: torch.Generator) -> Tensor:
    return t_eps + (1.0 - t_eps) * torch.rand((rows,), generator=generator)


class _ValidSet:
    """Validation poses with fixed times and noise: the same loss for the same weights."""

    def __init__(self, model: PosePrior, poses: np.ndarray, config: TrainConfig) -> None:
        if len(poses) > config.valid_max:
            poses = poses[np.linspace(0, len(poses) - 1, config.valid_max).round().astype(int)]
        generator = torch.Generator().manual_seed(config.seed + 1)
        with torch.no_grad():
            self.x0 = model.normalise(torch.from_numpy(poses))
        self.t = _sample_times(len(poses), config.model.t_eps, generator)
        self.z = torch.randn(self.x0.shape, generator=generator)

    def loss(self, model: PosePrior) -> float:
        total = 0.0
        with torch.no_grad():
            for start in range(0, len(self.x0), _VALID_CHUNK):
                chunk = slice(start, start + _VALID_CHUNK)
                total += float(
                    denoising_loss(model, self.x0[chunk], self.t[chunk], self.z[chunk]).sum()
                )
        return total / len(self.x0)


# --------------------------------------------------------------------------- training


def train(
    train_poses: np.ndarray,
    valid_poses: np.ndarray,
    config: TrainConfig,
    out_dir: Path,
    *,
    resume: bool = True,
    progress: Callable[[TrainProgress], None] | None = None,
) -> TrainResult:
    """Trains a pose prior on body poses (N, 21, 3) and writes it to ``out_dir/prior.pt``.

    ``valid_poses`` (M, 21, 3) may be empty (then no validation loss). ``resume=True`` continues
    from the newest checkpoint in ``out_dir`` if there is one; ``resume=False`` starts over and
    removes the folder's old checkpoints and metrics. The global torch and numpy RNGs (and torch's
    thread count) are left as they were.
    """
    train_array = _check_poses(train_poses, "train_poses")
    valid_array = _check_poses(valid_poses, "valid_poses", allow_empty=True)
    if config.mirror:
        train_array = np.concatenate([train_array, mirror_body_pose(train_array)])
    fingerprint = _fingerprint(train_array)
    out_dir = Path(out_dir)
    (out_dir / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / METRICS_FILE

    threads_before = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    with torch.random.fork_rng(devices=[]):
        numpy_state = np.random.get_state()
        try:
            return _train(
                train_array,
                valid_array,
                config,
                out_dir,
                metrics_path,
                fingerprint,
                resume=resume,
                progress=progress,
            )
        finally:
            np.random.set_state(numpy_state)
            torch.set_num_threads(threads_before)


def _train(
    train_array: np.ndarray,
    valid_array: np.ndarray,
    config: TrainConfig,
    out_dir: Path,
    metrics_path: Path,
    fingerprint: str,
    *,
    resume: bool,
    progress: Callable[[TrainProgress], None] | None,
) -> TrainResult:
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    run = _Run(config, train_array)

    existing = _checkpoints(out_dir)
    if resume and existing:
        run.restore(existing[-1], fingerprint)
        _truncate_metrics(metrics_path, run.step)
    else:
        for path in existing:
            path.unlink()
        metrics_path.unlink(missing_ok=True)

    data = run.model.normalise(torch.from_numpy(train_array)).detach()
    valid = _ValidSet(run.model, valid_array, config) if len(valid_array) else None
    session_start = time.perf_counter()
    session_first_step = run.step
    last_eval_time, last_eval_step = session_start, run.step
    metrics: dict[str, Any] = {}

    def elapsed() -> float:
        return run.elapsed_before + time.perf_counter() - session_start

    def steps_per_s() -> float:
        done = run.step - session_first_step
        return done / max(time.perf_counter() - session_start, 1e-9)

    run.model.train()
    while run.step < config.steps:
        index = torch.randint(len(data), (config.batch_size,), generator=run.generator)
        t = _sample_times(config.batch_size, config.model.t_eps, run.generator)
        z = torch.randn((config.batch_size, POSE_DIM), generator=run.generator)
        loss = denoising_loss(run.model, data[index], t, z).mean()
        run.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)  # what Tensor.backward (untyped) runs
        torch.nn.utils.clip_grad_norm_(run.model.net.parameters(), config.grad_clip)
        run.optimizer.step()
        run.scheduler.step()
        run.step += 1
        run.update_ema()
        run.loss_sum += float(loss.detach())
        run.loss_count += 1

        valid_loss: float | None = None
        running_loss = run.loss_sum / max(run.loss_count, 1)
        if run.step % config.eval_every == 0 or run.step == config.steps:
            valid_loss = valid.loss(run.ema) if valid is not None else None
            now = time.perf_counter()
            metrics = {
                "step": run.step,
                "train_loss": running_loss,
                "valid_loss": valid_loss,
                "lr": run.optimizer.param_groups[0]["lr"],
                "elapsed_s": round(elapsed(), 3),
                "steps_per_s": round(
                    (run.step - last_eval_step) / max(now - last_eval_time, 1e-9), 3
                ),
            }
            with metrics_path.open("a") as f:
                f.write(json.dumps(metrics) + "\n")
            last_eval_time, last_eval_step = now, run.step
            run.loss_sum, run.loss_count = 0.0, 0
        if run.step % config.checkpoint_every == 0 or run.step == config.steps:
            _save_checkpoint(run, out_dir, fingerprint, elapsed())
        if progress is not None and (
            run.step % config.progress_every == 0
            or run.step == config.steps
            or valid_loss is not None
        ):
            rate = steps_per_s()
            progress(
                TrainProgress(
                    step=run.step,
                    total=config.steps,
                    loss=running_loss,
                    valid_loss=valid_loss,
                    steps_per_s=rate,
                    eta_s=(config.steps - run.step) / rate if rate > 0 else math.inf,
                )
            )

    if not metrics:  # resumed from the final checkpoint: report its last metrics
        metrics = _last_metrics(metrics_path)
    run.ema.eval()
    prior_path = out_dir / "prior.pt"
    run.ema.save(prior_path)
    return TrainResult(path=prior_path, steps=run.step, metrics=metrics, elapsed_s=elapsed())


def _save_checkpoint(run: _Run, out_dir: Path, fingerprint: str, elapsed_s: float) -> None:
    path = _checkpoint_path(out_dir, run.step)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(run.state(fingerprint, elapsed_s), tmp)
    tmp.replace(path)  # a crash while writing never leaves a truncated newest checkpoint
    for old in _checkpoints(out_dir)[: -run.config.keep_checkpoints]:
        old.unlink()


def _truncate_metrics(metrics_path: Path, step: int) -> None:
    """Drops metrics lines written after the checkpoint that a resumed run continues from."""
    if not metrics_path.exists():
        return
    lines = metrics_path.read_text().splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    metrics_path.write_text("".join(line + "\n" for line in kept))


def _last_metrics(metrics_path: Path) -> dict[str, Any]:
    if not metrics_path.exists():
        return {}
    lines = [line for line in metrics_path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else {}
