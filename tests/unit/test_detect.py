"""Multi-person 2D keypoint detection on real photographs (``shared.keypoints.detect``).

The photos are the shared real data (``get_settings().photos_dir``; licences and attribution in
``photos/LICENSES.txt`` there). Positions quoted below are in pixels of the original photos,
read off the images by eye.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mediapipe")
pytest.importorskip("ai_edge_litert")
cv2 = pytest.importorskip("cv2")
Image = pytest.importorskip("PIL.Image")

from shared.keypoints.detect import PersonDetector  # noqa: E402
from shared.keypoints.formats import MEDIAPIPE33, PersonKeypoints, convert  # noqa: E402
from shared.settings import get_settings  # noqa: E402

K = {name: i for i, name in enumerate(MEDIAPIPE33)}
TORSO = [K["left_shoulder"], K["right_shoulder"], K["left_hip"], K["right_hip"]]


def _photos_dir() -> Path:
    folder = get_settings().photos_dir
    if not folder.is_dir():
        pytest.skip(f"shared photos not found at {folder} (set BODYSERVE_DATA_DIR)")
    return folder


def load_photo(name: str, grey: bool = False) -> np.ndarray:
    path = _photos_dir() / name
    if not path.is_file():
        pytest.skip(f"photo {name} missing from {path.parent}")
    with Image.open(path) as im:
        if grey:
            im = im.convert("L")
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def detector() -> PersonDetector:
    return PersonDetector()


def torso_centre(person: PersonKeypoints) -> np.ndarray:
    return person.body[TORSO, :2].mean(axis=0)


def check_format(people: list[PersonKeypoints], shape: tuple[int, ...]) -> None:
    h, w = shape[:2]
    scores = [p.score for p in people]
    assert scores == sorted(scores, reverse=True)
    for p in people:
        assert 0.0 < p.score <= 1.0
        assert p.body.shape == (33, 3) and p.body.dtype == np.float32
        assert np.all((p.body[:, 2] >= 0) & (p.body[:, 2] <= 1))
        x0, y0, x1, y1 = p.bbox
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        for hand in (p.left_hand, p.right_hand):
            assert hand is None or (hand.shape == (21, 3) and np.all(hand[:, 2] > 0))


def match_people(
    people: list[PersonKeypoints], expected: dict[str, tuple[float, float]], tolerance: float
) -> dict[str, int]:
    """Each expected torso centre to the index of a distinct detected person within
    ``tolerance`` pixels; fails naming whoever was not found."""
    centres = np.array([torso_centre(p) for p in people]).reshape(-1, 2)
    found: dict[str, int] = {}
    for name, where in expected.items():
        dist = np.linalg.norm(centres - np.asarray(where), axis=1)
        assert dist.size and dist.min() < tolerance, (
            f"{name} (torso near {where}) not found; torso centres: {centres.round().tolist()}"
        )
        found[name] = int(dist.argmin())
    assert len(set(found.values())) == len(found), f"two people matched one detection: {found}"
    return found


# --- single person ----------------------------------------------------------------------------


def test_t_pose_one_person_wrists_level_with_shoulders(detector: PersonDetector) -> None:
    image = load_photo("codait_yogait_t6.jpg")
    people = detector(image)
    check_format(people, image.shape)
    assert len(people) == 1
    body = people[0].body
    for name in ("left_shoulder", "right_shoulder", "left_wrist", "right_wrist"):
        assert body[K[name], 2] > 0.8, name
    ls, rs = body[K["left_shoulder"], :2], body[K["right_shoulder"], :2]
    lw, rw = body[K["left_wrist"], :2], body[K["right_wrist"], :2]
    shoulder_width = float(np.linalg.norm(ls - rs))
    # Facing the camera: the person's left is on the image's right.
    assert ls[0] > rs[0] and lw[0] > rw[0]
    # Arms stretched out sideways: wrists far out, and roughly level with the shoulders
    # (within a third of the shoulder width; the arms are raised a few degrees in the photo).
    assert lw[0] - ls[0] > 1.2 * shoulder_width and rs[0] - rw[0] > 1.2 * shoulder_width
    assert abs(lw[1] - ls[1]) < shoulder_width / 3 and abs(rw[1] - rs[1]) < shoulder_width / 3
    # The whole person is in the box: from above the eyes to below the toes, fingertip to
    # fingertip (the photo is 670 x 649 and he fills most of it).
    x0, y0, x1, y1 = people[0].bbox
    assert x1 - x0 > 0.8 * image.shape[1] and y1 - y0 > 0.8 * image.shape[0]


def test_arms_up_with_both_hands(detector: PersonDetector) -> None:
    image = load_photo("codait_yogait_test_y.jpg")  # 1080 x 720, "Y" with open hands up
    people = detector(image)
    check_format(people, image.shape)
    assert len(people) == 1
    person = people[0]
    body = person.body
    for name in ("left_shoulder", "right_shoulder", "left_wrist", "right_wrist", "nose"):
        assert body[K[name], 2] > 0.8, name
    shoulder_width = float(
        np.linalg.norm(body[K["left_shoulder"], :2] - body[K["right_shoulder"], :2])
    )
    # Both wrists well above the head.
    assert body[K["left_wrist"], 1] < body[K["nose"], 1] - shoulder_width
    assert body[K["right_wrist"], 1] < body[K["nose"], 1] - shoulder_width
    # Both open hands are visible: 21 points each, wrist on the body's wrist, fingers above it.
    for hand, wrist in ((person.left_hand, "left_wrist"), (person.right_hand, "right_wrist")):
        assert hand is not None, f"{wrist[:-6]} hand not found"
        assert np.linalg.norm(hand[0, :2] - body[K[wrist], :2]) < 0.25 * shoulder_width
        assert hand[12, 1] < hand[0, 1]  # middle fingertip above the wrist
        assert hand[0, 2] > 0.5
    # The left hand is on the person's left (image right for someone facing the camera).
    assert person.left_hand[:, 0].mean() > person.right_hand[:, 0].mean()  # type: ignore[index]


def test_greyscale_photos(detector: PersonDetector) -> None:
    image = load_photo("codait_yogait_test_y.jpg", grey=True)
    people = detector(image)
    assert len(people) == 1
    assert people[0].body[K["left_wrist"], 1] < people[0].body[K["nose"], 1]
    # The classic cameraman (greyscale PNG): one person, head and shoulders confident.
    cameraman = load_photo("skimage_camera_cameraman.png")
    people = detector(cameraman)
    check_format(people, cameraman.shape)
    assert len(people) == 1
    for name in ("nose", "left_shoulder", "right_shoulder"):
        assert people[0].body[K[name], 2] > 0.5, name


def test_large_image_gives_the_same_keypoints(detector: PersonDetector) -> None:
    """Detection runs on a downscaled copy, landmarks on full-resolution crops: a 3x upscaled
    photo (2010 x 1947) must give the same body, in its own pixels."""
    image = load_photo("codait_yogait_t6.jpg")
    big = cv2.resize(image, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
    small_people, big_people = detector(image), detector(big)
    assert len(small_people) == len(big_people) == 1
    confident = (small_people[0].body[:, 2] > 0.5) & (big_people[0].body[:, 2] > 0.5)
    assert confident.sum() >= 25
    diff = np.linalg.norm(small_people[0].body[:, :2] * 3 - big_people[0].body[:, :2], axis=1)
    height = big_people[0].bbox[3] - big_people[0].bbox[1]
    assert np.median(diff[confident]) < 0.01 * height
    assert diff[confident].max() < 0.03 * height


# --- several people ---------------------------------------------------------------------------


def test_group_of_skiers(detector: PersonDetector) -> None:
    """COCO 541055 (640 x 360), five skiers. "Clearly visible" here means the whole body is in
    view and not hidden behind someone else: the four standing in front (left to right: grey
    jacket, black jacket with goggles, green jacket with black helmet, light-blue jacket). The
    fifth, in a red helmet, stands behind the woman with goggles and shows only head and
    shoulders; he may or may not be found (BlazePose's landmark model is single-person, and its
    crop for him is mostly her)."""
    image = load_photo("coco_000000541055_skiers_group_multi.jpg")
    people = detector(image)
    check_format(people, image.shape)
    assert 4 <= len(people) <= 5
    expected = {
        "grey jacket": (180.0, 160.0),
        "goggles": (245.0, 168.0),
        "black helmet": (300.0, 160.0),
        "light-blue jacket": (420.0, 160.0),
    }
    found = match_people(people, expected, tolerance=25.0)
    for name, i in found.items():
        torso = people[i].body[TORSO, 2]
        assert torso.min() > 0.5, f"{name}: torso not confident {torso}"
        assert people[i].score > 0.5


def test_surf_lesson(detector: PersonDetector) -> None:
    """COCO 81988 (640 x 427): an instructor standing with arms spread, seen from behind, and
    four children on boards. "Clearly visible" means the body is in view and the head shows a
    face or the back of the head; the girl second from the left kneels face-down with her hair
    hanging over her face, which BlazePose's face-anchored person detector does not find (not
    even on tiles), so she is optional. The instructor is not occluded: his arms must be
    confident, and (seen from behind) his left arm is on the image's left."""
    image = load_photo("coco_000000081988_surf_lesson_multi.jpg")
    people = detector(image)
    check_format(people, image.shape)
    assert 4 <= len(people) <= 5
    expected = {
        "instructor": (400.0, 215.0),
        "girl on the left": (105.0, 340.0),
        "boy in the middle": (363.0, 343.0),
        "child on the right": (520.0, 345.0),
    }
    found = match_people(people, expected, tolerance=25.0)
    instructor = people[found["instructor"]].body
    for name in ("left_shoulder", "right_shoulder", "left_wrist", "right_wrist"):
        assert instructor[K[name], 2] > 0.8, name
    assert instructor[K["left_wrist"], 0] < instructor[K["right_wrist"], 0]
    assert instructor[K["left_wrist"], 0] < 330 and instructor[K["right_wrist"], 0] > 470


