"""``keypoints_2d``: the people of RGB images (batch dimension = images).

In: ``IMAGE`` (H, W, 3) uint8 per image, the optional ``MAX_PEOPLE`` (1,) int32 (absent: the
server's ``settings.max_people``). Out per image, padded to the server's ``max_people`` (P):
``COUNT`` (1,) int32 (the rows that are real), ``BODY`` (P, 33, 3) mediapipe33, ``HANDS``
(P, 2, 21, 3) left then right, ``HAND_PRESENT`` (P, 2) bool, ``BBOX`` (P, 4), ``SCORE`` (P,),
float32 but for COUNT and HAND_PRESENT; rows past COUNT and absent hands are zeros.
"""

from __future__ import annotations

import numpy as np

from shared.inference.wire.tensors import Arrays, ModelSpec, TensorSpec
from shared.keypoints.formats import PersonKeypoints

MODEL = ModelSpec(
    name="keypoints_2d",
    max_batch_size=8,
    inputs=(
        TensorSpec("IMAGE", "UINT8", (-1, -1, 3)),
        TensorSpec("MAX_PEOPLE", "INT32", (1,), optional=True),
    ),
    outputs=(
        TensorSpec("COUNT", "INT32", (1,)),
        TensorSpec("BODY", "FP32", (-1, 33, 3)),
        TensorSpec("HANDS", "FP32", (-1, 2, 21, 3)),
        TensorSpec("HAND_PRESENT", "BOOL", (-1, 2)),
        TensorSpec("BBOX", "FP32", (-1, 4)),
        TensorSpec("SCORE", "FP32", (-1,)),
    ),
)


# --------------------------------------------------------------------------- client


def pack_request(image: np.ndarray, max_people: int) -> Arrays:
    """The request for one RGB ``(H, W, 3)`` image (``ValueError`` for another shape)."""
    image = MODEL.input("IMAGE").array(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB (H, W, 3) image, got shape {image.shape}")
    return {"IMAGE": image[None], "MAX_PEOPLE": np.array([[max_people]], np.int32)}


def unpack_response(arrays: Arrays) -> list[list[PersonKeypoints]]:
    """The people of each image of a response, most confident first."""
    images = []
    for n in range(len(arrays["COUNT"])):
        people = []
        for i in range(int(arrays["COUNT"][n].reshape(-1)[0])):
            hands = arrays["HANDS"][n, i].astype(np.float32)
            present = arrays["HAND_PRESENT"][n, i]
            people.append(
                PersonKeypoints(
                    bbox=arrays["BBOX"][n, i].astype(np.float32),
                    score=float(arrays["SCORE"][n, i]),
                    body=arrays["BODY"][n, i].astype(np.float32),
                    left_hand=hands[0] if present[0] else None,
                    right_hand=hands[1] if present[1] else None,
                )
            )
        images.append(people)
    return images


# --------------------------------------------------------------------------- server


def unpack_request(arrays: Arrays, max_people: int) -> list[tuple[np.ndarray, int]]:
    """(image, people wanted) per image of a request: ``MAX_PEOPLE`` kept to 0..``max_people``
    (the server's limit), which it is when absent."""
    MODEL.require(arrays)
    images = arrays["IMAGE"]
    if "MAX_PEOPLE" in arrays:
        limits = np.asarray(arrays["MAX_PEOPLE"]).reshape(len(images), -1)[:, 0]
    else:
        limits = np.full((len(images),), max_people)
    wanted = [int(min(max(int(limit), 0), max_people)) for limit in limits]
    return [(np.ascontiguousarray(image), n) for image, n in zip(images, wanted, strict=True)]


def pack_response(people: list[list[PersonKeypoints]], max_people: int) -> Arrays:
    """The response for each image's detections (the first ``max_people`` of each)."""
    per_image = [_pad(found, max_people) for found in people]
    return {name: np.stack([p[name] for p in per_image]) for name in MODEL.output_names}


def _pad(people: list[PersonKeypoints], max_people: int) -> Arrays:
    """One image's arrays, padded to ``max_people`` rows."""
    people = people[:max_people]
    out = {
        spec.name: np.zeros((max_people, *spec.dims[1:]), spec.numpy_dtype)
        for spec in MODEL.outputs
    }
    out["COUNT"] = np.array([len(people)], MODEL.output("COUNT").numpy_dtype)
    for i, person in enumerate(people):
        out["BODY"][i] = person.body
        out["BBOX"][i] = person.bbox
        out["SCORE"][i] = person.score
        for side, hand in enumerate((person.left_hand, person.right_hand)):
            if hand is not None:
                out["HANDS"][i, side] = hand
                out["HAND_PRESENT"][i, side] = True
    return out
