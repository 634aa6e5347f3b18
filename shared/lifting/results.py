"""Lifted hypotheses as results: keypoint formats mapped to the lifter's, frames with summaries.

Used by both pipelines that lift (``POST /v1/poses/lift`` and mesh recovery with hypotheses).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shared.bodies.anny_model import get_anny
from shared.bodies.joint_names import SKELETON_JOINTS
from shared.inference.contracts import LiftOutputs
from shared.keypoints.formats import FORMATS
from shared.lifting.keypoints import LIFT_KEYPOINTS, KeypointSkeleton
from shared.lifting.summary import summarise
from shared.prior.pose_outputs import anny_pose_in_camera, pelvis_rest
from shared.schemas.bodies import AnnyParams, LiftedPose, SmplxBodyParams
from shared.schemas.lifting import LiftedFrame, LiftSummary


def rounded(array: object, decimals: int) -> Any:
    """Nested lists of ``array``'s values to ``decimals`` places (in float64, so that the JSON
    shows 0.1, not float32's 0.10000000149011612)."""
    return np.asarray(array, np.float64).round(decimals).tolist()


# coco17_feet's big toe is mediapipe's foot_index (the tip of the toes); its small toes have no
# counterpart in the lifter's keypoints.
_LIFT_ALIASES = {"left_big_toe": "left_foot_index", "right_big_toe": "right_foot_index"}


def lift_index(fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows of format ``fmt`` and the :data:`~shared.lifting.keypoints.LIFT_KEYPOINTS` rows
    they are, for the keypoints both have: ``lifted[..., to, :] = given[..., rows, :]``."""

    pairs = [
        (i, LIFT_KEYPOINTS.index(_LIFT_ALIASES.get(name, name)))
        for i, name in enumerate(FORMATS[fmt])
        if _LIFT_ALIASES.get(name, name) in LIFT_KEYPOINTS
    ]
    return np.array([i for i, _ in pairs]), np.array([j for _, j in pairs])


def to_lift_keypoints(keypoints: np.ndarray, fmt: str) -> np.ndarray:
    """(..., K, 3) keypoints of format ``fmt`` -> (..., 33, 3) LIFT_KEYPOINTS (mediapipe33);
    the keypoints ``fmt`` lacks get confidence 0."""

    rows, to = lift_index(fmt)
    out = np.zeros((*keypoints.shape[:-2], len(LIFT_KEYPOINTS), 3), np.float32)
    out[..., to, :] = keypoints[..., rows, :]
    return out


def lifted_frames(
    out: LiftOutputs, fmt: str, with_anny: bool = False
) -> tuple[np.ndarray, list[LiftedFrame]]:
    """One track's lift (S = 1) -> its representatives (T,) and one LiftedFrame per frame
    (with each hypothesis' Anny parameters when ``with_anny``)."""

    rows, to = lift_index(fmt)
    mapped = KeypointSkeleton.neutral().mapped.numpy()[to]
    shown = rows[mapped]  # the format's rows the body has a counterpart of
    count = len(FORMATS[fmt])
    summary = summarise(out.joints[0])  # over (T, N, 22, 3)
    transl = out.pelvis[0] - pelvis_rest().numpy()  # SMPL-X: pelvis = rest pelvis + transl
    anny = None
    if with_anny:
        anny = anny_pose_in_camera(
            out.global_orient[0].reshape(-1, 3),
            out.body_pose[0].reshape(-1, 21, 3),
            out.pelvis[0].reshape(-1, 3),
        )
        labels = get_anny().phenotype_labels
        neutral = {k: float(v) for k, v in zip(labels, anny.phenotype[0], strict=True)}
    frames = []
    for t in range(out.joints.shape[1]):
        hypotheses = []
        for h in range(out.joints.shape[2]):
            points: list[list[float] | None] = [None] * count
            xy = rounded(out.keypoints_2d[0, t, h, to[mapped]], 2)
            for row, point in zip(shown, xy, strict=True):
                points[row] = point
            hypotheses.append(
                LiftedPose(
                    smplx=SmplxBodyParams(
                        global_orient=rounded(out.global_orient[0, t, h], 5),
                        body_pose=rounded(out.body_pose[0, t, h], 5),
                        transl=rounded(transl[t, h], 5),
                        pelvis=rounded(out.pelvis[0, t, h], 5),
                    ),
                    joints_3d=rounded(out.joints[0, t, h], 5),
                    keypoints_2d=points,
                    reprojection_error_px=round(float(out.reprojection_error[0, t, h]), 3),
                    anny=None
                    if anny is None
                    else AnnyParams(
                        pose=rounded(anny.pose[t * out.joints.shape[2] + h], 5),
                        phenotype=neutral,
                        transl=rounded(anny.transl[t * out.joints.shape[2] + h], 6),
                    ),
                )
            )
        spread = summary.spread_mm[t]
        frames.append(
            LiftedFrame(
                hypotheses=hypotheses,
                summary=LiftSummary(
                    representative=int(summary.representative[t]),
                    spread_mm={
                        j: round(float(s), 1) for j, s in zip(SKELETON_JOINTS, spread, strict=True)
                    },
                    ambiguous_joints=[
                        j for j, a in zip(SKELETON_JOINTS, summary.ambiguous[t], strict=True) if a
                    ],
                ),
            )
        )
    return summary.representative, frames
