"""Mocap ingestion (shared.mocap): BVH parsing and FK, units, retargeting to SMPL-X-convention
body poses on Anny's skeleton, cleaning, resampling, BVH export, the pose dataset, AMASS files.

Fixtures: three short excerpts of real CMU conversions in tests/fixtures/mocap (one per skeleton
family); the retargeting error bounds are measured on one whole real clip per family from the
shared data folder (skipped locally, failing in CI, when it is absent).
"""

from __future__ import annotations

import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import roma
import torch

from shared.bodies.skeleton import BODY_JOINT_NAMES, BodySkeleton
from shared.mocap import amass as amass_module
from shared.mocap.amass import AmassError, read_amass
from shared.mocap.bvh import BvhError, detect_unit, parse_bvh, read_bvh, write_bvh
from shared.mocap.dataset import (
    CleaningConfig,
    PoseDataset,
    body_joints,
    build_dataset,
    capture_fps,
    glitches,
    resample,
    subject_of,
    synthetic_frames,
)
from shared.mocap.retarget import (
    CC_BASE,
    CGSPEED,
    CMU_ASF,
    BodyMotion,
    Retargeter,
    RetargetError,
    SkeletonFamily,
    detect_family,
    segment_errors,
)
from shared.settings import get_settings
from tests.conftest import missing

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mocap"
CGSPEED_FIXTURE = FIXTURES / "cgspeed_02_01_head.bvh"
ICLONE_FIXTURE = FIXTURES / "iclone_007_03_head.bvh"
ASF_FIXTURE = FIXTURES / "cmuasf_16_01_head.bvh"

# One whole real clip per family (paths under the shared mocap folder).
REAL_CLIPS = {
    "cgspeed": "cmu_daz__Przestr-motion-capture/02/02_01.bvh",  # walk
    "cmu-asf": "cmu_daz__Przestr-motion-capture/16/16_01.bvh",  # jump
    "iclone-cc": "cmu_iclone-retarget__DragonForgedTheArtist-IClone-CMU-Mocap/007/007_03.bvh",
}
# Degrees. Limb segments are reproduced exactly by construction (measured < 1e-5); the trunk
# (spine1's driving joint to the neck's) differs by the rigs' different rest spine shapes
# (measured mean 3.1 cgspeed, 6.5 CMU-ASF, 5.2 iClone; std over the clip <= 0.54).
LIMB_ERROR_DEG = 1.0
SPINE_ERROR_DEG = 10.0


@pytest.fixture(scope="module")
def skeleton() -> BodySkeleton:
    return BodySkeleton.for_phenotype().to(torch.float64)


@pytest.fixture(scope="module")
def retargeter(skeleton: BodySkeleton) -> Retargeter:
    return Retargeter(skeleton)


@pytest.fixture(scope="module")
def mocap_dir() -> Path:
    path = get_settings().data_dir / "mocap"
    if not path.is_dir():
        missing(f"the CMU mocap is not at {path} (set BODYSERVE_DATA_DIR)")
    return path


def _angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


# --------------------------------------------------------------------------- parsing


def test_parses_the_three_fixture_families() -> None:
    cgspeed = read_bvh(CGSPEED_FIXTURE, unit=None)
    assert cgspeed.skeleton.joint_count == 43
    assert cgspeed.frame_count == 36
    assert math.isclose(cgspeed.frame_time, 0.00833333)
    assert cgspeed.skeleton.channels[0] == (
        "Xposition", "Yposition", "Zposition", "Zrotation", "Yrotation", "Xrotation"
    )  # fmt: skip
    abdomen = cgspeed.skeleton.index("abdomen")
    assert cgspeed.skeleton.channels[abdomen] == ("Zrotation", "Xrotation", "Yrotation")
    assert cgspeed.skeleton.parents[abdomen] == 0
    np.testing.assert_allclose(cgspeed.skeleton.offsets[abdomen], [0, 20.6881, -0.73152])
    # End Sites: one per leaf (eyes, finger tips, feet).
    foot = cgspeed.skeleton.index("lFoot")
    assert cgspeed.skeleton.end_sites[foot].shape == (1, 3)
    assert cgspeed.values.shape == (36, cgspeed.skeleton.channel_count)
    assert cgspeed.channel("hip", "Xposition")[0] == pytest.approx(57.4159)

    iclone = read_bvh(ICLONE_FIXTURE, unit=None)
    assert iclone.skeleton.joint_count == 100
    assert iclone.frame_count == 20
    assert iclone.skeleton.names[0] == "CC_Base_Hip"
    assert iclone.skeleton.channels[1] == ("Zrotation", "Yrotation", "Xrotation")

    asf = read_bvh(ASF_FIXTURE, unit=None)
    assert asf.skeleton.joint_count == 31
    assert asf.frame_count == 24
    assert asf.fps == pytest.approx(30.0, rel=1e-4)  # as stamped (captured at 120, see below)

    assert detect_family(cgspeed.skeleton) is CGSPEED
    assert detect_family(iclone.skeleton) is CC_BASE
    assert detect_family(asf.skeleton) is CMU_ASF


def test_units_are_found_from_the_skeleton_size() -> None:
    assert detect_unit(read_bvh(CGSPEED_FIXTURE, unit=None).skeleton) == "cm"
    assert detect_unit(read_bvh(ICLONE_FIXTURE, unit=None).skeleton) == "cm"
    assert detect_unit(read_bvh(ASF_FIXTURE, unit=None).skeleton) == "cmu"
    for path in (CGSPEED_FIXTURE, ICLONE_FIXTURE, ASF_FIXTURE):
        motion = read_bvh(path)
        _, positions = motion.forward_kinematics()
        height = positions[-1, :, 1].max() - positions[-1, :, 1].min()
        assert 1.3 < height < 2.0, (path.name, height)  # a standing adult, in metres


SIX_CHANNEL_BVH = """HIERARCHY
ROOT root
{
  OFFSET 0 0 0
  CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation
  JOINT arm
  {
    OFFSET 1 0 0
    CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation
    JOINT hand
    {
      OFFSET 0 2 0
      CHANNELS 3 Xrotation Yrotation Zrotation
      End Site
      {
        OFFSET 0 0 3
      }
    }
  }
}
MOTION
Frames: 2
Frame Time: 0.5
0 0 0 0 0 0  0 0 0 0 0 0  0 0 0
10 0 0 90 0 0  0 0 5 0 90 0  0 0 0
"""


def test_fk_by_hand_with_six_channel_joint() -> None:
    motion = parse_bvh(SIX_CHANNEL_BVH)
    assert motion.skeleton.channels[1][:3] == ("Xposition", "Yposition", "Zposition")
    rotations, positions = motion.forward_kinematics()
    np.testing.assert_allclose(positions[0], [[0, 0, 0], [1, 0, 0], [1, 2, 0]], atol=1e-12)
    # Frame 1: root at x=10 turned 90 deg about Z; the arm's position channels add (0,0,5) to its
    # OFFSET, then Rx(90) turns the hand's (0,2,0) to (0,0,2), seen through the root's Rz(90).
    rz = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]])
    arm = np.array([10, 0, 0]) + rz @ np.array([1, 0, 5])
    hand = arm + rz @ np.array([0, 0, 2])
    np.testing.assert_allclose(positions[1, 1], arm, atol=1e-9)
    np.testing.assert_allclose(positions[1, 2], hand, atol=1e-9)
    np.testing.assert_allclose(
        motion.end_site_positions("hand")[1, 0], hand + rz @ [0, -3, 0], atol=1e-9
    )
    # Channel order matters: ZXY is Rz @ Rx @ Ry.
    np.testing.assert_allclose(
        rotations[1, 1], rz @ np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]]), atol=1e-12
    )


