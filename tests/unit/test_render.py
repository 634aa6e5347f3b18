"""Headless rendering: pinhole-exact projection, metric depth, occlusion, overlays, tiling."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import trimesh

from shared.render import renderer as overlay
from shared.render.renderer import (
    MeshRenderer,
    RendererUnavailable,
    render_layers,
    render_overlay,
    vertex_normals,
)


def _rectangle(corners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two triangles spanning four corners given in order around the rectangle."""
    return corners.astype(np.float32), np.array([[0, 1, 2], [0, 2, 3]])


def _sphere(center: tuple[float, float, float], radius: float, subdivisions: int = 4):
    sphere = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return (sphere.vertices + np.asarray(center)).astype(np.float32), sphere.faces


def _project(camera: tuple[float, float, float, float], point: np.ndarray) -> np.ndarray:
    fx, fy, cx, cy = camera
    return np.array([fx * point[0] / point[2] + cx, fy * point[1] / point[2] + cy])


# --- projection and depth ---------------------------------------------------------------------


def test_rectangle_covers_exactly_the_pixel_centres_inside_its_projection() -> None:
    # Odd, non-square image; edges land at .3/.7/.4/.8 pixel so no pixel centre is ambiguous.
    height, width = 211, 317
    camera = (400.0, 380.0, 150.2, 100.6)
    fx, fy, cx, cy = camera
    z = 2.0
    u0, u1, v0, v1 = 40.3, 250.7, 30.4, 170.8
    x0, x1 = (u0 - cx) * z / fx, (u1 - cx) * z / fx
    y0, y1 = (v0 - cy) * z / fy, (v1 - cy) * z / fy
    mesh = _rectangle(np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]]))

    layers = render_layers([mesh], camera, height=height, width=width)

    expected = np.zeros((height, width), bool)
    expected[31:171, 41:251] = True  # columns 41..250, rows 31..170 (row 0 at the top)
    assert layers.mask.shape == (height, width)
    assert layers.mask.dtype == np.int32
    np.testing.assert_array_equal(layers.mask == 0, expected)
    assert (layers.mask[~expected] == -1).all()
    assert layers.depth.dtype == np.float32
    np.testing.assert_allclose(layers.depth[expected], z, rtol=1e-6)
    assert (layers.depth[~expected] == 0).all()


def test_depth_of_a_tilted_plane_is_metric_at_every_pixel() -> None:
    height, width = 240, 320
    camera = (300.0, 310.0, 161.3, 118.9)
    fx, fy, cx, cy = camera
    rot = trimesh.transformations.euler_matrix(0.35, 0.6, 0.2)[:3, :3]
    center = np.array([0.1, -0.05, 2.5])
    local = np.array([[-0.6, -0.5, 0], [0.6, -0.5, 0], [0.6, 0.5, 0], [-0.6, 0.5, 0]])
    mesh = _rectangle(local @ rot.T + center)

    layers = render_layers([mesh], camera, height=height, width=width)

    rows, cols = np.nonzero(layers.mask == 0)
    assert len(rows) > 5000
    normal = rot[:, 2]
    rays = np.stack([(cols - cx) / fx, (rows - cy) / fy, np.ones_like(cols, float)], axis=1)
    z_expected = (normal @ center) / (rays @ normal)  # ray (u, v, 1) * t hits the plane at Z = t
    assert z_expected.min() < 2.3 < 2.7 < z_expected.max()  # really tilted
    np.testing.assert_allclose(layers.depth[rows, cols], z_expected, atol=1e-4)


