"""Motion denoising on a real validation clip: beats a temporal Gaussian filter, keeps one
skeleton, is deterministic, and says clearly what is wrong with bad input."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter1d

from shared.bodies.skeleton import BODY_PARENTS, BodySkeleton
from shared.fitting.motion import MotionResult, denoise_motion, estimate_joint_noise
from shared.inference.contracts import MotionInputs
from shared.inference.local import InProcessBackend
from shared.prior.model import PosePrior, PriorConfig
from shared.settings import get_settings
from tests.conftest import missing

# Subject 6 (a validation subject of the pose dataset): basketball, forward dribble.
VALID_CLIP = "cmu_iclone-retarget__DragonForgedTheArtist-IClone-CMU-Mocap/006/006_02.bvh"
FRAMES = 60
NOISE_M = 0.04  # DPoser's setting: Gaussian noise of std 0.04 m on every joint coordinate
# A body that is not Anny's neutral one: the denoiser has to find the skeleton too.
PHENOTYPE = torch.tensor([[0.3, 0.6, 0.7, 0.4, 0.65, 0.45]])


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """60 frames (30 fps) of the clip, through the dataset's own cleaning and resampling."""
    from shared.mocap.dataset import build_dataset

    source = get_settings().data_dir / "mocap" / VALID_CLIP
    if not source.is_file():
        missing(f"the mocap clip {source} is not there (set BODYSERVE_DATA_DIR)")
    folder = tmp_path_factory.mktemp("mocap")
    os.symlink(source, folder / Path(VALID_CLIP).name)
    sequence = max(build_dataset(folder).sequences(), key=lambda s: s.frame_count)
    assert sequence.fps == 30.0 and sequence.frame_count >= FRAMES + 20
    window = slice(20, 20 + FRAMES)
    orient = torch.as_tensor(sequence.global_orient[window])
    pose = torch.as_tensor(sequence.body_pose[window])
    pelvis = torch.as_tensor(sequence.pelvis[window])
    with torch.no_grad():
        clean = BodySkeleton.for_phenotype(PHENOTYPE)(orient, pose, pelvis).numpy()
    noisy = clean + np.random.default_rng(0).normal(0.0, NOISE_M, clean.shape)
    return {
        "clean": clean,
        "noisy": noisy.astype(np.float32),
        "global_orient": orient.numpy(),
        "body_pose": pose.numpy(),
        "pelvis": pelvis.numpy(),
    }


def _published_prior() -> PosePrior | None:
    from shared.prior.registry import default_model_dir, latest_version, load_prior_version

    version = latest_version(default_model_dir())
    return None if version is None else load_prior_version(default_model_dir(), version)


@pytest.fixture(scope="module")
def denoised(clip: dict[str, np.ndarray]) -> MotionResult:
    return denoise_motion(joints=clip["noisy"], fps=30.0, prior=_published_prior(), seed=0)


def mpjpe_mm(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b, axis=-1).mean() * 1000)


