"""The Anny <-> SMPL-X-convention adapter (shared.bodies.smplx_convention) and SmplxBody.

Three kinds of checks:

- round trips Anny -> SMPL-X parameters -> Anny on random poses, several phenotypes and frames;
- known poses: Anny's rest A-pose, and a T-pose made by raising Anny's upper arms;
- a generated SMPL-X-format model file (no SMPL-X asset is needed: its skeleton is Anny's rest
  skeleton at the phenotype, T-posed; vertices sit on joints with one-hot skinning so posed
  vertices reveal joints and bone directions), loaded and posed by the real ``smplx`` package.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
import roma
import torch

from shared.bodies import smplx_convention as sc
from shared.bodies.base import ANNY_TO_CAMERA, ANNY_TO_SMPLX_WORLD

anny = pytest.importorskip("anny")

# Bounds, degrees. The maps are exact by construction for the poses they can represent, so the
# bounds only absorb float32 round-off (measured: ~0.05 degrees at worst).
ROUND_TRIP_DEG = 0.5
SMPLX_MODEL_DEG = 0.5
# Metres: posed joint positions of the generated SMPL-X model against Anny's.
POSITION_TOL = 1e-3

PHENOTYPES = torch.tensor(
    [
        [0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        [0.0, 1.0, 0.0, 1.0, 0.0, 1.0],
        [1.0, 0.2, 0.8, 0.1, 0.9, 0.3],
        [0.3, 0.7, 0.5, 0.6, 0.2, 0.8],
    ]
)
PARENTS = sc.ANNY_BONE_PARENTS
BONE = {name: i for i, name in enumerate(sc.ANNY_BONE_LABELS)}
CHILDREN = [[c for c, p in enumerate(PARENTS) if p == b] for b in range(len(PARENTS))]
GROUPS = {j: sc.SMPLX_TO_ANNY[name] for j, name in enumerate(sc.SMPLX_JOINT_NAMES)}
MAPPED = sorted({BONE[b] for group in GROUPS.values() for b in group} - {0})
LAST = {
    j: BONE[g[-1]]
    for j, g in GROUPS.items()
    if g and sc.SMPLX_JOINT_NAMES[j] not in sc.PARALLEL_GROUPS
}
# Bones that start a group (they carry its rotation; the rest of the group follows rigidly).
STARTS = {BONE[b] for j, g in GROUPS.items() for b in (g if j in (10, 11) else g[:1])}
# Twist pairs: (first, second) bones of the groups Anny splits in two along a limb.
TWIST_PAIRS = [
    (BONE[f"{n}01.{s}"], BONE[f"{n}02.{s}"])
    for n in ("upperarm", "lowerarm", "lowerleg")
    for s in "LR"
]
FRAMES = {
    "smplx_world": torch.tensor(ANNY_TO_SMPLX_WORLD, dtype=torch.float32),
    "camera": torch.tensor(ANNY_TO_CAMERA, dtype=torch.float32),
    "random": roma.random_rotmat(generator=torch.Generator().manual_seed(3)),
}
C = torch.tensor(ANNY_TO_SMPLX_WORLD, dtype=torch.float32)


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def model():
    return anny.Anny(skinning_method="lbs").to(torch.float32)


@pytest.fixture(scope="module")
def rest(model) -> torch.Tensor:
    empty = PHENOTYPES.new_zeros(len(PHENOTYPES), 0)
    coeffs = model._get_phenotype_blendshape_coefficients(PHENOTYPES, empty, empty)
    return model.get_rest_model(coeffs)["rest_bone_poses"]


def _rotations(gen: torch.Generator, shape: tuple[int, ...], max_deg: float) -> torch.Tensor:
    axis = torch.nn.functional.normalize(torch.randn(*shape, 3, generator=gen), dim=-1)
    angle = torch.rand(*shape, 1, generator=gen) * np.radians(max_deg)
    return roma.rotvec_to_rotmat(axis * angle)


def _axis_rotation(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    return roma.rotvec_to_rotmat(torch.nn.functional.normalize(axis, dim=-1) * angle[..., None])


def pose_anny(model, rest: torch.Tensor, local: torch.Tensor, root: torch.Tensor) -> torch.Tensor:
    """Anny bone poses from per-bone rotations ``local`` (B, 104, 3, 3) relative to the parent's,
    in rest-relative world axes (bone b's rest->posed rotation is T_b = T_parent L_b; the root's
    L is its world rotation) and the root head ``root`` (B, 3), through Anny's own kinematics
    (``get_pose_parameterization`` then ``get_bone_transforms``, "local-ref")."""
    heads = rest[..., :3, 3]
    transforms = [local[:, 0]]
    posed = [root]
    for b in range(1, len(PARENTS)):
        p = PARENTS[b]
        transforms.append(transforms[p] @ local[:, b])
        offset = (transforms[p] @ (heads[:, b] - heads[:, p])[..., None])[..., 0]
        posed.append(posed[p] + offset)
    world = torch.eye(4).repeat(rest.shape[0], len(PARENTS), 1, 1)
    world[..., :3, :3] = torch.stack(transforms, 1) @ rest[..., :3, :3]
    world[..., :3, 3] = torch.stack(posed, 1)
    deltas = model.get_pose_parameterization(
        {"rest_bone_poses": rest, "bone_poses": world}, "local-ref"
    )
    _, bone_poses = model.get_bone_transforms(deltas, rest)
    assert torch.allclose(bone_poses, world, atol=1e-4)
    return bone_poses


def random_local(gen: torch.Generator, rest: torch.Tensor, rigid: bool) -> torch.Tensor:
    """Random bounded per-bone rotations. ``rigid``: what SMPL-X can represent: one rotation per
    group (up to 50 degrees) on its first bone, the other group bones following rigidly, except
    a random twist (up to 60 degrees) of a limb's second bone about the first one's axis; the
    toes' distal phalanges (outside every group, carrying no mapped bone) get up to 15 degrees,
    which SMPL-X cannot carry and need not. (``pelvis.L/R`` and the metacarpals, also outside
    every group, follow rigidly: they place the hips and fingers.)"""
    batch = rest.shape[0]
    local = _rotations(gen, (batch, len(PARENTS)), 50.0 if rigid else 30.0)
    local[:, 0] = roma.random_rotmat(batch, generator=gen)
    if not rigid:
        return local
    eye = torch.eye(3)
    for b in range(1, len(PARENTS)):
        if b not in STARTS:
            free = sc.ANNY_BONE_LABELS[b].startswith("toe")  # a toe's 2nd or 3rd phalanx
            local[:, b] = _rotations(gen, (batch,), 15.0) if free else eye
    for s in "LR":  # the toes bend together (SMPL-X's foot joint)
        toes = [BONE[f"toe{t}-1.{s}"] for t in range(1, 6)]
        local[:, toes] = local[:, toes[:1]]
    heads = rest[..., :3, 3]
    for first, second in TWIST_PAIRS:
        angle = (torch.rand(batch, generator=gen) * 2 - 1) * np.radians(60.0)
        local[:, second] = _axis_rotation(heads[:, second] - heads[:, first], angle)
    return local


def directions(bone_poses: torch.Tensor, bones: list[int]) -> torch.Tensor:
    """(B, len(bones), 3) unit direction of each bone: head -> mean of its children's heads; a
    leaf: its y axis (Anny's bone axis, towards its tail)."""
    heads = bone_poses[..., :3, 3]
    out = []
    for b in bones:
        if CHILDREN[b]:
            out.append(heads[:, CHILDREN[b]].mean(1) - heads[:, b])
        else:
            out.append(bone_poses[:, b, :3, 1])
    return torch.nn.functional.normalize(torch.stack(out, 1), dim=-1)


def angle_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = torch.broadcast_tensors(a, b)
    a = torch.nn.functional.normalize(a, dim=-1)
    b = torch.nn.functional.normalize(b, dim=-1)
    cross = torch.linalg.cross(a, b).norm(dim=-1)
    return torch.rad2deg(torch.atan2(cross, (a * b).sum(-1)))


def round_trip(model, rest, bone_poses, frame, parameterization="local-ref"):
    params = sc.anny_to_smplx(bone_poses, rest, world_to_frame=frame)
    deltas = sc.smplx_to_anny(
        params,
        rest,
        reference_orientations=model.reference_bone_orientations,
        world_to_frame=frame,
        parameterization=parameterization,
    )
    _, back = model.get_bone_transforms(deltas, rest, pose_parameterization=parameterization)
    return params, back


def _print(label: str, errors: torch.Tensor) -> None:
    print(f"{label}: max {errors.max():.4f} deg, mean {errors.mean():.4f} deg")


# --------------------------------------------------------------------------- structure


def test_skeleton_tables_match_anny(model):
    assert tuple(model.bone_labels) == sc.ANNY_BONE_LABELS
    assert tuple(int(p) for p in model.bone_parents) == sc.ANNY_BONE_PARENTS
    assert len(sc.SMPLX_JOINT_NAMES) == len(sc.SMPLX_PARENTS) == 55
    smplx = pytest.importorskip("smplx")
    from smplx.joint_names import JOINT_NAMES

    assert tuple(JOINT_NAMES[:55]) == sc.SMPLX_JOINT_NAMES
    # Every mapped Anny bone belongs to exactly one group.
    bones = [b for g in sc.SMPLX_TO_ANNY.values() for b in g]
    assert len(bones) == len(set(bones))
    assert smplx is not None


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("frame_name", list(FRAMES))
@pytest.mark.parametrize("parameterization", ["local-ref", "local-bone"])
def test_round_trip_preserves_mapped_bone_directions(model, rest, frame_name, parameterization):
    gen = torch.Generator().manual_seed(7)
    frame = FRAMES[frame_name]
    for _ in range(2):
        local = random_local(gen, rest, rigid=True)
        root = torch.randn(rest.shape[0], 3, generator=gen)
        bone_poses = pose_anny(model, rest, local, root)
        _, back = round_trip(model, rest, bone_poses, frame, parameterization)
        errors = angle_deg(directions(bone_poses, MAPPED), directions(back, MAPPED))
        _print(f"round trip {frame_name} {parameterization}", errors)
        assert errors.max() < ROUND_TRIP_DEG
        root_error = roma.rotmat_geodesic_distance(bone_poses[:, 0, :3, :3], back[:, 0, :3, :3])
        assert torch.rad2deg(root_error).max() < ROUND_TRIP_DEG
        assert torch.allclose(bone_poses[:, 0, :3, 3], back[:, 0, :3, 3], atol=1e-5)


def test_round_trip_of_any_pose_keeps_each_groups_last_bone(model, rest):
    """Poses SMPL-X cannot represent (every bone rotated on its own): the distal bone of each
    group keeps its full orientation; intermediate bones are not expected to."""
    gen = torch.Generator().manual_seed(11)
    bone_poses = pose_anny(model, rest, random_local(gen, rest, rigid=False), torch.zeros(6, 3))
    _, back = round_trip(model, rest, bone_poses, FRAMES["camera"])
    last = sorted(LAST.values())
    rest_rot = rest[:, last, :3, :3].transpose(-1, -2)
    before = bone_poses[:, last, :3, :3] @ rest_rot
    after = back[:, last, :3, :3] @ rest_rot
    errors = torch.rad2deg(roma.rotmat_geodesic_distance(before, after))
    _print("non-representable pose, last bones", errors)
    assert errors.max() < ROUND_TRIP_DEG


def test_frames_are_consistent(model, rest):
    """The fitter's convention (bones already in the camera, identity frame) equals posing in
    Anny's world and asking for the camera frame; an upright body facing the camera has SMPL-X's
    camera-frame global_orient of 180 degrees about x."""
    gen = torch.Generator().manual_seed(5)
    local = random_local(gen, rest, rigid=True)
    local[:, 0] = torch.eye(3)
    bone_poses = pose_anny(model, rest, local, torch.zeros(6, 3))
    a2c = FRAMES["camera"]
    in_camera = bone_poses.clone()
    in_camera[..., :3, :] = a2c @ bone_poses[..., :3, :]
    a = sc.anny_to_smplx(bone_poses, rest, world_to_frame=a2c)
    b = sc.anny_to_smplx(in_camera, rest, world_to_frame=torch.eye(3))
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
    upright = roma.rotvec_to_rotmat(a["global_orient"])
    assert torch.allclose(
        upright, torch.diag(torch.tensor([1.0, -1.0, -1.0])).expand_as(upright), atol=1e-5
    )
    world = sc.anny_to_smplx(bone_poses, rest)  # SMPL-X world: identity orientation
    assert world["global_orient"].norm(dim=-1).max() < 1e-5
    assert torch.allclose(world["body_pose"], a["body_pose"], atol=1e-5)
    assert torch.equal(world["jaw_pose"], torch.zeros(6, 3))
    assert torch.equal(world["betas"], torch.zeros(6, 10))


# --------------------------------------------------------------------------- known poses


def _at_rest(model, rest) -> torch.Tensor:
    local = torch.eye(3).repeat(rest.shape[0], len(PARENTS), 1, 1)
    return pose_anny(model, rest, local, rest[:, 0, :3, 3])


def _raised_arms_local(rest) -> torch.Tensor:
    """Anny's upper arms raised to horizontal (smallest rotation), nothing else moved."""
    local = torch.eye(3).repeat(rest.shape[0], len(PARENTS), 1, 1)
    heads = rest[..., :3, 3]
    for s, x in (("L", 1.0), ("R", -1.0)):
        b = BONE[f"upperarm01.{s}"]
        arm = heads[:, BONE[f"lowerarm01.{s}"]] - heads[:, b]
        target = torch.tensor([x, 0.0, 0.0]).expand_as(arm)
        local[:, b] = sc._rmin(arm, target)
    return local


def _body(params, name: str) -> torch.Tensor:
    return params["body_pose"][:, sc.SMPLX_BODY_JOINTS.index(name)]


def test_a_pose_lowers_the_shoulders_about_z(model, rest):
    params = sc.anny_to_smplx(_at_rest(model, rest), rest)
    for side, z in (("left", -1.0), ("right", 1.0)):
        rotvec = _body(params, f"{side}_shoulder")
        angle = torch.rad2deg(rotvec.norm(dim=-1))
        axis = torch.nn.functional.normalize(rotvec, dim=-1)
        print(f"A-pose {side} shoulder: {angle.numpy().round(1)} deg, axis z {axis[:, 2]}")
        assert ((angle > 40) & (angle < 55)).all()
        assert (axis[:, 2] * z > 0.98).all()
    # Legs, spine, neck, head, collars, feet: Anny's rest is their SMPL-X rest.
    for name in (
        "left_hip",
        "right_knee",
        "spine1",
        "spine2",
        "spine3",
        "neck",
        "head",
        "left_collar",
        "right_ankle",
        "left_foot",
    ):
        assert _body(params, name).norm(dim=-1).max() < 1e-4, name
    # Anny's elbows are bent ~40-45 degrees forwards at rest: flexion about -y on the left.
    elbow = _body(params, "left_elbow")
    assert (torch.nn.functional.normalize(elbow, dim=-1)[:, 1] < -0.95).all()
    assert (torch.rad2deg(elbow.norm(dim=-1)) > 30).all()


def test_raised_arms_give_zero_shoulders(model, rest):
    raised = pose_anny(model, rest, _raised_arms_local(rest), rest[:, 0, :3, 3])
    params = sc.anny_to_smplx(raised, rest)
    a_pose = sc.anny_to_smplx(_at_rest(model, rest), rest)
    for side in ("left", "right"):
        angle = torch.rad2deg(_body(params, f"{side}_shoulder").norm(dim=-1))
        print(f"raised arms, {side} shoulder: max {angle.max():.5f} deg")
        assert angle.max() < 0.1
        same = _body(params, f"{side}_elbow") - _body(a_pose, f"{side}_elbow")
        assert same.abs().max() < 1e-4


def test_mapping_is_anatomical(rest):
    """The table's semantics, checked on geometry (SMPL-X frame: x left, y up, z forward): a
    mislabelled entry (left for right, ring for pinky, ...) puts a joint in the wrong place."""
    joints = sc.tpose_joints(rest)
    j = {name: joints[:, i] for i, name in enumerate(sc.SMPLX_JOINT_NAMES)}

    def x(n: str) -> torch.Tensor:
        return j[n][:, 0]

    def y(n: str) -> torch.Tensor:
        return j[n][:, 1]

    def z(n: str) -> torch.Tensor:
        return j[n][:, 2]

    for a, b in (
        ("pelvis", "spine2"),
        ("spine1", "spine2"),
        ("spine2", "spine3"),
        ("spine3", "neck"),
        ("neck", "head"),
        ("left_ankle", "left_knee"),
        ("left_knee", "left_hip"),
        ("right_knee", "right_hip"),
        ("spine2", "left_collar"),
        ("left_hip", "spine2"),
    ):
        assert (y(a) < y(b)).all(), (a, b)
    assert (y("pelvis") <= y("spine1") + 1e-6).all()
    for side, sign in (("left", 1.0), ("right", -1.0)):
        names = [n for n in sc.SMPLX_JOINT_NAMES if n.startswith(side)]
        assert all((x(n) * sign > 0.005).all() for n in names), side
        chain = ("collar", "shoulder", "elbow", "wrist", "thumb1", "index1", "index2", "index3")
        for a, b in itertools.pairwise(chain):
            assert (x(f"{side}_{a}") * sign < x(f"{side}_{b}") * sign).all(), (side, a, b)
        fingers = ("thumb3", "index1", "middle1", "ring1", "pinky1")  # front to back, palm down
        for a, b in itertools.pairwise(fingers):
            assert (z(f"{side}_{a}") > z(f"{side}_{b}")).all(), (side, a, b)
        assert (z(f"{side}_foot") > z(f"{side}_ankle") + 0.02).all()
        assert (y(f"{side}_foot") < y(f"{side}_knee")).all()
        assert (z(f"{side}_eye_smplhf") > z("head")).all()
        assert (y(f"{side}_eye_smplhf") > y("head")).all()


def test_canonical_t_pose_skeleton(rest):
    joints = sc.tpose_joints(rest)
    j = {name: joints[:, i] for i, name in enumerate(sc.SMPLX_JOINT_NAMES)}
    for side, x in (("left", 1.0), ("right", -1.0)):
        target = torch.tensor([x, 0.0, 0.0])
        for a, b in (("shoulder", "elbow"), ("elbow", "wrist"), ("wrist", "middle1")):
            assert angle_deg(j[f"{side}_{b}"] - j[f"{side}_{a}"], target).max() < 0.01
        # Palm down: the knuckles run from pinky to index forwards (+z), level.
        across = j[f"{side}_index1"] - j[f"{side}_pinky1"]
        assert (
            angle_deg(across * torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 0, 1.0])).max() < 45
        )
        assert angle_deg(across, across * torch.tensor([1.0, 0.0, 1.0])).max() < 0.01
        for finger in ("index", "middle", "ring", "pinky"):  # straight, in the palm plane
            one, two, three = (j[f"{side}_{finger}{k}"] for k in (1, 2, 3))
            assert angle_deg(two - one, three - two).max() < 0.01
            assert (two - one)[:, 1].abs().max() < 1e-5
    # Elsewhere the skeleton is Anny's rest, in SMPL-X's frame.
    heads = rest[..., :3, 3] @ C.T
    for name, bone in (
        ("left_hip", "upperleg01.L"),
        ("left_knee", "lowerleg01.L"),
        ("spine3", "spine01"),
        ("head", "head"),
        ("left_shoulder", "upperarm01.L"),
    ):
        assert torch.allclose(j[name], heads[:, BONE[bone]], atol=1e-6)


