"""Triton python model ``body_fit``: fit the body model to people, batched across requests.

Batch dimension = people. Inputs per person: ``BODY`` (33, 3), ``HANDS`` (2, 21, 3),
``CAMERA`` (4,) fx, fy, cx, cy, ``ITERATIONS`` (1,) int32, ``SEED`` (1,) int64. Outputs per
person: every field of :class:`shared.inference.FitOutputs` (``REPROJECTION_ERROR`` as (1,)).

One ``execute`` receives the requests Triton's dynamic batcher gathered. Their people are
concatenated and fitted in ONE call to the backend's ``fit`` per distinct (ITERATIONS, SEED)
pair (usually one), then split back per request.
"""

from __future__ import annotations

import importlib.util
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

# The project's path setup, shared by every model: model_repository/bootstrap.py.
_bootstrap = Path(__file__).resolve().parents[2] / "bootstrap.py"
_spec = importlib.util.spec_from_file_location("bodyserve_model_bootstrap", _bootstrap)
_spec.loader.exec_module(importlib.util.module_from_spec(_spec))  # type: ignore[union-attr]

from shared.inference import (  # noqa: E402
    FIT_OUTPUT_TENSORS,
    FitInputs,
    FitOutputs,
    InProcessBackend,
)

OUTPUTS = FIT_OUTPUT_TENSORS


def _input(request, name: str) -> np.ndarray:
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        if args.get("model_instance_kind") == "GPU":
            import torch

            torch.cuda.set_device(int(args["model_instance_device_id"]))
        self.config = json.loads(args["model_config"])
        self.backend = InProcessBackend()
        self.backend.load(detect=False, fit=True)

    def execute(self, requests: list) -> list:
        errors: dict[int, str] = {}
        inputs: list[dict[str, np.ndarray]] = []
        # (iterations, seed) -> [(request index, person index)]
        groups: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
        for r, request in enumerate(requests):
            try:
                arrays = {
                    name: _input(request, name)
                    for name in ("BODY", "HANDS", "CAMERA", "ITERATIONS", "SEED")
                }
            except Exception as exc:
                errors[r] = f"bad inputs: {exc}"
                arrays = {}
            inputs.append(arrays)
            if not arrays:
                continue
            per_person_iterations = arrays["ITERATIONS"].reshape(-1)
            per_person_seeds = arrays["SEED"].reshape(-1)
            for p in range(len(arrays["BODY"])):
                key = (int(per_person_iterations[p]), int(per_person_seeds[p]))
                groups[key].append((r, p))

        results: list[dict[str, np.ndarray]] = [{} for _ in requests]
        for (iterations, seed), members in groups.items():
            members = [(r, p) for r, p in members if r not in errors]
            if not members:
                continue
            try:
                fitted = self.backend.fit(
                    FitInputs(
                        body=np.stack([inputs[r]["BODY"][p] for r, p in members]),
                        hands=np.stack([inputs[r]["HANDS"][p] for r, p in members]),
                        camera=np.stack([inputs[r]["CAMERA"][p] for r, p in members]),
                        iterations=iterations,
                        seed=seed,
                    )
                )
                self._scatter(fitted, members, inputs, results)
            except Exception as exc:  # fail the requests of this group only
                for r, _ in members:
                    errors[r] = f"{type(exc).__name__}: {exc}"

        responses = []
        for r in range(len(requests)):
            if r in errors:
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(f"body_fit: {errors[r]}"))
                )
            else:
                tensors = [pb_utils.Tensor(name, results[r][name]) for name in OUTPUTS]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    @staticmethod
    def _scatter(
        fitted: FitOutputs,
        members: list[tuple[int, int]],
        inputs: list[dict[str, np.ndarray]],
        results: list[dict[str, np.ndarray]],
    ) -> None:
        for name, field in OUTPUTS.items():
            values = np.asarray(getattr(fitted, field), dtype=np.float32)
            if name == "REPROJECTION_ERROR":
                values = values.reshape(-1, 1)
            for row, (r, p) in enumerate(members):
                if name not in results[r]:
                    count = len(inputs[r]["BODY"])
                    results[r][name] = np.zeros((count, *values.shape[1:]), np.float32)
                results[r][name][p] = values[row]
