"""Triton python model ``motion_denoise``: one jittery motion in, a smooth plausible one out.

No batch dimension: each request is one motion of T frames. Inputs: ``JOINTS`` (T, 22, 3), or
``GLOBAL_ORIENT`` (T, 3) + ``BODY_POSE`` (T, 21, 3) with the optional ``PELVIS`` (T, 3);
``FPS`` (1,) float32, the optional ``ITERATIONS`` (1,) int32 (absent or -1: the default),
``SEED`` (1,) int64. Outputs: ``GLOBAL_ORIENT``, ``BODY_POSE``, ``PELVIS``, ``JOINTS``,
``PHENOTYPE`` (6,) and ``PRIOR_VERSION`` (1,) int32 (0: no prior was published).

Runs :meth:`shared.inference.InProcessBackend.denoise_motion`, the code the in-process backend
runs, with the newest published pose prior (reloaded when a newer one is published).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

# The project's path setup, shared by every model: model_repository/bootstrap.py.
_bootstrap = Path(__file__).resolve().parents[2] / "bootstrap.py"
_spec = importlib.util.spec_from_file_location("bodyserve_model_bootstrap", _bootstrap)
_spec.loader.exec_module(importlib.util.module_from_spec(_spec))  # type: ignore[union-attr]

from shared.inference.contracts import MotionInputs, MotionOutputs  # noqa: E402
from shared.inference.local import InProcessBackend  # noqa: E402

OUTPUTS = ("GLOBAL_ORIENT", "BODY_POSE", "PELVIS", "JOINTS", "PHENOTYPE", "PRIOR_VERSION")


def _optional(request, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _scalar(request, name: str) -> np.ndarray:
    value = _optional(request, name)
    if value is None:
        raise ValueError(f"missing input {name}")
    if value.size != 1:
        raise ValueError(f"{name} must hold one value, got shape {value.shape}")
    return value.reshape(-1)


def read_inputs(request) -> MotionInputs:
    iterations = _optional(request, "ITERATIONS")
    count = None if iterations is None else int(iterations.reshape(-1)[0])
    return MotionInputs(
        joints=_optional(request, "JOINTS"),
        global_orient=_optional(request, "GLOBAL_ORIENT"),
        body_pose=_optional(request, "BODY_POSE"),
        pelvis=_optional(request, "PELVIS"),
        fps=float(_scalar(request, "FPS")[0]),
        iterations=None if count is None or count == -1 else count,
        seed=int(_scalar(request, "SEED")[0]),
    )


def output_tensors(result: MotionOutputs) -> list:
    arrays = {
        "GLOBAL_ORIENT": result.global_orient,
        "BODY_POSE": result.body_pose,
        "PELVIS": result.pelvis,
        "JOINTS": result.joints,
        "PHENOTYPE": result.phenotype,
        "PRIOR_VERSION": np.array([result.prior_version or 0], np.int32),
    }
    return [
        pb_utils.Tensor(name, np.ascontiguousarray(arrays[name], dtype=arrays[name].dtype))
        for name in OUTPUTS
    ]


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        if args.get("model_instance_kind") == "GPU":
            import torch

            torch.cuda.set_device(int(args["model_instance_device_id"]))
        self.backend = InProcessBackend()

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:  # one motion each (no batch dimension)
            try:
                result = self.backend.denoise_motion(read_inputs(request))
                responses.append(pb_utils.InferenceResponse(output_tensors=output_tensors(result)))
            except Exception as exc:
                error = pb_utils.TritonError(f"motion_denoise: {type(exc).__name__}: {exc}")
                responses.append(pb_utils.InferenceResponse(error=error))
        return responses
