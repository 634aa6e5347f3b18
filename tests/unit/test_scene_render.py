"""The synthetic-scene renderer on Anny's real mesh: exact labels, looks, backgrounds, seeds."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trimesh
from PIL import Image

from shared.bodies.anny_model import get_anny
from shared.render.anny_scene import (
    anny_scene_body,
    place_in_view,
    pose_anny,
    random_body_pose,
    random_phenotype,
    render_random_scene,
)
from shared.render.appearance import (
    SKIN_TONES,
    anny_regions,
    sample_anny_material,
    sample_lighting,
    skin_tone,
)
from shared.render.backgrounds import (
    BackgroundError,
    BackgroundFolder,
    Backgrounds,
    procedural_background,
)
from shared.render.label_check import cast_rays, check_labels, project
from shared.render.parts import BODY_PARTS, PART_IDS, anny_vertex_parts, face_parts
from shared.render.renderer import render_layers
from shared.render.scene import (
    Lighting,
    Material,
    SceneBody,
    SceneImage,
    camera_from_fov,
    render_scene,
)

SIZE = 256


@pytest.fixture(scope="module")
def coco_regressor() -> np.ndarray:
    """Anny's COCO-17 + feet vertex regressor, (23, V): keypoints inside the body."""
    import anny

    return anny.KeypointsRegressor.coco(get_anny().model).regression_weights.numpy()


def _yaw(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], np.float32)


def _random_bodies(seed: int, count: int, size: int = SIZE) -> tuple[list[np.ndarray], tuple]:
    """``count`` random Anny bodies (pose within limits, phenotype, heading), side by side and
    staggered in depth so that they overlap, framed by a camera of random field of view."""
    rng = np.random.default_rng(seed)
    poses = random_body_pose(rng, count, spread=0.4)
    phenotypes = random_phenotype(rng, count)
    turns = np.stack([_yaw(rng.uniform(-math.pi, math.pi)) for _ in range(count)])
    camera = camera_from_fov(size, size, float(rng.uniform(35, 70)))
    posed = pose_anny(poses, phenotypes, rotation=turns)
    bodies = []
    for i, vertices in enumerate(posed):
        shift = place_in_view(vertices, camera, height=size, width=size, fill=0.75)
        shift += np.array([0.35 * (i - (count - 1) / 2), 0.0, 0.8 * i], np.float32)
        bodies.append(vertices + shift)
    return bodies, camera


# --- the part table ---------------------------------------------------------------------------


def test_every_part_has_vertices_and_sides_are_the_persons_own() -> None:
    parts = anny_vertex_parts()
    regions = anny_regions()
    counts = np.bincount(parts, minlength=len(BODY_PARTS) + 1)
    assert counts[0] == 0  # every vertex has a part
    assert (counts[1:] > 100).all()
    x = regions.coords[:, 0]  # Anny's +X is the body's own left
    for name in BODY_PARTS:
        if name.startswith("left_"):
            twin = PART_IDS["right_" + name.removeprefix("left_")]
            assert counts[PART_IDS[name]] == counts[twin]
            assert (x[parts == PART_IDS[name]] > 0).all()
            assert (x[parts == twin] < 0).all()
    # Head above torso above legs above feet (rest pose, Z up).
    z = regions.coords[:, 2]
    heights = [np.median(z[parts == PART_IDS[n]]) for n in ("head", "torso", "left_upper_leg")]
    assert heights == sorted(heights, reverse=True)
    assert np.median(z[parts == PART_IDS["left_foot"]]) < heights[-1]


def test_a_triangle_takes_its_majority_part() -> None:
    faces = np.array([[0, 1, 2], [1, 2, 3], [2, 3, 4]])
    vertex_parts = np.array([1, 1, 2, 2, 3])
    np.testing.assert_array_equal(face_parts(faces, vertex_parts), [1, 2, 2])


# --- posing ---------------------------------------------------------------------------------


