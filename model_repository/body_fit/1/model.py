"""Triton python model ``body_fit``: fit the body model to people, batched across requests.

Tensors and their conversions: :mod:`shared.inference.wire.body_fit` (per person BODY, HANDS,
CAMERA, ITERATIONS, SEED and the optional PRIOR in; every :class:`shared.inference.FitOutputs`
field out).

One ``execute`` receives the requests Triton's dynamic batcher gathered. Their people are
concatenated and fitted in ONE call to :meth:`shared.inference.InProcessBackend.fit` per
distinct (ITERATIONS, SEED, PRIOR) triple (usually one), then split back per request.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

# The models' shared setup, model_repository/bootstrap.py (the project on sys.path, tensors
# <-> arrays): the first one above this file's real path (a version's model.py may be a link).
_parents = Path(__file__).resolve().parents
sys.path.insert(0, str(next(p for p in _parents if (p / "bootstrap.py").is_file())))
import bootstrap  # noqa: E402

from shared.inference.contracts import FitInputs, PriorChoice  # noqa: E402
from shared.inference.local import InProcessBackend  # noqa: E402
from shared.inference.wire import body_fit as wire  # noqa: E402

# A group's key, and its members: (request, the indices of its people, their inputs).
Key = tuple[int, int, PriorChoice | None]
Member = tuple[int, np.ndarray, FitInputs]


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        bootstrap.instance_device(args)
        self.backend = InProcessBackend()
        self.backend.load(detect=False, fit=True)

    def execute(self, requests: list) -> list:
        errors: dict[int, str] = {}
        people: dict[int, int] = {}  # request -> its number of people
        groups: dict[Key, list[Member]] = defaultdict(list)
        for r, request in enumerate(requests):
            try:
                arrays = bootstrap.request_arrays(request, wire.MODEL)
                parts = wire.unpack_request(arrays)
            except Exception as exc:
                errors[r] = f"bad inputs: {exc}"
                continue
            people[r] = len(arrays["BODY"])
            for index, fit in parts:
                groups[(fit.iterations, fit.seed, fit.prior)].append((r, index, fit))

        results: dict[int, dict[str, np.ndarray]] = {}
        for (iterations, seed, prior), members in groups.items():
            members = [member for member in members if member[0] not in errors]
            if not members:
                continue
            try:
                fitted = self.backend.fit(
                    FitInputs(
                        body=np.concatenate([fit.body for _, _, fit in members]),
                        hands=np.concatenate([fit.hands for _, _, fit in members]),
                        camera=np.concatenate([fit.camera for _, _, fit in members]),
                        iterations=iterations,
                        seed=seed,
                        prior=prior,
                    )
                )
            except Exception as exc:  # fail the requests of this group only
                for r, _, _ in members:
                    errors[r] = f"{type(exc).__name__}: {exc}"
                continue
            self._scatter(wire.pack_response(fitted), members, people, results)

        return [
            bootstrap.error_response(f"body_fit: {errors[r]}")
            if r in errors
            else bootstrap.response(results[r])
            for r in range(len(requests))
        ]

    @staticmethod
    def _scatter(
        packed: dict[str, np.ndarray],
        members: list[Member],
        people: dict[int, int],
        results: dict[int, dict[str, np.ndarray]],
    ) -> None:
        """A group's response rows into its members' responses, at their people's rows."""
        start = 0
        for r, index, _ in members:
            stop = start + len(index)
            out = results.setdefault(r, {})
            for name, values in packed.items():
                if name not in out:
                    out[name] = np.zeros((people[r], *values.shape[1:]), values.dtype)
                out[name][index] = values[start:stop]
            start = stop
