"""Decode uploaded images safely into RGB arrays.

Accepted formats: **JPEG** (including the MPO variant many phones write), **PNG**, **WebP**,
**BMP**, **TIFF** and **GIF**. Animated or multi-page files (GIF, APNG, animated WebP,
multi-page TIFF) give their first frame or page. Everything else (HEIC, AVIF, SVG, PDF, PSD,
ICO, PPM, ...) is refused, even where Pillow could read it: fewer parsers, less attack surface.

Safety, in order, each failure a subclass of :class:`ImageError` carrying a message for the
user that says what to fix, and a stable ``code``:

1. an empty upload (:class:`EmptyImageError`), then too many bytes
   (:class:`UploadTooLargeError`), before any parsing;
2. only the header is parsed (``Image.open`` is lazy) and the declared width and height are
   checked against ``max_pixels`` and ``max_side`` *before* any pixel data is decompressed
   (:class:`ImageTooLargeError`), so a decompression bomb (a few hundred bytes of PNG declaring
   30000x30000 pixels) costs nothing; Pillow's own guard (``Image.MAX_IMAGE_PIXELS``, left at its
   default) stays as a second line, and its ``DecompressionBombError`` (or the warning, where a
   warnings filter turns it into an error) is reported the same way;
3. unknown or refused formats (:class:`UnsupportedImageError`), and files that start like an
   accepted format but cannot be parsed or are truncated (:class:`CorruptImageError`: Pillow's
   ``LOAD_TRUNCATED_IMAGES`` is never turned on, so a cut-off file is an error, not a grey
   band).

Then the EXIF orientation is applied (``ImageOps.exif_transpose``: a phone's portrait photo
comes out upright) and every colour mode becomes 8-bit RGB: greyscale and palette images are
expanded, CMYK is converted, 16-bit and float greyscale are rescaled to 0-255, and transparent
images (RGBA, LA, PA, palette or colour-key transparency) are composited over white.
"""

from __future__ import annotations

import io
import logging
import re
from typing import ClassVar, Final

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "ACCEPTED_FORMATS",
    "CorruptImageError",
    "EmptyImageError",
    "ImageError",
    "ImageTooLargeError",
    "UnsupportedImageError",
    "UploadTooLargeError",
    "decode_image",
]

log = logging.getLogger(__name__)

# Pillow format names tried by Image.open (its JPEG reader also returns "MPO" images: JPEGs
# with extra stereo or depth frames, as phones write them).
ACCEPTED_FORMATS: Final[tuple[str, ...]] = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
_FORMATS_TEXT: Final[str] = "JPEG, PNG, WebP, BMP, TIFF or GIF"

# Leading bytes of the accepted formats: a file that starts like one but cannot be parsed is
# damaged, not of an unknown kind.
_SIGNATURES: Final[tuple[tuple[bytes, str], ...]] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)

# Formats people commonly upload by mistake, named in the error message.
_ISO_BRANDS: Final[dict[bytes, str]] = {
    b"heic": "HEIC",
    b"heix": "HEIC",
    b"hevc": "HEIC",
    b"heim": "HEIC",
    b"heis": "HEIC",
    b"mif1": "HEIF",
    b"msf1": "HEIF",
    b"avif": "AVIF",
    b"avis": "AVIF",
}


class ImageError(ValueError):
    """An upload that cannot be used as an image; ``message`` tells the user what to fix."""

    code: ClassVar[str] = "invalid_image"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class EmptyImageError(ImageError):
    code: ClassVar[str] = "empty_upload"


class UploadTooLargeError(ImageError):
    """More bytes than allowed (checked before anything is parsed)."""

    code: ClassVar[str] = "upload_too_large"


class UnsupportedImageError(ImageError):
    """Not an image, or a format (or colour mode) bodyserve does not accept."""

    code: ClassVar[str] = "unsupported_format"


