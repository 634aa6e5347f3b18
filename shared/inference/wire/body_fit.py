"""``body_fit``: fit the body model to people (batch dimension = people).

Per person: ``BODY`` (33, 3), ``HANDS`` (2, 21, 3), ``CAMERA`` (4,) float32, ``ITERATIONS`` (1,)
int32, ``SEED`` (1,) int64 and the optional ``PRIOR`` (1,) int32 (:data:`PRIOR_CODES`; absent or
:data:`DEFAULT_PRIOR_CODE`: the default). Out per person: every :class:`FitOutputs` field,
upper-cased (``REPROJECTION_ERROR`` and ``PRIOR_VERSION`` as (1,)). J and V are -1: Anny has
104 bones and 13718 vertices, SMPL-X others.

A request's people may differ in ITERATIONS, SEED and PRIOR (this client sends one of each per
request): :func:`unpack_request` gives one :class:`FitInputs` per distinct triple.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import numpy as np

from shared.inference.contracts import FitInputs, FitOutputs, PriorChoice
from shared.inference.wire.tensors import Arrays, ModelSpec, TensorSpec

MODEL = ModelSpec(
    name="body_fit",
    max_batch_size=32,
    inputs=(
        TensorSpec("BODY", "FP32", (33, 3)),
        TensorSpec("HANDS", "FP32", (2, 21, 3)),
        TensorSpec("CAMERA", "FP32", (4,)),
        TensorSpec("ITERATIONS", "INT32", (1,)),
        TensorSpec("SEED", "INT64", (1,)),
        TensorSpec("PRIOR", "INT32", (1,), optional=True),
    ),
    outputs=(
        TensorSpec("POSE", "FP32", (-1, 3)),
        TensorSpec("PHENOTYPE", "FP32", (6,)),
        TensorSpec("TRANSL", "FP32", (3,)),
        TensorSpec("GLOBAL_ORIENT", "FP32", (3,)),
        TensorSpec("VERTICES", "FP32", (-1, 3)),
        TensorSpec("JOINTS", "FP32", (-1, 3)),
        TensorSpec("KEYPOINTS_2D", "FP32", (33, 2)),
        TensorSpec("KEYPOINTS_3D", "FP32", (33, 3)),
        TensorSpec("REPROJECTION_ERROR", "FP32", (1,)),
        TensorSpec("PRIOR_VERSION", "INT32", (1,)),
    ),
)

OUTPUT_FIELDS: dict[str, str] = {f.name.upper(): f.name for f in fields(FitOutputs)}
"""Output tensor -> :class:`FitOutputs` field: each field, upper-cased."""

PRIOR_CODES: dict[PriorChoice, int] = {"none": 0, "pose_prior": 1}
"""The optional ``PRIOR`` input: a code per :data:`shared.inference.contracts.PriorChoice`."""
DEFAULT_PRIOR_CODE = -1
"""``PRIOR`` code (the same as no ``PRIOR`` input) for the default: pose_prior when published."""
PRIOR_OF_CODE: dict[int, PriorChoice | None] = {
    DEFAULT_PRIOR_CODE: None,
    **{code: choice for choice, code in PRIOR_CODES.items()},
}


# --------------------------------------------------------------------------- client


def pack_request(inputs: FitInputs) -> Arrays:
    """The request for ``inputs``' people (``PRIOR`` only when ``inputs.prior`` is set)."""
    spec = MODEL.input
    body = spec("BODY").array(inputs.body)
    people = len(body)
    arrays = {
        "BODY": body,
        "HANDS": spec("HANDS").array(inputs.hands),
        "CAMERA": spec("CAMERA").array(inputs.camera),
        "ITERATIONS": np.full((people, 1), inputs.iterations, spec("ITERATIONS").numpy_dtype),
        "SEED": np.full((people, 1), inputs.seed, spec("SEED").numpy_dtype),
    }
    if inputs.prior is not None:  # absent: the model's default (pose_prior if published)
        if inputs.prior not in PRIOR_CODES:
            raise ValueError(f"unknown prior {inputs.prior!r}: use {', '.join(PRIOR_CODES)}")
        code = PRIOR_CODES[inputs.prior]
        arrays["PRIOR"] = np.full((people, 1), code, spec("PRIOR").numpy_dtype)
    return arrays


def unpack_response(arrays: Arrays) -> FitOutputs:
    """The fitted people of a response."""
    values: dict[str, Any] = {OUTPUT_FIELDS[name]: arrays[name] for name in MODEL.output_names}
    people = len(values["pose"])
    values["reprojection_error"] = values["reprojection_error"].reshape(people)
    values["prior_version"] = values["prior_version"].reshape(people).astype(np.int32)
    return FitOutputs(**values)


# --------------------------------------------------------------------------- server


def unpack_request(arrays: Arrays) -> list[tuple[np.ndarray, FitInputs]]:
    """A request's people grouped by (ITERATIONS, SEED, PRIOR), in first-seen order: (indices
    of the group's people in the request, their :class:`FitInputs`) per group. ``ValueError``
    for a missing input or an unknown PRIOR code."""
    MODEL.require(arrays)
    people = len(arrays["BODY"])
    iterations = np.asarray(arrays["ITERATIONS"]).reshape(people)
    seeds = np.asarray(arrays["SEED"]).reshape(people)
    codes = np.asarray(arrays.get("PRIOR", np.full(people, DEFAULT_PRIOR_CODE))).reshape(people)
    unknown = sorted({int(c) for c in codes} - set(PRIOR_OF_CODE))
    if unknown:
        known = ", ".join(
            f"{code} = {choice or 'default'}" for code, choice in PRIOR_OF_CODE.items()
        )
        raise ValueError(f"unknown PRIOR code(s) {unknown}: use {known}")
    members: dict[tuple[int, int, int], list[int]] = {}
    for p, key in enumerate(zip(iterations.tolist(), seeds.tolist(), codes.tolist(), strict=True)):
        members.setdefault(key, []).append(p)
    groups = []
    for (count, seed, code), rows in members.items():
        index = np.asarray(rows, np.int64)
        fit = FitInputs(
            body=arrays["BODY"][index],
            hands=arrays["HANDS"][index],
            camera=arrays["CAMERA"][index],
            iterations=count,
            seed=seed,
            prior=PRIOR_OF_CODE[code],
        )
        groups.append((index, fit))
    return groups


def pack_response(outputs: FitOutputs) -> Arrays:
    """The response arrays of fitted people (P of them: (P, ...) each)."""
    arrays = {}
    for spec in MODEL.outputs:
        value = spec.array(getattr(outputs, OUTPUT_FIELDS[spec.name]))
        arrays[spec.name] = value.reshape(-1, 1) if spec.dims == (1,) else value
    return arrays
