"""Headless mesh rendering with moderngl on EGL: overlays on photos, exact masks and depth maps.

Meshes are given in the OpenCV camera frame (x right, y down, z ahead, metres; see
:mod:`shared.bodies.base`) and drawn with a pinhole camera ``(fx, fy, cx, cy)`` in pixels, the
same convention as the rest of bodyserve: a vertex at ``(X, Y, Z)`` lands at pixel
``(fx * X / Z + cx, fy * Y / Z + cy)``, where integer pixel coordinates are pixel *centres*
(OpenCV's convention) and row 0 is the top of the image.

How it maps onto OpenGL: the vertex shader writes clip coordinates straight from the intrinsics
(no view or projection matrix), with a y-down NDC so that framebuffer row ``r`` *is* image row
``r`` and reads need no flip; the near and far planes bracket the meshes' own depth range, which
keeps the depth test precise. Metric depth is not read back from the (non-linear) depth buffer:
each fragment writes ``1 / gl_FragCoord.w``, the perspective-correct camera-frame ``Z`` of the
surface seen through the pixel centre, into a 32-bit float target, so it is exact to float32.

One EGL context per process, created lazily on first use and owned by a dedicated thread: an EGL
context can be current in one thread at a time, so every GL call runs on that thread and callers
from any thread are serialised through it (the lock only guards its creation). After a ``fork``
(Celery's prefork pool) the child creates its own. Large images are drawn in tiles of at most
``max_tile`` pixels a side (only the tiles the meshes' projection touches), so a 4000x3000 or
12000x9000 photo costs no more GPU memory than a 2048x2048 one; framebuffers are cached by size.

Headless requirements (Debian 12): ``libegl1`` (glvnd's libEGL), ``libegl-mesa0`` (Mesa's EGL
vendor library) and ``libgl1-mesa-dri`` (the llvmpipe software rasteriser, or a GPU driver),
which pull in ``libgbm1`` and ``libglapi-mesa``. Mesa renders on the CPU with llvmpipe when no
GPU is present.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, TypeVar

import moderngl
import numpy as np

__all__ = [
    "DEFAULT_COLORS",
    "EGL_PACKAGES",
    "Camera",
    "Mesh",
    "MeshRenderer",
    "RenderLayers",
    "RendererUnavailable",
    "get_renderer",
    "render_layers",
    "render_overlay",
    "vertex_normals",
]

Mesh = tuple[np.ndarray, np.ndarray]  # (V, 3) float vertices in metres, (F, 3) int triangles
Camera = tuple[float, float, float, float]  # fx, fy, cx, cy in pixels

# Debian packages that give a headless EGL context (Mesa; llvmpipe on machines without a GPU).
EGL_PACKAGES: Final[tuple[str, ...]] = ("libegl1", "libegl-mesa0", "libgl1-mesa-dri")

# One colour per person, cycled: soft, distinguishable on photos (RGB in [0, 1]).
DEFAULT_COLORS: Final[tuple[tuple[float, float, float], ...]] = (
    (0.65, 0.74, 0.86),
    (0.93, 0.62, 0.47),
    (0.60, 0.82, 0.60),
    (0.85, 0.67, 0.86),
    (0.95, 0.85, 0.50),
    (0.55, 0.80, 0.82),
    (0.88, 0.55, 0.60),
    (0.75, 0.72, 0.62),
)

_T = TypeVar("_T")

_VERTEX_SHADER = """
#version 330
uniform vec4 u_intr;  // fx, fy, cx + 0.5 - tile_x, cy + 0.5 - tile_y
uniform vec2 u_size;  // tile width, height in pixels
uniform vec2 u_near_far;
in vec3 in_pos;
in vec3 in_normal;
out vec3 v_pos;
out vec3 v_normal;
void main() {
    float z = in_pos.z;
    // Window coordinate (u + 0.5) * z, with u = fx * x / z + cx the OpenCV pixel coordinate:
    // OpenGL puts pixel centres at +0.5, OpenCV at integers. NDC y points down like the image.
    float xs = u_intr.x * in_pos.x + u_intr.z * z;
    float ys = u_intr.y * in_pos.y + u_intr.w * z;
    float n = u_near_far.x;
    float f = u_near_far.y;
    gl_Position = vec4(
        2.0 * xs / u_size.x - z,
        2.0 * ys / u_size.y - z,
        ((f + n) * z - 2.0 * f * n) / (f - n),
        z
    );
    v_pos = in_pos;
    v_normal = in_normal;
}
"""

_SHADE_FRAGMENT_SHADER = """
#version 330
uniform vec3 u_color;
uniform float u_ambient;
in vec3 v_pos;
in vec3 v_normal;
out vec4 f_color;
void main() {
    vec3 l = normalize(-v_pos);  // headlight: the light sits at the camera
    float len_n = length(v_normal);
    vec3 n = len_n > 1e-12 ? v_normal / len_n : l;  // (degenerate normals face the light)
    float d = abs(dot(n, l));    // two-sided, so the winding order does not matter
    float shade = u_ambient + (1.0 - u_ambient) * d;
    vec3 rgb = u_color * shade + vec3(0.12) * pow(d, 24.0);
    f_color = vec4(clamp(rgb, 0.0, 1.0), 1.0);
}
"""

_LAYERS_VERTEX_SHADER = _VERTEX_SHADER.replace("in vec3 in_normal;", "").replace(
    "v_normal = in_normal;", "v_normal = vec3(0.0);"
)

_LAYERS_FRAGMENT_SHADER = """
#version 330
uniform float u_label;
in vec3 v_pos;
in vec3 v_normal;
out vec2 f_out;
void main() {
    // gl_FragCoord.w is 1 / w_clip = 1 / Z, interpolated exactly (it is affine on screen).
    f_out = vec2(1.0 / gl_FragCoord.w, u_label);
}
"""


class RendererUnavailable(RuntimeError):
    """No OpenGL context could be created (EGL or Mesa missing, or no usable device)."""


class RenderLayers(NamedTuple):
    """Exact per-pixel labels for one camera, sampled at pixel centres (no antialiasing)."""

    mask: np.ndarray  # (H, W) int32: index of the visible mesh, -1 for background
    depth: np.ndarray  # (H, W) float32: camera-frame Z of the visible surface in metres, 0 if none


@dataclass(frozen=True)
class _Prepared:
    """Meshes validated and packed for the GPU, with the region of the image they can touch."""

    positions: list[np.ndarray]  # (V, 3) float32, C-contiguous
    normals: list[np.ndarray]  # (V, 3) float32
    faces: list[np.ndarray]  # (F, 3) uint32
    labels: list[int]  # index of each kept mesh in the caller's list
    near: float
    far: float
    region: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), within the image


# --------------------------------------------------------------------------------------------
# Geometry helpers (pure numpy, run in the caller's thread)
# --------------------------------------------------------------------------------------------


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Smooth unit vertex normals, (V, 3) float32: area-weighted sums of the face normals.

    Vertices used by no face (or only by degenerate ones) get a zero normal.
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    normals = np.zeros_like(v)
    if len(f):
        # The cross product's length is twice the triangle's area: an area weighting for free.
        face_n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
        for axis in range(3):
            normals[:, axis] = np.bincount(
                f.ravel(), weights=np.repeat(face_n[:, axis], 3), minlength=len(v)
            )
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    np.divide(normals, length, out=normals, where=length > 0)
    return normals.astype(np.float32)


def check_camera(camera: Sequence[float]) -> tuple[float, float, float, float]:
    values = tuple(float(c) for c in camera)
    if len(values) != 4 or not all(np.isfinite(values)):
        raise ValueError(f"camera must be 4 finite numbers (fx, fy, cx, cy), got {camera!r}")
    fx, fy, cx, cy = values
    if fx <= 0 or fy <= 0:
        raise ValueError(f"focal lengths must be positive, got fx={fx}, fy={fy}")
    return fx, fy, cx, cy


def check_size(height: int, width: int) -> tuple[int, int]:
    h, w = int(height), int(width)
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got height={height}, width={width}")
    return h, w


def _prepare(
    meshes: Sequence[Mesh],
    camera: tuple[float, float, float, float],
    height: int,
    width: int,
    *,
    with_normals: bool,
) -> _Prepared | None:
    """Validate the meshes, compute normals, near/far and the image region they project into.

    Returns ``None`` when nothing can be visible (no faces, or everything behind the camera).
    """
    fx, fy, cx, cy = camera
    positions: list[np.ndarray] = []
    normals: list[np.ndarray] = []
    faces_out: list[np.ndarray] = []
    labels: list[int] = []
    z_min, z_max = np.inf, -np.inf
    for index, (vertices, faces) in enumerate(meshes):
        v = np.ascontiguousarray(vertices, dtype=np.float32)
        f = np.asarray(faces)
        if v.ndim != 2 or v.shape[1] != 3:
            raise ValueError(f"mesh {index}: vertices must be (V, 3), got {v.shape}")
        if f.ndim != 2 or f.shape[1] != 3:
            raise ValueError(f"mesh {index}: faces must be (F, 3) triangles, got {f.shape}")
        if len(f) and not np.issubdtype(f.dtype, np.integer):
            raise ValueError(f"mesh {index}: faces must be integers, got {f.dtype}")
        if len(f) == 0 or len(v) == 0:
            continue
        if f.min() < 0 or f.max() >= len(v):
            raise ValueError(f"mesh {index}: face indices must lie in [0, {len(v)})")
        if not np.isfinite(v).all():
            raise ValueError(f"mesh {index}: vertices contain NaN or infinity")
        positions.append(v)
        normals.append(vertex_normals(v, f) if with_normals else np.empty((0, 3), np.float32))
        faces_out.append(np.ascontiguousarray(f, dtype=np.uint32))
        labels.append(index)
        z_min = min(z_min, float(v[:, 2].min()))
        z_max = max(z_max, float(v[:, 2].max()))
    if not positions or z_max <= 0:
        return None

    if z_min > 0:
        # Everything is in front of the camera: the planes hug the meshes (a precise depth
        # test), and each triangle projects inside the hull of its projected vertices, so the
        # vertices' bounding box bounds what can be drawn.
        near = z_min * 0.95
        all_v = np.concatenate(positions)
        u = fx * all_v[:, 0] / all_v[:, 2] + cx
        w = fy * all_v[:, 1] / all_v[:, 2] + cy
        # Pixel i covers [i - 0.5, i + 0.5); one more pixel of margin for the MSAA samples.
        x0 = int(np.clip(np.floor(u.min() - 0.5) - 1, 0, width))
        x1 = int(np.clip(np.ceil(u.max() + 0.5) + 1, 0, width))
        y0 = int(np.clip(np.floor(w.min() - 0.5) - 1, 0, height))
        y1 = int(np.clip(np.ceil(w.max() + 0.5) + 1, 0, height))
        if x1 <= x0 or y1 <= y0:
            return None
    else:
        # Some geometry is behind the camera: it is clipped at the near plane, and the
        # projection of the rest is unbounded, so the whole image is drawn.
        near = max(1e-3, z_max * 1e-4)
        x0, y0, x1, y1 = 0, 0, width, height
    far = z_max * 1.05 + 1e-3
    return _Prepared(positions, normals, faces_out, labels, near, far, (x0, y0, x1, y1))


def _check_image(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {img.shape} {img.dtype}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"image is empty: {img.shape}")
    return img


def _check_colors(
    colors: Sequence[Sequence[float]] | None, count: int
) -> list[tuple[float, float, float]]:
    given = DEFAULT_COLORS if colors is None else colors
    if not given:
        raise ValueError("colors must hold at least one colour (or be None for the palette)")
    palette: list[tuple[float, float, float]] = []
    for color in given:
        values = tuple(float(c) for c in color)
        if len(values) != 3 or not all(0.0 <= c <= 1.0 for c in values):
            raise ValueError(f"each colour must be 3 floats in [0, 1] (RGB), got {color!r}")
        palette.append((values[0], values[1], values[2]))
    return [palette[i % len(palette)] for i in range(count)]


def _tiles(region: tuple[int, int, int, int], tile: int) -> list[tuple[int, int, int, int]]:
    x0, y0, x1, y1 = region
    return [
        (tx, ty, min(tile, x1 - tx), min(tile, y1 - ty))
        for ty in range(y0, y1, tile)
        for tx in range(x0, x1, tile)
    ]


def round_up(value: int, step: int) -> int:
    return -(-value // step) * step


# --------------------------------------------------------------------------------------------
# The GL thread: one EGL context per process
# --------------------------------------------------------------------------------------------


class GLWorker:
    """Owns the process's moderngl context and runs every GL call on one dedicated thread."""

    _FBO_CACHE_SIZE = 4

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bodyserve-gl")
        self._ctx: Any = None
        self._error: RendererUnavailable | None = None
        self._programs: dict[str, Any] = {}
        self._max_side: int | None = None
        self._fbos: OrderedDict[tuple[Any, ...], tuple[Any, ...]] = OrderedDict()

    def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        return self._executor.submit(self._call, fn, *args).result()

    def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        ctx = self._context()
        return fn(self, ctx, *args)

    # -- GL thread only below ------------------------------------------------------------------

    def _context(self) -> Any:
        if self._ctx is not None:
            return self._ctx
        if self._error is not None:
            raise self._error
        try:
            self._ctx = moderngl.create_standalone_context(backend="egl")  # type: ignore[arg-type]
        except Exception as exc:
            self._error = RendererUnavailable(
                "cannot create a headless OpenGL context with EGL "
                f"({type(exc).__name__}: {exc}). Install Mesa's EGL and GL drivers "
                f"(Debian/Ubuntu: apt-get install {' '.join(EGL_PACKAGES)}) and the Python "
                "package moderngl; on an NVIDIA machine the driver's libEGL_nvidia works too."
            )
            raise self._error from exc
        return self._ctx

    def max_side(self, ctx: Any) -> int:
        """The largest framebuffer side the driver allows."""
        if self._max_side is None:
            info = ctx.info
            self._max_side = int(
                min(info["GL_MAX_RENDERBUFFER_SIZE"], *info["GL_MAX_VIEWPORT_DIMS"])
            )
        return self._max_side

    def program(self, ctx: Any, name: str, sources: tuple[str, str] | None = None) -> Any:
        """The compiled program ``name``, cached; other renderers pass their own ``sources``
        (vertex shader, fragment shader) to share this context."""
        if name not in self._programs:
            if sources is not None:
                prog = ctx.program(vertex_shader=sources[0], fragment_shader=sources[1])
            elif name == "shade":
                prog = ctx.program(
                    vertex_shader=_VERTEX_SHADER, fragment_shader=_SHADE_FRAGMENT_SHADER
                )
            else:
                prog = ctx.program(
                    vertex_shader=_LAYERS_VERTEX_SHADER, fragment_shader=_LAYERS_FRAGMENT_SHADER
                )
            self._programs[name] = prog
        return self._programs[name]

    def framebuffers(self, ctx: Any, kind: str, size: tuple[int, int], samples: int) -> Any:
        """Cached ``(render_fbo, read_fbo, gl_objects)``; one fbo serves both without MSAA.

        ``kind``: "shade" (RGBA8, multisampled), "layers" (2 float32) or "labels" (4 float32).
        """
        key = (kind, size, samples)
        if key in self._fbos:
            self._fbos.move_to_end(key)
            return self._fbos[key]
        objects: list[Any] = []
        if kind == "shade":
            color = ctx.renderbuffer(size, components=4, samples=samples, dtype="f1")
            depth = ctx.depth_renderbuffer(size, samples=samples)
            render_fbo = ctx.framebuffer(color_attachments=[color], depth_attachment=depth)
            objects += [render_fbo, color, depth]
            read_fbo = render_fbo
            if samples > 1:
                resolved = ctx.renderbuffer(size, components=4, dtype="f1")
                read_fbo = ctx.framebuffer(color_attachments=[resolved])
                objects += [read_fbo, resolved]
        else:
            # "layers": depth and mesh label; "labels" (the scene renderer): two more floats.
            components = 4 if kind == "labels" else 2
            values = ctx.renderbuffer(size, components=components, dtype="f4")
            depth = ctx.depth_renderbuffer(size)
            render_fbo = read_fbo = ctx.framebuffer(
                color_attachments=[values], depth_attachment=depth
            )
            objects += [render_fbo, values, depth]
        self._fbos[key] = (render_fbo, read_fbo, objects)
        while len(self._fbos) > self._FBO_CACHE_SIZE:
            _, (_, _, old) = self._fbos.popitem(last=False)
            for obj in old:
                obj.release()
        return self._fbos[key]

    def shutdown(self) -> None:
        def _release(worker: GLWorker, ctx: Any) -> None:
            for _, _, objects in worker._fbos.values():
                for obj in objects:
                    obj.release()
            worker._fbos.clear()
            for prog in worker._programs.values():
                prog.release()
            worker._programs.clear()
            ctx.release()
            worker._ctx = None

        if self._ctx is not None:
            self.run(_release)
        self._executor.shutdown(wait=True)


