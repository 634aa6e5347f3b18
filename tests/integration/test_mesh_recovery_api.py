"""Mesh recovery end to end on the real stack: HTTP → Redis/Celery → worker → Triton → results.

Every request goes over real HTTP to uvicorn; jobs run in a real Celery worker process that
calls the real tritonserver; photos are the real ones from the shared data.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from shared.bodies.anny_model import get_anny
from shared.bodies.joint_names import SKELETON_JOINTS
from shared.keypoints.formats import MEDIAPIPE33
from shared.settings import get_settings

pytestmark = pytest.mark.integration

# The mean reprojection error of the fitted keypoints against the detected ones, over the
# confidently detected keypoints, must stay under this fraction of the person's height in pixels.
REPROJECTION_BOUND = 0.03
T_POSE_PHOTOS = ["codait_yogait_t6.jpg", "codait_yogait_war0.jpg"]
SINGLE_PERSON_PHOTOS = [
    "codait_yogait_t5.jpg",
    "codait_yogait_t6.jpg",
    "codait_yogait_tada_photo.jpg",
    "codait_yogait_test_a.jpg",
    "codait_yogait_test_c.jpg",
    "codait_yogait_test_m.jpg",
    "codait_yogait_test_y.jpg",
    "codait_yogait_war0.jpg",
    "codait_yogait_y1.jpg",
    "coco_000000000785_skier_single.jpg",
]
REPORT: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module")
def client(local_stack):  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=local_stack.base_url, timeout=180) as http:
        yield http


def recover(client: httpx.Client, photo: Path, **fields: str) -> dict:
    reply = client.post(
        "/v1/mesh-recovery",
        params={"wait": 120},
        files={"image": (photo.name, photo.read_bytes())},
        data=fields,
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["status"] == "succeeded", body
    return body


def upper_arm_elevations(person: dict) -> list[float]:
    """Angle of each upper arm above or below the body's horizontal plane, in degrees."""
    body = get_anny()
    out = body.forward(
        torch.tensor([person["anny"]["pose"]]),
        torch.tensor([person["anny"]["transl"]]),
        torch.tensor([[person["anny"]["phenotype"][k] for k in body.phenotype_labels]]),
    )
    joints = out.joints[0].numpy()
    up = joints[body.bone("neck01")] - joints[0]
    up /= np.linalg.norm(up)
    angles = []
    for side in "LR":
        arm = joints[body.bone(f"lowerarm01.{side}")] - joints[body.bone(f"upperarm01.{side}")]
        angles.append(float(np.degrees(np.arcsin(abs(arm @ up) / np.linalg.norm(arm)))))
    return angles


def person_height_px(person: dict) -> float:
    points = np.array(person["keypoints_2d"])
    visible = points[points[:, 2] > 0.5]
    return float(visible[:, 1].max() - visible[:, 1].min())


@pytest.mark.parametrize("name", T_POSE_PHOTOS)
def test_t_pose_upper_arms_are_horizontal(
    client: httpx.Client, photos_dir: Path, name: str
) -> None:
    result = recover(client, photos_dir / name)["result"]
    assert len(result["people"]) == 1
    elevations = upper_arm_elevations(result["people"][0])
    assert max(elevations) < 20.0, f"upper arms {elevations} degrees off horizontal"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # Four skiers standing side by side, whole bodies in view; a fifth behind them shows
        # only head and shoulders (not clearly visible).
        ("coco_000000541055_skiers_group_multi.jpg", 4),
        # The instructor and three children on their boards, faces in view. A fourth child
        # lies face down with her hair over her face; the face-based person detector misses
        # her (a known limit, noted on the issue).
        ("coco_000000081988_surf_lesson_multi.jpg", 4),
    ],
)
def test_one_body_per_clearly_visible_person(
    client: httpx.Client, photos_dir: Path, name: str, expected: int
) -> None:
    result = recover(client, photos_dir / name, max_people="8")["result"]
    assert len(result["people"]) == expected
    # Distinct people: no two bodies share a box centre.
    centres = np.array(
        [[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2] for b in (p["bbox"] for p in result["people"])]
    )
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1) + np.eye(len(centres)) * 1e9
    assert gaps.min() > 10


@pytest.mark.parametrize("name", SINGLE_PERSON_PHOTOS)
def test_reprojection_error_is_bounded(client: httpx.Client, photos_dir: Path, name: str) -> None:
    result = recover(client, photos_dir / name)["result"]
    assert result["people"], f"nobody found in {name}"
    person = result["people"][0]
    height = person_height_px(person)
    error = person["reprojection_error_px"]
    REPORT[name] = {
        "error_px": round(error, 2),
        "person_height_px": round(height, 1),
        "relative": round(error / height, 4),
    }
    assert error < REPROJECTION_BOUND * height, f"{error:.1f} px for a {height:.0f} px person"


