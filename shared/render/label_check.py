"""Are rendered labels exact? An independent CPU ray cast against the meshes, and the checks.

The renderer's labels (:func:`~shared.render.scene.render_scene`'s ``mask``, ``depth``,
``face``, ``parts``, or :func:`~shared.render.renderer.render_layers`') are sampled at pixel
centres. Here the same quantities are computed without OpenGL: for a point ``(u, v)`` of the
image, every triangle whose projection contains it (2D edge functions in float64), with the
perspective-correct depth ``1 / sum(lambda_i / Z_i)`` of the surface point on the ray through
it; the nearest one wins.

Rasterisers decide pixel centres lying on an edge by their own rules, with vertex positions
snapped to a sub-pixel grid (llvmpipe: 1/256 pixel), so a pixel centre closer than
``edge_margin_px`` (default 1/64 pixel) to a triangle's border is *near* that triangle's edge,
and its label may honestly go either way where that edge matters. Everything else must agree
exactly. For each pixel the check knows the surely-covering triangles (inside by more than the
margin) and the near-edge ones (inside or outside by less); the pixel is ambiguous for

- the mask, when a near-edge triangle nearer than the nearest sure one belongs to another body
  (or no triangle surely covers it: a silhouette edge);
- the depth, when such a near-edge triangle's depth there differs from the sure one's by more
  than ``depth_tolerance_m`` (an occlusion edge; across the shared edge of two neighbouring
  triangles of one surface the depth is continuous, so those pixels are still compared);
- the triangle and the part, when such a near-edge triangle is another triangle.

:func:`check_labels` compares a rendering with this reference and returns a
:class:`LabelReport`: unambiguous pixels must have the same body, the same triangle and part,
and depth within ``depth_tolerance_m`` plus ``edge_margin_px`` times the surface's depth slope
per pixel (rasterisers snap vertices to a sub-pixel grid, which on surfaces seen nearly edge-on
moves depth by the slope times the snap; default 0.1 mm; on Anny at 256 and 512 pixels the
largest difference is a few microns, float32 rounding). About 2 % of the foreground pixels are
ambiguous for the mask. Its point checks are the dataset's label checks, in image terms: every
*visible* vertex (no surface in front of it along the ray through it) and every keypoint inside
a body (joint centres; unless another body is in front) must land on its body's mask within one
pixel, or where the mesh covers no pixel centre either (a finger thinner than a pixel).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np

__all__ = [
    "LabelReport",
    "ReferenceHits",
    "cast_rays",
    "check_labels",
    "project",
]

Mesh = tuple[np.ndarray, np.ndarray]  # (V, 3) vertices in the OpenCV camera frame, (F, 3)


class RenderedLabels(Protocol):
    """What is checked: a ``mask`` and a ``depth`` (H, W); ``face`` and ``parts`` if present."""

    @property
    def mask(self) -> np.ndarray: ...

    @property
    def depth(self) -> np.ndarray: ...


class ReferenceHits(NamedTuple):
    """The nearest surface along the ray through each query point (NumPy arrays of (N,))."""

    instance: np.ndarray  # int32, -1: no mesh surely covers the point
    face: np.ndarray  # int64 triangle index in its mesh, -1 if none
    depth: np.ndarray  # float64 camera-frame Z in metres, 0 if none
    mask_ambiguous: np.ndarray  # bool
    depth_ambiguous: np.ndarray  # bool
    face_ambiguous: np.ndarray  # bool
    nearest_any: np.ndarray  # float64: nearest depth of any triangle within the margin (inf)


def project(points: np.ndarray, camera: Sequence[float]) -> np.ndarray:
    """(N, 3) camera-frame points -> (N, 2) pixel coordinates (OpenCV, centres at integers)."""
    fx, fy, cx, cy = (float(c) for c in camera)
    p = np.asarray(points, np.float64).reshape(-1, 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.stack([fx * p[:, 0] / p[:, 2] + cx, fy * p[:, 1] / p[:, 2] + cy], axis=1)


def _expand(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts (n,) -> (owner, rank within owner), each (sum,): [2, 1] -> [0 0 1], [0 1 0]."""
    owner = np.repeat(np.arange(len(counts)), counts)
    rank = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    return owner, rank


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) distances from points p (N, 2) to segments [a, b] (N, 2)."""
    ab = b - a
    length2 = np.maximum((ab * ab).sum(axis=1), 1e-300)
    t = np.clip(((p - a) * ab).sum(axis=1) / length2, 0.0, 1.0)
    return np.asarray(np.linalg.norm(p - (a + t[:, None] * ab), axis=1))


def cast_rays(
    meshes: Sequence[Mesh],
    camera: Sequence[float],
    points: np.ndarray,
    *,
    edge_margin_px: float = 1.0 / 64.0,
    depth_tolerance_m: float = 1e-4,
) -> ReferenceHits:
    """The nearest mesh surface along the ray through each image point (u, v), in float64.

    Every triangle must lie in front of the camera (Z > 0). See the module's docstring for the
    ambiguity flags.
    """
    fx, fy, cx, cy = (float(c) for c in camera)
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    n = len(pts)
    instance = np.full(n, -1, np.int32)
    face = np.full(n, -1, np.int64)
    depth = np.zeros(n)
    no = np.zeros(n, bool)
    nearest_any = np.full(n, np.inf)
    finite = np.isfinite(pts).all(axis=1)
    if n == 0 or not finite.any() or not meshes:
        return ReferenceHits(instance, face, depth, no, no.copy(), no.copy(), nearest_any)

    # Bucket the queries into square cells: pixels for pixel centres, quarter pixels for
    # arbitrary points (dense vertices: fewer candidate pairs per small triangle).
    integral = bool(np.all(pts[finite] == np.round(pts[finite])))
    size = 1.0 if integral else 0.25
    cell = np.zeros((n, 2), np.int64)
    cell[finite] = np.floor(pts[finite] / size + 0.5).astype(np.int64)
    low, high = cell[finite].min(axis=0), cell[finite].max(axis=0)
    nx, ny = (high - low + 1).tolist()
    if nx * ny > 64_000_000:
        raise ValueError(f"query points span {nx}x{ny} pixels: too many for the reference")
    key = (cell[:, 1] - low[1]) * nx + (cell[:, 0] - low[0])
    order = np.argsort(np.where(finite, key, -1), kind="stable")[n - int(finite.sum()) :]
    per_cell = np.bincount(key[order], minlength=nx * ny)
    cell_start = np.cumsum(per_cell) - per_cell

    found: list[tuple[np.ndarray, ...]] = []
    for index, (vertices, faces) in enumerate(meshes):
        v = np.asarray(vertices, np.float64)
        f = np.asarray(faces, np.int64)
        if len(f) == 0:
            continue
        z = v[:, 2][f]  # (F, 3)
        if (z <= 0).any():
            raise ValueError(f"mesh {index}: the reference needs every triangle in front (Z > 0)")
        tu = fx * v[:, 0][f] / z + cx
        tv = fy * v[:, 1][f] / z + cy

        # Cells whose centre may lie within the margin of each triangle, clipped to the queries.
        def first(values: np.ndarray, bound: int) -> np.ndarray:
            cells = np.floor((values.min(axis=1) - edge_margin_px) / size + 0.5)
            return np.asarray(np.maximum(cells, bound), np.int64)

        def last(values: np.ndarray, bound: int) -> np.ndarray:
            cells = np.floor((values.max(axis=1) + edge_margin_px) / size + 0.5)
            return np.asarray(np.minimum(cells, bound), np.int64)

        i0, i1, j0, j1 = first(tu, low[0]), last(tu, high[0]), first(tv, low[1]), last(tv, high[1])
        width = np.clip(i1 - i0 + 1, 0, None)
        count = width * np.clip(j1 - j0 + 1, 0, None)
        tri, rank = _expand(count)
        ck = (j0[tri] + rank // width[tri] - low[1]) * nx + (i0[tri] + rank % width[tri] - low[0])
        queries = per_cell[ck]
        tri, ck, queries = tri[queries > 0], ck[queries > 0], queries[queries > 0]
        pair, rank = _expand(queries)
        tri = tri[pair]
        q = order[cell_start[ck[pair]] + rank]

        px, py = pts[q, 0], pts[q, 1]
        ax, bx, cxx = tu[tri, 0], tu[tri, 1], tu[tri, 2]
        ay, by, cyy = tv[tri, 0], tv[tri, 1], tv[tri, 2]
        # Edge functions: twice the signed areas of (b, c, p), (c, a, p), (a, b, p).
        w0 = (cxx - bx) * (py - by) - (cyy - by) * (px - bx)
        w1 = (ax - cxx) * (py - cyy) - (ay - cyy) * (px - cxx)
        w2 = (bx - ax) * (py - ay) - (by - ay) * (px - ax)
        area = w0 + w1 + w2
        ok = np.abs(area) > 1e-12
        sign = np.sign(area)
        with np.errstate(divide="ignore", invalid="ignore"):
            # Signed distance (pixels) from p to the triangle's nearest edge line, > 0 inside.
            inside_by = np.minimum.reduce(
                [
                    sign * w0 / np.hypot(cxx - bx, cyy - by),
                    sign * w1 / np.hypot(ax - cxx, ay - cyy),
                    sign * w2 / np.hypot(bx - ax, by - ay),
                ]
            )
            inverse_z = (w0 / z[tri, 0] + w1 / z[tri, 1] + w2 / z[tri, 2]) / area
            hit_depth = 1.0 / inverse_z
        # Outside, the nearest edge *line* may pass close by while the triangle is far (thin
        # slivers): there, take the true distance to the triangle's three sides.
        outside = np.flatnonzero(ok & (inside_by < 0) & (inside_by > -edge_margin_px))
        if len(outside):
            p = np.stack([px[outside], py[outside]], axis=1)
            corners = np.stack(
                [
                    np.stack([ax[outside], ay[outside]], axis=1),
                    np.stack([bx[outside], by[outside]], axis=1),
                    np.stack([cxx[outside], cyy[outside]], axis=1),
                ],
                axis=1,
            )
            inside_by[outside] = -np.minimum.reduce(
                [_segment_distance(p, corners[:, k], corners[:, (k + 1) % 3]) for k in range(3)]
            )
        keep = ok & (inside_by > -edge_margin_px) & (inverse_z > 0)
        found.append(
            (q[keep], hit_depth[keep], inside_by[keep], tri[keep], np.full(keep.sum(), index))
        )
    if not found:
        return ReferenceHits(instance, face, depth, no, no.copy(), no.copy(), nearest_any)
    q, hit_depth, inside_by, tri, mesh = (
        np.concatenate(parts) for parts in zip(*found, strict=True)
    )
    np.minimum.at(nearest_any, q, hit_depth)

    # The nearest surely-covering triangle of each query.
    sure = inside_by >= edge_margin_px
    best = np.full(n, np.inf)
    np.minimum.at(best, q[sure], hit_depth[sure])
    winner = sure & (hit_depth == best[q])
    instance[q[winner]] = mesh[winner]
    face[q[winner]] = tri[winner]
    covered = np.isfinite(best)
    depth[covered] = best[covered]

    # Near-edge triangles in front of (or level with) the sure winner make the labels ambiguous.
    tie = depth_tolerance_m
    near_edge = ~sure & (hit_depth <= best[q] + tie)
    mask_amb = np.zeros(n, bool)
    depth_amb = np.zeros(n, bool)
    face_amb = np.zeros(n, bool)
    uncovered = ~covered[q]
    mask_amb[q[near_edge & (uncovered | (mesh != instance[q]))]] = True
    depth_amb[q[near_edge & (uncovered | (np.abs(hit_depth - best[q]) > tie))]] = True
    face_amb[q[near_edge & (uncovered | (mesh != instance[q]) | (tri != face[q]))]] = True
    # Two sure triangles at the same depth (coplanar overlap): the depth test decides.
    level = sure & ~winner & (hit_depth <= best[q] + tie)
    face_amb[q[level]] = True
    mask_amb[q[level & (mesh != instance[q])]] = True
    return ReferenceHits(instance, face, depth, mask_amb, depth_amb, face_amb, nearest_any)


@dataclass
class LabelReport:
    """What :func:`check_labels` found; ``ok`` when nothing is wrong (see ``problems``)."""

    pixels_compared: int = 0  # foreground pixels (rendered or reference) compared for the mask
    pixels_ambiguous: int = 0  # pixel centres within the edge margin of an edge that matters
    mask_errors: int = 0
    depth_compared: int = 0
    depth_errors: int = 0
    depth_max_error_m: float = 0.0
    face_compared: int = 0
    face_errors: int = 0
    part_errors: int = 0
    vertices_visible: int = 0
    vertices_off_mask: int = 0
    vertices_subpixel: int = 0  # off the mask, but the mesh covers no pixel centre there either
    keypoints_checked: int = 0
    keypoints_off_mask: int = 0
    keypoints_subpixel: int = 0
    details: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems()

    def problems(self) -> list[str]:
        found = []
        if self.mask_errors:
            found.append(f"{self.mask_errors} of {self.pixels_compared} pixels: wrong body")
        if self.depth_errors:
            found.append(
                f"{self.depth_errors} of {self.depth_compared} pixels: depth off the mesh "
                f"(worst {self.depth_max_error_m * 1000:.3f} mm)"
            )
        if self.face_errors:
            found.append(f"{self.face_errors} of {self.face_compared} pixels: wrong triangle")
        if self.part_errors:
            found.append(f"{self.part_errors} of {self.face_compared} pixels: wrong part")
        if self.vertices_off_mask:
            found.append(
                f"{self.vertices_off_mask} of {self.vertices_visible} visible vertices off "
                "their body's mask"
            )
        if self.keypoints_off_mask:
            found.append(
                f"{self.keypoints_off_mask} of {self.keypoints_checked} keypoints off their "
                "body's mask"
            )
        return found


_NEIGHBOURS = np.array([(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)])


def _lands_on_mask(
    mask: np.ndarray,
    pixels: np.ndarray,
    body: int,
    meshes: Sequence[Mesh],
    camera: Sequence[float],
    cast: dict[str, float],
) -> tuple[np.ndarray, np.ndarray]:
    """For (N, 2) pixels (row, col): (the body is in the rendered 3x3 neighbourhood, it is not
    and the reference shows none of it there either: a structure thinner than a pixel)."""
    height, width = mask.shape
    around = pixels[:, None, :] + _NEIGHBOURS[None]  # (N, 9, 2)
    inside = (
        (around[..., 0] >= 0)
        & (around[..., 0] < height)
        & (around[..., 1] >= 0)
        & (around[..., 1] < width)
    )
    rows = np.clip(around[..., 0], 0, height - 1)
    cols = np.clip(around[..., 1], 0, width - 1)
    lands = (inside & (mask[rows, cols] == body)).any(axis=1)
    subpixel = np.zeros(len(pixels), bool)
    missing = np.flatnonzero(~lands)
    if len(missing):
        centres = np.stack([cols[missing], rows[missing]], axis=-1).reshape(-1, 2)
        hits = cast_rays(meshes, camera, centres.astype(np.float64), **cast)
        shows_body = (hits.instance == body) & ~hits.mask_ambiguous
        subpixel[missing] = ~(shows_body.reshape(-1, 9) & inside[missing]).any(axis=1)
    return lands, subpixel


def _on_image_rows(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N,) bool: (row, col) pixels inside the image."""
    return (
        (pixels[:, 0] >= 0) & (pixels[:, 0] < height) & (pixels[:, 1] >= 0) & (pixels[:, 1] < width)
    )


