"""Backgrounds for synthetic scenes: procedural (cheap, in numpy and pillow) or a folder of images.

- :func:`procedural_background`: one of a gradient, fractal value noise, a room (a wall and a
  floor meeting at a horizon), stripes or checks, then sometimes random shapes (rectangles,
  ellipses, polygons, lines) on top, film grain and a blur (a background out of focus).
- :class:`BackgroundFolder`: the images of a user's folder (PNG, JPEG, WebP, BMP, TIFF), a random
  crop of the image's aspect ratio, maybe mirrored, resized to the target size. Decoded images
  are kept, downscaled, in a small cache (a JPEG is decoded at reduced size when that is
  enough), so a folder of large photos does not cost a decode per sample.
- :class:`Backgrounds`: draws from a folder (when given) for a share of the samples, and
  procedural backgrounds otherwise.

All randomness comes from the ``numpy.random.Generator`` passed in: a seed gives one image.
"""

from __future__ import annotations

import colorsys
import math
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Final

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from shared.storage import resolves_inside

__all__ = [
    "IMAGE_SUFFIXES",
    "BackgroundError",
    "BackgroundFolder",
    "Backgrounds",
    "procedural_background",
]

IMAGE_SUFFIXES: Final[tuple[str, ...]] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class BackgroundError(ValueError):
    """A background folder that cannot be used: missing, unreadable, empty or with bad images."""


# --------------------------------------------------------------------------------------------
# Procedural
# --------------------------------------------------------------------------------------------


def _color(rng: np.random.Generator, *, saturation: float = 0.6) -> np.ndarray:
    """A random sRGB colour in [0, 255], mostly muted (backgrounds rarely scream)."""
    hue = rng.random()
    sat = rng.uniform(0.0, saturation)
    value = rng.uniform(0.15, 0.95)
    return np.array(colorsys.hsv_to_rgb(hue, sat, value)) * 255.0


def _ramp(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W) in [0, 1]: a linear ramp at a random angle, or a radial one."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    xs /= max(width - 1, 1)
    ys /= max(height - 1, 1)
    t: np.ndarray  # (the rows of an unpacked array are Any)
    if rng.random() < 0.7:
        angle = rng.uniform(0, 2 * math.pi)
        t = xs * math.cos(angle) + ys * math.sin(angle)
    else:
        cx, cy = rng.uniform(0.0, 1.0, 2)
        t = np.hypot(xs - cx, ys - cy)
    t -= t.min()
    return t / max(float(t.max()), 1e-6)


def _noise(rng: np.random.Generator, height: int, width: int, octaves: int) -> np.ndarray:
    """(H, W) fractal value noise in [0, 1]: random grids upsampled (bicubic) and summed."""
    total = np.zeros((height, width), np.float32)
    weight_sum = 0.0
    cells = int(rng.integers(2, 5))
    for octave in range(octaves):
        grid = rng.random((cells + 1, cells + 1), dtype=np.float32)
        layer = Image.fromarray(grid, mode="F").resize((width, height), Image.Resampling.BICUBIC)
        weight = 0.5**octave
        total += np.asarray(layer) * weight
        weight_sum += weight
        cells *= 2
    total /= weight_sum
    total -= total.min()
    return total / max(float(total.max()), 1e-6)


def _palette_map(t: np.ndarray, colors: list[np.ndarray]) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) colours, interpolating between ``colors``."""
    stops = np.linspace(0.0, 1.0, len(colors))
    return np.stack(
        [np.interp(t, stops, [c[i] for c in colors]).astype(np.float32) for i in range(3)],
        axis=-1,
    )


def _room(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A wall above a horizon and a floor below it, each lightly textured."""
    horizon = int(height * rng.uniform(0.35, 0.8))
    wall, floor = _color(rng, saturation=0.35), _color(rng, saturation=0.5)
    ys = np.arange(height, dtype=np.float32)[:, None, None]
    # Light falls off along the wall; the floor darkens towards the horizon.
    wall_shade = 1.0 - rng.uniform(0.0, 0.3) * ys / max(horizon, 1)
    floor_shade = 0.75 + 0.25 * (ys - horizon) / max(height - horizon, 1)
    image = np.where(ys < horizon, wall * wall_shade, floor * floor_shade)
    texture = _noise(rng, height, width, 3)[..., None]
    image = image * (0.85 + 0.3 * texture)
    if rng.random() < 0.5:  # floorboards or tiles: lines across the floor
        period = int(rng.integers(4, 24))
        lines = (np.arange(height)[:, None] - horizon) % period == 0
        image = np.where(((ys[..., 0] >= horizon) & lines)[..., None], image * 0.7, image)
    return np.broadcast_to(image, (height, width, 3)).astype(np.float32)


def _stripes(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(4, 40) * max(height, width) / 160.0
    u = (xs * math.cos(angle) + ys * math.sin(angle)) / period
    if rng.random() < 0.5:  # checks
        v = (-xs * math.sin(angle) + ys * math.cos(angle)) / period
        t = ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
    else:
        t = (np.floor(u) % 2).astype(np.float32)
    return _palette_map(t, [_color(rng), _color(rng)])


def _shapes(rng: np.random.Generator, canvas: Image.Image) -> None:
    """Random filled rectangles, ellipses, polygons and thick lines drawn onto ``canvas``."""
    width, height = canvas.size
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(3, 25))):
        fill = tuple(int(c) for c in _color(rng, saturation=0.8))
        x0, x1 = sorted(rng.uniform(-0.2, 1.2, 2) * width)
        y0, y1 = sorted(rng.uniform(-0.2, 1.2, 2) * height)
        kind = rng.integers(4)
        if kind == 0:
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        elif kind == 1:
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif kind == 2:
            points = rng.uniform(0, 1, (int(rng.integers(3, 7)), 2)) * (width, height)
            draw.polygon([tuple(p) for p in points.tolist()], fill=fill)
        else:
            line_width = int(rng.integers(1, max(2, width // 40)))
            draw.line((x0, y0, x1, y1), fill=fill, width=line_width)


# Smooth layers (gradients, noise, rooms, stripes) are drawn at most this many pixels a side,
# then upsampled: a 512 x 512 background costs about what a 160 x 160 one does.
_BASE_SIDE = 160


def procedural_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random (H, W, 3) uint8 background (see the module's docstring)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"background size must be positive, got {height}x{width}")
    scale = min(1.0, _BASE_SIDE / max(height, width))
    base_h, base_w = max(1, round(height * scale)), max(1, round(width * scale))
    style = rng.choice(4, p=[0.25, 0.3, 0.3, 0.15])
    if style == 0:
        layer = _palette_map(_ramp(rng, base_h, base_w), [_color(rng), _color(rng), _color(rng)])
    elif style == 1:
        stops = [_color(rng) for _ in range(int(rng.integers(2, 5)))]
        layer = _palette_map(_noise(rng, base_h, base_w, int(rng.integers(2, 6))), stops)
    elif style == 2:
        layer = _room(rng, base_h, base_w)
    else:
        layer = _stripes(rng, base_h, base_w)
    canvas = Image.fromarray(np.clip(np.rint(layer), 0, 255).astype(np.uint8))
    if canvas.size != (width, height):
        canvas = canvas.resize((width, height), Image.Resampling.BILINEAR)
    if rng.random() < 0.35:
        _shapes(rng, canvas)  # sharp edges: drawn at full size
    if rng.random() < 0.4:
        radius = rng.uniform(0.5, 2.5) * max(height, width) / 256.0
        canvas = canvas.filter(ImageFilter.GaussianBlur(radius))
    image = np.asarray(canvas)
    grain = int(rng.integers(0, 11))  # film grain: uniform noise of +-grain levels
    if grain > 0:
        noise = rng.integers(-grain, grain + 1, image.shape, dtype=np.int16)
        image = np.clip(image + noise, 0, 255).astype(np.uint8)
    return np.array(image, dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# A folder of images
# --------------------------------------------------------------------------------------------


class BackgroundFolder:
    """Random crops of the images in ``folder`` (and its subfolders), resized to the target.

    Checks the folder when created: it must exist, be readable and hold at least one image
    (by suffix, :data:`IMAGE_SUFFIXES`), and every image's header must be readable; otherwise
    :class:`BackgroundError` says which and what to do. ``cache_size`` decoded images are
    kept, each downscaled so that its shorter side is at most ``max_side`` pixels. Messages
    name the folder as ``shown_as`` (a request's relative name: never the server's path).
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        cache_size: int = 32,
        max_side: int = 1024,
        shown_as: str | None = None,
    ) -> None:
        self.folder = Path(folder)
        self._shown = shown_as or str(self.folder)
        self.max_side = int(max_side)
        self._cache_size = int(cache_size)
        self._cache: OrderedDict[int, Image.Image] = OrderedDict()
        self._lock = threading.Lock()
        self.paths = self._scan()

    def _error(self, message: str) -> BackgroundError:
        return BackgroundError(message.replace(str(self.folder), self._shown))

    def _scan(self) -> list[Path]:
        folder = self.folder
        if not folder.exists():
            raise self._error(f"background folder {folder} does not exist")
        if not folder.is_dir():
            raise self._error(f"background folder {folder} is not a folder")
        if not os.access(folder, os.R_OK | os.X_OK):
            raise self._error(
                f"background folder {folder} cannot be read (permission denied): "
                "make it readable by this user"
            )
        paths: list[Path] = []
        errors: list[str] = []

        def on_error(error: OSError) -> None:
            errors.append(f"{error.filename}: {error.strerror or error}")

        for root, dirs, files in os.walk(folder, onerror=on_error):
            dirs.sort()
            paths += [
                Path(root) / name
                for name in sorted(files)
                if name.lower().endswith(IMAGE_SUFFIXES)
                and resolves_inside(Path(root) / name, folder)  # no links out of the folder
            ]
        if errors:
            raise self._error(f"background folder {folder} cannot be read: {'; '.join(errors[:5])}")
        if not paths:
            raise self._error(
                f"background folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}): "
                "add some, or use procedural backgrounds"
            )
        bad: list[str] = []
        for path in paths:
            try:
                with Image.open(path) as image:
                    width, height = image.size
                if width < 1 or height < 1:
                    raise ValueError("empty image")
            except Exception as exc:  # PIL raises many types for broken files
                bad.append(f"{path.name} ({type(exc).__name__}: {exc})")
        if bad:
            raise self._error(
                f"{len(bad)} of the {len(paths)} images in background folder {folder} cannot "
                f"be read: {'; '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}. "
                "Remove or replace them."
            )
        return paths

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, index: int) -> Image.Image:
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
        path = self.paths[index]
        try:
            with Image.open(path) as opened:
                # JPEG can decode at 1/2, 1/4 or 1/8 of the size: much faster for big photos.
                opened.draft("RGB", (self.max_side, self.max_side))
                image = opened.convert("RGB")
        except Exception as exc:
            raise BackgroundError(
                f"background image {path} cannot be decoded ({type(exc).__name__}: {exc}): "
                "remove or replace it"
            ) from exc
        short = min(image.size)
        if short > self.max_side:
            scale = self.max_side / short
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
        with self._lock:
            self._cache[index] = image
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return image

    def sample(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """A random crop (40 to 100 % of the largest of the target's aspect ratio), sometimes
        mirrored, of a random image, resized to (height, width, 3) uint8."""
        if height <= 0 or width <= 0:
            raise ValueError(f"background size must be positive, got {height}x{width}")
        index = int(rng.integers(len(self.paths)))
        scale, u, v, mirror = rng.uniform(0.4, 1.0), rng.random(), rng.random(), rng.random() < 0.5
        image = self._load(index)
        aspect = width / height
        crop_w = min(image.width, image.height * aspect) * scale
        crop_h = crop_w / aspect
        x0 = u * (image.width - crop_w)
        y0 = v * (image.height - crop_h)
        out = image.resize(
            (width, height), Image.Resampling.BILINEAR, box=(x0, y0, x0 + crop_w, y0 + crop_h)
        )
        if mirror:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return np.asarray(out, dtype=np.uint8)


class Backgrounds:
    """Where scene backgrounds come from: a folder's images for ``folder_share`` of the samples
    (default all of them when a folder is given), procedural ones otherwise."""

    def __init__(
        self,
        folder: str | os.PathLike[str] | BackgroundFolder | None = None,
        folder_share: float = 1.0,
    ) -> None:
        if not 0.0 <= folder_share <= 1.0:
            raise ValueError(f"folder_share must lie in [0, 1], got {folder_share}")
        if folder is None or isinstance(folder, BackgroundFolder):
            self.folder = folder
        else:
            self.folder = BackgroundFolder(folder)
        self.folder_share = folder_share if self.folder is not None else 0.0

    def sample(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """(height, width, 3) uint8."""
        use_folder = rng.random() < self.folder_share
        if use_folder and self.folder is not None:
            return self.folder.sample(rng, height, width)
        return procedural_background(rng, height, width)
