"""Dynamic batching for one model, free of gRPC (so it is unit-testable on its own).

A request's life, all on one asyncio event loop:

1. :meth:`Batcher.submit` admits it, or refuses at once with ``QueueFullError`` when
   ``max_queue`` requests are already waiting (decoding or queued) -- or, with
   ``wait=True`` (streams), waits for room, which is how a stream applies backpressure
   (waiting callers get each freed place first, but hold at most 3/4 of the queue: the
   rest stays for unary calls, see ``UNARY_RESERVE``);
   with a deadline it is refused at once (``DeadlineExpiredError``) when the queue's
   expected wait (from the measured time per batch) is longer than the time left;
2. its image is decoded and letterboxed in a thread pool shared by all models, so many
   images are prepared in parallel, off the event loop; bad images fail here with
   :class:`~server.images.ImageError` and never reach a batch;
3. it waits in the queue. The worker closes a batch at ``max_batch`` requests or
   ``max_delay_ms`` after the first request of the batch was queued, whichever comes
   first; while a batch runs on the device the next one keeps filling, so under load
   batches close at once, full;
4. on closing, and again in the device thread just before the forward, requests whose
   deadline has passed fail with ``DeadlineExpiredError`` and cancelled ones are
   dropped: neither is run (errors: :mod:`server.errors`); a request whose deadline
   passed while it waited for a decode thread is not decoded;
5. the batch is stacked into one ``(B, S, S, 3)`` uint8 array (pinned host memory on
   CUDA) and runs as one forward in the model's own device thread
   (:meth:`~detector.predict.Detector.forward`), then one post-processing
   (:meth:`~detector.predict.Detector.postprocess`) per distinct set of options;
6. each caller's future gets its own :class:`Detections`. If a batch fails as a whole,
   its images are retried one by one, so a request that breaks the model fails alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import torch

from detector.boxes import Letterbox
from detector.postprocess import Candidates
from detector.settings import Detections, DetectOptions, class_ids
from server.config import BatcherConfig
from server.errors import (
    BatcherClosedError,
    BatcherError,
    DeadlineExpiredError,
    InferenceError,
    QueueFullError,
)
from server.images import (
    DecodeBudget,
    ImageSource,
    decode_reduced,
    decoded_pixels,
    encoded_pixels,
    original_letterbox,
)

log = logging.getLogger(__name__)

MS_PER_S = 1000.0
# The share of the queue that waiting callers (stream frames) leave to callers that do
# not wait (unary calls): without it, a soak of 16 streams beside 16 unary clients let 5
# unary calls of 5,584 in. A queue of fewer than 4 places is all the streams'.
UNARY_RESERVE = 0.25
BATCH_TIME_SMOOTHING = 0.2  # weight of the newest batch in the moving average of its size


class BatchModel(Protocol):
    """What the batcher needs of a model: :class:`~detector.predict.Detector` has it."""

    name: str
    device: torch.device
    names: list[str]

    @property
    def input_size(self) -> int: ...

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]: ...

    def forward(self, batch: np.ndarray | torch.Tensor) -> Candidates:
        """One device forward of a ``(B, S, S, 3)`` uint8 batch."""
        ...

    def postprocess(
        self, candidates: Candidates, letterboxes: Sequence[Letterbox], options: DetectOptions
    ) -> list[Detections]:
        """Post-process ``candidates`` (from :meth:`forward`) with one set of options."""
        ...


class BatchObserver(Protocol):
    """Receives the batcher's measurements (see :mod:`server.metrics`)."""

    def queue_depth(self, depth: int) -> None: ...

    def dropped(self, reason: str) -> None: ...

    def decoded(self, seconds: float) -> None: ...

    def batch(self, size: int, inference_s: float, queue_s: Sequence[float]) -> None: ...


class NullObserver:
    """An observer that ignores everything."""

    def queue_depth(self, depth: int) -> None:
        pass

    def dropped(self, reason: str) -> None:
        pass

    def decoded(self, seconds: float) -> None:
        pass

    def batch(self, size: int, inference_s: float, queue_s: Sequence[float]) -> None:
        pass


# Reasons a request is dropped without running (the ``reason`` of BatchObserver.dropped).
DROP_QUEUE_FULL, DROP_DEADLINE, DROP_CANCELLED = "queue_full", "deadline", "cancelled"


@dataclass(frozen=True)
class Timings:
    """Where one request's time went, in seconds."""

    decode_s: float  # decoding and letterboxing its image
    queue_s: float  # from queued (decoded) to the start of its batch
    inference_s: float  # its batch's forward and post-processing
    batch_size: int  # images in its batch


