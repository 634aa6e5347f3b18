"""A picture of how far a person's 3D hypotheses disagree: the photo, and the bodies from the side.

Every hypothesis reprojects onto the same keypoints, so on the photo alone they nearly coincide:
they differ mostly in depth. The picture therefore has two panels side by side:

- left, the photo with every hypothesis' skeleton drawn semi-transparent (where they agree the
  lines add up to a solid stroke, where they differ they fan out faintly) and a circle on each
  joint whose radius is the joint's spread drawn to scale at its depth, coloured from green
  (settled) to red (at or above the ambiguity threshold);
- right, a side view: the camera turned 90° about the vertical axis, looking at each person from
  the camera's right (depth runs left to right, the camera is on the left), an orthographic view
  of the hypotheses aligned at the pelvis (the spread is measured on pelvis-relative joints), one
  colour per hypothesis, the representative drawn thick in white; one cell per person, on one
  shared scale with a scale bar, naming the joint that spreads most.

A key runs along the bottom, under both panels, so that it hides nothing.

Drawn with PIL (no GPU); joints in the OpenCV camera frame (x right, y down, z ahead, metres).
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["PersonSpread", "render_spread", "spread_size"]

# The photo panel is scaled to a height in this range: small photos grow so that the text and the
# side view stay legible, large ones shrink so that the picture stays a few megabytes.
MIN_PANEL_HEIGHT, MAX_PANEL_HEIGHT = 480, 1080
_BACKGROUND = (30, 32, 38)
_REPRESENTATIVE = (255, 255, 255)
_OUTLINE = (0, 0, 0)


@dataclass
class PersonSpread:
    """One person's hypotheses as the picture needs them."""

    joints: np.ndarray  # (N, J, 3) camera frame, metres; joint 0 is the pelvis
    spread_mm: np.ndarray  # (J,) per-axis standard deviation about the mean, millimetres
    representative: int  # index of the hypothesis drawn highlighted
    label: str  # e.g. "person 0"


def spread_size(width: int, height: int, ambiguous_mm: float) -> tuple[int, int]:
    """(width, height) of the picture for a ``width`` x ``height`` photo: two panels of the
    photo's shape side by side, :data:`MIN_PANEL_HEIGHT` to :data:`MAX_PANEL_HEIGHT` tall,
    and the key below."""
    panel_width, panel_height = _panel_size(width, height)
    key = _Key.layout(2 * panel_width, _font(_text_size(panel_height)), ambiguous_mm)
    return 2 * panel_width, panel_height + key.height


