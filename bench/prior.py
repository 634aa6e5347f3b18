"""The pose prior on subjects it never saw: generation, completion, motion denoising, fitting.

    python bench/prior.py --data ../shared/data/mocap [--json out/prior.json] [--prior DIR]

``--data`` is any folder of BVH (or AMASS npz) files; it is ingested like the trainer does and
split by subject (``--valid-subjects``), and only the validation subjects are evaluated. The prior
is the newest published version in ``model_repository/pose_prior`` unless ``--prior`` names a
``prior.pt`` (or its folder). Prints one table per task; ``--json`` writes every figure.

- **Generation**: APD (average pairwise distance of the 22 body joints between samples, cm) and
  the share of samples with a joint outside Anny's joint limits, next to the same figures for
  validation poses.
- **Completion**: a hidden left leg / left arm, k hypotheses per pose; MPVPE (mm) on Anny's mesh
  (neutral body, root fixed), min and mean over k, against the nearest training pose on the
  visible joints and the mean training pose; also the hypotheses' per-joint mean rotation (the
  prior's point estimate).
- **Motion denoising**: 60-frame validation windows, Gaussian noise on the joints (std per
  coordinate); MPJPE (mm) of the prior-based denoiser against the best temporal Gaussian filter
  (its width chosen on training windows).
- **Fitting**: synthetic 2D projections (mediapipe-33 + hands) of validation poses with random
  headings, shapes and cameras, detector-like noise and dropped keypoints; 3D error of the fit
  with and without the prior.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import roma
import torch
import typer
from rich.console import Console
from rich.table import Table
from scipy.ndimage import gaussian_filter1d

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    DEFAULT_SUBJECTS,
    DatasetCacheOption,
    JsonOption,
    PriorOption,
    ValidSubjectsOption,
    apply_torch_threads,
    load_prior,
    load_split,
    procrustes_aligned,
    subject_list,
)
from shared.bodies.anny_model import FIT_KEYPOINTS, get_anny
from shared.bodies.base import ANNY_TO_CAMERA
from shared.bodies.limits import limit_violations
from shared.bodies.skeleton import BODY_JOINT_NAMES, BodySkeleton
from shared.bodies.smplx_convention import SMPLX_BODY_JOINTS, SMPLX_TO_ANNY
from shared.fitting.fit import BodyFitter
from shared.fitting.losses import project
from shared.inference.contracts import FitInputs
from shared.mocap.dataset import PoseDataset
from shared.prior import PosePrior, complete, generate
from shared.prior.pose_outputs import anny_pose_from_smplx, skeleton_joints

console = Console()

HIDDEN_PARTS = {
    "left_leg": ("left_hip", "left_knee", "left_ankle", "left_foot"),
    "left_arm": ("left_shoulder", "left_elbow", "left_wrist"),
}
# DPoser's figures on AMASS (SMPL-X), for context only.
DPOSER_AMASS = {"completion_leg_min_mm": 38.8, "completion_leg_mean_mm": 78.3, "denoise_mm": 19.87}


# --------------------------------------------------------------------------- helpers


def anny_vertices(body_pose: np.ndarray, chunk: int = 200) -> np.ndarray:
    """(B, 21, 3) -> (B, V, 3) Anny's neutral mesh, root fixed (metres)."""
    body = get_anny()
    out = []
    for start in range(0, len(body_pose), chunk):
        anny = anny_pose_from_smplx(body_pose[start : start + chunk])
        out.append(body.forward(anny.pose, anny.transl, anny.phenotype).vertices.numpy())
    return np.concatenate(out)


def mean_rotation(body_pose: np.ndarray) -> np.ndarray:
    """(N, 21, 3) -> (21, 3) per-joint chordal mean rotation."""
    matrices = roma.rotvec_to_rotmat(torch.as_tensor(body_pose, dtype=torch.float64))
    return roma.rotmat_to_rotvec(roma.special_procrustes(matrices.sum(0))).float().numpy()


