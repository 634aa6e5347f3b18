"""Body-part segmentation labels, defined from Anny's skinning.

Part segmentation images are ``uint8``: 0 is the background, 1..14 the parts below. "left" and
"right" are the person's own (as in COCO and mediapipe; Anny's ``.L`` bones, at +X in its world).

===  ===================  ==================================================================
id   part                 Anny bones whose skinning weight it sums
===  ===================  ==================================================================
1    head                 neck01-03, head, eye.L/R (the neck is part of the head)
2    torso                root, spine01-05, pelvis.L/R, clavicle.L/R, shoulder01.L/R
3    left_upper_arm       upperarm01-02.L
4    right_upper_arm      upperarm01-02.R
5    left_lower_arm       lowerarm01-02.L
6    right_lower_arm      lowerarm01-02.R
7    left_hand            wrist.L, metacarpal*.L, finger*.L
8    right_hand           wrist.R, metacarpal*.R, finger*.R
9    left_upper_leg       upperleg01-02.L
10   right_upper_leg      upperleg01-02.R
11   left_lower_leg       lowerleg01-02.L
12   right_lower_leg      lowerleg01-02.R
13   left_foot            foot.L, toe*.L
14   right_foot           foot.R, toe*.R
===  ===================  ==================================================================

A vertex belongs to the part with the largest summed skinning weight (so borders follow the
joints: the elbow's border is where the forearm's bones take over from the upper arm's). A
triangle belongs to the part most of its three vertices belong to (the first vertex's part when
all three differ): segmentation images are drawn per triangle, so every pixel's part is exactly
the part of the triangle seen through its centre.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Final

import numpy as np

from shared.bodies.anny_model import get_anny

BODY_PARTS: Final[tuple[str, ...]] = (
    "head",
    "torso",
    "left_upper_arm",
    "right_upper_arm",
    "left_lower_arm",
    "right_lower_arm",
    "left_hand",
    "right_hand",
    "left_upper_leg",
    "right_upper_leg",
    "left_lower_leg",
    "right_lower_leg",
    "left_foot",
    "right_foot",
)
"""Part names; the part with id ``i`` (1-based) is ``BODY_PARTS[i - 1]``; 0 is the background."""

PART_IDS: Final[dict[str, int]] = {name: i + 1 for i, name in enumerate(BODY_PARTS)}

# Bone name prefix (before ".L"/".R") -> part name without its side ("" for unsided parts).
_LIMB_PREFIXES: Final[dict[str, str]] = {
    "upperarm": "upper_arm",
    "lowerarm": "lower_arm",
    "wrist": "hand",
    "metacarpal": "hand",
    "finger": "hand",
    "upperleg": "upper_leg",
    "lowerleg": "lower_leg",
    "foot": "foot",
    "toe": "foot",
}
_HEAD_BONES: Final[tuple[str, ...]] = ("neck", "head", "eye")


def anny_bone_part(bone: str) -> int:
    """The part id (1..14) of an Anny bone, e.g. ``"lowerarm01.L"`` -> 5 (left_lower_arm)."""
    name, _, side = bone.partition(".")
    if name.startswith(_HEAD_BONES):
        return PART_IDS["head"]
    for prefix, part in _LIMB_PREFIXES.items():
        if name.startswith(prefix):
            if side not in ("L", "R"):
                raise ValueError(f"Anny bone {bone!r} should end in .L or .R")
            return PART_IDS[f"{'left' if side == 'L' else 'right'}_{part}"]
    # root, spine*, pelvis.*, clavicle.*, shoulder01.*: the trunk.
    return PART_IDS["torso"]


def vertex_parts_from_skinning(
    bone_indices: np.ndarray, bone_weights: np.ndarray, bone_parts: np.ndarray
) -> np.ndarray:
    """(V, K) bone indices + (V, K) weights + (J,) part per bone -> (V,) uint8 part per vertex."""
    indices = np.asarray(bone_indices, dtype=np.int64)
    weights = np.asarray(bone_weights, dtype=np.float64)
    parts = np.asarray(bone_parts, dtype=np.int64)[indices]  # (V, K)
    per_part = np.zeros((len(indices), len(BODY_PARTS) + 1))
    np.add.at(per_part, (np.arange(len(indices))[:, None], parts), weights)
    return np.asarray(np.argmax(per_part, axis=1), np.uint8)


def face_parts(faces: np.ndarray, vertex_parts: np.ndarray) -> np.ndarray:
    """(F, 3) triangles + (V,) vertex parts -> (F,) uint8: the majority part of each triangle
    (its first vertex's part when all three differ)."""
    p = np.asarray(vertex_parts)[np.asarray(faces)]
    second_agrees = (p[:, 1] == p[:, 2]) & (p[:, 0] != p[:, 1])
    return np.where(second_agrees, p[:, 1], p[:, 0]).astype(np.uint8)


@lru_cache(maxsize=1)
def anny_vertex_parts() -> np.ndarray:
    """(V,) uint8 part id of each vertex of Anny's mesh, read-only. The same for every phenotype
    and pose: the skinning weights do not change."""

    body = get_anny()
    model = body.model
    bone_parts = np.array([anny_bone_part(b) for b in body.bone_labels])
    parts = vertex_parts_from_skinning(
        model.vertex_bone_indices.cpu().numpy(), model.vertex_bone_weights.cpu().numpy(), bone_parts
    )
    parts.setflags(write=False)
    return parts