def test_sphere_projects_where_the_pinhole_says() -> None:
    height, width = 240, 320
    # Principal point off the image centre: the sphere on the optical axis must follow it.
    camera = (350.0, 350.0, 141.3, 131.8)
    radius, z = 0.4, 3.0
    mesh = _sphere((0.0, 0.0, z), radius, subdivisions=5)

    layers = render_layers([mesh], camera, height=height, width=width)

    rows, cols = np.nonzero(layers.mask == 0)
    assert abs(cols.mean() - camera[2]) < 0.5
    assert abs(rows.mean() - camera[3]) < 0.5
    # The silhouette is the circle of the tangent cone: tan(a) = r / sqrt(Z^2 - r^2).
    r_px = camera[0] * radius / np.sqrt(z**2 - radius**2)
    assert abs((cols.max() - cols.min() + 1) - 2 * r_px) < 2.0
    assert abs((rows.max() - rows.min() + 1) - 2 * r_px) < 2.0
    assert len(rows) == pytest.approx(np.pi * r_px**2, rel=0.02)
    # Depth at the pixel nearest the optical axis: the sphere's near surface.
    u, v = round(camera[2]), round(camera[3])
    d = np.array([(u - camera[2]) / camera[0], (v - camera[3]) / camera[1], 1.0])
    t = (z * d[2] - np.sqrt((z * d[2]) ** 2 - (d @ d) * (z**2 - radius**2))) / (d @ d)
    assert layers.depth[v, u] == pytest.approx(t, abs=0.003)
    assert layers.depth[v, u] == pytest.approx(z - radius, abs=0.005)


def test_off_axis_box_lands_at_its_projected_corners() -> None:
    height, width = 300, 400
    camera = (500.0, 520.0, 200.0, 150.0)
    box = trimesh.creation.box(extents=(0.4, 0.3, 0.2))
    vertices = (box.vertices + np.array([-0.5, 0.25, 4.0])).astype(np.float32)

    layers = render_layers([(vertices, box.faces)], camera, height=height, width=width)

    rows, cols = np.nonzero(layers.mask == 0)
    projected = np.array([_project(camera, p) for p in vertices])
    # The silhouette's extent is that of the projected corners, to the pixel centre.
    assert cols.min() == int(np.floor(projected[:, 0].min())) + 1
    assert cols.max() == int(np.ceil(projected[:, 0].max())) - 1
    assert rows.min() == int(np.floor(projected[:, 1].min())) + 1
    assert rows.max() == int(np.ceil(projected[:, 1].max())) - 1
    # The front face (Z = 3.9) is the nearest surface at the centre of its projection.
    u, v = _project(camera, np.array([-0.5, 0.25, 3.9])).round().astype(int)
    assert layers.depth[v, u] == pytest.approx(3.9, abs=1e-5)


# --- occlusion and overlays -------------------------------------------------------------------


@pytest.mark.parametrize("near_first", [True, False])
def test_the_nearer_mesh_occludes_the_farther_one(near_first: bool) -> None:
    height, width = 200, 300
    camera = (300.0, 300.0, 150.0, 100.0)
    near = _sphere((0.1, 0.0, 2.0), 0.3)
    far = _sphere((-0.1, 0.0, 2.6), 0.5)
    meshes = [near, far] if near_first else [far, near]
    near_index = 0 if near_first else 1
    far_index = 1 - near_index

    layers = render_layers(meshes, camera, height=height, width=width)
    alone = render_layers([near], camera, height=height, width=width)

    # Wherever the near sphere is, it wins; the far one shows only around it.
    np.testing.assert_array_equal(layers.mask == near_index, alone.mask == 0)
    assert (layers.mask == far_index).sum() > 1000
    np.testing.assert_allclose(
        layers.depth[alone.mask == 0], alone.depth[alone.mask == 0], atol=1e-5
    )
    assert (layers.depth[layers.mask == far_index] > 2.1).all()

    # The overlay shows the near mesh's colour there.
    colors = [(1.0, 0.0, 0.0), (0.0, 0.0, 1.0)]
    image = np.zeros((height, width, 3), np.uint8)
    out = render_overlay(image, meshes, camera, colors=colors, alpha=1.0)
    inner_near = _erode(alone.mask == 0, 2)
    inner_far = _erode(layers.mask == far_index, 2)
    channel_near = 0 if near_first else 2
    channel_far = 2 - channel_near
    near_rgb = out[inner_near].astype(int)
    far_rgb = out[inner_far].astype(int)
    # (The white specular highlight adds a little of every channel.)
    assert (near_rgb[:, channel_near] > near_rgb[:, channel_far] + 40).all()
    assert (far_rgb[:, channel_far] > far_rgb[:, channel_near] + 40).all()
    assert (near_rgb[:, 1] == near_rgb[:, channel_far]).all()


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        out[1:-1, 1:-1] &= out[:-2, 1:-1] & out[2:, 1:-1] & out[1:-1, :-2] & out[1:-1, 2:]
        out[[0, -1], :] = False
        out[:, [0, -1]] = False
    return out


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    return ~_erode(~mask, steps)


