"""Triton python model ``pose_prior``: generate, complete or denoise SMPL-X body poses.

This file is the template: the publisher (``services/trainer/publish.py``) copies it into
every version folder ``pose_prior/<N>/`` next to that version's ``prior.pt`` and
``record.json`` (Triton's python backend runs ``<N>/model.py``). The logic lives in
:mod:`shared.prior.rows`, which the in-process backend calls too, so a version's copy only
moves tensors.

Batch dimension = samples. Inputs per sample: ``TASK`` (1,) int32 (:class:`PriorTask`: 0
generate, 1 complete, 2 denoise), ``POSE`` (21, 3) float32 (ignored by generate), ``KNOWN``
(21,) bool (complete), ``SEED`` (1,) int64, ``STEPS`` (1,) int32, ``NOISE_LEVEL`` (1,) float32
(denoise), optional ``SAMPLER`` (1,) int32 (generate: 0 ODE, the default, 1 SDE). Output:
``BODY_POSE`` (21, 3) float32.

One ``execute`` receives the requests Triton's dynamic batcher gathered: their rows are grouped
by (TASK, STEPS, NOISE_LEVEL, SAMPLER) across requests, each group is sampled in one call, and
the rows go back to their requests. Each row has its own seed, so batching never changes a
result.
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

from shared.prior.registry import load_prior_version  # noqa: E402
from shared.prior.rows import group_rows, run_prior_rows  # noqa: E402

REQUIRED = ("TASK", "POSE", "KNOWN", "SEED", "STEPS", "NOISE_LEVEL")
INPUTS = (*REQUIRED, "SAMPLER")


def _read(request) -> dict[str, np.ndarray]:
    arrays = {name: pb_utils.get_input_tensor_by_name(request, name) for name in INPUTS}
    missing = [name for name in REQUIRED if arrays[name] is None]
    if missing:
        raise ValueError(f"missing inputs {missing}")
    out = {name: tensor.as_numpy() for name, tensor in arrays.items() if tensor is not None}
    rows = len(out["TASK"])
    out.setdefault("SAMPLER", np.zeros(rows, np.int32))  # absent: the ODE
    for name in ("TASK", "SEED", "STEPS", "NOISE_LEVEL", "SAMPLER"):
        out[name] = out[name].reshape(rows)
    # Unknown codes fail this request only, not the others of the batch.
    group_rows(out["TASK"], out["STEPS"], out["NOISE_LEVEL"], out["SAMPLER"])
    return out


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        device = "cpu"
        if args.get("model_instance_kind") == "GPU":
            import torch

            torch.cuda.set_device(int(args["model_instance_device_id"]))
            device = f"cuda:{int(args['model_instance_device_id'])}"
        # args["model_repository"] is this model's folder (.../pose_prior), not the root.
        self.version = int(args["model_version"])
        self.prior = load_prior_version(Path(args["model_repository"]), self.version, device)

    def execute(self, requests: list) -> list:
        errors: dict[int, str] = {}
        inputs: dict[int, dict[str, np.ndarray]] = {}
        for r, request in enumerate(requests):
            try:
                inputs[r] = _read(request)
            except Exception as exc:
                errors[r] = f"bad inputs: {exc}"

        order = sorted(inputs)
        if order:
            owner = np.concatenate([np.full(len(inputs[r]["TASK"]), r) for r in order])
            rows = {name: np.concatenate([inputs[r][name] for r in order]) for name in INPUTS}
            out = np.zeros((len(owner), 21, 3), np.float32)
            groups = group_rows(rows["TASK"], rows["STEPS"], rows["NOISE_LEVEL"], rows["SAMPLER"])
            for group, members in groups.items():
                try:
                    out[members] = run_prior_rows(
                        self.prior,
                        group.task,
                        rows["POSE"][members],
                        rows["KNOWN"][members],
                        rows["SEED"][members],
                        group.steps,
                        group.noise_level,
                        group.sampler,
                    )
                except Exception as exc:  # fail the requests of this group only
                    for r in np.unique(owner[members]):
                        errors[int(r)] = f"{type(exc).__name__}: {exc}"

        responses = []
        for r in range(len(requests)):
            if r in errors:
                error = pb_utils.TritonError(f"pose_prior v{self.version}: {errors[r]}")
                responses.append(pb_utils.InferenceResponse(error=error))
            else:
                tensor = pb_utils.Tensor("BODY_POSE", np.ascontiguousarray(out[owner == r]))
                responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses
