"""``motion_denoise``: one motion of T frames per request (no batch dimension).

In: the motion as ``JOINTS`` (T, 22, 3), or as poses ``GLOBAL_ORIENT`` (T, 3) + ``BODY_POSE``
(T, 21, 3) with the optional ``PELVIS`` (T, 3) (all optional, exactly one of the two given);
``FPS`` (1,) float32, the optional ``ITERATIONS`` (1,) int32 (absent or -1: the default) and
``SEED`` (1,) int64. Out: ``GLOBAL_ORIENT``, ``BODY_POSE``, ``PELVIS``, ``JOINTS``,
``PHENOTYPE`` (6,) float32 and ``PRIOR_VERSION`` (1,) int32 (0: no prior was published).
SMPL-X convention, axis-angle, metres.
"""

from __future__ import annotations

import numpy as np

from shared.inference.contracts import MotionInputs, MotionOutputs
from shared.inference.wire.tensors import Arrays, ModelSpec, TensorSpec, one_value

MODEL = ModelSpec(
    name="motion_denoise",
    max_batch_size=0,
    inputs=(
        TensorSpec("JOINTS", "FP32", (-1, 22, 3), optional=True),
        TensorSpec("GLOBAL_ORIENT", "FP32", (-1, 3), optional=True),
        TensorSpec("BODY_POSE", "FP32", (-1, 21, 3), optional=True),
        TensorSpec("PELVIS", "FP32", (-1, 3), optional=True),
        TensorSpec("FPS", "FP32", (1,)),
        TensorSpec("ITERATIONS", "INT32", (1,), optional=True),
        TensorSpec("SEED", "INT64", (1,)),
    ),
    outputs=(
        TensorSpec("GLOBAL_ORIENT", "FP32", (-1, 3)),
        TensorSpec("BODY_POSE", "FP32", (-1, 21, 3)),
        TensorSpec("PELVIS", "FP32", (-1, 3)),
        TensorSpec("JOINTS", "FP32", (-1, 22, 3)),
        TensorSpec("PHENOTYPE", "FP32", (6,)),
        TensorSpec("PRIOR_VERSION", "INT32", (1,)),
    ),
)

DEFAULT_ITERATIONS_CODE = -1
"""``ITERATIONS`` value (the same as no ``ITERATIONS`` input) for the default count."""

# The motion's tensors -> MotionInputs fields (each optional).
MOTION_FIELDS = {
    "JOINTS": "joints",
    "GLOBAL_ORIENT": "global_orient",
    "BODY_POSE": "body_pose",
    "PELVIS": "pelvis",
}
# Output tensor -> MotionOutputs array field (PRIOR_VERSION apart).
OUTPUT_FIELDS = {
    "GLOBAL_ORIENT": "global_orient",
    "BODY_POSE": "body_pose",
    "PELVIS": "pelvis",
    "JOINTS": "joints",
    "PHENOTYPE": "phenotype",
}


# --------------------------------------------------------------------------- client


def pack_request(inputs: MotionInputs) -> Arrays:
    """The request for one motion (``ValueError`` when its fields do not make one)."""
    inputs.check()
    spec = MODEL.input
    arrays = {
        "FPS": np.array([inputs.fps], spec("FPS").numpy_dtype),
        "SEED": np.array([inputs.seed], spec("SEED").numpy_dtype),
    }
    if inputs.iterations is not None:
        arrays["ITERATIONS"] = np.array([inputs.iterations], spec("ITERATIONS").numpy_dtype)
    for name, field in MOTION_FIELDS.items():
        value = getattr(inputs, field)
        if value is not None:
            arrays[name] = spec(name).array(value)
    return arrays


def unpack_response(arrays: Arrays) -> MotionOutputs:
    """The denoised motion of a response."""
    version = int(arrays["PRIOR_VERSION"].reshape(-1)[0])
    return MotionOutputs(
        **{field: arrays[name] for name, field in OUTPUT_FIELDS.items()},
        prior_version=version or None,
    )


# --------------------------------------------------------------------------- server


def unpack_request(arrays: Arrays) -> MotionInputs:
    """The motion of a request (``ValueError`` for a missing input or a FPS, SEED or
    ITERATIONS that is not one value)."""
    MODEL.require(arrays)
    iterations = None
    if "ITERATIONS" in arrays:
        iterations = int(one_value(arrays, "ITERATIONS"))
    return MotionInputs(
        **{field: arrays.get(name) for name, field in MOTION_FIELDS.items()},
        fps=float(one_value(arrays, "FPS")),
        iterations=None if iterations == DEFAULT_ITERATIONS_CODE else iterations,
        seed=int(one_value(arrays, "SEED")),
    )


def pack_response(outputs: MotionOutputs) -> Arrays:
    """The response for a denoised motion (``PRIOR_VERSION`` 0 when no prior was used)."""
    arrays = {
        name: MODEL.output(name).array(getattr(outputs, f)) for name, f in OUTPUT_FIELDS.items()
    }
    arrays["PRIOR_VERSION"] = np.array([outputs.prior_version or 0], np.int32)
    return arrays
