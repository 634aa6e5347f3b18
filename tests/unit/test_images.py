"""Safe decoding of uploaded images: limits, bombs, damaged files, orientation, colour modes."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from shared.io.images import (
    CorruptImageError,
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
    UnsupportedImageError,
    UploadTooLargeError,
    decode_image,
)
from shared.settings import get_settings

LIMITS = {"max_bytes": 20_000_000, "max_pixels": 40_000_000, "max_side": 12_000}


def _decode(data: bytes, **limits: int) -> np.ndarray:
    return decode_image(data, **{**LIMITS, **limits})


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _bomb_png(width: int, height: int) -> bytes:
    """A valid-looking PNG header declaring a huge RGB image, followed by a token IDAT."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + _png_chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def photos() -> list[Path]:
    paths = sorted(
        p for p in get_settings().photos_dir.iterdir() if p.suffix.lower() in {".jpg", ".png"}
    )
    assert paths, "no photos in the shared data folder"
    return paths


@pytest.fixture(scope="module")
def jpeg_bytes(photos: list[Path]) -> bytes:
    return next(p for p in photos if p.suffix == ".jpg").read_bytes()


# --- real photos ------------------------------------------------------------------------------


def test_real_photos_decode(photos: list[Path]) -> None:
    for path in photos:
        array = _decode(path.read_bytes())
        with Image.open(path) as reference:
            width, height = reference.size
            expected = np.asarray(reference.convert("RGB"))
        assert array.shape == (height, width, 3), path.name
        assert array.dtype == np.uint8
        assert array.flags.c_contiguous and array.flags.writeable
        np.testing.assert_array_equal(array, expected)  # none of these carries a rotation


# --- rejections -------------------------------------------------------------------------------


def test_empty_upload() -> None:
    with pytest.raises(EmptyImageError, match="empty") as info:
        _decode(b"")
    assert info.value.code == "empty_upload"
    assert isinstance(info.value, ValueError)


def test_too_many_bytes_is_refused_before_parsing(jpeg_bytes: bytes) -> None:
    with pytest.raises(UploadTooLargeError) as info:
        _decode(jpeg_bytes, max_bytes=len(jpeg_bytes) - 1)
    assert info.value.code == "upload_too_large"
    assert f"{len(jpeg_bytes)} bytes; at most {len(jpeg_bytes) - 1} bytes" in info.value.message
    with pytest.raises(UploadTooLargeError, match=r"is 1\.5 MB; at most 1\.0 MB"):
        _decode(b"\xff\xd8\xff" + b"\x00" * 1_499_997, max_bytes=1_000_000)
    assert _decode(jpeg_bytes, max_bytes=len(jpeg_bytes)).ndim == 3
    with pytest.raises(UploadTooLargeError, match="smaller image"):
        _decode(b"not even an image" * 100, max_bytes=1000)


