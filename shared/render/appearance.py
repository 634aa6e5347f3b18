"""Random appearance for synthetic people: skin, hair, eyes, clothing-like albedo and lighting.

Everything is drawn from a ``numpy.random.Generator``, in a fixed order, so one seed gives one
appearance. Colours are defined in sRGB (as palettes are published) and handed to the renderer
in linear RGB (:func:`srgb_to_linear`), where the shading happens.

- Skin: a continuous position on the Monk Skin Tone scale (10 tones from very light to very
  dark, Google and Ellis Monk, CC BY 4.0), interpolated in linear RGB, with a small random cast
  and a faint mottled variation.
- Hair: a natural colour (black, browns, blondes, auburn, red, grey, white) over a random
  hairline on the head (or none: shaved); eyes get a sclera, an iris colour and a pupil; the
  inside of the mouth is dark red.
- Clothing: a top (sleeveless to long-sleeved, random neckline; sometimes a one-piece with the
  bottoms, a crop top, or none), bottoms (shorts to long trousers; often denim), shoes (low to
  boots; sometimes barefoot). Garment borders are placed along Anny's bones (the sleeve's end
  at a fraction of the arm between shoulder, elbow and wrist), so they follow any pose and
  phenotype. Each garment gets a colour (neutrals or any hue), and a procedural pattern
  (plain, stripes, checks, dots, mottled) with a second colour.
- Lighting: ambient plus 1 to 3 directional lights, the key light from the camera's side and
  mostly from above, colour temperatures from 2700 K to 10000 K (sometimes a tinted light).
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final, Protocol

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from shared.bodies.anny_model import get_anny
from shared.render.parts import PART_IDS, anny_vertex_parts
from shared.render.scene import MAX_LIGHTS, PATTERNS, Lighting, Material

__all__ = [
    "HAIR_COLORS",
    "SKIN_TONES",
    "AnnyRegions",
    "LightingRanges",
    "anny_regions",
    "sample_anny_material",
    "sample_lighting",
    "skin_tone",
    "srgb_to_linear",
]

# The Monk Skin Tone scale, MST-01 (lightest) to MST-10 (darkest), sRGB.
SKIN_TONES: Final[tuple[str, ...]] = (
    "#f6ede4",
    "#f3e7db",
    "#f7ead0",
    "#eadaba",
    "#d7bd96",
    "#a07e56",
    "#825c43",
    "#604134",
    "#3a312a",
    "#292420",
)

# Natural hair colours (sRGB) and how often they are drawn.
HAIR_COLORS: Final[tuple[tuple[str, str, float], ...]] = (
    ("black", "#16130f", 0.30),
    ("dark_brown", "#3b2a1f", 0.22),
    ("brown", "#5e4331", 0.14),
    ("light_brown", "#8a6a4c", 0.08),
    ("dark_blonde", "#a8885c", 0.06),
    ("blonde", "#d1b27a", 0.06),
    ("auburn", "#6b2e1c", 0.04),
    ("red", "#a34a26", 0.03),
    ("grey", "#8c8985", 0.04),
    ("white", "#d8d5cf", 0.03),
)

_IRIS_COLORS: Final[tuple[str, ...]] = ("#3d2314", "#5b3a1e", "#6f5b3a", "#4a6b8a", "#6d8fa8")
_SCLERA: Final[str] = "#e4ddd3"
_PUPIL: Final[str] = "#0c0c0c"
_MOUTH: Final[str] = "#5a2420"

# Garment neutrals (sRGB): black, white, greys, navy, beige, khaki, brown, olive, burgundy.
_NEUTRALS: Final[tuple[str, ...]] = (
    "#151515",
    "#f2f2ef",
    "#4a4a4a",
    "#9a9a9a",
    "#1f2a44",
    "#d8c8a8",
    "#b5a27a",
    "#5a4030",
    "#4b5320",
    "#6b1f2a",
)
_DENIM: Final[tuple[str, ...]] = ("#1e2c4a", "#2f4a72", "#5877a0", "#20252c")

# Blackbody colours (sRGB, normalised) by temperature in kelvin.
_KELVIN: Final[tuple[float, ...]] = (2700.0, 3500.0, 4500.0, 5500.0, 6500.0, 8000.0, 10000.0)
_KELVIN_RGB: Final[tuple[tuple[float, float, float], ...]] = (
    (1.000, 0.655, 0.341),
    (1.000, 0.757, 0.553),
    (1.000, 0.855, 0.737),
    (1.000, 0.925, 0.878),
    (1.000, 0.976, 0.992),
    (0.890, 0.914, 1.000),
    (0.788, 0.855, 1.000),
)


def srgb_to_linear(srgb: np.ndarray | tuple[float, ...]) -> np.ndarray:
    """sRGB in [0, 1] -> linear RGB (the IEC 61966-2-1 transfer function), float32."""
    c = np.clip(np.asarray(srgb, dtype=np.float64), 0.0, 1.0)
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return linear.astype(np.float32)


def _hex(color: str) -> np.ndarray:
    """'#rrggbb' -> sRGB floats in [0, 1]."""
    return np.array([int(color[i : i + 2], 16) / 255.0 for i in (1, 3, 5)])


def skin_tone(position: float) -> np.ndarray:
    """Linear RGB of a point on the Monk scale: 0 = MST-01 (lightest) ... 9 = MST-10."""
    if not 0.0 <= position <= len(SKIN_TONES) - 1:
        raise ValueError(f"skin tone position must lie in [0, {len(SKIN_TONES) - 1}]")
    tones = np.stack([srgb_to_linear(_hex(c)) for c in SKIN_TONES])
    low = min(math.floor(position), len(SKIN_TONES) - 2)
    t = position - low
    return np.asarray((1.0 - t) * tones[low] + t * tones[low + 1], np.float32)


# --------------------------------------------------------------------------------------------
# Where garments go on Anny: per-vertex coordinates along the limbs, from the rest template
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnnyRegions:
    """Per-vertex geometry of Anny's rest template (Z up, facing -Y, metres) for dressing it.

    ``arm``: 0 at the shoulder, 1 at the elbow, 2 at the wrist, beyond 2 on the hand; -1 off
    the arms. ``leg``: 0 at the hip, 1 at the knee, 2 at the ankle, beyond on the foot; -1 off
    the legs. ``eye_cos``: on the eyeballs, the cosine of the angle between the vertex and the
    eye's forward axis (seen from the eyeball's centre); -1 elsewhere.
    """

    parts: np.ndarray  # (V,) uint8
    coords: np.ndarray  # (V, 3) float32 template vertices
    arm: np.ndarray  # (V,) float32
    leg: np.ndarray  # (V,) float32
    eye_cos: np.ndarray  # (V,) float32
    eye: np.ndarray  # (V,) bool: the eyeballs (closed meshes of their own)
    mouth: np.ndarray  # (V,) bool: the inside of the mouth (its own closed mesh)
    neck_z: float  # base of the neck (template Z)
    hip_z: float  # the hip joints' height


def _limb_coordinate(points: np.ndarray, chain: list[np.ndarray]) -> np.ndarray:
    """Position along a chain of joints (0 at the first, 1 at the second...), by projecting
    onto the nearest segment; continues past the last joint along the last segment."""
    best = np.full(len(points), np.inf)
    coordinate = np.zeros(len(points))
    last = len(chain) - 2
    for i in range(len(chain) - 1):
        a, b = chain[i], chain[i + 1]
        axis = b - a
        t = np.clip((points - a) @ axis / (axis @ axis), 0.0, None if i == last else 1.0)
        distance = np.linalg.norm(points - (a + t[:, None] * axis), axis=1)
        closer = distance < best
        best[closer] = distance[closer]
        coordinate[closer] = i + t[closer]
    return coordinate


@lru_cache(maxsize=1)
def anny_regions() -> AnnyRegions:
    """The regions of Anny's mesh (computed once per process from the loaded model)."""

    body = get_anny()
    model = body.model
    coords = model.template_vertices.detach().cpu().numpy().astype(np.float64)
    heads = model.template_bone_heads.detach().cpu().numpy().astype(np.float64)
    parts = anny_vertex_parts()
    count = len(coords)

    def head(bone: str) -> np.ndarray:
        return np.asarray(heads[body.bone(bone)])

    arm = np.full(count, -1.0)
    leg = np.full(count, -1.0)
    for side, name in (("L", "left"), ("R", "right")):
        arm_parts = [PART_IDS[f"{name}_{p}"] for p in ("upper_arm", "lower_arm", "hand")]
        on_arm = np.isin(parts, arm_parts)
        arm_chain = [head(f"upperarm01.{side}"), head(f"lowerarm01.{side}"), head(f"wrist.{side}")]
        arm[on_arm] = _limb_coordinate(coords[on_arm], arm_chain)
        leg_parts = [PART_IDS[f"{name}_{p}"] for p in ("upper_leg", "lower_leg", "foot")]
        on_leg = np.isin(parts, leg_parts)
        leg_chain = [head(f"upperleg01.{side}"), head(f"lowerleg01.{side}"), head(f"foot.{side}")]
        leg[on_leg] = _limb_coordinate(coords[on_leg], leg_chain)

    # The mesh is the body plus three closed pieces inside the head: two eyeballs and the
    # inside of the mouth.
    faces = body.faces
    edges = coo_matrix(
        (np.ones(faces.size), (faces.ravel(), np.roll(faces, 1, axis=1).ravel())),
        shape=(count, count),
    )
    _, component = connected_components(edges, directed=False)
    sizes = np.bincount(component)
    main = int(np.argmax(sizes))
    eye_cos = np.full(count, -1.0)
    eye = np.zeros(count, bool)
    mouth = np.zeros(count, bool)
    eye_bones = [body.bone("eye.L"), body.bone("eye.R")]
    skin = np.zeros((count, len(body.bone_labels)))
    np.add.at(
        skin,
        (np.arange(count)[:, None], model.vertex_bone_indices.cpu().numpy()),
        model.vertex_bone_weights.cpu().numpy(),
    )
    for c in range(len(sizes)):
        if c == main:
            continue
        members = component == c
        if skin[members][:, eye_bones].sum(axis=1).mean() > 0.5:
            centre = coords[members].mean(axis=0)
            direction = coords[members] - centre
            direction /= np.linalg.norm(direction, axis=1, keepdims=True)
            eye_cos[members] = -direction[:, 1]  # forward is -Y in Anny's world
            eye |= members
        else:
            mouth[members] = True

    return AnnyRegions(
        parts=parts,
        coords=coords.astype(np.float32),
        arm=arm.astype(np.float32),
        leg=leg.astype(np.float32),
        eye_cos=eye_cos.astype(np.float32),
        eye=eye,
        mouth=mouth,
        neck_z=float(head("neck01")[2]),
        hip_z=float(head("upperleg01.L")[2]),
    )


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Style:
    """One surface's look: linear colours, pattern (kind, cycles/m, azimuth, elevation), shine."""

    base: np.ndarray
    accent: np.ndarray
    pattern: tuple[float, float, float, float]
    shine: tuple[float, float]