_worker: GLWorker | None = None
_worker_lock = threading.Lock()


def gl_worker() -> GLWorker:
    global _worker
    with _worker_lock:
        if _worker is None or _worker.pid != os.getpid():
            # After a fork the parent's thread and context do not exist here: start afresh.
            _worker = GLWorker()
        return _worker


# --------------------------------------------------------------------------------------------
# Drawing (run on the GL thread)
# --------------------------------------------------------------------------------------------


def _upload(
    ctx: Any, prog: Any, prep: _Prepared, with_normals: bool
) -> tuple[list[Any], list[Any]]:
    vaos: list[Any] = []
    buffers: list[Any] = []
    for i, (pos, faces) in enumerate(zip(prep.positions, prep.faces, strict=True)):
        vbo = ctx.buffer(pos.tobytes())
        ibo = ctx.buffer(faces.tobytes())
        content = [(vbo, "3f", "in_pos")]
        buffers += [vbo, ibo]
        if with_normals:
            nbo = ctx.buffer(prep.normals[i].tobytes())
            content.append((nbo, "3f", "in_normal"))
            buffers.append(nbo)
        vaos.append(ctx.vertex_array(prog, content, index_buffer=ibo, index_element_size=4))
    return vaos, buffers


def _draw_tiles(
    worker: GLWorker,
    ctx: Any,
    kind: str,
    prep: _Prepared,
    camera: tuple[float, float, float, float],
    colors: list[tuple[float, float, float]],
    samples: int,
    max_tile: int,
    ambient: float,
) -> np.ndarray:
    """Draw the prepared meshes over ``prep.region``, tile by tile, and read the result back.

    ``kind == "shade"``: (h, w, 4) uint8, premultiplied RGB and coverage alpha.
    ``kind == "layers"``: (h, w, 2) float32, depth in metres and mesh label + 1 (0: none).
    """

    fx, fy, cx, cy = camera
    x0, y0, x1, y1 = prep.region
    tile = min(max_tile, worker.max_side(ctx))
    # Round the framebuffer up so that images of similar sizes share one cached framebuffer.
    fbo_size = (min(tile, round_up(x1 - x0, 256)), min(tile, round_up(y1 - y0, 256)))
    samples = min(samples, ctx.max_samples) if kind == "shade" else 0
    samples = samples if samples > 1 else 0
    render_fbo, read_fbo, _ = worker.framebuffers(ctx, kind, fbo_size, samples)

    prog = worker.program(ctx, kind)
    vaos, buffers = _upload(ctx, prog, prep, with_normals=kind == "shade")
    try:
        if kind == "shade":
            out = np.empty((y1 - y0, x1 - x0, 4), np.uint8)
            prog["u_ambient"].value = ambient
        else:
            out = np.empty((y1 - y0, x1 - x0, 2), np.float32)
        prog["u_near_far"].value = (prep.near, prep.far)
        ctx.enable(moderngl.DEPTH_TEST)
        ctx.disable(moderngl.CULL_FACE | moderngl.BLEND)
        for tx, ty, tw, th in _tiles(prep.region, tile):
            render_fbo.use()
            render_fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
            ctx.viewport = (0, 0, tw, th)
            prog["u_intr"].value = (fx, fy, cx + 0.5 - tx, cy + 0.5 - ty)
            prog["u_size"].value = (float(tw), float(th))
            for vao, label in zip(vaos, prep.labels, strict=True):
                if kind == "shade":
                    prog["u_color"].value = colors[label]
                else:
                    prog["u_label"].value = float(label + 1)
                vao.render(moderngl.TRIANGLES)
            if read_fbo is not render_fbo:
                ctx.copy_framebuffer(read_fbo, render_fbo)  # resolve the multisampling
            # Framebuffer row 0 is image row ty (the NDC is y-down): no flip needed.
            block = np.empty((th, tw, out.shape[2]), out.dtype)
            read_fbo.read_into(
                block,
                viewport=(0, 0, tw, th),
                components=out.shape[2],
                alignment=1,
                dtype="f1" if kind == "shade" else "f4",
            )
            out[ty - y0 : ty - y0 + th, tx - x0 : tx - x0 + tw] = block
        return out
    finally:
        for obj in vaos + buffers:
            obj.release()


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


