"""The pose-prior routes' request models, part masks and the SMPL-X -> Anny pose conversion.

Validation is checked through the messages clients read (what is wrong and how to fix it);
the conversion is checked against the adapter's forward map and Anny's own skeleton.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import roma
import torch
from pydantic import ValidationError

from shared.bodies.base import ANNY_TO_SMPLX_WORLD
from shared.bodies.joint_names import BODY_PARTS, BODY_POSE_JOINTS, SKELETON_JOINTS
from shared.bodies.skeleton import BODY_JOINT_NAMES
from shared.bodies.smplx_convention import SMPLX_BODY_JOINTS, SMPLX_TO_ANNY, anny_to_smplx
from shared.schemas.poses import (
    MotionDenoiseRequest,
    PoseCompleteRequest,
    PoseCompleteResult,
    PoseGenerateRequest,
    PoseGenerateResult,
    PoseOutput,
)
from shared.settings import get_settings

ZERO_POSE = [[0.0, 0.0, 0.0]] * 21


def message(exc: pytest.ExceptionInfo[ValidationError]) -> str:
    return "; ".join(error["msg"] for error in exc.value.errors())


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Small server limits (BODYSERVE_MAX_POSE_SAMPLES=8, BODYSERVE_MAX_MOTION_FRAMES=5)."""
    monkeypatch.setenv("BODYSERVE_MAX_POSE_SAMPLES", "8")
    monkeypatch.setenv("BODYSERVE_MAX_MOTION_FRAMES", "5")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


# --------------------------------------------------------------------------- vocabulary


def test_joint_names_agree_with_the_body_modules() -> None:
    """The schemas spell the joint names out (no torch in the gateway): they must not drift."""
    assert BODY_POSE_JOINTS == SMPLX_BODY_JOINTS
    assert SKELETON_JOINTS == BODY_JOINT_NAMES


def test_parts_cover_the_body_pose_joints() -> None:
    for part, joints in BODY_PARTS.items():
        assert set(joints) <= set(BODY_POSE_JOINTS), part
    assert set(BODY_PARTS["upper_body"]) | set(BODY_PARTS["lower_body"]) == set(BODY_POSE_JOINTS)
    assert not set(BODY_PARTS["upper_body"]) & set(BODY_PARTS["lower_body"])
    assert set(BODY_PARTS["legs"]) == set(BODY_PARTS["left_leg"]) | set(BODY_PARTS["right_leg"])
    assert set(BODY_PARTS["arms"]) == set(BODY_PARTS["left_arm"]) | set(BODY_PARTS["right_arm"])
    assert BODY_PARTS["left_arm"] == ("left_collar", "left_shoulder", "left_elbow", "left_wrist")


# --------------------------------------------------------------------------- generate


def test_generate_defaults_and_seeds() -> None:
    request = PoseGenerateRequest(n=3, seed=7)
    assert request.seeds() == [7, 8, 9]
    assert request.steps == 50 and request.sampler == "ode"
    assert request.outputs == [PoseOutput.params]
    assert PoseGenerateRequest(outputs=["mesh"]).outputs == [PoseOutput.params, PoseOutput.mesh]


@pytest.mark.usefixtures("limits")
def test_generate_n_over_the_server_limit_says_the_limit() -> None:
    assert PoseGenerateRequest(n=8).n == 8
    with pytest.raises(ValidationError) as exc:
        PoseGenerateRequest(n=9)
    assert "n must be at most 8" in message(exc)
    assert "BODYSERVE_MAX_POSE_SAMPLES" in message(exc)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"n": 0}, "greater than or equal to 1"),
        ({"steps": 5}, "greater than or equal to 10"),
        ({"steps": 500}, "less than or equal to 200"),
        ({"sampler": "euler"}, "'ode' or 'sde'"),
        ({"outputs": ["params", "video"]}, "'params' or 'mesh'"),
        ({"seed": -1}, "greater than or equal to 0"),
        ({"count": 3}, "Extra inputs are not permitted"),
    ],
)
def test_generate_rejects_bad_fields(fields: dict, expected: str) -> None:
    with pytest.raises(ValidationError) as exc:
        PoseGenerateRequest(**fields)
    assert expected in message(exc)


# --------------------------------------------------------------------------- complete


