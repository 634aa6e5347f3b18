"""Joint and body-part names of the SMPL-X convention.

Torch-free, so that the gateway validates requests with them.
"""

from __future__ import annotations

# The 21 rows of body_pose: SMPL-X's body joints (shared.bodies.smplx_convention's
# SMPLX_BODY_JOINTS, spelled out here so that the gateway validates requests without importing
# torch; tests/unit/test_pose_schemas.py checks that both agree).
BODY_POSE_JOINTS: tuple[str, ...] = (
    "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar",
    "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
    "right_wrist",
)  # fmt: skip
# Pelvis + the 21: the rows of joints_3d and of a motion's joints (BODY_JOINT_NAMES).
SKELETON_JOINTS: tuple[str, ...] = ("pelvis", *BODY_POSE_JOINTS)

# Named body parts, as the joints of body_pose they cover (used to say which parts are hidden).
_SIDE_PARTS = {
    "leg": ("hip", "knee", "ankle", "foot"),
    "arm": ("collar", "shoulder", "elbow", "wrist"),
}
BODY_PARTS: dict[str, tuple[str, ...]] = {
    f"{side}_{part}": tuple(f"{side}_{joint}" for joint in joints)
    for part, joints in _SIDE_PARTS.items()
    for side in ("left", "right")
}
BODY_PARTS |= {
    "legs": BODY_PARTS["left_leg"] + BODY_PARTS["right_leg"],
    "arms": BODY_PARTS["left_arm"] + BODY_PARTS["right_arm"],
    "spine": ("spine1", "spine2", "spine3"),
    "head": ("neck", "head"),
}
BODY_PARTS |= {
    "upper_body": BODY_PARTS["spine"] + BODY_PARTS["head"] + BODY_PARTS["arms"],
    "lower_body": BODY_PARTS["legs"],
}
