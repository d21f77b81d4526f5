"""Request images to RGB arrays, safely: every size is checked before any pixel is decoded.

An image arrives as the bytes of a file (JPEG, PNG, BMP, WebP) or as raw pixels with
their shape. Encoded images are sized from their header first, so a small file that
claims a huge image (a decompression bomb) is refused without allocating it; then
OpenCV decodes them. Every problem raises :class:`ImageError` (a ``ValueError``) with a
message that says what was wrong; the server answers it with ``INVALID_ARGUMENT``.

Nothing here knows about gRPC.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np

from detector.settings import as_rgb_image
from server.config import DEFAULT_MAX_PIXELS

RAW_CHANNELS = (1, 3, 4)  # grey, RGB, RGBA

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8"
BMP_SIGNATURE = b"BM"
RIFF_SIGNATURE, WEBP_SIGNATURE = b"RIFF", b"WEBP"
BMP_CORE_HEADER_SIZE = 12  # OS/2 BITMAPCOREHEADER: 16-bit sizes
# JPEG start-of-frame markers carry the image size: 0xC0..0xCF except DHT, JPG, DAC.
JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# JPEG markers without a length field: TEM, RST0..7, SOI.
JPEG_STANDALONE_MARKERS = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})
JPEG_END_MARKERS = frozenset({0xD9, 0xDA})  # EOI, SOS: no frame header can follow
WEBP_SIZE_MASK = 0x3FFF  # VP8 and VP8L sizes are 14-bit fields
VP8L_SIGNATURE = 0x2F


class ImageError(ValueError):
    """An image that cannot be used; the message says what was wrong."""


@dataclass(frozen=True)
class RawPixels:
    """Uncompressed row-major ``(height, width, channels)`` uint8 samples (RGB order)."""

    data: bytes
    width: int
    height: int
    channels: int


ImageSource = bytes | RawPixels | np.ndarray  # encoded file bytes, raw pixels, or an array


def decode_image(source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode one request image to ``(H, W, 3)`` uint8 RGB.

    Args:
        source: the bytes of an image file, :class:`RawPixels`, or an ``(H, W[, C])``
            uint8 RGB array (used as it is).
        max_pixels: the most ``width * height`` accepted.

    Raises:
        ImageError: empty, undecodable, truncated or unsupported bytes; raw data whose
            length does not match its shape; more than ``max_pixels`` pixels.
    """
    if isinstance(source, RawPixels):
        image = _raw_array(source, max_pixels)
    elif isinstance(source, bytes | bytearray | memoryview):
        image = _decode_encoded(bytes(source), max_pixels)
    elif isinstance(source, np.ndarray):
        if source.ndim >= 2:
            _check_pixels(source.shape[1], source.shape[0], max_pixels)
        image = source
    else:
        raise ImageError(f"an image must be bytes, RawPixels or an array, got {type(source)}")
    try:
        return as_rgb_image(image)
    except ValueError as err:
        raise ImageError(str(err)) from err


def encoded_size(data: bytes) -> tuple[str, int, int]:
    """``(format, width, height)`` of an encoded image, read from its header only.

    Raises:
        ImageError: not a JPEG, PNG, BMP or WebP file, or a header cut short.
    """
    if not data:
        raise ImageError("image bytes are empty")
    if data.startswith(PNG_SIGNATURE):
        return ("PNG", *_png_size(data))
    if data.startswith(JPEG_SIGNATURE):
        return ("JPEG", *_jpeg_size(data))
    if data.startswith(BMP_SIGNATURE):
        return ("BMP", *_bmp_size(data))
    if data.startswith(RIFF_SIGNATURE) and data[8:12] == WEBP_SIGNATURE:
        return ("WebP", *_webp_size(data))
    raise ImageError(
        f"image bytes ({len(data)} bytes, starting {data[:8]!r}) are not a JPEG, PNG, BMP "
        "or WebP file; send one of those or raw pixels"
    )


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageError(
            f"image is {width}x{height} = {width * height} pixels, above the server's "
            f"limit of {max_pixels} pixels"
        )


def _raw_array(raw: RawPixels, max_pixels: int) -> np.ndarray:
    if raw.width < 1 or raw.height < 1:
        raise ImageError(f"raw image size must be at least 1x1, got {raw.width}x{raw.height}")
    if raw.channels not in RAW_CHANNELS:
        raise ImageError(f"raw image channels must be one of {RAW_CHANNELS}, got {raw.channels}")
    _check_pixels(raw.width, raw.height, max_pixels)
    expected = raw.width * raw.height * raw.channels
    if len(raw.data) != expected:
        raise ImageError(
            f"raw image data has {len(raw.data)} bytes, expected width * height * channels "
            f"= {raw.width} * {raw.height} * {raw.channels} = {expected}"
        )
    pixels = np.frombuffer(raw.data, np.uint8)
    return pixels.reshape(raw.height, raw.width, raw.channels)


def _decode_encoded(data: bytes, max_pixels: int) -> np.ndarray:
    fmt, width, height = encoded_size(data)
    if width < 1 or height < 1:
        raise ImageError(f"{fmt} header gives an empty image: {width}x{height}")
    _check_pixels(width, height, max_pixels)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageError(
            f"cannot decode the {fmt} image ({len(data)} bytes, {width}x{height}): "
            "the data is corrupt or truncated"
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _truncated(fmt: str, data: bytes) -> ImageError:
    return ImageError(f"{fmt} image is truncated: its header is cut short at {len(data)} bytes")


def _png_size(data: bytes) -> tuple[int, int]:
    header_end = 24  # signature (8), IHDR length (4) and type (4), width (4), height (4)
    if len(data) < header_end or data[12:16] != b"IHDR":
        raise _truncated("PNG", data)
    width, height = struct.unpack(">II", data[16:header_end])
    return width, height


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i = len(JPEG_SIGNATURE)
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ImageError(f"corrupt JPEG image: expected a marker at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in JPEG_STANDALONE_MARKERS:
            i += 2
            continue
        if marker in JPEG_END_MARKERS:
            break
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in JPEG_SOF_MARKERS:
            if i + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + length
    raise _truncated("JPEG", data)


def _bmp_size(data: bytes) -> tuple[int, int]:
    if len(data) < 26:  # file header (14) + DIB size (4) + two 32-bit sizes
        raise _truncated("BMP", data)
    (dib_size,) = struct.unpack("<I", data[14:18])
    if dib_size == BMP_CORE_HEADER_SIZE:
        width, height = struct.unpack("<HH", data[18:22])
    else:
        width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)  # a negative height means rows top-down


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return width & WEBP_SIZE_MASK, height & WEBP_SIZE_MASK
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == VP8L_SIGNATURE:
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & WEBP_SIZE_MASK) + 1, ((bits >> 14) & WEBP_SIZE_MASK) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    raise _truncated("WebP", data)
