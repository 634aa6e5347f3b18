"""The body-model interface every implementation (Anny, SMPL-X) follows.

Shapes are explicit: ``B`` people, ``V`` vertices, ``F`` faces, ``J`` joints.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

# Anny's world is Z-up, the body facing -Y with its left at +X; SMPL-X's is Y-up, facing +Z,
# left at +X. This rotation takes Anny world coordinates to SMPL-X world coordinates.
ANNY_TO_SMPLX_WORLD = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])

# OpenCV camera (x right, y down, z ahead) looking at a body that stands upright and faces it:
# rotation from Anny world coordinates to that camera frame (its left shows on the image's right).
ANNY_TO_CAMERA = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


class BodyModel(Protocol):
    """What every body model offers (Anny: ``AnnyBody``; SMPL-X: ``SmplxBody``)."""

    name: str
    faces: np.ndarray  # (F, 3) int64 triangles

    @property
    def vertex_count(self) -> int: ...

    @property
    def joint_names(self) -> list[str]: ...
