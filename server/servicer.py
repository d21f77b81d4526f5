"""The ``detector.v1.DetectorService`` servicer: a thin layer over the batchers.

It turns messages into :class:`~server.batcher.Batcher` submissions and back, maps
errors to status codes (:func:`status_of`) and counts every call in the metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TypeVar

import grpc

from proto.detector.v1 import detector_pb2 as pb
from proto.detector.v1 import detector_pb2_grpc as pb_grpc
from server.batcher import Batcher
from server.convert import (
    image_from_proto,
    model_info_to_proto,
    options_from_request,
    response_to_proto,
)
from server.errors import (
    BatcherClosedError,
    DeadlineExpiredError,
    InferenceError,
    ModelNotFoundError,
    QueueFullError,
)
from server.metrics import ServerMetrics
from server.repository import ModelRepository

log = logging.getLogger(__name__)

T = TypeVar("T")
Code = grpc.StatusCode


class RequestError(Exception):
    """The failure of one request of a batch or stream; ``index`` is its position."""

    def __init__(self, index: int, error: Exception):
        super().__init__(f"requests[{index}]: {error}")
        self.index = index
        self.error = error


def status_of(error: Exception) -> tuple[grpc.StatusCode, str]:
    """The status code and message a call that raised ``error`` ends with."""
    if isinstance(error, RequestError):
        code, message = status_of(error.error)
        return code, f"requests[{error.index}]: {message}"
    if isinstance(error, ModelNotFoundError):
        return Code.NOT_FOUND, str(error)
    if isinstance(error, QueueFullError):
        return Code.RESOURCE_EXHAUSTED, str(error)
    if isinstance(error, DeadlineExpiredError):
        return Code.DEADLINE_EXCEEDED, str(error)
    if isinstance(error, BatcherClosedError):
        return Code.UNAVAILABLE, str(error)
    if isinstance(error, InferenceError):
        return Code.INTERNAL, str(error)
    if isinstance(error, ValueError):  # bad image (ImageError), threshold, class
        return Code.INVALID_ARGUMENT, str(error)
    log.error("unexpected error", exc_info=error)
    return Code.INTERNAL, f"internal error: {type(error).__name__}: {error}"


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline in ``time.monotonic()`` seconds, or None."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class _EndOfStream:
    """Marks the end of the requests of a stream."""


END_OF_STREAM = _EndOfStream()


class DetectorServicer(pb_grpc.DetectorServiceServicer):
    """Serves ``DetectorService`` from one batcher per model.

    Args:
        repository: the served models.
        batchers: a started batcher per model name.
        metrics: where calls are counted.
        stream_window: most requests of one stream being processed at a time.
        max_images_per_call: most requests in one ``DetectBatch`` call.
    """

    def __init__(
        self,
        repository: ModelRepository,
        batchers: Mapping[str, Batcher],
        metrics: ServerMetrics,
        stream_window: int,
        max_images_per_call: int,
    ):
        self._repository = repository
        self._batchers = batchers
        self._metrics = metrics
        self._stream_window = stream_window
        self._max_images_per_call = max_images_per_call

    async def Detect(
        self, request: pb.DetectRequest, context: grpc.aio.ServicerContext
    ) -> pb.DetectResponse:
        return await self._guard(
            "Detect", context, lambda deadline: self._detect(request, deadline)
        )

    async def DetectBatch(
        self, request: pb.DetectBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.DetectBatchResponse:
        return await self._guard(
            "DetectBatch", context, lambda deadline: self._batch(request, deadline)
        )

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return await self._guard("ListModels", context, lambda _: self._list_models())

    async def StreamDetect(
        self, request_iterator: AsyncIterator[pb.DetectRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.DetectResponse]:
        start = time.monotonic()
        deadline = deadline_of(context)
        window: asyncio.Queue = asyncio.Queue(self._stream_window)
        reader = asyncio.create_task(self._read_stream(request_iterator, window, deadline))
        code = Code.OK
        try:
            index = 0
            while (item := await window.get()) is not END_OF_STREAM:
                if isinstance(item, Exception):
                    raise item
                try:
                    yield await item
                except Exception as err:
                    raise RequestError(index, err) from err
                index += 1
        except (asyncio.CancelledError, GeneratorExit):
            code = _cancelled_code(deadline)
            raise
        except Exception as err:
            code, message = status_of(err)
            await context.abort(code, message)
        finally:
            reader.cancel()
            while not window.empty():
                _discard(window.get_nowait())
            self._metrics.request("StreamDetect", code.name, time.monotonic() - start)

    async def _guard(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        call: Callable[[float | None], Awaitable[T]],
    ) -> T:
        """Run ``call(deadline)``; end the RPC with the status of its error; count it."""
        start = time.monotonic()
        deadline = deadline_of(context)
        code = Code.OK
        try:
            return await call(deadline)
        except asyncio.CancelledError:
            code = _cancelled_code(deadline)
            raise
        except Exception as err:
            code, message = status_of(err)
            await context.abort(code, message)
            raise  # abort raises; this line is never reached
        finally:
            self._metrics.request(method, code.name, time.monotonic() - start)

    async def _detect(self, request: pb.DetectRequest, deadline: float | None) -> pb.DetectResponse:
        arrival = time.monotonic()
        model = self._repository.get(request.model)
        options = options_from_request(request, model.options)
        image = image_from_proto(request.image)
        result = await self._batchers[model.name].submit(image, options, deadline)
        return response_to_proto(
            request.request_id,
            model.name,
            result.detections,
            result.timings,
            time.monotonic() - arrival,
        )

    async def _batch(
        self, request: pb.DetectBatchRequest, deadline: float | None
    ) -> pb.DetectBatchResponse:
        count = len(request.requests)
        if not 1 <= count <= self._max_images_per_call:
            raise ValueError(
                f"DetectBatch takes 1 to {self._max_images_per_call} requests, got {count}"
            )
        outcomes = await asyncio.gather(
            *(self._detect(r, deadline) for r in request.requests), return_exceptions=True
        )
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, Exception):
                raise RequestError(index, outcome)
            if isinstance(outcome, BaseException):
                raise outcome
        return pb.DetectBatchResponse(responses=outcomes)

    async def _list_models(self) -> pb.ListModelsResponse:
        default = self._repository.default
        models = [model_info_to_proto(m, m.name == default) for m in self._repository]
        return pb.ListModelsResponse(models=models, default_model=default)

    async def _read_stream(
        self,
        requests: AsyncIterator[pb.DetectRequest],
        window: asyncio.Queue,
        deadline: float | None,
    ) -> None:
        """Start each request as it arrives; the window bounds how many run at once."""
        try:
            async for request in requests:
                await window.put(asyncio.ensure_future(self._detect(request, deadline)))
            await window.put(END_OF_STREAM)
        except Exception as err:  # the request stream itself broke
            await window.put(err)


def _cancelled_code(deadline: float | None) -> grpc.StatusCode:
    expired = deadline is not None and time.monotonic() >= deadline
    return Code.DEADLINE_EXCEEDED if expired else Code.CANCELLED


def _discard(item: object) -> None:
    """Cancel a request task that will not be answered (and silence its error)."""
    if isinstance(item, asyncio.Future):
        if item.done() and not item.cancelled():
            item.exception()
        item.cancel()
