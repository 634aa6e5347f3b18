"""Keypoint formats, named and documented in one place.

Every 2D keypoint array in bodyserve has shape ``(K, 3)``: ``x`` and ``y`` in pixels of the
original image (origin top-left, x right, y down) and a confidence in ``[0, 1]``; a missing
keypoint has confidence 0 (its coordinates are then meaningless). "left" and "right" are
always the person's own left and right, as in COCO and mediapipe.

Formats:

- ``coco17``: the 17 COCO person keypoints (COCO 2017 keypoint task).
- ``coco17_feet``: ``coco17`` plus the six COCO-WholeBody foot points (big toe, small toe,
  heel, per side). Anny ships a vertex regressor for exactly these 23 points.
- ``mediapipe33``: mediapipe's BlazePose landmarks. ``*_pinky``, ``*_index`` and ``*_thumb`` are
  the hand points BlazePose predicts from the body (roughly the knuckles and the thumb tip);
  ``*_foot_index`` is the tip of the toes.
- ``hand21``: mediapipe's hand landmarks, per hand (wrist, then four joints per finger from the
  base to the tip, thumb first).
- ``face468``: mediapipe's face mesh; only indices with a name below are used by bodyserve.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import numpy as np

COCO17: Final[tuple[str, ...]] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)

COCO17_FEET: Final[tuple[str, ...]] = (
    *COCO17,
    "left_big_toe",
    "right_big_toe",
    "left_small_toe",
    "right_small_toe",
    "left_heel",
    "right_heel",
)

MEDIAPIPE33: Final[tuple[str, ...]] = (
    "nose",
    "left_eye_inner",
    "left_eye",
    "left_eye_outer",
    "right_eye_inner",
    "right_eye",
    "right_eye_outer",
    "left_ear",
    "right_ear",
    "mouth_left",
    "mouth_right",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_pinky",
    "right_pinky",
    "left_index",
    "right_index",
    "left_thumb",
    "right_thumb",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
    "left_heel",
    "right_heel",
    "left_foot_index",
    "right_foot_index",
)

HAND21: Final[tuple[str, ...]] = (
    "wrist",
    "thumb_cmc",
    "thumb_mcp",
    "thumb_ip",
    "thumb_tip",
    "index_mcp",
    "index_pip",
    "index_dip",
    "index_tip",
    "middle_mcp",
    "middle_pip",
    "middle_dip",
    "middle_tip",
    "ring_mcp",
    "ring_pip",
    "ring_dip",
    "ring_tip",
    "pinky_mcp",
    "pinky_pip",
    "pinky_dip",
    "pinky_tip",
)

# The few face-mesh landmarks bodyserve names (mediapipe face mesh indices).
FACE468_NAMED: Final[dict[str, int]] = {
    "nose_tip": 1,
    "chin": 152,
    "left_eye_outer": 263,
    "right_eye_outer": 33,
    "mouth_left": 291,
    "mouth_right": 61,
    "forehead": 10,
}
FACE468_SIZE: Final[int] = 468

FORMATS: Final[dict[str, tuple[str, ...]]] = {
    "coco17": COCO17,
    "coco17_feet": COCO17_FEET,
    "mediapipe33": MEDIAPIPE33,
    "hand21": HAND21,
}


# Left/right pairs, for flipping and for symmetric losses.
def mirror_index(names: tuple[str, ...]) -> list[int]:
    """Index permutation that swaps every left_* name with its right_* twin."""

    def swap(name: str) -> str:
        if name.startswith("left_"):
            return "right_" + name[5:]
        if name.startswith("right_"):
            return "left_" + name[6:]
        return name

    position = {name: i for i, name in enumerate(names)}
    return [position[swap(name)] for name in names]


def convert(keypoints: np.ndarray, source: str, target: str) -> np.ndarray:
    """Reorder ``(..., K, 3)`` keypoints from one named format to another.

    Points of ``target`` that ``source`` lacks come out with confidence 0.
    """
    src_names, dst_names = FORMATS[source], FORMATS[target]
    if keypoints.shape[-2] != len(src_names):
        raise ValueError(
            f"{source} has {len(src_names)} keypoints, got an array with {keypoints.shape[-2]}"
        )
    out = np.zeros((*keypoints.shape[:-2], len(dst_names), keypoints.shape[-1]), keypoints.dtype)
    src_pos = {name: i for i, name in enumerate(src_names)}
    for j, name in enumerate(dst_names):
        if name in src_pos:
            out[..., j, :] = keypoints[..., src_pos[name], :]
    return out


@dataclass
class PersonKeypoints:
    """Everything the 2D detector found for one person, in original-image pixels."""

    bbox: np.ndarray  # (4,) x0, y0, x1, y1
    score: float  # person-detection confidence
    body: np.ndarray  # (33, 3) mediapipe33
    left_hand: np.ndarray | None = None  # (21, 3) hand21, None when not visible
    right_hand: np.ndarray | None = None  # (21, 3) hand21
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def coco17(self) -> np.ndarray:
        return convert(self.body, "mediapipe33", "coco17")
