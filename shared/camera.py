"""The pinhole camera of a photo whose intrinsics are unknown."""

from __future__ import annotations

import math

import numpy as np

# The field of view assumed when neither the request nor the photo's EXIF gives a focal length:
# about what phones and compact cameras take.
DEFAULT_FOV_DEG = 50.0


def default_camera(width: int, height: int, focal_length_px: float | None) -> np.ndarray:
    focal = focal_length_px or max(width, height) / (
        2 * math.tan(math.radians(DEFAULT_FOV_DEG) / 2)
    )
    return np.array([focal, focal, width / 2, height / 2], dtype=np.float32)