class MeshRenderer:
    """Renders meshes with a pinhole camera; every instance shares the process's EGL context.

    ``samples``: multisampling for the overlay's smooth edges (clamped to what the driver
    offers; 0 or 1 disables it). ``max_tile``: the largest framebuffer side; bigger images are
    drawn in tiles. ``ambient``: the share of light that does not depend on the surface angle.
    """

    def __init__(self, *, samples: int = 4, max_tile: int = 2048, ambient: float = 0.3) -> None:
        if max_tile < 16:
            raise ValueError(f"max_tile must be at least 16, got {max_tile}")
        if not 0.0 <= ambient <= 1.0:
            raise ValueError(f"ambient must lie in [0, 1], got {ambient}")
        self.samples = int(samples)
        self.max_tile = int(max_tile)
        self.ambient = float(ambient)

    @staticmethod
    def info() -> dict[str, Any]:
        """The OpenGL driver's description (creates the context if needed)."""
        return gl_worker().run(lambda worker, ctx: dict(ctx.info))

    def render_overlay(
        self,
        image: np.ndarray,
        meshes: Sequence[Mesh],
        camera: Camera,
        colors: Sequence[Sequence[float]] | None = None,
        alpha: float = 0.8,
    ) -> np.ndarray:
        """Shade ``meshes`` and blend them over ``image``; returns a new (H, W, 3) uint8 image.

        ``image``: (H, W, 3) uint8 RGB. ``meshes``: ``(vertices (V, 3), faces (F, 3))`` pairs in
        the OpenCV camera frame, metres. ``camera``: ``(fx, fy, cx, cy)`` in pixels of
        ``image``. ``colors``: RGB in [0, 1] per mesh, cycled (default: :data:`DEFAULT_COLORS`).
        ``alpha``: the meshes' opacity. Meshes occlude each other by depth; pixels no mesh
        covers keep the photo's exact values; edges are antialiased by multisampling.
        """
        img = _check_image(image)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        cam = check_camera(camera)
        height, width = img.shape[:2]
        palette = _check_colors(colors, len(meshes))
        out = img.copy()
        prep = _prepare(meshes, cam, height, width, with_normals=True)
        if prep is None or alpha == 0.0:
            return out
        rgba = gl_worker().run(
            _draw_tiles, "shade", prep, cam, palette, self.samples, self.max_tile, self.ambient
        )
        x0, y0, x1, y1 = prep.region
        # The colour is premultiplied by coverage (the background samples are transparent
        # black), so: out = photo * (1 - alpha * coverage) + alpha * colour.
        coverage = rgba[..., 3:].astype(np.float32) * np.float32(alpha / 255.0)
        photo = out[y0:y1, x0:x1].astype(np.float32)
        blended = photo * (1.0 - coverage) + rgba[..., :3].astype(np.float32) * np.float32(alpha)
        out[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        return out

    def render_layers(
        self, meshes: Sequence[Mesh], camera: Camera, *, height: int, width: int
    ) -> RenderLayers:
        """Which mesh each pixel centre sees, and the metric depth of that surface.

        Same conventions as :meth:`render_overlay`, for an image of ``height`` x ``width``
        pixels. ``mask`` is the index of the mesh in ``meshes`` (-1: background); ``depth`` is
        the camera-frame ``Z`` in metres (float32, 0 for background), exact to float32 (not
        read back from the depth buffer). No antialiasing: every label is exact.
        """
        cam = check_camera(camera)
        h, w = check_size(height, width)
        mask = np.full((h, w), -1, np.int32)
        depth = np.zeros((h, w), np.float32)
        prep = _prepare(meshes, cam, h, w, with_normals=False)
        if prep is None:
            return RenderLayers(mask, depth)
        values = gl_worker().run(
            _draw_tiles, "layers", prep, cam, [], 0, self.max_tile, self.ambient
        )
        x0, y0, x1, y1 = prep.region
        labels = np.rint(values[..., 1]).astype(np.int32)
        mask[y0:y1, x0:x1] = labels - 1
        depth[y0:y1, x0:x1] = np.where(labels > 0, values[..., 0], np.float32(0.0))
        return RenderLayers(mask, depth)

    @staticmethod
    def release() -> None:
        """Free the process's GL context and thread; the next render creates them again."""
        global _worker
        with _worker_lock:
            worker, _worker = _worker, None
        if worker is not None and worker.pid == os.getpid():
            worker.shutdown()


_default_renderer: MeshRenderer | None = None


def get_renderer() -> MeshRenderer:
    """The process's default :class:`MeshRenderer` (4x multisampling, 2048-pixel tiles)."""
    global _default_renderer
    if _default_renderer is None:
        _default_renderer = MeshRenderer()
    return _default_renderer


def render_overlay(
    image: np.ndarray,
    meshes: Sequence[Mesh],
    camera: Camera,
    colors: Sequence[Sequence[float]] | None = None,
    alpha: float = 0.8,
) -> np.ndarray:
    """:meth:`MeshRenderer.render_overlay` with the default renderer."""
    return get_renderer().render_overlay(image, meshes, camera, colors=colors, alpha=alpha)


def render_layers(
    meshes: Sequence[Mesh], camera: Camera, *, height: int, width: int
) -> RenderLayers:
    """:meth:`MeshRenderer.render_layers` with the default renderer."""
    return get_renderer().render_layers(meshes, camera, height=height, width=width)
