"""A small typed client of ``detector.v1.DetectorService``.

    with DetectorClient("localhost:50051") as client:
        detections = client.detect(rgb_image)                  # one image
        batch = client.detect_batch([a, b, c])                 # many, one call
        for det in client.stream_detect(frames):               # a video's frames, in order
            ...

Images are ``(H, W[, C])`` uint8 RGB arrays (sent as raw pixels), the bytes of an image
file, or a file path (both sent encoded). Answers are :class:`detector.settings.Detections`,
the type ``Detector.detect`` returns, in the original image's pixels. A failed call
raises :class:`RemoteError` with the gRPC status code and the server's message.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from detector.settings import Detections
from proto.detector.v1 import detector_pb2 as pb
from proto.detector.v1 import detector_pb2_grpc as pb_grpc
from server.convert import (
    ImageLike,
    ModelInfo,
    detections_from_proto,
    model_info_from_proto,
    request_to_proto,
)
from server.security import bearer_metadata, channel_credentials

MIB = 1 << 20
DEFAULT_MAX_MESSAGE_MB = 64


class RemoteError(RuntimeError):
    """A call failed; ``code`` is its gRPC status code, ``details`` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


def _remote(err: grpc.RpcError) -> RemoteError:
    return RemoteError(err.code(), err.details() or "")  # type: ignore[attr-defined]


class DetectorClient:
    """A connection to a detector server.

    Args:
        address: ``host:port``.
        timeout: seconds each unary call may take (None = no deadline); streams take
            their own ``timeout`` argument.
        max_message_mb: largest message sent or received, in MiB.
        tls: connect over TLS; None = when ``tls_ca`` or ``tls_cert`` is given.
        tls_ca: PEM file of the CA that signed the server's certificate (None: the
            system's roots).
        tls_cert, tls_key: PEM files of a client certificate and its key, for a server
            that requires one (both or neither).
        auth_token: the server's token (``detector serve --auth-token-file``), sent as
            ``authorization: Bearer <token>`` with every call.
    """

    def __init__(
        self,
        address: str,
        timeout: float | None = None,
        max_message_mb: int = DEFAULT_MAX_MESSAGE_MB,
        *,
        tls: bool | None = None,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        auth_token: str | None = None,
    ):
        max_bytes = max_message_mb * MIB
        self.address = address
        self.timeout = timeout
        options = [
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
        ]
        if tls is None:
            tls = tls_ca is not None or tls_cert is not None
        if tls:
            credentials = channel_credentials(tls_ca, tls_cert, tls_key)
            self._channel = grpc.secure_channel(address, credentials, options=options)
        elif tls_ca is not None or tls_cert is not None or tls_key is not None:
            raise ValueError("tls=False contradicts the TLS files given")
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._metadata = bearer_metadata(auth_token)
        self._stub = pb_grpc.DetectorServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._landmarks: dict[str, int] | None = None  # K per model, fetched on first need

    def __enter__(self) -> DetectorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def wait_ready(self, timeout: float) -> None:
        """Block until the channel is connected; ``RemoteError`` (UNAVAILABLE) after
        ``timeout`` seconds."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError as err:
            raise RemoteError(
                grpc.StatusCode.UNAVAILABLE, f"no server at {self.address} after {timeout} s"
            ) from err

    def detect(
        self,
        image: ImageLike,
        *,
        model: str = "",
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[int | str] | None = None,
        merge_iou: float | None = None,
    ) -> Detections:
        """Detect objects in one image; ``None`` settings take the model's defaults."""
        response = self.detect_response(
            image,
            model=model,
            score_threshold=score_threshold,
            iou_threshold=iou_threshold,
            max_detections=max_detections,
            classes=classes,
            merge_iou=merge_iou,
        )
        return self._detections(response)

    def detect_response(self, image: ImageLike, **settings: Any) -> pb.DetectResponse:
        """The raw ``DetectResponse`` (with server timings); settings as :meth:`detect`."""
        request = request_to_proto(image, **settings)
        try:
            return self._stub.Detect(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise _remote(err) from err

    def detect_batch(
        self,
        images: Sequence[ImageLike],
        *,
        model: str = "",
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[int | str] | None = None,
        merge_iou: float | None = None,
    ) -> list[Detections]:
        """Detect objects in many images in one call; answers in the images' order."""
        settings = dict(
            model=model,
            score_threshold=score_threshold,
            iou_threshold=iou_threshold,
            max_detections=max_detections,
            classes=classes,
            merge_iou=merge_iou,
        )
        requests = [
            request_to_proto(image, request_id=str(i), **settings) for i, image in enumerate(images)
        ]
        try:
            reply = self._stub.DetectBatch(
                pb.DetectBatchRequest(requests=requests),
                timeout=self.timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as err:
            raise _remote(err) from err
        return [self._detections(response) for response in reply.responses]

    def stream_detect(
        self,
        frames: Iterable[ImageLike],
        *,
        model: str = "",
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[int | str] | None = None,
        merge_iou: float | None = None,
        timeout: float | None = None,
    ) -> Iterator[Detections]:
        """Detect objects in a sequence of frames over one stream, yielding one
        :class:`Detections` per frame, in order. Frames are read lazily (from a video
        decoder, say) while earlier ones are processed; ``timeout`` bounds the whole
        stream."""
        settings = dict(
            model=model,
            score_threshold=score_threshold,
            iou_threshold=iou_threshold,
            max_detections=max_detections,
            classes=classes,
            merge_iou=merge_iou,
        )
        failure: list[BaseException] = []  # an error raised while reading the frames
        lock = threading.Lock()

        def requests() -> Iterator[pb.DetectRequest]:
            try:
                for i, frame in enumerate(frames):
                    yield request_to_proto(frame, request_id=str(i), **settings)
            except Exception as err:
                with lock:
                    failure.append(err)
                raise

        calls = self._stub.StreamDetect(requests(), timeout=timeout, metadata=self._metadata)
        try:
            for i, response in enumerate(calls):
                if response.request_id != str(i):
                    raise RuntimeError(
                        f"stream out of order: answer {i} is for request {response.request_id!r}"
                    )
                yield self._detections(response)
        except grpc.RpcError as err:
            with lock:
                if failure:
                    raise failure[0] from err
            raise _remote(err) from err
        finally:
            calls.cancel()

    def list_models(self) -> list[ModelInfo]:
        """The served models, sorted by name."""
        try:
            reply = self._stub.ListModels(
                pb.ListModelsRequest(), timeout=self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as err:
            raise _remote(err) from err
        models = [model_info_from_proto(info) for info in reply.models]
        self._landmarks = {m.name: m.num_landmarks for m in models}
        return models

    def health(self, service: str = "") -> str:
        """The health status of the server (``""``) or of one service: ``"SERVING"``,
        ``"NOT_SERVING"``..."""
        try:
            reply = self._health.Check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=self.timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as err:
            raise _remote(err) from err
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def _detections(self, response: pb.DetectResponse) -> Detections:
        num_landmarks = 0
        if not response.detections:  # K is not visible in an empty answer: ask once
            if self._landmarks is None:
                self.list_models()
            num_landmarks = (self._landmarks or {}).get(response.model, 0)
        return detections_from_proto(response, num_landmarks)
