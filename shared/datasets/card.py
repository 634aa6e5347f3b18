"""What ships next to a dataset's shards: its card (JSON) and a contact sheet (PNG).

The card says what the data is and how to remake it: the spec and its fingerprint, counts, the
shards with their digests, the software that made it, the file layout, the label conventions,
the body-part table, and the licences of every input (Anny's assets; the CMU mocap behind the
pose prior or the mocap source; a user's background folder).
"""

from __future__ import annotations

import io
import math
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from importlib import metadata
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from shared.datasets.shards import DEPTH_SCALE, ShardInfo
from shared.datasets.spec import DatasetSpec
from shared.keypoints.formats import COCO17

CMU_ACKNOWLEDGEMENT = (
    "The data used in this project was obtained from mocap.cs.cmu.edu. The database was created "
    "with funding from NSF EIA-0196217."
)
ANNY_LICENCE = "Anny body model (NAVER Corp.), Apache-2.0, assets bundled with the anny package"

# COCO-17 limbs, for drawing skeletons on the contact sheet.
COCO_LIMBS: tuple[tuple[str, str], ...] = (
    ("left_ankle", "left_knee"), ("left_knee", "left_hip"), ("right_ankle", "right_knee"),
    ("right_knee", "right_hip"), ("left_hip", "right_hip"), ("left_shoulder", "left_hip"),
    ("right_shoulder", "right_hip"), ("left_shoulder", "right_shoulder"),
    ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"),
    ("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"), ("nose", "left_eye"),
    ("nose", "right_eye"), ("left_eye", "left_ear"), ("right_eye", "right_ear"),
)  # fmt: skip
_LIMB_INDEX = [(COCO17.index(a), COCO17.index(b)) for a, b in COCO_LIMBS]

FILES = {
    "rgb.jpg / rgb.png": "the image, 8-bit RGB",
    "mask.png": "8-bit: 255 where the person is, 0 elsewhere",
    "depth.png": f"16-bit: depth of the visible surface, camera frame, 1/{DEPTH_SCALE:g} m "
    "units (millimetres), 0 where there is no body",
    "parts.png": "8-bit body-part label per pixel, 0 = background (see parts)",
    "json": "labels (see labels)",
}
LABELS = {
    "camera": "fx, fy, cx, cy in pixels (pixel centres at integers, OpenCV); the camera frame "
    "is x right, y down, z ahead, metres",
    "keypoints2d.coco17 / mediapipe33": "[x, y, v] per keypoint: v = 2 visible, 1 inside the "
    "image but hidden (behind the body), 0 outside the image",
    "keypoints3d.mediapipe33": "[x, y, z] camera frame, metres; null for the six points "
    "Anny has no vertex for (eye corners, mouth corners), which are [0, 0, 0] in 2D",
    "joints3d": "the 22 SMPL-X body joints (pelvis first), camera frame, metres",
    "smplx": "SMPL-X-convention parameters in the camera frame (axis-angle, radians; hands "
    "relative to the flat hand), pelvis position and transl (pelvis minus Anny's rest pelvis)",
    "anny": "Anny's own parameters: pose (104 x 3 local-bone axis-angle, root in the camera), "
    "transl (root bone head in the camera), phenotype (gender, age, muscle, weight, height, "
    "proportions in [0, 1])",
    "bbox": "[x0, y0, x1, y1] of the mask, pixels (x1, y1 exclusive)",
}


def software() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("bodyserve", "anny", "torch", "moderngl", "webdataset", "numpy", "pillow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed" if package != "bodyserve" else "source tree"
    return versions


def input_licences(spec: DatasetSpec, prior_record: Mapping[str, Any] | None) -> list[str]:
    licences = [ANNY_LICENCE]
    if spec.poses.source == "prior":
        trained = (prior_record or {}).get("data", "the CMU mocap of the shared data folder")
        licences.append(
            f"Poses: bodyserve's pose prior, trained on {trained}. CMU Graphics Lab motion "
            f"capture: free for research and commercial use, not to be resold as data. "
            f"{CMU_ACKNOWLEDGEMENT}"
        )
    elif spec.poses.source == "mocap":
        licences.append(
            f"Poses: frames of the mocap folder {spec.poses.folder or 'mocap'!r}; their licence "
            f"is that folder's (the shared CMU data: {CMU_ACKNOWLEDGEMENT})"
        )
    else:
        licences.append("Poses: uniform within bodyserve's anatomical joint limits (no data)")
    if spec.generator == "diffusion":
        licences.append(
            "Images: painted by the Stable Diffusion and depth ControlNet weights configured "
            "in BODYSERVE_DIFFUSION_MODEL_DIR, under those weights' licence (for Stable "
            "Diffusion 1.5, CreativeML OpenRAIL-M); the labels are the rendered body's, which "
            "the image follows as closely as the ControlNet does"
        )
    if spec.backgrounds.source == "folder":
        licences.append(
            f"Backgrounds: images of the folder {spec.backgrounds.folder!r}, under the licences "
            "their owner gave them; check them before you publish the dataset"
        )
    else:
        licences.append("Backgrounds: procedural (no data)")
    return licences


def dataset_card(
    spec: DatasetSpec,
    shards: Sequence[ShardInfo],
    parts: Sequence[str],
    prior_record: Mapping[str, Any] | None = None,
    stats: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The dataset card: everything a user needs to trust, use and remake the data."""
    return {
        "name": spec.name,
        "images": sum(s.samples for s in shards),
        "shards": [asdict(s) for s in sorted(shards, key=lambda s: s.first_index)],
        "spec": spec.model_dump(mode="json"),
        "fingerprint": spec.fingerprint(),
        "remake": "the same spec (seed included) gives the same samples, byte for byte, on "
        "the same software versions",
        "software": software(),
        "prior": dict(prior_record) if prior_record else None,
        "files": FILES,
        "labels": LABELS,
        "parts": {str(i + 1): name for i, name in enumerate(parts)} | {"0": "background"},
        "licences": input_licences(spec, prior_record),
        "generation": dict(stats or {}),
    }


def contact_sheet(
    images: Sequence[np.ndarray],
    keypoints: Sequence[np.ndarray] | None = None,
    columns: int = 8,
    tile: int = 160,
) -> bytes:
    """A PNG grid of ``images`` (RGB uint8), each with its COCO-17 skeleton ([x, y, v], pixels
    of that image) drawn over it when ``keypoints`` are given."""
    if not images:
        raise ValueError("a contact sheet needs at least one image")
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    sheet = Image.new("RGB", (columns * tile, rows * tile), (24, 24, 24))
    for n, image in enumerate(images):
        thumb = Image.fromarray(image).convert("RGB")
        scale = tile / max(thumb.size)
        thumb = thumb.resize(
            (max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale)))
        )
        if keypoints is not None:
            draw = ImageDraw.Draw(thumb)
            points = np.asarray(keypoints[n], dtype=np.float64)
            for a, b in _LIMB_INDEX:
                if points[a, 2] > 0 and points[b, 2] > 0:
                    draw.line(
                        [tuple(points[a, :2] * scale), tuple(points[b, :2] * scale)],
                        fill=(255, 210, 0)
                        if min(points[a, 2], points[b, 2]) == 2
                        else (0, 170, 255),
                        width=2,
                    )
        x, y = (n % columns) * tile, (n // columns) * tile
        sheet.paste(thumb, (x + (tile - thumb.width) // 2, y + (tile - thumb.height) // 2))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
