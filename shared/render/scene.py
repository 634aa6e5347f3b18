"""Synthetic scenes: shaded, textured bodies over a background, with exact per-pixel labels.

:func:`render_scene` draws one or more meshes (posed Anny bodies, usually) with a pinhole camera
and returns, from one EGL context and two passes over the same geometry:

- ``rgb`` (H, W, 3) uint8: the bodies shaded (Lambert, ambient and a little Blinn-Phong
  specular, 1 to 3 coloured directional lights, linear light then sRGB), with procedural fabric
  patterns, over the background; antialiased by supersampling (shaded at 2x the size and
  averaged down: on llvmpipe this costs less than 4x multisampling, and it smooths the
  patterns too), so edge pixels mix body and background in proportion to the covered area.
- ``mask`` (H, W) int32: index of the body seen through each pixel centre, -1 for background.
- ``depth`` (H, W) float32: camera-frame ``Z`` of that surface in metres, 0 for background;
  exact to float32 (written by the fragment shader, not read from the depth buffer).
- ``parts`` (H, W) uint8: the body part of the triangle seen (:mod:`shared.render.parts`),
  0 for background.
- ``face`` (H, W) int32: index of that triangle in its body's ``faces``, -1 for background (what
  :mod:`shared.render.label_check` checks the labels with).

``mask``, ``depth``, ``parts`` and ``face`` are sampled at pixel centres without antialiasing,
so each label is exactly what the mesh shows there. Conventions are those of
:mod:`shared.render.renderer`: vertices in the OpenCV camera frame (x right, y down, z ahead,
metres), ``camera = (fx, fy, cx, cy)`` in pixels with integer coordinates at pixel centres.
Wide or narrow fields of view are just intrinsics (:func:`camera_from_fov`); there is no lens
distortion.

Appearance is given per vertex (:class:`Material`, see :mod:`shared.render.appearance` for
the random skin, hair and clothing) and lighting per scene (:class:`Lighting`). Nothing here
draws random numbers: the samplers take a ``numpy.random.Generator``, so a seed reproduces an
image bit for bit (on the same driver).

This runs on the process's EGL context (llvmpipe on CPU machines, the NVIDIA driver on GPUs),
on the same GL thread as the overlays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import moderngl
import numpy as np

from shared.render.parts import face_parts
from shared.render.renderer import (
    Camera,
    GLWorker,
    check_camera,
    check_size,
    gl_worker,
    round_up,
    vertex_normals,
)

__all__ = [
    "PATTERNS",
    "Lighting",
    "Material",
    "SceneBody",
    "SceneImage",
    "camera_from_fov",
    "render_scene",
]

PATTERNS: Final[dict[str, int]] = {"plain": 0, "stripes": 1, "checks": 2, "dots": 3, "mottled": 4}
"""Procedural patterns of :attr:`Material.pattern` (its first column)."""

MAX_LIGHTS: Final[int] = 3

# Interleaved vertex layout: position, normal, base, accent, pattern, shine, coords (21 floats).
_LAYOUT: Final[str] = "3f 3f 3f 3f 4f 2f 3f"
_ATTRIBUTES: Final[tuple[str, ...]] = (
    "in_pos",
    "in_normal",
    "in_base",
    "in_accent",
    "in_pattern",
    "in_shine",
    "in_coords",
)
_FLOATS_PER_VERTEX: Final[int] = 21

# Clip coordinates straight from the intrinsics, as in shared.render.renderer (see there):
# window x = (fx X / Z + cx + 0.5) in pixels, y down, and w = Z, so 1 / gl_FragCoord.w = Z.
_CLIP = """
uniform vec4 u_intr;  // fx, fy, cx + 0.5, cy + 0.5
uniform vec2 u_size;  // width, height in pixels
uniform vec2 u_near_far;
vec4 clip_position(vec3 p) {
    float z = p.z;
    float xs = u_intr.x * p.x + u_intr.z * z;
    float ys = u_intr.y * p.y + u_intr.w * z;
    float n = u_near_far.x;
    float f = u_near_far.y;
    return vec4(2.0 * xs / u_size.x - z, 2.0 * ys / u_size.y - z,
                ((f + n) * z - 2.0 * f * n) / (f - n), z);
}
"""

_SCENE_VERTEX_SHADER = (
    "#version 330\n"
    + _CLIP
    + """