class CorruptImageError(ImageError):
    """An accepted format, but damaged or truncated."""

    code: ClassVar[str] = "corrupt_image"


class ImageTooLargeError(ImageError):
    """Too many pixels, or a side too long (checked on the header, before decoding)."""

    code: ClassVar[str] = "image_too_large"


def _sniff(data: bytes) -> str | None:
    """The format the leading bytes announce: an accepted one, or a known refused one."""
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp":
        return _ISO_BRANDS.get(data[8:12], "ISO media (video or HEIF)")
    if data.startswith(b"%PDF"):
        return "PDF"
    if data.startswith(b"8BPS"):
        return "PSD"
    head = data[:512].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "SVG"
    return None


def _sizes(n: int, limit: int) -> tuple[str, str]:
    """Two byte counts, readable, and different whenever the numbers are."""

    def readable(count: int) -> str:
        if count >= 1_000_000:
            return f"{count / 1_000_000:.1f} MB"
        return f"{count / 1_000:.1f} kB" if count >= 1_000 else f"{count} bytes"

    size, most = readable(n), readable(limit)
    return (size, most) if size != most else (f"{n} bytes", f"{limit} bytes")


def _unsupported(sniffed: str | None) -> UnsupportedImageError:
    if sniffed is None:
        return UnsupportedImageError(
            f"The upload is not an image bodyserve can read: send a {_FORMATS_TEXT} file."
        )
    return UnsupportedImageError(
        f"{sniffed} files are not supported: convert the image to JPEG or PNG "
        f"(accepted: {_FORMATS_TEXT})."
    )


def _corrupt(fmt: str | None, detail: object) -> CorruptImageError:
    log.info("corrupt %s upload: %s", fmt or "image", detail)
    what = f"This {fmt} image" if fmt else "This image"
    return CorruptImageError(
        f"{what} is damaged or incomplete and cannot be decoded: upload the file again, or "
        "open and re-save it as JPEG or PNG."
    )


def _too_large(width: int, height: int, max_pixels: int, max_side: int) -> ImageTooLargeError:
    if max(width, height) > max_side:
        return ImageTooLargeError(
            f"The image is {width}x{height} pixels; its longest side may be at most {max_side} "
            f"pixels: downscale it and upload it again."
        )
    return ImageTooLargeError(
        f"The image is {width}x{height} pixels ({width * height / 1e6:.1f} megapixels); at most "
        f"{max_pixels / 1e6:.1f} megapixels are accepted: downscale it and upload it again."
    )


