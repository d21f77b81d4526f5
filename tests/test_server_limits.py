"""Requests beyond the contract's bounds, and bytes that are no request, through real
channels: INVALID_ARGUMENT before any work, short messages, no traceback in the log."""

from __future__ import annotations

import asyncio
import logging

import cv2
import grpc
import pytest
from server_fixtures import png_bytes, random_images, run, serving

from proto.detector.v1 import detector_pb2 as pb
from proto.detector.v1 import detector_pb2_grpc as pb_grpc
from server.config import (
    MAX_CLASS_FILTER_ENTRIES,
    MAX_CLASS_NAME_CHARS,
    MAX_MODEL_NAME_CHARS,
    MAX_REQUEST_ID_CHARS,
    MAX_STATUS_MESSAGE_CHARS,
    quoted,
)

Code = grpc.StatusCode
IMAGE = pb.Image(encoded=png_bytes(random_images(1, seed=3)[0]))
MESSAGE_MB = 80  # the test channel's limit, above the server's 64 MiB
SHORT_DETAILS = 300  # a bound on the message of a refused request

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOO_BIG = {
    "model 16 K": pb.DetectRequest(image=IMAGE, model="m" * 16384),
    "model 129": pb.DetectRequest(image=IMAGE, model="m" * (MAX_MODEL_NAME_CHARS + 1)),
    "request_id": pb.DetectRequest(image=IMAGE, request_id="r" * (MAX_REQUEST_ID_CHARS + 1)),
    "class names": pb.DetectRequest(image=IMAGE, class_names=[f"c{i}" for i in range(10_000)]),
    "class ids": pb.DetectRequest(image=IMAGE, class_ids=[0] * (MAX_CLASS_FILTER_ENTRIES + 1)),
    "class name": pb.DetectRequest(image=IMAGE, class_names=["x" * (MAX_CLASS_NAME_CHARS + 1)]),
}


def channel_options() -> list[tuple[str, int]]:
    size = MESSAGE_MB << 20
    return [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]


def test_quoted_cuts_long_values():
    assert quoted("abc") == "'abc'"
    assert quoted("x" * 100) == f"{'x' * 40!r}…(100 chars)"


def test_fields_beyond_their_bounds_get_invalid_argument_with_a_short_message(repository, caplog):
    async def main():
        async with (
            serving(repository) as (_, address),
            grpc.aio.insecure_channel(address, options=channel_options()) as channel,
        ):
            stub = pb_grpc.DetectorServiceStub(channel)
            single = await asyncio.gather(
                *(stub.Detect(r) for r in TOO_BIG.values()), return_exceptions=True
            )
            # in a batch, refused before any image of it runs
            batch = pb.DetectBatchRequest(
                requests=[pb.DetectRequest(image=IMAGE), TOO_BIG["model 129"]]
            )
            in_batch = await asyncio.gather(stub.DetectBatch(batch), return_exceptions=True)
            at_bound = await stub.Detect(
                pb.DetectRequest(
                    image=IMAGE,
                    request_id="r" * MAX_REQUEST_ID_CHARS,
                    class_names=["cat"] * MAX_CLASS_FILTER_ENTRIES,
                    model="pets",
                )
            )
            return single, in_batch[0], at_bound

    with caplog.at_level(logging.WARNING):
        single, in_batch, at_bound = run(main())
    for name, outcome in zip(TOO_BIG, single, strict=True):
        assert isinstance(outcome, grpc.aio.AioRpcError), name
        assert outcome.code() == Code.INVALID_ARGUMENT, (name, outcome.details())
        assert len(outcome.details()) < SHORT_DETAILS, name
        assert "at most" in outcome.details(), name
    assert "…(16384 chars)" in single[0].details()
    assert in_batch.code() == Code.INVALID_ARGUMENT
    assert in_batch.details().startswith("requests[1]: model ")
    assert at_bound.request_id == "r" * MAX_REQUEST_ID_CHARS
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_huge_strings_are_refused_not_run_or_echoed(repository):
    """A 60 MB model name and a ~64 MiB request_id: short INVALID_ARGUMENT answers."""

    async def main():
        async with serving(repository, max_message_mb=MESSAGE_MB) as (server, address):
            async with grpc.aio.insecure_channel(address, options=channel_options()) as channel:
                stub = pb_grpc.DetectorServiceStub(channel)
                outcomes = []
                for request in (
                    pb.DetectRequest(image=IMAGE, model="m" * (60 << 20)),
                    pb.DetectRequest(image=IMAGE, request_id="r" * ((64 << 20) - 1000)),
                ):
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await stub.Detect(request)
                    outcomes.append(err.value)
            ran = server.metrics.registry.get_sample_value(
                "detector_batch_size_count", {"model": "m"}
            )
            return outcomes, ran

    outcomes, ran = run(main())
    for outcome in outcomes:
        assert outcome.code() == Code.INVALID_ARGUMENT, outcome.details()
        assert len(outcome.details()) < SHORT_DETAILS
    assert not ran  # nothing reached the model