in vec3 in_pos;
in vec3 in_normal;
in vec3 in_base;
in vec3 in_accent;
in vec4 in_pattern;
in vec2 in_shine;
in vec3 in_coords;
out vec3 v_pos;
out vec3 v_normal;
out vec3 v_base;
out vec3 v_accent;
flat out vec4 v_pattern;
flat out vec2 v_shine;
out vec3 v_coords;
void main() {
    gl_Position = clip_position(in_pos);
    v_pos = in_pos;
    v_normal = in_normal;
    v_base = in_base;
    v_accent = in_accent;
    v_pattern = in_pattern;
    v_shine = in_shine;
    v_coords = in_coords;
}
"""
)

_SCENE_FRAGMENT_SHADER = """
#version 330
uniform vec3 u_ambient;
uniform int u_light_count;
uniform vec3 u_light_dir[3];  // unit, from the surface towards the light, camera frame
uniform vec3 u_light_rgb[3];  // linear RGB radiance
in vec3 v_pos;
in vec3 v_normal;
in vec3 v_base;  // interpolated: a garment's border is a one-triangle blend, like a hem
in vec3 v_accent;
flat in vec4 v_pattern;  // kind, cycles per metre, azimuth, elevation
flat in vec2 v_shine;    // specular strength, exponent
in vec3 v_coords;
out vec4 f_color;

// Box-filtered square wave (50% duty) over a footprint of width w: antialiased stripes.
float square_integral(float t) { return floor(t) * 0.5 + max(fract(t) - 0.5, 0.0); }
float square(float t) {
    float w = max(fwidth(t), 1e-4);
    return (square_integral(t + 0.5 * w) - square_integral(t - 0.5 * w)) / w;
}
float hash(vec3 p) {
    p = fract(p * 0.1031);
    p += dot(p, p.yzx + 33.33);
    return fract((p.x + p.y) * p.z);
}
float value_noise(vec3 p) {
    vec3 i = floor(p);
    vec3 f = fract(p);
    f = f * f * (3.0 - 2.0 * f);
    float a = mix(mix(hash(i), hash(i + vec3(1, 0, 0)), f.x),
                  mix(hash(i + vec3(0, 1, 0)), hash(i + vec3(1, 1, 0)), f.x), f.y);
    float b = mix(mix(hash(i + vec3(0, 0, 1)), hash(i + vec3(1, 0, 1)), f.x),
                  mix(hash(i + vec3(0, 1, 1)), hash(i + vec3(1, 1, 1)), f.x), f.y);
    return mix(a, b, f.z);
}
float pattern_mix() {
    int kind = int(v_pattern.x + 0.5);
    if (kind == 0) return 0.0;
    float ca = cos(v_pattern.z), sa = sin(v_pattern.z);
    float ce = cos(v_pattern.w), se = sin(v_pattern.w);
    vec3 dir = vec3(ca * ce, sa * ce, se);
    vec3 p = v_coords * v_pattern.y;
    if (kind == 1) return square(dot(p, dir));
    if (kind == 2) {
        vec3 side = normalize(cross(dir, abs(dir.z) < 0.9 ? vec3(0, 0, 1) : vec3(1, 0, 0)));
        float a = square(dot(p, dir));
        float b = square(dot(p, side));
        return a + b - 2.0 * a * b;
    }
    if (kind == 3) {
        float d = length(fract(p) - 0.5);
        float w = max(fwidth(d), 1e-4);
        return 1.0 - smoothstep(0.22 - w, 0.22 + w, d);
    }
    return value_noise(p) * 0.65 + value_noise(p * 2.7 + 11.0) * 0.35;
}
void main() {
    vec3 view = normalize(-v_pos);
    float len_n = length(v_normal);
    vec3 n = len_n > 1e-12 ? v_normal / len_n : view;
    if (dot(n, view) < 0.0) n = -n;  // two-sided: the inside of a mouth or an eyelid
    vec3 albedo = mix(v_base, v_accent, clamp(pattern_mix(), 0.0, 1.0));
    vec3 rgb = u_ambient * albedo;
    for (int i = 0; i < u_light_count; ++i) {
        vec3 l = u_light_dir[i];
        float d = dot(n, l);
        if (d > 0.0) {
            vec3 h = normalize(l + view);
            float s = v_shine.x * pow(max(dot(n, h), 0.0), v_shine.y);
            rgb += u_light_rgb[i] * (albedo * d + vec3(s));
        }
    }
    rgb = clamp(rgb, 0.0, 1.0);
    // Linear light to sRGB.
    vec3 srgb = mix(rgb * 12.92, 1.055 * pow(rgb, vec3(1.0 / 2.4)) - 0.055, step(0.0031308, rgb));
    f_color = vec4(srgb, 1.0);
}
"""

_LABELS_VERTEX_SHADER = (
    "#version 330\n"
    + _CLIP
    + """
in vec3 in_pos;
void main() {
    gl_Position = clip_position(in_pos);
}
"""
)

_LABELS_FRAGMENT_SHADER = """
#version 330
uniform float u_label;
out vec4 f_out;
void main() {
    // Camera-frame Z (1 / w, interpolated exactly), body index + 1, triangle index.
    f_out = vec4(1.0 / gl_FragCoord.w, u_label, float(gl_PrimitiveID), 0.0);
}
"""


@dataclass(frozen=True)
class Material:
    """Per-vertex surface appearance; every array is float32 with one row per vertex.

    The albedo at a surface point is ``mix(base, accent, pattern(coords))``, in linear RGB
    (sRGB colours must be linearised first: :func:`shared.render.appearance.srgb_to_linear`).
    ``pattern`` columns: kind (:data:`PATTERNS`), frequency in cycles per metre of ``coords``,
    and the azimuth and elevation (radians) of the stripes' normal (checks: of one of their
    two axes). Pattern and shine are constant over each triangle (its last vertex's value);
    colours are interpolated (flat colours would give saw-toothed hairlines and necklines).
    ``coords`` are where patterns are evaluated: the rest-pose vertices make patterns stick to
    the body when it moves.
    """

    base: np.ndarray  # (V, 3) linear RGB in [0, 1]
    accent: np.ndarray  # (V, 3) linear RGB in [0, 1]
    pattern: np.ndarray  # (V, 4)
    shine: np.ndarray  # (V, 2) specular strength (0..1), Blinn-Phong exponent
    coords: np.ndarray  # (V, 3) metres

    @classmethod
    def plain(
        cls, vertex_count: int, rgb: Sequence[float], coords: np.ndarray | None = None
    ) -> Material:
        """One linear-RGB colour everywhere, no pattern, a faint highlight."""
        color = np.broadcast_to(np.asarray(rgb, np.float32), (vertex_count, 3))
        return cls(
            base=color.copy(),
            accent=color.copy(),
            pattern=np.zeros((vertex_count, 4), np.float32),
            shine=np.tile(np.array([[0.05, 16.0]], np.float32), (vertex_count, 1)),
            coords=np.zeros((vertex_count, 3), np.float32) if coords is None else coords,
        )

    def packed(self, vertex_count: int, index: int) -> np.ndarray:
        """(V, 15) float32: base, accent, pattern, shine, coords (validated)."""
        columns = {"base": 3, "accent": 3, "pattern": 4, "shine": 2, "coords": 3}
        arrays = []
        for name, width in columns.items():
            value = np.asarray(getattr(self, name), dtype=np.float32)
            if value.shape != (vertex_count, width):
                raise ValueError(
                    f"body {index}: material.{name} must be ({vertex_count}, {width}), "
                    f"got {value.shape}"
                )
            if not np.isfinite(value).all():
                raise ValueError(f"body {index}: material.{name} contains NaN or infinity")
            arrays.append(value)
        return np.concatenate(arrays, axis=1)


@dataclass(frozen=True)
class Lighting:
    """Ambient light plus 1 to :data:`MAX_LIGHTS` directional lights, in linear RGB.

    ``directions`` (L, 3): unit vectors from the surface towards each light, in the camera frame
    (OpenCV: a light beside the camera, above it, is about ``(0, -0.5, -0.87)``).
    ``colors`` (L, 3): each light's radiance (colour times intensity; 1 lights a white surface
    facing it to full white).
    """

    ambient: np.ndarray  # (3,)
    directions: np.ndarray  # (L, 3)
    colors: np.ndarray  # (L, 3)

    @classmethod
    def headlight(cls, intensity: float = 0.8, ambient: float = 0.25) -> Lighting:
        """A white light at the camera and a grey ambient (plain, for tests and previews)."""
        return cls(
            ambient=np.full(3, ambient, np.float32),
            directions=np.array([[0.0, 0.0, -1.0]], np.float32),
            colors=np.full((1, 3), intensity, np.float32),
        )

    def uniforms(self) -> tuple[tuple[float, ...], int, list[float], list[float]]:
        """Validated (ambient, light count, directions flat, colours flat) for the shader."""
        ambient = np.asarray(self.ambient, np.float64)
        directions = np.asarray(self.directions, np.float64).reshape(-1, 3)
        colors = np.asarray(self.colors, np.float64).reshape(-1, 3)
        if ambient.shape != (3,) or not np.isfinite(ambient).all() or (ambient < 0).any():
            raise ValueError(f"lighting.ambient must be 3 finite values >= 0, got {ambient}")
        count = len(directions)
        if not 1 <= count <= MAX_LIGHTS or colors.shape != directions.shape:
            raise ValueError(
                f"lighting needs 1 to {MAX_LIGHTS} directions and as many colours, got "
                f"{directions.shape[0]} directions and {colors.shape[0]} colours"
            )
        if not (np.isfinite(directions).all() and np.isfinite(colors).all()) or (colors < 0).any():
            raise ValueError("lighting directions and colours must be finite, colours >= 0")
        lengths = np.linalg.norm(directions, axis=1, keepdims=True)
        if (lengths < 1e-9).any():
            raise ValueError("lighting directions must be non-zero vectors")
        unit = directions / lengths
        pad = MAX_LIGHTS - count
        flat_dirs = np.concatenate([unit, np.zeros((pad, 3))]).ravel().tolist()
        flat_colors = np.concatenate([colors, np.zeros((pad, 3))]).ravel().tolist()
        return tuple(ambient.tolist()), count, flat_dirs, flat_colors


@dataclass(frozen=True)
class SceneBody:
    """One mesh to draw: vertices in the OpenCV camera frame (metres), triangles, a part id per
    vertex (:mod:`shared.render.parts`; 0 for none) and its per-vertex material.

    ``closed``: the mesh is closed (watertight pieces) with outward normals by the right-hand
    rule, as Anny's is. Then, for a camera outside it, the surface seen through any pixel faces
    the camera, so back faces are skipped: the same image and labels, about 30 % less GL time
    on llvmpipe. Leave it False for open or inconsistently wound meshes.
    """

    vertices: np.ndarray  # (V, 3)
    faces: np.ndarray  # (F, 3) int
    vertex_parts: np.ndarray  # (V,) uint8
    material: Material
    closed: bool = False


class SceneImage(NamedTuple):
    """One rendered scene: the image and its exact labels (see the module's docstring)."""

    rgb: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) int32, -1 background
    depth: np.ndarray  # (H, W) float32 metres, 0 background
    parts: np.ndarray  # (H, W) uint8, 0 background
    face: np.ndarray  # (H, W) int32, -1 background


