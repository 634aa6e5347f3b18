"""Mesh recovery from one photo: detect people, fit bodies, express them, export artifacts.

The same function serves the command line (in-process backend), the Celery worker (Triton
backend when configured) and the benchmarks, so every path runs identical code.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from PIL import Image

from shared.bodies.anny_model import get_anny
from shared.bodies.joint_names import SKELETON_JOINTS
from shared.bodies.skeleton import BODY_PARENTS
from shared.bodies.smplx_convention import SMPLX_PARAM_DIMS, anny_to_smplx
from shared.bodies.smplx_model import SmplxBody
from shared.camera import default_camera
from shared.inference.contracts import (
    FitInputs,
    FitOutputs,
    InferenceBackend,
    LiftInputs,
    LiftOutputs,
)
from shared.io.exports import export_meshes, export_params_npz
from shared.keypoints.formats import MEDIAPIPE33, PersonKeypoints
from shared.lifting.results import lifted_frames, to_lift_keypoints
from shared.lifting.summary import AMBIGUOUS_SPREAD_MM, HypothesisSummary, summarise
from shared.prior.pose_outputs import pelvis_rest
from shared.render.renderer import render_overlay
from shared.render.spread import PersonSpread, render_spread
from shared.schemas.artifacts import ARTIFACT_OF, CONTENT_TYPES, Output
from shared.schemas.bodies import AnnyParams, Camera, SmplxParams
from shared.schemas.lifting import LiftedFrame
from shared.schemas.mesh_recovery import (
    HypothesisSampling,
    MeshRecoveryOptions,
    MeshRecoveryResult,
    PersonResult,
)
from shared.settings import get_settings

ProgressCallback = Callable[[float, str], None]

# Horizontal-or-vertical field of view assumed for the longer image side when the request
# gives no focal length: a typical phone/compact camera.
SPREAD_ARTIFACT = "spread.png"


@dataclass
class RecoveryOutput:
    result: MeshRecoveryResult
    artifacts: dict[str, bytes] = field(default_factory=dict)
    fit: FitOutputs | None = None
    # With hypotheses > 1: every person's hypotheses (S = people, T = 1).
    lift: LiftOutputs | None = None


def fit_inputs(
    people: list[PersonKeypoints], camera: np.ndarray, options: MeshRecoveryOptions
) -> FitInputs:
    hands = np.zeros((len(people), 2, 21, 3), dtype=np.float32)
    for i, person in enumerate(people):
        if person.left_hand is not None:
            hands[i, 0] = person.left_hand
        if person.right_hand is not None:
            hands[i, 1] = person.right_hand
    return FitInputs(
        body=np.stack([p.body for p in people]).astype(np.float32),
        hands=hands,
        camera=np.repeat(camera[None], len(people), 0),
        iterations=options.iterations,
        seed=options.seed,
        prior=options.prior,
    )


def lift_inputs(
    people: list[PersonKeypoints], camera: np.ndarray, options: MeshRecoveryOptions
) -> LiftInputs:
    """Every person's detected body keypoints as one lifting batch (S = people, T = 1), with
    the camera of the fit; person i samples with seed + i."""

    body = np.stack([p.body for p in people]).astype(np.float32)
    return LiftInputs(
        keypoints=to_lift_keypoints(body, "mediapipe33")[:, None],
        camera=np.repeat(camera[None], len(people), 0),
        hypotheses=options.hypotheses,
        seeds=options.seed + np.arange(len(people), dtype=np.int64),
    )


def recover(
    image: np.ndarray,
    options: MeshRecoveryOptions,
    backend: InferenceBackend,
    progress: ProgressCallback | None = None,
    exif_focal_length_px: float | None = None,
) -> RecoveryOutput:
    """Recover every person's body in an RGB uint8 image.

    The camera's focal length comes from the request, else from the photo's EXIF (pass
    ``exif_focal_length_px``, see ``shared.io.images.exif_focal_length_px``), else a default.
    """
    report = progress or (lambda fraction, message: None)
    height, width = image.shape[:2]
    focal = options.focal_length_px or exif_focal_length_px
    source = "request" if options.focal_length_px else "exif" if focal else "default"
    camera = default_camera(width, height, focal)
    timings: dict[str, float] = {}

    started = time.perf_counter()
    report(0.05, "detecting people")
    people = backend.detect(image, options.max_people)
    timings["detect"] = _ms(started)

    result = MeshRecoveryResult(
        body_model=options.body_model,
        image_width=width,
        image_height=height,
        camera=Camera(
            fx=float(camera[0]),
            fy=float(camera[1]),
            cx=float(camera[2]),
            cy=float(camera[3]),
            focal_length_source=source,
        ),
        people=[],
    )
    if not people:
        result.reason = "no person was detected in the image"
        output = RecoveryOutput(result=result)
        _export(output, image, camera, options, [])
        return _finish(output, options, timings)

    report(0.3, f"fitting {len(people)} {'person' if len(people) == 1 else 'people'}")
    started = time.perf_counter()
    fitted = backend.fit(fit_inputs(people, camera, options))
    timings["fit"] = _ms(started)
    # One fit call serves the request's people: they share the prior (0: none was used).
    version = int(fitted.prior_version[0])
    result.prior = "pose_prior" if version != 0 else "none"
    result.prior_version = version if version > 0 else None

    lifted: LiftOutputs | None = None
    sampled: list[LiftedFrame] = []  # per person, with hypotheses > 1
    if options.hypotheses > 1:
        report(0.6, f"sampling {options.hypotheses} bodies per person")
        started = time.perf_counter()
        inputs = lift_inputs(people, camera, options)
        lifted = backend.lift(inputs)
        sampled = _sampled_bodies(lifted)
        result.sampling = HypothesisSampling(
            hypotheses=options.hypotheses,
            seeds=inputs.seeds.tolist(),
            prior_version=lifted.prior_version,
            ambiguous_spread_mm=AMBIGUOUS_SPREAD_MM,
        )
        timings["hypotheses"] = _ms(started)

    started = time.perf_counter()
    smplx_body = get_smplx_body() if options.body_model == "smplx" else None
    j0 = smplx_body.pelvis_rest() if smplx_body is not None else None
    smplx = smplx_parameters(fitted, j0)
    timings["smplx_convention"] = _ms(started)

    labels = get_anny().phenotype_labels
    mapped = get_anny().keypoint_mapped[: len(MEDIAPIPE33)].tolist()
    for i, person in enumerate(people):
        result.people.append(
            PersonResult(
                index=i,
                bbox=[float(v) for v in person.bbox],
                detection_score=float(person.score),
                keypoints_2d=person.body.round(2).tolist(),
                fitted_keypoints_2d=fitted.keypoints_2d[i].round(2).tolist(),
                keypoints_3d=[
                    point if known else None
                    for point, known in zip(
                        fitted.keypoints_3d[i].round(4).tolist(), mapped, strict=True
                    )
                ],
                reprojection_error_px=float(fitted.reprojection_error[i]),
                hands_detected=[
                    side
                    for side, hand in (("left", person.left_hand), ("right", person.right_hand))
                    if hand is not None
                ],
                smplx=smplx[i],
                anny=AnnyParams(
                    pose=fitted.pose[i].round(5).tolist(),
                    phenotype={
                        k: float(v) for k, v in zip(labels, fitted.phenotype[i], strict=True)
                    },
                    transl=fitted.transl[i].tolist(),
                ),
            )
        )
        if sampled:
            frame, person_result = sampled[i], result.people[-1]
            person_result.hypotheses = frame.hypotheses
            person_result.uncertainty = frame.summary.spread_mm
            person_result.ambiguous_joints = frame.summary.ambiguous_joints
            person_result.representative = frame.summary.representative
    report(0.8, "writing outputs")
    started = time.perf_counter()
    output = RecoveryOutput(result=result, fit=fitted, lift=lifted)
    meshes = _anny_meshes(fitted) if smplx_body is None else _smplx_meshes(smplx_body, result)
    _export(output, image, camera, options, meshes)
    timings["export"] = _ms(started)
    return _finish(output, options, timings)


def _sampled_bodies(lifted: LiftOutputs) -> list[LiftedFrame]:
    """Each person's hypotheses and their summary, as the lift route gives them."""

    frames: list[LiftedFrame] = []
    for i in range(lifted.joints.shape[0]):
        arrays = {k: v[i : i + 1] for k, v in vars(lifted).items() if k != "prior_version"}
        _, (frame,) = lifted_frames(
            LiftOutputs(**arrays, prior_version=lifted.prior_version), "mediapipe33"
        )
        frames.append(frame)
    return frames


