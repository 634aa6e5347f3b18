"""Pose generation, pose completion and motion denoising: request in, result and files out.

The same functions serve the Celery workers (Triton backend when configured) and library use
(in-process backend): each takes a validated request from :mod:`shared.schemas` and an
:class:`~shared.inference.InferenceBackend`, asks the backend for the heavy part (the pose prior,
the motion denoiser) and turns its arrays into the result every route returns
(:func:`pose_samples`: SMPL-X parameters, the pose on Anny, the skeleton) plus artifacts (meshes,
BVH).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel

from shared.inference import InferenceBackend
from shared.schemas import (
    BODY_POSE_JOINTS,
    CONTENT_TYPES,
    MOTION_BVH_ARTIFACT,
    POSE_MESH_ARTIFACT,
    AnnyParams,
    MotionDenoiseRequest,
    MotionDenoiseResult,
    PoseCompleteRequest,
    PoseCompleteResult,
    PoseGenerateRequest,
    PoseGenerateResult,
    PoseOutput,
    PoseSample,
    SmplxParams,
)

if TYPE_CHECKING:
    from shared.prior.poses import AnnyPose

ProgressCallback = Callable[[float, str], None]


@dataclass
class PoseJobOutput:
    """A finished job: its result and the artifacts to store (name -> bytes)."""

    result: BaseModel
    artifacts: dict[str, bytes] = field(default_factory=dict)


def _no_progress(fraction: float, message: str) -> None:
    return None


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def _rounded(array: object, decimals: int) -> Any:
    """Nested lists of ``array``'s values to ``decimals`` places (in float64, so that the JSON
    shows 0.1, not float32's 0.10000000149011612)."""
    return np.asarray(array, np.float64).round(decimals).tolist()


def pose_samples(
    body_pose: np.ndarray, global_orient: np.ndarray | None = None
) -> tuple[list[PoseSample], AnnyPose]:
    """(B, 21, 3) body poses (+ (B, 3) orientations, default zero) -> one :class:`PoseSample`
    per pose, and the :class:`~shared.prior.poses.AnnyPose` they hold (for meshes)."""
    from shared.bodies.anny_model import get_anny
    from shared.prior.poses import anny_pose_from_smplx, skeleton_joints

    body_pose = np.asarray(body_pose, np.float32)
    count = len(body_pose)
    orient = np.zeros((count, 3), np.float32) if global_orient is None else global_orient
    orient = np.asarray(orient, np.float32).reshape(count, 3)
    anny = anny_pose_from_smplx(body_pose, orient)
    joints = skeleton_joints(body_pose, orient)
    labels = get_anny().phenotype_labels
    samples = []
    for i in range(count):
        zeros3 = [0.0, 0.0, 0.0]
        samples.append(
            PoseSample(
                smplx=SmplxParams(
                    global_orient=_rounded(orient[i], 6),
                    body_pose=_rounded(body_pose[i], 6),
                    left_hand_pose=[zeros3] * 15,
                    right_hand_pose=[zeros3] * 15,
                    jaw_pose=zeros3,
                    leye_pose=zeros3,
                    reye_pose=zeros3,
                    betas=[0.0] * 10,
                    expression=[0.0] * 10,
                    transl=zeros3,  # the pelvis stays at the rest pelvis (J0)
                    pelvis=_rounded(joints[i, 0], 6),
                ),
                anny=AnnyParams(
                    pose=_rounded(anny.pose[i], 5),
                    phenotype={k: float(v) for k, v in zip(labels, anny.phenotype[i], strict=True)},
                    transl=_rounded(anny.transl[i], 6),
                ),
                joints_3d=_rounded(joints[i], 5),
            )
        )
    return samples, anny


def _meshes(anny: AnnyPose, outputs: list[PoseOutput], fmt: str) -> dict[str, bytes]:
    from shared.prior.poses import pose_meshes

    if PoseOutput.mesh not in outputs:
        return {}
    return {POSE_MESH_ARTIFACT[fmt]: pose_meshes(anny, "obj" if fmt == "obj" else "glb")}


def generate_poses(
    request: PoseGenerateRequest,
    backend: InferenceBackend,
    progress: ProgressCallback | None = None,
) -> PoseJobOutput:
    """``request.n`` poses from the prior, pose i drawn with seed ``request.seed + i``."""
    from shared.prior.tasks import PriorTask

    report = progress or _no_progress
    timings: dict[str, float] = {}
    seeds = request.seeds()
    report(0.05, f"sampling {request.n} pose{'s' if request.n > 1 else ''}")
    started = time.perf_counter()
    rows = backend.prior(
        PriorTask.GENERATE,
        None,
        None,
        np.asarray(seeds, np.int64),
        request.steps,
        sampler=request.sampler,
    )
    timings["prior"] = _ms(started)
    report(0.6, "expressing the poses")
    started = time.perf_counter()
    samples, anny = pose_samples(rows.body_pose)
    timings["convert"] = _ms(started)
    started = time.perf_counter()
    artifacts = _meshes(anny, request.outputs, request.mesh_format)
    if artifacts:
        timings["mesh"] = _ms(started)
    result = PoseGenerateResult(
        prior_version=rows.version,
        seed=request.seed,
        seeds=seeds,
        steps=request.steps,
        sampler=request.sampler,
        poses=samples,
        artifacts={name: CONTENT_TYPES[name] for name in artifacts},
        timings_ms=timings,
    )
    return PoseJobOutput(result, artifacts)


