"""StreamDetect under load and at shutdown, through real channels: a stream waits for room
in a full queue (backpressure) instead of failing, and a stopping server answers the
frames a stream had read, then ends it with UNAVAILABLE without waiting out the grace."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path

import grpc
import pytest
from server_fixtures import (
    LOW_SCORE,
    WAIT_S,
    GatedDetector,
    random_images,
    run,
    serving,
    start_server_process,
    wait_until,
)

from detector.predict import Detector
from proto.detector.v1 import detector_pb2_grpc as pb_grpc
from server.batcher import BatcherConfig
from server.convert import request_to_proto
from server.repository import ModelRepository

REPO_ROOT = Path(__file__).resolve().parent.parent
Code = grpc.StatusCode
FRAMES = 8
TEARDOWN_MARK = "interpreter teardown ran"
SERVER_WITH_EXIT_HOOK = (  # python -m server, with an exit hook that prints TEARDOWN_MARK
    f"import atexit, sys; atexit.register(print, {TEARDOWN_MARK!r}); "
    "from server.__main__ import main; sys.exit(main(sys.argv[1:]))"
)
LONG_GRACE_S = 60.0  # a stop that waited out this grace would fail the test's time limit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FRAME = random_images(1, seed=7)[0]


@pytest.fixture
def gated(model_dir) -> GatedDetector:
    detector = GatedDetector(Detector.load(model_dir / "m.safetensors", device="cpu"))
    yield detector
    detector.gate.set()


def frames(count: int):
    return [
        request_to_proto(FRAME, score_threshold=LOW_SCORE, request_id=str(i)) for i in range(count)
    ]


def test_a_stream_waits_for_room_in_a_full_queue_instead_of_failing(gated):
    repository = ModelRepository.from_detectors({"m": gated})
    batcher_config = BatcherConfig(max_batch=1, max_delay_ms=0, max_queue=4)

    async def main():
        async with serving(repository, batcher_config) as (server, address):
            batcher = server.batchers["m"]
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.DetectorServiceStub(channel)
                stream = stub.StreamDetect(iter(frames(FRAMES)))
                # one frame runs (held by the gate), three fill the stream's part of the
                # queue (a quarter is kept for unary calls), the rest wait
                await wait_until(lambda: gated.running.is_set() and batcher.depth == 3)
                await asyncio.sleep(0.2)  # time in which a failing stream would have failed
                assert batcher.depth == 3
                unary = asyncio.ensure_future(stub.Detect(frames(1)[0], timeout=WAIT_S))
                await wait_until(lambda: batcher.depth == 4)  # the unary call took the last place
                with pytest.raises(grpc.aio.AioRpcError) as refused:  # then: refused at once
                    await stub.Detect(frames(1)[0], timeout=WAIT_S)
                gated.gate.set()
                answers = [answer async for answer in stream]
                code = await stream.code()
                await unary
            return answers, code, refused.value.code(), batcher.images_run

    answers, code, refused, images_run = run(main())
    assert code == Code.OK
    assert [a.request_id for a in answers] == [str(i) for i in range(FRAMES)]
    assert all(len(a.detections) > 0 for a in answers)
    assert refused == Code.RESOURCE_EXHAUSTED
    assert images_run == FRAMES + 1


def test_many_streams_next_to_unary_clients_are_all_answered(model_dir):
    """Streams and unary callers share a small queue: every stream frame is answered;
    unary calls get answers or RESOURCE_EXHAUSTED, nothing else."""
    detector = Detector.load(model_dir / "m.safetensors", device="cpu")
    repository = ModelRepository.from_detectors({"m": detector})
    streams, unary, per_client = 4, 4, 6

    async def main():
        config = BatcherConfig(max_batch=2, max_queue=2)
        async with (
            serving(repository, config) as (_, address),
            grpc.aio.insecure_channel(address) as channel,
        ):
            stub = pb_grpc.DetectorServiceStub(channel)

            async def stream_client() -> list[str]:
                return [a.request_id async for a in stub.StreamDetect(iter(frames(per_client)))]

            async def unary_client() -> list[Code]:
                codes = []
                for request in frames(per_client):
                    try:
                        await stub.Detect(request)
                        codes.append(Code.OK)
                    except grpc.aio.AioRpcError as err:
                        codes.append(err.code())
                return codes

            return await asyncio.gather(
                asyncio.gather(*(stream_client() for _ in range(streams))),
                asyncio.gather(*(unary_client() for _ in range(unary))),
            )

    stream_answers, unary_codes = run(main())
    assert all(ids == [str(i) for i in range(per_client)] for ids in stream_answers)
    assert {code for codes in unary_codes for code in codes} <= {Code.OK, Code.RESOURCE_EXHAUSTED}


def test_stop_answers_the_frames_a_stream_read_then_ends_it_unavailable(gated):
    repository = ModelRepository.from_detectors({"m": gated})

    async def main():
        async with serving(repository, BatcherConfig(max_batch=1, max_delay_ms=0)) as (
            server,
            address,
        ):
            batcher = server.batchers["m"]
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.DetectorServiceStub(channel)
                sent = asyncio.Queue()
                for request in frames(3):
                    sent.put_nowait(request)

                async def requests():  # three frames, then a client that keeps the stream open
                    while True:
                        yield await sent.get()

                stream = stub.StreamDetect(requests())
                idle = stub.StreamDetect(requests_never())
                await wait_until(lambda: gated.running.is_set() and batcher.depth == 2)
                start = time.monotonic()
                stopping = asyncio.ensure_future(server.stop(LONG_GRACE_S))
                await asyncio.sleep(0.2)
                for request in frames(2):  # sent after the stop: not read
                    sent.put_nowait(request)
                gated.gate.set()
                answers = [a.request_id async for a in _until_error(stream)]
                await stopping
                stop_s = time.monotonic() - start
                return (
                    answers,
                    await stream.code(),
                    await stream.details(),
                    await idle.code(),
                    stop_s,
                )

    answers, code, details, idle_code, stop_s = run(main())
    assert answers == ["0", "1", "2"]
    assert code == Code.UNAVAILABLE and "server shutting down" in details and "3 frames" in details
    assert idle_code == Code.UNAVAILABLE
    assert stop_s < LONG_GRACE_S / 2  # it did not wait out the grace period


async def requests_never():
    await asyncio.Event().wait()
    yield  # pragma: no cover


async def _until_error(call):
    try:
        async for answer in call:
            yield answer
    except grpc.aio.AioRpcError:
        return


@pytest.mark.slow
def test_sigterm_answers_a_running_streams_frames_and_exits_zero_before_the_grace(model_dir):
    """``python -m server`` gets SIGTERM while a client streams frames without end: every
    frame the server read is answered (it says how many), the stream ends UNAVAILABLE
    with "server shutting down", and the process exits 0 long before its 60 s grace,
    at once after "stopped": without the interpreter's teardown (1-3 s with torch), so
    an exit hook registered before the server started never runs."""
    args = ["-c", SERVER_WITH_EXIT_HOOK, "--models", str(model_dir), "--host", "127.0.0.1"]
    args += ["--port", "0", "--default", "m", "--grace", str(LONG_GRACE_S)]
    proc, address, lines = start_server_process(args)
    try:

        async def main():
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.DetectorServiceStub(channel)

                async def endless():  # frames until the server stops reading them
                    while True:
                        yield frames(1)[0]
                        await asyncio.sleep(0.005)

                stream = stub.StreamDetect(endless(), timeout=WAIT_S * 3)
                answers = []
                signalled = None
                try:
                    async for answer in stream:
                        answers.append(answer)
                        if len(answers) == FRAMES and signalled is None:
                            proc.send_signal(signal.SIGTERM)
                            signalled = time.monotonic()
                except grpc.aio.AioRpcError:
                    pass
                return answers, await stream.code(), await stream.details(), signalled

        answers, code, details, signalled = run(main())
        out, _ = proc.communicate(timeout=LONG_GRACE_S * 2)
        exited = time.monotonic()
    finally:
        proc.kill()
    assert code == Code.UNAVAILABLE and "server shutting down" in details, details
    read = int(re.search(r"the (\d+) frames", details).group(1))
    assert read == len(answers) >= FRAMES  # every frame it read was answered
    assert proc.returncode == 0, "".join(lines) + out
    assert "Traceback" not in out and out.rstrip().endswith("stopped")
    assert TEARDOWN_MARK not in out
    assert exited - signalled < LONG_GRACE_S / 2  # it did not wait out the grace