def mean_rotation_per_row(body_pose: np.ndarray) -> np.ndarray:
    """(B, K, 21, 3) hypotheses -> (B, 21, 3) per-joint chordal mean rotation of each row."""
    matrices = roma.rotvec_to_rotmat(torch.as_tensor(body_pose, dtype=torch.float64))
    mean = roma.special_procrustes(matrices.sum(1))
    return roma.rotmat_to_rotvec(mean).float().numpy()


def pairwise_distance_cm(joints: np.ndarray) -> float:
    """APD: mean over pairs of samples of the mean joint distance, cm."""
    flat = torch.as_tensor(joints)
    distances = (flat[:, None] - flat[None]).norm(dim=-1).mean(-1)  # (N, N)
    n = len(flat)
    return float(distances.sum() / (n * (n - 1)) * 100)


# Anatomical limits in the SMPL-X convention: the largest rotation of each body joint from the
# T-pose (degrees), and hinges (knees, elbows) that bend one way about one axis.
def limit_violation_share(body_pose: np.ndarray) -> float:
    """Share of poses with some joint outside the anatomical limits."""
    return float(limit_violations(body_pose).mean())


# --------------------------------------------------------------------------- tasks


def bench_generation(prior: PosePrior, valid: PoseDataset, samples: int) -> dict[str, Any]:
    started = time.perf_counter()
    poses = generate(prior, np.arange(samples), steps=50)
    per_sample_ms = (time.perf_counter() - started) / samples * 1000
    rng = np.random.default_rng(0)
    reference = valid.body_pose[rng.choice(len(valid.body_pose), samples, replace=False)]
    return {
        "samples": samples,
        "apd_cm": pairwise_distance_cm(skeleton_joints(poses)),
        "apd_cm_validation_poses": pairwise_distance_cm(skeleton_joints(reference)),
        "limit_violations": limit_violation_share(poses),
        "limit_violations_validation_poses": limit_violation_share(reference),
        "ms_per_sample_batched": per_sample_ms,
    }


def bench_completion(
    prior: PosePrior, train: PoseDataset, valid: PoseDataset, cases: int, k: int
) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    truth = valid.body_pose[rng.choice(len(valid.body_pose), cases, replace=False)]
    truth_vertices = anny_vertices(truth)
    mean_pose = mean_rotation(train.body_pose)
    train_rot = roma.rotvec_to_rotmat(torch.as_tensor(train.body_pose))  # (N, 21, 3, 3)
    figures: dict[str, Any] = {"cases": cases, "hypotheses": k}
    for part, joints in HIDDEN_PARTS.items():
        hidden = np.array([name in joints for name in SMPLX_BODY_JOINTS])
        known = np.broadcast_to(~hidden, (cases * k, 21))
        started = time.perf_counter()
        hypotheses = complete(
            prior, np.repeat(truth, k, axis=0), known, seeds=np.arange(cases * k), steps=50
        )
        seconds = time.perf_counter() - started
        errors = vertex_error_mm(anny_vertices(hypotheses), np.repeat(truth_vertices, k, 0))
        errors = errors.reshape(cases, k)

        # Baselines: nearest training pose on the visible joints; the mean training pose.
        nearest = truth.copy()
        visible = torch.as_tensor(~hidden)
        for i, pose in enumerate(truth):
            rotation = roma.rotvec_to_rotmat(torch.as_tensor(pose))
            distance = (train_rot[:, visible] - rotation[visible]).square().sum((1, 2, 3))
            nearest[i, hidden] = train.body_pose[int(distance.argmin()), hidden]
        # The hypotheses' per-joint mean rotation: the prior's point estimate.
        consensus = mean_rotation_per_row(hypotheses.reshape(cases, k, 21, 3))
        mean_filled = truth.copy()
        mean_filled[:, hidden] = mean_pose[hidden]
        figures[part] = {
            "prior_min_mm": float(errors.min(1).mean()),
            "prior_mean_mm": float(errors.mean(1).mean()),
            "prior_consensus_mm": float(
                vertex_error_mm(anny_vertices(consensus), truth_vertices).mean()
            ),
            "nearest_training_pose_mm": float(
                vertex_error_mm(anny_vertices(nearest), truth_vertices).mean()
            ),
            "mean_pose_mm": float(
                vertex_error_mm(anny_vertices(mean_filled), truth_vertices).mean()
            ),
            "ms_per_pose_k_hypotheses": seconds / cases * 1000,
        }
    return figures