# --------------------------------------------------------------------------- a generated SMPL-X


def write_smplx_model(folder: Path, rest: torch.Tensor, seed: int = 0) -> tuple[Path, dict]:
    """A structurally valid SMPLX_NEUTRAL.npz whose T-pose skeleton is Anny's (one phenotype).

    Vertices ``j``, ``55 + j`` and ``110 + j`` sit on joint ``j`` and at 5 cm along two probe
    directions of its Anny bone (the bone's direction and its x axis, T-posed), all skinned to
    joint ``j`` alone; the other vertices repeat the joints. No pose correctives."""
    rng = np.random.default_rng(seed)
    n_v, n_j = 10475, 55
    joints = sc.tpose_joints(rest)[0]
    offsets = sc.rest_offsets(rest)[0]
    bones = [LAST.get(j, BONE["head"]) for j in range(n_j)]
    probe_dir = directions(rest[:1], bones)[0] @ C.T  # rest directions, SMPL-X frame
    feet = [10, 11]
    toes = [[BONE[b] for b in sc.SMPLX_TO_ANNY[sc.SMPLX_JOINT_NAMES[j]]] for j in feet]
    probe_dir[feet] = torch.stack([directions(rest[:1], t)[0].mean(0) for t in toes]) @ C.T
    probe_x = rest[0, bones, :3, 0] @ C.T
    probe_x[feet] = rest[0, [t[0] for t in toes], :3, 0] @ C.T
    t_dir = (offsets.transpose(-1, -2) @ probe_dir[..., None])[..., 0]
    t_x = (offsets.transpose(-1, -2) @ probe_x[..., None])[..., 0]
    base = torch.cat([joints, joints + 0.05 * t_dir, joints + 0.05 * t_x]).numpy()
    owner = np.arange(n_v) % n_j
    v_template = np.concatenate([base, joints.numpy()[owner[len(base) :]]]).astype(np.float64)
    weights = np.zeros((n_v, n_j))
    weights[np.arange(n_v), owner] = 1.0
    j_regressor = np.zeros((n_j, n_v))
    j_regressor[np.arange(n_j), np.arange(n_j)] = 1.0
    faces = np.stack([np.arange(n_v), (np.arange(n_v) + 1) % n_v, (np.arange(n_v) + 2) % n_v], 1)
    shapedirs = np.zeros((n_v, 3, 400), dtype=np.float32)
    shapedirs[:, :, :10] = rng.normal(0.0, 0.01, (n_v, 3, 10))
    shapedirs[:, :, 300:310] = rng.normal(0.0, 0.01, (n_v, 3, 10))
    kintree = np.stack([np.array(sc.SMPLX_PARENTS), np.arange(n_j)]).astype(np.int64)
    kintree[0, 0] = 4294967295  # as in the released files
    data = {
        "v_template": v_template,
        "f": faces.astype(np.uint32),
        "J_regressor": j_regressor,
        "kintree_table": kintree,
        "weights": weights,
        "shapedirs": shapedirs,
        "posedirs": np.zeros((n_v, 3, (n_j - 1) * 9), dtype=np.float32),
        "hands_componentsl": np.eye(45),
        "hands_componentsr": np.eye(45),
        "hands_meanl": rng.normal(0.0, 0.2, 45),  # nonzero, as in the real files
        "hands_meanr": rng.normal(0.0, 0.2, 45),
        "lmk_faces_idx": rng.integers(0, len(faces), 51).astype(np.int64),
        "lmk_bary_coords": rng.dirichlet(np.ones(3), 51),
        "dynamic_lmk_faces_idx": rng.integers(0, len(faces), (79, 17)).astype(np.int64),
        "dynamic_lmk_bary_coords": rng.dirichlet(np.ones(3), (79, 17)),
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "SMPLX_NEUTRAL.npz"
    np.savez_compressed(path, **data)
    return path, {"bones": bones, "toes": toes}


def _anchors_posed(bone_poses: torch.Tensor) -> torch.Tensor:
    """(B, 55, 3) where each SMPL-X joint sits on the posed Anny skeleton (NaN for the jaw)."""
    heads = bone_poses[..., :3, 3]
    first = [BONE[g[0]] if g else 0 for g in GROUPS.values()]
    anchors = heads[:, first].clone()
    for j in (10, 11):
        anchors[:, j] = heads[:, [BONE[b] for b in GROUPS[j]]].mean(1)
    anchors[:, 22] = float("nan")
    return anchors


@pytest.fixture(scope="module", params=[0, 4])
def generated(request, tmp_path_factory, model, rest):
    smplx = pytest.importorskip("smplx")
    person = request.param
    folder = tmp_path_factory.mktemp(f"smplx_{person}")
    person_rest = rest[person : person + 1]
    _, info = write_smplx_model(folder / "smplx", person_rest)
    layer = smplx.create(
        str(folder), model_type="smplx", use_pca=False, ext="npz", flat_hand_mean=True
    )
    return folder, layer, person_rest, info


def _poses(model, rest1: torch.Tensor) -> torch.Tensor:
    """A-pose, raised arms, three random SMPL-X-representable poses (one rest, batch 5)."""
    gen = torch.Generator().manual_seed(19)
    rest = rest1.expand(5, -1, -1, -1)
    local = random_local(gen, rest, rigid=True)
    local[:2] = torch.eye(3)
    local[1] = _raised_arms_local(rest1)[0]
    return pose_anny(model, rest, local, torch.randn(5, 3, generator=gen))


@pytest.mark.parametrize("frame_name", ["smplx_world", "camera"])
def test_generated_smplx_model_reproduces_anny(model, generated, frame_name):
    from shared.bodies.smplx_model import SmplxBody

    folder, layer, rest1, info = generated
    frame = FRAMES[frame_name]
    bone_poses = _poses(model, rest1)
    rest = rest1.expand(len(bone_poses), -1, -1, -1)
    body = SmplxBody(folder)
    j0 = body.pelvis_rest()
    params = sc.anny_to_smplx(bone_poses, rest, world_to_frame=frame, j0=j0)
    tensors = {k: v for k, v in params.items() if k != "pelvis"}
    with torch.no_grad():
        out = layer(**tensors, return_verts=True)
    vertices, joints = out.vertices, out.joints[:, :55]
    ours = body(params)
    assert torch.allclose(ours.vertices, vertices) and ours.joints.shape == (5, 55, 3)

    # The pelvis lands where Anny's root is; every joint where its Anny anchor is.
    pelvis = bone_poses[:, 0, :3, 3] @ frame.T
    assert torch.allclose(joints[:, 0], pelvis, atol=1e-5)
    anchors = _anchors_posed(bone_poses) @ frame.T
    keep = [j for j in range(55) if j != 22]
    gap = (joints[:, keep] - anchors[:, keep]).norm(dim=-1)
    print(f"generated SMPL-X {frame_name}: joint position error max {gap.max() * 1000:.3f} mm")
    assert gap.max() < POSITION_TOL

    # Each mapped joint's bone direction and x axis, from its probe vertices, match Anny's.
    bones = info["bones"]
    expected_dir = directions(bone_poses, bones) @ frame.T
    expected_x = bone_poses[:, bones, :3, 0] @ frame.T
    for j, toes in zip((10, 11), info["toes"], strict=True):
        expected_dir[:, j] = directions(bone_poses, toes).mean(1) @ frame.T
        expected_x[:, j] = bone_poses[:, toes[0], :3, 0] @ frame.T
    got_dir = vertices[:, 55:110] - vertices[:, :55]
    got_x = vertices[:, 110:165] - vertices[:, :55]
    errors = torch.cat(
        [angle_deg(got_dir, expected_dir)[:, keep], angle_deg(got_x, expected_x)[:, keep]], 1
    )
    _print(f"generated SMPL-X {frame_name}, bone directions and axes", errors)
    assert errors.max() < SMPLX_MODEL_DEG

    # Joint-to-child segments (what SMPL-X draws) point like Anny's.
    child = [j for j in keep[1:] if sc.SMPLX_PARENTS[j] != 22]
    parent = [sc.SMPLX_PARENTS[j] for j in child]
    segment_errors = angle_deg(
        joints[:, child] - joints[:, parent], anchors[:, child] - anchors[:, parent]
    )
    nonzero = (anchors[:, child] - anchors[:, parent]).norm(dim=-1) > 1e-4
    _print(f"generated SMPL-X {frame_name}, segments", segment_errors[nonzero])
    assert segment_errors[nonzero].max() < SMPLX_MODEL_DEG


def test_generated_smplx_model_sign_convention(generated):
    """In SMPL-X, lowering the left arm from the T-pose is a negative rotation about +z (the
    right arm: positive), and the adapter's A-pose shoulders carry those signs."""
    _, layer, _, _ = generated
    body_pose = torch.zeros(2, 21, 3)
    body_pose[0, 15, 2] = -0.8  # left shoulder
    body_pose[1, 16, 2] = 0.8  # right shoulder
    with torch.no_grad():
        rest = layer(body_pose=torch.zeros(1, 63)).joints
        posed = layer(
            body_pose=body_pose.reshape(2, 63),
            global_orient=torch.zeros(2, 3),
            betas=torch.zeros(2, 10),
            expression=torch.zeros(2, 10),
            left_hand_pose=torch.zeros(2, 45),
            right_hand_pose=torch.zeros(2, 45),
            jaw_pose=torch.zeros(2, 3),
            leye_pose=torch.zeros(2, 3),
            reye_pose=torch.zeros(2, 3),
        ).joints
    for row, (shoulder, elbow) in enumerate(((16, 18), (17, 19))):
        assert posed[row, elbow, 1] < rest[0, elbow, 1] - 0.05  # the elbow went down
        assert posed[row, elbow, 1] < posed[row, shoulder, 1]


def test_pelvis_rest_follows_betas(generated):
    from shared.bodies.smplx_model import SmplxBody

    folder, layer, _, _ = generated
    body = SmplxBody(folder / "smplx" / "SMPLX_NEUTRAL.npz")
    betas = torch.randn(3, 10, generator=torch.Generator().manual_seed(2))
    j0 = body.pelvis_rest(betas)
    with torch.no_grad():
        out = body({"betas": betas, "global_orient": torch.randn(3, 3), "transl": torch.ones(3, 3)})
    assert j0.shape == (3, 3)
    assert not torch.allclose(j0, body.pelvis_rest().expand(3, 3))
    assert torch.allclose(out.joints[:, 0], j0 + 1.0, atol=1e-5)  # rotates about J0
    params = {"transl": sc.smplx_transl(torch.zeros(3, 3), j0), "betas": betas}
    assert body(params).joints[:, 0].abs().max() < 1e-5
    assert layer is not None


# --------------------------------------------------------------------------- SmplxBody errors


def test_smplx_body_needs_a_model_file(tmp_path):
    from shared.bodies.smplx_model import SmplxBody

    pytest.importorskip("smplx")
    with pytest.raises(FileNotFoundError, match="SMPLX_NEUTRAL"):
        SmplxBody(tmp_path)


def test_smplx_body_needs_the_smplx_package(tmp_path, monkeypatch):
    from shared.bodies.smplx_model import SmplxBody

    monkeypatch.setitem(sys.modules, "smplx", None)
    with pytest.raises(ImportError, match=r"bodyserve\[smplx\]"):
        SmplxBody(tmp_path)