def _on_image(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.asarray(pixels[_on_image_rows(pixels, height, width)])


def _depth_slope(depth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W) metres per pixel: the largest depth step to a 4-neighbour of the same body (0
    where there is none; one-sided steps, so that a ridge has the slope of its sides)."""
    d = np.asarray(depth, np.float64)
    height, width = d.shape
    slope = np.zeros_like(d)
    for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        rows = slice(max(dr, 0), height + min(dr, 0))
        cols = slice(max(dc, 0), width + min(dc, 0))
        here = (slice(max(-dr, 0), height + min(-dr, 0)), slice(max(-dc, 0), width + min(-dc, 0)))
        same = (mask[rows, cols] == mask[here]) & (mask[here] >= 0)
        step = np.where(same, np.abs(d[rows, cols] - d[here]), 0.0)
        slope[here] = np.maximum(slope[here], step)
    return slope


def check_labels(
    meshes: Sequence[Mesh],
    camera: Sequence[float],
    rendered: RenderedLabels,
    *,
    face_parts: Sequence[np.ndarray] | None = None,
    keypoints: Sequence[np.ndarray] | None = None,
    full_image: bool = True,
    vertex_stride: int = 1,
    edge_margin_px: float = 1.0 / 64.0,
    depth_tolerance_m: float = 1e-4,
    depth_slope_px: float | None = None,
) -> LabelReport:
    """Compare rendered labels with the meshes (see the module's docstring).

    Args:
        meshes: the rendered meshes, in the order of ``rendered.mask``'s indices.
        camera: ``(fx, fy, cx, cy)``.
        rendered: has ``mask`` and ``depth``; ``face`` and ``parts`` are checked if present.
        face_parts: (F,) part per triangle of each mesh, to check ``rendered.parts``.
        keypoints: (K, 3) camera-frame points inside each mesh (e.g. regressed joints).
        full_image: compare every pixel; otherwise only the pixels under visible vertices
            and keypoints (cheaper).
        depth_slope_px: how far (pixels) along the surface's depth slope a depth may be off on
            top of ``depth_tolerance_m``; default ``edge_margin_px``.
        vertex_stride: check every n-th vertex only (the vertex rays dominate the cost:
            about 0.1 s per Anny body at 1, on one core).
    """
    if vertex_stride < 1:
        raise ValueError(f"vertex_stride must be at least 1, got {vertex_stride}")
    mask = np.asarray(rendered.mask)
    rendered_depth = np.asarray(rendered.depth)
    rendered_face = getattr(rendered, "face", None)
    rendered_parts = getattr(rendered, "parts", None)
    height, width = mask.shape
    report = LabelReport()
    cast = {"edge_margin_px": edge_margin_px, "depth_tolerance_m": depth_tolerance_m}

    # Visible vertices: nothing nearer than the vertex along the ray through it.
    checked_pixels: list[np.ndarray] = []
    for index, (vertices, _) in enumerate(meshes):
        v = np.asarray(vertices, np.float64)[::vertex_stride]
        uv = project(v, camera)
        hits = cast_rays(meshes, camera, uv, **cast)
        visible = hits.nearest_any >= v[:, 2] - depth_tolerance_m
        rc = _on_image(np.floor(uv[visible] + 0.5).astype(np.int64)[:, ::-1], height, width)
        lands, subpixel = _lands_on_mask(mask, rc, index, meshes, camera, cast)
        report.vertices_visible += len(rc)
        report.vertices_off_mask += int((~lands & ~subpixel).sum())
        report.vertices_subpixel += int(subpixel.sum())
        checked_pixels.append(rc)

    for index, points in enumerate(keypoints or []):
        p = np.asarray(points, np.float64).reshape(-1, 3)
        p = p[p[:, 2] > 0]
        rc_all = np.floor(project(p, camera) + 0.5).astype(np.int64)[:, ::-1]
        keep = _on_image_rows(rc_all, height, width)
        rc, p = rc_all[keep], p[keep]
        lands, subpixel = _lands_on_mask(mask, rc, index, meshes, camera, cast)
        # Hidden behind another body: that body's surface is nearer than the keypoint.
        other = mask[rc[:, 0], rc[:, 1]]
        hidden = (other >= 0) & (other != index) & (rendered_depth[rc[:, 0], rc[:, 1]] < p[:, 2])
        report.keypoints_checked += len(rc)
        report.keypoints_off_mask += int((~lands & ~subpixel & ~hidden).sum())
        report.keypoints_subpixel += int((~lands & subpixel & ~hidden).sum())
        checked_pixels.append(rc)

    # Pixels: every one, or those under the checked points.
    if full_image:
        rows, cols = np.mgrid[0:height, 0:width]
        rows, cols = rows.ravel(), cols.ravel()
    else:
        joined = np.concatenate(checked_pixels) if checked_pixels else np.zeros((0, 2), np.int64)
        unique = np.unique(joined[:, 0] * width + joined[:, 1])
        rows, cols = unique // width, unique % width
    reference = cast_rays(meshes, camera, np.stack([cols, rows], axis=1).astype(np.float64), **cast)
    got_mask = mask[rows, cols]
    foreground = (got_mask >= 0) | (reference.instance >= 0) | reference.mask_ambiguous
    compared = foreground & ~reference.mask_ambiguous
    report.pixels_ambiguous = int((foreground & reference.mask_ambiguous).sum())
    report.pixels_compared = int(compared.sum())
    wrong_mask = compared & (got_mask != reference.instance)
    report.mask_errors = int(wrong_mask.sum())

    same_body = (got_mask >= 0) & (got_mask == reference.instance)
    depth_ok = same_body & ~reference.depth_ambiguous
    error = np.abs(rendered_depth[rows, cols].astype(np.float64) - reference.depth)[depth_ok]
    # On a surface seen nearly edge-on, depth changes fast across the image: the rasteriser's
    # sub-pixel snapping of vertices then moves it by the slope times the snap. Allow the slope
    # over ``edge_margin_px`` on top of the tolerance.
    slope_px = edge_margin_px if depth_slope_px is None else depth_slope_px
    slack = _depth_slope(rendered_depth, mask)[rows, cols][depth_ok] * slope_px
    report.depth_compared = int(depth_ok.sum())
    report.depth_errors = int((error > depth_tolerance_m + slack).sum())
    report.depth_max_error_m = float(error.max()) if len(error) else 0.0

    if rendered_face is not None:
        face_ok = same_body & ~reference.face_ambiguous
        got_face = np.asarray(rendered_face)[rows, cols]
        report.face_compared = int(face_ok.sum())
        report.face_errors = int((face_ok & (got_face != reference.face)).sum())
        if rendered_parts is not None and face_parts is not None:
            expected = np.zeros(len(rows), np.int64)
            for index, parts in enumerate(face_parts):
                mine = face_ok & (reference.instance == index)
                expected[mine] = np.asarray(parts)[reference.face[mine]]
            got_parts = np.asarray(rendered_parts)[rows, cols]
            report.part_errors = int((face_ok & (got_parts != expected)).sum())
    if wrong_mask.any():
        r, c = rows[wrong_mask][0], cols[wrong_mask][0]
        report.details.append(
            f"e.g. pixel (row {r}, col {c}): rendered body {mask[r, c]}, mesh says "
            f"{reference.instance[wrong_mask][0]}"
        )
    return report
