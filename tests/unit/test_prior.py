"""The diffusion pose prior: SDE, samplers, determinism, persistence, completion, the fitting
regulariser and the training loop (small networks and synthetic poses: the whole file is fast)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from shared.bodies.skeleton import mirror_body_pose
from shared.bodies.smplx_convention import SMPLX_BODY_JOINTS
from shared.prior import (
    BODY_JOINTS,
    POSE_DIM,
    DiffusionSDE,
    PosePrior,
    PriorConfig,
    PriorLoss,
    complete,
    denoise_poses,
    generate,
)
from shared.prior.sampling import row_noise
from shared.prior.sde import SDEKind
from shared.prior.training import (
    TrainConfig,
    TrainProgress,
    lr_factor,
    train,
)

SMALL = PriorConfig(hidden=128, blocks=2, embed_dim=32, dropout=0.0)


def synthetic_poses(n: int, seed: int = 0) -> np.ndarray:
    """Structured poses (n, 21, 3): a 3-component mixture of 4-D linear subspaces in 63-D, so a
    prior that learnt them can tell them apart from unstructured random poses."""
    rng = np.random.default_rng(1234)  # the mixture itself is fixed; `seed` picks the samples
    centres = rng.normal(0.0, 0.4, size=(3, POSE_DIM))
    bases = rng.normal(0.0, 0.15, size=(3, 4, POSE_DIM))
    draw = np.random.default_rng(seed)
    component = draw.integers(0, 3, size=n)
    weights = draw.normal(size=(n, 4))
    poses = centres[component] + np.einsum("nk,nkd->nd", weights, bases[component])
    poses += draw.normal(0.0, 0.01, size=poses.shape)
    return poses.reshape(n, BODY_JOINTS, 3).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Small networks run fastest on one thread, and do not fight other processes for cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> PosePrior:
    out = tmp_path_factory.mktemp("prior")
    config = TrainConfig(
        steps=600,
        batch_size=256,
        lr=5e-3,
        warmup_steps=50,
        ema_decay=0.99,
        eval_every=200,
        checkpoint_every=600,
        mirror=False,
        model=SMALL,
    )
    result = train(synthetic_poses(4000), synthetic_poses(500, seed=1), config, out)
    return PosePrior.load(result.path)


class GaussianPrior(PosePrior):
    """A prior whose data are N(mu, s^2 I) in normalised space, with the exact noise predictor."""

    def __init__(self, mu: float, s: float, sde: str = "subvp") -> None:
        super().__init__(PriorConfig(hidden=8, blocks=0, embed_dim=8, sde=sde))
        self.mu, self.s = mu, s

    def denoise(self, x: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = (v[:, None] for v in self.sde.marginal(t))
        return self.mu + alpha * self.s**2 / (alpha**2 * self.s**2 + sigma**2) * (
            x - alpha * self.mu
        )

    def denoise_at(self, x: Tensor, t: float) -> Tensor:
        return self.denoise(x, torch.full((x.shape[0],), t))


# --------------------------------------------------------------------------- SDE


@pytest.mark.parametrize("kind", ["vp", "subvp"])
def test_sde_marginals_match_closed_form_and_forward_simulation(kind: SDEKind) -> None:
    sde = DiffusionSDE(kind=kind, beta_min=0.1, beta_max=20.0)
    t = torch.tensor([0.01, 0.1, 0.5, 1.0], dtype=torch.float64)
    integral = 0.1 * t + 0.5 * t**2 * (20.0 - 0.1)
    alpha, sigma = sde.marginal(t)
    torch.testing.assert_close(alpha, torch.exp(-0.5 * integral))
    expected_var = 1 - torch.exp(-integral) if kind == "vp" else (1 - torch.exp(-integral)) ** 2
    torch.testing.assert_close(sigma**2, expected_var)
    assert sde.prior_std() == pytest.approx(1.0, abs=1e-3)

    # Euler-Maruyama on the forward SDE from x0 = 2 reaches the stated marginal at t = 0.3.
    generator = torch.Generator().manual_seed(0)
    x = torch.full((5_000, 1), 2.0, dtype=torch.float64)
    n, t_end = 300, 0.3
    dt = t_end / n
    for i in range(n):
        ti = torch.full((x.shape[0],), i * dt, dtype=torch.float64)
        drift, diffusion = sde.sde(x, ti)
        half = torch.randn((x.shape[0] // 2, 1), generator=generator, dtype=torch.float64)
        noise = torch.cat([half, -half])  # antithetic: the sample mean has no noise of its own
        x = x + drift * dt + diffusion[:, None] * noise * dt**0.5
    mean, std = sde.marginal_prob(
        torch.full((1, 1), 2.0, dtype=torch.float64), torch.tensor([t_end])
    )
    assert float(x.mean()) == pytest.approx(float(mean), abs=0.005)
    assert float(x.std()) == pytest.approx(float(std), rel=0.03)


def test_bad_sde_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="vp"):
        PriorConfig(sde="ve")
    with pytest.raises(ValueError, match="beta_min"):
        DiffusionSDE(beta_min=5.0, beta_max=1.0)


# --------------------------------------------------------------------------- samplers


@pytest.mark.parametrize("kind", ["vp", "subvp"])
def test_ode_sampler_follows_the_exact_flow_of_a_gaussian(kind: str) -> None:
    # For N(mu, s^2) data the probability-flow ODE keeps (x_t - alpha mu) / sqrt(alpha^2 s^2 +
    # sigma^2) constant, so each sample is mu + s * that constant at t = 1.
    mu, s = 0.7, 0.3
    prior = GaussianPrior(mu, s, sde=kind)
    seeds = list(range(16))
    samples = torch.from_numpy(generate(prior, seeds, steps=50, sampler="ode")).reshape(-1, 63)
    x1 = row_noise(seeds, 51)[:, 0] * prior.sde.prior_std()  # generate's draws, 50 steps
    alpha1, sigma1 = prior.sde.marginal(torch.ones(1))
    expected = mu + s * (x1 - alpha1 * mu) / torch.sqrt(alpha1**2 * s**2 + sigma1**2)
    assert float((samples - expected).abs().max()) < 0.03 * s


def test_sde_sampler_recovers_gaussian_statistics() -> None:
    mu, s = -0.5, 0.4
    prior = GaussianPrior(mu, s)
    samples = generate(prior, range(2000), steps=50, sampler="sde")
    assert float(samples.mean()) == pytest.approx(mu, abs=0.01)
    assert float(samples.std()) == pytest.approx(s, rel=0.03)
    # The prior of a wider Gaussian must visibly miss: the check can fail.
    wrong = generate(GaussianPrior(mu, 1.5 * s), range(500), steps=50, sampler="sde")
    assert abs(float(wrong.std()) - s) > 0.1 * s


def test_rows_are_deterministic_whatever_the_batch(trained: PosePrior) -> None:
    rng_before = torch.get_rng_state()
    alone = generate(trained, [7], steps=20)
    for sampler in ("ode", "sde"):
        mixed = generate(trained, [3, 7, 11, 12], steps=20, sampler=sampler)
        big = generate(trained, [*range(20), 7], steps=20, sampler=sampler)
        np.testing.assert_allclose(mixed[1], big[-1], atol=1e-5)
    np.testing.assert_allclose(alone[0], generate(trained, [1, 7], steps=20)[1], atol=1e-5)
    assert not np.allclose(alone[0], generate(trained, [8], steps=20)[0], atol=1e-3)

    poses = synthetic_poses(4, seed=5)
    known = np.ones((4, BODY_JOINTS), dtype=bool)
    known[:, 16:] = False
    batch = complete(trained, poses, known, seeds=[1, 2, 3, 4], steps=10)
    single = complete(trained, poses[2:3], known[2:3], seeds=[3], steps=10)
    np.testing.assert_allclose(batch[2], single[0], atol=1e-5)
    batch = denoise_poses(trained, poses, 0.3, seeds=[1, 2, 3, 4], steps=10, sampler="sde")
    single = denoise_poses(trained, poses[1:2], 0.3, seeds=[2], steps=10, sampler="sde")
    np.testing.assert_allclose(batch[1], single[0], atol=1e-5)
    assert torch.equal(torch.get_rng_state(), rng_before), "inference touched the global RNG"


def test_save_load_round_trip(trained: PosePrior, tmp_path: Path) -> None:
    trained.save(tmp_path)
    assert (tmp_path / "prior.pt").is_file()
    payload = torch.load(tmp_path / "prior.pt", weights_only=True)
    assert payload["config"]["hidden"] == SMALL.hidden
    for source in (tmp_path, tmp_path / "prior.pt", str(tmp_path)):
        loaded = PosePrior.load(source)
        assert loaded.config == trained.config
        torch.testing.assert_close(loaded.std, trained.std)
        np.testing.assert_array_equal(
            generate(loaded, [1, 2], steps=5), generate(trained, [1, 2], steps=5)
        )
    with pytest.raises(FileNotFoundError, match="no pose prior"):
        PosePrior.load(tmp_path / "missing")
    (tmp_path / "other.pt").write_bytes(b"")
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a bodyserve pose prior"):
        PosePrior.load(tmp_path / "other.pt")


def test_normalise_round_trip_and_shape_errors(trained: PosePrior) -> None:
    poses = torch.from_numpy(synthetic_poses(5))
    x = trained.normalise(poses)
    assert x.shape == (5, POSE_DIM)
    torch.testing.assert_close(trained.denormalise(x), poses)
    with pytest.raises(ValueError, match=r"\(B, 21, 3\)"):
        trained.normalise(torch.zeros(5, 63))
    with pytest.raises(ValueError, match="one seed per pose"):
        complete(trained, poses.numpy(), np.ones((5, 21), dtype=bool), seeds=[1, 2])


def test_denoise_score_and_noise_agree(trained: PosePrior) -> None:
    x = torch.randn(5, POSE_DIM, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for t in (0.01, 0.3, 1.0):
            times = torch.full((5,), t)
            x0_hat = trained.denoise(x, times)
            torch.testing.assert_close(trained.denoise_at(x, t), x0_hat, atol=1e-5, rtol=1e-5)
            alpha, sigma = trained.sde.marginal(times[:1])
            torch.testing.assert_close(
                trained.score(x, times), (alpha * x0_hat - x) / sigma**2, atol=1e-4, rtol=1e-4
            )
            torch.testing.assert_close(
                trained.predict_noise(x, times), (x - alpha * x0_hat) / sigma, atol=1e-4, rtol=1e-4
            )


# --------------------------------------------------------------------------- completion, denoising


def test_completion_keeps_known_joints_and_varies_with_seed(trained: PosePrior) -> None:
    truth = synthetic_poses(50, seed=7)
    known = np.ones((50, BODY_JOINTS), dtype=bool)
    hidden = [SMPLX_BODY_JOINTS.index(n) for n in ("left_hip", "left_knee", "left_ankle")]
    known[:, hidden] = False
    masked = truth.copy()
    masked[:, hidden] = 0.0
    for method in ("replace", "repaint"):
        a = complete(trained, masked, known, seeds=range(50), steps=20, method=method)
        b = complete(trained, masked, known, seeds=range(100, 150), steps=20, method=method)
        np.testing.assert_array_equal(a[:, known[0]], truth[:, known[0]])
        assert np.abs(a[:, hidden] - b[:, hidden]).mean() > 1e-3, method
        # The completion uses the known joints: far closer to the truth than the data mean is.
        error = np.abs(a[:, hidden] - truth[:, hidden]).mean()
        mean_pose = trained.mean.numpy().reshape(BODY_JOINTS, 3)
        baseline = np.abs(mean_pose[hidden] - truth[:, hidden]).mean()
        assert error < 0.5 * baseline, (method, error, baseline)


def test_denoise_poses_moves_noisy_poses_back_to_the_data(trained: PosePrior) -> None:
    truth = synthetic_poses(64, seed=9)
    noisy = truth + np.random.default_rng(0).normal(0, 0.15, truth.shape).astype(np.float32)
    cleaned = denoise_poses(trained, noisy, noise_level=0.15, seeds=range(64), steps=20)
    assert np.abs(cleaned - truth).mean() < 0.8 * np.abs(noisy - truth).mean()
    with pytest.raises(ValueError, match="noise_level"):
        denoise_poses(trained, noisy, noise_level=1.5, seeds=range(64))


def test_prior_loss_is_differentiable_and_prefers_data(trained: PosePrior) -> None:
    loss_fn = PriorLoss(trained, t_range=(0.3, 0.05))
    data = torch.from_numpy(synthetic_poses(128, seed=3)).requires_grad_(True)
    random = (torch.rand(128, BODY_JOINTS, 3, generator=torch.Generator().manual_seed(0)) - 0.5) * 2
    for progress in (0.0, 0.5, 1.0):
        generator = torch.Generator().manual_seed(1)
        data_loss = loss_fn(data, progress, generator)
        random_loss = loss_fn(random, progress, torch.Generator().manual_seed(1))
        assert data_loss.shape == (128,)
        assert float(data_loss.detach().mean()) < 0.5 * float(random_loss.mean()), progress
    data_loss.sum().backward()
    assert data.grad is not None and torch.isfinite(data.grad).all() and data.grad.abs().sum() > 0
    assert all(p.grad is None for p in trained.parameters())
    # A few gradient steps on the loss bring random poses towards the data.
    poses = random.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([poses], lr=0.02)
    start = float(loss_fn(poses, 0.0, torch.Generator().manual_seed(2)).detach().mean())
    for i in range(60):
        optimiser.zero_grad()
        loss_fn(poses, i / 59, torch.Generator().manual_seed(i)).sum().backward()
        optimiser.step()
    end = float(loss_fn(poses, 0.0, torch.Generator().manual_seed(2)).detach().mean())
    assert end < 0.5 * start
    with pytest.raises(ValueError, match="t_range"):
        PriorLoss(trained, t_range=(0.05, 0.3))


# --------------------------------------------------------------------------- training


def test_mirror_swaps_sides_and_is_an_involution() -> None:
    poses = synthetic_poses(3)
    mirrored = mirror_body_pose(poses)
    left, right = SMPLX_BODY_JOINTS.index("left_knee"), SMPLX_BODY_JOINTS.index("right_knee")
    spine = SMPLX_BODY_JOINTS.index("spine1")
    np.testing.assert_array_equal(mirrored[:, left], poses[:, right] * [1, -1, -1])
    np.testing.assert_array_equal(mirrored[:, spine], poses[:, spine] * [1, -1, -1])
    np.testing.assert_array_equal(mirror_body_pose(mirrored), poses)


def test_lr_schedule_warms_up_then_decays() -> None:
    config = TrainConfig(steps=1000, warmup_steps=100, min_lr_ratio=0.1)
    assert lr_factor(0, config) == pytest.approx(0.01)
    assert lr_factor(99, config) == pytest.approx(1.0)
    assert lr_factor(550, config) == pytest.approx(0.55, abs=0.01)
    assert lr_factor(1000, config) == pytest.approx(0.1)


def test_training_writes_metrics_checkpoints_and_a_loadable_prior(tmp_path: Path) -> None:
    config = TrainConfig(
        steps=60, batch_size=64, warmup_steps=5, eval_every=20, checkpoint_every=10,
        keep_checkpoints=2, progress_every=10, model=SMALL,
    )  # fmt: skip
    reports: list[TrainProgress] = []
    result = train(
        synthetic_poses(500), synthetic_poses(100, 1), config, tmp_path, progress=reports.append
    )
    assert result.path == tmp_path / "prior.pt" and result.steps == 60
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [20, 40, 60]
    assert set(lines[0]) >= {"step", "train_loss", "valid_loss", "lr", "elapsed_s", "steps_per_s"}
    assert lines[-1]["valid_loss"] < lines[0]["valid_loss"]
    assert result.metrics == lines[-1]
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_0000050.pt", "step_0000060.pt"]
    assert [r.step for r in reports] == [10, 20, 30, 40, 50, 60]
    assert reports[1].valid_loss is not None and reports[0].valid_loss is None
    assert reports[-1].eta_s == 0.0 and reports[-1].steps_per_s > 0
    prior = PosePrior.load(tmp_path)
    # Normalisation comes from the (mirrored) training poses.
    poses = synthetic_poses(500)
    both = np.concatenate([poses, mirror_body_pose(poses)]).reshape(-1, POSE_DIM)
    np.testing.assert_allclose(prior.mean.numpy(), both.mean(axis=0), atol=1e-5)
    with pytest.raises(ValueError, match="train_poses"):
        train(np.zeros((10, 22, 3)), np.zeros((0, 21, 3)), config, tmp_path / "bad")


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path: Path) -> None:
    config = TrainConfig(
        steps=40, batch_size=32, warmup_steps=5, eval_every=10, checkpoint_every=10,
        progress_every=5, model=PriorConfig(hidden=64, blocks=2, embed_dim=16, dropout=0.2),
    )  # fmt: skip
    poses, valid = synthetic_poses(300), synthetic_poses(50, seed=1)
    straight = train(poses, valid, config, tmp_path / "straight")

    class Interrupt(Exception):
        pass

    def stop_at_25(report: TrainProgress) -> None:
        if report.step == 25:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(poses, valid, config, tmp_path / "resumed", progress=stop_at_25)
    assert not (tmp_path / "resumed" / "prior.pt").exists()
    resumed = train(poses, valid, config, tmp_path / "resumed")
    a = torch.load(straight.path, weights_only=True)["state_dict"]
    b = torch.load(resumed.path, weights_only=True)["state_dict"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5, msg=name)
    metrics_lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in metrics_lines]
    assert steps == [10, 20, 30, 40]
    assert resumed.metrics["valid_loss"] == pytest.approx(straight.metrics["valid_loss"], rel=1e-5)
    # Resuming with another config is refused with a clear message.
    with pytest.raises(ValueError, match="another training config"):
        train(poses, valid, TrainConfig(**{**config.to_dict(), "lr": 0.1}), tmp_path / "resumed")
