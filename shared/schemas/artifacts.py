"""Artifact names and content types: what each job can write, and what is served."""

from __future__ import annotations

import re
from enum import StrEnum


class Output(StrEnum):
    glb = "glb"
    obj = "obj"
    ply = "ply"
    overlay = "overlay"
    npz = "npz"
    json = "json"


DEFAULT_OUTPUTS = (Output.glb, Output.overlay, Output.npz, Output.json)

# Artifacts a mesh-recovery job can produce, with their content types.
CONTENT_TYPES = {
    "mesh.glb": "model/gltf-binary",
    "mesh.obj": "text/plain",
    "mesh.ply": "application/octet-stream",
    "overlay.png": "image/png",
    # With hypotheses > 1 and the overlay output: every hypothesis on the photo and from the side.
    "spread.png": "image/png",
    "params.npz": "application/octet-stream",
    "result.json": "application/json",
    # Pose generation / completion (outputs "mesh") and motion denoising.
    "poses.glb": "model/gltf-binary",
    "poses.obj": "text/plain",
    "motion.bvh": "text/plain",
}
# A dataset job's files besides its shards.
DATASET_FILES = {
    "card.json": "application/json",
    "index.json": "application/json",
    "contact_sheet.png": "image/png",
}
# Shards and their sidecars: <name>-<6 digits>.tar / .json (shared.datasets.spec.shard_name).
_DATASET_SHARD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*-\d{6}\.(tar|json)")
# Image generation: per image i, image-<i>.png, its ControlNet depth-<i>.png and, when it was
# regenerated, the first pass first-<i>.png (shared.diffusion.schemas).
_GENERATED_IMAGE = re.compile(r"(image|depth|first)-\d{3}\.png")


def artifact_content_type(capability: str, name: str) -> str | None:
    """The content type of a job's artifact ``name``, or None when no such artifact is served
    (uploads, for one, never are)."""
    if capability == "dataset_generation":
        if name in DATASET_FILES:
            return DATASET_FILES[name]
        match = _DATASET_SHARD.fullmatch(name)  # whole: "$" would accept a trailing newline
        if match:
            return "application/x-tar" if match.group(1) == "tar" else "application/json"
        return None
    if capability == "image_generation":
        return "image/png" if _GENERATED_IMAGE.fullmatch(name) else None
    return CONTENT_TYPES.get(name)


# The artifact each requested output is written to.
ARTIFACT_OF = {
    Output.glb: "mesh.glb",
    Output.obj: "mesh.obj",
    Output.ply: "mesh.ply",
    Output.overlay: "overlay.png",
    Output.npz: "params.npz",
    Output.json: "result.json",
}


# =========================================================================== request bounds
#
# Every list in a request has a most number of items and every number a range, so that no
# request makes the server build more than its limits allow, and no number overflows the
# float32 math it feeds (past 3.4e38). Fixed shapes (21 joints, 3 numbers, 33 keypoints) are
# enforced by pydantic (max_length); counts that follow a server setting (frames, people,
# samples) are checked by the validators below, whose messages name the setting, and shown in


POSE_MESH_ARTIFACT = {"glb": "poses.glb", "obj": "poses.obj"}
MOTION_BVH_ARTIFACT = "motion.bvh"
