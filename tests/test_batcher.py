"""The dynamic batcher on its own (no gRPC): batching, fan-out, backpressure, deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from server_fixtures import assert_same

from detector.boxes import Letterbox, letterbox_image
from detector.checkpoint import Checkpoint
from detector.config import ModelConfig
from detector.models.yolo import YOLODetector
from detector.predict import Detector
from detector.settings import Detections, DetectOptions
from server import batcher as batcher_module
from server.batcher import Batcher, BatcherConfig, BatchResult
from server.errors import (
    BatcherClosedError,
    DeadlineExpiredError,
    InferenceError,
    QueueFullError,
)
from server.images import DecodeBudget, ImageError, RawPixels

INPUT_SIZE = 32
POISON = 13  # fill value of an image that makes the fake model fail
WAIT_S = 10.0  # generous bound on anything that should happen "at once"
LOW = DetectOptions(score_threshold=0.0)  # random weights score low: keep everything

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class FakeModel:
    """A model whose single detection's score is the image's fill value / 255.

    Each caller can tell that it got its own image's answer. ``gate`` blocks the device
    thread until set; ``batches`` records the size of every forward.
    """

    name = "fake"
    device = torch.device("cpu")
    names = ["a", "b", "c"]
    input_size = INPUT_SIZE

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.running = threading.Event()  # set while a forward runs
        self.batches: list[int] = []
        self.seen: list[int] = []  # fill values that went through a forward

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        return letterbox_image(image, INPUT_SIZE, 0)

    def forward(self, batch: np.ndarray | torch.Tensor) -> FakeDecoded:
        self.running.set()
        assert self.gate.wait(WAIT_S)
        self.running.clear()
        values = [int(np.asarray(image).max()) for image in batch]
        if POISON in values:
            raise RuntimeError("poisoned batch")
        self.batches.append(len(values))
        self.seen.extend(values)
        return FakeDecoded(values)

    def postprocess(
        self, decoded: FakeDecoded, letterboxes: Sequence[Letterbox], options: DetectOptions
    ) -> list[Detections]:
        results = []
        for value, lb in zip(decoded.values, letterboxes, strict=True):
            h, w = lb.original_size
            results.append(
                Detections(
                    boxes=np.array([[0, 0, w, h]], np.float32),
                    scores=np.array([value / 255], np.float32),
                    class_ids=np.array([0]),
                    labels=["a"],
                    landmarks=None,
                    image_size=(h, w),
                )
            )
        return results


class FakeDecoded:
    """What FakeModel.forward returns: each image's fill value."""

    def __init__(self, values: list[int]):
        self.values = values

    def take(self, indices: list[int]) -> FakeDecoded:
        return FakeDecoded([self.values[i] for i in indices])


def image(value: int, height: int = 20, width: int = 30) -> np.ndarray:
    return np.full((height, width, 3), value, np.uint8)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


async def started(model, **config) -> tuple[Batcher, ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(2)
    batcher = Batcher(model, BatcherConfig(**config), pool)
    batcher.start()
    return batcher, pool


@contextlib.asynccontextmanager
async def open_batcher(model, **config) -> AsyncIterator[Batcher]:
    """A started batcher, closed (what it admitted finished) and its pool shut down on exit."""
    batcher, pool = await started(model, **config)
    try:
        yield batcher
    finally:
        await batcher.close()
        pool.shutdown()


async def wait_until(predicate, timeout: float = WAIT_S) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.005)


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Detector:
    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=3, input_size=64)
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    Checkpoint(cfg, "grid", YOLODetector(cfg).state_dict()).save(path)
    return Detector.load(path, device="cpu")


def test_concurrent_requests_batch_and_each_gets_its_own_answer(detector):
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (int(rng.integers(30, 90)), int(rng.integers(30, 90)), 3), np.uint8)
        for _ in range(12)
    ]

    async def main():
        async with open_batcher(detector, max_batch=4, max_delay_ms=200) as batcher:
            return await asyncio.gather(*(batcher.submit(im, LOW) for im in images)), batcher

    results, batcher = run(main())
    for result, im in zip(results, images, strict=True):
        assert_same(result.detections, detector.detect([im], score_threshold=0.0)[0])
    sizes = [r.timings.batch_size for r in results]
    assert max(sizes) > 1 and max(sizes) <= 4
    assert batcher.images_run == len(images)
    assert batcher.batches_run < len(images)