def test_random_poses_stay_within_the_limits() -> None:
    from shared.bodies.limits import limit_violations

    rng = np.random.default_rng(0)
    for spread in (0.3, 1.0):
        poses = random_body_pose(rng, 40, spread=spread)
        assert poses.shape == (40, 21, 3)
        assert not limit_violations(poses).any()
    # Different draws, and the arms lowered from the T-pose by default.
    assert np.abs(poses[0] - poses[1]).max() > 0.1
    with pytest.raises(ValueError, match="spread"):
        random_body_pose(rng, 1, spread=1.5)


def test_pose_anny_is_anny_posed_by_the_adapter() -> None:
    import roma
    import torch

    from shared.bodies.base import ANNY_TO_CAMERA, ANNY_TO_SMPLX_WORLD
    from shared.bodies.smplx_convention import posed_body_joints, smplx_to_anny, tpose_joints

    rng = np.random.default_rng(1)
    poses, phenotypes = random_body_pose(rng, 2), random_phenotype(rng, 2)
    turn = np.stack([_yaw(0.7), _yaw(-2.0)])
    where = np.array([[0.1, -0.2, 3.0], [-0.4, 0.0, 5.0]], np.float32)
    vertices = pose_anny(poses, phenotypes, rotation=turn, translation=where)

    body = get_anny()
    with torch.no_grad():
        pheno = torch.as_tensor(phenotypes)
        rest = body.rest_bone_poses(body.blendshape_coefficients(pheno))
        j0 = tpose_joints(rest)[:, 0]
        deltas = smplx_to_anny(
            {
                "global_orient": torch.zeros(2, 3),
                "body_pose": torch.as_tensor(poses),
                "transl": -j0,
            },
            rest,
            reference_orientations=body.model.reference_bone_orientations,
            world_to_frame=ANNY_TO_SMPLX_WORLD,
            j0=j0,
            parameterization="local-bone",
        )
        out = body.forward(roma.rotmat_to_rotvec(deltas[..., :3, :3]), deltas[:, 0, :3, 3], pheno)
    upright = out.vertices.numpy() @ ANNY_TO_CAMERA.T  # facing the camera, pelvis at 0
    pelvis = posed_body_joints(out.bone_poses)[:, 0].numpy()
    np.testing.assert_allclose(pelvis, 0.0, atol=1e-5)
    expected = np.einsum("bij,bvj->bvi", turn, upright) + where[:, None]
    np.testing.assert_allclose(vertices, expected, atol=1e-5)
    # Upright: the head above (smaller y) the feet, in the camera frame.
    parts = anny_vertex_parts()
    for v in vertices:
        assert v[parts == PART_IDS["head"], 1].mean() < v[parts == PART_IDS["left_foot"], 1].mean()


# --- exact labels -----------------------------------------------------------------------------


def test_scene_labels_agree_with_the_overlay_renderer() -> None:
    bodies, camera = _random_bodies(seed=3, count=2)
    faces = get_anny().faces
    rng = np.random.default_rng(0)
    scene = render_scene([anny_scene_body(v, rng) for v in bodies], camera, height=SIZE, width=SIZE)
    layers = render_layers([(v, faces) for v in bodies], camera, height=SIZE, width=SIZE)
    # Two GL paths (different programs, framebuffers and window offsets; Anny's back faces
    # culled in one), the same labels; depth to float32 rounding (a few microns).
    np.testing.assert_array_equal(scene.mask, layers.mask)
    np.testing.assert_allclose(scene.depth, layers.depth, rtol=0, atol=2e-5)
    assert (scene.mask == 0).sum() > 1000 and (scene.mask == 1).sum() > 1000
    # Skipping back faces changes nothing on a closed mesh.
    rng = np.random.default_rng(0)
    bodies_both_sides = [replace(anny_scene_body(v, rng), closed=False) for v in bodies]
    both_sides = render_scene(bodies_both_sides, camera, height=SIZE, width=SIZE)
    for culled, full in zip(scene, both_sides, strict=True):
        np.testing.assert_array_equal(culled, full)