def complete_pose(
    request: PoseCompleteRequest,
    backend: InferenceBackend,
    progress: ProgressCallback | None = None,
) -> PoseJobOutput:
    """``request.k`` completions of one pose: known joints kept, the others drawn from the
    prior (hypothesis i with seed ``request.seed + i``), and how much each joint varies."""
    from shared.prior.poses import rotation_spread_deg
    from shared.prior.tasks import PriorTask

    report = progress or _no_progress
    timings: dict[str, float] = {}
    seeds = request.seeds()
    known = np.asarray(request.known_mask(), np.bool_)
    pose = request.pose()
    report(0.05, f"completing {request.k} hypothes{'es' if request.k > 1 else 'is'}")
    started = time.perf_counter()
    rows = backend.prior(
        PriorTask.COMPLETE,
        np.repeat(pose[None], request.k, 0),
        np.repeat(known[None], request.k, 0),
        np.asarray(seeds, np.int64),
        request.steps,
    )
    timings["prior"] = _ms(started)
    # The prior keeps known joints; writing them back makes that exact whatever served it.
    completed = np.where(known[None, :, None], pose[None], rows.body_pose).astype(np.float32)
    report(0.6, "expressing the hypotheses")
    started = time.perf_counter()
    orient = np.repeat(request.global_orient()[None], request.k, 0)
    samples, anny = pose_samples(completed, orient)
    spread = np.where(known, 0.0, rotation_spread_deg(completed))
    timings["convert"] = _ms(started)
    started = time.perf_counter()
    artifacts = _meshes(anny, request.outputs, request.mesh_format)
    if artifacts:
        timings["mesh"] = _ms(started)
    result = PoseCompleteResult(
        prior_version=rows.version,
        seed=request.seed,
        seeds=seeds,
        steps=request.steps,
        hypotheses=samples,
        known_joints=[j for j, k in zip(BODY_POSE_JOINTS, known, strict=True) if k],
        hidden_joints=[j for j, k in zip(BODY_POSE_JOINTS, known, strict=True) if not k],
        spread_deg={j: round(float(s), 3) for j, s in zip(BODY_POSE_JOINTS, spread, strict=True)},
        artifacts={name: CONTENT_TYPES[name] for name in artifacts},
        timings_ms=timings,
    )
    return PoseJobOutput(result, artifacts)


def denoise_motion(
    request: MotionDenoiseRequest,
    backend: InferenceBackend,
    progress: ProgressCallback | None = None,
) -> PoseJobOutput:
    """A jittery motion (3D joints or per-frame poses) -> a smooth, plausible one and its BVH."""
    import torch

    from shared.bodies.skeleton import BodySkeleton
    from shared.inference import MotionInputs
    from shared.mocap.bvh import write_bvh

    report = progress or _no_progress
    timings: dict[str, float] = {}
    frames = request.frame_count()
    poses = request.poses

    def array(value: object, shape: tuple[int, ...]) -> np.ndarray:
        return np.asarray(value, np.float32).reshape(shape)

    inputs = MotionInputs(
        joints=None if request.joints is None else array(request.joints, (frames, 22, 3)),
        body_pose=None if poses is None else array(poses.body_pose, (frames, 21, 3)),
        global_orient=None if poses is None else array(poses.global_orient, (frames, 3)),
        pelvis=None if poses is None or poses.pelvis is None else array(poses.pelvis, (frames, 3)),
        fps=request.fps,
        iterations=request.iterations,
        seed=request.seed,
    )
    report(0.05, f"denoising {frames} frame{'s' if frames > 1 else ''}")
    started = time.perf_counter()
    out = backend.denoise_motion(inputs)
    timings["denoise"] = _ms(started)
    report(0.9, "writing the BVH")
    started = time.perf_counter()
    # The BVH's bones are the skeleton the denoiser fitted, so its joints are the result's.
    phenotype = torch.as_tensor(np.asarray(out.phenotype, np.float32)).reshape(1, -1)
    rest_joints = BodySkeleton.for_phenotype(phenotype).rest_joints
    with tempfile.TemporaryDirectory(prefix="bodyserve-bvh-") as folder:
        path = write_bvh(
            Path(folder) / MOTION_BVH_ARTIFACT,
            out.global_orient,
            out.body_pose,
            out.pelvis,
            request.fps,
            rest_joints=rest_joints,
        )
        bvh = path.read_bytes()
    timings["bvh"] = _ms(started)
    result = MotionDenoiseResult(
        frames=frames,
        fps=request.fps,
        global_orient=_rounded(out.global_orient, 6),
        body_pose=_rounded(out.body_pose, 6),
        pelvis=_rounded(out.pelvis, 6),
        joints=_rounded(out.joints, 5),
        prior_version=out.prior_version,
        artifacts={MOTION_BVH_ARTIFACT: CONTENT_TYPES[MOTION_BVH_ARTIFACT]},
        timings_ms=timings,
    )
    return PoseJobOutput(result, {MOTION_BVH_ARTIFACT: bvh})