def test_encoded_and_raw_images_give_the_same_answer_as_arrays(detector):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (40, 50, 3), np.uint8)
    png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
    raw = RawPixels(rgb.tobytes(), width=50, height=40, channels=3)

    async def main():
        async with open_batcher(detector, max_batch=3, max_delay_ms=50) as batcher:
            return await asyncio.gather(*(batcher.submit(src, LOW) for src in (rgb, png, raw)))

    want = detector.detect([rgb], score_threshold=0.0)[0]
    for result in run(main()):
        assert_same(result.detections, want)


def test_batch_closes_at_max_batch_without_waiting_for_the_delay():
    model = FakeModel()

    async def main():
        async with open_batcher(model, max_batch=4, max_delay_ms=60_000) as batcher:
            start = time.monotonic()
            results = await asyncio.gather(*(batcher.submit(image(v), LOW) for v in range(4)))
            return results, time.monotonic() - start

    results, elapsed = run(main())
    assert elapsed < WAIT_S
    assert model.batches == [4]
    assert [round(float(r.detections.scores[0]) * 255) for r in results] == [0, 1, 2, 3]


def test_lone_request_waits_max_delay_then_runs():
    model = FakeModel()
    delay_ms = 80.0

    async def main():
        async with open_batcher(model, max_batch=8, max_delay_ms=delay_ms) as batcher:
            return await batcher.submit(image(7), LOW)

    result = run(main())
    assert model.batches == [1]
    assert result.timings.queue_s >= delay_ms / 1000 * 0.9
    assert result.timings.batch_size == 1


def test_next_batch_fills_while_the_device_is_busy():
    model = FakeModel()
    model.gate.clear()

    async def main():
        async with open_batcher(model, max_batch=8, max_delay_ms=0) as batcher:
            try:
                first = asyncio.ensure_future(batcher.submit(image(1), LOW))
                await wait_until(model.running.is_set)
                rest = [asyncio.ensure_future(batcher.submit(image(v), LOW)) for v in (2, 3, 4)]
                await wait_until(lambda: batcher.queued == 3)
                model.gate.set()
                return await asyncio.gather(first, *rest)
            finally:
                model.gate.set()

    results = run(main())
    assert model.batches == [1, 3]
    assert [r.timings.batch_size for r in results] == [1, 3, 3, 3]


def test_full_queue_is_refused_at_once():
    model = FakeModel()
    model.gate.clear()

    async def main():
        async with open_batcher(model, max_batch=1, max_delay_ms=0, max_queue=3) as batcher:
            try:
                running = asyncio.ensure_future(batcher.submit(image(1), LOW))
                await wait_until(model.running.is_set)
                queued = [asyncio.ensure_future(batcher.submit(image(v), LOW)) for v in (2, 3, 4)]
                await wait_until(lambda: batcher.queued == 3)
                start = time.monotonic()
                with pytest.raises(QueueFullError, match="limit 3"):
                    await batcher.submit(image(5), LOW)
                refused_in = time.monotonic() - start
                model.gate.set()
                await asyncio.gather(running, *queued)
                return refused_in
            finally:
                model.gate.set()

    assert run(main()) < WAIT_S
    assert sorted(model.seen) == [1, 2, 3, 4]


def test_request_whose_deadline_passes_in_the_queue_is_not_run():
    model = FakeModel()
    model.gate.clear()

    async def main():
        async with open_batcher(model, max_batch=4, max_delay_ms=0) as batcher:
            try:
                running = asyncio.ensure_future(batcher.submit(image(1), LOW))
                await wait_until(model.running.is_set)
                late = asyncio.ensure_future(batcher.submit(image(2), LOW, time.monotonic() + 0.05))
                on_time = asyncio.ensure_future(
                    batcher.submit(image(3), LOW, time.monotonic() + 60)
                )
                await wait_until(lambda: batcher.queued == 2)
                await asyncio.sleep(0.1)
                model.gate.set()
                await asyncio.gather(running, on_time)
                with pytest.raises(DeadlineExpiredError):
                    await late
            finally:
                model.gate.set()

    run(main())
    assert sorted(model.seen) == [1, 3]