def _random_garment_color(rng: np.random.Generator) -> np.ndarray:
    """sRGB: a neutral (45 %) or any hue, mostly not fully saturated."""
    if rng.random() < 0.45:
        base = _hex(_NEUTRALS[rng.integers(len(_NEUTRALS))])
        return np.asarray(np.clip(base * rng.uniform(0.85, 1.15, 3), 0.0, 1.0))
    hue, saturation, value = rng.random(), rng.uniform(0.25, 0.9), rng.uniform(0.2, 0.95)
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value))


# Fabric patterns: how often each is drawn, and its frequency range in cycles per metre.
_PATTERN_ODDS: Final[dict[str, tuple[float, tuple[float, float]]]] = {
    "plain": (0.45, (0.0, 0.0)),
    "stripes": (0.2, (8.0, 40.0)),
    "checks": (0.1, (6.0, 25.0)),
    "dots": (0.1, (10.0, 30.0)),
    "mottled": (0.15, (10.0, 60.0)),
}


def _random_pattern(rng: np.random.Generator) -> tuple[float, float, float, float]:
    """(kind, cycles per metre, azimuth, elevation) of a garment's pattern."""
    names = list(_PATTERN_ODDS)
    name = names[rng.choice(len(names), p=[odds for odds, _ in _PATTERN_ODDS.values()])]
    frequency = rng.uniform(*_PATTERN_ODDS[name][1])
    orientation = rng.random()
    if orientation < 0.5:  # horizontal bands
        azimuth, elevation = 0.0, math.pi / 2
    elif orientation < 0.75:  # vertical
        azimuth, elevation = rng.choice([0.0, math.pi / 2]), 0.0
    else:
        azimuth, elevation = rng.uniform(0, 2 * math.pi), rng.uniform(-1.2, 1.2)
    return float(PATTERNS[name]), float(frequency), float(azimuth), float(elevation)