def test_fk_positions_agree_with_rotations_on_a_real_rig() -> None:
    motion = read_bvh(ICLONE_FIXTURE)
    rotations, positions = motion.forward_kinematics()
    parents = np.array(motion.skeleton.parents[1:])
    step = positions[:, 1:] - positions[:, parents]
    expected = np.einsum("tjab,jb->tja", rotations[:, parents], motion.skeleton.offsets[1:])
    np.testing.assert_allclose(step, expected, atol=1e-9)
    assert np.allclose(np.linalg.det(rotations), 1.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "HIERARCHY\nROOT a\n{\n OFFSET 0 0 0\n CHANNELS 3 Xrotation Yrotation Zrotation\n}\n",
            "no MOTION",
        ),
        (SIX_CHANNEL_BVH.rsplit("\n", 2)[0] + " 1 2\n", "not a multiple"),
        (
            SIX_CHANNEL_BVH.replace(
                "Zrotation Xrotation Yrotation\n  JOINT arm",
                "Wrotation Xrotation Yrotation\n  JOINT arm",
            ),
            "unknown channel",
        ),
        (SIX_CHANNEL_BVH.replace("Frames: 2", "Frames: 9"), "holds 2"),
    ],
)
def test_bad_files_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(BvhError, match=message):
        parse_bvh(text, source="bad.bvh")


# --------------------------------------------------------------------------- retargeting


@pytest.mark.parametrize("family", sorted(REAL_CLIPS))
def test_retargeted_joints_follow_the_capture(
    family: str, mocap_dir: Path, retargeter: Retargeter, skeleton: BodySkeleton
) -> None:
    """Main correctness check: pose Anny's SMPL-X-convention skeleton with the retargeted
    parameters (its own FK) and compare its segments with the BVH's, frame by frame."""
    motion = read_bvh(mocap_dir / REAL_CLIPS[family])
    retargeted = retargeter(motion)
    assert retargeted.kind == family
    errors = segment_errors(motion, retargeted, skeleton)
    for name, error in errors.items():
        bound = SPINE_ERROR_DEG if name == "spine1->neck" else LIMB_ERROR_DEG
        assert error.mean() < bound, (family, name, float(error.mean()))
    # The trunk's offset is the rigs' rest shape: constant over the clip (measured std < 0.6).
    assert errors["spine1->neck"].std() < 1.5
    fps = 120.0  # all three clips' true rate is 120 (iClone: 60; the bounds below hold for both)
    start, _ = synthetic_frames(retargeted, fps if family != "iclone-cc" else 60.0)
    clean = retargeted.frames(slice(start, None))
    joints = body_joints(clean, skeleton)
    index = {name: i for i, name in enumerate(BODY_JOINT_NAMES)}

    # Knees bend forward only: a hinge about the body's lateral (x) axis, positive.
    for side in ("left", "right"):
        knee = clean.body_pose[:, index[f"{side}_knee"] - 1]
        angle = np.linalg.norm(knee, axis=1)
        bent = angle > math.radians(20)
        assert bent.any()
        assert (knee[bent, 0] > 0).all(), family
        assert (np.abs(knee[bent, 0]) / angle[bent]).mean() > 0.9, family
    # Elbows: one hinge axis per side throughout (twist is consistent), bending forward.
    for side, sign in (("left", -1.0), ("right", 1.0)):
        elbow = clean.body_pose[:, index[f"{side}_elbow"] - 1]
        angle = np.linalg.norm(elbow, axis=1)
        bent = angle > math.radians(20)
        axes = elbow[bent] / angle[bent, None]
        assert np.linalg.norm(axes.mean(0)) > 0.95, (family, side)
        assert (np.sign(axes[:, 1]) == sign).all(), (family, side)
    # Up is +Y: head above pelvis above ankles, every frame.
    assert (joints[:, index["head"], 1] > joints[:, 0, 1]).all()
    assert (joints[:, 0, 1] > joints[:, index["left_ankle"], 1]).all()
    # Feet under the body: ankles within 50 cm of the pelvis horizontally (measured <= 0.37).
    for side in ("left", "right"):
        horizontal = joints[:, index[f"{side}_ankle"], [0, 2]] - joints[:, 0, [0, 2]]
        assert np.linalg.norm(horizontal, axis=1).max() < 0.5, family
    # The body faces +Z when global_orient is undone: left hip at +X, toes forward.
    pelvis_rotation = roma.rotvec_to_rotmat(torch.from_numpy(clean.global_orient)).numpy()
    local = np.einsum("tba,tjb->tja", pelvis_rotation, joints - joints[:, :1])
    assert (local[:, index["left_hip"], 0] > 0).all()
    toes = local[:, index["left_foot"]] - local[:, index["left_ankle"]]
    assert np.median(toes[:, 2]) > 0