def test_report_reprojection_errors(local_stack) -> None:  # type: ignore[no-untyped-def]
    """Writes the per-photo reprojection errors measured above (var/reports/…)."""
    if not REPORT:
        pytest.skip("no reprojection measurements in this run")
    path = Path(local_stack.var_dir) / "reports" / "reprojection.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(REPORT, indent=1))
    print("\nreprojection error per photo:", json.dumps(REPORT, indent=1))


def test_artifacts_are_usable(client: httpx.Client, photos_dir: Path) -> None:
    photo = photos_dir / "codait_yogait_tada_photo.jpg"
    body = recover(client, photo, outputs="glb,obj,ply,overlay,npz,json")
    job, result = body["job_id"], body["result"]
    assert set(result["artifacts"]) >= {
        "mesh.glb",
        "mesh.obj",
        "mesh.ply",
        "overlay.png",
        "params.npz",
        "result.json",
    }
    glb = client.get(f"/v1/jobs/{job}/artifacts/mesh.glb")
    assert glb.status_code == 200 and glb.headers["content-type"] == "model/gltf-binary"
    scene = trimesh.load(io.BytesIO(glb.content), file_type="glb")
    assert sum(len(g.vertices) for g in scene.geometry.values()) == 13718
    overlay = Image.open(io.BytesIO(client.get(f"/v1/jobs/{job}/artifacts/overlay.png").content))
    assert overlay.size == Image.open(photo).size
    params = np.load(io.BytesIO(client.get(f"/v1/jobs/{job}/artifacts/params.npz").content))
    assert params["body_pose"].shape == (1, 63) and params["global_orient"].shape == (1, 3)
    assert params["left_hand_pose"].shape == (1, 45)
    person = result["people"][0]
    assert len(person["smplx"]["body_pose"]) == 21
    assert len(person["keypoints_2d"]) == len(MEDIAPIPE33)
    # 3D keypoints sit in front of the camera and reproject onto the fitted 2D keypoints.
    camera = result["camera"]
    for point, pixel in zip(person["keypoints_3d"], person["fitted_keypoints_2d"], strict=True):
        if point is None:
            continue
        x, y, z = point
        assert z > 0.5
        assert abs(camera["fx"] * x / z + camera["cx"] - pixel[0]) < 0.5
        assert abs(camera["fy"] * y / z + camera["cy"] - pixel[1]) < 0.5
    assert person["keypoints_3d"][MEDIAPIPE33.index("mouth_left")] is None
    again = client.get(f"/v1/jobs/{job}/result").json()
    assert again["people"][0]["smplx"] == person["smplx"]


def test_photo_without_people_succeeds_with_a_reason(client: httpx.Client) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.full((240, 320, 3), 200, np.uint8)).save(buffer, format="PNG")
    reply = client.post(
        "/v1/mesh-recovery", params={"wait": 60}, files={"image": ("wall.png", buffer.getvalue())}
    )
    assert reply.status_code == 200
    body = reply.json()
    assert body["status"] == "succeeded"
    assert body["result"]["people"] == []
    assert "no person" in body["result"]["reason"]
    assert set(body["result"]["artifacts"]) == {"overlay.png", "result.json"}
    saved = client.get(f"/v1/jobs/{body['job_id']}/artifacts/result.json").json()
    assert saved["people"] == [] and saved["reason"] == body["result"]["reason"]


def test_focal_length_from_exif(client: httpx.Client, photos_dir: Path) -> None:
    photo = Image.open(photos_dir / "codait_yogait_tada_photo.jpg")
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = 28  # FocalLengthIn35mmFilm
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", exif=exif, quality=92)
    reply = client.post(
        "/v1/mesh-recovery",
        params={"wait": 60},
        files={"image": ("exif.jpg", buffer.getvalue())},
        data={"outputs": "json"},
    )
    camera = reply.json()["result"]["camera"]
    assert camera["focal_length_source"] == "exif"
    diagonal = (photo.width**2 + photo.height**2) ** 0.5
    assert camera["fx"] == pytest.approx(28 * diagonal / 43.2666, rel=1e-3)
    plain = recover(client, photos_dir / "codait_yogait_tada_photo.jpg", outputs="json")
    assert plain["result"]["camera"]["focal_length_source"] == "default"