def test_tiles_find_people_too_small_for_the_full_frame(detector: PersonDetector) -> None:
    """The skiers are too small for one 224x224 pass over the whole photo, which alone finds
    two of them (weighted NMS merges neighbouring faces at that scale). The default
    ("auto") runs the tiles here because the full frame also shows weak candidates; on a
    single-person photo it does not, and forcing the tiles there finds nobody more."""
    image = load_photo("coco_000000541055_skiers_group_multi.jpg")
    whole_frame_only = PersonDetector(tiles="never", hands=False)
    assert len(whole_frame_only(image)) < 4 <= len(detector(image))
    single = load_photo("codait_yogait_test_y.jpg")
    always = PersonDetector(tiles="always", hands=False)
    people = always(single)
    assert len(people) == 1
    np.testing.assert_allclose(people[0].body, detector(single)[0].body, atol=0.5)


def test_max_people(detector: PersonDetector) -> None:
    image = load_photo("coco_000000541055_skiers_group_multi.jpg")
    everyone = detector(image)
    assert len(everyone) >= 3
    two = detector(image, max_people=2)
    assert len(two) == 2
    # The two most confident of everyone, unchanged.
    for kept, ref in zip(two, everyone[:2], strict=True):
        assert kept.score == pytest.approx(ref.score)
        np.testing.assert_allclose(kept.body, ref.body, atol=1e-3)
    assert len(detector(image, max_people=1)) == 1
    assert detector(image, max_people=0) == []


