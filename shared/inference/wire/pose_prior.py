"""``pose_prior``: rows of SMPL-X body poses to generate, complete or denoise (batch = rows).

Per row: ``TASK`` (1,) int32 (:class:`shared.prior.rows.PriorTask`), ``POSE`` (21, 3) float32
(complete, denoise; zeros otherwise), ``KNOWN`` (21,) bool (complete), ``SEED`` (1,) int64,
``STEPS`` (1,) int32, ``NOISE_LEVEL`` (1,) float32 (denoise) and the optional ``SAMPLER`` (1,)
int32 (generate: :data:`shared.prior.rows.SAMPLERS` codes, absent: 0, the ODE; versions of the
model without this input sample with the ODE only). Out per row: ``BODY_POSE`` (21, 3) float32.
The version that computed a response is the response's model version, not a tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from shared.inference.wire.tensors import Arrays, ModelSpec, TensorSpec

MODEL = ModelSpec(
    name="pose_prior",
    max_batch_size=256,
    inputs=(
        TensorSpec("TASK", "INT32", (1,)),
        TensorSpec("POSE", "FP32", (21, 3)),
        TensorSpec("KNOWN", "BOOL", (21,)),
        TensorSpec("SEED", "INT64", (1,)),
        TensorSpec("STEPS", "INT32", (1,)),
        TensorSpec("NOISE_LEVEL", "FP32", (1,)),
        TensorSpec("SAMPLER", "INT32", (1,), optional=True),
    ),
    outputs=(TensorSpec("BODY_POSE", "FP32", (21, 3)),),
)

SAMPLER_CODES: dict[str, int] = {"ode": 0, "sde": 1}
"""The optional ``SAMPLER`` input's codes (the order of :data:`shared.prior.rows.SAMPLERS`)."""

# Row field -> input tensor.
_TENSORS = {
    "task": "TASK",
    "pose": "POSE",
    "known": "KNOWN",
    "seeds": "SEED",
    "steps": "STEPS",
    "noise_level": "NOISE_LEVEL",
    "sampler": "SAMPLER",
}


def _row_dims(spec: TensorSpec) -> tuple[int, ...]:
    """A row field's dims: the tensor's, but () for the (1,) ones (a value per row)."""
    return () if spec.dims == (1,) else spec.dims


@dataclass
class PriorRequest:
    """B rows for the prior, one value of each field per row (the rows of one
    :meth:`shared.inference.contracts.InferenceBackend.prior` call, or of a request)."""

    task: np.ndarray  # (B,) int32 shared.prior.rows.PriorTask codes
    pose: np.ndarray  # (B, 21, 3) float32 SMPL-X body_pose (ignored by generate)
    known: np.ndarray  # (B, 21) bool, True where the joint is given (complete)
    seeds: np.ndarray  # (B,) int64, one per row
    steps: np.ndarray  # (B,) int32
    noise_level: np.ndarray  # (B,) float32 (denoise)
    sampler: np.ndarray  # (B,) int32 SAMPLER_CODES (generate)

    def __len__(self) -> int:
        return len(self.task)

    @classmethod
    def rows(
        cls,
        task: int,
        seeds: np.ndarray,
        steps: int,
        *,
        pose: np.ndarray | None = None,
        known: np.ndarray | None = None,
        noise_level: float = 0.0,
        sampler: str = "ode",
    ) -> PriorRequest:
        """The rows of one ``InferenceBackend.prior`` call: one per seed, ``pose`` and ``known``
        zeros when None; ``ValueError`` for an unknown sampler."""
        if sampler not in SAMPLER_CODES:
            raise ValueError(f"unknown sampler {sampler!r}: use {', '.join(SAMPLER_CODES)}")
        seed_rows = MODEL.input("SEED").array(seeds).reshape(-1)
        count = len(seed_rows)
        if pose is None:
            pose = np.zeros((count, 21, 3), np.float32)
        if known is None:
            known = np.zeros((count, 21), np.bool_)
        spec = MODEL.input
        return cls(
            task=np.full(count, int(task), spec("TASK").numpy_dtype),
            pose=spec("POSE").array(pose).reshape(count, 21, 3),
            known=spec("KNOWN").array(known).reshape(count, 21),
            seeds=seed_rows,
            steps=np.full(count, steps, spec("STEPS").numpy_dtype),
            noise_level=np.full(count, noise_level, spec("NOISE_LEVEL").numpy_dtype),
            sampler=np.full(count, SAMPLER_CODES[sampler], spec("SAMPLER").numpy_dtype),
        )

    @classmethod
    def concatenate(cls, parts: list[PriorRequest]) -> PriorRequest:
        """The rows of ``parts``, in order."""
        names = [f.name for f in fields(cls)]
        return cls(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in names})


# --------------------------------------------------------------------------- client


def pack_request(rows: PriorRequest) -> Arrays:
    """The request for ``rows``; ``SAMPLER`` only when a row asks for another sampler than the
    ODE (a version without that input then refuses the request)."""
    arrays = {}
    for field, name in _TENSORS.items():
        spec = MODEL.input(name)
        value = spec.array(getattr(rows, field))
        arrays[name] = value.reshape(len(rows), *spec.dims)  # (B,) fields: (B, 1)
    if not arrays["SAMPLER"].any():
        del arrays["SAMPLER"]
    return arrays


def unpack_response(arrays: Arrays) -> np.ndarray:
    """(B, 21, 3) float32 the rows' body poses."""
    return arrays["BODY_POSE"].reshape(-1, 21, 3)


# --------------------------------------------------------------------------- server


def unpack_request(arrays: Arrays) -> PriorRequest:
    """A request's rows (``SAMPLER`` absent: the ODE); ``ValueError`` for a missing input. The
    codes are checked where the rows are run (:func:`shared.prior.rows.group_rows`)."""
    MODEL.require(arrays)
    count = len(arrays["TASK"])
    values = {}
    for field, name in _TENSORS.items():
        spec = MODEL.input(name)
        value = arrays.get(name, np.zeros((count, 1), spec.numpy_dtype))  # SAMPLER: the ODE
        values[field] = np.asarray(value).reshape(count, *_row_dims(spec))
    return PriorRequest(**values)


def pack_response(body_pose: np.ndarray) -> Arrays:
    """The response for the rows' (B, 21, 3) body poses."""
    return {"BODY_POSE": MODEL.output("BODY_POSE").array(body_pose)}