def test_already_expired_deadline_is_refused():
    async def main():
        async with open_batcher(FakeModel()) as batcher:
            with pytest.raises(DeadlineExpiredError):
                await batcher.submit(image(1), LOW, time.monotonic() - 1)

    run(main())


def test_cancelled_request_is_dropped_from_its_batch():
    model = FakeModel()
    model.gate.clear()

    async def main():
        async with open_batcher(model, max_batch=4, max_delay_ms=0) as batcher:
            try:
                running = asyncio.ensure_future(batcher.submit(image(1), LOW))
                await wait_until(model.running.is_set)
                cancelled = asyncio.ensure_future(batcher.submit(image(2), LOW))
                kept = asyncio.ensure_future(batcher.submit(image(3), LOW))
                await wait_until(lambda: batcher.queued == 2)
                cancelled.cancel()
                await asyncio.sleep(0)
                assert batcher.depth == 1
                model.gate.set()
                await asyncio.gather(running, kept)
            finally:
                model.gate.set()

    run(main())
    assert sorted(model.seen) == [1, 3]


def test_bad_image_fails_alone():
    model = FakeModel()

    async def main():
        async with open_batcher(model, max_batch=4, max_delay_ms=50) as batcher:
            return await asyncio.gather(
                batcher.submit(image(5), LOW),
                batcher.submit(b"not an image", LOW),
                batcher.submit(RawPixels(b"\x00" * 5, 2, 2, 3), LOW),
                batcher.submit(image(6), LOW),
                return_exceptions=True,
            )

    good, garbage, short, other = run(main())
    assert isinstance(garbage, ImageError) and "not a JPEG, PNG" in str(garbage)
    assert isinstance(short, ImageError) and "expected width * height * channels" in str(short)
    assert round(float(good.detections.scores[0]) * 255) == 5
    assert round(float(other.detections.scores[0]) * 255) == 6


def test_request_that_breaks_the_model_fails_alone():
    model = FakeModel()

    async def main():
        async with open_batcher(model, max_batch=3, max_delay_ms=200) as batcher:
            return await asyncio.gather(
                *(batcher.submit(image(v), LOW) for v in (4, POISON, 9)), return_exceptions=True
            )

    first, poisoned, last = run(main())
    assert isinstance(poisoned, InferenceError) and "poisoned" in str(poisoned)
    assert round(float(first.detections.scores[0]) * 255) == 4
    assert round(float(last.detections.scores[0]) * 255) == 9


def test_pixel_limit_and_class_ids_are_checked_before_queueing():
    model = FakeModel()

    async def main():
        async with open_batcher(model, max_pixels=100) as batcher:
            with pytest.raises(ImageError, match="above the server's limit of 100 pixels"):
                await batcher.submit(image(1, 20, 30), LOW)
            with pytest.raises(ValueError, match=r"class id 3 is outside \[0, 3\)"):
                await batcher.submit(image(1, 5, 5), DetectOptions(classes=(0, 3)))

    run(main())
    assert model.seen == []


def test_requests_with_different_options_share_a_batch_and_keep_their_options(detector):
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (48, 48, 3), np.uint8) for _ in range(4)]
    options = [LOW, DetectOptions(0.0, 0.3, 5), LOW, DetectOptions(0.0, 0.45, 300, (1,))]

    async def main():
        async with open_batcher(detector, max_batch=4, max_delay_ms=500) as batcher:
            return await asyncio.gather(
                *(batcher.submit(im, opt) for im, opt in zip(images, options, strict=True))
            )

    for result, im, opt in zip(run(main()), images, options, strict=True):
        want = detector.detect([im], opt)[0]
        assert_same(result.detections, want)
        assert result.timings.batch_size == 4