def test_retargeted_poses_drive_anny_itself(retargeter: Retargeter) -> None:
    """The parameters pose the real Anny model (smplx_to_anny + Anny's own bone transforms) with
    its limbs along the BVH's, and Anny -> SMPL-X reads the same parameters back."""
    from shared.bodies import smplx_convention as sc
    from shared.bodies.anny_model import get_anny

    motion = read_bvh(CGSPEED_FIXTURE)
    retargeted = retargeter(motion).frames(slice(5, None))
    body = get_anny()
    rest = body.rest_bone_poses(body.blendshape_coefficients(torch.full((1, 6), 0.5)))
    params = {
        "global_orient": torch.tensor(retargeted.global_orient, dtype=torch.float32),
        "body_pose": torch.tensor(retargeted.body_pose, dtype=torch.float32),
        "transl": torch.tensor(retargeted.pelvis, dtype=torch.float32) - sc._default_j0(rest),
    }
    deltas = sc.smplx_to_anny(
        params, rest, body.model.reference_bone_orientations, parameterization="local-bone"
    )
    frames = deltas.shape[0]
    _, poses = body.model.get_bone_transforms(
        deltas, rest.expand(frames, -1, -1, -1), pose_parameterization="local-bone"
    )
    back = sc.anny_to_smplx(poses, rest)
    assert (back["body_pose"] - params["body_pose"]).abs().max() < 1e-4
    heads = poses[..., :3, 3] @ torch.tensor(sc.ANNY_TO_SMPLX_WORLD, dtype=torch.float32).T
    heads = heads.double().numpy()
    _, positions = motion.frames(slice(5, None)).forward_kinematics()
    bone = {name: i for i, name in enumerate(sc.ANNY_BONE_LABELS)}
    for s, side in (("l", "L"), ("r", "R")):
        for bvh_a, bvh_b, anny_a, anny_b in (
            ("Thigh", "Shin", "upperleg01", "lowerleg01"),
            ("Shin", "Foot", "lowerleg01", "foot"),
            ("Shldr", "ForeArm", "upperarm01", "lowerarm01"),
            ("ForeArm", "Hand", "lowerarm01", "wrist"),
        ):
            index = motion.skeleton.index
            expected = positions[:, index(s + bvh_b)] - positions[:, index(s + bvh_a)]
            got = heads[:, bone[f"{anny_b}.{side}"]] - heads[:, bone[f"{anny_a}.{side}"]]
            assert _angle_deg(expected, got).max() < 0.5, (side, bvh_a)


def test_walk_arms_hang_at_the_sides(
    mocap_dir: Path, retargeter: Retargeter, skeleton: BodySkeleton
) -> None:
    for family in ("cgspeed", "iclone-cc"):
        retargeted = retargeter(read_bvh(mocap_dir / REAL_CLIPS[family]))
        joints = body_joints(retargeted.frames(slice(10, None)), skeleton)
        index = {name: i for i, name in enumerate(BODY_JOINT_NAMES)}
        for side in ("left", "right"):
            wrist = joints[:, index[f"{side}_wrist"]]
            shoulder = joints[:, index[f"{side}_shoulder"]]
            hanging = _angle_deg(wrist - shoulder, np.array([0.0, -1.0, 0.0]))
            assert np.median(hanging) < 30, (family, side)


def test_reference_must_be_a_tpose(retargeter: Retargeter) -> None:
    motion = read_bvh(ICLONE_FIXTURE)
    # The iClone rig's OFFSET rest is no posture at all: claiming it is the T-pose must fail.
    rest_is_tpose = SkeletonFamily(
        name="iclone-without-reference",
        segments=CC_BASE.segments,
        hips=CC_BASE.hips,
        halfway=CC_BASE.halfway,
        reference=None,
    )
    with pytest.raises(RetargetError, match="not a standing T-pose"):
        retargeter(motion, rest_is_tpose)
    renamed = parse_bvh(SIX_CHANNEL_BVH)
    with pytest.raises(RetargetError, match="unknown skeleton"):
        detect_family(renamed.skeleton)


