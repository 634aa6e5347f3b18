"""Triton python model ``pose_lift``: 2D keypoint tracks -> N 3D pose hypotheses each.

Batch dimension = tracks (S); per track ``KEYPOINTS`` (T, 33, 3) float32 mediapipe33 pixels +
confidence, ``CAMERA`` (4,) float32, ``HYPOTHESES`` (1,) int32 (one N per request), ``SEED`` (1,)
int64. Outputs per track: one tensor per :class:`shared.inference.LiftOutputs` array field,
upper-cased (``GLOBAL_ORIENT`` (T, N, 3), ``BODY_POSE``, ``PELVIS``, ``JOINTS``,
``KEYPOINTS_2D``, ``REPROJECTION_ERROR`` (T, N)), and ``PRIOR_VERSION`` (1,) int32.

Batching: T is ragged, so Triton's dynamic batcher hands ``execute`` concurrent requests
whatever their T and N; the tracks of every request sharing (T, N) are concatenated along S and
lifted in ONE :meth:`shared.inference.InProcessBackend.lift` call (the code the in-process
backend runs), then split back per request. Each track carries its own seed, so a track's
result does not depend on what it was batched with.
"""

from __future__ import annotations

import importlib.util
from dataclasses import fields
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

# The project's path setup, shared by every model: model_repository/bootstrap.py.
_bootstrap = Path(__file__).resolve().parents[2] / "bootstrap.py"
_spec = importlib.util.spec_from_file_location("bodyserve_model_bootstrap", _bootstrap)
_spec.loader.exec_module(importlib.util.module_from_spec(_spec))  # type: ignore[union-attr]

from shared.inference.contracts import LiftInputs, LiftOutputs  # noqa: E402
from shared.inference.local import InProcessBackend  # noqa: E402

INPUTS = ("KEYPOINTS", "CAMERA", "HYPOTHESES", "SEED")
# Output tensor -> LiftOutputs array field (PRIOR_VERSION is per request, sent apart).
ARRAYS = {f.name.upper(): f.name for f in fields(LiftOutputs) if f.name != "prior_version"}


def read_request(request) -> LiftInputs:
    arrays = {name: pb_utils.get_input_tensor_by_name(request, name) for name in INPUTS}
    missing = [name for name, tensor in arrays.items() if tensor is None]
    if missing:
        raise ValueError(f"missing inputs {missing}")
    keypoints, camera, hypotheses, seed = (arrays[name].as_numpy() for name in INPUTS)
    tracks = len(keypoints)
    counts = np.unique(hypotheses.reshape(-1))
    if len(counts) != 1:
        raise ValueError(f"HYPOTHESES must be the same for every track, got {counts.tolist()}")
    return LiftInputs(
        keypoints=keypoints,
        camera=camera.reshape(tracks, 4),
        hypotheses=int(counts[0]),
        seeds=seed.reshape(tracks),
    )


def output_tensors(result: LiftOutputs, start: int, stop: int) -> list:
    tensors = [
        pb_utils.Tensor(name, np.ascontiguousarray(getattr(result, field)[start:stop], np.float32))
        for name, field in ARRAYS.items()
    ]
    version = np.array([result.prior_version], np.int32)
    return [*tensors, pb_utils.Tensor("PRIOR_VERSION", version)]


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        if args.get("model_instance_kind") == "GPU":
            import torch

            torch.cuda.set_device(int(args["model_instance_device_id"]))
        from shared.lifting.keypoints import KeypointSkeleton

        KeypointSkeleton.neutral()  # Anny's keypoint skeleton, built once (about a second)
        self.backend = InProcessBackend()  # the prior loads on first use, and when republished

    def execute(self, requests: list) -> list:
        errors: dict[int, str] = {}
        inputs: dict[int, LiftInputs] = {}
        for r, request in enumerate(requests):
            try:
                inputs[r] = read_request(request)
            except Exception as exc:  # fails this request only
                errors[r] = f"bad inputs: {exc}"

        groups: dict[tuple[int, int], list[int]] = {}  # (T, N) -> requests
        for r, lift in inputs.items():
            groups.setdefault((lift.keypoints.shape[1], lift.hypotheses), []).append(r)
        responses: dict[int, object] = {}
        for (_, hypotheses), members in groups.items():
            try:
                result = self.backend.lift(
                    LiftInputs(
                        keypoints=np.concatenate([inputs[r].keypoints for r in members]),
                        camera=np.concatenate([inputs[r].camera for r in members]),
                        hypotheses=hypotheses,
                        seeds=np.concatenate([inputs[r].seeds for r in members]),
                    )
                )
            except Exception as exc:  # fails the requests of this group only
                for r in members:
                    errors[r] = f"{type(exc).__name__}: {exc}"
                continue
            start = 0
            for r in members:
                stop = start + len(inputs[r].keypoints)
                tensors = output_tensors(result, start, stop)
                responses[r] = pb_utils.InferenceResponse(output_tensors=tensors)
                start = stop

        for r, message in errors.items():
            error = pb_utils.TritonError(f"pose_lift: {message}")
            responses[r] = pb_utils.InferenceResponse(error=error)
        return [responses[r] for r in range(len(requests))]
