"""The SMPL-X-convention body skeleton puts each joint where the Anny body it came from has it."""

from __future__ import annotations

import roma
import torch

from shared.bodies.anny_model import get_anny
from shared.bodies.base import ANNY_TO_SMPLX_WORLD
from shared.bodies.skeleton import BODY_JOINT_NAMES, BodySkeleton
from shared.bodies.smplx_convention import anny_to_smplx, smplx_to_anny

# SMPL-X body joint -> the Anny bone whose head it sits on.
ANCHOR_BONES = {
    "pelvis": "root",
    "left_hip": "upperleg01.L",
    "right_knee": "lowerleg01.R",
    "left_ankle": "foot.L",
    "spine1": "spine05",
    "spine3": "spine01",
    "neck": "neck01",
    "head": "head",
    "left_shoulder": "upperarm01.L",
    "right_elbow": "lowerarm01.R",
    "left_wrist": "wrist.L",
}


def test_forward_kinematics_matches_anny_posed_by_the_adapter() -> None:
    body = get_anny()
    generator = torch.Generator().manual_seed(3)
    batch = 5
    phenotype = torch.rand(batch, 6, generator=generator)
    coeffs = body.blendshape_coefficients(phenotype)
    rest = body.rest_bone_poses(coeffs)
    params = {
        "global_orient": torch.randn(batch, 3, generator=generator) * 0.8,
        "body_pose": torch.randn(batch, 21, 3, generator=generator) * 0.4,
        "transl": torch.randn(batch, 3, generator=generator),
    }
    deltas = smplx_to_anny(
        params,
        rest,
        body.model.reference_bone_orientations,
        parameterization="local-bone",
    )
    _, bone_poses, _ = body.skeleton(
        roma.rotmat_to_rotvec(deltas[..., :3, :3]), deltas[:, 0, :3, 3], coeffs
    )
    read = anny_to_smplx(bone_poses, rest)

    joints = BodySkeleton.for_phenotype(phenotype)(
        read["global_orient"], read["body_pose"], read["pelvis"]
    )

    heads = bone_poses[..., :3, 3] @ torch.tensor(ANNY_TO_SMPLX_WORLD, dtype=torch.float32).T
    for joint, bone in ANCHOR_BONES.items():
        error = (joints[:, BODY_JOINT_NAMES.index(joint)] - heads[:, body.bone(bone)]).norm(dim=-1)
        assert error.max() < 1e-5, (joint, error)


def test_rest_pose_is_a_t_pose_standing_up_facing_plus_z() -> None:
    skeleton = BodySkeleton.for_phenotype()
    zero = torch.zeros(1, 3)
    joints = skeleton(zero, torch.zeros(1, 21, 3), zero)[0]
    names = {n: i for i, n in enumerate(BODY_JOINT_NAMES)}
    assert torch.allclose(joints, skeleton.rest_joints[0], atol=1e-6)
    assert joints[names["head"], 1] > joints[names["pelvis"], 1] + 0.4  # Y up
    assert joints[names["left_ankle"], 1] < -0.7
    # Left is +X in SMPL-X; arms straight out to the sides in the T-pose.
    left_arm = joints[names["left_wrist"]] - joints[names["left_shoulder"]]
    assert left_arm[0] > 0.4 and left_arm[1:].abs().max() < 0.03


def test_gradients_flow_to_every_input() -> None:
    skeleton = BodySkeleton.for_phenotype()
    orient = torch.zeros(2, 3, requires_grad=True)
    pose = (torch.randn(2, 21, 3) * 0.2).requires_grad_()
    pelvis = torch.zeros(2, 3, requires_grad=True)
    skeleton(orient, pose, pelvis)[:, BODY_JOINT_NAMES.index("left_wrist")].sum().backward()
    assert orient.grad is not None and orient.grad.abs().sum() > 0
    assert pose.grad is not None and pose.grad.abs().sum() > 0
    assert pelvis.grad is not None and torch.allclose(pelvis.grad, torch.ones(2, 3))