# --------------------------------------------------------------------------- cleaning


def test_synthetic_tpose_and_blend_frames_are_dropped(retargeter: Retargeter) -> None:
    cgspeed = retargeter(read_bvh(CGSPEED_FIXTURE))
    # Frame 0: the T-pose; frames 1-4: the converter's blend into the motion (~3000 deg/s).
    assert synthetic_frames(cgspeed, 120.0) == (5, 36)
    iclone = retargeter(read_bvh(ICLONE_FIXTURE))
    assert synthetic_frames(iclone, 60.0) == (1, 20)  # the prepended T-pose only
    asf = retargeter(read_bvh(ASF_FIXTURE))
    assert synthetic_frames(asf, 120.0) == (0, 24)  # no synthetic frames


def test_glitches_cut_flips_and_jumps(retargeter: Retargeter, skeleton: BodySkeleton) -> None:
    motion = retargeter(read_bvh(CGSPEED_FIXTURE)).frames(slice(5, None))
    assert not glitches(motion, skeleton, 120.0).any()
    broken_pose = motion.body_pose.copy()
    knee = BODY_JOINT_NAMES.index("left_knee") - 1
    broken_pose[12, knee] = [math.pi * 0.95, 0, 0]  # the knee flips for one frame
    broken_pelvis = motion.pelvis.copy()
    broken_pelvis[20:] += [0.0, 0.0, 0.5]  # the body teleports 50 cm
    broken = BodyMotion(motion.global_orient, broken_pose, broken_pelvis, motion.fps, "test")
    flagged = np.nonzero(glitches(broken, skeleton, 120.0))[0]
    np.testing.assert_array_equal(flagged, [11, 12, 19])


def test_true_capture_rate_from_gravity(
    mocap_dir: Path, retargeter: Retargeter, skeleton: BodySkeleton
) -> None:
    # Subject 16's jump says 30 fps; CMU lists 120; the flight phase falls at g only at 120.
    jump = retargeter(read_bvh(mocap_dir / REAL_CLIPS["cmu-asf"]))
    assert jump.fps == pytest.approx(30.0, rel=1e-3)
    fps, why = capture_fps(jump, skeleton, jump.fps, 120.0)
    assert fps == 120.0, why
    # The iClone conversion of subject 2's jump really is 60 fps (CMU's 120 halved).
    iclone_jump = retargeter(
        read_bvh(
            mocap_dir
            / "cmu_iclone-retarget__DragonForgedTheArtist-IClone-CMU-Mocap"
            / "002/002_04.bvh"
        )
    )
    fps, why = capture_fps(iclone_jump, skeleton, iclone_jump.fps, 120.0)
    assert fps == pytest.approx(60.0, rel=1e-3), why
    # A walk has no flight phase: the stamped rate stays.
    walk = retargeter(read_bvh(mocap_dir / REAL_CLIPS["iclone-cc"]))
    assert capture_fps(walk, skeleton, walk.fps, 120.0)[0] == walk.fps


def test_resampling_counts_frames_and_slerps(retargeter: Retargeter) -> None:
    frames, source_fps, fps = 37, 120.0, 30.0
    angle = np.linspace(0.0, 1.2, frames)  # rad, linear in time about a fixed axis
    axis = np.array([0.6, 0.0, 0.8])
    body_pose = np.zeros((frames, 21, 3))
    body_pose[:, 17] = angle[:, None] * axis
    pelvis = np.stack([angle, 2 * angle, np.zeros(frames)], 1)
    motion = BodyMotion(body_pose[:, 0] * 0, body_pose, pelvis, source_fps, "test")
    out, k = resample(motion, source_fps, 3, frames, fps)
    # Frames 3..36 span 33/120 s: grid points k/30 s from frame 0 inside it: k = 1..9.
    np.testing.assert_array_equal(k, np.arange(1, 10))
    assert out.frame_count == 9
    expected = k * source_fps / fps * 1.2 / (frames - 1)
    np.testing.assert_allclose(out.body_pose[:, 17], expected[:, None] * axis, atol=1e-9)
    np.testing.assert_allclose(out.pelvis[:, 0], expected, atol=1e-12)
    # Non-integer ratio (real iClone files: 59.999 fps): the last grid point stays inside.
    out, k = resample(motion, 59.999, 0, frames, fps)
    assert k[-1] / fps <= (frames - 1) / 59.999


