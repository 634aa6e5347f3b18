"""2D -> 3D lifting with N hypotheses on subjects it never saw, against the deterministic fit.

    python bench/lifting.py [--data ../shared/data/mocap] [--json out/lifting.json]
                            [--cases 100] [--hypotheses 10] [--prior DIR] [--seed 0]

``--data`` is any folder of BVH (or AMASS npz) files, ingested like the trainer does and split by
subject (``--valid-subjects``); only validation frames are used. The prior is the newest
published version in ``model_repository/pose_prior`` unless ``--prior`` names a ``prior.pt``
(or its folder). Prints three tables (accuracy, calibration, latency); ``--json`` writes every
figure.

- **Cases**: validation poses (their ``body_pose`` and mocap ``global_orient``, so the natural
  lean of the motion stays) turned to a random heading, seen by a random camera (pitch and roll
  within 15 degrees, 2.5-6 m away, 40-70 degree field of view, 1000 x 1000 pixels) with the whole
  person in view. Ground truth: the neutral Anny body's 22 SMPL-X joints and mediapipe-33
  keypoints (:class:`~shared.lifting.keypoints.KeypointSkeleton`), projected to 2D; confidence 1
  on the keypoints Anny has, 0 on the others.
- **Conditions**: ``clean``; ``noisy`` (Gaussian noise of 1.5 % of the person's box diagonal on
  every keypoint, 10 % of the keypoints dropped); ``occluded`` (``noisy`` and also one lower arm
  with its hand, or one lower leg with its foot, dropped: elbow or knee down); ``noisy_shapes``
  (``noisy``, the people given random Anny body shapes: lifting assumes the neutral body, so this
  is the fair comparison with the fit, which finds the shape).
- **Methods**: :func:`~shared.lifting.lift.lift` with N hypotheses: the representative (the
  summary's medoid), the best of N (per metric the hypothesis nearest the truth, as GFPose
  counts; the JSON also has the PA-MPJPE of the lowest-MPJPE hypothesis) and the mean of the
  hypotheses; the deterministic fit (:class:`~shared.fitting.fit.BodyFitter`, 33 body keypoints,
  no hands) with ``prior="none"`` and ``prior="pose_prior"``, measured at the fitted Anny body's
  own joints (:func:`anny_body_joints`; the JSON also has the joints of the SMPL-X-convention
  parameters the API would return, which drop the bends inside each joint's group of Anny bones).
- **Accuracy**: MPJPE (pelvis-aligned) and PA-MPJPE (similarity Procrustes) over the 22 body
  joints, mm; mean reprojection error against the 2D given, px (best of N: of the lowest-MPJPE
  hypothesis).
- **Calibration**: the share of (joint, axis) pairs, pelvis-relative, pelvis excluded, whose true
  position lies within k spreads (per-axis standard deviation of the hypotheses,
  :func:`~shared.lifting.summary.summarise`) of the hypotheses' mean, k = 1, 2 (a Gaussian: 68 %,
  95 %); the mean spread.
- **Latency**: one person (S = 1, T = 1), N = 1, 10, 50; median and p90 over ``--latency-runs``
  runs after two warm-up runs, with the torch threads the process has.

In the first three conditions the truth is posed on the neutral body, which is the body lifting
assumes: lifting gets the proportions right for free, the fit has to find them (PA-MPJPE's scale
forgives part of that); ``noisy_shapes`` removes that advantage.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import roma
import torch
import typer
from rich.console import Console
from rich.table import Table

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
from shared.bodies.anny_model import get_anny
from shared.bodies.skeleton import BODY_JOINT_NAMES, BodySkeleton
from shared.bodies.smplx_convention import PARALLEL_GROUPS, SMPLX_TO_ANNY, anny_to_smplx
from shared.fitting.fit import BodyFitter
from shared.fitting.losses import person_scale, project
from shared.inference.contracts import FitInputs, FitOutputs, PriorChoice
from shared.lifting.keypoints import LIFT_KEYPOINTS, KeypointSkeleton
from shared.lifting.lift import lift
from shared.lifting.summary import summarise
from shared.mocap.dataset import PoseDataset
from shared.prior import PosePrior
from shared.settings import get_settings

console = Console()

IMAGE_SIZE = 1000  # pixels, square
FOV_DEG = (40.0, 70.0)
DISTANCE_M = (2.5, 6.0)
TILT_DEG = 15.0  # camera pitch and roll, at most
MARGIN = 0.02  # every keypoint at least this share of the image inside its border

NOISE_OF_BOX = 0.015  # keypoint noise std, share of the person's box diagonal
DROPPED = 0.10  # share of the mapped keypoints dropped
# Occluded parts: the keypoints hidden, and the body joints they leave unseen.
OCCLUDED_PARTS = {
    f"{side}_{part}": (
        tuple(f"{side}_{k}" for k in keypoints),
        tuple(f"{side}_{j}" for j in joints),
    )
    for side in ("left", "right")
    for part, keypoints, joints in (
        ("lower_arm", ("elbow", "wrist", "pinky", "index", "thumb"), ("elbow", "wrist")),
        ("lower_leg", ("knee", "ankle", "heel", "foot_index"), ("knee", "ankle", "foot")),
    )
}
CONDITIONS = ("clean", "noisy", "occluded", "noisy_shapes")
# Body shapes of the "noisy_shapes" people: Anny phenotype values drawn uniformly in this range.
PHENOTYPE_RANGE = (0.1, 0.9)
FIT_PRIORS: tuple[PriorChoice, ...] = ("none", "pose_prior")
LIFT_ROWS = ("representative", "best_of_n", "mean")
LATENCY_HYPOTHESES = (1, 10, 50)
GAUSSIAN_WITHIN = {1: 0.683, 2: 0.954}
# Context only: other data (Human3.6M, 17 joints), other 2D (a detector's). paperswithcode's
# figures for GFPose (CVPR 2023), 200 hypotheses, best of them.
GFPOSE_H36M = {
    "best_of_200_mpjpe_mm": 35.1,
    "best_of_200_pa_mpjpe_mm": 30.5,
    "best_of_200_mpjpe_mm_ground_truth_2d": 16.9,
}


# --------------------------------------------------------------------------- cases


@dataclass
class Cases:
    """C synthetic people seen by their cameras."""

    keypoints: np.ndarray  # (C, 33, 3) LIFT_KEYPOINTS pixels + confidence
    camera: np.ndarray  # (C, 4) fx, fy, cx, cy
    joints: np.ndarray  # (C, 22, 3) true body joints, camera frame, metres
    hidden: np.ndarray  # (C, 22) bool: joints whose keypoints an occlusion removed


def _rotation(axis: int, angle: np.ndarray) -> torch.Tensor:
    rotvec = np.zeros((len(angle), 3))
    rotvec[:, axis] = angle
    return roma.rotvec_to_rotmat(torch.as_tensor(rotvec, dtype=torch.float64))


def make_cases(valid: PoseDataset, count: int, seed: int, varied_shapes: bool = False) -> Cases:
    """Clean 2D views of ``count`` validation frames (see the module's docstring); with
    ``varied_shapes`` each person has a random Anny body shape instead of the neutral one."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(valid.body_pose), count, replace=False)
    body_pose = torch.as_tensor(valid.body_pose[rows], dtype=torch.float64)
    mocap = roma.rotvec_to_rotmat(torch.as_tensor(valid.global_orient[rows], dtype=torch.float64))
    # SMPL-X's world (Y up) turned about Y, into a level OpenCV camera (y down, z ahead, the body
    # facing it at zero heading), then the camera's pitch (about x) and roll (about z).
    facing = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    heading = _rotation(1, rng.uniform(-math.pi, math.pi, count))
    tilt_rad = math.radians(TILT_DEG)
    pitch = _rotation(0, rng.uniform(-tilt_rad, tilt_rad, count))
    roll = _rotation(2, rng.uniform(-tilt_rad, tilt_rad, count))
    orient = roma.rotmat_to_rotvec(pitch @ roll @ facing @ heading @ mocap)

    skeleton = KeypointSkeleton.neutral()
    with torch.no_grad():
        posed = skeleton(orient, body_pose, torch.zeros(count, 3, dtype=torch.float64))
        joints, points = posed[0].numpy(), posed[1].numpy()
        if varied_shapes:
            for i, phenotype in enumerate(rng.uniform(*PHENOTYPE_RANGE, (count, 6))):
                shaped = KeypointSkeleton.for_phenotype(phenotype.tolist())
                posed = shaped(orient[i : i + 1], body_pose[i : i + 1], torch.zeros(1, 3))
                joints[i], points[i] = posed[0][0].numpy(), posed[1][0].numpy()
    mapped = skeleton.mapped.numpy()

    # Field of view, distance and where the pelvis falls in the image: drawn again for the
    # people that would not be wholly in view.
    camera = np.zeros((count, 4))
    pelvis = np.zeros((count, 3))
    todo = np.arange(count)
    low, high = MARGIN * IMAGE_SIZE, (1 - MARGIN) * IMAGE_SIZE
    for _ in range(200):
        n = len(todo)
        focal = IMAGE_SIZE / 2 / np.tan(np.radians(rng.uniform(*FOV_DEG, n)) / 2)
        depth = rng.uniform(*DISTANCE_M, n)
        centre = rng.uniform(0.3, 0.7, (n, 2)) * IMAGE_SIZE
        camera[todo] = np.column_stack([focal, focal, np.full((n, 2), IMAGE_SIZE / 2)])
        offset = (centre - IMAGE_SIZE / 2) * (depth / focal)[:, None]
        pelvis[todo] = np.column_stack([offset, depth])
        placed = points[todo][:, mapped] + pelvis[todo, None]
        pixels = project(torch.as_tensor(placed), torch.as_tensor(camera[todo])).numpy()
        inside = (placed[..., 2] > 0.5).all(-1) & ((pixels > low) & (pixels < high)).all((-1, -2))
        todo = todo[~inside]
        if len(todo) == 0:
            break
    else:
        raise RuntimeError(f"{len(todo)} people never fitted in the image")

    points = points + pelvis[:, None]
    pixels = project(torch.as_tensor(points), torch.as_tensor(camera)).numpy()
    confidence = np.broadcast_to(mapped.astype(np.float64), (count, len(LIFT_KEYPOINTS)))
    return Cases(
        keypoints=np.concatenate([pixels, confidence[..., None]], -1).astype(np.float32),
        camera=camera.astype(np.float32),
        joints=(joints + pelvis[:, None]).astype(np.float32),
        hidden=np.zeros((count, len(BODY_JOINT_NAMES)), bool),
    )


def degrade(clean: Cases, condition: str, seed: int) -> Cases:
    """The same people under ``condition``: noise, dropped keypoints, an occluded limb."""
    if condition == "clean":
        return clean
    rng = np.random.default_rng(seed)
    keypoints = clean.keypoints.copy()
    count = len(keypoints)
    scale = person_scale(torch.as_tensor(keypoints)).numpy()
    keypoints[..., :2] += rng.normal(0, 1, (count, len(LIFT_KEYPOINTS), 2)) * (
        NOISE_OF_BOX * scale[:, None, None]
    )
    mapped = np.flatnonzero(KeypointSkeleton.neutral().mapped.numpy())
    dropped = round(DROPPED * len(mapped))
    for i in range(count):
        keypoints[i, rng.choice(mapped, dropped, replace=False), 2] = 0.0
    hidden = clean.hidden.copy()
    if condition == "occluded":
        parts = list(OCCLUDED_PARTS.values())
        for i, part in enumerate(rng.integers(len(parts), size=count)):
            names, joints = parts[part]
            keypoints[i, [LIFT_KEYPOINTS.index(n) for n in names], 2] = 0.0
            hidden[i, [BODY_JOINT_NAMES.index(j) for j in joints]] = True
    elif condition != "noisy":
        raise ValueError(f"unknown condition {condition!r}")
    return replace(clean, keypoints=keypoints, hidden=hidden)


# --------------------------------------------------------------------------- metrics


def joint_errors_mm(predicted: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., 22, 3) predicted and truth -> MPJPE (pelvis-aligned) and PA-MPJPE per row, mm."""
    shape = predicted.shape[:-2]
    predicted = predicted.reshape(-1, 22, 3).astype(np.float64)
    truth = np.broadcast_to(truth, (*shape, 22, 3)).reshape(-1, 22, 3).astype(np.float64)
    rooted = (predicted - predicted[:, :1]) - (truth - truth[:, :1])
    mpjpe = np.linalg.norm(rooted, axis=-1).mean(-1) * 1000
    aligned = procrustes_aligned(predicted, truth)
    pa = np.linalg.norm(aligned - truth, axis=-1).mean(-1) * 1000
    return mpjpe.reshape(shape), pa.reshape(shape)


def calibration(hypotheses: np.ndarray, truth: np.ndarray, hidden: np.ndarray) -> dict[str, Any]:
    """(C, N, 22, 3) hypotheses, (C, 22, 3) truth, (C, 22) hidden joints -> calibration figures."""
    summary = summarise(hypotheses)
    relative = truth - truth[:, :1]
    deviation = np.abs(relative - summary.mean_joints)[:, 1:]  # (C, 21, 3), pelvis excluded
    spread = summary.spread_mm[:, 1:, None] / 1000
    figures: dict[str, Any] = {
        f"within_{k}_spread": float((deviation <= k * spread).mean()) for k in GAUSSIAN_WITHIN
    }
    figures["mean_spread_mm"] = float(summary.spread_mm[:, 1:].mean())
    figures["ambiguous_joints"] = float(summary.ambiguous[:, 1:].mean())
    if hidden.any():
        figures["mean_spread_mm_hidden_joints"] = float(summary.spread_mm[hidden].mean())
        seen = ~hidden
        seen[:, 0] = False
        figures["mean_spread_mm_seen_joints"] = float(summary.spread_mm[seen].mean())
    return figures


# --------------------------------------------------------------------------- methods


def run_lift(
    prior: PosePrior, cases: Cases, hypotheses: int, seed: int, chunk: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Accuracy rows (representative, best of N, mean) and calibration of ``lift``."""
    joints, errors, seconds = [], [], 0.0
    for start in range(0, len(cases.camera), chunk):
        stop = min(start + chunk, len(cases.camera))
        started = time.perf_counter()
        result = lift(
            prior,
            cases.keypoints[start:stop, None],
            cases.camera[start:stop],
            hypotheses,
            seeds=np.arange(start, stop) + seed,
        )
        seconds += time.perf_counter() - started
        joints.append(result.joints[:, 0])  # (S, N, 22, 3)
        errors.append(result.reprojection_error[:, 0])
    hyp = np.concatenate(joints)
    reprojection = np.concatenate(errors)  # (C, N)
    truth = cases.joints
    mpjpe, pa = joint_errors_mm(hyp, truth[:, None])  # (C, N)
    summary = summarise(hyp)
    rep, best = summary.representative, mpjpe.argmin(1)
    rows = np.arange(len(hyp))
    # The mean of the hypotheses: pelvis-relative, so put it back on the representative's pelvis.
    mean_joints = summary.mean_joints + hyp[rows, rep, :1]
    mean_mpjpe, mean_pa = joint_errors_mm(mean_joints, truth)
    per_person = seconds / len(hyp)
    accuracy = {
        "representative": {
            "mpjpe_mm": float(mpjpe[rows, rep].mean()),
            "pa_mpjpe_mm": float(pa[rows, rep].mean()),
            "reprojection_px": float(reprojection[rows, rep].mean()),
            "seconds_per_person": per_person,
        },
        "best_of_n": {
            "mpjpe_mm": float(mpjpe.min(1).mean()),
            "pa_mpjpe_mm": float(pa.min(1).mean()),
            # One hypothesis for both: the one with the lowest MPJPE.
            "pa_mpjpe_mm_of_best_mpjpe": float(pa[rows, best].mean()),
            "reprojection_px": float(reprojection[rows, best].mean()),
            "reprojection_px_all_hypotheses": float(reprojection.mean()),
            "seconds_per_person": per_person,
        },
        "mean": {
            "mpjpe_mm": float(mean_mpjpe.mean()),
            "pa_mpjpe_mm": float(mean_pa.mean()),
            "reprojection_px": None,  # not a pose: nothing to reproject
            "seconds_per_person": per_person,
        },
    }
    return accuracy, calibration(hyp, truth, cases.hidden)


def anny_body_joints(bone_heads: np.ndarray) -> np.ndarray:
    """(P, 104, 3) Anny bone heads -> (P, 22, 3) the SMPL-X body joints where the adapter's rest
    skeleton puts them (``tpose_joints``): the head of each joint's first Anny bone, the feet at
    the mean head of the toes. Exact on a body posed from SMPL-X parameters, so the truth and the
    fit are measured at the same points."""
    body = get_anny()
    joints = []
    for name in BODY_JOINT_NAMES:
        group = SMPLX_TO_ANNY[name]
        bones = group if name in PARALLEL_GROUPS else group[:1]
        joints.append(bone_heads[:, [body.bone(b) for b in bones]].mean(1))
    return np.stack(joints, 1)


def smplx_joints(fitted: FitOutputs) -> np.ndarray:
    """(P, 22, 3) body joints of the SMPL-X-convention parameters the API returns for fitted
    Anny bodies, posed on each fitted phenotype's skeleton. Not the fitted body's own joints: a
    fit bends every Anny bone, the adapter reads one rotation per SMPL-X joint."""
    body = get_anny()
    phenotype = torch.as_tensor(fitted.phenotype)
    with torch.no_grad():
        coeffs = body.blendshape_coefficients(phenotype)
        _, bones, rest = body.skeleton(
            torch.as_tensor(fitted.pose), torch.as_tensor(fitted.transl), coeffs
        )
        params = anny_to_smplx(bones, rest, world_to_frame=torch.eye(3))
        skeleton = BodySkeleton.for_phenotype(phenotype)
        joints = skeleton(params["global_orient"], params["body_pose"], params["pelvis"])
    return joints.numpy()


def run_fit(
    fitter: BodyFitter, cases: Cases, choice: PriorChoice, seed: int, chunk: int
) -> dict[str, Any]:
    """Accuracy of the deterministic fit to the 33 body keypoints (no hands)."""
    joints, adapter, errors, seconds = [], [], [], 0.0
    for start in range(0, len(cases.camera), chunk):
        stop = min(start + chunk, len(cases.camera))
        inputs = FitInputs(
            body=cases.keypoints[start:stop],
            hands=np.zeros((stop - start, 2, 21, 3), np.float32),
            camera=cases.camera[start:stop],
            seed=seed + start,
            prior=choice,
        )
        started = time.perf_counter()
        fitted = fitter(inputs)
        seconds += time.perf_counter() - started
        joints.append(anny_body_joints(fitted.joints))
        adapter.append(smplx_joints(fitted))
        errors.append(fitted.reprojection_error)
    mpjpe, pa = joint_errors_mm(np.concatenate(joints), cases.joints)
    adapter_mpjpe, adapter_pa = joint_errors_mm(np.concatenate(adapter), cases.joints)
    return {
        "mpjpe_mm": float(mpjpe.mean()),
        "pa_mpjpe_mm": float(pa.mean()),
        "reprojection_px": float(np.concatenate(errors).mean()),
        "seconds_per_person": seconds / len(mpjpe),
        "mpjpe_mm_of_smplx_parameters": float(adapter_mpjpe.mean()),
        "pa_mpjpe_mm_of_smplx_parameters": float(adapter_pa.mean()),
    }


def latency(prior: PosePrior, cases: Cases, runs: int, warmup: int = 2) -> dict[str, Any]:
    """Wall time of lifting one person, per N: median and p90 over ``runs`` runs, ms."""
    figures: dict[str, Any] = {}
    for n in LATENCY_HYPOTHESES:
        times = []
        for i in range(warmup + runs):
            row = i % len(cases.camera)
            started = time.perf_counter()
            lift(prior, cases.keypoints[row : row + 1, None], cases.camera[row : row + 1], n, [i])
            times.append((time.perf_counter() - started) * 1000)
        measured = np.array(times[warmup:])
        figures[str(n)] = {
            "median_ms": float(np.median(measured)),
            "p90_ms": float(np.percentile(measured, 90)),
            "runs": runs,
        }
    return figures


# --------------------------------------------------------------------------- report


def _mm(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def show(figures: dict[str, Any]) -> None:
    console.print(
        f"[bold]Prior:[/] {figures['prior']}; validation subjects {figures['valid_subjects']} "
        f"({figures['valid_frames']} frames); {figures['cases']} people per condition, "
        f"N = {figures['hypotheses']} hypotheses; torch threads {figures['torch_threads']}"
    )
    n = figures["hypotheses"]
    table = Table(title="Lifting accuracy, 22 body joints")
    for column in ("condition", "method", "MPJPE (mm)", "PA-MPJPE (mm)", "reproj. (px)", "s/pers"):
        table.add_column(column)
    names = {
        "representative": f"lift, representative of {n}",
        "best_of_n": f"lift, best of {n}",
        "mean": f"lift, mean of {n}",
        "none": "fit, prior none",
        "pose_prior": "fit, pose_prior",
    }
    for condition, rows in figures["accuracy"].items():
        for key, row in rows.items():
            table.add_row(
                condition,
                names[key],
                _mm(row["mpjpe_mm"]),
                _mm(row["pa_mpjpe_mm"]),
                _mm(row["reprojection_px"]),
                f"{row['seconds_per_person']:.2f}",
            )
        table.add_section()
    console.print(table)

    table = Table(title=f"Calibration of the {n} hypotheses (pelvis-relative joints and axes)")
    for column in (
        "condition",
        "within 1 spread (68 %)",
        "within 2 spreads (95 %)",
        "mean spread (mm)",
        "ambiguous joints",
        "spread hidden / seen (mm)",
    ):
        table.add_column(column)
    for condition, row in figures["calibration"].items():
        hidden = (
            f"{row['mean_spread_mm_hidden_joints']:.1f} / {row['mean_spread_mm_seen_joints']:.1f}"
            if "mean_spread_mm_hidden_joints" in row
            else "-"
        )
        table.add_row(
            condition,
            f"{row['within_1_spread']:.1%}",
            f"{row['within_2_spread']:.1%}",
            f"{row['mean_spread_mm']:.1f}",
            f"{row['ambiguous_joints']:.1%}",
            hidden,
        )
    console.print(table)

    if "latency" in figures:
        table = Table(title=f"Latency, one person, {figures['torch_threads']} torch thread(s)")
        for column in ("N", "median (ms)", "p90 (ms)", "runs"):
            table.add_column(column)
        for key, row in figures["latency"].items():
            table.add_row(key, f"{row['median_ms']:.0f}", f"{row['p90_ms']:.0f}", str(row["runs"]))
        console.print(table)
    g = figures["gfpose_h36m_for_context"]
    console.print(
        f"Context only (other data, Human3.6M, detected 2D): GFPose reports best-of-200 MPJPE "
        f"{g['best_of_200_mpjpe_mm']} mm, PA-MPJPE {g['best_of_200_pa_mpjpe_mm']} mm "
        f"({g['best_of_200_mpjpe_mm_ground_truth_2d']} mm MPJPE from ground-truth 2D)."
    )


def main(
    data: Annotated[
        Path | None,
        typer.Option(help="Folder of BVH / AMASS npz files; default: ../shared/data/mocap."),
    ] = None,
    json_path: JsonOption = None,
    prior_path: PriorOption = None,
    valid_subjects: ValidSubjectsOption = DEFAULT_SUBJECTS,
    dataset_cache: DatasetCacheOption = None,
    cases: Annotated[int, typer.Option(help="People per condition.")] = 100,
    hypotheses: Annotated[int, typer.Option(help="N hypotheses per person.")] = 10,
    seed: Annotated[int, typer.Option(help="Seeds the cases, the noise and the samplers.")] = 0,
    chunk: Annotated[int, typer.Option(help="People per lift / fit batch.")] = 25,
    latency_runs: Annotated[int, typer.Option(help="Timed runs per N (0: skip).")] = 15,
    fit: Annotated[bool, typer.Option(help="Run the deterministic-fit baseline.")] = True,
) -> None:
    threads = apply_torch_threads()
    # The shared data beside the checkout (../shared/data), or BODYSERVE_DATA_DIR.
    data = data or get_settings().data_dir / "mocap"
    subjects = subject_list(valid_subjects)
    _, valid = load_split(data, subjects, dataset_cache)
    if cases > len(valid.body_pose):
        raise typer.BadParameter(f"--cases {cases}: only {len(valid.body_pose)} frames")
    prior, prior_name = load_prior(prior_path)
    figures: dict[str, Any] = {
        "prior": prior_name,
        "data": str(data),
        "valid_subjects": list(subjects),
        "valid_frames": len(valid.body_pose),
        "cases": cases,
        "hypotheses": hypotheses,
        "seed": seed,
        "torch_threads": threads,
        "setup": {
            "image_px": IMAGE_SIZE,
            "fov_deg": FOV_DEG,
            "distance_m": DISTANCE_M,
            "tilt_deg": TILT_DEG,
            "noise_of_box_diagonal": NOISE_OF_BOX,
            "dropped_keypoints": DROPPED,
            "occluded_parts": list(OCCLUDED_PARTS),
        },
        "gfpose_h36m_for_context": GFPOSE_H36M,
        "accuracy": {},
        "calibration": {},
    }
    clean = make_cases(valid, cases, seed)
    shaped = make_cases(valid, cases, seed, varied_shapes=True)
    fitter: BodyFitter | None = None
    for index, condition in enumerate(CONDITIONS):
        if condition == "noisy_shapes":
            people = degrade(shaped, "noisy", seed + 1 + index)
        else:
            people = degrade(clean, condition, seed + 1 + index)
        with console.status(f"{condition}: lifting"):
            accuracy, calibrated = run_lift(prior, people, hypotheses, seed, chunk)
        figures["accuracy"][condition] = accuracy
        figures["calibration"][condition] = calibrated
        for choice in FIT_PRIORS if fit else ():
            with console.status(f"{condition}: fitting, prior {choice}"):
                fitter = fitter or BodyFitter(prior=prior)
                accuracy[choice] = run_fit(fitter, people, choice, seed, chunk)
    if latency_runs > 0:
        with console.status("latency"):
            noisy = degrade(clean, "noisy", seed + 1)
            figures["latency"] = latency(prior, noisy, latency_runs)
    show(figures)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    typer.run(main)