def test_hidden_parts_become_a_known_mask() -> None:
    request = PoseCompleteRequest(body_pose=ZERO_POSE, hidden_parts=["left_arm", "head"])
    mask = dict(zip(BODY_POSE_JOINTS, request.known_mask(), strict=True))
    hidden = {j for j, known in mask.items() if not known}
    assert hidden == {"left_collar", "left_shoulder", "left_elbow", "left_wrist", "neck", "head"}
    legs = PoseCompleteRequest(body_pose=ZERO_POSE, hidden_parts=["legs"]).known_mask()
    lower = PoseCompleteRequest(body_pose=ZERO_POSE, hidden_parts=["lower_body"]).known_mask()
    assert legs == lower and sum(legs) == 13


def test_known_joints_become_a_known_mask() -> None:
    request = PoseCompleteRequest(body_pose=ZERO_POSE, known_joints=["spine1", "left_knee"])
    mask = request.known_mask()
    assert [BODY_POSE_JOINTS[i] for i, k in enumerate(mask) if k] == ["spine1", "left_knee"]


def test_smplx_params_are_accepted_as_the_pose() -> None:
    """A mesh-recovery person's smplx object can be sent as it is (extra keys ignored)."""
    pose = np.arange(63, dtype=np.float32).reshape(21, 3) / 100
    smplx = {"global_orient": [3.1, 0.0, 0.0], "body_pose": pose.tolist(), "betas": [0.0] * 10}
    request = PoseCompleteRequest(smplx=smplx, hidden_parts=["arms"], k=4)
    np.testing.assert_allclose(request.pose(), pose)
    np.testing.assert_allclose(request.global_orient(), [3.1, 0.0, 0.0])
    assert request.seeds() == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"body_pose": [[0.0, 0.0, 0.0]] * 20, "hidden_parts": ["legs"]},
            "body_pose must be 21 x 3 (21 SMPL-X body joints x 3 axis-angle, radians), got 20 x 3",
        ),
        (
            {"body_pose": [[0.0, 0.0]] * 21, "hidden_parts": ["legs"]},
            "body_pose must be 21 x 3",
        ),
        (
            {"body_pose": [[0.0, 0.0, 0.0]] * 20 + [[0.0]], "hidden_parts": ["legs"]},
            "got ragged rows",
        ),
        (
            {"body_pose": [[math.nan, 0.0, 0.0], *ZERO_POSE[1:]], "hidden_parts": ["legs"]},
            "finite number",
        ),
        (
            {"body_pose": ZERO_POSE, "hidden_parts": ["tail"]},
            "hidden_parts: unknown name(s) 'tail'; valid: left_leg, right_leg",
        ),
        (
            {"body_pose": ZERO_POSE, "known_joints": ["left_knee", "nose"]},
            "known_joints: unknown name(s) 'nose'; valid: left_hip, right_hip, spine1",
        ),
        (
            {"body_pose": ZERO_POSE, "known_joints": ["spine1"], "hidden_parts": ["legs"]},
            "exactly one of known_joints (joints that are KNOWN) or hidden_parts",
        ),
        ({"body_pose": ZERO_POSE}, "exactly one of known_joints"),
        ({"hidden_parts": ["legs"]}, "exactly one of body_pose (21 x 3) or smplx"),
        (
            {"body_pose": ZERO_POSE, "smplx": {"body_pose": ZERO_POSE}, "hidden_parts": ["legs"]},
            "exactly one of body_pose",
        ),
        (
            {"body_pose": ZERO_POSE, "known_joints": list(BODY_POSE_JOINTS)},
            "every joint is known, so there is nothing to complete",
        ),
        (
            {"body_pose": ZERO_POSE, "hidden_parts": ["upper_body", "lower_body"]},
            "no joint is known",
        ),
        ({"smplx": {"global_orient": [0, 0, 0]}, "hidden_parts": ["legs"]}, "Field required"),
    ],
)
def test_complete_rejects_bad_requests_with_a_message_that_says_what_to_fix(
    fields: dict, expected: str
) -> None:
    with pytest.raises(ValidationError) as exc:
        PoseCompleteRequest(**fields)
    assert expected in message(exc)


@pytest.mark.usefixtures("limits")
def test_complete_k_over_the_server_limit() -> None:
    with pytest.raises(ValidationError) as exc:
        PoseCompleteRequest(body_pose=ZERO_POSE, hidden_parts=["legs"], k=9)
    assert "k must be at most 8" in message(exc)


# --------------------------------------------------------------------------- motion