def _garment(rng: np.random.Generator, *, denim: bool = False) -> _Style:
    if denim:
        base_srgb = _hex(_DENIM[rng.integers(len(_DENIM))]) * rng.uniform(0.9, 1.1, 3)
        accent_srgb = np.clip(base_srgb * rng.uniform(1.15, 1.5), 0.0, 1.0)
        pattern = (float(PATTERNS["mottled"]), float(rng.uniform(40, 90)), 0.0, 0.0)
    else:
        base_srgb = _random_garment_color(rng)
        pattern = _random_pattern(rng)
        if rng.random() < 0.5:
            accent_srgb = _random_garment_color(rng)
        else:  # a shade of the same colour
            accent_srgb = np.clip(base_srgb * rng.uniform(0.35, 1.6), 0.0, 1.0)
    shine = (float(rng.uniform(0.01, 0.06)), float(rng.uniform(4, 16)))
    return _Style(srgb_to_linear(base_srgb), srgb_to_linear(accent_srgb), pattern, shine)


def _shoes(rng: np.random.Generator) -> _Style:
    if rng.random() < 0.5:
        base_srgb = _hex(_NEUTRALS[rng.integers(len(_NEUTRALS))])
    else:
        base_srgb = _random_garment_color(rng)
    accent_srgb = np.clip(base_srgb * rng.uniform(0.5, 1.5), 0.0, 1.0)
    pattern = (float(PATTERNS["mottled"]), float(rng.uniform(30, 80)), 0.0, 0.0)
    shine = (float(rng.uniform(0.05, 0.35)), float(rng.uniform(16, 60)))
    return _Style(srgb_to_linear(base_srgb), srgb_to_linear(accent_srgb), pattern, shine)