def test_decompression_bomb_is_refused_from_its_header(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    bomb = _bomb_png(8_000, 8_000)
    assert len(bomb) < 200
    start = time.perf_counter()
    with pytest.raises(ImageTooLargeError) as info:
        _decode(bomb)
    assert time.perf_counter() - start < 0.5
    assert info.value.code == "image_too_large"
    assert "8000x8000 pixels (64.0 megapixels)" in info.value.message
    assert "at most 40.0 megapixels" in info.value.message
    # Far beyond Pillow's own guard (which trips on the header), reported the same way.
    huge = _bomb_png(30_000, 30_000)
    with pytest.raises(ImageTooLargeError, match=r"900\.0 megapixels; at most 40\.0 megapixels"):
        _decode(huge)
    with pytest.raises(ImageTooLargeError, match=r"900\.0 megapixels"):
        _decode(huge, max_pixels=10**10, max_side=10**6)


def test_a_real_compressed_bomb_is_refused_without_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bomb = _encode(Image.new("L", (8000, 6000)), "PNG", optimize=True)  # 48 MB of pixels
    assert len(bomb) < 200_000
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded"))
    with pytest.raises(ImageTooLargeError, match=r"48\.0 megapixels"):
        _decode(bomb, max_pixels=40_000_000)


def test_side_too_long() -> None:
    data = _encode(Image.new("RGB", (300, 10)), "PNG")
    with pytest.raises(ImageTooLargeError, match="longest side may be at most 200"):
        _decode(data, max_side=200)
    with pytest.raises(ImageTooLargeError, match="longest side"):
        _decode(_encode(Image.new("RGB", (10, 300)), "PNG"), max_side=200)
    assert _decode(data, max_side=300).shape == (10, 300, 3)


def test_truncated_jpeg(jpeg_bytes: bytes) -> None:
    for cut in (len(jpeg_bytes) // 2, 200, 4):
        with pytest.raises(CorruptImageError, match="damaged or incomplete") as info:
            _decode(jpeg_bytes[:cut])
        assert info.value.code == "corrupt_image"


def test_truncated_and_damaged_png() -> None:
    data = _encode(Image.new("RGB", (64, 64), (10, 200, 30)), "PNG")
    with pytest.raises(CorruptImageError):
        _decode(data[:20])  # inside the header
    with pytest.raises(CorruptImageError):
        _decode(data[:-30])  # inside the pixel data
    damaged = bytearray(data)
    damaged[40:48] = b"\xff" * 8  # break the compressed pixel data
    with pytest.raises(CorruptImageError):
        _decode(bytes(damaged))


def test_text_file_is_not_an_image() -> None:
    with pytest.raises(UnsupportedImageError, match="not an image") as info:
        _decode(b"name,age\nalice,31\n")
    assert info.value.code == "unsupported_format"
    assert "JPEG, PNG" in info.value.message


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64, "HEIC"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1" + b"\x00" * 64, "AVIF"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "PDF"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
    ],
)
def test_known_unsupported_formats_are_named(data: bytes, name: str) -> None:
    with pytest.raises(UnsupportedImageError, match=f"{name} files are not supported"):
        _decode(data)


@pytest.mark.parametrize("fmt", ["PPM", "ICO", "TGA"])
def test_formats_pillow_reads_but_we_do_not_accept(fmt: str) -> None:
    data = _encode(Image.new("RGB", (16, 16), (1, 2, 3)), fmt)
    assert Image.open(io.BytesIO(data)).format == fmt  # Pillow itself would read it
    with pytest.raises(UnsupportedImageError):
        _decode(data)


def test_errors_share_a_base_class() -> None:
    for cls in (
        EmptyImageError,
        UploadTooLargeError,
        UnsupportedImageError,
        CorruptImageError,
        ImageTooLargeError,
    ):
        assert issubclass(cls, ImageError)
        assert cls.code != ImageError.code


# --- orientation and colour modes -------------------------------------------------------------


