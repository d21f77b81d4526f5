"""Request images to RGB arrays, safely: every size is checked before any pixel is decoded.

An image arrives as the bytes of a file (JPEG, PNG, BMP, WebP) or as raw pixels with
their shape. Encoded images are sized from their header first, so a small file that
claims a huge image (a decompression bomb) is refused without allocating it; then
OpenCV decodes them. Every problem raises :class:`ImageError` (a ``ValueError``) with a
message that says what was wrong; the server answers it with ``INVALID_ARGUMENT``.

A model needs only a few hundred pixels a side, so :func:`decode_reduced` decodes a large
JPEG at 1/2, 1/4 or 1/8 of its size (libjpeg's scaled decoding, many times cheaper in
time and memory), never below the model's input size; :func:`original_letterbox` then
maps the letterbox of the reduced image back to the ORIGINAL pixels. Other formats have
no cheap reduced decoding: :class:`DecodeBudget` decodes large images (a PNG that
inflates to 8000x8000) in its own thread, at a lower CPU priority, within a bound on the
pixels decoded at once, so they wait their turn without holding the threads that decode
small images, and take only the CPU time the rest of the server leaves.

Nothing here knows about gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import sys
import threading
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TypeVar

import cv2
import numpy as np

from detector.boxes import Letterbox
from detector.settings import as_rgb_image
from server.config import DEFAULT_MAX_PIXELS

RAW_CHANNELS = (1, 3, 4)  # grey, RGB, RGBA
T = TypeVar("T")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHUNK_OVERHEAD = 12  # a chunk's length (4), type (4) and CRC (4) around its data
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
# OpenCV's flags that decode a JPEG at 1/factor of its size (libjpeg scaled decoding).
JPEG_REDUCED_FLAGS = {
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}
SMALL_DECODE_PIXELS = 2048 * 2048  # images this small are decoded without waiting for budget
LARGE_DECODE_THREADS = 1  # threads decoding larger images (DecodeBudget)
LARGE_DECODE_NICENESS = 10  # how much lower their CPU priority is (Linux; 19 is the lowest)


def silence_codec_logs() -> None:
    """Turn off OpenCV's own log lines (process-wide; the server calls it once).

    The server reports every image problem itself, as :class:`ImageError`; OpenCV also
    writes a line to stderr for each truncated or malformed PNG, one per bad request,
    without bound. On a server whose stderr is a pipe that nobody drains, ~700 of them
    filled the pipe and the decode threads blocked writing the next one: the server
    stopped answering (seen in ``bench/soak_server.py``'s malformed-input phase).
    libjpeg's "Corrupt JPEG data" warning for a damaged JPEG that still decodes does not
    go through OpenCV's log and still prints.
    """
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


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


@dataclass(frozen=True)
class ReducedImage:
    """An image decoded at ``1 / reduction`` of its size (rounded up), for a model."""

    image: np.ndarray  # (h, w, 3) uint8 RGB
    original_size: tuple[int, int]  # (H, W) of the full image, in its decoded orientation
    reduction: int  # 1 (full size), 2, 4 or 8


def jpeg_reduction(width: int, height: int, min_side: int) -> int:
    """The largest factor in 1, 2, 4, 8 that keeps the long side of a ``width x height``
    JPEG at least ``min_side`` pixels (the model's input size: it letterboxes by the long
    side, so it then still only shrinks the image)."""
    long_side = max(width, height)
    for factor in sorted(JPEG_REDUCED_FLAGS, reverse=True):
        if -(-long_side // factor) >= min_side:
            return factor
    return 1


def _header_size(source: ImageSource) -> tuple[str, int, int] | None:
    """:func:`encoded_size` of encoded bytes; None for raw pixels and arrays, and for
    bytes whose header does not parse (decoding them fails at once)."""
    if not isinstance(source, bytes | bytearray | memoryview):
        return None
    try:
        return encoded_size(source if isinstance(source, bytes) else bytes(source))
    except ImageError:
        return None


def encoded_pixels(source: ImageSource) -> int:
    """``width * height`` of an encoded image, read from its header (0 for raw pixels and
    arrays, and for bytes whose header does not parse). What decoding it costs grows with
    this even when it is decoded reduced: libjpeg still reads every coefficient."""
    size = _header_size(source)
    return 0 if size is None else size[1] * size[2]


def decoded_pixels(source: ImageSource, min_side: int) -> int:
    """How many pixels :func:`decode_reduced` will allocate to decode ``source``, read
    from its header (0 for raw pixels and arrays, which are not decoded, and for bytes
    whose header does not parse: decoding them fails at once)."""
    size = _header_size(source)
    if size is None:
        return 0
    fmt, width, height = size
    factor = jpeg_reduction(width, height, min_side) if fmt == "JPEG" else 1
    return -(-width // factor) * -(-height // factor)


def decode_reduced(
    source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None
) -> ReducedImage:
    """Like :func:`decode_image`, but a JPEG whose long side is at least twice
    ``min_side`` is decoded at 1/2, 1/4 or 1/8 of its size, its long side still at least
    ``min_side`` (see :func:`jpeg_reduction`); ``min_side=None`` decodes at full size.

    Raises:
        ImageError: as :func:`decode_image`.
    """
    if min_side is None or not isinstance(source, bytes | bytearray | memoryview):
        image = decode_image(source, max_pixels)
        return ReducedImage(image, image.shape[:2], 1)
    data = bytes(source)
    fmt, width, height = encoded_size(data)
    factor = jpeg_reduction(width, height, min_side) if fmt == "JPEG" else 1
    if factor == 1:
        image = _decode_encoded(data, max_pixels)
        return ReducedImage(image, image.shape[:2], 1)
    image = _decode_encoded(data, max_pixels, JPEG_REDUCED_FLAGS[factor])
    reduced = (-(-height // factor), -(-width // factor))
    rotated = image.shape[:2] != reduced  # EXIF orientation turned it a quarter
    original = (width, height) if rotated else (height, width)
    return ReducedImage(image, original, factor)


def original_letterbox(letterbox: Letterbox, reduced: ReducedImage) -> Letterbox:
    """The letterbox map of the ORIGINAL image, from that of ``reduced.image``: pixel
    ``x`` of the original is ``x / reduction`` of the reduced image (libjpeg's scaled
    decoding averages ``reduction`` pixels into one), so the scales divide by it."""
    if reduced.reduction == 1:
        return letterbox
    return replace(
        letterbox,
        scale_x=letterbox.scale_x / reduced.reduction,
        scale_y=letterbox.scale_y / reduced.reduction,
        original_size=reduced.original_size,
    )


class DecodeBudget:
    """Where and how many large images are decoded: :meth:`run` decodes one in the
    budget's own ``threads`` (its ``decode-large`` threads, their CPU priority lowered by
    ``niceness`` on Linux), never in the pool that decodes small images, and bounds the
    pixels being decoded at once (decoded images in memory): a large image waits, first
    come first served, until the images being decoded leave room for it; images of at
    most ``small_pixels`` are not its business (:meth:`is_large`).

    Why a thread of its own at a lower priority: 8 clients sending PNGs that decode to
    8000x8000 kept one of the 2 decode threads and a whole core busy, and a valid call's
    p99 rose to 3-9x its unloaded p99 on a 2-core machine; now the small images keep
    every decode thread, and the OS runs the large decodes on CPU time nothing else wants.

    Args:
        max_pixels: the most pixels of large images decoded at once; a single image
            larger than this is decoded alone.
        small_pixels: images this small are not counted.
        threads: threads decoding large images.
        niceness: how much lower their CPU priority is than the server's (0: the same).
    """

    def __init__(
        self,
        max_pixels: int,
        small_pixels: int = SMALL_DECODE_PIXELS,
        threads: int = LARGE_DECODE_THREADS,
        niceness: int = LARGE_DECODE_NICENESS,
    ):
        if max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.max_pixels = max_pixels
        self.small_pixels = small_pixels
        self.in_flight = 0  # pixels of large images being decoded
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        # Threads start on the first large image (a budget never used starts none).
        self._executor = ThreadPoolExecutor(
            threads,
            thread_name_prefix="decode-large",
            initializer=lower_thread_priority,
            initargs=(niceness,),
        )

    def is_large(self, pixels: int) -> bool:
        """Whether an image of ``pixels`` pixels (:func:`encoded_pixels`: a JPEG decoded
        reduced still costs time by its full size) is to be decoded by :meth:`run`."""
        return pixels > self.small_pixels

    async def run(self, pixels: int, decode: Callable[..., T], *args: object) -> T:
        """``decode(*args)`` in the budget's threads, once ``pixels`` (the pixels it
        allocates: :func:`decoded_pixels`) fit in the budget."""
        async with self.hold(pixels):
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, decode, *args)

    def shutdown(self) -> None:
        """Wait for the large decodes in progress; :meth:`run` may not be called after."""
        self._executor.shutdown(wait=True)

    @contextlib.asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        """Hold room for decoding an image of ``pixels`` pixels while inside."""
        if pixels <= self.small_pixels:
            yield
            return
        pixels = min(pixels, self.max_pixels)
        if self._waiters or self.in_flight + pixels > self.max_pixels:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append((pixels, waiter))
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():  # woken: give the room back
                    self.in_flight -= pixels
                elif (pixels, waiter) in self._waiters:
                    self._waiters.remove((pixels, waiter))
                self._wake()
                raise
        else:
            self.in_flight += pixels
        try:
            yield
        finally:
            self.in_flight -= pixels
            self._wake()

    def _wake(self) -> None:
        """Let in the waiters at the head of the line that fit (their room is taken now)."""
        while self._waiters and self.in_flight + self._waiters[0][0] <= self.max_pixels:
            pixels, waiter = self._waiters.popleft()
            if not waiter.done():  # not cancelled meanwhile
                self.in_flight += pixels
                waiter.set_result(None)


def lower_thread_priority(niceness: int) -> None:
    """Lower the CPU priority of the calling thread by ``niceness`` (a thread pool's
    initializer). Linux only, where a thread has its own nice value; elsewhere the same
    call would lower the whole process's, so it does nothing. Lowering needs no rights."""
    if niceness <= 0 or not sys.platform.startswith("linux"):
        return
    thread = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + niceness)


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


