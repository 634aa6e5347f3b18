"""Triton python model ``keypoints_2d``: the people of an image, padded to ``max_people``.

Tensors and their conversions: :mod:`shared.inference.wire.keypoints_2d` (IMAGE (N, H, W, 3)
uint8 and an optional MAX_PEOPLE in; COUNT, BODY, HANDS, HAND_PRESENT, BBOX, SCORE out, padded
to settings.max_people). Runs :meth:`shared.inference.InProcessBackend.detect` per image.
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
from shared.inference.wire import keypoints_2d as wire  # noqa: E402
from shared.settings import get_settings  # noqa: E402


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        bootstrap.instance_device(args)
        self.max_people = get_settings().max_people
        self.backend = InProcessBackend()
        self.backend.load(detect=True, fit=False)

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:  # one bad request must not fail the others of the batch
                images = wire.unpack_request(
                    bootstrap.request_arrays(request, wire.MODEL), self.max_people
                )
                people = [self.backend.detect(image, n) if n else [] for image, n in images]
                responses.append(bootstrap.response(wire.pack_response(people, self.max_people)))
            except Exception as exc:
                responses.append(
                    bootstrap.error_response(f"keypoints_2d: {type(exc).__name__}: {exc}")
                )
        return responses