# --------------------------------------------------------------------------- BVH export


def test_bvh_round_trip_gives_the_same_joints(
    tmp_path: Path, retargeter: Retargeter, skeleton: BodySkeleton
) -> None:
    motion = retargeter(read_bvh(CGSPEED_FIXTURE))
    rng = np.random.default_rng(0)
    # Real poses plus large random ones (gimbal-lock-prone angles included).
    body_pose = np.concatenate([motion.body_pose, rng.normal(0, 1.0, (8, 21, 3))])
    body_pose[-1, 3] = [0.0, math.pi / 2, 0.0]
    orient = np.concatenate([motion.global_orient, rng.normal(0, 1.0, (8, 3))])
    pelvis = np.concatenate([motion.pelvis, rng.normal(0, 1.0, (8, 3))])
    path = write_bvh(
        tmp_path / "out" / "motion.bvh",
        orient,
        body_pose,
        pelvis,
        fps=30.0,
        rest_joints=skeleton.rest_joints,
    )
    assert detect_unit(read_bvh(path, unit=None).skeleton) == "cm"
    back = read_bvh(path)
    assert set(back.skeleton.names) == set(BODY_JOINT_NAMES)
    assert back.fps == pytest.approx(30.0)
    _, positions = back.forward_kinematics()
    order = [back.skeleton.index(name) for name in BODY_JOINT_NAMES]
    expected = body_joints(BodyMotion(orient, body_pose, pelvis, 30.0, "test"), skeleton)
    assert np.abs(positions[:, order] - expected).max() < 1e-3  # metres


def test_write_bvh_rejects_bad_shapes(tmp_path: Path, skeleton: BodySkeleton) -> None:
    with pytest.raises(ValueError, match="body_pose"):
        write_bvh(
            tmp_path / "x.bvh",
            np.zeros((2, 3)),
            np.zeros((2, 20, 3)),
            np.zeros((2, 3)),
            30.0,
            rest_joints=skeleton.rest_joints,
        )


# --------------------------------------------------------------------------- dataset


def _fixture_folder(tmp_path: Path) -> Path:
    """The three excerpts laid out as subjects 2, 7 and 16 (16 is a default valid subject)."""
    folder = tmp_path / "mocap"
    for source, target in (
        (CGSPEED_FIXTURE, "cgspeed/02/02_01.bvh"),
        (ICLONE_FIXTURE, "iclone/007/007_03.bvh"),
        (ASF_FIXTURE, "cgspeed/16/16_01.bvh"),
    ):
        (folder / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, folder / target)
    return folder