def test_closed_batcher_refuses_and_finishes_what_it_admitted():
    model = FakeModel()

    async def main():
        batcher, pool = await started(model, max_batch=8, max_delay_ms=100)
        pending = [asyncio.ensure_future(batcher.submit(image(v), LOW)) for v in (1, 2)]
        await asyncio.sleep(0)
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0)
        with pytest.raises(BatcherClosedError):
            await batcher.submit(image(3), LOW)
        results = await asyncio.gather(*pending)
        await closing
        pool.shutdown()
        return results

    assert len(run(main())) == 2
    assert sorted(model.seen) == [1, 2]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_batch": 0}, "max_batch"),
        ({"max_delay_ms": -1}, "max_delay_ms"),
        ({"max_queue": 0}, "max_queue"),
        ({"max_pixels": 0}, "max_pixels"),
    ],
)
def test_config_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatcherConfig(**kwargs)


@pytest.mark.parametrize("field, value", [("score_threshold", 1.5), ("iou_threshold", -0.1)])
def test_options_are_validated(field, value):
    with pytest.raises(ValueError, match=field):
        DetectOptions(**{field: value})


def test_different_options_cost_one_forward():
    """Four requests with three different option sets run as one forward of 4 images."""
    model = FakeModel()
    options = [LOW, DetectOptions(0.0, 0.3, 5), LOW, DetectOptions(0.0, 0.45, 300, (1,))]

    async def main():
        async with open_batcher(model, max_batch=4, max_delay_ms=500) as batcher:
            return await asyncio.gather(
                *(batcher.submit(image(20 + i), opt) for i, opt in enumerate(options))
            )

    results = run(main())
    assert model.batches == [4]
    assert [round(float(r.detections.scores[0]) * 255) for r in results] == [20, 21, 22, 23]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batch_runs_from_pinned_memory(tmp_path: Path):
    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=3, input_size=64)
    path = tmp_path / "m.safetensors"
    Checkpoint(cfg, "grid", YOLODetector(cfg).state_dict()).save(path)
    gpu = Detector.load(path, device="cuda")
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (50, 60, 3), np.uint8) for _ in range(4)]

    async def main():
        async with open_batcher(gpu, max_batch=4, max_delay_ms=200) as batcher:
            results = await asyncio.gather(*(batcher.submit(im, LOW) for im in images))
            return results, batcher._pinned

    results, pinned = run(main())
    assert pinned is not None and pinned.is_pinned()
    for result, im in zip(results, images, strict=True):
        want = gpu.detect([im], score_threshold=0.0)[0]
        assert result.detections.image_size == want.image_size
        assert len(result.detections) == len(want)


def test_a_batch_of_two_input_shapes_runs_one_forward_per_shape(detector):
    """Minimal padding gives landscape and portrait images different input shapes: one
    batch of both runs one forward per shape, and every answer equals detect alone."""
    rng = np.random.default_rng(5)
    shapes = [(30, 60, 3), (60, 30, 3), (16, 32, 3), (32, 16, 3)]
    images = [rng.integers(0, 256, s, np.uint8) for s in shapes]
    counted = CountingForwards(detector)

    async def main():
        async with open_batcher(counted, max_batch=4, max_delay_ms=500) as batcher:
            return await asyncio.gather(*(batcher.submit(im, LOW) for im in images))

    results = run(main())
    assert sorted(counted.batch_shapes) == [(2, 32, 64, 3), (2, 64, 32, 3)]
    for result, im in zip(results, images, strict=True):
        assert_same(result.detections, detector.detect([im], LOW)[0])
        assert result.timings.batch_size == 4


class CountingForwards:
    """A Detector that records the shape of every batch it runs."""

    def __init__(self, inner: Detector):
        self.inner = inner
        self.batch_shapes: list[tuple[int, ...]] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def forward(self, batch):
        self.batch_shapes.append(tuple(np.asarray(batch).shape))
        return self.inner.forward(batch)