@pytest.mark.parametrize(("seed", "count", "size"), [(0, 1, 256), (1, 1, 512), (2, 2, 256)])
def test_random_anny_scenes_have_exact_labels(
    seed: int, count: int, size: int, coco_regressor: np.ndarray
) -> None:
    bodies, camera = _random_bodies(seed, count, size)
    faces = get_anny().faces
    vertex_parts = anny_vertex_parts()
    rng = np.random.default_rng(seed)
    scene = render_random_scene(rng, bodies, camera, height=size, width=size)
    meshes = [(v, faces) for v in bodies]

    # Against the independent CPU ray cast: every unambiguous pixel has the same body,
    # triangle and part, and the same depth within 0.1 mm.
    report = check_labels(
        meshes,
        camera,
        scene,
        face_parts=[face_parts(faces, vertex_parts)] * count,
        keypoints=[coco_regressor @ v for v in bodies],
    )
    assert report.ok, report.problems()
    assert report.pixels_compared > 0.04 * size * size * count
    assert report.pixels_ambiguous < 0.03 * report.pixels_compared
    assert report.depth_compared > 0.85 * report.pixels_compared
    assert report.depth_max_error_m < 2e-5  # float32 interpolation: microns in practice
    assert report.keypoints_checked >= 20 * count
    assert report.keypoints_subpixel == 0

    two_rings = _two_rings(faces, len(vertex_parts))
    # The brief's checks, spelled out on the vertices: visible ones (nothing in front of them
    # along their ray, by the ray cast) land on their body's mask; the depth there is the
    # mesh's; the part there is the vertex's own away from part borders.
    checked = 0
    for index, vertices in enumerate(bodies):
        uv = project(vertices, camera)
        hits = cast_rays(meshes, camera, uv)
        visible = hits.nearest_any >= vertices[:, 2] - 1e-4
        col, row = np.floor(uv[visible] + 0.5).astype(int).T
        inside = (row >= 0) & (row < size) & (col >= 0) & (col < size)
        assert inside.all()  # framed: the whole body is in view
        # (The second body stands behind the first, partly hidden.)
        least = 1.0 if index == 0 else 0.2
        assert visible.sum() > 0.3 * least * len(vertices)
        on_body = scene.mask[row, col] == index
        # Off the body at its nearest pixel centre: a vertex on the silhouette (fingers and
        # toes are thinner than a pixel at 256): the mesh does not cover that centre either.
        assert on_body.mean() > 0.75
        centres = np.stack([col, row], 1)[~on_body].astype(float)
        there = cast_rays(meshes, camera, centres)
        assert ((there.instance != index) | there.mask_ambiguous).all()
        # Depth at the vertex's pixel: the surface through that pixel centre, which is within
        # the surface's slope over half a pixel of the vertex's own depth.
        pixel_depth = scene.depth[row, col][on_body]
        vertex_depth = vertices[visible, 2][on_body]
        assert np.median(np.abs(pixel_depth - vertex_depth)) < 0.003
        reference = cast_rays(meshes, camera, np.stack([col, row], 1)[on_body].astype(float))
        exact = ~reference.depth_ambiguous & (reference.instance == index)
        np.testing.assert_allclose(pixel_depth[exact], reference.depth[exact], atol=2e-5)
        # Parts: a vertex at least three triangle rings from any part border shows its own
        # part wherever its pixel shows the surface around it (a triangle within two rings of
        # it: not, next to an occluding edge, another surface behind).
        border = _part_border_vertices(faces, vertex_parts, rings=3)
        seen_face = scene.face[row, col][on_body]
        vertex_ids = np.flatnonzero(visible)[on_body]
        around = np.zeros(len(vertex_ids), bool)
        for corner in range(3):
            neighbours = two_rings[vertex_ids, faces[seen_face, corner]]
            around |= np.asarray(neighbours).ravel()
        interior = ~border[vertex_ids] & around
        got = scene.parts[row, col][on_body]
        assert interior.sum() > 1000 * least
        np.testing.assert_array_equal(got[interior], vertex_parts[vertex_ids][interior])
        checked += int(on_body.sum())
    assert checked > 3000


