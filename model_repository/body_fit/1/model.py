"""Triton python model ``body_fit``: fit the body model to people, batched across requests.

Batch dimension = people. Inputs per person: ``BODY`` (33, 3), ``HANDS`` (2, 21, 3),
``CAMERA`` (4,) fx, fy, cx, cy, ``ITERATIONS`` (1,) int32, ``SEED`` (1,) int64, and the
optional ``PRIOR`` (1,) int32 (:data:`shared.inference.PRIOR_CODES`: 0 none, 1 pose_prior;
absent or -1: the default). Outputs per person: every field of
:class:`shared.inference.FitOutputs` (``REPROJECTION_ERROR`` and ``PRIOR_VERSION`` as (1,)).

One ``execute`` receives the requests Triton's dynamic batcher gathered. Their people are
concatenated and fitted in ONE call to the backend's ``fit`` per distinct (ITERATIONS, SEED,
PRIOR) triple (usually one), then split back per request.
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

from shared.inference.contracts import (
    DEFAULT_PRIOR_CODE,
    FIT_OUTPUT_TENSORS,
    PRIOR_CODES,
    FitInputs,
    FitOutputs,
    PriorChoice,
)
from shared.inference.local import InProcessBackend

OUTPUTS = FIT_OUTPUT_TENSORS
# Per-person (1,) outputs that are integers rather than float32.
INT_OUTPUTS = {"PRIOR_VERSION"}
PRIOR_OF_CODE: dict[int, PriorChoice | None] = {
    DEFAULT_PRIOR_CODE: None,
    **{code: choice for choice, code in PRIOR_CODES.items()},
}


def _input(request, name: str) -> np.ndarray:
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()


def _prior_codes(request, people: int) -> np.ndarray:
    """(people,) the optional PRIOR input, or the default code when it is absent."""
    tensor = pb_utils.get_input_tensor_by_name(request, "PRIOR")
    if tensor is None:
        return np.full(people, DEFAULT_PRIOR_CODE, np.int32)
    codes = tensor.as_numpy().reshape(-1)
    unknown = sorted({int(c) for c in codes} - set(PRIOR_OF_CODE))
    if unknown:
        known = ", ".join(
            f"{code} = {choice or 'default'}" for code, choice in PRIOR_OF_CODE.items()
        )
        raise ValueError(f"unknown PRIOR code(s) {unknown}: use {known}")
    return codes


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
        # (iterations, seed, prior code) -> [(request index, person index)]
        groups: dict[tuple[int, int, int], list[tuple[int, int]]] = defaultdict(list)
        for r, request in enumerate(requests):
            try:
                arrays = {
                    name: _input(request, name)
                    for name in ("BODY", "HANDS", "CAMERA", "ITERATIONS", "SEED")
                }
                arrays["PRIOR"] = _prior_codes(request, len(arrays["BODY"]))
            except Exception as exc:
                errors[r] = f"bad inputs: {exc}"
                arrays = {}
            inputs.append(arrays)
            if not arrays:
                continue
            per_person_iterations = arrays["ITERATIONS"].reshape(-1)
            per_person_seeds = arrays["SEED"].reshape(-1)
            per_person_priors = arrays["PRIOR"]
            for p in range(len(arrays["BODY"])):
                key = (
                    int(per_person_iterations[p]),
                    int(per_person_seeds[p]),
                    int(per_person_priors[p]),
                )
                groups[key].append((r, p))

        results: list[dict[str, np.ndarray]] = [{} for _ in requests]
        for (iterations, seed, prior), members in groups.items():
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
                        prior=PRIOR_OF_CODE[prior],
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
            dtype = np.int32 if name in INT_OUTPUTS else np.float32
            values = np.asarray(getattr(fitted, field), dtype=dtype)
            if name in ("REPROJECTION_ERROR", "PRIOR_VERSION"):
                values = values.reshape(-1, 1)
            for row, (r, p) in enumerate(members):
                if name not in results[r]:
                    count = len(inputs[r]["BODY"])
                    results[r][name] = np.zeros((count, *values.shape[1:]), dtype)
                results[r][name][p] = values[row]