def test_beats_the_best_gaussian_filter(
    clip: dict[str, np.ndarray], denoised: MotionResult
) -> None:
    noisy = mpjpe_mm(clip["noisy"], clip["clean"])
    # The filter gets the sigma that is best on THIS clip (an oracle the denoiser lacks).
    filtered = min(
        mpjpe_mm(gaussian_filter1d(clip["noisy"], sigma, axis=0, mode="nearest"), clip["clean"])
        for sigma in (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
    )
    ours = mpjpe_mm(denoised.joints, clip["clean"])
    print(f"\nMPJPE noisy {noisy:.1f} mm, best Gaussian filter {filtered:.1f}, ours {ours:.1f}")
    assert ours < 0.4 * noisy
    assert ours < 0.85 * filtered


def test_one_skeleton_for_the_whole_motion(denoised: MotionResult) -> None:
    assert denoised.global_orient.shape == (FRAMES, 3)
    assert denoised.body_pose.shape == (FRAMES, 21, 3)
    assert denoised.pelvis.shape == (FRAMES, 3)
    assert denoised.joints.shape == (FRAMES, 22, 3)
    assert denoised.phenotype.shape == (6,)
    assert all(a.dtype == np.float32 for a in (denoised.joints, denoised.body_pose))
    # The joints are the skeleton's, posed by the returned parameters.
    skeleton = BodySkeleton.for_phenotype(torch.as_tensor(denoised.phenotype)[None])
    with torch.no_grad():
        posed = skeleton(
            torch.as_tensor(denoised.global_orient),
            torch.as_tensor(denoised.body_pose),
            torch.as_tensor(denoised.pelvis),
        ).numpy()
    np.testing.assert_allclose(posed, denoised.joints, atol=1e-5)
    bones = np.linalg.norm(
        denoised.joints[:, 1:] - denoised.joints[:, list(BODY_PARENTS[1:])], axis=-1
    )
    assert bones.std(0).max() < 1e-5


def test_outliers_count_little(clip: dict[str, np.ndarray]) -> None:
    """A tracker that loses a joint for a few frames: the robust smoother shrugs it off."""
    from shared.fitting.motion import MotionSettings

    joints = clip["noisy"][:30].copy()
    joints[10:13, 20] += 0.6  # the left wrist 60 cm off for 3 frames
    clean = clip["clean"][:30]
    robust = denoise_motion(joints=joints, iterations=40)
    plain = denoise_motion(joints=joints, iterations=40, settings=MotionSettings(robust_rounds=0))
    wrist = slice(8, 15), 20
    assert mpjpe_mm(robust.joints[wrist], clean[wrist]) < 0.5 * mpjpe_mm(
        plain.joints[wrist], clean[wrist]
    )


def test_estimates_the_noise_level(clip: dict[str, np.ndarray], denoised: MotionResult) -> None:
    assert denoised.noise == pytest.approx(NOISE_M, rel=0.15)
    assert estimate_joint_noise(torch.as_tensor(clip["clean"]), 30.0) < 0.01


def test_deterministic_under_its_seed(clip: dict[str, np.ndarray]) -> None:
    torch.manual_seed(0)
    prior = PosePrior(PriorConfig(hidden=32, blocks=1))  # random weights: draws matter
    joints = clip["noisy"][:20]

    def run(seed: int) -> np.ndarray:
        return denoise_motion(joints=joints, prior=prior, iterations=12, seed=seed).joints

    first = run(1)
    np.testing.assert_array_equal(first, run(1))
    assert not np.array_equal(first, run(2))


def test_denoises_poses(clip: dict[str, np.ndarray]) -> None:
    rng = np.random.default_rng(1)
    noisy_pose = clip["body_pose"] + rng.normal(0.0, 0.08, clip["body_pose"].shape)
    noisy_orient = clip["global_orient"] + rng.normal(0.0, 0.03, clip["global_orient"].shape)
    noisy_pelvis = clip["pelvis"] + rng.normal(0.0, 0.02, clip["pelvis"].shape)
    skeleton = BodySkeleton.for_phenotype()

    def joints(orient: np.ndarray, pose: np.ndarray, pelvis: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return skeleton(
                *(torch.as_tensor(np.asarray(a, np.float32)) for a in (orient, pose, pelvis))
            ).numpy()

    clean = joints(clip["global_orient"], clip["body_pose"], clip["pelvis"])
    out = denoise_motion(poses=(noisy_orient, noisy_pose, noisy_pelvis), fps=30.0)
    assert out.body_pose.shape == (FRAMES, 21, 3) and out.joints.shape == (FRAMES, 22, 3)
    np.testing.assert_allclose(out.phenotype, 0.5)  # the neutral skeleton
    before = mpjpe_mm(joints(noisy_orient, noisy_pose, noisy_pelvis), clean)
    after = mpjpe_mm(out.joints, clean)
    print(f"\nposes: joint error {before:.1f} mm -> {after:.1f} mm")
    assert after < 0.7 * before
    # Without a pelvis, the body stays at the origin.
    still = denoise_motion(poses=(noisy_orient, noisy_pose, None), iterations=5)
    np.testing.assert_array_equal(still.pelvis, 0.0)


def test_bad_input_says_what_to_fix() -> None:
    joints = np.zeros((10, 22, 3), np.float32)
    with pytest.raises(ValueError, match=r"22 SMPL-X body joints.*not 17"):
        denoise_motion(joints=np.zeros((10, 17, 3)))
    with pytest.raises(ValueError, match="exactly one"):
        denoise_motion()
    with pytest.raises(ValueError, match="exactly one"):
        denoise_motion(joints=joints, poses=(np.zeros((10, 3)), np.zeros((10, 21, 3)), None))
    with pytest.raises(ValueError, match="NaN"):
        denoise_motion(joints=np.full((10, 22, 3), np.nan))
    with pytest.raises(ValueError, match="fps"):
        denoise_motion(joints=joints, fps=0)
    with pytest.raises(ValueError, match="frames"):
        denoise_motion(joints=np.zeros((0, 22, 3)))
    with pytest.raises(ValueError, match="body_pose has 9 frames"):
        denoise_motion(poses=(np.zeros((10, 3)), np.zeros((9, 21, 3)), None))
    with pytest.raises(ValueError, match=r"body_pose must have shape \(T, 21, 3\)"):
        denoise_motion(poses=(np.zeros((10, 3)), np.zeros((10, 24, 3)), None))
    with pytest.raises(ValueError, match="iterations"):
        denoise_motion(joints=joints, iterations=-1)


def test_in_process_backend(clip: dict[str, np.ndarray]) -> None:
    backend = InProcessBackend()
    out = backend.denoise_motion(MotionInputs(joints=clip["noisy"][:12], iterations=5))
    assert out.joints.shape == (12, 22, 3) and out.pelvis.shape == (12, 3)
    assert out.prior_version is None or out.prior_version >= 1
    with pytest.raises(ValueError, match="exactly one"):
        backend.denoise_motion(MotionInputs())
    with pytest.raises(ValueError, match="both global_orient"):
        backend.denoise_motion(MotionInputs(body_pose=np.zeros((3, 21, 3), np.float32)))