def _part_border_vertices(faces: np.ndarray, vertex_parts: np.ndarray, rings: int) -> np.ndarray:
    """Vertices within ``rings`` triangle rings of a triangle whose corners differ in part."""
    per_face = vertex_parts[faces]
    mixed = (per_face != per_face[:, :1]).any(axis=1)
    border = np.zeros(len(vertex_parts), bool)
    border[faces[mixed].ravel()] = True
    for _ in range(rings):
        grown = border[faces].any(axis=1)
        border[faces[grown].ravel()] = True
    return border


def _two_rings(faces: np.ndarray, count: int) -> Any:
    """Sparse (V, V) boolean: vertices at most two edges apart."""
    from scipy.sparse import coo_matrix, identity

    edges = coo_matrix(
        (np.ones(faces.size), (faces.ravel(), np.roll(faces, 1, axis=1).ravel())),
        shape=(count, count),
    ).tocsr()
    one = ((edges + edges.T + identity(count)) > 0).astype(np.int32)
    return ((one @ one) > 0).tocsr()


def test_the_check_catches_wrong_labels() -> None:
    bodies, camera = _random_bodies(seed=4, count=1)
    faces = get_anny().faces
    fparts = [face_parts(faces, anny_vertex_parts())]
    scene = render_random_scene(np.random.default_rng(4), bodies, camera, height=SIZE, width=SIZE)
    meshes = [(bodies[0], faces)]
    assert check_labels(meshes, camera, scene, face_parts=fparts).ok

    shifted = scene._replace(mask=np.roll(scene.mask, 1, axis=1))
    assert check_labels(meshes, camera, shifted).mask_errors > 50
    deeper = scene._replace(depth=np.where(scene.mask >= 0, scene.depth + 0.001, 0.0))
    assert check_labels(meshes, camera, deeper).depth_errors > 1000
    relabelled = scene._replace(parts=np.where(scene.parts == 1, 2, scene.parts).astype(np.uint8))
    assert check_labels(meshes, camera, relabelled, face_parts=fparts).part_errors > 100
    # Half a pixel off in the camera (OpenGL's pixel-centre convention instead of OpenCV's).
    fx, fy, cx, cy = camera
    report = check_labels(meshes, (fx, fy, cx + 0.5, cy + 0.5), scene)
    assert not report.ok and report.mask_errors > 20


def test_edges_are_antialiased_and_the_rest_is_untouched() -> None:
    bodies, camera = _random_bodies(seed=5, count=1)
    vertices = bodies[0]
    body = SceneBody(
        vertices, get_anny().faces, anny_vertex_parts(), Material.plain(len(vertices), (1, 1, 1))
    )
    bright = Lighting(
        ambient=np.ones(3, np.float32),
        directions=np.array([[0.0, 0.0, -1.0]], np.float32),
        colors=np.zeros((1, 3), np.float32),
    )
    background = np.zeros((SIZE, SIZE, 3), np.uint8)
    scene = render_scene(
        [body], camera, height=SIZE, width=SIZE, lighting=bright, background=background
    )
    inside = scene.mask == 0
    grown = inside.copy()
    grown[1:] |= inside[:-1]
    grown[:-1] |= inside[1:]
    grown[:, 1:] |= grown[:, :-1].copy()
    grown[:, :-1] |= grown[:, 1:].copy()
    # Far from the body: the background exactly. Edge pixels: partial coverage (grey).
    assert (scene.rgb[~grown] == 0).all()
    grey = (scene.rgb[..., 0] > 0) & (scene.rgb[..., 0] < 255)
    assert grey.sum() > 100
    assert (grey & ~grown).sum() == 0
    # Fully covered pixels are white (ambient 1, albedo 1).
    interior = inside & ~grey
    assert interior.sum() > 0.8 * inside.sum()
    assert (scene.rgb[interior] == 255).all()
    # Without supersampling, no grey at all: every pixel is in or out.
    hard = render_scene(
        [body],
        camera,
        height=SIZE,
        width=SIZE,
        lighting=bright,
        background=background,
        supersample=1,
    )
    assert set(np.unique(hard.rgb)) <= {0, 255}
    np.testing.assert_array_equal(hard.rgb[..., 0] == 255, hard.mask == 0)