def vertex_error_mm(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return np.linalg.norm(predicted - truth, axis=-1).mean(-1) * 1000


def windows(dataset: PoseDataset, length: int) -> list[dict[str, np.ndarray]]:
    """Non-overlapping ``length``-frame windows of every clip."""
    out = []
    for clip in dataset.sequences():
        for start in range(0, len(clip["body_pose"]) - length + 1, length):
            out.append({k: v[start : start + length] for k, v in clip.items()})
    return out


def clean_joints(window: dict[str, np.ndarray], skeleton: BodySkeleton) -> np.ndarray:
    with torch.no_grad():
        return skeleton(
            torch.as_tensor(window["global_orient"]),
            torch.as_tensor(window["body_pose"]),
            torch.as_tensor(window["pelvis"]),
        ).numpy()


def bench_denoising(
    prior: PosePrior,
    train: PoseDataset,
    valid: PoseDataset,
    noise_levels_m: list[float],
    max_windows: int,
) -> dict[str, Any]:
    from shared.fitting.motion import denoise_motion

    skeleton = BodySkeleton.for_phenotype()
    rng = np.random.default_rng(2)
    valid_windows = windows(valid, 60)
    train_windows = windows(train, 60)
    pick = rng.choice(len(valid_windows), min(max_windows, len(valid_windows)), replace=False)
    tune = rng.choice(len(train_windows), min(20, len(train_windows)), replace=False)
    figures: dict[str, Any] = {"windows": len(pick), "frames_per_window": 60, "fps": valid.fps}
    for noise in noise_levels_m:
        # The Gaussian filter's width, chosen on training windows at this noise level.
        best_sigma, best_error = 0.0, math.inf
        for sigma in (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0):
            errors = []
            for i in tune:
                truth = clean_joints(train_windows[i], skeleton)
                noisy = truth + rng.normal(0, noise, truth.shape)
                smooth = gaussian_filter1d(noisy, sigma, axis=0, mode="nearest")
                errors.append(np.linalg.norm(smooth - truth, axis=-1).mean())
            if np.mean(errors) < best_error:
                best_sigma, best_error = sigma, float(np.mean(errors))
        noisy_err, filter_err, prior_err, seconds = [], [], [], []
        for i in pick:
            truth = clean_joints(valid_windows[i], skeleton)
            noisy = (truth + rng.normal(0, noise, truth.shape)).astype(np.float32)
            smooth = gaussian_filter1d(noisy, best_sigma, axis=0, mode="nearest")
            started = time.perf_counter()
            result = denoise_motion(joints=noisy, fps=valid.fps, prior=prior, seed=int(i))
            seconds.append(time.perf_counter() - started)
            noisy_err.append(np.linalg.norm(noisy - truth, axis=-1).mean())
            filter_err.append(np.linalg.norm(smooth - truth, axis=-1).mean())
            prior_err.append(np.linalg.norm(result.joints - truth, axis=-1).mean())
        figures[f"{noise * 1000:.0f}mm"] = {
            "noisy_mm": float(np.mean(noisy_err) * 1000),
            "gaussian_filter_mm": float(np.mean(filter_err) * 1000),
            "gaussian_sigma_frames": best_sigma,
            "prior_mm": float(np.mean(prior_err) * 1000),
            "seconds_per_window": float(np.mean(seconds)),
        }
    return figures


def synthetic_views(
    valid: PoseDataset, cases: int, noise_frac: float, drop: float, seed: int = 3
) -> tuple[FitInputs, np.ndarray]:
    """2D keypoints of validation poses on random bodies seen by random cameras, with noise and
    dropped keypoints; and the true 3D body joints (cases, 22, 3) in the camera frame."""
    body = get_anny()
    rng = np.random.default_rng(seed)
    poses = valid.body_pose[rng.choice(len(valid.body_pose), cases, replace=False)]
    anny = anny_pose_from_smplx(poses)
    # Heading about the vertical, a little pitch; then Anny's world into the camera.
    yaw = rng.uniform(-math.pi, math.pi, cases)
    pitch = rng.normal(0, 0.1, cases)
    turn = roma.rotvec_to_rotmat(
        torch.as_tensor(np.stack([pitch, 0 * yaw, yaw], -1), dtype=torch.float32)
    )
    to_camera = torch.as_tensor(ANNY_TO_CAMERA, dtype=torch.float32) @ turn
    pose = anny.pose.clone()
    pose[:, 0] = roma.rotmat_to_rotvec(to_camera @ roma.rotvec_to_rotmat(anny.pose[:, 0]))
    depth = rng.uniform(3.0, 6.0, cases)
    transl = torch.as_tensor(
        np.stack([rng.normal(0, 0.2, cases), rng.normal(0, 0.2, cases), depth], -1),
        dtype=torch.float32,
    )
    phenotype = torch.as_tensor(rng.uniform(0.2, 0.8, (cases, 6)), dtype=torch.float32)
    coeffs = body.blendshape_coefficients(phenotype)
    with torch.no_grad():
        transforms, bone_poses, _ = body.skeleton(pose, transl, coeffs)
        points = body.fit_keypoints(transforms, coeffs)
    focal = 1000.0
    camera = torch.tensor([[focal, focal, 500.0, 500.0]]).expand(cases, 4)
    pixels = project(points, camera).numpy()
    scale = np.linalg.norm(pixels.max(1) - pixels.min(1), axis=-1)
    pixels = pixels + rng.normal(0, 1, pixels.shape) * (noise_frac * scale)[:, None, None]
    confidence = np.where(rng.random(pixels.shape[:2]) < drop, 0.0, 0.9)
    confidence[:, ~body.keypoint_mapped.numpy()] = 0.0
    keypoints = np.concatenate([pixels, confidence[..., None]], -1).astype(np.float32)
    inputs = FitInputs(
        body=keypoints[:, :33],
        hands=keypoints[:, 33:].reshape(cases, 2, 21, 3),
        camera=camera.numpy().astype(np.float32),
    )
    assert len(FIT_KEYPOINTS) == keypoints.shape[1]
    return inputs, bone_poses[:, anchor_bones(), :3, 3].numpy()


def anchor_bones() -> list[int]:
    """The Anny bone whose head is each SMPL-X body joint (the feet: the big toe's first bone)."""
    body = get_anny()
    return [body.bone(SMPLX_TO_ANNY[name][0]) for name in BODY_JOINT_NAMES]


def bench_fitting(
    prior: PosePrior,
    valid: PoseDataset,
    cases: int,
    noise_frac: float,
    drop: float,
    chunk: int = 20,
) -> dict[str, Any]:
    inputs, truth = synthetic_views(valid, cases, noise_frac, drop)
    fitter = BodyFitter(prior=prior)
    figures: dict[str, Any] = {
        "cases": cases,
        "noise_of_person_size": noise_frac,
        "dropped_keypoints": drop,
    }
    for prior in ("none", "pose_prior"):
        joints, seconds = [], 0.0
        for start in range(0, cases, chunk):
            part = FitInputs(
                body=inputs.body[start : start + chunk],
                hands=inputs.hands[start : start + chunk],
                camera=inputs.camera[start : start + chunk],
                seed=start,
                prior=prior,
            )
            started = time.perf_counter()
            out = fitter(part)
            seconds += time.perf_counter() - started
            joints.append(out.joints[:, anchor_bones()])
        predicted = np.concatenate(joints)
        rooted = (predicted - predicted[:, :1]) - (truth - truth[:, :1])
        figures[prior] = {
            "mpjpe_mm": float(np.linalg.norm(rooted, axis=-1).mean() * 1000),
            "pa_mpjpe_mm": float(
                np.linalg.norm(procrustes_aligned(predicted, truth) - truth, axis=-1).mean() * 1000
            ),
            "seconds_per_person": seconds / cases,
        }
    return figures


# --------------------------------------------------------------------------- report


def show(figures: dict[str, Any]) -> None:
    console.print(
        f"[bold]Prior:[/] {figures['prior']}; validation subjects "
        f"{figures['valid_subjects']} ({figures['valid_frames']} frames)"
    )
    g = figures["generation"]
    table = Table(title="Generation")
    for column in ("", "APD (cm)", "outside joint limits"):
        table.add_column(column)
    table.add_row("prior samples", f"{g['apd_cm']:.1f}", f"{g['limit_violations']:.1%}")
    table.add_row(
        "validation poses",
        f"{g['apd_cm_validation_poses']:.1f}",
        f"{g['limit_violations_validation_poses']:.1%}",
    )
    console.print(table)

    c = figures["completion"]
    table = Table(title=f"Completion, MPVPE (mm), k = {c['hypotheses']}")
    for column in (
        "hidden",
        "prior min",
        "prior mean",
        "prior consensus",
        "nearest training",
        "mean pose",
    ):
        table.add_column(column)
    for part in HIDDEN_PARTS:
        row = c[part]
        table.add_row(
            part,
            f"{row['prior_min_mm']:.1f}",
            f"{row['prior_mean_mm']:.1f}",
            f"{row['prior_consensus_mm']:.1f}",
            f"{row['nearest_training_pose_mm']:.1f}",
            f"{row['mean_pose_mm']:.1f}",
        )
    console.print(table)

    if "denoising" in figures:
        d = figures["denoising"]
        table = Table(title="Motion denoising, MPJPE (mm)")
        for column in ("noise", "noisy", "Gaussian filter (sigma)", "prior", "s / 60 frames"):
            table.add_column(column)
        for level, row in d.items():
            if isinstance(row, dict):
                table.add_row(
                    level,
                    f"{row['noisy_mm']:.1f}",
                    f"{row['gaussian_filter_mm']:.1f} ({row['gaussian_sigma_frames']} frames)",
                    f"{row['prior_mm']:.1f}",
                    f"{row['seconds_per_window']:.2f}",
                )
        console.print(table)

    if "fitting" in figures:
        f = figures["fitting"]
        table = Table(title="Fitting to noisy 2D keypoints, body joints (mm)")
        for column in ("prior", "MPJPE", "PA-MPJPE", "s / person"):
            table.add_column(column)
        for prior in ("none", "pose_prior"):
            row = f[prior]
            table.add_row(
                prior,
                f"{row['mpjpe_mm']:.1f}",
                f"{row['pa_mpjpe_mm']:.1f}",
                f"{row['seconds_per_person']:.2f}",
            )
        console.print(table)


def main(
    data: Annotated[Path, typer.Option(help="Folder of BVH / AMASS npz files.")],
    json_path: JsonOption = None,
    prior_path: PriorOption = None,
    valid_subjects: ValidSubjectsOption = DEFAULT_SUBJECTS,
    dataset_cache: DatasetCacheOption = None,
    samples: Annotated[int, typer.Option(help="Generated poses.")] = 500,
    completion_cases: Annotated[int, typer.Option(help="Poses to complete.")] = 200,
    hypotheses: Annotated[int, typer.Option(help="k hypotheses per completion.")] = 10,
    denoise_windows: Annotated[int, typer.Option(help="60-frame windows per noise level.")] = 20,
    fitting_cases: Annotated[int, typer.Option(help="Synthetic people to fit.")] = 100,
) -> None:
    apply_torch_threads()
    subjects = subject_list(valid_subjects)
    train, valid = load_split(data, subjects, dataset_cache)
    prior, prior_name = load_prior(prior_path)
    figures: dict[str, Any] = {
        "prior": prior_name,
        "data": str(data),
        "valid_subjects": list(subjects),
        "valid_frames": len(valid.body_pose),
        "train_frames": len(train.body_pose),
        "dposer_amass_for_context": DPOSER_AMASS,
    }
    with console.status("generation"):
        figures["generation"] = bench_generation(prior, valid, samples)
    with console.status("completion"):
        figures["completion"] = bench_completion(prior, train, valid, completion_cases, hypotheses)
    with console.status("motion denoising"):
        figures["denoising"] = bench_denoising(
            prior, train, valid, [0.02, 0.04, 0.06], denoise_windows
        )
    with console.status("fitting"):
        figures["fitting"] = bench_fitting(prior, valid, fitting_cases, noise_frac=0.01, drop=0.15)
    show(figures)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    typer.run(main)