def test_overlay_keeps_the_photo_outside_the_meshes() -> None:
    rng = np.random.default_rng(0)
    height, width = 181, 263
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    original = image.copy()
    camera = (250.0, 250.0, 131.0, 90.0)
    mesh = _sphere((0.05, 0.02, 2.0), 0.35)

    out = render_overlay(image, [mesh], camera)
    layers = render_layers([mesh], camera, height=height, width=width)

    np.testing.assert_array_equal(image, original)  # the input is not modified
    assert out.shape == image.shape
    assert out.dtype == np.uint8
    covered = layers.mask == 0
    outside = ~_dilate(covered, 2)
    np.testing.assert_array_equal(out[outside], image[outside])
    # Inside, the mesh is drawn: most pixels change, and the noise is damped (alpha 0.8).
    inner = _erode(covered, 1)
    assert (out[inner] != image[inner]).any(axis=1).mean() > 0.95
    assert out[inner].astype(float).std() < 0.5 * image[inner].astype(float).std()


def test_alpha_controls_the_blend() -> None:
    height, width = 120, 160
    camera = (150.0, 150.0, 80.0, 60.0)
    mesh = _sphere((0.0, 0.0, 2.0), 0.4)
    black = np.zeros((height, width, 3), np.uint8)
    white = np.full((height, width, 3), 255, np.uint8)

    np.testing.assert_array_equal(render_overlay(white, [mesh], camera, alpha=0.0), white)
    inner = _erode(render_layers([mesh], camera, height=height, width=width).mask == 0, 2)
    on_black = render_overlay(black, [mesh], camera, alpha=1.0)
    on_white = render_overlay(white, [mesh], camera, alpha=1.0)
    np.testing.assert_array_equal(on_black[inner], on_white[inner])  # opaque: no photo
    half = render_overlay(black, [mesh], camera, alpha=0.5).astype(int)
    np.testing.assert_allclose(half[inner], on_black[inner] * 0.5, atol=1.0)
    # Smooth edges: some boundary pixels are partly covered.
    boundary = _dilate(inner, 3) & ~inner
    partial = (on_black[boundary].max(axis=1) > 0) & (on_black[boundary].max(axis=1) < 60)
    assert partial.sum() > 10


def test_tiled_rendering_matches_a_single_pass() -> None:
    height, width = 203, 301
    camera = (280.0, 280.0, 150.5, 101.5)
    meshes = [_sphere((0.1, 0.0, 2.0), 0.45), _sphere((-0.3, 0.1, 2.5), 0.5)]
    image = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)

    whole = MeshRenderer()
    tiled = MeshRenderer(max_tile=64)
    a = whole.render_layers(meshes, camera, height=height, width=width)
    b = tiled.render_layers(meshes, camera, height=height, width=width)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_allclose(a.depth, b.depth, atol=1e-5)
    out_a = whole.render_overlay(image, meshes, camera).astype(int)
    out_b = tiled.render_overlay(image, meshes, camera).astype(int)
    # Identical but for rounding in the odd antialiased edge pixel.
    differ = np.abs(out_a - out_b).max(axis=2) > 2
    assert differ.sum() <= 3
    assert (np.abs(out_a - out_b).max(axis=2) > 0).sum() < 0.002 * (a.mask >= 0).sum()


