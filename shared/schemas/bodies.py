"""The body parameters every result carries.

SMPL-X-convention and Anny parameters, the camera, one lifted hypothesis.
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    Field,
)


class SmplxParams(BaseModel):
    """SMPL-X-convention parameters (axis-angle, radians; camera frame for global_orient/transl)."""

    global_orient: list[float]  # 3
    body_pose: list[list[float]]  # 21 x 3, SMPL-X joint order
    left_hand_pose: list[list[float]]  # 15 x 3
    right_hand_pose: list[list[float]]  # 15 x 3
    jaw_pose: list[float]  # 3
    leye_pose: list[float]  # 3
    reye_pose: list[float]  # 3
    betas: list[float]  # 10 (zeros: shape is carried by the Anny phenotype)
    expression: list[float]  # 10
    transl: list[float]  # 3
    pelvis: list[float]  # 3, pelvis position in the camera frame


class AnnyParams(BaseModel):
    pose: list[list[float]]  # J x 3 axis-angle, local-bone; [0] is the global orientation
    phenotype: dict[str, float]
    transl: list[float]  # 3, root head in the camera frame (metres)


class Camera(BaseModel):
    fx: float
    fy: float
    cx: float
    cy: float
    focal_length_source: Literal["request", "exif", "default"] = Field(
        "default",
        description="Where fx, fy came from: the request, the photo's EXIF (35 mm-equivalent "
        "focal length), or the default ~50° field of view.",
    )
    convention: str = "opencv: x right, y down, z ahead; metres"


class SmplxBodyParams(BaseModel):
    """SMPL-X-convention body parameters in the camera frame (OpenCV: x right, y down, z ahead;
    metres). Hands, face and shape are neutral (flat hands, zero betas)."""

    global_orient: list[float] = Field(description="3 axis-angle: body frame -> camera.")
    body_pose: list[list[float]] = Field(description="21 x 3 axis-angle, SMPL-X joint order.")
    transl: list[float] = Field(description="3, SMPL-X transl (pelvis minus the rest pelvis).")
    pelvis: list[float] = Field(description="3, the pelvis joint in the camera frame.")


class LiftedPose(BaseModel):
    """One 3D hypothesis of one person in one image (or one frame of a track)."""

    smplx: SmplxBodyParams
    joints_3d: list[list[float]] = Field(
        description="22 x 3 joint positions in the camera frame (metres), order: joint_names."
    )
    keypoints_2d: list[list[float] | None] = Field(
        description="K x 2 the hypothesis' keypoints reprojected (pixels), in the request's "
        "format; null for the keypoints the body model has no counterpart of."
    )
    reprojection_error_px: float = Field(
        description="Mean distance to the keypoints given with confidence >= 0.3, pixels."
    )
    anny: AnnyParams | None = Field(
        None,
        description="The same body on Anny (neutral phenotype; root into the camera frame), "
        "when the request sets anny_params.",
    )
