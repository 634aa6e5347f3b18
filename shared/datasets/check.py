"""Are a stored sample's labels exact? Checked from the shard alone, against the mesh its labels
describe.

From a decoded sample (:func:`shared.datasets.shards.decode_record`): pose Anny again from the
labels' own Anny parameters, then

- the stored 3D keypoints are that body's (within 0.1 mm: labels are stored to 1 µm);
- the stored 2D keypoints are the projection of the 3D ones with the stored camera (0.01 px);
- the mask, depth and part images agree with an independent CPU ray cast of that mesh
  (:func:`shared.render.label_check.check_labels`): every unambiguous pixel has the right body
  and part and a depth within 0.6 mm (depth.png holds millimetres), more on
  steep surfaces by their depth slope over 1/8 pixel, every visible vertex lands
  on the mask, and every keypoint lands on the mask (within a pixel).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from shared.bodies.anny_model import get_anny
from shared.datasets.bodies import project
from shared.datasets.shards import DEPTH_SCALE
from shared.render.label_check import check_labels
from shared.render.parts import anny_vertex_parts, face_parts

KEYPOINT_3D_TOLERANCE_M = 1e-4
KEYPOINT_2D_TOLERANCE_PX = 0.01
# Millimetre rounding in depth.png and the renderer's float32 depth, plus the surface's depth
# slope over 1/8 pixel: on steep surfaces the rasteriser's depth at a pixel centre is off by up
# to about a tenth of a pixel's worth of slope (measured: 0.5 mm at 4.5 mm per pixel).
DEPTH_TOLERANCE_M = 0.5 / DEPTH_SCALE + 1e-4
DEPTH_SLOPE_PX = 1 / 8


class _Rendered(NamedTuple):
    mask: np.ndarray
    depth: np.ndarray
    parts: np.ndarray


@dataclass
class SampleCheck:
    key: str
    problems: list[str] = field(default_factory=list)
    depth_max_error_m: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


@torch.no_grad()
def check_sample(
    sample: dict[str, Any], vertex_stride: int = 4, full_image: bool = True
) -> SampleCheck:
    """Check one decoded sample's labels against the mesh they describe; ``full_image=False``
    compares only the pixels under visible vertices and keypoints (several times cheaper)."""

    labels = sample["labels"]
    result = SampleCheck(sample["key"])
    body = get_anny()
    anny = labels["anny"]
    pose = torch.tensor([anny["pose"]], dtype=torch.float32)
    transl = torch.tensor([anny["transl"]], dtype=torch.float32)
    phenotype = torch.tensor([list(anny["phenotype"].values())], dtype=torch.float32)
    coeffs = body.blendshape_coefficients(phenotype)
    transforms, _, _ = body.skeleton(pose, transl, coeffs)
    vertices = body.model.get_skinned_vertices(body.model.get_rest_vertices(coeffs), transforms)
    keypoints = body.fit_keypoints(transforms, coeffs)[0, :33].numpy()

    rows = labels["keypoints3d"]["mediapipe33"]
    labelled = np.asarray([row is not None for row in rows])
    stored3d = np.asarray([row for row in rows if row is not None])
    keypoints = keypoints[labelled]
    error3d = float(np.abs(stored3d - keypoints).max())
    if error3d > KEYPOINT_3D_TOLERANCE_M:
        result.problems.append(f"3D keypoints are {error3d * 1000:.3f} mm off the body")
    camera = [labels["camera"][k] for k in ("fx", "fy", "cx", "cy")]
    stored2d = np.asarray(labels["keypoints2d"]["mediapipe33"])[labelled]
    error2d = float(np.abs(stored2d[:, :2] - project(stored3d, np.asarray(camera))).max())
    if error2d > KEYPOINT_2D_TOLERANCE_PX:
        result.problems.append(f"2D keypoints are {error2d:.3f} px off their 3D projection")

    faces = body.faces
    rendered = _Rendered(
        np.where(sample["mask"], 0, -1).astype(np.int32), sample["depth"], sample["parts"]
    )
    report = check_labels(
        [(vertices[0].numpy(), faces)],
        camera,
        rendered,
        face_parts=[face_parts(faces, anny_vertex_parts())],
        keypoints=[keypoints],
        vertex_stride=vertex_stride,
        full_image=full_image,
        depth_tolerance_m=DEPTH_TOLERANCE_M,
        depth_slope_px=DEPTH_SLOPE_PX,
    )
    result.problems += report.problems()
    result.depth_max_error_m = report.depth_max_error_m
    return result