def motion(frames: int) -> list:
    return np.zeros((frames, 22, 3)).tolist()


@pytest.mark.usefixtures("limits")
def test_motion_frame_limit() -> None:
    assert MotionDenoiseRequest(joints=motion(5)).frame_count() == 5
    with pytest.raises(ValidationError) as exc:
        MotionDenoiseRequest(joints=motion(6))
    assert "T (frames) must be at most 5" in message(exc)
    assert "BODYSERVE_MAX_MOTION_FRAMES" in message(exc)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"joints": np.zeros((4, 21, 3)).tolist()}, "joints must be T x 22 x 3"),
        ({"joints": []}, "joints must be T x 22 x 3"),
        ({}, "exactly one of joints (T x 22 x 3 positions) or poses"),
        (
            {
                "joints": motion(2),
                "poses": {"global_orient": [[0, 0, 0]] * 2, "body_pose": [ZERO_POSE] * 2},
            },
            "exactly one of joints",
        ),
        (
            {"poses": {"global_orient": [[0, 0, 0]] * 3, "body_pose": [ZERO_POSE] * 2}},
            "poses.body_pose must be 3 x 21 x 3",
        ),
        (
            {
                "poses": {
                    "global_orient": [[0, 0, 0]] * 2,
                    "body_pose": [ZERO_POSE] * 2,
                    "pelvis": [[0, 0, 0]],
                }
            },
            "poses.pelvis must be 2 x 3",
        ),
        ({"joints": motion(2), "fps": 0}, "greater than 0"),
        ({"joints": motion(2), "iterations": -1}, "greater than or equal to 0"),
        ({"joints": motion(2), "iterations": 5000}, "less than or equal to 1000"),
    ],
)
def test_motion_rejects_bad_requests(fields: dict, expected: str) -> None:
    with pytest.raises(ValidationError) as exc:
        MotionDenoiseRequest(**fields)
    assert expected in message(exc)


def test_motion_from_poses() -> None:
    request = MotionDenoiseRequest(
        poses={"global_orient": [[0, 0, 0]] * 3, "body_pose": [ZERO_POSE] * 3}, fps=60
    )
    assert request.frame_count() == 3 and request.poses is not None
    assert request.poses.pelvis is None


# --------------------------------------------------------------------------- conversion


@pytest.fixture(scope="module")
def random_poses() -> tuple[torch.Tensor, torch.Tensor]:
    """(4, 21, 3) body poses and (4, 3) orientations, up to ~70 degrees per joint."""
    generator = torch.Generator().manual_seed(3)
    body_pose = torch.randn(4, 21, 3, generator=generator) * 0.4
    global_orient = torch.randn(4, 3, generator=generator) * 0.8
    return body_pose, global_orient