def camera_from_fov(
    width: int, height: int, fov_deg: float, *, axis: str = "horizontal"
) -> tuple[float, float, float, float]:
    """Pinhole intrinsics ``(fx, fy, cx, cy)`` with square pixels, the principal point at the
    image centre (``(W - 1) / 2``, pixel centres at integers) and ``fov_deg`` across the given
    axis ("horizontal", "vertical" or "diagonal")."""
    w, h = check_size(height, width)[::-1]
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg must lie in (0, 180), got {fov_deg}")
    span = {"horizontal": w, "vertical": h, "diagonal": math.hypot(w, h)}.get(axis)
    if span is None:
        raise ValueError(f"axis must be horizontal, vertical or diagonal, got {axis!r}")
    focal = 0.5 * span / math.tan(math.radians(fov_deg) / 2.0)
    return focal, focal, (w - 1) / 2.0, (h - 1) / 2.0


@dataclass(frozen=True)
class _PackedBody:
    interleaved: np.ndarray  # (V, 21) float32
    faces: np.ndarray  # (F, 3) uint32
    face_parts: np.ndarray  # (F,) uint8
    closed: bool


def _pack(bodies: Sequence[SceneBody]) -> tuple[list[_PackedBody], float, float]:
    """Validate every body, compute normals, interleave; near/far planes for the depth test."""
    packed: list[_PackedBody] = []
    z_min, z_max = np.inf, -np.inf
    for index, body in enumerate(bodies):
        v = np.ascontiguousarray(body.vertices, dtype=np.float32)
        f = np.asarray(body.faces)
        if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0:
            raise ValueError(f"body {index}: vertices must be (V, 3) with V > 0, got {v.shape}")
        if f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
            raise ValueError(f"body {index}: faces must be (F, 3) triangles, got {f.shape}")
        if not np.issubdtype(f.dtype, np.integer):
            raise ValueError(f"body {index}: faces must be integers, got {f.dtype}")
        if f.min() < 0 or f.max() >= len(v):
            raise ValueError(f"body {index}: face indices must lie in [0, {len(v)})")
        if not np.isfinite(v).all():
            raise ValueError(f"body {index}: vertices contain NaN or infinity")
        parts = np.asarray(body.vertex_parts)
        if parts.shape != (len(v),) or not np.issubdtype(parts.dtype, np.integer):
            raise ValueError(f"body {index}: vertex_parts must be ({len(v)},) integers")
        if len(parts) and (parts.min() < 0 or parts.max() > 255):
            raise ValueError(f"body {index}: vertex_parts must lie in [0, 255]")
        interleaved = np.empty((len(v), _FLOATS_PER_VERTEX), np.float32)
        interleaved[:, 0:3] = v
        interleaved[:, 3:6] = vertex_normals(v, f)
        interleaved[:, 6:] = body.material.packed(len(v), index)
        packed.append(
            _PackedBody(
                interleaved=interleaved,
                faces=np.ascontiguousarray(f, dtype=np.uint32),
                face_parts=face_parts(f, parts),
                closed=bool(body.closed),
            )
        )
        z_min = min(z_min, float(v[:, 2].min()))
        z_max = max(z_max, float(v[:, 2].max()))
    if not packed or z_max <= 0:
        return packed, 0.0, 0.0
    # The planes hug the meshes (a precise depth test); geometry behind the camera is clipped.
    near = z_min * 0.95 if z_min > 0 else max(1e-3, z_max * 1e-4)
    return packed, near, z_max * 1.05 + 1e-3