def render_spread(
    image: np.ndarray,
    camera: tuple[float, float, float, float],
    people: Sequence[PersonSpread],
    parents: Sequence[int],
    joint_names: Sequence[str],
    ambiguous_mm: float,
) -> np.ndarray:
    """The two-panel picture (see the module's docstring) as an RGB uint8 array of
    :func:`spread_size`.

    Args:
        image: the (H, W, 3) uint8 RGB photo.
        camera: pinhole intrinsics fx, fy, cx, cy of the photo, pixels.
        people: each person's hypotheses.
        parents: the parent of each joint (the pelvis its own or -1): the skeleton's bones.
        joint_names: the name of each joint.
        ambiguous_mm: the spread drawn fully red.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    height, width = image.shape[:2]
    panel_width, panel_height = _panel_size(width, height)
    scale = panel_height / height
    photo = Image.fromarray(image).resize((panel_width, panel_height), Image.Resampling.BILINEAR)
    fx, fy, cx, cy = (float(c) for c in camera)
    # Intrinsics of the resized photo (pixel centres: u' + 0.5 = scale * (u + 0.5)).
    resized = (fx * scale, fy * scale, (cx + 0.5) * scale - 0.5, (cy + 0.5) * scale - 0.5)
    bones = [(j, int(p)) for j, p in enumerate(parents) if 0 <= p != j]
    font = _font(_text_size(panel_height))
    key = _Key.layout(2 * panel_width, font, ambiguous_mm)

    canvas = Image.new("RGB", (2 * panel_width, panel_height + key.height), _BACKGROUND)
    canvas.paste(_photo_panel(photo, resized, people, bones, ambiguous_mm, font), (0, 0))
    side = _side_panel((panel_width, panel_height), people, bones, joint_names, ambiguous_mm, font)
    canvas.paste(side, (panel_width, 0))
    key.draw(ImageDraw.Draw(canvas), (0, panel_height), font)
    return np.asarray(canvas)


# --------------------------------------------------------------------------- panels


def _panel_size(width: int, height: int) -> tuple[int, int]:
    panel_height = min(max(height, MIN_PANEL_HEIGHT), MAX_PANEL_HEIGHT)
    return max(1, round(width * panel_height / height)), panel_height


def _text_size(panel_height: int) -> int:
    return max(13, panel_height // 38)


@dataclass
class _Key:
    """The key's entries flowed into rows across the picture's width."""

    entries: list[tuple[tuple[int, int, int], str, tuple[int, int]]]  # colour, text, (x, y)
    height: int

    @classmethod
    def layout(
        cls, width: int, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, ambiguous_mm: float
    ) -> _Key:
        texts = [
            (_REPRESENTATIVE, "representative hypothesis"),
            (_palette(3)[0], "other hypotheses (one colour each; faint where they disagree)"),
            (_spread_colour(0.0, ambiguous_mm), "circle: a joint's spread, 1 sigma to scale"),
            (
                _spread_colour(ambiguous_mm, ambiguous_mm),
                f"red: ambiguous (> {ambiguous_mm:.0f} mm)",
            ),
            ((200, 200, 200), "side view: camera turned 90° about the vertical, pelvis-aligned"),
        ]
        line = _text_height(font) + 10
        swatch = line - 10
        x, y, entries = 10, 8, []
        for colour, text in texts:
            box = font.getbbox(text)
            w = swatch + 8 + int(box[2] - box[0]) + 24
            if x > 10 and x + w > width:
                x, y = 10, y + line
            entries.append((colour, text, (x, y)))
            x += w
        return cls(entries, y + line + 4)

    def draw(
        self,
        draw: ImageDraw.ImageDraw,
        origin: tuple[int, int],
        font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    ) -> None:
        swatch = _text_height(font)
        for colour, text, (x, y) in self.entries:
            x, y = x + origin[0], y + origin[1]
            draw.rectangle((x, y + 1, x + swatch, y + 1 + swatch), fill=colour)
            top = font.getbbox("Hg")[1]
            draw.text((x + swatch + 8, y - top), text, font=font, fill=(235, 235, 235))


def _photo_panel(
    photo: Image.Image,
    camera: tuple[float, float, float, float],
    people: Sequence[PersonSpread],
    bones: list[tuple[int, int]],
    ambiguous_mm: float,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> Image.Image:
    size = photo.height
    line = max(2, round(size / 360))
    canvas = photo.convert("RGBA")
    fx, fy, cx, cy = camera
    for person in people:
        joints = np.asarray(person.joints, np.float64)
        count = len(joints)
        depth = np.maximum(joints[..., 2], 1e-3)
        pixels = np.stack([fx * joints[..., 0] / depth + cx, fy * joints[..., 1] / depth + cy], -1)
        # Each hypothesis on its own layer, so that overlapping strokes add up: what all
        # hypotheses agree on is solid, what they disagree on is faint.
        alpha = round(255 * min(0.65, max(0.15, 2.0 / count)))
        for n, colour in enumerate(_palette(count)):
            if n != person.representative:
                _composite(canvas, pixels[n], bones, (*colour, alpha), line)
        _composite(canvas, pixels[person.representative], bones, (*_REPRESENTATIVE, 230), line + 1)
        # A circle per joint: the spread (metres) projected at the joints' mean depth.
        mean = joints.mean(0)
        mean_depth = np.maximum(mean[:, 2], 1e-3)
        centre = np.stack(
            [fx * mean[:, 0] / mean_depth + cx, fy * mean[:, 1] / mean_depth + cy], -1
        )
        radius = np.minimum(fx * person.spread_mm / 1e3 / mean_depth, size / 4)
        layer = Image.new("RGBA", canvas.size)
        draw = ImageDraw.Draw(layer)
        for j in np.argsort(-radius):  # large first, so that small circles stay on top
            if j == 0 or not np.isfinite(centre[j]).all():
                continue  # the pelvis: the spread is pelvis-relative, always 0
            colour = _spread_colour(float(person.spread_mm[j]), ambiguous_mm)
            r = max(float(radius[j]), 2.0)
            box = (centre[j, 0] - r, centre[j, 1] - r, centre[j, 0] + r, centre[j, 1] + r)
            draw.ellipse(box, fill=(*colour, 50), outline=(*colour, 235), width=max(1, line - 1))
        canvas.alpha_composite(layer)
        top = pixels.reshape(-1, 2)
        top = top[np.isfinite(top).all(-1)]
        if len(top):
            anchor = (float(np.median(top[:, 0])), float(top[:, 1].min()) - line * 3)
            _label(canvas, anchor, person.label, font)
    return canvas.convert("RGB")


def _side_panel(
    size: tuple[int, int],
    people: Sequence[PersonSpread],
    bones: list[tuple[int, int]],
    joint_names: Sequence[str],
    ambiguous_mm: float,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> Image.Image:
    width, height = size
    panel = Image.new("RGB", size, _BACKGROUND)
    draw = ImageDraw.Draw(panel)
    text_h = _text_height(font)
    draw.text((10, 8), "side view (from the camera's right)", font=font, fill=(235, 235, 235))
    title = text_h + 18
    if not people:
        return panel
    header, footer = 2 * text_h + 22, text_h + 16  # two lines of text; the camera arrow
    # Seen from the camera's right: depth (z) to the right, down (y) down; pelvis-aligned, as
    # the spread is measured.
    views = []
    for person in people:
        joints = np.asarray(person.joints, np.float64)[..., [2, 1]]
        views.append(joints - joints[:, :1])
    extents = np.maximum([np.ptp(v.reshape(-1, 2), axis=0) for v in views], 0.3)

    def scale(columns: int) -> float:
        """Pixels per metre that fit every person into a grid of ``columns`` columns: one
        scale for every cell, so that the spreads of different people compare by eye."""
        rows = math.ceil(len(people) / columns)
        room = np.array([width / columns * 0.85, ((height - title) / rows - header - footer)])
        return float(max((room / extents).min(), 1e-6))

    columns = max(range(1, len(people) + 1), key=scale)  # the grid that draws them largest
    rows = math.ceil(len(people) / columns)
    metres_to_px = scale(columns)
    cell_w, cell_h = width / columns, (height - title) / rows
    line = max(2, round(height / 360))
    for k, (person, view) in enumerate(zip(people, views, strict=True)):
        x0, y0 = (k % columns) * cell_w, title + (k // columns) * cell_h
        draw.rectangle((x0 + 3, y0, x0 + cell_w - 4, y0 + cell_h - 4), outline=(70, 74, 84))
        flat = view.reshape(-1, 2)
        middle = (flat.min(0) + flat.max(0)) / 2
        origin = np.array([x0 + cell_w / 2, y0 + header + (cell_h - header - footer) / 2])
        points = (view - middle) * metres_to_px + origin
        for n, colour in enumerate(_palette(len(points))):
            if n != person.representative:
                _bones(draw, points[n], bones, colour, line)
        chosen = points[person.representative]
        _bones(draw, chosen, bones, _OUTLINE, line + 4)
        _bones(draw, chosen, bones, _REPRESENTATIVE, line + 2)
        # The joint the photo leaves most open, named, and ringed in every hypothesis.
        worst = int(np.argmax(person.spread_mm))
        spread = float(person.spread_mm[worst])
        colour = _spread_colour(spread, ambiguous_mm)
        draw.text((x0 + 12, y0 + 8), person.label, font=font, fill=(235, 235, 235))
        name = joint_names[worst].replace("_", " ")
        draw.text(
            (x0 + 12, y0 + 14 + text_h), f"widest: {name} {spread:.0f} mm", font=font, fill=colour
        )
        r = line + 3
        for x, y in points[:, worst]:
            draw.ellipse((x - r, y - r, x + r, y + r), outline=colour, width=2)
        # The camera is on the left of every cell.
        arrow_y = y0 + cell_h - footer / 2 - 2
        draw.line((x0 + 12, arrow_y, x0 + 40, arrow_y), fill=(200, 200, 200), width=2)
        draw.polygon(
            [(x0 + 9, arrow_y), (x0 + 18, arrow_y - 5), (x0 + 18, arrow_y + 5)],
            fill=(200, 200, 200),
        )
        top = font.getbbox("Hg")[1]
        draw.text((x0 + 46, arrow_y - text_h / 2 - top), "camera", font=font, fill=(200, 200, 200))
    # Scale bar: half a metre, in the title row on the right.
    bar = 0.5 * metres_to_px
    label = "50 cm"
    box = font.getbbox(label)
    bx = width - bar - 16
    by = title / 2 + 2
    draw.line((bx, by, bx + bar, by), fill=(235, 235, 235), width=3)
    draw.text((bx - (box[2] - box[0]) - 10, 8), label, font=font, fill=(235, 235, 235))
    return panel


# --------------------------------------------------------------------------- drawing helpers


def _composite(
    canvas: Image.Image,
    pixels: np.ndarray,
    bones: list[tuple[int, int]],
    colour: tuple[int, int, int, int],
    width: int,
) -> None:
    """Draw one skeleton on its own layer (only over its own box) and blend it in."""
    finite = pixels[np.isfinite(pixels).all(-1)]
    if not len(finite):
        return
    margin = width + 2
    left = max(0, int(finite[:, 0].min()) - margin)
    top = max(0, int(finite[:, 1].min()) - margin)
    right = min(canvas.width, int(finite[:, 0].max()) + margin + 1)
    bottom = min(canvas.height, int(finite[:, 1].max()) + margin + 1)
    if right <= left or bottom <= top:
        return
    layer = Image.new("RGBA", (right - left, bottom - top))
    _bones(ImageDraw.Draw(layer), pixels - (left, top), bones, colour, width)
    canvas.alpha_composite(layer, dest=(left, top))


def _bones(
    draw: ImageDraw.ImageDraw,
    points: np.ndarray,
    bones: list[tuple[int, int]],
    colour: tuple[int, ...],
    width: int,
) -> None:
    for child, parent in bones:
        a, b = points[child], points[parent]
        if np.isfinite(a).all() and np.isfinite(b).all():
            draw.line((float(a[0]), float(a[1]), float(b[0]), float(b[1])), colour, width)
    r = width / 2 + 0.5
    for x, y in points:
        if math.isfinite(x) and math.isfinite(y):
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)


def _label(
    canvas: Image.Image,
    anchor: tuple[float, float],
    text: str,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> None:
    """White text on a black box, centred above ``anchor``, kept inside the canvas."""
    draw = ImageDraw.Draw(canvas)
    box = draw.textbbox((0, 0), text, font=font)
    w, h = box[2] - box[0], box[3] - box[1]
    x = anchor[0] - w / 2
    y = anchor[1] - h
    x = min(max(x, 4), canvas.width - w - 8)
    y = min(max(y, 4), canvas.height - h - 8)
    draw.rectangle((x - 4, y - 3, x + w + 4, y + h + 5), fill=(0, 0, 0, 255))
    draw.text((x - box[0], y - box[1]), text, font=font, fill=(255, 255, 255, 255))


def _palette(count: int) -> list[tuple[int, int, int]]:
    """``count`` distinguishable bright colours around the hue circle."""
    return [_rgb((0.55 + k / max(count, 1)) % 1, 0.6) for k in range(count)]


def _spread_colour(spread_mm: float, ambiguous_mm: float) -> tuple[int, int, int]:
    """Green (no spread) through yellow to red (at or above the ambiguity threshold)."""
    t = min(max(spread_mm / max(ambiguous_mm, 1e-6), 0.0), 1.0)
    return _rgb((1 - t) / 3, 0.85)  # hue 1/3 green -> 0 red


def _rgb(hue: float, saturation: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, 1.0)
    return round(255 * r), round(255 * g), round(255 * b)


def _text_height(font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> int:
    box = font.getbbox("Hg")
    return int(box[3] - box[1])


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled scalable font (its bitmap font when FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError):  # Pillow built without FreeType
        return ImageFont.load_default()