def _halves(width: int, height: int) -> Image.Image:
    """Left half red, right half blue."""
    array = np.zeros((height, width, 3), np.uint8)
    array[:, : width // 2, 0] = 255
    array[:, width // 2 :, 2] = 255
    return Image.fromarray(array)


def test_exif_orientation_is_applied() -> None:
    image = _halves(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = _encode(image, "JPEG", quality=95, exif=exif.tobytes())
    array = _decode(data)
    assert array.shape == (40, 20, 3)  # portrait now
    top, bottom = array[:18].reshape(-1, 3).mean(0), array[22:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 50  # the left (red) half went to the top
    assert bottom[2] > 200 and bottom[0] < 50
    # Without the tag, nothing turns.
    assert _decode(_encode(image, "JPEG", quality=95)).shape == (20, 40, 3)


def test_exif_orientation_counts_against_the_limits_symmetrically() -> None:
    exif = Image.Exif()
    exif[0x0112] = 8
    data = _encode(_halves(300, 100), "JPEG", exif=exif.tobytes())
    assert _decode(data, max_side=300).shape == (300, 100, 3)
    with pytest.raises(ImageTooLargeError):
        _decode(data, max_side=299)


def test_greyscale_becomes_rgb(photos: list[Path]) -> None:
    grey_photo = next(p for p in photos if Image.open(p).mode == "L")
    array = _decode(grey_photo.read_bytes())
    reference = np.asarray(Image.open(grey_photo))
    assert array.shape == (*reference.shape, 3)
    for channel in range(3):
        np.testing.assert_array_equal(array[..., channel], reference)


def test_alpha_is_composited_on_white() -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200  # red-ish everywhere
    rgba[0, :, 3] = 0  # row 0: fully transparent
    rgba[1, :, 3] = 255  # row 1: opaque
    rgba[2, :, 3] = 128  # row 2: half
    array = _decode(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert array.shape == (4, 4, 3)
    assert (array[0] == 255).all()
    assert (array[1] == [200, 0, 0]).all()
    np.testing.assert_allclose(array[2], [[227, 127, 127]] * 4, atol=1)


@pytest.mark.parametrize(
    ("mode", "fmt", "pixel", "expected"),
    [
        ("LA", "PNG", (100, 0), (255, 255, 255)),
        ("LA", "PNG", (100, 255), (100, 100, 100)),
        ("P", "GIF", None, (255, 0, 0)),
        ("CMYK", "JPEG", (0, 255, 255, 0), (255, 0, 0)),
        ("CMYK", "TIFF", (0, 0, 0, 0), (255, 255, 255)),
        ("I;16", "PNG", 65535, (255, 255, 255)),
        ("I;16", "PNG", 32896, (128, 128, 128)),
        ("I;16", "TIFF", 257 * 40, (40, 40, 40)),
        ("F", "TIFF", 0.5, (128, 128, 128)),
        ("1", "BMP", 1, (255, 255, 255)),
    ],
)
def test_colour_modes(mode: str, fmt: str, pixel: object, expected: tuple[int, ...]) -> None:
    if mode == "P":
        image = Image.new("RGB", (8, 8), (255, 0, 0)).convert("P")
    else:
        image = Image.new(mode, (8, 8), pixel)  # type: ignore[arg-type]
    data = _encode(image, fmt)
    array = _decode(data)
    assert array.shape == (8, 8, 3)
    np.testing.assert_allclose(array[4, 4], expected, atol=2)


def test_palette_transparency_is_white() -> None:
    image = Image.new("P", (6, 6), 0)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    image.paste(1, (0, 0, 3, 6))
    array = _decode(_encode(image, "GIF", transparency=0))
    assert (array[:, :3] == [10, 200, 30]).all()
    assert (array[:, 3:] == 255).all()


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (10, 10), colour) for colour in ((255, 0, 0), (0, 255, 0))]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    array = _decode(data)
    assert (array == [255, 0, 0]).all()


@pytest.mark.parametrize(
    ("fmt", "options"),
    [("PNG", {}), ("BMP", {}), ("TIFF", {"compression": "tiff_lzw"}), ("WEBP", {"lossless": True})],
)
def test_lossless_formats_round_trip(fmt: str, options: dict) -> None:
    array = np.random.default_rng(0).integers(0, 256, (13, 17, 3), dtype=np.uint8)
    decoded = _decode(_encode(Image.fromarray(array), fmt, **options))
    np.testing.assert_array_equal(decoded, array)


def _jpeg_with_focal(focal_35mm: int | None, size: tuple[int, int] = (400, 300)) -> bytes:
    image = Image.new("RGB", size, (90, 120, 150))
    exif = Image.Exif()
    if focal_35mm is not None:
        exif.get_ifd(0x8769)[0xA405] = focal_35mm
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


def test_exif_focal_length_in_pixels() -> None:
    from shared.io.images import exif_focal_length_px

    # 26 mm equivalent (a phone's main camera) on a 400x300 image: 26/43.27 of the diagonal.
    focal = exif_focal_length_px(_jpeg_with_focal(26), 400, 300)
    assert focal == pytest.approx(26 * 500 / 43.2666, rel=1e-4)
    assert exif_focal_length_px(_jpeg_with_focal(None), 400, 300) is None
    assert exif_focal_length_px(_jpeg_with_focal(0), 400, 300) is None
    assert exif_focal_length_px(b"not an image", 400, 300) is None