def test_waiting_submits_are_admitted_in_order_as_room_appears():
    model = FakeModel()
    model.gate.clear()

    async def main():
        async with open_batcher(model, max_batch=1, max_delay_ms=0, max_queue=1) as batcher:
            try:
                running = asyncio.ensure_future(batcher.submit(image(1), LOW))
                await wait_until(model.running.is_set)
                queued = asyncio.ensure_future(batcher.submit(image(2), LOW))
                await wait_until(lambda: batcher.queued == 1)
                admitted = [asyncio.get_running_loop().create_future() for _ in range(3)]
                waiting = [
                    asyncio.ensure_future(batcher.submit(image(v), LOW, wait=True, admitted=a))
                    for v, a in zip((3, 4, 5), admitted, strict=True)
                ]
                await asyncio.sleep(0.1)
                assert not any(a.done() for a in admitted) and batcher.depth == 1
                with pytest.raises(QueueFullError):  # no waiting for room without wait=True
                    await batcher.submit(image(6), LOW)
                model.gate.set()
                results = await asyncio.gather(running, queued, *waiting)
                return [round(r.detections.scores[0] * 255) for r in results]
            finally:
                model.gate.set()

    assert run(main()) == [1, 2, 3, 4, 5]
    assert model.seen == [1, 2, 3, 4, 5]  # waiters ran in the order they came


def test_a_cancelled_waiter_gives_its_turn_to_the_next():
    model = FakeModel()
    model.gate.clear()

    async def main():
        async with open_batcher(model, max_batch=1, max_delay_ms=0, max_queue=1) as batcher:
            try:
                first = asyncio.ensure_future(batcher.submit(image(1), LOW))
                await wait_until(model.running.is_set)
                second = asyncio.ensure_future(batcher.submit(image(2), LOW))
                await wait_until(lambda: batcher.queued == 1)
                gone = asyncio.ensure_future(batcher.submit(image(3), LOW, wait=True))
                kept = asyncio.ensure_future(batcher.submit(image(4), LOW, wait=True))
                await asyncio.sleep(0.05)
                gone.cancel()
                model.gate.set()
                await asyncio.gather(first, second, kept)
            finally:
                model.gate.set()

    run(main())
    assert model.seen == [1, 2, 4]


def test_close_refuses_the_callers_waiting_for_room():
    model = FakeModel()
    model.gate.clear()

    async def main():
        batcher, pool = await started(model, max_batch=1, max_delay_ms=0, max_queue=1)
        running = asyncio.ensure_future(batcher.submit(image(1), LOW))
        await wait_until(model.running.is_set)
        queued = asyncio.ensure_future(batcher.submit(image(2), LOW))
        await wait_until(lambda: batcher.queued == 1)
        waiting = asyncio.ensure_future(batcher.submit(image(3), LOW, wait=True))
        await asyncio.sleep(0.05)
        closing = asyncio.ensure_future(batcher.close())
        with pytest.raises(BatcherClosedError):
            await waiting
        model.gate.set()
        await asyncio.gather(running, queued, closing)
        pool.shutdown()

    run(main())
    assert model.seen == [1, 2]


def test_a_request_the_queue_would_make_late_is_refused_at_once():
    model = FakeModel()

    async def main():
        async with open_batcher(model, max_batch=1, max_delay_ms=0) as batcher:
            await batcher.submit(image(1), LOW)  # measures the time per batch
            batcher._batch_time = {1: 1.0}  # pretend each image takes a second
            model.gate.clear()
            try:
                running = asyncio.ensure_future(batcher.submit(image(2), LOW))
                await wait_until(model.running.is_set)
                queued = [asyncio.ensure_future(batcher.submit(image(v), LOW)) for v in (3, 4)]
                await wait_until(lambda: batcher.queued == 2)
                # what is left of the running batch (about 1 s), 2 queued, itself
                assert batcher.expected_wait_s() == pytest.approx(4.0, abs=0.2)
                with pytest.raises(DeadlineExpiredError, match="ms to an answer"):
                    await batcher.submit(image(5), LOW, time.monotonic() + 2.0)
                model.gate.set()
                await asyncio.gather(running, *queued)
            finally:
                model.gate.set()

    run(main())
    assert sorted(model.seen) == [1, 2, 3, 4]


