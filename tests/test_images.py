"""Decoding request images for a model: large JPEGs decoded reduced with a letterbox map
that still points at the original pixels, and the decode budget for large images."""

from __future__ import annotations

import asyncio

import cv2
import numpy as np
import pytest
import torch

from detector.boxes import boxes_to_original, letterbox_image, letterbox_params
from server.images import (
    DecodeBudget,
    decode_image,
    decode_reduced,
    decoded_pixels,
    encoded_pixels,
    jpeg_reduction,
    original_letterbox,
)

INPUT_SIZE = 64
HEIGHT, WIDTH = 1000, 2003  # not multiples of 8: the reduced size is rounded up
BOX = (800, 400, 1200, 640)  # x1, y1, x2, y2 of a white rectangle, original pixels


def jpeg(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def picture() -> np.ndarray:
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    x1, y1, x2, y2 = BOX
    image[y1:y2, x1:x2] = (255, 255, 255)
    return image


@pytest.mark.parametrize(
    "width, height, min_side, factor",
    [
        (4000, 3000, 640, 4),
        (4000, 3000, 500, 8),
        (1000, 10, 64, 8),
        (600, 400, 640, 1),
        (1278, 50, 640, 1),
        (1280, 50, 640, 2),
    ],
)
def test_reduction_keeps_the_long_side_at_least_the_input_size(width, height, min_side, factor):
    assert jpeg_reduction(width, height, min_side) == factor


def test_a_large_jpeg_is_decoded_reduced_and_its_letterbox_maps_to_original_pixels():
    data = jpeg(picture())
    reduced = decode_reduced(data, min_side=INPUT_SIZE)
    assert reduced.reduction == 8 and reduced.original_size == (HEIGHT, WIDTH)
    assert reduced.image.shape == (-(-HEIGHT // 8), -(-WIDTH // 8), 3)
    assert decoded_pixels(data, INPUT_SIZE) == reduced.image.shape[0] * reduced.image.shape[1]
    letterboxed, lb_reduced = letterbox_image(reduced.image, INPUT_SIZE)
    lb = original_letterbox(lb_reduced, reduced)
    full = letterbox_params((HEIGHT, WIDTH), INPUT_SIZE)
    assert lb.original_size == full.original_size and lb.input_size == full.input_size
    assert (lb.pad_x, lb.pad_y) == (full.pad_x, full.pad_y)
    assert lb.scale_x == pytest.approx(full.scale_x, rel=0.01)
    assert lb.scale_y == pytest.approx(full.scale_y, rel=0.01)
    # the white rectangle found in the model input maps back onto the original one
    ys, xs = np.nonzero(letterboxed[..., 0] > 128)
    found = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
    back = boxes_to_original(found, lb)[0].tolist()
    one_input_pixel = 1 / lb.scale_x
    assert back == pytest.approx(BOX, abs=2 * one_input_pixel)


def test_small_jpegs_pngs_and_arrays_are_decoded_at_full_size():
    small = picture()[:200, :300]
    for source in (jpeg(small), png(picture()), small):
        reduced = decode_reduced(source, min_side=INPUT_SIZE)
        expected = decode_image(source)
        if isinstance(source, bytes) and source[:2] == b"\xff\xd8":
            assert reduced.reduction == 4  # 300 / 4 >= 64 still
            continue
        assert reduced.reduction == 1
        np.testing.assert_array_equal(reduced.image, expected)
    assert decoded_pixels(png(picture()), INPUT_SIZE) == HEIGHT * WIDTH
    assert encoded_pixels(jpeg(picture())) == encoded_pixels(png(picture())) == HEIGHT * WIDTH
    assert encoded_pixels(small) == encoded_pixels(b"not an image") == 0
    assert decoded_pixels(small, INPUT_SIZE) == 0
    assert decoded_pixels(b"not an image", INPUT_SIZE) == 0


def test_decode_budget_lets_large_images_in_one_at_a_time_and_small_ones_at_once():
    async def main():
        budget = DecodeBudget(max_pixels=100, small_pixels=10)
        order: list[str] = []
        first_in, release_first = asyncio.Event(), asyncio.Event()

        async def decode(name: str, pixels: int, hold: asyncio.Event | None = None):
            async with budget.hold(pixels):
                order.append(name)
                if hold is not None:
                    first_in.set()
                    await hold.wait()

        first = asyncio.ensure_future(decode("big1", 80, release_first))
        await first_in.wait()
        second = asyncio.ensure_future(decode("big2", 80))
        too_big = asyncio.ensure_future(decode("huge", 10_000))  # fits alone, after big2
        await asyncio.sleep(0.01)
        await decode("small", 5)  # does not wait behind the large ones
        assert order == ["big1", "small"] and budget.in_flight == 80
        release_first.set()
        await asyncio.gather(first, second, too_big)
        assert order == ["big1", "small", "big2", "huge"] and budget.in_flight == 0

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_cancelled_wait_for_decode_budget_gives_its_turn_away():
    async def main():
        budget = DecodeBudget(max_pixels=100, small_pixels=0)
        async with budget.hold(100):
            gone = asyncio.ensure_future(budget.hold(50).__aenter__())
            kept_in = asyncio.Event()

            async def kept():
                async with budget.hold(50):
                    kept_in.set()

            waiting = asyncio.ensure_future(kept())
            await asyncio.sleep(0.01)
            gone.cancel()
        await asyncio.wait_for(waiting, 10)
        assert kept_in.is_set() and budget.in_flight == 0

    asyncio.run(asyncio.wait_for(main(), 30))