# --- against a human annotation ---------------------------------------------------------------


def test_coco_785_pck(detector: PersonDetector) -> None:
    """COCO val2017 image 785 (a skier, all 17 keypoints annotated): PCK@0.1 of the box's long
    side (35 px) must be at least 0.9; measured 1.0 (17/17), mean error about 8 px."""
    folder = get_settings().data_dir / "keypoints2d"
    ann_path = folder / "coco_val2017_000000000785_person_keypoints.json"
    if not ann_path.is_file():
        pytest.skip(f"COCO annotation not found at {ann_path}")
    annotation = json.loads(ann_path.read_text())["annotations"][0]
    truth = np.asarray(annotation["keypoints"], dtype=np.float64).reshape(17, 3)
    box_size = max(annotation["bbox"][2:])
    image = load_photo("coco_000000000785_skier_single.jpg")
    people = detector(image)
    check_format(people, image.shape)
    assert len(people) == 1
    predicted = convert(people[0].body, "mediapipe33", "coco17")
    labelled = truth[:, 2] > 0
    error = np.linalg.norm(predicted[:, :2] - truth[:, :2], axis=1)[labelled]
    pck = float(np.mean(error < 0.1 * box_size))
    assert pck >= 0.9, f"PCK@0.1 {pck:.2f}, errors {error.round(1).tolist()}"
    assert float(error.mean()) < 0.05 * box_size
    assert np.all(predicted[labelled, 2] > 0.3)  # every labelled keypoint with some confidence


# --- nobody -----------------------------------------------------------------------------------


def test_no_person(detector: PersonDetector) -> None:
    rng = np.random.default_rng(0)
    assert detector(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)) == []
    assert detector(np.full((720, 1080, 3), 128, dtype=np.uint8)) == []
    smooth = cv2.GaussianBlur(rng.integers(0, 256, (400, 600, 3), dtype=np.uint8), (0, 0), 8)
    assert detector(smooth) == []
    assert detector(np.zeros((1, 1, 3), dtype=np.uint8)) == []
    assert detector(np.zeros((5, 7, 3), dtype=np.uint8)) == []