def _decode_encoded(data: bytes, max_pixels: int, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    fmt, width, height = encoded_size(data)
    if width < 1 or height < 1:
        raise ImageError(f"{fmt} header gives an empty image: {width}x{height}")
    _check_pixels(width, height, max_pixels)
    if fmt == "PNG":
        _check_png_chunks(data)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if bgr is None:
        raise ImageError(
            f"cannot decode the {fmt} image ({len(data)} bytes, {width}x{height}): "
            "the data is corrupt or truncated"
        )
    if bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ImageError(f"the {fmt} image decoded to an unexpected shape {bgr.shape}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=bgr)  # in place: no second copy


def _truncated(fmt: str, data: bytes) -> ImageError:
    return ImageError(f"{fmt} image is truncated: its header is cut short at {len(data)} bytes")


def _png_size(data: bytes) -> tuple[int, int]:
    header_end = 24  # signature (8), IHDR length (4) and type (4), width (4), height (4)
    if len(data) < header_end or data[12:16] != b"IHDR":
        raise _truncated("PNG", data)
    width, height = struct.unpack(">II", data[16:header_end])
    return width, height


def _check_png_chunks(data: bytes) -> None:
    """Walk a PNG's chunks (length, type, data, CRC) up to IEND, checking each CRC: a
    truncated or damaged file is refused here, cheaply, instead of by libpng, which also
    writes a line to stderr for each one."""
    i = len(PNG_SIGNATURE)
    while i + PNG_CHUNK_OVERHEAD <= len(data):
        (length,) = struct.unpack(">I", data[i : i + 4])
        end = i + PNG_CHUNK_OVERHEAD + length
        if end > len(data):
            break
        kind = data[i + 4 : i + 8]
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(data[i + 4 : end - 4]) != crc:
            raise ImageError(
                f"corrupt PNG image: the CRC of its {kind!r} chunk at byte {i} does not match"
            )
        if kind == b"IEND":
            return
        i = end
    raise ImageError(f"PNG image is truncated: its {len(data)} bytes end before the IEND chunk")


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
