"""Request and result schemas shared by the gateway, the workers and the command line."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


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
    "params.npz": "application/octet-stream",
    "result.json": "application/json",
}
# The artifact each requested output is written to.
ARTIFACT_OF = {
    Output.glb: "mesh.glb",
    Output.obj: "mesh.obj",
    Output.ply: "mesh.ply",
    Output.overlay: "overlay.png",
    Output.npz: "params.npz",
    Output.json: "result.json",
}


class MeshRecoveryOptions(BaseModel):
    """Options of one mesh-recovery request (sent as form fields next to the image)."""

    model_config = ConfigDict(extra="forbid")

    body_model: Literal["anny", "smplx"] = Field(
        "anny",
        description="Body model to fit. 'smplx' needs BODYSERVE_SMPLX_MODEL_PATH on the server; "
        "SMPL-X-convention parameters come with every answer either way.",
    )
    max_people: int = Field(4, ge=1, le=16, description="Largest number of people to recover.")
    outputs: list[Output] = Field(
        default_factory=lambda: list(DEFAULT_OUTPUTS),
        description="Artifacts to produce: glb, obj, ply (meshes), overlay (PNG), npz, json.",
    )
    focal_length_px: float | None = Field(
        None,
        gt=0,
        le=100_000,
        description="Camera focal length in pixels; default: from the photo's EXIF (35 mm-"
        "equivalent focal length), else a ~50° field of view.",
    )
    iterations: int = Field(60, ge=5, le=500, description="Fitting iterations.")
    seed: int = Field(0, ge=0, le=2**31 - 1)

    @field_validator("outputs")
    @classmethod
    def _unique(cls, value: list[Output]) -> list[Output]:
        return list(dict.fromkeys(value))


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


class PersonResult(BaseModel):
    index: int
    bbox: list[float]  # x0, y0, x1, y1 pixels
    detection_score: float
    keypoints_2d: list[list[float]]  # 33 x 3 detected, mediapipe33
    fitted_keypoints_2d: list[list[float]]  # 33 x 2 reprojected from the fitted body
    # The fitted body's mediapipe33 points in the camera frame (metres); null for the points
    # Anny has no counterpart of (eye and mouth corners).
    keypoints_3d: list[list[float] | None]
    reprojection_error_px: float
    hands_detected: list[str]
    smplx: SmplxParams
    anny: AnnyParams


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


class MeshRecoveryResult(BaseModel):
    body_model: str
    image_width: int
    image_height: int
    camera: Camera
    people: list[PersonResult]
    reason: str | None = Field(None, description="Why no body was recovered, if none was.")
    artifacts: dict[str, str] = Field(
        default_factory=dict, description="Artifact name -> content type."
    )
    timings_ms: dict[str, float] = Field(default_factory=dict)


class JobInfo(BaseModel):
    id: str
    capability: str
    status: str
    progress: float
    message: str
    error: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    links: dict[str, str]


class ErrorBody(BaseModel):
    detail: str
