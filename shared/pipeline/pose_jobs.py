"""Pose generation, completion, lifting and motion denoising: request in, result and files out.

The same functions serve the Celery workers (Triton backend when configured) and library use
(in-process backend): each takes a validated request from :mod:`shared.schemas` and an
:class:`~shared.inference.InferenceBackend`, asks the backend for the heavy part (the pose prior,
the prior-guided lifting sampler, the motion denoiser) and turns its arrays into the result
every route returns (:func:`pose_samples`: SMPL-X parameters, the pose on Anny, the skeleton;
lifting: :func:`lift_poses`) plus artifacts (meshes, BVH).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel

from shared.bodies.anny_model import get_anny
from shared.bodies.joint_names import BODY_POSE_JOINTS
from shared.bodies.skeleton import BodySkeleton
from shared.camera import default_camera
from shared.inference.contracts import (
    InferenceBackend,
    InferenceUnavailable,
    LiftInputs,
    LiftOutputs,
    MotionInputs,
    PriorInputs,
)
from shared.io.exports import export_meshes
from shared.keypoints.formats import FORMATS
from shared.lifting.results import lifted_frames, rounded, to_lift_keypoints
from shared.lifting.summary import AMBIGUOUS_SPREAD_MM
from shared.mocap.bvh import write_bvh
from shared.prior.pose_outputs import (
    AnnyPose,
    anny_pose_from_smplx,
    anny_pose_in_camera,
    pose_meshes,
    rotation_spread_deg,
    skeleton_joints,
)
from shared.prior.rows import PriorTask
from shared.schemas.artifacts import CONTENT_TYPES, MOTION_BVH_ARTIFACT, POSE_MESH_ARTIFACT
from shared.schemas.bodies import AnnyParams, Camera, SmplxParams
from shared.schemas.lifting import (
    LiftedTrack,
    PoseLiftRequest,
    PoseLiftResult,
)
from shared.schemas.poses import (
    MotionDenoiseRequest,
    MotionDenoiseResult,
    PoseCompleteRequest,
    PoseCompleteResult,
    PoseGenerateRequest,
    PoseGenerateResult,
    PoseOutput,
    PoseSample,
)

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


def pose_samples(
    body_pose: np.ndarray, global_orient: np.ndarray | None = None
) -> tuple[list[PoseSample], AnnyPose]:
    """(B, 21, 3) body poses (+ (B, 3) orientations, default zero) -> one :class:`PoseSample`
    per pose, and the :class:`~shared.prior.pose_outputs.AnnyPose` they hold (for meshes)."""

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
                    global_orient=rounded(orient[i], 6),
                    body_pose=rounded(body_pose[i], 6),
                    left_hand_pose=[zeros3] * 15,
                    right_hand_pose=[zeros3] * 15,
                    jaw_pose=zeros3,
                    leye_pose=zeros3,
                    reye_pose=zeros3,
                    betas=[0.0] * 10,
                    expression=[0.0] * 10,
                    transl=zeros3,  # the pelvis stays at the rest pelvis (J0)
                    pelvis=rounded(joints[i, 0], 6),
                ),
                anny=AnnyParams(
                    pose=rounded(anny.pose[i], 5),
                    phenotype={k: float(v) for k, v in zip(labels, anny.phenotype[i], strict=True)},
                    transl=rounded(anny.transl[i], 6),
                ),
                joints_3d=rounded(joints[i], 5),
            )
        )
    return samples, anny


def _meshes(anny: AnnyPose, outputs: list[PoseOutput], fmt: str) -> dict[str, bytes]:

    if PoseOutput.mesh not in outputs:
        return {}
    return {POSE_MESH_ARTIFACT[fmt]: pose_meshes(anny, "obj" if fmt == "obj" else "glb")}


def generate_poses(
    request: PoseGenerateRequest,
    backend: InferenceBackend,
    progress: ProgressCallback | None = None,
) -> PoseJobOutput:
    """``request.n`` poses from the prior, pose i drawn with seed ``request.seed + i``."""

    report = progress or _no_progress
    timings: dict[str, float] = {}
    seeds = request.seeds()
    report(0.05, f"sampling {request.n} pose{'s' if request.n > 1 else ''}")
    started = time.perf_counter()
    rows = backend.prior(
        PriorInputs(
            PriorTask.GENERATE, np.asarray(seeds, np.int64), request.steps, sampler=request.sampler
        )
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

    report = progress or _no_progress
    timings: dict[str, float] = {}
    seeds = request.seeds()
    known = np.asarray(request.known_mask(), np.bool_)
    pose = request.pose()
    report(0.05, f"completing {request.k} hypothes{'es' if request.k > 1 else 'is'}")
    started = time.perf_counter()
    rows = backend.prior(
        PriorInputs(
            PriorTask.COMPLETE,
            np.asarray(seeds, np.int64),
            request.steps,
            pose=np.repeat(pose[None], request.k, 0),
            known=np.repeat(known[None], request.k, 0),
        )
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
        global_orient=rounded(out.global_orient, 6),
        body_pose=rounded(out.body_pose, 6),
        pelvis=rounded(out.pelvis, 6),
        joints=rounded(out.joints, 5),
        prior_version=out.prior_version,
        artifacts={MOTION_BVH_ARTIFACT: CONTENT_TYPES[MOTION_BVH_ARTIFACT]},
        timings_ms=timings,
    )
    return PoseJobOutput(result, {MOTION_BVH_ARTIFACT: bvh})


# --------------------------------------------------------------------------- lifting


def lift_poses(
    request: PoseLiftRequest,
    backend: InferenceBackend,
    progress: ProgressCallback | None = None,
) -> PoseJobOutput:
    """N 3D hypotheses per person (or per frame of each track) from the prior's
    reprojection-guided sampler, a summary of each person's (frame's) hypotheses, and
    optionally the bodies as one mesh file. Tracks of equal length go to the backend together
    (people: all in one call)."""

    report = progress or _no_progress
    timings: dict[str, float] = {}
    n = request.hypotheses
    seeds = request.seeds()
    tracks = [to_lift_keypoints(k, request.format) for k in request.track_keypoints()]
    if request.intrinsics is not None:
        i = request.intrinsics
        camera = np.array([i.fx, i.fy, i.cx, i.cy], np.float32)
    else:
        camera = default_camera(request.image_size.width, request.image_size.height, None)

    groups: dict[int, list[int]] = {}  # track length -> tracks
    for index, track in enumerate(tracks):
        groups.setdefault(len(track), []).append(index)
    outputs: list[LiftOutputs | None] = [None] * len(tracks)  # per track, S = 1
    rows = request.row_count()
    report(0.05, f"lifting {rows} {'people' if request.people is not None else 'frames'} x {n}")
    started = time.perf_counter()
    for members in groups.values():
        out = backend.lift(
            LiftInputs(
                keypoints=np.stack([tracks[m] for m in members]),
                camera=np.repeat(camera[None], len(members), 0),
                hypotheses=n,
                seeds=np.asarray([seeds[m] for m in members], np.int64),
            )
        )
        for s, m in enumerate(members):
            arrays = {k: v[s : s + 1] for k, v in vars(out).items() if k != "prior_version"}
            outputs[m] = LiftOutputs(**arrays, prior_version=out.prior_version)
    lifts = [out for out in outputs if out is not None]
    versions = {out.prior_version for out in lifts}
    if len(versions) > 1:  # a new prior went live between two calls: do not mix them
        raise InferenceUnavailable(f"the pose prior changed mid-request (versions {versions})")
    timings["lift"] = _ms(started)

    report(0.8, "summarising the hypotheses")
    started = time.perf_counter()
    summaries = [lifted_frames(out, request.format, request.anny_params) for out in lifts]
    representatives = [chosen for chosen, _ in summaries]
    frames = [track_frames for _, track_frames in summaries]
    timings["summary"] = _ms(started)
    artifacts: dict[str, bytes] = {}
    if PoseOutput.mesh in request.outputs:
        report(0.9, "posing the meshes")
        started = time.perf_counter()
        everyone = request.mesh_hypotheses == "all"
        mesh = _lift_mesh(lifts, representatives, everyone, request.mesh_format)
        artifacts[POSE_MESH_ARTIFACT[request.mesh_format]] = mesh
        timings["mesh"] = _ms(started)
    result = PoseLiftResult(
        format=request.format,
        keypoint_names=list(FORMATS[request.format]),
        camera=Camera(
            fx=float(camera[0]),
            fy=float(camera[1]),
            cx=float(camera[2]),
            cy=float(camera[3]),
            focal_length_source="request" if request.intrinsics is not None else "default",
        ),
        hypotheses=n,
        seed=request.seed,
        people=[f[0] for f in frames] if request.people is not None else None,
        tracks=(
            [LiftedTrack(seed=s, frames=f) for s, f in zip(seeds, frames, strict=True)]
            if request.tracks is not None
            else None
        ),
        ambiguous_spread_mm=AMBIGUOUS_SPREAD_MM,
        prior_version=versions.pop(),
        artifacts={name: CONTENT_TYPES[name] for name in artifacts},
        timings_ms=timings,
    )
    return PoseJobOutput(result, artifacts)


def _lift_mesh(
    lifts: list[LiftOutputs],
    representatives: list[np.ndarray],
    everyone: bool,
    fmt: Literal["glb", "obj"],
) -> bytes:
    """The lifted Anny bodies (neutral phenotype) where they stand in the camera frame, one
    file: each person's (frame's) representative, or every hypothesis."""

    orient, pose, pelvis, names = [], [], [], []
    for s, (out, chosen) in enumerate(zip(lifts, representatives, strict=True)):
        frames, n = out.joints.shape[1:3]
        for t in range(frames):
            for h in range(n) if everyone else [int(chosen[t])]:
                orient.append(out.global_orient[0, t, h])
                pose.append(out.body_pose[0, t, h])
                pelvis.append(out.pelvis[0, t, h])
                names.append(f"track_{s}_frame_{t}_hypothesis_{h}")
    anny = anny_pose_in_camera(
        np.asarray(orient, np.float32), np.asarray(pose, np.float32), np.asarray(pelvis, np.float32)
    )
    body = get_anny()
    with torch.no_grad():
        vertices = body.forward(anny.pose, anny.transl, anny.phenotype).vertices.numpy()
    vertices = vertices.astype(np.float64)
    return export_meshes([(v, body.faces) for v in vertices], fmt, names)