def sample_anny_material(rng: np.random.Generator, regions: AnnyRegions | None = None) -> Material:
    """A random person's look for Anny's mesh: skin, hair, eyes, clothes (module docstring)."""
    r = anny_regions() if regions is None else regions
    parts, coords = r.parts, r.coords
    count = len(parts)
    part = {name: parts == pid for name, pid in PART_IDS.items()}
    torso = part["torso"]
    z = coords[:, 2]

    # Skin.
    tone = skin_tone(float(rng.uniform(0.0, len(SKIN_TONES) - 1)))
    tone = np.clip(tone * rng.normal(1.0, 0.04, 3) * rng.uniform(0.9, 1.08), 0.0, 1.0)
    skin_accent = np.clip(tone * np.array([0.9, 0.8, 0.8]) * rng.uniform(0.85, 0.97), 0.0, 1.0)
    skin = _Style(
        tone.astype(np.float32),
        skin_accent.astype(np.float32),
        (float(PATTERNS["mottled"]), float(rng.uniform(15, 40)), 0.0, 0.0),
        (float(rng.uniform(0.04, 0.12)), float(rng.uniform(12, 30))),
    )

    # Hair: a hairline from the forehead (front, Y = -0.14) down to the nape (back, Y = +0.03).
    weights = np.array([w for _, _, w in HAIR_COLORS])
    hair_srgb = _hex(HAIR_COLORS[rng.choice(len(HAIR_COLORS), p=weights / weights.sum())][1])
    hair_srgb = np.clip(hair_srgb * rng.uniform(0.85, 1.15), 0.0, 1.0)
    hair = _Style(
        srgb_to_linear(hair_srgb),
        srgb_to_linear(hair_srgb * rng.uniform(0.5, 0.8)),
        (float(PATTERNS["mottled"]), float(rng.uniform(60, 140)), 0.0, 0.0),
        (float(rng.uniform(0.08, 0.25)), float(rng.uniform(15, 40))),
    )
    has_hair = rng.random() > 0.08
    front_z = r.neck_z + rng.uniform(0.19, 0.22)
    back_z = r.neck_z + rng.uniform(0.02, 0.12)
    along = np.clip((coords[:, 1] + 0.14) / 0.17, 0.0, 1.0)
    hairline = front_z + along * (back_z - front_z)
    on_scalp = part["head"] & ~r.mouth & ~r.eye & (z > hairline)

    # Top: sleeves to a point along the arm, a neckline, a hem at the waist.
    has_top = rng.random() > 0.05
    sleeve = rng.choice([0.0, rng.uniform(0.25, 0.6), rng.uniform(1.5, 2.03)], p=[0.2, 0.45, 0.35])
    waist_z = r.hip_z + rng.uniform(0.06, 0.2)
    hem_z = waist_z + (rng.uniform(0.05, 0.15) if rng.random() < 0.1 else 0.0)
    neck_depth, neck_width = rng.uniform(0.0, 0.12), rng.uniform(0.06, 0.12)
    front = coords[:, 1] < -0.01
    neck_drop = neck_depth * np.clip(1.0 - (coords[:, 0] / neck_width) ** 2, 0.0, None)
    neckline = np.where(front, z > r.neck_z - 0.01 - neck_drop, z > r.neck_z - 0.01)
    top_region = (torso & (z >= hem_z) & ~neckline) | ((r.arm >= 0) & (r.arm < sleeve))
    # Bottoms: from the waist down to a point along the legs.
    leg_end = rng.choice(
        [rng.uniform(0.35, 0.75), rng.uniform(0.9, 1.3), rng.uniform(1.45, 1.7), 2.1],
        p=[0.25, 0.1, 0.1, 0.55],
    )
    bottoms_region = (torso & (z < waist_z)) | ((r.leg >= 0) & (r.leg < leg_end))
    one_piece = rng.random() < 0.15
    # Shoes: the feet, and up the shin for boots; sometimes barefoot.
    has_shoes = rng.random() > 0.1
    shoe_top = rng.choice([rng.uniform(1.9, 1.98), rng.uniform(1.55, 1.85)], p=[0.8, 0.2])
    shoes_region = r.leg >= shoe_top

    top = _garment(rng)
    bottoms = top if one_piece else _garment(rng, denim=rng.random() < 0.35)
    shoes = _shoes(rng)
    iris = srgb_to_linear(_hex(_IRIS_COLORS[rng.integers(len(_IRIS_COLORS))]))

    base = np.empty((count, 3), np.float32)
    accent = np.empty((count, 3), np.float32)
    pattern = np.empty((count, 4), np.float32)
    shine = np.empty((count, 2), np.float32)

    def paint(where: np.ndarray, style: _Style) -> None:
        base[where] = style.base
        accent[where] = style.accent
        pattern[where] = style.pattern
        shine[where] = style.shine

    paint(np.ones(count, bool), skin)
    if has_hair:
        paint(on_scalp, hair)
    paint(bottoms_region, bottoms)
    if has_top:
        paint(top_region, top)
    if has_shoes:
        paint(shoes_region, shoes)
    mouth = srgb_to_linear(_hex(_MOUTH))
    paint(r.mouth, _Style(mouth, mouth, (0.0, 0.0, 0.0, 0.0), (0.0, 1.0)))
    on_eye = r.eye
    eye_color = np.where(
        (r.eye_cos > math.cos(math.radians(12)))[:, None],
        srgb_to_linear(_hex(_PUPIL)),
        np.where(
            (r.eye_cos > math.cos(math.radians(32)))[:, None],
            iris,
            srgb_to_linear(_hex(_SCLERA)),
        ),
    )
    base[on_eye] = accent[on_eye] = eye_color[on_eye]
    pattern[on_eye] = 0.0
    shine[on_eye] = (0.5, 80.0)
    return Material(base=base, accent=accent, pattern=pattern, shine=shine, coords=r.coords)


