"""AMASS-style motion files (``.npz``) -> SMPL-X-convention body motion.

Accepted layouts (the AMASS releases' and their common re-exports):

- ``poses`` (N, 165) SMPL-X, (N, 156) SMPL-H or (N, 72) SMPL: axis-angle, the first 3 the root
  orientation, the next 63 the 21 body joints (the three models share the first 22 joints and
  their order); plus ``trans`` (N, 3);
- or ``root_orient`` (N, 3) + ``pose_body`` (N, 63) + ``trans`` (N, 3);
- the frame rate in ``mocap_frame_rate`` (SMPL-X releases) or ``mocap_framerate`` (SMPL-H).

AMASS's world is Z-up; it becomes the SMPL-X Y-up world by ``M`` = rotation of -90 degrees about
X (the same axis change as Anny's world -> SMPL-X): ``global_orient <- M R_root``,
``pelvis <- M (trans + J0)``. ``J0`` is the model's rest pelvis joint (its ``transl`` moves the
pelvis from there); pass the model's exact value when you have it, the defaults are the
canonical templates' to a few centimetres.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import roma
import torch

from shared.bodies.base import ANNY_TO_SMPLX_WORLD
from shared.mocap.retarget import BodyMotion

# Z-up (AMASS) -> Y-up (SMPL-X world): x stays, y <- z, z <- -y.
AMASS_TO_SMPLX_WORLD = np.asarray(ANNY_TO_SMPLX_WORLD, dtype=np.float64)

# Approximate rest pelvis joint of the templates (model frame, metres).
DEFAULT_J0: dict[str, tuple[float, float, float]] = {
    "smplx": (0.003, -0.351, 0.012),
    "smplh": (-0.002, -0.223, 0.028),
    "smpl": (-0.002, -0.223, 0.028),
}
_POSE_WIDTH = {165: "smplx", 156: "smplh", 72: "smpl"}


class AmassError(ValueError):
    """An ``.npz`` that is not an AMASS-style motion: the message says what is missing."""


def read_amass(
    path: str | Path, j0: np.ndarray | tuple[float, float, float] | None = None
) -> BodyMotion:
    """Read an AMASS-style ``.npz`` as SMPL-X-convention body motion in the SMPL-X world.

    Args:
        path: the ``.npz`` file.
        j0: (3,) the body model's rest pelvis joint in metres; default :data:`DEFAULT_J0`.
    """
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise AmassError(f"{path}: not a readable .npz ({error})") from error
    with data:
        keys = set(data.files)
        if "poses" in keys:
            poses = np.asarray(data["poses"], dtype=np.float64)
            if poses.ndim != 2 or poses.shape[1] not in _POSE_WIDTH:
                raise AmassError(
                    f"{path}: 'poses' must be (N, 165), (N, 156) or (N, 72), got {poses.shape}"
                )
            model = _POSE_WIDTH[poses.shape[1]]
            root, body = poses[:, :3], poses[:, 3:66]
        elif {"root_orient", "pose_body"} <= keys:
            root = np.asarray(data["root_orient"], dtype=np.float64)
            body = np.asarray(data["pose_body"], dtype=np.float64)
            model = (
                "smplx"
                if "surface_model_type" in keys and "smplx" in str(data["surface_model_type"])
                else "smplh"
            )
            if root.ndim != 2 or root.shape[1] != 3 or body.shape != (root.shape[0], 63):
                raise AmassError(
                    f"{path}: root_orient must be (N, 3) and pose_body (N, 63), got "
                    f"{root.shape} and {body.shape}"
                )
        else:
            raise AmassError(
                f"{path}: no motion in it (needs 'poses', or 'root_orient' + 'pose_body'; "
                f"has {sorted(keys)})"
            )
        if "trans" not in keys:
            raise AmassError(f"{path}: no 'trans' (the root translation)")
        trans = np.asarray(data["trans"], dtype=np.float64)
        if trans.shape != (root.shape[0], 3):
            raise AmassError(f"{path}: 'trans' must be ({root.shape[0]}, 3), got {trans.shape}")
        rate_key = next((k for k in ("mocap_frame_rate", "mocap_framerate") if k in keys), None)
        if rate_key is None:
            raise AmassError(f"{path}: no frame rate ('mocap_frame_rate' or 'mocap_framerate')")
        fps = float(data[rate_key])
    if root.shape[0] == 0:
        raise AmassError(f"{path}: zero frames")
    if not np.isfinite(poses_all := np.concatenate([root, body, trans], 1)).all():
        raise AmassError(f"{path}: NaN or infinite values ({np.size(poses_all)} numbers checked)")

    m = AMASS_TO_SMPLX_WORLD
    root_matrix = roma.rotvec_to_rotmat(torch.from_numpy(root)).numpy()
    global_orient = roma.rotmat_to_rotvec(torch.from_numpy(m @ root_matrix)).numpy()
    rest_pelvis = np.asarray(DEFAULT_J0[model] if j0 is None else j0, dtype=np.float64)
    pelvis = (trans + rest_pelvis) @ m.T
    return BodyMotion(
        global_orient=global_orient,
        body_pose=body.reshape(-1, 21, 3),
        pelvis=pelvis,
        fps=fps,
        kind=f"amass-{model}",
    )
