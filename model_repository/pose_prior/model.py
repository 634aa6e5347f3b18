"""Triton python model ``pose_prior``: generate, complete or denoise SMPL-X body poses.

The model's one implementation: every version folder ``pose_prior/<N>/`` holds what differs
(``prior.pt``, ``record.json``) and a link ``model.py -> ../model.py`` to this file, which the
publisher (``services/trainer/publish.py``) makes (Triton's python backend runs
``<N>/model.py``; docs/model_versions.md). The version comes from Triton (``model_version``),
so the same code serves each version's weights.

Tensors and their conversions: :mod:`shared.inference.wire.pose_prior` (per row TASK, POSE,
KNOWN, SEED, STEPS, NOISE_LEVEL and the optional SAMPLER in; BODY_POSE out). The sampling is
:mod:`shared.prior.rows`, which the in-process backend runs too.

One ``execute`` receives the requests Triton's dynamic batcher gathered: their rows are grouped
by (TASK, STEPS, NOISE_LEVEL, SAMPLER) across requests, each group is sampled in one call, and
the rows go back to their requests. Each row has its own seed, so batching never changes a
result.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

# The models' shared setup, model_repository/bootstrap.py (the project on sys.path, tensors
# <-> arrays): the first one above this file's real path (a version's model.py may be a link).
_parents = Path(__file__).resolve().parents
sys.path.insert(0, str(next(p for p in _parents if (p / "bootstrap.py").is_file())))
import bootstrap  # noqa: E402

from shared.inference.wire import pose_prior as wire  # noqa: E402
from shared.prior.registry import load_prior_version  # noqa: E402
from shared.prior.rows import group_rows, run_prior_rows  # noqa: E402


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        device = bootstrap.instance_device(args)
        # args["model_repository"] is this model's folder (.../pose_prior), not the root.
        self.version = int(args["model_version"])
        self.prior = load_prior_version(Path(args["model_repository"]), self.version, device)

    def execute(self, requests: list) -> list:
        errors: dict[int, str] = {}
        inputs: dict[int, wire.PriorRequest] = {}
        for r, request in enumerate(requests):
            try:
                rows = wire.unpack_request(bootstrap.request_arrays(request, wire.MODEL))
                # Unknown codes fail this request only, not the others of the batch.
                group_rows(rows.task, rows.steps, rows.noise_level, rows.sampler)
                inputs[r] = rows
            except Exception as exc:
                errors[r] = f"bad inputs: {exc}"

        order = sorted(inputs)
        out = np.zeros((0, 21, 3), np.float32)
        owner = np.zeros(0, np.int64)
        if order:
            owner = np.concatenate([np.full(len(inputs[r]), r) for r in order])
            rows = wire.PriorRequest.concatenate([inputs[r] for r in order])
            out = np.zeros((len(rows), 21, 3), np.float32)
            groups = group_rows(rows.task, rows.steps, rows.noise_level, rows.sampler)
            for group, members in groups.items():
                try:
                    out[members] = run_prior_rows(
                        self.prior,
                        group.task,
                        rows.pose[members],
                        rows.known[members],
                        rows.seeds[members],
                        group.steps,
                        group.noise_level,
                        group.sampler,
                    )
                except Exception as exc:  # fail the requests of this group only
                    for r in np.unique(owner[members]):
                        errors[int(r)] = f"{type(exc).__name__}: {exc}"

        return [
            bootstrap.error_response(f"pose_prior v{self.version}: {errors[r]}")
            if r in errors
            else bootstrap.response(wire.pack_response(out[owner == r]))
            for r in range(len(requests))
        ]
