"""POST /v1/poses/lift's request model, the format conversion and the result it builds.

Validation is checked through the messages clients read (what is wrong and how to fix it); the
pipeline's bookkeeping (formats, grouping tracks, summaries, transl) with a stand-in backend,
so that no prior is needed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import numpy as np
import pytest
from pydantic import ValidationError

from shared.bodies.joint_names import SKELETON_JOINTS
from shared.inference.contracts import InferenceBackend, LiftInputs, LiftOutputs
from shared.keypoints.formats import COCO17, COCO17_FEET, MEDIAPIPE33
from shared.lifting.summary import AMBIGUOUS_SPREAD_MM
from shared.schemas.lifting import LIFT_MIN_CONFIDENCE, PoseLiftRequest, PoseLiftResult
from shared.schemas.poses import PoseOutput
from shared.settings import get_settings

IMAGE = {"width": 640, "height": 480}


def person(count: int = 17, confidence: float = 1.0) -> list[list[float]]:
    return [[100.0 + 5 * k, 50.0 + 10 * k, confidence] for k in range(count)]


def message(exc: pytest.ExceptionInfo[ValidationError]) -> str:
    return "; ".join(error["msg"] for error in exc.value.errors())


def invalid(**body: Any) -> str:
    with pytest.raises(ValidationError) as exc:
        PoseLiftRequest.model_validate({"format": "coco17", "image_size": IMAGE, **body})
    return message(exc)


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Small server limits: 8 hypotheses, 20 rows x hypotheses, 5 frames."""
    monkeypatch.setenv("BODYSERVE_MAX_LIFT_HYPOTHESES", "8")
    monkeypatch.setenv("BODYSERVE_MAX_LIFT_ROWS", "20")
    monkeypatch.setenv("BODYSERVE_MAX_MOTION_FRAMES", "5")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


# --------------------------------------------------------------------------- validation


def test_defaults_and_seeds() -> None:
    request = PoseLiftRequest.model_validate(
        {"format": "coco17", "people": [person(), person()], "image_size": IMAGE, "seed": 4}
    )
    assert request.hypotheses == 10 and request.outputs == [PoseOutput.params]
    assert request.seeds() == [4, 5] and request.row_count() == 2
    assert [k.shape for k in request.track_keypoints()] == [(1, 17, 3), (1, 17, 3)]


def test_min_confidence_agrees_with_the_lifter() -> None:
    """The schema spells the threshold out (no torch in the gateway): it must not drift."""
    from shared.lifting.lift import MIN_CONFIDENCE

    assert LIFT_MIN_CONFIDENCE == MIN_CONFIDENCE


def test_unknown_format_names_the_allowed_ones() -> None:
    text = invalid(format="openpose25", people=[person()])
    assert "'coco17', 'coco17_feet' or 'mediapipe33'" in text


@pytest.mark.parametrize(
    ("fmt", "count", "expected"),
    [
        ("coco17", 15, "people[0] must be 17 x 3 (17 coco17 keypoints x [x, y, confidence]), "
         "got 15 x 3"),
        ("coco17_feet", 17, "people[0] must be 23 x 3 (23 coco17_feet keypoints"),
        ("mediapipe33", 17, "people[0] must be 33 x 3 (33 mediapipe33 keypoints"),
    ],
)  # fmt: skip
def test_wrong_keypoint_count_says_expected_and_got(fmt: str, count: int, expected: str) -> None:
    assert expected in invalid(format=fmt, people=[person(count)])


def test_ragged_keypoints() -> None:
    bad = person()
    bad[3] = [1.0, 2.0]
    assert "people[0] must be a 17 x 3 array of numbers" in invalid(people=[bad])


def test_hypotheses_over_the_limit(limits: None) -> None:
    text = invalid(people=[person()], hypotheses=9)
    assert (
        "hypotheses must be at most 8 (the server's limit, BODYSERVE_MAX_LIFT_HYPOTHESES)" in text
    )
    assert "greater than or equal to 1" in invalid(people=[person()], hypotheses=0)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers(value: float) -> None:
    bad = person()
    bad[2][0] = value
    assert "finite number" in invalid(people=[bad])
    frames = [person(), bad]
    assert "finite number" in invalid(tracks=[frames])
    assert "finite number" in invalid(
        people=[person()], intrinsics={"fx": value, "fy": 1, "cx": 0, "cy": 0}
    )


def test_confidence_in_unit_interval() -> None:
    bad = person()
    bad[5][2] = 2.0  # a COCO visibility flag sent as is
    text = invalid(people=[bad])
    assert "people[0]: a confidence" in text and "must be in [0, 1], got 2 at keypoint 5" in text
    assert "send 0 for v=0 (missing) and 1 for v>0" in text


