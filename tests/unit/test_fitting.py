"""The fitter: recovers synthetic bodies, is deterministic, batches people independently."""

from __future__ import annotations

import numpy as np
import pytest
import roma
import torch

from shared.bodies.anny_model import get_anny
from shared.bodies.base import ANNY_TO_CAMERA
from shared.fitting.fit import BodyFitter
from shared.fitting.losses import JointLimits, project
from shared.inference.contracts import FitInputs

CAMERA = np.array([900.0, 900.0, 320.0, 400.0], dtype=np.float32)


@pytest.fixture(scope="module")
def fitter() -> BodyFitter:
    return BodyFitter()


def synthetic_people(people: int = 2) -> tuple[FitInputs, torch.Tensor]:
    """Plausible posed bodies (within the joint limits) seen by CAMERA, as 2D keypoints."""
    body = get_anny()
    pose = torch.zeros(people, body.joint_count, 3)
    facing = torch.tensor(ANNY_TO_CAMERA, dtype=torch.float32)
    for i in range(people):
        turn = roma.rotvec_to_rotmat(torch.tensor([0.0, 0.0, 0.3 * (i - 0.5)]))
        pose[i, 0] = roma.rotmat_to_rotvec(facing @ turn)
    limits = JointLimits.for_anny(body)
    elbows = limits.hinge_bones[:2]  # left and right elbows
    pose[:, elbows] = limits.hinge_axes[:2] * 1.0  # bend both elbows by 1 rad
    pose[0, body.bone("upperleg01.L")] = torch.tensor([0.4, 0.0, 0.0])
    transl = torch.tensor([[-0.4, 0.1, 3.5], [0.5, 0.0, 4.0]])[:people]
    phenotype = torch.full((people, 6), 0.5)
    coeffs = body.blendshape_coefficients(phenotype)
    transforms, _, _ = body.skeleton(pose, transl, coeffs)
    pixels = project(body.fit_keypoints(transforms, coeffs), torch.tensor(CAMERA).expand(people, 4))
    keypoints = torch.cat([pixels, torch.ones_like(pixels[..., :1])], -1).numpy()
    hands = keypoints[:, 33:].reshape(people, 2, 21, 3)
    inputs = FitInputs(
        body=keypoints[:, :33],
        hands=hands,
        camera=np.repeat(CAMERA[None], people, 0),
        iterations=80,
        seed=0,
    )
    return inputs, body.forward(pose, transl, phenotype).joints


def test_recovers_synthetic_bodies(fitter: BodyFitter) -> None:
    inputs, true_joints = synthetic_people()
    out = fitter(inputs)
    assert out.vertices.shape == (2, 13718, 3)
    # Elbows bent towards the camera are ambiguous in 2D; a few pixels of residual remain.
    assert (out.reprojection_error < 8.0).all(), out.reprojection_error
    # The body is found where it stands: pelvis within 15 % of the true distance.
    distance = true_joints[:, 0].norm(dim=-1).numpy()
    assert (
        np.linalg.norm(out.joints[:, 0] - true_joints[:, 0].numpy(), axis=-1) < 0.15 * distance
    ).all()


def test_is_deterministic_under_a_seed(fitter: BodyFitter) -> None:
    inputs, _ = synthetic_people(1)
    inputs.iterations = 20
    first, second = fitter(inputs), fitter(inputs)
    np.testing.assert_array_equal(first.pose, second.pose)
    np.testing.assert_array_equal(first.vertices, second.vertices)


def test_people_in_a_batch_are_fitted_independently(fitter: BodyFitter) -> None:
    inputs, _ = synthetic_people(2)
    inputs.iterations = 20
    together = fitter(inputs)
    alone = fitter(
        FitInputs(
            body=inputs.body[1:],
            hands=inputs.hands[1:],
            camera=inputs.camera[1:],
            iterations=20,
            seed=0,
        )
    )
    np.testing.assert_allclose(together.joints[1], alone.joints[0], atol=2e-3)


def test_ignores_missing_keypoints(fitter: BodyFitter) -> None:
    inputs, _ = synthetic_people(1)
    inputs.body[0, 25:] = 0.0  # legs not visible (confidence 0, coordinates junk)
    inputs.body[0, 25:, :2] = 1e6
    inputs.iterations = 60
    out = fitter(inputs)
    assert np.isfinite(out.vertices).all()
    assert out.reprojection_error[0] < 10.0