@pytest.mark.parametrize(("height", "width"), [(1, 1), (3, 2), (97, 1023), (1023, 97)])
def test_odd_sizes(height: int, width: int) -> None:
    # The image's centre is ((W - 1) / 2, (H - 1) / 2): pixel centres are at integers.
    focal = 10.0 * max(height, width)
    camera = (focal, focal, (width - 1) / 2, (height - 1) / 2)
    mesh = _sphere((0.0, 0.0, 3.0), 0.2)
    image = np.full((height, width, 3), 7, np.uint8)
    out = render_overlay(image, [mesh], camera)
    layers = render_layers([mesh], camera, height=height, width=width)
    assert out.shape == (height, width, 3)
    assert layers.mask.shape == layers.depth.shape == (height, width)
    center = (height // 2, width // 2)
    assert layers.mask[center] == 0
    assert layers.depth[center] == pytest.approx(2.8, abs=0.01)
    assert (out[center] != 7).any()


def test_large_image_spanning_several_tiles() -> None:
    height, width = 3000, 4000
    camera = (3000.0, 3000.0, 2000.0, 1500.0)
    radius, z = 0.9, 2.5  # about 1150 px in radius: 2x2 tiles of 2048
    mesh = _sphere((0.0, 0.0, z), radius, subdivisions=3)
    image = np.full((height, width, 3), 30, np.uint8)

    layers = render_layers([mesh], camera, height=height, width=width)
    out = render_overlay(image, [mesh], camera)

    rows, cols = np.nonzero(layers.mask == 0)
    r_px = camera[0] * radius / np.sqrt(z**2 - radius**2)
    assert r_px > 1024
    assert abs(cols.mean() - camera[2]) < 1.0
    assert abs(rows.mean() - camera[3]) < 1.0
    assert abs((cols.max() - cols.min() + 1) - 2 * r_px) < 0.02 * r_px  # coarse icosphere
    assert layers.depth[1500, 2000] == pytest.approx(z - radius, abs=0.01)
    assert (out[~_dilate(layers.mask == 0, 2)] == 30).all()
    assert (out[1500, 2000] != 30).all()
    # No seams where the tiles meet: the mask is one solid disc, row by row.
    for row in (1400, 1500, 1600):
        covered = np.nonzero(layers.mask[row] == 0)[0]
        assert covered.max() - covered.min() + 1 == len(covered)


# --- an Anny body -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def anny_mesh() -> tuple[np.ndarray, np.ndarray]:
    anny = pytest.importorskip("anny")
    torch = pytest.importorskip("torch")
    from shared.bodies.base import ANNY_TO_CAMERA

    model = anny.Anny().to(torch.float32)
    with torch.no_grad():
        vertices = model()["vertices"][0].numpy()
    faces = model.get_triangular_faces().numpy()
    return (vertices @ ANNY_TO_CAMERA.T).astype(np.float32), faces


def test_anny_renders_as_a_person(anny_mesh: tuple[np.ndarray, np.ndarray]) -> None:
    vertices, faces = anny_mesh
    vertices = vertices + np.array([0.0, 0.0, 3.0], np.float32)  # 3 m ahead of the camera
    height, width = 480, 320
    camera = (500.0, 500.0, 160.0, 240.0)

    layers = render_layers([(vertices, faces)], camera, height=height, width=width)
    image = np.zeros((height, width, 3), np.uint8)
    out = render_overlay(image, [(vertices, faces)], camera)

    rows, cols = np.nonzero(layers.mask == 0)
    box_h, box_w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert 1.2 < box_h / box_w < 2.5  # standing, arms a little out
    assert 250 < box_h < 300  # about 1.65 m at 3 m with f = 500 px
    assert len(rows) / (box_h * box_w) < 0.45  # not a blob: limbs leave the box mostly empty
    # The silhouette's extent is the vertices' projection.
    u = camera[0] * vertices[:, 0] / vertices[:, 2] + camera[2]
    v = camera[1] * vertices[:, 1] / vertices[:, 2] + camera[3]
    assert abs(cols.min() - u.min()) < 1.0 and abs(cols.max() - u.max()) < 1.0
    assert abs(rows.min() - v.min()) < 1.0 and abs(rows.max() - v.max()) < 1.0
    # Upright: a narrow head at the top, two separate legs near the bottom.
    widths = (layers.mask == 0).sum(axis=1)
    top = rows.min()
    assert widths[top + box_h // 20] < 0.2 * box_w
    leg_row = layers.mask[top + int(box_h * 0.85)] == 0
    runs = np.count_nonzero(np.diff(leg_row.astype(int)) == 1)
    assert runs == 2
    # The body is 2.7 to 3.3 m away, and shaded (not a flat colour).
    assert 2.6 < layers.depth[rows, cols].min() < layers.depth[rows, cols].max() < 3.4
    assert out[rows, cols].std() > 5


# --- helpers, errors, threads -----------------------------------------------------------------


def test_vertex_normals_of_a_sphere_point_outwards() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=3)
    normals = vertex_normals(sphere.vertices, sphere.faces)
    assert normals.dtype == np.float32
    expected = sphere.vertices / np.linalg.norm(sphere.vertices, axis=1, keepdims=True)
    assert (np.sum(normals * expected, axis=1) > 0.999).all()


def test_nothing_visible() -> None:
    image = np.full((50, 60, 3), 9, np.uint8)
    camera = (50.0, 50.0, 30.0, 25.0)
    behind = _sphere((0.0, 0.0, -3.0), 0.5)
    empty = (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64))
    for meshes in ([], [behind], [empty]):
        np.testing.assert_array_equal(render_overlay(image, meshes, camera), image)
        layers = render_layers(meshes, camera, height=50, width=60)
        assert (layers.mask == -1).all() and (layers.depth == 0).all()