# --- appearance and seeds ---------------------------------------------------------------------


def test_a_seed_reproduces_the_image_bit_for_bit() -> None:
    bodies, camera = _random_bodies(seed=6, count=2)

    def render(seed: int) -> SceneImage:
        return render_random_scene(
            np.random.default_rng(seed), bodies, camera, height=SIZE, width=SIZE
        )

    first, again, other = render(11), render(11), render(12)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    # Another seed: another look and background, the same geometry and labels.
    assert (first.rgb != other.rgb).any(axis=2).mean() > 0.5
    np.testing.assert_array_equal(first.mask, other.mask)
    np.testing.assert_array_equal(first.parts, other.parts)


def test_different_seeds_give_different_skin_clothes_and_backgrounds() -> None:
    regions = anny_regions()
    hand = regions.parts == PART_IDS["left_hand"]
    torso_front = (regions.parts == PART_IDS["torso"]) & (regions.coords[:, 2] > 0.35)
    skins, tops, backgrounds = [], [], []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        material = sample_anny_material(rng)
        skins.append(np.median(material.base[hand], axis=0))
        tops.append(np.median(material.base[torso_front], axis=0))
        backgrounds.append(procedural_background(rng, 64, 64))
    skins_arr, tops_arr = np.array(skins), np.array(tops)
    # Twelve people: twelve skin tones and (nearly) as many shirts, from light to dark skin.
    assert len(np.unique(skins_arr.round(3), axis=0)) == 12
    assert len(np.unique(tops_arr.round(3), axis=0)) >= 10
    luminance = skins_arr @ np.array([0.2126, 0.7152, 0.0722])
    assert luminance.max() > 4 * luminance.min()
    for a in range(len(backgrounds)):
        for b in range(a):
            assert (backgrounds[a] != backgrounds[b]).any()


def test_skin_tones_follow_the_monk_scale() -> None:
    ends = [skin_tone(0.0), skin_tone(float(len(SKIN_TONES) - 1))]
    light, dark = (float(c @ np.array([0.2126, 0.7152, 0.0722])) for c in ends)
    assert light > 0.75 and dark < 0.03  # MST-01 is near white, MST-10 near black
    steps = [skin_tone(float(p)).sum() for p in np.linspace(0, 9, 19)]
    assert steps == sorted(steps, reverse=True)  # darker along the scale
    with pytest.raises(ValueError, match="skin tone position"):
        skin_tone(9.5)


def test_lighting_draws_one_to_three_lights_within_the_ranges() -> None:
    counts = set()
    for seed in range(40):
        lighting = sample_lighting(np.random.default_rng(seed))
        counts.add(len(lighting.directions))
        np.testing.assert_allclose(np.linalg.norm(lighting.directions, axis=1), 1.0, rtol=1e-5)
        assert lighting.colors.max() <= 1.7 + 1e-6 and lighting.colors.min() >= 0
        assert 0.0 < lighting.ambient.max() <= 0.45 + 1e-6
        # The key light comes from the camera's side (negative z: towards the camera).
        assert lighting.directions[0, 2] < 0
    assert counts == {1, 2, 3}


# --- backgrounds ------------------------------------------------------------------------------


def _write_image(path: Path, color: tuple[int, int, int], size: tuple[int, int]) -> None:
    Image.new("RGB", size, color).save(path)