def test_a_person_without_usable_keypoints() -> None:
    text = invalid(people=[person(), person(confidence=0.1)])
    assert f"people[1] has no keypoint with confidence >= {LIFT_MIN_CONFIDENCE}" in text
    text = invalid(tracks=[[person(), person(confidence=0.0)]])
    assert "tracks[0] frame 1 has no keypoint with confidence" in text


def test_exactly_one_of_people_and_tracks() -> None:
    both = invalid(people=[person()], tracks=[[person()]])
    neither = invalid()
    for text in (both, neither):
        assert "exactly one of people" in text and "or tracks" in text
    assert "people is empty" in invalid(people=[])
    assert "tracks is empty" in invalid(tracks=[])
    assert "tracks[1] has no frames" in invalid(tracks=[[person()], []])


def test_rows_and_frames_over_the_limits(limits: None) -> None:
    text = invalid(people=[person()] * 3, hypotheses=7)
    assert "people x hypotheses (3 x 7) must be at most 20" in text
    assert "BODYSERVE_MAX_LIFT_ROWS" in text
    text = invalid(tracks=[[person()] * 3, [person()] * 2], hypotheses=5)
    assert "frames x hypotheses (5 x 5) must be at most 20" in text
    text = invalid(tracks=[[person()] * 6], hypotheses=1)
    assert "tracks[0]: T (frames) must be at most 5" in text
    # Within every limit: accepted.
    PoseLiftRequest.model_validate(
        {"format": "coco17", "tracks": [[person()] * 2] * 2, "image_size": IMAGE, "hypotheses": 5}
    )


def test_image_size_is_required_and_intrinsics_positive() -> None:
    with pytest.raises(ValidationError) as exc:
        PoseLiftRequest.model_validate({"format": "coco17", "people": [person()]})
    assert [e["loc"] for e in exc.value.errors()] == [("image_size",)]
    assert "greater than 0" in invalid(
        people=[person()], intrinsics={"fx": 0, "fy": 1, "cx": 0, "cy": 0}
    )


def test_mesh_body_count_is_bounded() -> None:
    ok = {"people": [person()] * 7, "hypotheses": 10, "outputs": ["mesh"]}
    PoseLiftRequest.model_validate({"format": "coco17", "image_size": IMAGE, **ok})
    text = invalid(**ok, mesh_hypotheses="all")
    assert "the mesh would hold 70 bodies, at most 64" in text


# --------------------------------------------------------------------------- pipeline


def test_formats_convert_to_the_lifters_keypoints() -> None:
    from shared.lifting.keypoints import LIFT_KEYPOINTS
    from shared.lifting.results import to_lift_keypoints

    coco = np.arange(17 * 3, dtype=np.float32).reshape(17, 3)
    lifted = to_lift_keypoints(coco[None], "coco17")[0]
    for k, name in enumerate(COCO17):
        np.testing.assert_array_equal(lifted[LIFT_KEYPOINTS.index(name)], coco[k])
    assert lifted[LIFT_KEYPOINTS.index("left_heel"), 2] == 0  # not in coco17: missing

    feet = np.arange(23 * 3, dtype=np.float32).reshape(23, 3)
    lifted = to_lift_keypoints(feet, "coco17_feet")
    big_toe = COCO17_FEET.index("left_big_toe")
    np.testing.assert_array_equal(lifted[LIFT_KEYPOINTS.index("left_foot_index")], feet[big_toe])
    np.testing.assert_array_equal(
        lifted[LIFT_KEYPOINTS.index("right_heel")], feet[COCO17_FEET.index("right_heel")]
    )
    assert lifted[:, 2].astype(bool).sum() == 17 + 4  # small toes have no counterpart

    mediapipe = np.random.default_rng(0).random((2, 3, 33, 3)).astype(np.float32)
    np.testing.assert_array_equal(to_lift_keypoints(mediapipe, "mediapipe33"), mediapipe)
    assert LIFT_KEYPOINTS == MEDIAPIPE33


# The fake's left wrist moves this far (metres) per hypothesis: over 3 hypotheses a spread of
# sqrt(2) / 3 of it per axis, 1.41x the ambiguity threshold.
WRIST_STEP = 3 * AMBIGUOUS_SPREAD_MM / 1000


