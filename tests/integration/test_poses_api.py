"""Pose generation, pose completion and motion denoising end to end on the real stack.

HTTP -> gateway (uvicorn) -> Redis/Celery -> the ``poses`` worker -> tritonserver (``pose_prior``,
``motion_denoise``) -> results, artifacts. The stack serves a temporary copy of the model
repository into which a tiny pose prior (random weights: these tests check the plumbing and
the contracts, not the quality of a trained prior) is published as the newest version with the
trainer's own publisher, so the tests run the same before and after a trained prior ships.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import trimesh

from services.tools.local_stack import LocalStack, StackConfig
from services.tools.triton_launcher import TritonNotFound, find_tritonserver
from shared.bodies.joint_names import BODY_PARTS, BODY_POSE_JOINTS, SKELETON_JOINTS
from shared.settings import get_settings
from tests.conftest import missing
from tests.integration.stacks import started_stack

pytestmark = pytest.mark.integration

WAIT = {"wait": 90}
STEPS = 10  # the smallest the API takes: the tests check contracts, not sample quality
ZERO = [[0.0, 0.0, 0.0]] * 21  # the neutral body_pose (T-pose)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A copy of the model repository with a tiny prior published as its newest version."""
    from services.trainer.publish import publish_prior
    from shared.prior.model import PosePrior, PriorConfig

    root = tmp_path_factory.mktemp("poses-repository")
    repository = root / "model_repository"
    shutil.copytree(
        get_settings().model_repository,
        repository,
        ignore=shutil.ignore_patterns(".*", "__pycache__"),
    )
    torch.manual_seed(0)
    prior = PosePrior(PriorConfig(hidden=64, blocks=1, embed_dim=16))
    prior.save(root / "tiny" / "prior.pt")
    result = publish_prior(
        root / "tiny" / "prior.pt",
        {"source": "tests/integration/test_poses_api.py", "weights": "random (test prior)"},
        repository,
    )
    return repository, result.version