def test_a_request_late_for_its_forward_or_its_decode_is_not_run():
    """Deadlines are checked again in the device thread just before the forward, and in
    the decode thread before decoding."""
    model = FakeModel()
    decoded = []
    preprocess = model.preprocess
    model.preprocess = lambda im: decoded.append(int(im.max())) or preprocess(im)

    async def main():
        async with open_batcher(model, max_batch=2, max_delay_ms=0) as batcher:
            past = time.monotonic() - 1
            letterboxed, letterbox = preprocess(image(7))
            loop = asyncio.get_running_loop()
            late = batcher_module._Pending(
                letterboxed, letterbox, LOW, past, 0.0, loop.create_future()
            )
            on_time = batcher_module._Pending(
                letterboxed, letterbox, LOW, None, 0.0, loop.create_future()
            )
            outcomes = batcher._infer([late, on_time])
            with pytest.raises(DeadlineExpiredError):
                batcher._prepare(image(8), past)
            return outcomes

    late, on_time = run(main())
    assert isinstance(late, DeadlineExpiredError) and isinstance(on_time, Detections)
    assert model.batches == [1]  # the late image was left out of the forward
    assert decoded == []  # and the late decode never happened


def test_a_large_jpeg_is_decoded_reduced_and_answered_in_original_pixels():
    model = FakeModel()
    seen_shapes = []
    preprocess = model.preprocess
    model.preprocess = lambda im: seen_shapes.append(im.shape) or preprocess(im)
    height, width = 600, 1000
    data = cv2.imencode(".jpg", np.full((height, width, 3), 9, np.uint8))[1].tobytes()

    async def main():
        async with open_batcher(model) as batcher:
            return await batcher.submit(data, LOW)

    result = run(main())
    assert seen_shapes == [(75, 125, 3)]  # 1/8: the long side still >= INPUT_SIZE
    assert result.detections.image_size == (height, width)
    np.testing.assert_allclose(result.detections.boxes, [[0, 0, width, height]])


def test_waiting_callers_leave_a_quarter_of_the_queue_to_unary_calls():
    """With max_queue 8, stream frames (wait=True) stop entering at 6 queued requests;
    unary calls still get the last 2 places, then QueueFullError."""
    model = FakeModel()
    model.gate.clear()

    async def main():
        async with open_batcher(model, max_batch=1, max_delay_ms=0, max_queue=8) as batcher:
            try:
                running = asyncio.ensure_future(batcher.submit(image(1), LOW))
                await wait_until(model.running.is_set)
                streamed = [
                    asyncio.ensure_future(batcher.submit(image(v), LOW, wait=True))
                    for v in range(2, 9)
                ]
                await wait_until(lambda: batcher.queued == 6)
                await asyncio.sleep(0.1)
                assert batcher.depth == 6  # 8 - 8 // 4 queued behind the running one; 1 waits
                unary = [asyncio.ensure_future(batcher.submit(image(v), LOW)) for v in (20, 21)]
                await wait_until(lambda: batcher.queued == 8)
                with pytest.raises(QueueFullError):
                    await batcher.submit(image(22), LOW)
                model.gate.set()
                results = await asyncio.gather(running, *streamed, *unary)
                return sorted(round(r.detections.scores[0] * 255) for r in results)
            finally:
                model.gate.set()

    assert run(main()) == [1, 2, 3, 4, 5, 6, 7, 8, 20, 21]


