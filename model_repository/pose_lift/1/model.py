"""Triton python model ``pose_lift``: 2D keypoint tracks -> N 3D pose hypotheses each.

Tensors and their conversions: :mod:`shared.inference.wire.pose_lift` (per track KEYPOINTS
(T, 33, 3), CAMERA, HYPOTHESES, SEED in; one tensor per :class:`shared.inference.LiftOutputs`
field out).

Batching: T is ragged, so Triton's dynamic batcher hands ``execute`` concurrent requests
whatever their T and N; the tracks of every request sharing (T, N) are concatenated along S and
lifted in ONE :meth:`shared.inference.InProcessBackend.lift` call (the code the in-process
backend runs), then split back per request. Each track carries its own seed, so a track's
result does not depend on what it was batched with.
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

from shared.inference.contracts import LiftInputs  # noqa: E402
from shared.inference.local import InProcessBackend  # noqa: E402
from shared.inference.wire import pose_lift as wire  # noqa: E402
from shared.inference.wire import take  # noqa: E402
from shared.lifting.keypoints import KeypointSkeleton  # noqa: E402


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        bootstrap.instance_device(args)
        KeypointSkeleton.neutral()  # Anny's keypoint skeleton, built once (about a second)
        self.backend = InProcessBackend()  # the prior loads on first use, and when republished

    def execute(self, requests: list) -> list:
        errors: dict[int, str] = {}
        inputs: dict[int, LiftInputs] = {}
        for r, request in enumerate(requests):
            try:
                inputs[r] = wire.unpack_request(bootstrap.request_arrays(request, wire.MODEL))
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
            packed = wire.pack_response(result)
            start = 0
            for r in members:
                stop = start + len(inputs[r].keypoints)
                responses[r] = bootstrap.response(take(packed, slice(start, stop)))
                start = stop

        for r, message in errors.items():
            responses[r] = bootstrap.error_response(f"pose_lift: {message}")
        return [responses[r] for r in range(len(requests))]
