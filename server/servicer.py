"""The ``detector.v1.DetectorService`` servicer: a thin layer over the batchers.

It turns messages into :class:`~server.batcher.Batcher` submissions and back, maps
errors to status codes (:func:`status_of`) and counts every call in the metrics.
:func:`add_to_server` registers it with deserializers that turn bytes which are not a
valid request into :class:`UndecodableRequest` (INVALID_ARGUMENT) instead of an
UNKNOWN status and a traceback in the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from proto.detector.v1 import detector_pb2 as pb
from proto.detector.v1 import detector_pb2_grpc as pb_grpc
from server.batcher import Batcher
from server.config import MAX_STATUS_MESSAGE_CHARS
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
from server.limits import check_detect_request
from server.metrics import ServerMetrics
from server.repository import ModelRepository

log = logging.getLogger(__name__)

UNDECODABLE_WARNING_INTERVAL_S = 60.0  # at most one warning about bad bytes per interval

T = TypeVar("T")
Code = grpc.StatusCode


class RequestError(Exception):
    """The failure of one request of a batch or stream; ``index`` is its position."""

    def __init__(self, index: int, error: Exception):
        super().__init__(f"requests[{index}]: {error}")
        self.index = index
        self.error = error


class UndecodableRequest:
    """Stands for bytes that are not a valid ``message_type`` (what the deserializer of
    :func:`add_to_server` returns for them); the servicer answers INVALID_ARGUMENT."""

    def __init__(self, message_type: type[Message], error: DecodeError):
        self.message_type = message_type
        self.error = error

    def as_error(self) -> ValueError:
        name = self.message_type.DESCRIPTOR.full_name
        return ValueError(f"the request is not a valid {name}: {self.error}")


class RateLimitedWarning:
    """Logs a warning at most once per ``interval_s`` seconds, with the number of the
    ones left out since the last."""

    def __init__(self, interval_s: float):
        self._interval_s = interval_s
        self._last: float | None = None
        self._skipped = 0

    def __call__(self, message: str) -> None:
        now = time.monotonic()
        if self._last is not None and now - self._last < self._interval_s:
            self._skipped += 1
            return
        if self._skipped:
            message = f"{message} (and {self._skipped} more like it since the last warning)"
        log.warning(message)
        self._last = now
        self._skipped = 0


def status_of(error: Exception) -> tuple[grpc.StatusCode, str]:
    """The status code and message a call that raised ``error`` ends with; the message
    has at most ``MAX_STATUS_MESSAGE_CHARS`` characters."""
    code, message = _status_of(error)
    if len(message) > MAX_STATUS_MESSAGE_CHARS:
        message = f"{message[:MAX_STATUS_MESSAGE_CHARS]}…({len(message)} chars)"
    return code, message


def _status_of(error: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(error, RequestError):
        code, message = status_of(error.error)
        return code, f"requests[{error.index}]: {message}"
    if isinstance(error, ModelNotFoundError):
        return Code.NOT_FOUND, str(error)
    if isinstance(error, QueueFullError):
        return Code.RESOURCE_EXHAUSTED, str(error)
    if isinstance(error, DeadlineExpiredError):
        return Code.DEADLINE_EXCEEDED, str(error)
    if isinstance(error, BatcherClosedError | ServerShuttingDown):
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


class ServerShuttingDown(Exception):
    """The server stopped reading a stream because it is shutting down (UNAVAILABLE)."""


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
        self._warn_undecodable = RateLimitedWarning(UNDECODABLE_WARNING_INTERVAL_S)
        self._stopping = False
        self._readers: set[asyncio.Task[None]] = set()  # each open stream's reader

    def begin_shutdown(self) -> None:
        """Stop reading the requests of every stream: each answers the frames it has
        read, then ends with UNAVAILABLE; a stream that starts from now on ends at once."""
        self._stopping = True
        for reader in self._readers:
            reader.cancel()

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
        return await self._guard("ListModels", context, lambda _: self._list_models(request))

    async def StreamDetect(
        self, request_iterator: AsyncIterator[pb.DetectRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.DetectResponse]:
        start = time.monotonic()
        deadline = deadline_of(context)
        window: asyncio.Queue = asyncio.Queue(self._stream_window)
        reader = asyncio.create_task(self._read_stream(request_iterator, window, deadline))
        self._readers.add(reader)
        if self._stopping:
            reader.cancel()
        code = Code.OK
        try:
            index = 0
            while (item := await window.get()) is not END_OF_STREAM:
                if isinstance(item, ServerShuttingDown):
                    raise ServerShuttingDown(
                        f"server shutting down: the {index} frames of this stream it read "
                        "were answered; reconnect to continue"
                    )
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
            self._readers.discard(reader)
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

    def _check(self, request: Message | UndecodableRequest) -> None:
        """Refuse bytes that were not a valid request (with a rate-limited warning) and
        a ``DetectRequest`` beyond the bounds of :mod:`server.limits`."""
        if isinstance(request, UndecodableRequest):
            error = request.as_error()
            self._warn_undecodable(f"refused a request: {error}")
            raise error
        if isinstance(request, pb.DetectRequest):
            check_detect_request(request)

    async def _detect(
        self,
        request: pb.DetectRequest,
        deadline: float | None,
        admitted: asyncio.Future[None] | None = None,
    ) -> pb.DetectResponse:
        """One request; with ``admitted`` (streams) it waits for room in the model's queue
        instead of being refused, and sets ``admitted`` once the batcher took it."""
        arrival = time.monotonic()
        self._check(request)
        model = self._repository.get(request.model)
        options = options_from_request(request, model.options)
        image = image_from_proto(request.image)
        wait = admitted is not None
        batcher = self._batchers[model.name]
        result = await batcher.submit(image, options, deadline, wait=wait, admitted=admitted)
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
        self._check(request)
        count = len(request.requests)
        if not 1 <= count <= self._max_images_per_call:
            raise ValueError(
                f"DetectBatch takes 1 to {self._max_images_per_call} requests, got {count}"
            )
        for index, item in enumerate(request.requests):  # every bound before any work
            try:
                check_detect_request(item)
            except ValueError as err:
                raise RequestError(index, err) from err
        outcomes = await asyncio.gather(
            *(self._detect(r, deadline) for r in request.requests), return_exceptions=True
        )
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, Exception):
                raise RequestError(index, outcome)
            if isinstance(outcome, BaseException):
                raise outcome
        return pb.DetectBatchResponse(responses=outcomes)

    async def _list_models(self, request: pb.ListModelsRequest) -> pb.ListModelsResponse:
        self._check(request)
        default = self._repository.default
        models = [model_info_to_proto(m, m.name == default) for m in self._repository]
        return pb.ListModelsResponse(models=models, default_model=default)

    async def _read_stream(
        self,
        requests: AsyncIterator[pb.DetectRequest],
        window: asyncio.Queue,
        deadline: float | None,
    ) -> None:
        """Start each request as it arrives; the window bounds how many run at once.

        Backpressure: the next request is read only once the batcher admitted this one
        (or it failed), so while the model's queue is full nothing is read and gRPC
        flow control holds the sender. Cancelled by :meth:`begin_shutdown`, it stops
        reading and marks the end of the stream with :class:`ServerShuttingDown`.
        """
        end: object = END_OF_STREAM
        try:
            async for request in requests:
                admitted = asyncio.get_running_loop().create_future()
                task = asyncio.ensure_future(self._detect(request, deadline, admitted))
                try:
                    await window.put(task)
                except asyncio.CancelledError:
                    _discard(task)
                    raise
                await asyncio.wait((task, admitted), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            end = ServerShuttingDown()
        except Exception as err:  # the request stream itself broke
            end = err
        await window.put(end)


def add_to_server(servicer: DetectorServicer, server: grpc.aio.Server) -> None:
    """Register ``servicer`` with ``server``, as the generated
    ``add_DetectorServiceServicer_to_server`` does, but with request deserializers that
    return :class:`UndecodableRequest` for bytes that do not decode."""
    service = pb.DESCRIPTOR.services_by_name["DetectorService"]
    handlers = {}
    for method in service.methods:
        request_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        if method.client_streaming != method.server_streaming:
            raise AssertionError(f"{method.name}: no handler kind for this streaming mix")
        make = (
            grpc.stream_stream_rpc_method_handler
            if method.client_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=_lenient_deserializer(request_type),
            response_serializer=response_type.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)


def _lenient_deserializer(
    message_type: type[Message],
) -> Callable[[bytes], Message | UndecodableRequest]:
    def deserialize(data: bytes) -> Message | UndecodableRequest:
        try:
            return message_type.FromString(data)
        except DecodeError as err:
            return UndecodableRequest(message_type, err)

    return deserialize


def _cancelled_code(deadline: float | None) -> grpc.StatusCode:
    expired = deadline is not None and time.monotonic() >= deadline
    return Code.DEADLINE_EXCEEDED if expired else Code.CANCELLED


def _discard(item: object) -> None:
    """Cancel a request task that will not be answered (and silence its error)."""
    if isinstance(item, asyncio.Future):
        if item.done() and not item.cancelled():
            item.exception()
        item.cancel()
