"""``pose_lift``: 2D keypoint tracks -> N 3D hypotheses per frame (batch dimension = tracks).

Per track: ``KEYPOINTS`` (T, 33, 3) float32 mediapipe33 pixels + confidence (T ragged: tracks
of different lengths batch together), ``CAMERA`` (4,) float32 fx, fy, cx, cy, ``HYPOTHESES``
(1,) int32 N (the same for every track of a request), ``SEED`` (1,) int64. Out per track: one
tensor per :class:`LiftOutputs` array field, upper-cased (``GLOBAL_ORIENT`` (T, N, 3),
``BODY_POSE`` (T, N, 21, 3), ``PELVIS`` (T, N, 3), ``JOINTS`` (T, N, 22, 3), ``KEYPOINTS_2D``
(T, N, 33, 2), ``REPROJECTION_ERROR`` (T, N)), and ``PRIOR_VERSION`` (1,) int32, the pose_prior
version used (the same for every track of a response).
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np

from shared.inference.contracts import LiftInputs, LiftOutputs
from shared.inference.wire.tensors import Arrays, ModelSpec, TensorSpec

MODEL = ModelSpec(
    name="pose_lift",
    max_batch_size=64,
    inputs=(
        TensorSpec("KEYPOINTS", "FP32", (-1, 33, 3), ragged=True),
        TensorSpec("CAMERA", "FP32", (4,)),
        TensorSpec("HYPOTHESES", "INT32", (1,)),
        TensorSpec("SEED", "INT64", (1,)),
    ),
    outputs=(
        TensorSpec("GLOBAL_ORIENT", "FP32", (-1, -1, 3)),
        TensorSpec("BODY_POSE", "FP32", (-1, -1, 21, 3)),
        TensorSpec("PELVIS", "FP32", (-1, -1, 3)),
        TensorSpec("JOINTS", "FP32", (-1, -1, 22, 3)),
        TensorSpec("KEYPOINTS_2D", "FP32", (-1, -1, 33, 2)),
        TensorSpec("REPROJECTION_ERROR", "FP32", (-1, -1)),
        TensorSpec("PRIOR_VERSION", "INT32", (1,)),
    ),
)

ARRAY_FIELDS: dict[str, str] = {
    f.name.upper(): f.name for f in fields(LiftOutputs) if f.name != "prior_version"
}
"""Output tensor -> :class:`LiftOutputs` array field (``PRIOR_VERSION`` apart)."""


# --------------------------------------------------------------------------- client


def pack_request(inputs: LiftInputs) -> Arrays:
    """The request for ``inputs``' S tracks (``ValueError`` unless keypoints are (S >= 1, T,
    33, 3))."""
    spec = MODEL.input
    keypoints = spec("KEYPOINTS").array(inputs.keypoints)
    if keypoints.ndim != 4 or keypoints.shape[2:] != (33, 3) or len(keypoints) == 0:
        raise ValueError(f"keypoints must be (S >= 1, T, 33, 3), got {keypoints.shape}")
    tracks = len(keypoints)
    return {
        "KEYPOINTS": keypoints,
        "CAMERA": spec("CAMERA").array(inputs.camera).reshape(tracks, 4),
        "HYPOTHESES": np.full((tracks, 1), inputs.hypotheses, spec("HYPOTHESES").numpy_dtype),
        "SEED": spec("SEED").array(inputs.seeds).reshape(tracks, 1),
    }


def unpack_response(arrays: Arrays) -> LiftOutputs:
    """The hypotheses of a response's tracks."""
    version = int(arrays["PRIOR_VERSION"].reshape(-1)[0])
    return LiftOutputs(
        **{field: arrays[name] for name, field in ARRAY_FIELDS.items()}, prior_version=version
    )


# --------------------------------------------------------------------------- server


def unpack_request(arrays: Arrays) -> LiftInputs:
    """A request's tracks (``ValueError`` for a missing input or HYPOTHESES that differ)."""
    MODEL.require(arrays)
    keypoints = arrays["KEYPOINTS"]
    tracks = len(keypoints)
    counts = np.unique(np.asarray(arrays["HYPOTHESES"]).reshape(-1))
    if len(counts) != 1:
        raise ValueError(f"HYPOTHESES must be the same for every track, got {counts.tolist()}")
    return LiftInputs(
        keypoints=keypoints,
        camera=np.asarray(arrays["CAMERA"]).reshape(tracks, 4),
        hypotheses=int(counts[0]),
        seeds=np.asarray(arrays["SEED"]).reshape(tracks),
    )


def pack_response(outputs: LiftOutputs) -> Arrays:
    """The response for S tracks' hypotheses (``PRIOR_VERSION`` (S, 1))."""
    arrays = {
        name: MODEL.output(name).array(getattr(outputs, field))
        for name, field in ARRAY_FIELDS.items()
    }
    tracks = len(arrays["GLOBAL_ORIENT"])
    arrays["PRIOR_VERSION"] = np.full((tracks, 1), outputs.prior_version, np.int32)
    return arrays