def test_waiting_callers_take_places_unary_calls_free_however_full_of_them_the_queue_is():
    """The unary reserve counts stream frames, not the whole queue: with max_queue 8 full
    of unary calls and two stream frames waiting, each place a unary call frees goes to a
    waiting frame (not to the next unary call), up to the streams' 6 of 8."""
    model = FakeModel()
    model.gate.clear()

    async def main():
        async with open_batcher(model, max_batch=1, max_delay_ms=0, max_queue=8) as batcher:
            try:
                running = asyncio.ensure_future(batcher.submit(image(1), LOW))
                await wait_until(model.running.is_set)
                unary = [asyncio.ensure_future(batcher.submit(image(v), LOW)) for v in range(2, 10)]
                await wait_until(lambda: batcher.queued == 8)
                admitted = [asyncio.get_running_loop().create_future() for _ in range(2)]
                streamed = [
                    asyncio.ensure_future(batcher.submit(image(v), LOW, wait=True, admitted=a))
                    for v, a in zip((20, 21), admitted, strict=True)
                ]
                await asyncio.sleep(0.05)
                assert not any(a.done() for a in admitted)  # the queue is full
                for call in unary[:2]:  # two unary callers leave: two places free
                    call.cancel()
                await asyncio.wait(admitted, timeout=WAIT_S)
                taken = all(a.done() for a in admitted)
                with pytest.raises(QueueFullError):  # the frames took both places
                    await batcher.submit(image(30), LOW)
                model.gate.set()
                results = await asyncio.gather(running, *unary[2:], *streamed)
                return taken, sorted(round(r.detections.scores[0] * 255) for r in results)
            finally:
                model.gate.set()

    taken, values = run(main())
    assert taken
    assert values == [1, 4, 5, 6, 7, 8, 9, 20, 21]


LARGE_SIDE, SMALL_SIDE = 60, 8  # PNG sides of a "large" and a small image for a DecodeBudget
SMALL_PIXELS = 2000  # the budget's bound on small images
JPEG_SIDE = 8 * INPUT_SIZE  # decoded at 1/8: INPUT_SIZE**2 pixels (small), but costs as large


def png(value: int, side: int) -> bytes:
    return cv2.imencode(".png", np.full((side, side, 3), value, np.uint8))[1].tobytes()


def test_small_images_are_decoded_while_a_large_one_is_and_large_ones_at_lower_priority():
    """A large image (a PNG bomb) is decoded in the budget's own thread, at a lower CPU
    priority (Linux): with ONE decode thread for small images and a large decode in
    progress, small images are still answered; the large one is answered after. A large
    JPEG goes there too, though decoded reduced to few pixels (it costs by its full size)."""
    model = FakeModel()
    preprocess = model.preprocess
    large_started, release = threading.Event(), threading.Event()
    niceness = {}

    def held_preprocess(im: np.ndarray):
        thread = threading.get_native_id()
        niceness[im.shape[0]] = os.getpriority(os.PRIO_PROCESS, thread)
        if im.shape[0] == LARGE_SIDE:
            large_started.set()
            assert release.wait(WAIT_S)
        return preprocess(im)

    model.preprocess = held_preprocess

    async def main():
        pool = ThreadPoolExecutor(1)
        budget = DecodeBudget(max_pixels=10 * LARGE_SIDE**2, small_pixels=SMALL_PIXELS)
        batcher = Batcher(
            model, BatcherConfig(max_batch=4, max_delay_ms=0), pool, decode_budget=budget
        )
        batcher.start()
        try:
            large = asyncio.ensure_future(batcher.submit(png(1, LARGE_SIDE), LOW))
            await asyncio.to_thread(large_started.wait, WAIT_S)
            small = [batcher.submit(png(v, SMALL_SIDE), LOW) for v in (2, 3, 4)]
            done, _ = await asyncio.wait([asyncio.ensure_future(c) for c in small], timeout=WAIT_S)
            answered = sorted(round(t.result().detections.scores[0] * 255) for t in done)
            large_waiting = not large.done()
            release.set()
            answered.append(round((await large).detections.scores[0] * 255))
            jpeg = cv2.imencode(".jpg", np.full((JPEG_SIDE, JPEG_SIDE, 3), 5, np.uint8))[1]
            result = await batcher.submit(jpeg.tobytes(), LOW)
            answered.append(round(result.detections.scores[0] * 255))
            return answered, large_waiting
        finally:
            release.set()
            await batcher.close()
            pool.shutdown()
            budget.shutdown()

    answered, large_waiting = run(main())
    assert large_waiting and answered == [2, 3, 4, 1, 5]
    if sys.platform.startswith("linux"):
        assert niceness[LARGE_SIDE] > niceness[SMALL_SIDE] == os.getpriority(os.PRIO_PROCESS, 0)
        assert niceness[INPUT_SIZE] == niceness[LARGE_SIDE]  # the reduced JPEG's decode