def _draw_scene(
    worker: GLWorker,
    ctx: Any,
    bodies: list[_PackedBody],
    camera: tuple[float, float, float, float],
    size: tuple[int, int],
    near_far: tuple[float, float],
    light: tuple[tuple[float, ...], int, list[float], list[float]],
    supersample: int,
) -> tuple[np.ndarray, np.ndarray]:
    """On the GL thread: the shaded pass at ``supersample`` times the size ((sH, sW, 4) RGBA8,
    alpha 255 where a body is drawn) and the labels pass ((H, W, 4) float32: depth, body + 1,
    triangle index, 0)."""

    width, height = size
    big = (width * supersample, height * supersample)
    if max(big) > worker.max_side(ctx):
        raise ValueError(
            f"image {width}x{height} supersampled {supersample}x exceeds the driver's largest "
            f"framebuffer side ({worker.max_side(ctx)} pixels): lower supersample or the size"
        )
    # Framebuffers rounded up, so that similar sizes share one cached framebuffer.
    shade_fbo, _, _ = worker.framebuffers(
        ctx, "shade", (round_up(big[0], 64), round_up(big[1], 64)), 0
    )
    labels_fbo, _, _ = worker.framebuffers(
        ctx, "labels", (round_up(width, 64), round_up(height, 64)), 0
    )
    scene = worker.program(ctx, "scene", (_SCENE_VERTEX_SHADER, _SCENE_FRAGMENT_SHADER))
    labels = worker.program(ctx, "scene_labels", (_LABELS_VERTEX_SHADER, _LABELS_FRAGMENT_SHADER))

    fx, fy, cx, cy = camera
    s = float(supersample)
    # Pixel i of the image covers [i - 0.5, i + 0.5): in the s-times larger image the point x
    # lands at s (x + 0.5) - 0.5, so the intrinsics scale with the window offset included.
    scene["u_intr"].value = (s * fx, s * fy, s * (cx + 0.5), s * (cy + 0.5))
    scene["u_size"].value = (float(big[0]), float(big[1]))
    labels["u_intr"].value = (fx, fy, cx + 0.5, cy + 0.5)
    labels["u_size"].value = (float(width), float(height))
    for prog in (scene, labels):
        prog["u_near_far"].value = near_far
    ambient, count, directions, colors = light
    scene["u_ambient"].value = ambient
    scene["u_light_count"].value = count
    scene["u_light_dir"].write(np.asarray(directions, np.float32).tobytes())
    scene["u_light_rgb"].write(np.asarray(colors, np.float32).tobytes())

    objects: list[Any] = []
    try:
        shaded_vaos, label_vaos = [], []
        for body in bodies:
            vbo = ctx.buffer(body.interleaved.tobytes())
            ibo = ctx.buffer(body.faces.tobytes())
            objects += [vbo, ibo]
            shaded_vaos.append(
                ctx.vertex_array(
                    scene, [(vbo, _LAYOUT, *_ATTRIBUTES)], index_buffer=ibo, index_element_size=4
                )
            )
            # The labels pass reads the positions only, skipping the other 18 floats.
            label_vaos.append(
                ctx.vertex_array(
                    labels, [(vbo, "3f 72x", "in_pos")], index_buffer=ibo, index_element_size=4
                )
            )
        objects += shaded_vaos + label_vaos
        ctx.enable(moderngl.DEPTH_TEST)
        ctx.disable(moderngl.CULL_FACE | moderngl.BLEND)
        # With the y-down clip space, a triangle facing the camera (outward right-hand normal
        # towards it) winds clockwise on screen.
        ctx.front_face = "cw"

        def draw(vao: Any, body: _PackedBody) -> None:
            if body.closed:
                ctx.enable(moderngl.CULL_FACE)
            else:
                ctx.disable(moderngl.CULL_FACE)
            vao.render(moderngl.TRIANGLES)

        shade_fbo.use()
        shade_fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        ctx.viewport = (0, 0, *big)
        for vao, body in zip(shaded_vaos, bodies, strict=True):
            draw(vao, body)
        rgba = np.empty((big[1], big[0], 4), np.uint8)
        shade_fbo.read_into(rgba, viewport=(0, 0, *big), components=4, alignment=1, dtype="f1")

        labels_fbo.use()
        labels_fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        ctx.viewport = (0, 0, width, height)
        for index, (vao, body) in enumerate(zip(label_vaos, bodies, strict=True)):
            labels["u_label"].value = float(index + 1)
            draw(vao, body)
        values = np.empty((height, width, 4), np.float32)
        labels_fbo.read_into(
            values, viewport=(0, 0, width, height), components=4, alignment=1, dtype="f4"
        )
        return rgba, values
    finally:
        ctx.disable(moderngl.CULL_FACE)
        ctx.front_face = "ccw"  # GL's default, as the overlay renderer expects
        for obj in objects:
            obj.release()