def test_dataset_build_save_load_and_split(tmp_path: Path, skeleton: BodySkeleton) -> None:
    folder = _fixture_folder(tmp_path)
    (folder / "broken.bvh").write_text("HIERARCHY\nROOT x\n{\n")
    seen: list[str] = []
    with pytest.warns(UserWarning, match=r"skipping .*broken\.bvh: BvhError"):
        dataset = build_dataset(
            folder,
            fps=30.0,
            skeleton=skeleton,
            cleaning=CleaningConfig(min_run_s=0.1),
            progress=lambda done, total, name: seen.append(name),
        )
    assert len(seen) == 4
    assert sorted(dataset.clips) == [
        "cgspeed/02/02_01.bvh", "cgspeed/16/16_01.bvh", "iclone/007/007_03.bvh"
    ]  # fmt: skip
    assert dataset.body_pose.dtype == np.float32 and dataset.body_pose.shape[1:] == (21, 3)
    assert dataset.frame.dtype == np.int32 and dataset.clip.dtype == np.int32
    assert set(dataset.subject) == {"2", "7", "16"}
    assert set(dataset.subject[dataset.split == "valid"]) == {"16"}
    assert not set(dataset.subject[dataset.split == "valid"]) & set(
        dataset.subject[dataset.split == "train"]
    )
    files = dataset.metadata["files"]
    assert files["cgspeed/02/02_01.bvh"]["dropped_start"] == 5
    assert files["iclone/007/007_03.bvh"]["dropped_start"] == 1
    assert "broken.bvh" in dataset.metadata["skipped"]
    assert dataset.metadata["files_per_family"] == {"cgspeed": 1, "cmu-asf": 1, "iclone-cc": 1}
    # cgspeed: frames 5..35 at 120 fps -> grid k/30 s for k = 2..8.
    rows = dataset.clip == list(dataset.clips).index("cgspeed/02/02_01.bvh")
    np.testing.assert_array_equal(dataset.frame[rows], np.arange(2, 9))

    path = dataset.save(tmp_path / "poses.npz")
    with np.load(path, allow_pickle=False) as raw:  # plain arrays, no pickled objects
        assert raw["subject"].dtype.kind == "U"
    loaded = PoseDataset.load(path)
    for name in (
        "body_pose",
        "global_orient",
        "pelvis",
        "subject",
        "clip",
        "frame",
        "split",
        "clips",
    ):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(dataset, name))
    assert loaded.fps == 30.0
    assert loaded.metadata == dataset.metadata
    assert len(loaded.metadata["inputs_sha256"]) == 64

    valid = loaded.subset("valid")
    assert set(valid.split) == {"valid"} and len(valid) == int((loaded.split == "valid").sum())
    sequences = list(loaded.sequences())
    assert sum(s.frame_count for s in sequences) == len(loaded)
    for sequence in sequences:
        np.testing.assert_array_equal(np.diff(sequence["frame"]), 1)  # contiguous
        rows = (
            (loaded.clip == list(loaded.clips).index(sequence.clip))
            & (loaded.frame >= sequence.start_frame)
            & (loaded.frame < sequence.start_frame + sequence.frame_count)
        )
        np.testing.assert_array_equal(loaded.body_pose[rows], sequence["body_pose"])
        window = {key: value[:2] for key, value in sequence.items()}  # windows slice every array
        assert set(window) == {"global_orient", "body_pose", "pelvis", "frame"}


def test_dataset_errors(tmp_path: Path, skeleton: BodySkeleton) -> None:
    with pytest.raises(FileNotFoundError):
        build_dataset(tmp_path / "nowhere", skeleton=skeleton)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no \.bvh or \.npz"):
        build_dataset(tmp_path / "empty", skeleton=skeleton)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.bvh").write_text("not a bvh")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="nothing usable"):
            build_dataset(tmp_path / "bad", skeleton=skeleton)
    with pytest.raises(ValueError, match="not a PoseDataset"):
        np.savez(tmp_path / "other.npz", x=np.zeros(2))
        PoseDataset.load(tmp_path / "other.npz")


def test_subjects_from_names() -> None:
    assert subject_of("a/002/002_05.bvh") == "2"
    assert subject_of("a/16/16_01.bvh") == "16"
    assert subject_of("dance/anna/take3.bvh") == "anna"
    assert subject_of("x/02_01.bvh", {"subject": "16"}) == "16"