@pytest.fixture(scope="module")
def stack(
    published: tuple[Path, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalStack]:
    """Redis, Triton on the repository copy, the ``poses`` worker and the gateway."""
    try:
        find_tritonserver()
    except TritonNotFound as exc:
        missing(str(exc))
    if shutil.which("redis-server") is None:
        missing("redis-server is not installed: run ./scripts/setup.sh")
    repository, _ = published
    models = sorted(p.parent.name for p in repository.glob("*/config.pbtxt"))
    config = StackConfig.with_free_ports(
        tmp_path_factory.mktemp("poses-stack"),
        queues=["poses"],
        model_repository=repository,
        models=models,
    )
    with started_stack(config, "the local stack") as local:
        yield local


@pytest.fixture(scope="module")
def client(stack: LocalStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=120) as http:
        yield http


def run(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST with ?wait and return the finished job's result (asserting it succeeded)."""
    reply = client.post(path, params=WAIT, json=body)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["status"] == "succeeded", answer
    assert reply.headers["Location"].endswith(f"/v1/jobs/{answer['job_id']}")
    return answer


def body_poses(poses: list[dict[str, Any]]) -> np.ndarray:
    return np.array([p["smplx"]["body_pose"] for p in poses])


def check_pose_payload(pose: dict[str, Any]) -> None:
    assert np.shape(pose["smplx"]["body_pose"]) == (21, 3)
    assert np.shape(pose["smplx"]["global_orient"]) == (3,)
    assert np.shape(pose["anny"]["pose"]) == (104, 3)
    assert np.shape(pose["joints_3d"]) == (22, 3)
    assert np.isfinite(pose["anny"]["pose"]).all() and np.isfinite(pose["joints_3d"]).all()
    # The pelvis of the skeleton is where the SMPL-X parameters say it is.
    np.testing.assert_allclose(pose["joints_3d"][0], pose["smplx"]["pelvis"], atol=1e-4)


# --------------------------------------------------------------------------- generate


def test_generate_returns_seeded_poses_in_both_conventions(
    client: httpx.Client, published: tuple[Path, int]
) -> None:
    answer = run(client, "/v1/poses/generate", {"n": 3, "seed": 11, "steps": STEPS})
    result = answer["result"]
    assert result["prior_version"] == published[1]  # the version Triton served
    assert result["seeds"] == [11, 12, 13] and result["sampler"] == "ode"
    assert result["joint_names"] == list(SKELETON_JOINTS)
    assert len(result["poses"]) == 3
    for pose in result["poses"]:
        check_pose_payload(pose)
    poses = body_poses(result["poses"])
    assert not np.allclose(poses[0], poses[1])  # different seeds, different poses

    # Same request, same poses; a pose depends on its own seed only, not on n.
    again = run(client, "/v1/poses/generate", {"n": 3, "seed": 11, "steps": STEPS})["result"]
    np.testing.assert_array_equal(body_poses(again["poses"]), poses)
    single = run(client, "/v1/poses/generate", {"n": 1, "seed": 12, "steps": STEPS})["result"]
    np.testing.assert_allclose(body_poses(single["poses"])[0], poses[1], atol=1e-5)

    # The job's result route serves the same result.
    stored = client.get(f"/v1/jobs/{answer['job_id']}/result").json()
    assert stored == result


def test_generate_without_wait_is_a_job_to_poll(client: httpx.Client) -> None:
    reply = client.post("/v1/poses/generate", json={"n": 2, "steps": STEPS})
    assert reply.status_code == 202, reply.text
    location = reply.headers["Location"]
    assert reply.json()["capability"] == "pose_generation"
    deadline = time.monotonic() + 60
    while (job := client.get(location).json())["status"] != "succeeded":
        assert job["status"] in ("queued", "running"), job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert len(client.get(job["links"]["result"]).json()["poses"]) == 2


def test_generate_mesh_artifact(client: httpx.Client) -> None:
    body = {"n": 2, "seed": 3, "steps": STEPS, "outputs": ["mesh"], "mesh_format": "glb"}
    answer = run(client, "/v1/poses/generate", body)
    assert answer["result"]["artifacts"] == {"poses.glb": "model/gltf-binary"}
    reply = client.get(f"/v1/jobs/{answer['job_id']}/artifacts/poses.glb")
    assert reply.status_code == 200
    scene = trimesh.load(io.BytesIO(reply.content), file_type="glb")
    assert isinstance(scene, trimesh.Scene)
    meshes = list(scene.geometry.values())
    assert len(meshes) == 2
    assert all(len(m.vertices) == 13718 for m in meshes)  # one Anny body per pose


def test_triton_backend_sends_rows_in_chunks_of_max_batch_size(
    stack: LocalStack, published: tuple[Path, int]
) -> None:
    """More rows than pose_prior's max_batch_size (256): several requests, one answer, each
    row the same as when asked for alone."""
    from services.common.triton_backend import TritonBackend
    from shared.inference.contracts import PriorInputs
    from shared.prior.rows import PriorTask

    backend = TritonBackend(stack.triton_url)
    seeds = np.arange(300, dtype=np.int64)
    rows = backend.prior(PriorInputs(PriorTask.GENERATE, seeds, STEPS))
    assert rows.body_pose.shape == (300, 21, 3)
    assert rows.version == published[1]
    alone = backend.prior(PriorInputs(PriorTask.GENERATE, seeds[[299]], STEPS))
    np.testing.assert_allclose(alone.body_pose[0], rows.body_pose[299], atol=1e-5)
    assert len(np.unique(rows.body_pose.round(4), axis=0)) == 300


# --------------------------------------------------------------------------- complete


def test_complete_keeps_known_joints_and_varies_hidden_ones(client: httpx.Client) -> None:
    generator = np.random.default_rng(5)
    pose = generator.normal(0.0, 0.3, size=(21, 3)).round(4)
    body = {"body_pose": pose.tolist(), "hidden_parts": ["left_arm"], "k": 4, "seed": 2}
    result = run(client, "/v1/poses/complete", {**body, "steps": STEPS})["result"]
    hidden = set(BODY_PARTS["left_arm"])
    assert set(result["hidden_joints"]) == hidden
    assert result["known_joints"] == [j for j in BODY_POSE_JOINTS if j not in hidden]
    hypotheses = body_poses(result["hypotheses"])
    assert hypotheses.shape == (4, 21, 3)
    known = np.array([j not in hidden for j in BODY_POSE_JOINTS])
    np.testing.assert_allclose(hypotheses[:, known], np.repeat(pose[None, known], 4, 0), atol=1e-6)
    assert not np.allclose(hypotheses[0, ~known], hypotheses[1, ~known])
    for pose_payload in result["hypotheses"]:
        check_pose_payload(pose_payload)
    spread = result["spread_deg"]
    assert set(spread) == set(BODY_POSE_JOINTS)
    assert all(spread[j] == 0.0 for j in BODY_POSE_JOINTS if j not in hidden)
    assert all(spread[j] > 0.0 for j in hidden)

    # Deterministic under a seed.
    again = run(client, "/v1/poses/complete", {**body, "steps": STEPS})["result"]
    np.testing.assert_array_equal(body_poses(again["hypotheses"]), hypotheses)


def test_complete_mesh_artifact_shows_upright_bodies(client: httpx.Client) -> None:
    """Neutral pose, left arm hidden: the OBJ (camera frame, y down) holds upright bodies."""
    body = {"body_pose": ZERO, "hidden_parts": ["left_arm"], "k": 2, "steps": STEPS}
    answer = run(client, "/v1/poses/complete", {**body, "outputs": ["mesh"], "mesh_format": "obj"})
    assert answer["result"]["artifacts"] == {"poses.obj": "text/plain"}
    reply = client.get(f"/v1/jobs/{answer['job_id']}/artifacts/poses.obj")
    assert reply.status_code == 200
    objects = [line for line in reply.text.splitlines() if line.startswith("o ")]
    assert objects == ["o pose_0", "o pose_1"]
    merged = trimesh.load(io.BytesIO(reply.content), file_type="obj", process=False)
    assert isinstance(merged, trimesh.Trimesh)
    vertices = merged.vertices
    assert len(vertices) == 2 * 13718
    # Upright along y, a body-height tall; the two bodies stand 1 m apart along x.
    assert 1.4 < np.ptp(vertices[:, 1]) < 2.3
    assert 1.0 < np.ptp(vertices[:, 0]) < 3.0


def test_complete_takes_an_smplx_object_and_known_joints(client: httpx.Client) -> None:
    source = run(client, "/v1/poses/generate", {"n": 1, "seed": 21, "steps": STEPS})["result"]
    smplx = source["poses"][0]["smplx"]
    smplx["global_orient"] = [0.0, 1.0, 0.0]
    known = ["spine1", "spine2", "spine3", "neck", "head"]
    body = {"smplx": smplx, "known_joints": known, "k": 2, "steps": STEPS}
    result = run(client, "/v1/poses/complete", body)["result"]
    assert result["known_joints"] == known
    for hypothesis in result["hypotheses"]:
        assert hypothesis["smplx"]["global_orient"] == [0.0, 1.0, 0.0]  # kept as given
        for joint in known:
            i = BODY_POSE_JOINTS.index(joint)
            np.testing.assert_allclose(
                hypothesis["smplx"]["body_pose"][i], smplx["body_pose"][i], atol=1e-6
            )


# --------------------------------------------------------------------------- motion


def gliding_body(frames: int) -> np.ndarray:
    """(T, 22, 3) the neutral skeleton moving forward at 1 m/s (30 fps)."""
    from shared.prior.pose_outputs import skeleton_joints

    rest = skeleton_joints(np.zeros((1, 21, 3)))[0]
    return rest[None] + np.arange(frames)[:, None, None] / 30.0 * np.array([0.0, 0.0, 1.0])


def acceleration(joints: np.ndarray) -> float:
    """Mean magnitude of the second difference over frames and joints (metres per frame^2)."""
    return float(np.linalg.norm(np.diff(joints, n=2, axis=0), axis=-1).mean())


def test_motion_denoise_smooths_and_writes_bvh(client: httpx.Client) -> None:
    from shared.mocap.bvh import parse_bvh

    frames = 40
    clean = gliding_body(frames)
    noisy = clean + np.random.default_rng(0).normal(0.0, 0.01, size=clean.shape)  # 1 cm jitter
    body = {"joints": noisy.tolist(), "fps": 30, "seed": 1, "iterations": 60}
    answer = run(client, "/v1/motions/denoise", body)
    result = answer["result"]
    assert result["frames"] == frames and result["fps"] == 30
    assert np.shape(result["global_orient"]) == (frames, 3)
    assert np.shape(result["body_pose"]) == (frames, 21, 3)
    assert np.shape(result["pelvis"]) == (frames, 3)
    joints = np.array(result["joints"])
    assert joints.shape == (frames, 22, 3)
    assert result["joint_names"] == list(SKELETON_JOINTS)
    assert acceleration(joints) < 0.2 * acceleration(noisy)  # jitter removed
    # Closer to the clean motion than the input was.
    error = np.linalg.norm(joints - clean, axis=-1).mean()
    assert error < 0.7 * np.linalg.norm(noisy - clean, axis=-1).mean()

    reply = client.get(f"/v1/jobs/{answer['job_id']}/artifacts/motion.bvh")
    assert reply.status_code == 200
    motion = parse_bvh(reply.text)
    assert motion.frame_count == frames
    assert motion.fps == pytest.approx(30.0)
    # Any BVH reader poses the joints of the result (the file is in centimetres).
    _, positions = motion.forward_kinematics()
    order = [motion.skeleton.index(name) for name in SKELETON_JOINTS]
    np.testing.assert_allclose(positions[:, order] / 100, joints, atol=1e-3)

    again = run(client, "/v1/motions/denoise", body)["result"]
    assert again["joints"] == result["joints"]  # deterministic under a seed


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/v1/poses/generate", {"n": 65}, "n must be at most 64"),
        ("/v1/poses/generate", {"n": 2, "sampler": "euler"}, "sampler"),
        ("/v1/poses/generate", {"steps": 1000}, "steps: Input should be less than or equal"),
        (
            "/v1/poses/complete",
            {"body_pose": ZERO[:20], "hidden_parts": ["legs"]},
            "body_pose must be 21 x 3",
        ),
        (
            "/v1/poses/complete",
            {"body_pose": [[float("nan"), 0.0, 0.0], *ZERO[1:]], "hidden_parts": ["legs"]},
            "finite number",
        ),
        (
            "/v1/poses/complete",
            {"body_pose": ZERO, "hidden_parts": ["wings"]},
            "unknown name(s) 'wings'; valid: left_leg, right_leg, left_arm",
        ),
        (
            "/v1/poses/complete",
            {"body_pose": ZERO, "known_joints": ["knee"]},
            "unknown name(s) 'knee'; valid: left_hip",
        ),
        (
            "/v1/poses/complete",
            {"body_pose": ZERO, "known_joints": ["head"], "hidden_parts": ["legs"]},
            "exactly one of known_joints",
        ),
        (
            "/v1/poses/complete",
            {"body_pose": ZERO, "hidden_parts": ["legs"], "k": 100},
            "k must be at most 64",
        ),
        (
            "/v1/motions/denoise",
            {"joints": np.zeros((601, 22, 3)).tolist()},
            "T (frames) must be at most 600",
        ),
        (
            "/v1/motions/denoise",
            {"joints": np.zeros((10, 17, 3)).tolist()},
            "joints must be T x 22 x 3",
        ),
    ],
)
def test_bad_input_is_a_422_that_says_what_to_fix(
    client: httpx.Client, path: str, body: dict[str, Any], expected: str
) -> None:
    # json.dumps writes NaN as Python's json module reads it (httpx's json= refuses NaN).
    content = json.dumps(body)
    reply = client.post(path, content=content, headers={"Content-Type": "application/json"})
    assert reply.status_code == 422, reply.text
    assert expected in reply.json()["detail"]