def _kelvin_rgb(kelvin: float) -> np.ndarray:
    srgb = np.array([np.interp(kelvin, _KELVIN, [c[i] for c in _KELVIN_RGB]) for i in range(3)])
    return srgb_to_linear(srgb)


def _direction(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """Unit vector towards a light, camera frame: azimuth 0 = from the camera, elevation up."""
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    return np.array([math.sin(a) * math.cos(e), -math.sin(e), -math.cos(a) * math.cos(e)])


class LightingRangesLike(Protocol):
    """Ranges of :func:`sample_lighting` (any object with these three attributes will do)."""

    @property
    def lights(self) -> Sequence[int]: ...  # [low, high] number of directional lights, 1..3

    @property
    def key_intensity(self) -> Sequence[float]: ...  # [low, high] of the key light

    @property
    def ambient(self) -> Sequence[float]: ...  # [low, high] of the ambient light


@dataclass(frozen=True)
class LightingRanges:
    """The default ranges: 1 to 3 lights, key intensity 0.9 to 1.7, ambient 0.12 to 0.45 (1
    lights a white surface facing the light to full white)."""

    lights: tuple[int, int] = (1, 3)
    key_intensity: tuple[float, float] = (0.9, 1.7)
    ambient: tuple[float, float] = (0.12, 0.45)


def sample_lighting(rng: np.random.Generator, ranges: LightingRangesLike | None = None) -> Lighting:
    """Ambient plus directional lights of random direction, colour and intensity: the key
    light from the camera's side and mostly above, fills, rims or back lights anywhere."""
    r = ranges or LightingRanges()
    low, high = int(r.lights[0]), int(r.lights[1])
    if not 1 <= low <= high <= MAX_LIGHTS:
        raise ValueError(f"lights must be [low, high] within [1, {MAX_LIGHTS}], got {r.lights}")
    count = int(rng.integers(low, high + 1))
    directions, colors = [], []
    for i in range(count):
        if i == 0:  # the key light: from the camera's side, mostly above
            direction = _direction(rng.uniform(-60, 60), rng.uniform(-5, 60))
            intensity = rng.uniform(float(r.key_intensity[0]), float(r.key_intensity[1]))
        else:  # fill, rim or back lights: anywhere but mostly above the horizon
            direction = _direction(rng.uniform(-180, 180), rng.uniform(-20, 70))
            intensity = rng.uniform(0.15, 0.7)
        color = _kelvin_rgb(rng.uniform(2700, 10000))
        if rng.random() < 0.1:  # now and then a tinted light
            tint = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.3, 0.7), 1.0)
            color = srgb_to_linear(np.array(tint))
        directions.append(direction)
        colors.append(color / color.max() * intensity)
    ambient_color = _kelvin_rgb(rng.uniform(4000, 12000))
    ambient = ambient_color * rng.uniform(float(r.ambient[0]), float(r.ambient[1]))
    return Lighting(
        ambient=ambient.astype(np.float32),
        directions=np.array(directions, np.float32),
        colors=np.array(colors, np.float32),
    )
