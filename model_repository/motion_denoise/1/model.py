"""Triton python model ``motion_denoise``: a jittery motion (T frames) in, a smooth and
plausible one out; one motion per request (no batch dimension).

Tensors and their conversions: :mod:`shared.inference.wire.motion_denoise` (the motion as
JOINTS or as GLOBAL_ORIENT + BODY_POSE (+ PELVIS), FPS, ITERATIONS, SEED in; the motion,
PHENOTYPE and PRIOR_VERSION out). Runs :meth:`shared.inference.InProcessBackend.denoise_motion`,
the code the in-process backend runs, with the newest published pose prior (reloaded when a
newer one is published).
"""

from __future__ import annotations

import sys
from pathlib import Path

# The models' shared setup, model_repository/bootstrap.py (the project on sys.path, tensors
# <-> arrays): the first one above this file's real path (a version's model.py may be a link).
_parents = Path(__file__).resolve().parents
sys.path.insert(0, str(next(p for p in _parents if (p / "bootstrap.py").is_file())))
import bootstrap  # noqa: E402

from shared.inference.local import InProcessBackend  # noqa: E402
from shared.inference.wire import motion_denoise as wire  # noqa: E402


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        bootstrap.instance_device(args)
        self.backend = InProcessBackend()

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:  # one motion each
            try:
                motion = wire.unpack_request(bootstrap.request_arrays(request, wire.MODEL))
                result = self.backend.denoise_motion(motion)
                responses.append(bootstrap.response(wire.pack_response(result)))
            except Exception as exc:
                message = f"motion_denoise: {type(exc).__name__}: {exc}"
                responses.append(bootstrap.error_response(message))
        return responses