class FakeBackend:
    """Stands in for the lifter: hypothesis h of frame t sits at depth 3 + t + h / 10, its left
    wrist moved WRIST_STEP * h along x (so that the summary has spread); records the calls."""

    def __init__(self) -> None:
        self.calls: list[LiftInputs] = []

    def lift(self, inputs: LiftInputs) -> LiftOutputs:
        from shared.prior.pose_outputs import skeleton_joints

        self.calls.append(inputs)
        s, t = inputs.keypoints.shape[:2]
        n = inputs.hypotheses
        rest = skeleton_joints(np.zeros((1, 21, 3), np.float32))[0]
        depth = 3 + np.arange(t)[:, None] + np.arange(n)[None] / 10  # (T, N)
        pelvis = np.zeros((s, t, n, 3), np.float32)
        pelvis[..., 2] = depth
        joints = rest[None, None, None] - rest[0] + pelvis[..., None, :]
        joints[..., SKELETON_JOINTS.index("left_wrist"), 0] += np.arange(n) * WRIST_STEP
        return LiftOutputs(
            global_orient=np.tile(np.array([np.pi, 0, 0], np.float32), (s, t, n, 1)),
            body_pose=np.zeros((s, t, n, 21, 3), np.float32),
            pelvis=pelvis,
            joints=joints.astype(np.float32),
            keypoints_2d=inputs.keypoints[:, :, None, :, :2].repeat(n, 2),
            reprojection_error=np.ones((s, t, n), np.float32),
            prior_version=7,
        )


def test_lift_poses_groups_tracks_by_length_and_answers_in_order() -> None:
    from shared.pipeline.pose_jobs import lift_poses
    from shared.prior.pose_outputs import pelvis_rest

    tracks = [[person()] * 2, [person()] * 3, [person()] * 2]
    request = PoseLiftRequest.model_validate(
        {
            "format": "coco17",
            "tracks": tracks,
            "image_size": IMAGE,
            "intrinsics": {"fx": 500, "fy": 510, "cx": 300, "cy": 200},
            "hypotheses": 3,
            "seed": 10,
        }
    )
    backend = FakeBackend()
    result = lift_poses(request, cast(InferenceBackend, backend)).result
    assert isinstance(result, PoseLiftResult)
    # Tracks of 2 frames in one call, the 3-frame track in another; seeds follow the tracks.
    assert sorted(call.keypoints.shape[:2] for call in backend.calls) == [(1, 3), (2, 2)]
    assert sorted(call.seeds.tolist() for call in backend.calls) == [[10, 12], [11]]
    np.testing.assert_allclose(backend.calls[0].camera, [[500, 510, 300, 200]] * 2)
    assert result.people is None and result.tracks is not None
    assert [len(t.frames) for t in result.tracks] == [2, 3, 2]
    assert [t.seed for t in result.tracks] == [10, 11, 12]
    assert result.prior_version == 7 and result.camera.focal_length_source == "request"
    assert result.keypoint_names == list(COCO17) and result.joint_names == list(SKELETON_JOINTS)

    frame = result.tracks[1].frames[2]
    assert len(frame.hypotheses) == 3
    pose = frame.hypotheses[2]
    assert pose.smplx.pelvis == pytest.approx([0, 0, 5.2], abs=1e-5)
    rest_pelvis = pelvis_rest().numpy()[0]
    assert pose.smplx.transl == pytest.approx(np.array([0, 0, 5.2]) - rest_pelvis, abs=1e-4)
    assert np.shape(pose.joints_3d) == (22, 3) and len(pose.keypoints_2d) == 17
    assert pose.keypoints_2d[3] == pytest.approx(person()[3][:2])
    # Spread: only the left wrist varies, and it is ambiguous.
    spread = WRIST_STEP * np.sqrt(2) / 3 * 1000
    assert frame.summary.spread_mm["left_wrist"] == pytest.approx(spread, abs=0.1)
    assert frame.summary.spread_mm["head"] == 0.0
    assert frame.summary.ambiguous_joints == ["left_wrist"]
    assert frame.summary.representative == 1


def test_mediapipe_points_without_a_counterpart_are_null() -> None:
    from shared.lifting.keypoints import KeypointSkeleton
    from shared.pipeline.pose_jobs import lift_poses

    request = PoseLiftRequest.model_validate(
        {"format": "mediapipe33", "people": [person(33)], "image_size": IMAGE, "hypotheses": 2}
    )
    result = lift_poses(request, cast(InferenceBackend, FakeBackend())).result
    assert isinstance(result, PoseLiftResult) and result.people is not None
    assert result.camera.focal_length_source == "default" and result.camera.cx == 320
    points = result.people[0].hypotheses[0].keypoints_2d
    mapped = KeypointSkeleton.neutral().mapped.tolist()
    assert [p is not None for p in points] == mapped
    assert not all(mapped)  # eye corners and mouth corners: no counterpart on Anny