def test_job_lifecycle_without_wait(client: httpx.Client, photos_dir: Path) -> None:
    photo = photos_dir / "codait_yogait_t5.jpg"
    reply = client.post("/v1/mesh-recovery", files={"image": (photo.name, photo.read_bytes())})
    assert reply.status_code == 202
    location = reply.headers["Location"]
    assert reply.json()["status"] in ("queued", "running")
    early = client.get(f"{location}/result")
    if early.status_code != 200:
        assert early.status_code == 409
    for _ in range(600):
        status = client.get(location).json()
        if status["status"] == "succeeded":
            break
        assert status["status"] in ("queued", "running"), status
        time.sleep(0.2)
    assert status["progress"] == 1.0 and "result" in status["links"]
    assert client.get(f"{location}/result").status_code == 200


def test_cancel_before_it_runs(client: httpx.Client, photos_dir: Path) -> None:
    photo = photos_dir / "codait_yogait_t5.jpg"
    # Fill the single worker first, so the next job is still queued when cancelled.
    busy = client.post("/v1/mesh-recovery", files={"image": (photo.name, photo.read_bytes())})
    queued = client.post("/v1/mesh-recovery", files={"image": (photo.name, photo.read_bytes())})
    job = queued.json()["id"]
    cancelled = client.delete(f"/v1/jobs/{job}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    busy_id = busy.json()["id"]
    for _ in range(600):
        if client.get(f"/v1/jobs/{busy_id}").json()["status"] == "succeeded":
            break
        time.sleep(0.2)
    time.sleep(1.0)  # the worker has had time to pick up (and skip) the cancelled job
    assert client.get(f"/v1/jobs/{job}").json()["status"] == "cancelled"
    assert client.get(f"/v1/jobs/{job}/result").status_code == 409


def test_hypotheses_per_person_and_their_spread(client: httpx.Client, photos_dir: Path) -> None:
    """hypotheses=4: the worker asks Triton's pose_lift for 4 bodies per person, next to the
    fit, with per-joint uncertainty, the spread picture and the hypotheses in the npz."""
    photo = photos_dir / "coco_000000541055_skiers_group_multi.jpg"
    body = recover(
        client, photo, hypotheses="4", max_people="4", seed="7", outputs="overlay,npz,json"
    )
    job, result = body["job_id"], body["result"]
    assert result["sampling"]["hypotheses"] == 4
    assert result["sampling"]["seeds"] == [7 + i for i in range(len(result["people"]))]
    assert len(result["people"]) == 4
    for person in result["people"]:
        assert len(person["hypotheses"]) == 4
        joints = np.array([h["joints_3d"] for h in person["hypotheses"]])
        assert joints.shape == (4, 22, 3) and np.isfinite(joints).all()
        assert np.abs(joints[0] - joints[1]).max() > 0.01  # distinct bodies
        assert len(person["hypotheses"][0]["smplx"]["body_pose"]) == 21
        assert list(person["uncertainty"]) == list(SKELETON_JOINTS)
        assert 0 <= person["representative"] < 4
        assert set(person["ambiguous_joints"]) <= set(SKELETON_JOINTS)
        assert len(person["smplx"]["body_pose"]) == 21  # the fit stays the main body
    assert {"overlay.png", "spread.png", "params.npz", "result.json"} <= set(result["artifacts"])
    spread = client.get(f"/v1/jobs/{job}/artifacts/spread.png")
    assert spread.status_code == 200 and spread.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(spread.content))
    width, height = Image.open(photo).size
    assert picture.format == "PNG" and picture.width == 2 * round(width * 480 / height)
    params = np.load(io.BytesIO(client.get(f"/v1/jobs/{job}/artifacts/params.npz").content))
    assert params["hypotheses_joints"].shape == (4, 4, 22, 3)
    assert params["hypotheses_body_pose"].shape == (4, 4, 63)


def test_too_many_hypotheses_is_a_422(client: httpx.Client, photos_dir: Path) -> None:
    limit = get_settings().max_lift_hypotheses
    photo = photos_dir / "codait_yogait_t5.jpg"
    reply = client.post(
        "/v1/mesh-recovery",
        files={"image": (photo.name, photo.read_bytes())},
        data={"hypotheses": str(limit + 1)},
    )
    assert reply.status_code == 422, reply.text
    detail = reply.json()["detail"]
    assert f"at most {limit}" in detail and "BODYSERVE_MAX_LIFT_HYPOTHESES" in detail


def test_health_readiness_and_metrics(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["triton"] == "ok"
    metrics = client.get("/metrics").text
    assert 'bodyserve_http_requests_total{method="POST",route="/v1/mesh-recovery"' in metrics
    assert 'bodyserve_jobs_total{capability="mesh_recovery",outcome="succeeded"}' in metrics
    assert 'bodyserve_job_duration_seconds_bucket{capability="mesh_recovery"' in metrics
    assert 'bodyserve_queue_depth{queue="mesh_recovery"}' in metrics
    assert client.get("/docs").status_code == 200
    assert "/v1/mesh-recovery" in client.get("/openapi.json").json()["paths"]