def test_status_messages_are_capped():
    from server.servicer import status_of

    code, message = status_of(ValueError("x" * 100_000))
    assert code == Code.INVALID_ARGUMENT
    assert len(message) < MAX_STATUS_MESSAGE_CHARS + 30


@pytest.mark.parametrize("method", ["Detect", "DetectBatch", "ListModels", "StreamDetect"])
def test_bytes_that_are_no_request_get_invalid_argument_and_one_warning(repository, caplog, method):
    bad_utf8 = b"\x12\x02\xff\xfe"  # DetectRequest.model with bytes that are no UTF-8
    payloads = {
        "DetectBatch": [b"\x0a", b"\x0a\x04" + bad_utf8],  # in requests[0]
        "ListModels": [b"\x0a"],  # it has no string field to get wrong
    }.get(method, [b"\x0a", bad_utf8])  # a truncated field; bad UTF-8

    async def main():
        async with (
            serving(repository) as (_, address),
            grpc.aio.insecure_channel(address) as channel,
        ):
            path = f"/detector.v1.DetectorService/{method}"
            errors = []
            for payload in payloads:
                if method == "StreamDetect":
                    call = channel.stream_stream(path)(iter([payload]))
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        async for _ in call:
                            pass
                else:
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await channel.unary_unary(path)(payload)
                errors.append(err.value)
            models = await pb_grpc.DetectorServiceStub(channel).ListModels(pb.ListModelsRequest())
            return errors, models

    with caplog.at_level(logging.WARNING):
        errors, models = run(main())
    for error in errors:
        assert error.code() == Code.INVALID_ARGUMENT, error.details()
        assert "is not a valid detector.v1." in error.details()
        assert "\n" not in error.details()
    assert all("bad UTF-8" in e.details() for e in errors[1:])
    assert len(models.models) == 3  # still serving
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) <= 1  # rate-limited


def test_bad_images_write_nothing_to_stderr(repository, capfd):
    """OpenCV and libpng wrote a line to stderr for each truncated or damaged PNG: one
    per bad request, without bound, and with stderr on an undrained pipe the decode
    threads blocked on it after ~700 (the soak's server stopped answering). The server
    answers INVALID_ARGUMENT and writes nothing."""
    png = png_bytes(random_images(1, seed=4)[0])
    damaged = bytearray(png)
    damaged[60:70] = bytes(10)  # inside the image data
    bad = [png[: len(png) // 2], png[:-12], bytes(damaged), png[:8] + bytes(64)]
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_WARNING)  # OpenCV's default

    async def main():
        async with (
            serving(repository) as (_, address),
            grpc.aio.insecure_channel(address) as channel,
        ):
            stub = pb_grpc.DetectorServiceStub(channel)
            codes = []
            for data in bad:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Detect(pb.DetectRequest(image=pb.Image(encoded=data)))
                codes.append(err.value.code())
            return codes

    capfd.readouterr()
    try:
        codes = run(main())
    finally:
        cv2.utils.logging.setLogLevel(level)
    assert codes == [Code.INVALID_ARGUMENT] * len(bad)
    assert capfd.readouterr().err == ""