def test_anny_pose_reads_back_as_the_same_smplx_pose(
    random_poses: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """Posing Anny with the converted pose and reading it back with anny_to_smplx gives the
    body_pose (and global_orient) that went in."""
    from shared.bodies.anny_model import get_anny
    from shared.prior.pose_outputs import anny_pose_from_smplx

    body_pose, global_orient = random_poses
    anny = anny_pose_from_smplx(body_pose.numpy(), global_orient.numpy())
    assert anny.pose.shape == (4, 104, 3) and anny.transl.shape == (4, 3)
    body = get_anny()
    with torch.no_grad():
        _, bone_poses, rest = body.skeleton(
            anny.pose, anny.transl, body.blendshape_coefficients(anny.phenotype)
        )
        back = anny_to_smplx(bone_poses, rest)  # Anny's world -> SMPL-X's
    rotation = roma.rotvec_to_rotmat
    body_error = roma.rotmat_geodesic_distance(rotation(back["body_pose"]), rotation(body_pose))
    root_error = roma.rotmat_geodesic_distance(
        rotation(back["global_orient"]), rotation(global_orient)
    )
    assert torch.rad2deg(body_error).max() < 1e-3
    assert torch.rad2deg(root_error).max() < 1e-3
    assert torch.allclose(back["body_pose"], body_pose, atol=1e-4)  # same axis-angle values


def test_skeleton_joints_sit_on_the_posed_anny(
    random_poses: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """joints_3d of a pose are where the posed Anny has the SMPL-X joints (each joint's first
    Anny bone head; the feet: the toes' mean), in SMPL-X's frame."""
    from shared.bodies.anny_model import get_anny
    from shared.prior.pose_outputs import anny_pose_from_smplx, skeleton_joints

    body_pose, global_orient = random_poses
    joints = skeleton_joints(body_pose.numpy(), global_orient.numpy())
    assert joints.shape == (4, 22, 3)
    anny = anny_pose_from_smplx(body_pose, global_orient)
    body = get_anny()
    heads = body.forward(anny.pose, anny.transl, anny.phenotype).joints.numpy()
    heads = heads @ ANNY_TO_SMPLX_WORLD.T
    for j, name in enumerate(SKELETON_JOINTS):
        bones = [body.bone(b) for b in SMPLX_TO_ANNY[name]]
        expected = heads[:, bones].mean(1) if name.endswith("_foot") else heads[:, bones[0]]
        np.testing.assert_allclose(joints[:, j], expected, atol=1e-5, err_msg=name)


def test_rotation_spread() -> None:
    from shared.prior.pose_outputs import rotation_spread_deg

    same = np.tile(np.array([[0.3, -0.2, 0.1]] * 21), (5, 1, 1))
    np.testing.assert_allclose(rotation_spread_deg(same), 0.0, atol=1e-5)
    # Two hypotheses 20 degrees either side of the identity about x: 20 degrees from the mean.
    angle = math.radians(20)
    pair = np.zeros((2, 21, 3))
    pair[0, 4, 0], pair[1, 4, 0] = angle, -angle
    spread = rotation_spread_deg(pair)
    assert spread[4] == pytest.approx(20.0, abs=1e-4)
    assert np.abs(np.delete(spread, 4)).max() < 1e-5


# --------------------------------------------------------------------------- in process


@pytest.fixture
def tiny_prior_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Path, int]]:
    """A model repository holding a tiny published prior (random weights), as the settings'."""
    from services.trainer.publish import publish_prior
    from shared.prior.model import PosePrior, PriorConfig

    torch.manual_seed(0)
    PosePrior(PriorConfig(hidden=32, blocks=1, embed_dim=8)).save(tmp_path / "tiny" / "prior.pt")
    repository = tmp_path / "model_repository"
    published = publish_prior(tmp_path / "tiny" / "prior.pt", {"weights": "random"}, repository)
    monkeypatch.setenv("BODYSERVE_MODEL_REPOSITORY", str(repository))
    get_settings.cache_clear()
    yield repository, published.version
    monkeypatch.undo()
    get_settings.cache_clear()


def test_pipeline_in_process(tiny_prior_repository: tuple[Path, int]) -> None:
    """The routes' pipeline on the in-process backend: seeded, both samplers, known joints
    kept, spread only where joints are hidden."""
    from shared.inference.local import InProcessBackend
    from shared.pipeline.pose_jobs import complete_pose, generate_poses

    backend = InProcessBackend()
    _, version = tiny_prior_repository
    ode = generate_poses(PoseGenerateRequest(n=2, seed=4, steps=10), backend).result
    assert isinstance(ode, PoseGenerateResult) and ode.prior_version == version
    again = generate_poses(PoseGenerateRequest(n=1, seed=5, steps=10), backend).result
    assert isinstance(again, PoseGenerateResult)
    # Seed 5 both times: the same pose, whatever else was in the batch.
    np.testing.assert_allclose(
        again.poses[0].smplx.body_pose, ode.poses[1].smplx.body_pose, atol=1e-5
    )
    sde = generate_poses(PoseGenerateRequest(n=2, seed=4, steps=10, sampler="sde"), backend)
    assert isinstance(sde.result, PoseGenerateResult)
    assert sde.result.poses[0].smplx.body_pose != ode.poses[0].smplx.body_pose

    request = PoseCompleteRequest(
        body_pose=ZERO_POSE, hidden_parts=["right_leg"], k=3, steps=10, outputs=["mesh"]
    )
    output = complete_pose(request, backend)
    result = output.result
    assert isinstance(result, PoseCompleteResult)
    assert set(output.artifacts) == {"poses.glb"}
    hidden = set(BODY_PARTS["right_leg"])
    for hypothesis in result.hypotheses:
        for joint, row in zip(BODY_POSE_JOINTS, hypothesis.smplx.body_pose, strict=True):
            if joint not in hidden:
                assert row == [0.0, 0.0, 0.0], joint
    assert {j for j, s in result.spread_deg.items() if s > 0} == hidden