def test_a_batch_grows_only_while_it_can_end_before_its_requests_deadlines():
    """At 10 s per image (pretended; about 8 s once the first fast batch is averaged in),
    requests with 20 s left make a batch of 2, not 3: a third image would end it after
    their deadlines; the third runs in the next batch. A request with 5 s left, less than
    one image's time, is not run at all."""
    model = FakeModel()
    model.gate.clear()

    async def main():
        async with open_batcher(model, max_batch=4, max_delay_ms=0) as batcher:
            try:
                running = asyncio.ensure_future(batcher.submit(image(1), LOW))
                await wait_until(model.running.is_set)
                now = time.monotonic()
                deadlines = {2: now + 20, 3: now + 20, 4: now + 5, 5: now + 100}
                queued = [
                    asyncio.ensure_future(batcher.submit(image(v), LOW, deadline))
                    for v, deadline in deadlines.items()
                ]
                await wait_until(lambda: batcher.queued == 4)
                batcher._batch_time = {1: 10.0}  # pretend each image takes 10 s
                model.gate.set()
                return await asyncio.gather(running, *queued, return_exceptions=True)
            finally:
                model.gate.set()

    outcomes = run(main())
    assert isinstance(outcomes[3], DeadlineExpiredError)  # the 5 s one
    assert "could not finish before its deadline" in str(outcomes[3])
    assert [round(o.detections.scores[0] * 255) for i, o in enumerate(outcomes) if i != 3] == [
        1,
        2,
        3,
        5,
    ]
    assert model.batches == [1, 2, 1]


class FixedCostModel(FakeModel):
    """A FakeModel whose forward takes FIXED_S plus PER_IMAGE_S per image (a sleep, so
    the times hold on a busy machine): a large batch costs little more than a small one."""

    FIXED_S, PER_IMAGE_S = 0.6, 0.06

    def forward(self, batch: np.ndarray | torch.Tensor) -> FakeDecoded:
        decoded = super().forward(batch)
        time.sleep(self.FIXED_S + self.PER_IMAGE_S * len(decoded.values))
        return decoded


def test_batch_times_are_kept_per_size_so_small_batches_do_not_shrink_large_ones():
    """Batches of 1 (0.66 s) and 4 (0.84 s) measured, then 4 requests with 1.8 s left
    behind a running batch of 1: all are admitted (0.66 + 0.84 s) and run as ONE batch.
    An average per image (0.66 s from the batch of 1) refused two of them at admission,
    and would have cut the batch to 1 image, the next to 1 again, and so on."""
    model = FixedCostModel()

    async def main():
        async with open_batcher(model, max_batch=4, max_delay_ms=0) as batcher:
            try:
                model.gate.clear()  # measure a batch of 1, then one of 4
                first = asyncio.ensure_future(batcher.submit(image(1), LOW))
                await wait_until(model.running.is_set)
                rest = [asyncio.ensure_future(batcher.submit(image(1), LOW)) for _ in range(4)]
                await wait_until(lambda: batcher.queued == 4)
                model.gate.set()
                await asyncio.gather(first, *rest)
                model.batches.clear()
                model.gate.clear()
                running = asyncio.ensure_future(batcher.submit(image(1), LOW))
                await wait_until(model.running.is_set)
                deadline = time.monotonic() + 1.8
                timed = [
                    asyncio.ensure_future(batcher.submit(image(v), LOW, deadline))
                    for v in (2, 3, 4, 5)
                ]
                await asyncio.sleep(0)
                model.gate.set()
                return await asyncio.gather(running, *timed, return_exceptions=True)
            finally:
                model.gate.set()

    outcomes = run(main())
    assert all(isinstance(o, BatchResult) for o in outcomes), outcomes
    assert model.batches == [1, 4]