def _grey_to_uint8(image: Image.Image) -> np.ndarray:
    """16-bit, 32-bit integer or float greyscale to 0-255."""
    values = np.asarray(image)
    if image.mode.startswith("I;16"):
        return np.asarray(np.rint(values.astype(np.float32) / 257.0), np.uint8)
    values = values.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if image.mode == "F" and low >= 0.0 and high <= 1.0:
        scaled = values * 255.0
    elif image.mode != "F" and low >= 0.0 and high <= 255.0:
        scaled = values
    elif image.mode != "F" and low >= 0.0 and high <= 65535.0:
        scaled = values / 257.0
    elif high > low:
        scaled = (values - low) * (255.0 / (high - low))
    else:
        scaled = np.zeros_like(values)
    return np.asarray(np.clip(np.rint(scaled), 0, 255), np.uint8)


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow mode to an (H, W, 3) uint8 RGB array; transparency over white."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return np.array(image, dtype=np.uint8)
    if mode in ("I", "F") or mode.startswith("I;16"):
        grey = _grey_to_uint8(image)
        return np.repeat(grey[:, :, None], 3, axis=2)
    has_alpha = "A" in mode or "a" in mode or "transparency" in image.info
    try:
        if has_alpha:
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.array(Image.alpha_composite(background, rgba).convert("RGB"), np.uint8)
        return np.array(image.convert("RGB"), dtype=np.uint8)
    except ValueError as exc:  # a mode Pillow cannot convert to RGB (LAB, multi-band TIFF...)
        raise UnsupportedImageError(
            f"Images in the {mode} colour mode are not supported: save the image as 8-bit RGB "
            "JPEG or PNG."
        ) from exc


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int, max_side: int) -> np.ndarray:
    """Decode an uploaded image to an (H, W, 3) uint8 RGB array, upright (EXIF applied).

    ``max_bytes``: the largest upload; ``max_pixels``: the most ``width * height`` pixels;
    ``max_side``: the longest allowed side (both checked on the header, before decoding; the
    EXIF rotation does not change them). Raises an :class:`ImageError` subclass with a message
    for the user; see the module's docstring for the accepted formats and checks.
    """
    if not data:
        raise EmptyImageError(f"The upload is empty: attach a {_FORMATS_TEXT} image.")
    if len(data) > max_bytes:
        size, most = _sizes(len(data), max_bytes)
        raise UploadTooLargeError(
            f"The upload is {size}; at most {most} are accepted: send a smaller image "
            "(downscaled, or saved as JPEG)."
        )
    data = bytes(data)
    sniffed = _sniff(data)

    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard tripped while reading the header; it names the pixel count only.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        declared = f"{int(found.group(1)) / 1e6:.1f} megapixels" if found else "too many pixels"
        raise ImageTooLargeError(
            f"The image declares {declared}; at most {max_pixels / 1e6:.1f} megapixels are "
            "accepted: downscale it and upload it again."
        ) from exc
    except UnidentifiedImageError as exc:
        if sniffed in ACCEPTED_FORMATS:
            raise _corrupt(sniffed, exc) from exc
        raise _unsupported(sniffed) from exc
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise _corrupt(sniffed if sniffed in ACCEPTED_FORMATS else None, exc) from exc

    with image:
        fmt = "JPEG" if image.format == "MPO" else image.format
        # The header alone tells the size: refuse before a single pixel is decompressed.
        width, height = image.size
        if width <= 0 or height <= 0:
            raise _corrupt(fmt, f"size {image.size}")
        if width * height > max_pixels or max(width, height) > max_side:
            raise _too_large(width, height, max_pixels, max_side)
        try:
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _too_large(width, height, max_pixels, max_side) from exc
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, MemoryError) as exc:
            raise _corrupt(fmt, exc) from exc

        try:
            upright = ImageOps.exif_transpose(image)
        except Exception as exc:  # a damaged EXIF block: keep the pixels as they are
            log.info("ignoring unreadable EXIF orientation: %s", exc)
            upright = image
        try:
            return _to_rgb(upright)
        except ImageError:
            raise
        except (OSError, SyntaxError, EOFError) as exc:
            raise _corrupt(fmt, exc) from exc


# A 35 mm film frame's diagonal: EXIF's 35 mm-equivalent focal length is defined against it.
_FULL_FRAME_DIAGONAL_MM: Final = 43.2666
_EXIF_IFD: Final = 0x8769
_FOCAL_LENGTH_35MM: Final = 0xA405


def exif_focal_length_px(data: bytes, width: int, height: int) -> float | None:
    """The camera's focal length in pixels of a ``width`` x ``height`` image, from EXIF.

    Uses the 35 mm-equivalent focal length (``FocalLengthIn35mmFilm``), which phones and most
    cameras write, scaled by the diagonal; ``None`` when the photo does not say.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            focal_35mm = image.getexif().get_ifd(_EXIF_IFD).get(_FOCAL_LENGTH_35MM)
    except Exception:  # an unreadable EXIF block only means "unknown"
        return None
    if not focal_35mm or not 4 <= float(focal_35mm) <= 2000:
        return None
    diagonal_px: float = (width**2 + height**2) ** 0.5  # typeshed: int ** float is Any
    return float(focal_35mm) * diagonal_px / _FULL_FRAME_DIAGONAL_MM