def test_background_folder_images_are_used(tmp_path: Path) -> None:
    _write_image(tmp_path / "red.png", (200, 30, 30), (320, 200))
    (tmp_path / "more").mkdir()
    _write_image(tmp_path / "more" / "blue.jpg", (20, 40, 210), (90, 160))
    (tmp_path / "notes.txt").write_text("not an image")
    folder = BackgroundFolder(tmp_path)
    assert sorted(p.name for p in folder.paths) == ["blue.jpg", "red.png"]

    seen = set()
    for seed in range(12):
        image = Backgrounds(folder).sample(np.random.default_rng(seed), 96, 128)
        assert image.shape == (96, 128, 3) and image.dtype == np.uint8
        colour = tuple(int(c) for c in np.median(image.reshape(-1, 3), axis=0))
        # A solid image stays solid through crop and resize (JPEG: within its rounding).
        assert np.abs(image.astype(int) - colour).max() <= 3
        seen.add("red" if colour[0] > 150 else "blue")
    assert seen == {"red", "blue"}

    # In a scene: the body over the folder's image, which shows everywhere else.
    bodies, camera = _random_bodies(seed=7, count=1)
    red_only = tmp_path / "red_only"
    red_only.mkdir()
    _write_image(red_only / "red.png", (200, 30, 30), (320, 200))
    scene = render_random_scene(
        np.random.default_rng(0),
        bodies,
        camera,
        height=SIZE,
        width=SIZE,
        backgrounds=Backgrounds(red_only),
    )
    far = scene.mask < 0
    for axis in (0, 1):
        for shift in (-1, 1):
            far &= np.roll(scene.mask, shift, axis=axis) < 0
    assert (scene.rgb[far] == (200, 30, 30)).all()
    assert (scene.rgb[scene.mask == 0] != (200, 30, 30)).any(axis=1).mean() > 0.9


def test_background_folder_crops_keep_the_aspect_ratio(tmp_path: Path) -> None:
    # A horizontal ramp: a crop of the target's aspect ratio, resized, stays a monotonic ramp.
    ramp = np.tile(np.linspace(0, 255, 400).astype(np.uint8)[None, :, None], (100, 1, 3))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    folder = BackgroundFolder(tmp_path)
    for seed in range(6):
        image = folder.sample(np.random.default_rng(seed), 50, 50)
        row = image[25, :, 0].astype(int)
        steps = np.diff(row)
        assert (steps >= -1).all() or (steps <= 1).all()  # maybe mirrored
        # A square crop of a 4:1 image spans at most a quarter of the ramp.
        assert abs(row[-1] - row[0]) <= 255 / 4 + 3


