"""Triton python model ``keypoints_2d``: the people of an image, padded to ``max_people``.

Inputs: ``IMAGE`` (N, H, W, 3) uint8 RGB, optional ``MAX_PEOPLE`` (N, 1) int32.
Outputs per image (P = settings.max_people): ``COUNT`` (1,) int32, ``BODY`` (P, 33, 3),
``HANDS`` (P, 2, 21, 3) left then right, ``HAND_PRESENT`` (P, 2) bool, ``BBOX`` (P, 4),
``SCORE`` (P,), all float32 except as noted; rows past ``COUNT`` are zeros.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

# The project's path setup, shared by every model: model_repository/bootstrap.py.
_bootstrap = Path(__file__).resolve().parents[2] / "bootstrap.py"
_spec = importlib.util.spec_from_file_location("bodyserve_model_bootstrap", _bootstrap)
_spec.loader.exec_module(importlib.util.module_from_spec(_spec))  # type: ignore[union-attr]

from shared.inference.local import InProcessBackend  # noqa: E402
from shared.settings import get_settings  # noqa: E402


def pack(people: list, max_people: int) -> dict[str, np.ndarray]:
    """Padded arrays for one image's detections (the first ``max_people``)."""
    people = people[:max_people]
    out = {
        "COUNT": np.array([len(people)], np.int32),
        "BODY": np.zeros((max_people, 33, 3), np.float32),
        "HANDS": np.zeros((max_people, 2, 21, 3), np.float32),
        "HAND_PRESENT": np.zeros((max_people, 2), bool),
        "BBOX": np.zeros((max_people, 4), np.float32),
        "SCORE": np.zeros((max_people,), np.float32),
    }
    for i, person in enumerate(people):
        out["BODY"][i] = person.body
        out["BBOX"][i] = person.bbox
        out["SCORE"][i] = person.score
        for side, hand in enumerate((person.left_hand, person.right_hand)):
            if hand is not None:
                out["HANDS"][i, side] = hand
                out["HAND_PRESENT"][i, side] = True
    return out


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        if args.get("model_instance_kind") == "GPU":
            import torch

            torch.cuda.set_device(int(args["model_instance_device_id"]))
        self.config = json.loads(args["model_config"])
        self.max_people = get_settings().max_people
        self.backend = InProcessBackend()
        self.backend.load(detect=True, fit=False)

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except Exception as exc:  # one bad request must not fail the others of the batch
                responses.append(
                    pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"keypoints_2d: {type(exc).__name__}: {exc}")
                    )
                )
        return responses

    def _one(self, request) -> object:
        images = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
        limit = pb_utils.get_input_tensor_by_name(request, "MAX_PEOPLE")
        limits = (
            np.full((len(images),), self.max_people)
            if limit is None
            else limit.as_numpy().reshape(len(images), -1)[:, 0]
        )
        per_image = []
        for image, wanted in zip(images, limits, strict=True):
            wanted = int(min(max(int(wanted), 0), self.max_people))
            people = self.backend.detect(np.ascontiguousarray(image), wanted) if wanted else []
            per_image.append(pack(people, self.max_people))
        tensors = [
            pb_utils.Tensor(name, np.stack([p[name] for p in per_image])) for name in per_image[0]
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)
