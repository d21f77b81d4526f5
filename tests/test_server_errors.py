"""The server's failure modes through real channels: status codes of bad requests,
backpressure, deadlines, cancellation and graceful shutdown (SIGTERM to ``python -m server``)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_fixtures import (
    GRACE_S,
    LOW_SCORE,
    WAIT_S,
    GatedDetector,
    assert_same,
    png_bytes,
    random_images,
    run,
    serving,
    start_server_process,
    wait_until,
)

from detector.predict import Detector
from proto.detector.v1 import detector_pb2 as pb
from proto.detector.v1 import detector_pb2_grpc as pb_grpc
from server.batcher import BatcherConfig
from server.client import DetectorClient, RemoteError
from server.convert import request_to_proto
from server.repository import ModelRepository

REPO_ROOT = Path(__file__).resolve().parent.parent
MAX_PIXELS = 100 * 100  # pixel limit of the error-test server
MANY_MODELS = 40  # model files of the server that gets SIGTERM while loading them
Code = grpc.StatusCode

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def gated(model_dir) -> GatedDetector:
    detector = GatedDetector(Detector.load(model_dir / "m.safetensors", device="cpu"))
    yield detector
    detector.gate.set()


def raw(data: bytes, width: int, height: int, channels: int) -> pb.Image:
    return pb.Image(raw=pb.RawImage(data=data, width=width, height=height, channels=channels))


GOOD = random_images(1, seed=5)[0]
GOOD_PNG = png_bytes(GOOD)
BIG_PNG = png_bytes(np.zeros((120, 100, 3), np.uint8))  # 12000 pixels > MAX_PIXELS
GOOD_IMAGE = pb.Image(encoded=GOOD_PNG)

BAD_REQUESTS = {
    "empty bytes": (pb.DetectRequest(image=pb.Image(encoded=b"")), "empty"),
    "no image": (pb.DetectRequest(), "no image"),
    "not an image": (pb.DetectRequest(image=pb.Image(encoded=b"hello world")), "not a JPEG"),
    "truncated png": (
        pb.DetectRequest(image=pb.Image(encoded=GOOD_PNG[: len(GOOD_PNG) // 2])),
        "truncated",
    ),
    "truncated header": (pb.DetectRequest(image=pb.Image(encoded=GOOD_PNG[:12])), "truncated"),
    "raw length": (pb.DetectRequest(image=raw(b"\0" * 11, 2, 2, 3)), "has 11 bytes, expected"),
    "raw zero size": (pb.DetectRequest(image=raw(b"", 0, 4, 3)), "at least 1x1"),
    "raw channels": (pb.DetectRequest(image=raw(b"\0" * 8, 2, 2, 2)), "channels must be one of"),
    "bomb png": (pb.DetectRequest(image=pb.Image(encoded=BIG_PNG)), "limit of 10000 pixels"),
    "bomb raw": (pb.DetectRequest(image=raw(b"", 10_000, 10_000, 3)), "limit of 10000 pixels"),
    "score threshold": (
        pb.DetectRequest(image=GOOD_IMAGE, score_threshold=1.5),
        "score_threshold must be in [0, 1]",
    ),
    "iou threshold": (
        pb.DetectRequest(image=GOOD_IMAGE, iou_threshold=-0.5),
        "iou_threshold must be in [0, 1]",
    ),
    "nan threshold": (
        pb.DetectRequest(image=GOOD_IMAGE, score_threshold=float("nan")),
        "score_threshold",
    ),
    "class id": (pb.DetectRequest(image=GOOD_IMAGE, class_ids=[7]), r"class id 7 is outside"),
    "class name": (pb.DetectRequest(image=GOOD_IMAGE, class_names=["zebra"]), "'zebra'"),
}


def test_each_bad_request_gets_its_status_and_the_server_stays_healthy(repository):
    batcher = BatcherConfig(max_pixels=MAX_PIXELS, max_delay_ms=20)

    async def main():
        async with serving(repository, batcher) as (server, address):
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.DetectorServiceStub(channel)
                requests = [r for r, _ in BAD_REQUESTS.values()]
                unknown = pb.DetectRequest(image=GOOD_IMAGE, model="nope")
                good = pb.DetectRequest(image=GOOD_IMAGE, score_threshold=LOW_SCORE)
                # all at once, so the good requests share batches with the bad ones
                outcomes = await asyncio.gather(
                    *(stub.Detect(r) for r in [*requests, unknown, good, good]),
                    return_exceptions=True,
                )
                health = health_pb2_grpc.HealthStub(channel)
                status = await health.Check(health_pb2.HealthCheckRequest())
                after = await stub.Detect(good)
            counted = server.metrics.registry.get_sample_value(
                "detector_requests_total", {"method": "Detect", "code": "INVALID_ARGUMENT"}
            )
            return outcomes, status, after, counted

    outcomes, status, after, counted = run(main())
    *bad, unknown, good, good_again = outcomes
    for (name, (_, message)), outcome in zip(BAD_REQUESTS.items(), bad, strict=True):
        assert isinstance(outcome, grpc.aio.AioRpcError), name
        assert outcome.code() == Code.INVALID_ARGUMENT, (name, outcome.details())
        assert message in outcome.details(), (name, outcome.details())
    assert unknown.code() == Code.NOT_FOUND and "'nope'" in unknown.details()
    assert "served models: ['faces', 'm', 'pets']" in unknown.details()
    assert len(good.detections) > 0 and good.detections == good_again.detections
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert after.detections == good.detections
    assert counted == len(BAD_REQUESTS)


def test_bad_request_in_a_batch_call_or_stream_names_its_position(repository):
    images = random_images(3, seed=6)

    def calls(address):
        with DetectorClient(address, timeout=30) as client:
            with pytest.raises(Exception) as batch_error:
                client.detect_batch([images[0], b"junk", images[1]])
            answers = []
            with pytest.raises(Exception) as stream_error:
                for detections in client.stream_detect([images[0], images[1], b"junk", images[2]]):
                    answers.append(detections)
            return batch_error.value, stream_error.value, answers, client.health()

    async def main():
        async with serving(repository) as (_, address):
            return await asyncio.to_thread(calls, address)

    batch_error, stream_error, answers, health = run(main())
    assert batch_error.code == Code.INVALID_ARGUMENT
    assert batch_error.details.startswith("requests[1]: image bytes (4 bytes")
    assert stream_error.code == Code.INVALID_ARGUMENT
    assert stream_error.details.startswith("requests[2]:")
    assert len(answers) == 2  # the frames before the bad one were answered
    assert health == "SERVING"


def test_full_queue_answers_resource_exhausted_at_once(gated):
    repository = ModelRepository.from_detectors({"m": gated})
    batcher = BatcherConfig(max_batch=1, max_delay_ms=0, max_queue=2)

    async def main():
        async with serving(repository, batcher) as (server, address):
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.DetectorServiceStub(channel)
                request = request_to_proto(GOOD, score_threshold=LOW_SCORE)
                running = asyncio.ensure_future(stub.Detect(request))
                await wait_until(gated.running.is_set)
                queued = [asyncio.ensure_future(stub.Detect(request)) for _ in range(2)]
                await wait_until(lambda: server.batchers["m"].queued == 2)
                start = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.Detect(request)
                refused_in = time.monotonic() - start
                gated.gate.set()
                answered = await asyncio.gather(running, *queued)
            return refused.value, refused_in, answered

    refused, refused_in, answered = run(main())
    assert refused.code() == Code.RESOURCE_EXHAUSTED and "limit 2" in refused.details()
    assert refused_in < WAIT_S
    assert all(len(a.detections) > 0 for a in answered)


def test_call_whose_deadline_passes_in_the_queue_is_not_run(gated):
    repository = ModelRepository.from_detectors({"m": gated})
    batcher = BatcherConfig(max_batch=4, max_delay_ms=0)

    async def main():
        async with serving(repository, batcher) as (server, address):

            def dropped(reason: str) -> float:
                labels = {"model": "m", "reason": reason}
                value = server.metrics.registry.get_sample_value("detector_dropped_total", labels)
                return value or 0

            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.DetectorServiceStub(channel)
                request = request_to_proto(GOOD, score_threshold=LOW_SCORE)
                running = asyncio.ensure_future(stub.Detect(request))
                await wait_until(gated.running.is_set)
                with pytest.raises(grpc.aio.AioRpcError) as late:
                    await stub.Detect(request, timeout=0.3)
                await wait_until(lambda: dropped("deadline") + dropped("cancelled") == 1)
                cancelled = stub.Detect(request)
                await wait_until(lambda: server.batchers["m"].queued == 1)
                cancelled.cancel()
                await wait_until(lambda: dropped("deadline") + dropped("cancelled") == 2)
                assert server.batchers["m"].depth == 0
                gated.gate.set()
                await running
            return late.value, server.batchers["m"].images_run

    late, images_run = run(main())
    assert late.code() == Code.DEADLINE_EXCEEDED
    assert images_run == 1  # only the first call reached the model


def test_graceful_stop_refuses_new_calls_and_finishes_calls_in_flight(gated):
    repository = ModelRepository.from_detectors({"m": gated})

    async def main():
        async with serving(repository) as (server, address):
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.DetectorServiceStub(channel)
                watch = health_pb2_grpc.HealthStub(channel).Watch(
                    health_pb2.HealthCheckRequest(service="")
                )
                seen = [(await watch.read()).status]
                request = request_to_proto(GOOD, score_threshold=LOW_SCORE)
                in_flight = asyncio.ensure_future(stub.Detect(request))
                await wait_until(gated.running.is_set)
                stopping = asyncio.ensure_future(server.stop(GRACE_S))
                seen.append((await watch.read()).status)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.Detect(request, timeout=5)
                gated.gate.set()
                answer = await in_flight
                await stopping
            return seen, refused.value, answer

    seen, refused, answer = run(main())
    assert seen == [
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    ]
    assert refused.code() == Code.UNAVAILABLE
    assert len(answer.detections) > 0


@pytest.mark.slow
def test_sigterm_drains_calls_in_flight_and_exits_zero(model_dir):
    args = ["-m", "server", "--models", str(model_dir), "--host", "127.0.0.1"]
    args += ["--port", "0", "--default", "m", "--max-batch", "8", "--max-delay-ms", "3000"]
    proc, address, lines = start_server_process(args)
    try:
        with DetectorClient(address, timeout=60) as client, ThreadPoolExecutor(1) as pool:
            # the call waits in the queue for --max-delay-ms: in flight when SIGTERM comes
            in_flight = pool.submit(client.detect, GOOD, score_threshold=LOW_SCORE)
            time.sleep(1.0)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            with DetectorClient(address, timeout=5) as late, pytest.raises(RemoteError) as refused:
                late.detect(GOOD)
            answer = in_flight.result(timeout=60)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, "".join(lines) + out
    assert "shutting down" in out and out.rstrip().endswith("stopped")
    assert refused.value.code == Code.UNAVAILABLE
    reference = Detector.load(model_dir / "m.safetensors", device="cpu")
    assert_same(answer, reference.detect([GOOD], score_threshold=LOW_SCORE)[0])


@pytest.mark.slow
def test_sigterm_while_the_models_load_exits_zero_with_one_line(model_dir, tmp_path):
    many = tmp_path / "many"
    many.mkdir()
    for i in range(MANY_MODELS):  # enough files that loading takes a while
        (many / f"m{i:02d}.safetensors").write_bytes((model_dir / "m.safetensors").read_bytes())
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "server", "--models", str(many), "--port", "0"]
    proc = subprocess.Popen(
        args, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        first = proc.stdout.readline()
        assert first.startswith("loading models from"), first
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, first + out
    assert "Traceback" not in out
    assert out.strip() == "stopped by SIGTERM while starting, before serving", out