def test_unusable_background_folders_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(BackgroundError, match="does not exist"):
        BackgroundFolder(tmp_path / "missing")
    a_file = tmp_path / "file.png"
    _write_image(a_file, (1, 2, 3), (8, 8))
    with pytest.raises(BackgroundError, match="is not a folder"):
        BackgroundFolder(a_file)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no images here")
    with pytest.raises(BackgroundError, match="holds no images"):
        Backgrounds(empty)
    broken = tmp_path / "broken"
    broken.mkdir()
    _write_image(broken / "good.png", (9, 9, 9), (8, 8))
    (broken / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(BackgroundError, match=r"1 of the 2 images .* bad\.jpg"):
        BackgroundFolder(broken)
    if os.geteuid() != 0:  # root reads everything
        locked = tmp_path / "locked"
        locked.mkdir()
        _write_image(locked / "x.png", (1, 1, 1), (4, 4))
        locked.chmod(0)
        try:
            with pytest.raises(BackgroundError, match="cannot be read"):
                BackgroundFolder(locked)
        finally:
            locked.chmod(0o755)


def test_procedural_backgrounds_vary_and_repeat_with_the_seed() -> None:
    for seed in range(20):
        image = procedural_background(np.random.default_rng(seed), 72, 100)
        assert image.shape == (72, 100, 3) and image.dtype == np.uint8
        assert image.std() > 1.0  # never a flat colour
        again = procedural_background(np.random.default_rng(seed), 72, 100)
        np.testing.assert_array_equal(image, again)


# --- cameras and errors -----------------------------------------------------------------------


def test_camera_from_fov() -> None:
    fx, fy, cx, cy = camera_from_fov(640, 480, 90.0)
    assert fx == fy == pytest.approx(320.0)
    assert (cx, cy) == (319.5, 239.5)
    fx, _, _, _ = camera_from_fov(640, 480, 60.0, axis="vertical")
    assert fx == pytest.approx(240.0 / math.tan(math.radians(30)))
    # A sphere of known angular size fills the expected share of a wide and a narrow view.
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    mesh = SceneBody(
        (sphere.vertices + np.array([0.0, 0.0, 5.0])).astype(np.float32),
        sphere.faces,
        np.ones(len(sphere.vertices), np.uint8),
        Material.plain(len(sphere.vertices), (0.5, 0.5, 0.5)),
    )
    for fov in (20.0, 90.0):
        camera = camera_from_fov(128, 128, fov)
        scene = render_scene([mesh], camera, height=128, width=128)
        radius_px = camera[0] * 0.5 / math.sqrt(5.0**2 - 0.5**2)
        assert (scene.mask == 0).sum() == pytest.approx(math.pi * radius_px**2, rel=0.05)
    with pytest.raises(ValueError, match="fov_deg"):
        camera_from_fov(10, 10, 180.0)


def test_invalid_scene_inputs_raise_clear_errors() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=1, radius=0.5)
    count = len(sphere.vertices)
    vertices = (sphere.vertices + np.array([0.0, 0.0, 3.0])).astype(np.float32)
    good = Material.plain(count, (0.5, 0.5, 0.5))
    parts = np.ones(count, np.uint8)
    camera = (50.0, 50.0, 16.0, 16.0)

    def render(body: SceneBody, **kwargs: Any) -> SceneImage:
        return render_scene([body], camera, height=32, width=32, **kwargs)

    bad_material = Material(good.base[:-1], good.accent, good.pattern, good.shine, good.coords)
    with pytest.raises(ValueError, match=r"material.base must be \(42, 3\)"):
        render(SceneBody(vertices, sphere.faces, parts, bad_material))
    with pytest.raises(ValueError, match="vertex_parts"):
        render(SceneBody(vertices, sphere.faces, parts[:-1], good))
    with pytest.raises(ValueError, match="face indices"):
        render(SceneBody(vertices, sphere.faces + 1, parts, good))
    with pytest.raises(ValueError, match="background must be"):
        render(SceneBody(vertices, sphere.faces, parts, good), background=np.zeros((32, 32, 3)))
    with pytest.raises(ValueError, match="supersample"):
        render(SceneBody(vertices, sphere.faces, parts, good), supersample=0)
    no_lights = Lighting(np.zeros(3), np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(ValueError, match="1 to 3 directions"):
        render(SceneBody(vertices, sphere.faces, parts, good), lighting=no_lights)
    with pytest.raises(ValueError, match="lights must be"):
        sample_lighting(np.random.default_rng(0), _Ranges(lights=(0, 4)))


class _Ranges:
    def __init__(self, lights: tuple[int, int]) -> None:
        self.lights = lights
        self.key_intensity = (1.0, 1.0)
        self.ambient = (0.2, 0.2)


def test_nothing_in_view_leaves_the_background() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=1, radius=0.5)
    behind = SceneBody(
        (sphere.vertices - np.array([0.0, 0.0, 3.0])).astype(np.float32),
        sphere.faces,
        np.ones(len(sphere.vertices), np.uint8),
        Material.plain(len(sphere.vertices), (1, 1, 1)),
    )
    background = np.full((20, 30, 3), 77, np.uint8)
    scene = render_scene(
        [behind], (20.0, 20.0, 15.0, 10.0), height=20, width=30, background=background
    )
    np.testing.assert_array_equal(scene.rgb, background)
    assert (scene.mask == -1).all() and (scene.depth == 0).all() and (scene.parts == 0).all()
    assert render_scene([], (20.0, 20.0, 15.0, 10.0), height=20, width=30).rgb.sum() == 0
