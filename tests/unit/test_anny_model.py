"""Anny wrapper: the fast keypoint path is exact, shapes and conventions hold."""

from __future__ import annotations

import anny
import pytest
import torch

from shared.bodies.anny_model import FIT_KEYPOINTS, get_anny
from shared.keypoints.formats import MEDIAPIPE33


@pytest.fixture(scope="module")
def body():  # type: ignore[no-untyped-def]
    return get_anny()


def random_state(body, batch: int = 3):  # type: ignore[no-untyped-def]
    generator = torch.Generator().manual_seed(3)
    pose = torch.randn(batch, body.joint_count, 3, generator=generator) * 0.3
    transl = torch.randn(batch, 3, generator=generator)
    phenotype = torch.rand(batch, 6, generator=generator)
    return pose, transl, phenotype


def test_keypoint_path_matches_full_mesh_regression(body) -> None:  # type: ignore[no-untyped-def]
    pose, transl, phenotype = random_state(body)
    full = body.forward(pose, transl, phenotype)
    coco = anny.KeypointsRegressor.coco(body.model)
    reference = coco({"vertices": full.vertices})
    coeffs = body.blendshape_coefficients(phenotype)
    transforms, poses, _ = body.skeleton(pose, transl, coeffs)
    fast = body.fit_keypoints(transforms, coeffs)
    for name in ("nose", "left_shoulder", "right_wrist", "left_hip", "right_ankle", "left_heel"):
        k = FIT_KEYPOINTS.index(name)
        assert torch.allclose(fast[:, k], reference[:, coco.labels.index(name)], atol=1e-5)
    # Bone-head keypoints are the posed joints themselves.
    k = FIT_KEYPOINTS.index("left_hand.index_mcp")
    assert torch.allclose(fast[:, k], full.joints[:, body.bone("finger2-1.L")], atol=1e-5)
    assert torch.allclose(poses[..., :3, 3], full.joints, atol=1e-5)


def test_fingertips_lie_beyond_the_last_knuckle(body) -> None:  # type: ignore[no-untyped-def]
    pose, transl, phenotype = (t[:1] * 0 for t in random_state(body))
    phenotype = phenotype + 0.5
    coeffs = body.blendshape_coefficients(phenotype)
    transforms, _, _ = body.skeleton(pose, transl, coeffs)
    points = body.fit_keypoints(transforms, coeffs)[0]
    for finger in ("index", "middle", "ring", "pinky", "thumb"):
        tip = points[FIT_KEYPOINTS.index(f"left_hand.{finger}_tip")]
        base_name = "thumb_ip" if finger == "thumb" else f"{finger}_dip"
        last = points[FIT_KEYPOINTS.index(f"left_hand.{base_name}")]
        wrist = points[FIT_KEYPOINTS.index("left_hand.wrist")]
        assert (tip - wrist).norm() > (last - wrist).norm()
        assert 0.005 < (tip - last).norm() < 0.05


def test_every_body_keypoint_used_for_fitting_is_mapped(body) -> None:  # type: ignore[no-untyped-def]
    mapped = {FIT_KEYPOINTS[i] for i in torch.nonzero(body.keypoint_mapped).flatten().tolist()}
    unmapped_body = [n for n in MEDIAPIPE33 if n not in mapped]
    # Eye corners and mouth corners have no reliable Anny counterpart; everything else does.
    assert sorted(unmapped_body) == sorted(
        [
            "left_eye_inner",
            "left_eye_outer",
            "right_eye_inner",
            "right_eye_outer",
            "mouth_left",
            "mouth_right",
        ]
    )
    assert all(
        f"{side}_hand.{p}" in mapped
        for side in ("left", "right")
        for p in ("wrist", "thumb_tip", "index_tip", "pinky_mcp")
    )


def test_model_is_float32_and_z_up(body) -> None:  # type: ignore[no-untyped-def]
    out = body.forward(
        torch.zeros(1, body.joint_count, 3), torch.zeros(1, 3), torch.full((1, 6), 0.5)
    )
    assert out.vertices.dtype == torch.float32
    assert out.vertices.shape == (1, body.vertex_count, 3) and body.vertex_count == 13718
    head, foot = out.joints[0, body.bone("head")], out.joints[0, body.bone("foot.L")]
    assert head[2] - foot[2] > 1.2  # Z-up, metres
    assert body.faces.shape[1] == 3 and body.faces.max() < body.vertex_count


def test_anny_follows_the_body_model_interface(body) -> None:  # type: ignore[no-untyped-def]
    from shared.bodies.base import BodyModel

    model: BodyModel = body
    assert model.name == "anny" and len(model.joint_names) == 104
    assert model.faces.shape[1] == 3 and model.vertex_count == 13718