@dataclass(frozen=True)
class BatchResult:
    detections: Detections
    timings: Timings


@dataclass(eq=False)
class _Pending:
    """A decoded request waiting for its batch."""

    letterboxed: np.ndarray  # (S, S, 3) uint8
    letterbox: Letterbox
    options: DetectOptions
    deadline: float | None  # time.monotonic() seconds
    decode_s: float
    future: asyncio.Future[BatchResult]
    waited: bool = False  # submitted with wait=True (a stream's frame)
    queued_at: float = field(default_factory=time.monotonic)


class Batcher:
    """Dynamic batcher of one model. Create, :meth:`start` on a running loop, :meth:`submit`.

    Args:
        model: the model (a :class:`~detector.predict.Detector`).
        config: batching settings.
        decode_pool: threads that decode and letterbox images (may be shared).
        observer: receives measurements; :class:`NullObserver` by default.
        decode_budget: decodes large images, in threads of its own at a lower priority,
            and bounds their pixels decoded at once (may be shared, with the pool);
            None: every image is decoded in ``decode_pool``.
    """

    def __init__(
        self,
        model: BatchModel,
        config: BatcherConfig,
        decode_pool: Executor,
        observer: BatchObserver | None = None,
        decode_budget: DecodeBudget | None = None,
    ):
        self.model = model
        self._decode_budget = decode_budget
        self.config = config
        self._decode_pool = decode_pool
        self._observer = observer or NullObserver()
        self._device_pool = ThreadPoolExecutor(1, thread_name_prefix=f"device-{model.name}")
        self._queue: deque[_Pending] = deque()
        self._decoding = 0
        self._decoding_waited = 0  # of those decoding, the ones submitted with wait=True
        self._wakeup = asyncio.Event()
        self._room_waiters: deque[asyncio.Future[None]] = deque()  # submit(wait=True) callers
        self._granted = 0  # waiters woken with room kept for them, not yet admitted
        # Moving average of the device time of a batch, per batch size: a forward has a
        # fixed cost, so an average per image taken from small batches overestimated
        # large ones, and deadline-aware batching then shrank batches further (under 4x
        # overload with 150 ms deadlines they fell to 1.1 images).
        self._batch_time: dict[int, float] = {}
        self._running_until = 0.0  # time.monotonic() the running batch should end at
        self._closing = False
        self._worker: asyncio.Task[None] | None = None
        self._pinned: torch.Tensor | None = None  # max_batch x S x S x 3 uint8, CUDA only
        self.images_run = 0  # images that went through a forward pass
        self.batches_run = 0

    @property
    def depth(self) -> int:
        """Requests admitted and not yet running (decoding or queued)."""
        return self._decoding + len(self._queue)

    @property
    def queued(self) -> int:
        """Requests decoded and waiting for a batch."""
        return len(self._queue)

    def start(self) -> None:
        """Start the worker on the running event loop."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run())

    def expected_wait_s(self) -> float | None:
        """How long a request admitted now would take to be answered, in seconds: what
        is left of the batch running now, then the requests ahead of it and itself, at
        the measured device time per image (batches share the cost of a forward, so
        this is what the queue drains at); None before the first batch."""
        if not self._batch_time:
            return None
        running = max(0.0, self._running_until - time.monotonic())
        full, rest = divmod(self.depth + 1, self.config.max_batch)
        return running + full * self._batch_s(self.config.max_batch) + self._batch_s(rest)

    async def close(self) -> None:
        """Admit nothing more, run what was admitted, then stop the worker; callers
        waiting for room are refused."""
        self._closing = True
        self._wake_room_waiters()
        self._wakeup.set()
        if self._worker is not None:
            await self._worker
        self._device_pool.shutdown(wait=True)

    async def submit(
        self,
        image: ImageSource,
        options: DetectOptions,
        deadline: float | None = None,
        *,
        wait: bool = False,
        admitted: asyncio.Future[None] | None = None,
    ) -> BatchResult:
        """Detect objects in one image, batched with other callers' images.

        Args:
            image: the request image (see :func:`server.images.decode_image`).
            options: thresholds and class filter (ids or names of the model's classes);
                requests with equal options share one post-processing.
            deadline: ``time.monotonic()`` seconds after which the request is not run;
                a request that the queue's expected wait would make miss it is refused.
            wait: when the queue is full, wait for room instead of raising
                ``QueueFullError`` (callers are admitted in the order they came).
            admitted: a future this sets once the request is admitted, so a caller
                (a stream) can hold back its next request until then.

        Raises:
            QueueFullError, DeadlineExpiredError, BatcherClosedError: not run.
            ImageError: the image cannot be used.
            ValueError: a class the model does not have.
            InferenceError: the model failed on this image.
        """
        options = replace(options, classes=class_ids(options.classes, self.model.names))
        if wait:
            await self._wait_for_room()
        try:
            self._check_admission(deadline)
        except BatcherError:
            self._wake_room_waiters()  # room kept for this caller goes to the next
            raise
        loop = asyncio.get_running_loop()
        self._decoding += 1
        self._decoding_waited += wait
        if admitted is not None and not admitted.done():
            admitted.set_result(None)
        self._observer.queue_depth(self.depth)
        try:
            start = time.monotonic()
            budget = self._decode_budget
            full = encoded_pixels(image)  # above the limit: refused at once, in the pool
            if budget is not None and budget.is_large(full) and full <= self.config.max_pixels:
                pixels = decoded_pixels(image, self.model.input_size)
                prepared = await budget.run(pixels, self._prepare, image, deadline)
            else:
                prepared = await loop.run_in_executor(
                    self._decode_pool, self._prepare, image, deadline
                )
            letterboxed, letterbox = prepared
            decode_s = time.monotonic() - start
        except BaseException as err:
            if isinstance(err, asyncio.CancelledError):
                self._observer.dropped(DROP_CANCELLED)
            self._decoding -= 1
            self._decoding_waited -= wait
            self._left_before_queueing()
            raise
        self._decoding -= 1
        self._decoding_waited -= wait
        self._observer.decoded(decode_s)
        if deadline is not None and time.monotonic() >= deadline:
            self._left_before_queueing()
            self._check_deadline(deadline)
        future = loop.create_future()
        item = _Pending(letterboxed, letterbox, options, deadline, decode_s, future, waited=wait)
        self._queue.append(item)
        self._observer.queue_depth(self.depth)
        self._wakeup.set()
        try:
            return await item.future
        except asyncio.CancelledError:
            if item in self._queue:
                self._queue.remove(item)
                self._observer.queue_depth(self.depth)
                self._wake_room_waiters()
            self._observer.dropped(DROP_CANCELLED)
            raise

    def _check_admission(self, deadline: float | None) -> None:
        if self._closing:
            raise BatcherClosedError(f"model {self.model.name!r} is shutting down")
        if self.depth + self._granted >= self.config.max_queue:  # a waiter's room is kept
            self._observer.dropped(DROP_QUEUE_FULL)
            raise QueueFullError(
                f"model {self.model.name!r} has {self.depth} requests waiting "
                f"(limit {self.config.max_queue}); retry later"
            )
        self._check_deadline(deadline)
        self._check_expected_wait(deadline)

    def _left_before_queueing(self) -> None:
        """A request admitted for decoding leaves without being queued (bad image,
        cancelled, deadline passed): its room goes to a waiter."""
        self._observer.queue_depth(self.depth)
        self._wakeup.set()  # close() may be waiting for decodes to finish
        self._wake_room_waiters()

    async def _wait_for_room(self) -> None:
        """Wait until the queue has room (or the batcher closes), first come first served:
        :meth:`_wake_room_waiters` keeps the room for the waiter it wakes."""
        if self._closing or (not self._room_waiters and self._room_for_a_waiter()):
            return
        waiter = asyncio.get_running_loop().create_future()
        self._room_waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter in self._room_waiters:
                self._room_waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled():  # woken, then cancelled
                self._granted -= 1
                self._wake_room_waiters()
            raise
        self._granted -= 1  # the caller is admitted before its next await

    def _room_for_a_waiter(self) -> bool:
        """Whether a waiting caller (a stream's frame) may enter now: the queue has room,
        and the requests of waiting callers in it (with the room kept for woken ones)
        hold less than all of it but ``UNARY_RESERVE``. So unary calls always find that
        share of the queue free of stream frames (streams first in line starved them),
        while stream frames, woken first whenever a place frees, take any place unary
        calls leave, however full of unary calls the queue is."""
        max_queue = self.config.max_queue
        if self.depth + self._granted >= max_queue:
            return False
        waited = self._decoding_waited + sum(item.waited for item in self._queue)
        return waited + self._granted < max_queue - int(max_queue * UNARY_RESERVE)

    def _wake_room_waiters(self) -> None:
        """Wake as many waiters for room as there is room (all of them when closing)."""
        while self._room_waiters and (self._closing or self._room_for_a_waiter()):
            waiter = self._room_waiters.popleft()
            if not waiter.done():  # not cancelled meanwhile
                waiter.set_result(None)
                self._granted += 1

    def _check_deadline(self, deadline: float | None) -> None:
        if deadline is not None and time.monotonic() >= deadline:
            self._observer.dropped(DROP_DEADLINE)
            raise DeadlineExpiredError("the deadline passed before the request could run")

    def _check_expected_wait(self, deadline: float | None) -> None:
        """Refuse a request that the queue ahead of it would make miss its deadline."""
        expected = self.expected_wait_s()
        if deadline is None or expected is None:
            return
        left = deadline - time.monotonic()
        if expected > left:
            self._observer.dropped(DROP_DEADLINE)
            raise DeadlineExpiredError(
                f"model {self.model.name!r} has {self.depth} requests waiting: about "
                f"{expected * MS_PER_S:.0f} ms to an answer, more than the "
                f"{max(left, 0) * MS_PER_S:.0f} ms left before the deadline"
            )

    def _prepare(self, image: ImageSource, deadline: float | None) -> tuple[np.ndarray, Letterbox]:
        """Decode and letterbox (runs in the decode pool); a request whose deadline
        passed while it waited for a decode thread is not decoded. A large JPEG is
        decoded reduced; the letterbox still maps to its original pixels."""
        self._check_deadline(deadline)
        reduced = decode_reduced(image, self.config.max_pixels, self.model.input_size)
        letterboxed, letterbox = self.model.preprocess(reduced.image)
        return letterboxed, original_letterbox(letterbox, reduced)

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            if batch is None:
                return
            if batch:
                await self._run_batch(batch)

    async def _collect(self) -> list[_Pending] | None:
        """The next batch (possibly empty after drops), or None once closed and drained."""
        while not self._queue:
            if self._closing and self._decoding == 0:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        close_at = self._queue[0].queued_at + self.config.max_delay_ms / MS_PER_S
        while len(self._queue) < self.config.max_batch and not self._closing:
            remaining = close_at - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)
        now = time.monotonic()
        batch: list[_Pending] = []
        while self._queue and len(batch) < self.config.max_batch:
            item = self._queue[0]
            if item.future.done():  # cancelled by its caller
                self._queue.popleft()
                continue
            if item.deadline is not None and now + self._batch_s(1) > item.deadline:
                self._queue.popleft()
                self._observer.dropped(DROP_DEADLINE)
                item.future.set_exception(
                    DeadlineExpiredError(
                        "the deadline passed while the request was queued"
                        if now >= item.deadline
                        else "the request could not finish before its deadline: not run"
                    )
                )
                continue
            if not self._finishes_in_time([*batch, item], now):
                break  # it would make the batch late for a deadline: it goes in the next
            batch.append(self._queue.popleft())
        self._observer.queue_depth(self.depth)
        self._wake_room_waiters()
        return batch

    def _batch_s(self, size: int) -> float:
        """Expected device time of a batch of ``size`` images, from the moving averages
        per size: the one of that size, else interpolated between the nearest sizes
        measured below and above; beyond the largest, scaled up from it in proportion;
        below the smallest, the smallest's (both err on the long side). 0 for ``size`` 0
        and before the first batch."""
        times = self._batch_time
        if size == 0 or not times:
            return 0.0
        if size in times:
            return times[size]
        below = max((m for m in times if m < size), default=None)
        above = min((m for m in times if m > size), default=None)
        if above is None:
            return times[below] * size / below
        if below is None:
            return times[above]
        share = (size - below) / (above - below)
        return times[below] + share * (times[above] - times[below])

    def _finishes_in_time(self, batch: list[_Pending], start: float) -> bool:
        """Whether ``batch``, started at ``start``, is expected to end before the
        deadline of each of its requests: an image that joins a batch lengthens its
        forward, and a request admitted in time could be answered late because of it
        (under 4x overload with 150 ms deadlines, 146 images ran for callers gone)."""
        end = start + self._batch_s(len(batch))
        return all(item.deadline is None or end <= item.deadline for item in batch)

    async def _run_batch(self, batch: list[_Pending]) -> None:
        start = time.monotonic()
        self._running_until = start + self._batch_s(len(batch))
        loop = asyncio.get_running_loop()
        try:
            outcomes = await loop.run_in_executor(self._device_pool, self._infer, batch)
        except Exception as err:  # the device thread itself failed: fail this batch only
            log.exception("device thread of %s failed", self.model.name)
            outcomes = [InferenceError(f"model {self.model.name!r} failed: {err}")] * len(batch)
        inference_s = time.monotonic() - start
        late = sum(1 for outcome in outcomes if isinstance(outcome, DeadlineExpiredError))
        for _ in range(late):
            self._observer.dropped(DROP_DEADLINE)
        ran = len(batch) - late
        if ran:
            self.images_run += ran
            self.batches_run += 1
            smoothed = self._batch_time.get(ran, inference_s)
            self._batch_time[ran] = smoothed + BATCH_TIME_SMOOTHING * (inference_s - smoothed)
            queue_s = [start - item.queued_at for item in batch]
            self._observer.batch(ran, inference_s, queue_s)
        for item, outcome in zip(batch, outcomes, strict=True):
            if item.future.done():  # cancelled while running
                continue
            if isinstance(outcome, BaseException):
                item.future.set_exception(outcome)
                continue
            timings = Timings(item.decode_s, start - item.queued_at, inference_s, len(batch))
            item.future.set_result(BatchResult(outcome, timings))

    def _infer(self, batch: list[_Pending]) -> list[Detections | BaseException]:
        """In the device thread: one forward per input shape in the batch (images are
        letterboxed with minimal padding, so a batch of same-shaped images, such as a
        video's frames, is one forward), then one post-processing per options group."""
        outcomes: dict[int, Detections | BaseException] = {}
        by_shape: dict[tuple[int, ...], list[int]] = {}
        now = time.monotonic()
        for i, item in enumerate(batch):
            if item.deadline is not None and now >= item.deadline:  # late: not run
                outcomes[i] = DeadlineExpiredError("the deadline passed before the forward")
                continue
            by_shape.setdefault(item.letterboxed.shape, []).append(i)
        for indices in by_shape.values():
            found = self._infer_same_shape([batch[i] for i in indices])
            outcomes.update(zip(indices, found, strict=True))
        return [outcomes[i] for i in range(len(batch))]

    def _infer_same_shape(self, batch: list[_Pending]) -> list[Detections | BaseException]:
        """One forward of same-shaped images, then post-process each options group; if
        the forward fails, retry the images one by one."""
        try:
            candidates = self.model.forward(self._stack([item.letterboxed for item in batch]))
        except Exception:
            log.exception(
                "batch of %d failed on %s; retrying one by one", len(batch), self.model.name
            )
            return [self._forward_alone(item) for item in batch]
        groups: dict[DetectOptions, list[int]] = {}
        for i, item in enumerate(batch):
            groups.setdefault(item.options, []).append(i)
        outcomes: dict[int, Detections | BaseException] = {}
        for options, indices in groups.items():
            try:
                results: list[Detections | BaseException] = list(
                    self._select(candidates.take(indices), [batch[i] for i in indices], options)
                )
            except Exception as err:
                results = [InferenceError(f"model {self.model.name!r} failed: {err}")] * len(
                    indices
                )
            outcomes.update(zip(indices, results, strict=True))
        return [outcomes[i] for i in range(len(batch))]

    def _forward_alone(self, item: _Pending) -> Detections | BaseException:
        try:
            candidates = self.model.forward(self._stack([item.letterboxed]))
            return self._select(candidates, [item], item.options)[0]
        except Exception as err:
            return InferenceError(f"model {self.model.name!r} failed on this image: {err}")

    def _select(
        self, candidates: Candidates, items: list[_Pending], options: DetectOptions
    ) -> list[Detections]:
        return self.model.postprocess(candidates, [item.letterbox for item in items], options)

    def _stack(self, images: list[np.ndarray]) -> np.ndarray | torch.Tensor:
        """``(B, h, w, 3)`` uint8 of same-shaped images; on CUDA a view of a reused pinned
        buffer of ``max_batch`` images of the model's full square, which holds any
        letterboxed shape."""
        if self.model.device.type != "cuda":
            return np.stack(images)
        if self._pinned is None:
            size = self.model.input_size
            self._pinned = torch.empty(
                self.config.max_batch * size * size * 3, dtype=torch.uint8
            ).pin_memory()
        # Safe to reuse: forward copies the batch to the device and waits for its results
        # before this thread stacks the next batch.
        shape = (len(images), *images[0].shape)
        pinned = self._pinned[: math.prod(shape)].view(shape)
        np.stack(images, out=pinned.numpy())
        return pinned