def _finish(
    output: RecoveryOutput, options: MeshRecoveryOptions, timings: dict[str, float]
) -> RecoveryOutput:
    """Record the timings and the artifact list, and write result.json when asked."""
    result = output.result
    result.timings_ms = timings
    if Output.json in options.outputs:
        result.artifacts["result.json"] = CONTENT_TYPES["result.json"]
        output.artifacts["result.json"] = result.model_dump_json(indent=1).encode()
    return output


@lru_cache(maxsize=1)
def get_smplx_body() -> SmplxBody:
    """The user's SMPL-X model (BODYSERVE_SMPLX_MODEL_PATH), loaded once per process."""

    path = get_settings().smplx_model_path
    if path is None:
        raise ValueError("body_model=smplx needs BODYSERVE_SMPLX_MODEL_PATH to be set")
    return SmplxBody(path)


def _anny_meshes(fitted: FitOutputs) -> list[tuple[np.ndarray, np.ndarray]]:

    faces = get_anny().faces
    return [(v, faces) for v in fitted.vertices]


def _smplx_meshes(
    body: SmplxBody, result: MeshRecoveryResult
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The user's SMPL-X model posed by the SMPL-X-convention parameters of each person."""

    keys = [k for k in SMPLX_PARAM_DIMS if k not in ("betas", "expression")]
    params = {
        key: torch.tensor(
            [np.ravel(getattr(p.smplx, key)) for p in result.people], dtype=torch.float32
        )
        for key in keys
    }
    with torch.no_grad():
        vertices = body(params).vertices.numpy()
    return [(v, body.faces) for v in vertices]


def smplx_parameters(fitted: FitOutputs, j0: Any = None) -> list[SmplxParams]:
    """SMPL-X-convention parameters of each fitted Anny body (camera frame)."""

    body = get_anny()
    pose = torch.as_tensor(fitted.pose)
    transl = torch.as_tensor(fitted.transl)
    coeffs = body.blendshape_coefficients(torch.as_tensor(fitted.phenotype))
    with torch.no_grad():
        _, poses, rest = body.skeleton(pose, transl, coeffs)
        params = anny_to_smplx(poses, rest, world_to_frame=torch.eye(3), j0=j0)
    people = []
    for i in range(pose.shape[0]):

        def row(key: str, i: int = i) -> list:
            return params[key][i].reshape(-1, 3).tolist() if key in params else []

        people.append(
            SmplxParams(
                global_orient=params["global_orient"][i].tolist(),
                body_pose=row("body_pose"),
                left_hand_pose=row("left_hand_pose"),
                right_hand_pose=row("right_hand_pose"),
                jaw_pose=params["jaw_pose"][i].tolist(),
                leye_pose=params["leye_pose"][i].tolist(),
                reye_pose=params["reye_pose"][i].tolist(),
                betas=[0.0] * 10,
                expression=[0.0] * 10,
                transl=params["transl"][i].tolist(),
                pelvis=params["pelvis"][i].tolist(),
            )
        )
    return people


def _export(
    output: RecoveryOutput,
    image: np.ndarray,
    camera: np.ndarray,
    options: MeshRecoveryOptions,
    meshes: list[tuple[np.ndarray, np.ndarray]],
) -> None:

    fitted = output.fit
    # The hypotheses' summary (the result holds it rounded) for the picture and the npz.
    summary = summarise(output.lift.joints[:, 0]) if output.lift is not None else None
    for wanted in options.outputs:
        name = ARTIFACT_OF[wanted]
        if wanted in (Output.glb, Output.obj, Output.ply) and meshes:
            output.artifacts[name] = export_meshes(meshes, wanted.value)  # type: ignore[arg-type]
        elif wanted is Output.overlay:
            output.artifacts[name] = _overlay_png(image, meshes, camera)
            if output.lift is not None and summary is not None:
                output.artifacts[SPREAD_ARTIFACT] = _spread_png(image, camera, output.lift, summary)
        elif wanted is Output.npz and fitted is not None:
            params = _npz_params(output.result, fitted)
            if output.lift is not None and summary is not None:
                params |= _npz_hypotheses(output.lift, summary)
            output.artifacts[name] = export_params_npz(params)
    output.result.artifacts = {name: CONTENT_TYPES[name] for name in output.artifacts}


def _npz_params(result: MeshRecoveryResult, fitted: FitOutputs) -> dict[str, np.ndarray]:
    def stack(key: str) -> np.ndarray:
        return np.array([getattr(p.smplx, key) for p in result.people], dtype=np.float32).reshape(
            len(result.people), -1
        )

    params = {key: stack(key) for key in SMPLX_PARAM_DIMS}
    params["anny_pose"] = fitted.pose
    params["anny_phenotype"] = fitted.phenotype
    params["anny_transl"] = fitted.transl
    return params


def _npz_hypotheses(lifted: LiftOutputs, summary: HypothesisSummary) -> dict[str, np.ndarray]:
    """The hypotheses as (P, N, ...) arrays, SMPL-X convention, camera frame."""

    people, n = lifted.joints.shape[0], lifted.joints.shape[2]
    return {
        "hypotheses_global_orient": lifted.global_orient[:, 0],
        "hypotheses_body_pose": lifted.body_pose[:, 0].reshape(people, n, -1),
        # SMPL-X: pelvis = rest pelvis + transl.
        "hypotheses_transl": lifted.pelvis[:, 0] - pelvis_rest().numpy()[0],
        "hypotheses_pelvis": lifted.pelvis[:, 0],
        "hypotheses_joints": lifted.joints[:, 0],
        "hypotheses_keypoints_2d": lifted.keypoints_2d[:, 0],
        "hypotheses_reprojection_error": lifted.reprojection_error[:, 0],
        "hypotheses_spread_mm": summary.spread_mm,
        "hypotheses_representative": summary.representative.astype(np.int64),
    }


def _spread_png(
    image: np.ndarray, camera: np.ndarray, lifted: LiftOutputs, summary: HypothesisSummary
) -> bytes:

    people = [
        PersonSpread(
            joints=lifted.joints[i, 0],
            spread_mm=summary.spread_mm[i],
            representative=int(summary.representative[i]),
            label=f"person {i}",
        )
        for i in range(lifted.joints.shape[0])
    ]
    fx, fy, cx, cy = (float(c) for c in camera)
    picture = render_spread(
        image, (fx, fy, cx, cy), people, BODY_PARENTS, SKELETON_JOINTS, AMBIGUOUS_SPREAD_MM
    )
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _overlay_png(image: np.ndarray, meshes: list, camera: np.ndarray) -> bytes:

    picture = image
    if meshes:
        # One colour per person from the renderer's palette.
        fx, fy, cx, cy = (float(c) for c in camera)
        picture = render_overlay(image, meshes, (fx, fy, cx, cy))
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