def test_mirror_is_the_reflected_motion(retargeter: Retargeter, skeleton: BodySkeleton) -> None:
    motion = retargeter(read_bvh(CGSPEED_FIXTURE))
    count = motion.frame_count
    dataset = PoseDataset(
        body_pose=motion.body_pose.astype(np.float32),
        global_orient=motion.global_orient.astype(np.float32),
        pelvis=motion.pelvis.astype(np.float32),
        subject=np.full(count, "2"),
        clip=np.zeros(count, np.int32),
        frame=np.arange(count, dtype=np.int32),
        split=np.full(count, "train"),
        clips=np.array(["x.bvh"]),
        fps=120.0,
    )
    mirrored = dataset.mirrored()
    assert mirrored.metadata["mirrored"] is True

    def joints(d: PoseDataset) -> np.ndarray:
        m = BodyMotion(
            d.global_orient.astype(np.float64),
            d.body_pose.astype(np.float64),
            d.pelvis.astype(np.float64),
            120.0,
            "test",
        )
        return body_joints(m, skeleton)

    original, flipped = joints(dataset), joints(mirrored)
    swap = [
        BODY_JOINT_NAMES.index(
            n.replace("left", "right") if "left" in n else n.replace("right", "left")
        )
        for n in BODY_JOINT_NAMES
    ]
    reflected = original[:, swap] * np.array([-1.0, 1.0, 1.0])
    # Anny's neutral skeleton is symmetric (measured 0.0 mm); float32 poses.
    assert np.abs(flipped - reflected).max() < 1e-4
    np.testing.assert_allclose(mirrored.mirrored().body_pose, dataset.body_pose)


# --------------------------------------------------------------------------- AMASS


def test_amass_npz_to_smplx_world(tmp_path: Path) -> None:
    frames = 5
    rng = np.random.default_rng(1)
    poses = rng.normal(0, 0.3, (frames, 156))
    poses[:, :3] = [math.pi / 2, 0.0, 0.0]  # AMASS standing upright in its Z-up world
    trans = np.stack([np.linspace(0, 1, frames), np.zeros(frames), np.full(frames, 0.9)], 1)
    np.savez(
        tmp_path / "smplh.npz", poses=poses, trans=trans, mocap_framerate=120.0, betas=np.zeros(16)
    )
    motion = read_amass(tmp_path / "smplh.npz")
    assert motion.kind == "amass-smplh" and motion.fps == 120.0
    np.testing.assert_allclose(motion.global_orient, 0.0, atol=1e-9)  # upright, facing +Z
    np.testing.assert_allclose(motion.body_pose, poses[:, 3:66].reshape(frames, 21, 3))
    j0 = np.array(amass_module.DEFAULT_J0["smplh"])
    # Z-up (x, y, z) -> Y-up (x, z, -y).
    expected = np.stack([trans[:, 0] + j0[0], trans[:, 2] + j0[2], -(trans[:, 1] + j0[1])], 1)
    np.testing.assert_allclose(motion.pelvis, expected, atol=1e-12)

    # Separate arrays, SMPL-X style rate key, an explicit J0.
    np.savez(
        tmp_path / "smplx.npz",
        root_orient=poses[:, :3],
        pose_body=poses[:, 3:66],
        trans=trans,
        mocap_frame_rate=np.array(60.0),
    )
    motion = read_amass(tmp_path / "smplx.npz", j0=(0.0, 0.0, 0.0))
    assert motion.fps == 60.0
    np.testing.assert_allclose(motion.pelvis[:, 1], trans[:, 2])

    np.savez(tmp_path / "shape.npz", betas=np.zeros(16))
    with pytest.raises(AmassError, match="no motion"):
        read_amass(tmp_path / "shape.npz")
    np.savez(tmp_path / "norate.npz", poses=poses, trans=trans)
    with pytest.raises(AmassError, match="frame rate"):
        read_amass(tmp_path / "norate.npz")


def test_amass_files_join_the_dataset(tmp_path: Path, skeleton: BodySkeleton) -> None:
    folder = tmp_path / "amass" / "subjectA"
    folder.mkdir(parents=True)
    frames = 60
    poses = np.zeros((frames, 72))
    poses[:, 0] = math.pi / 2
    trans = np.zeros((frames, 3))
    np.savez(folder / "walk_poses.npz", poses=poses, trans=trans, mocap_framerate=60.0)
    dataset = build_dataset(tmp_path / "amass", fps=30.0, skeleton=skeleton)
    assert len(dataset) == 30
    assert set(dataset.subject) == {"subjectA"}
    assert dataset.metadata["files_per_family"] == {"amass-smpl": 1}