def _check_background(background: np.ndarray | None, height: int, width: int) -> np.ndarray:
    if background is None:
        return np.zeros((height, width, 3), np.uint8)
    bg = np.asarray(background)
    if bg.shape != (height, width, 3) or bg.dtype != np.uint8:
        raise ValueError(
            f"background must be ({height}, {width}, 3) uint8 RGB, got {bg.shape} {bg.dtype}"
        )
    return bg


def render_scene(
    bodies: Sequence[SceneBody],
    camera: Camera,
    *,
    height: int,
    width: int,
    lighting: Lighting | None = None,
    background: np.ndarray | None = None,
    supersample: int = 2,
) -> SceneImage:
    """Draw ``bodies`` over ``background`` and label every pixel (see the module's docstring).

    Args:
        bodies: the meshes, each with vertices in the OpenCV camera frame; they occlude each
            other by depth; ``mask`` holds their index in this sequence.
        camera: ``(fx, fy, cx, cy)`` in pixels (:func:`camera_from_fov`).
        height, width: the image size in pixels.
        lighting: default :meth:`Lighting.headlight`.
        background: (H, W, 3) uint8 RGB; default black.
        supersample: the RGB is shaded at this many times the size and averaged down
            (antialiased edges and patterns); 1: no antialiasing.
    """
    cam = check_camera(camera)
    h, w = check_size(height, width)
    if not 1 <= int(supersample) <= 4 or int(supersample) != supersample:
        raise ValueError(f"supersample must be an integer in [1, 4], got {supersample}")
    factor = int(supersample)
    bg = _check_background(background, h, w)
    light = (lighting or Lighting.headlight()).uniforms()
    packed, near, far = _pack(bodies)

    mask = np.full((h, w), -1, np.int32)
    depth = np.zeros((h, w), np.float32)
    parts = np.zeros((h, w), np.uint8)
    face = np.full((h, w), -1, np.int32)
    if not packed or far <= 0 or near >= far:
        return SceneImage(bg.copy(), mask, depth, parts, face)
    rgba, values = gl_worker().run(_draw_scene, packed, cam, (w, h), (near, far), light, factor)

    # Average each s x s block: colour summed over the covered samples (the cleared ones are
    # transparent black), coverage = the share of covered samples; then
    # out = background * (1 - coverage) + colour (premultiplied).
    # (Adding the s * s strided views is ~10x faster than a reduction over the block axes.)
    wide = rgba.astype(np.uint16)
    blocks = wide[::factor, ::factor].copy()
    for i in range(factor):
        for j in range(factor):
            if i or j:
                blocks += wide[i::factor, j::factor]
    scale = np.float32(1.0 / (factor * factor))
    coverage = blocks[..., 3:].astype(np.float32) * (scale / np.float32(255.0))
    colour = blocks[..., :3].astype(np.float32) * scale
    blended = bg.astype(np.float32) * (1.0 - coverage) + colour
    rgb = np.clip(np.rint(blended), 0, 255).astype(np.uint8)

    label = np.rint(values[..., 1]).astype(np.int32)
    covered = label > 0
    mask[covered] = label[covered] - 1
    depth[covered] = values[..., 0][covered]
    face[covered] = np.rint(values[..., 2][covered]).astype(np.int32)
    for index, body in enumerate(packed):
        mine = mask == index
        parts[mine] = body.face_parts[face[mine]]
    return SceneImage(rgb, mask, depth, parts, face)