def test_mesh_straddling_the_camera_plane_is_clipped() -> None:
    camera = (100.0, 100.0, 50.0, 50.0)
    wall = _rectangle(np.array([[-1, -1, -1.0], [1, -1, -1.0], [1, 1, 3.0], [-1, 1, 3.0]]))
    layers = render_layers([wall], camera, height=100, width=100)
    visible = layers.mask == 0
    assert visible.any()
    assert (layers.depth[visible] > 0).all()


@pytest.mark.parametrize(
    ("meshes", "camera", "message"),
    [
        ([(np.zeros((3, 2)), np.array([[0, 1, 2]]))], (1, 1, 0, 0), "vertices"),
        ([(np.zeros((3, 3)), np.array([[0, 1, 3]]))], (1, 1, 0, 0), "face indices"),
        ([(np.zeros((3, 3)), np.array([[0.0, 1.0, 2.0]]))], (1, 1, 0, 0), "integers"),
        ([(np.full((3, 3), np.nan), np.array([[0, 1, 2]]))], (1, 1, 0, 0), "NaN"),
        ([], (0, 1, 0, 0), "focal"),
        ([], (1, 1, 0), "camera"),
    ],
)
def test_invalid_inputs(meshes: list, camera: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_layers(meshes, camera, height=10, width=10)


def test_invalid_image_and_colours() -> None:
    mesh = _sphere((0.0, 0.0, 2.0), 0.3)
    with pytest.raises(ValueError, match="uint8"):
        render_overlay(np.zeros((10, 10, 3), np.float32), [mesh], (10, 10, 5, 5))
    with pytest.raises(ValueError, match="uint8"):
        render_overlay(np.zeros((10, 10), np.uint8), [mesh], (10, 10, 5, 5))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        render_overlay(np.zeros((10, 10, 3), np.uint8), [mesh], (10, 10, 5, 5), [(255, 0, 0)])


def test_missing_egl_raises_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import moderngl

    def fail(**kwargs: object) -> None:
        raise RuntimeError("libEGL.so: cannot open shared object file")

    monkeypatch.setattr(moderngl, "create_standalone_context", fail)
    worker = overlay.GLWorker()  # a fresh worker: the process's own context is untouched
    try:
        for _ in range(2):  # the failure is remembered, with the same message
            with pytest.raises(RendererUnavailable, match="apt-get install libegl1"):
                worker.run(lambda w, ctx: None)
    finally:
        worker.shutdown()


def test_one_context_serves_every_thread() -> None:
    camera = (100.0, 100.0, 40.0, 30.0)
    mesh = _sphere((0.0, 0.0, 2.0), 0.3)
    reference = render_layers([mesh], camera, height=60, width=80)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(3):
                results.append(render_layers([mesh], camera, height=60, width=80).mask)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(results) == 12
    for mask in results:
        np.testing.assert_array_equal(mask, reference.mask)
    assert overlay._worker is not None
    assert overlay._worker._ctx is not None
