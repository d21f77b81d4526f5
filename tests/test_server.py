"""The gRPC server through real channels: answers, batching, metrics, health, reflection,
the Python client and the ``detector client`` command."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from server_fixtures import (
    LOW_SCORE,
    MODEL_CONFIGS,
    WAIT_S,
    assert_same,
    png_bytes,
    random_images,
    run,
    serving,
)

from detector import cli
from detector.predict import Detector
from detector.settings import DetectOptions
from proto.detector.v1 import detector_pb2 as pb
from proto.detector.v1 import detector_pb2_grpc as pb_grpc
from server.app import SERVICE_NAME
from server.batcher import BatcherConfig
from server.client import DetectorClient
from server.convert import detections_from_proto, request_to_proto
from server.metrics import ServerMetrics
from server.repository import ModelRepository, file_sha256

CONCURRENT_CALLS = 64

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def reference(repository) -> dict[str, Detector]:
    """The detectors the server runs, to compare its answers with ``Detector.detect``."""
    return {m.name: m.detector for m in repository}


def want(detector: Detector, image, **kwargs):
    return detector.detect([image], score_threshold=LOW_SCORE, **kwargs)[0]


def test_detect_raw_and_encoded_equal_detector_detect(repository, reference):
    image = random_images(1)[0]

    async def main():
        async with serving(repository) as (_, address), grpc.aio.insecure_channel(address) as ch:
            stub = pb_grpc.DetectorServiceStub(ch)
            raw = await stub.Detect(request_to_proto(image, score_threshold=0, request_id="r1"))
            png = await stub.Detect(
                request_to_proto(png_bytes(image), model="pets", score_threshold=0)
            )
            return raw, png

    raw, png = run(main())
    assert raw.request_id == "r1" and raw.model == "m"  # "" = the default
    assert (raw.image_size.height, raw.image_size.width) == image.shape[:2]
    assert raw.timings.batch_size == 1 and raw.timings.total_ms >= raw.timings.inference_ms > 0
    assert_same(detections_from_proto(raw), want(reference["m"], image))
    assert png.model == "pets"
    assert_same(detections_from_proto(png), want(reference["pets"], image))
    assert set(detections_from_proto(png).labels) <= {"cat", "dog"}


def test_client_detect_batch_stream_and_models(repository, reference, model_dir):
    images = random_images(6, seed=1)

    def calls(address):
        with DetectorClient(address, timeout=30) as client:
            one = client.detect(images[0], score_threshold=0.0, max_detections=5, merge_iou=0.5)
            batch = client.detect_batch(images, score_threshold=0.0, classes=["1", 2])
            stream = list(client.stream_detect(iter(images), score_threshold=0.0, model="pets"))
            return one, batch, stream, client.list_models(), client.health()

    async def main():
        async with serving(repository) as (_, address):
            return await asyncio.to_thread(calls, address)

    one, batch, stream, models, health = run(main())
    assert_same(one, want(reference["m"], images[0], max_detections=5, merge_iou=0.5))
    assert len(one) == 5
    for got, image in zip(batch, images, strict=True):
        assert_same(got, want(reference["m"], image, classes=[1, 2]))
        assert set(got.class_ids.tolist()) <= {1, 2}
    assert len(stream) == len(images)
    for got, image in zip(stream, images, strict=True):
        assert_same(got, want(reference["pets"], image))
    assert health == "SERVING"
    assert [m.name for m in models] == sorted(MODEL_CONFIGS)
    pets = next(m for m in models if m.name == "pets")
    assert pets.class_names == ("cat", "dog") and pets.kind == "grid"
    assert pets.input_size == MODEL_CONFIGS["pets"].input_size and pets.num_landmarks == 0
    assert pets.sha256 == file_sha256(model_dir / "pets.safetensors")
    assert (pets.default_score_threshold, pets.default_iou_threshold) == (0.25, 0.45)
    assert pets.default_merge_iou == DetectOptions().merge_iou
    assert [m.is_default for m in models] == [m.name == "m" for m in models]
    faces = next(m for m in models if m.name == "faces")
    assert faces.num_landmarks == 2 and faces.landmark_names == ("left_eye", "right_eye")
    assert faces.skeleton == ((0, 1),) and pets.skeleton == ()


def test_landmarks_travel_with_their_detections(repository, reference):
    image = random_images(1, seed=7)[0]

    def calls(address):
        with DetectorClient(address, timeout=30) as client:
            found = client.detect(image, model="faces", score_threshold=0.0)
            none = client.detect(image, model="faces", classes=[0], score_threshold=1.0)
            return found, none

    async def main():
        async with serving(repository) as (_, address):
            return await asyncio.to_thread(calls, address)

    found, none = run(main())
    expected = want(reference["faces"], image)
    assert_same(found, expected)
    assert found.landmarks.shape == expected.landmarks.shape == (len(expected), 2, 3)
    np.testing.assert_allclose(found.landmarks, expected.landmarks, atol=1e-4)
    assert len(none) == 0 and none.landmarks.shape == (0, 2, 3)


def test_repository_errors_name_the_problem(tmp_path, model_dir):
    with pytest.raises(FileNotFoundError, match="no model files"):
        ModelRepository.from_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ModelRepository.from_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="default model 'nope' is not among"):
        ModelRepository.from_folder(model_dir, default="nope", device="cpu")
    repository = ModelRepository.from_folder(model_dir, default="pets", device="cpu")
    assert repository.get("").name == "pets" and repository.names == sorted(MODEL_CONFIGS)


def test_concurrent_calls_are_batched_and_each_caller_gets_its_own_answer(repository, reference):
    images = random_images(CONCURRENT_CALLS, seed=2)
    batcher = BatcherConfig(max_batch=16, max_delay_ms=20, max_queue=CONCURRENT_CALLS)

    async def main():
        async with serving(repository, batcher, metrics_port=0) as (server, address):
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.DetectorServiceStub(channel)
                responses = await asyncio.gather(
                    *(
                        stub.Detect(request_to_proto(im, score_threshold=0, request_id=str(i)))
                        for i, im in enumerate(images)
                    )
                )
            url = f"http://127.0.0.1:{server.metrics_port}/metrics"
            text = await asyncio.to_thread(lambda: urllib.request.urlopen(url).read().decode())
            return responses, text

    responses, text = run(main())
    for i, (response, image) in enumerate(zip(responses, images, strict=True)):
        assert response.request_id == str(i)
        assert_same(detections_from_proto(response), want(reference["m"], image))
    samples = {
        (s.name, s.labels.get("le"), s.labels.get("method"), s.labels.get("code")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("model", "m") == "m"
    }
    batches = samples[("detector_batch_size_count", None, None, None)]
    assert samples[("detector_batch_size_sum", None, None, None)] == CONCURRENT_CALLS
    assert batches < CONCURRENT_CALLS  # some batch held more than one image
    assert samples[("detector_batch_size_bucket", "1.0", None, None)] < batches
    assert max(r.timings.batch_size for r in responses) > 1
    assert samples[("detector_requests_total", None, "Detect", "OK")] == CONCURRENT_CALLS
    assert samples[("detector_queue_seconds_count", None, None, None)] == CONCURRENT_CALLS


def test_health_and_reflection(repository):
    async def main():
        async with serving(repository) as (_, address), grpc.aio.insecure_channel(address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            statuses = [
                (await health.Check(health_pb2.HealthCheckRequest(service=name))).status
                for name in ("", SERVICE_NAME)
            ]
            reflect = reflection_pb2_grpc.ServerReflectionStub(ch)
            requests = [
                reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME),
            ]
            replies = [r async for r in reflect.ServerReflectionInfo(iter(requests))]
            return statuses, replies

    statuses, (listed, described) = run(main())
    assert statuses == [health_pb2.HealthCheckResponse.SERVING] * 2
    services = {s.name for s in listed.list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= services
    assert described.file_descriptor_response.file_descriptor_proto  # the .proto, served


def test_cli_client_detect_and_models(repository, reference, tmp_path, capsys):
    images = random_images(2, seed=3)
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(png_bytes(image))

    async def main():
        async with serving(repository) as (_, address):
            detect = ["client", "detect", "--server", address, "--score-threshold", "0"]
            codes = [await asyncio.to_thread(cli.main, [*detect, *map(str, paths)])]
            printed = capsys.readouterr().out
            codes.append(
                await asyncio.to_thread(cli.main, ["client", "models", "--server", address])
            )
            codes.append(
                await asyncio.to_thread(cli.main, [*detect, "--model", "nope", str(paths[0])])
            )
            return codes, printed, capsys.readouterr()

    codes, printed, after = run(main())
    assert codes == [0, 0, 1]
    lines = [json.loads(line) for line in printed.splitlines()]
    assert [line["image"] for line in lines] == [str(p) for p in paths]
    for line, image in zip(lines, images, strict=True):
        assert line == {"image": line["image"], **want(reference["m"], image).to_dict()}
    assert "pets: grid, input 64, 2 classes ['cat', 'dog'], 0 landmarks, sha256" in after.out
    assert "2 landmarks ['left_eye', 'right_eye'] skeleton [[0, 1]]" in after.out
    assert "NOT_FOUND" in after.err and "'nope'" in after.err


def test_request_defaults_come_from_the_model(repository, reference):
    image = random_images(1, seed=4)[0]

    async def main():
        async with serving(repository) as (_, address), grpc.aio.insecure_channel(address) as ch:
            stub = pb_grpc.DetectorServiceStub(ch)
            return await stub.Detect(pb.DetectRequest(image=request_to_proto(image).image))

    got = detections_from_proto(run(main()))
    expected = reference["m"].detect([image])[0]  # Detector.detect's own defaults
    assert got.image_size == expected.image_size and len(got) == len(expected)


def test_stopping_the_metrics_endpoint_does_not_wait_for_its_serving_loop():
    """``WSGIServer.shutdown`` waits for the serving loop's next poll (every 0.5 s), which
    held up the server's exit; ``stop_http`` leaves that wait to a background thread, and
    the port is closed once it is done."""
    metrics = ServerMetrics()
    port = metrics.serve_http("127.0.0.1", 0)
    http = metrics._http
    release = threading.Event()
    real_shutdown = http.shutdown

    def slow_shutdown() -> None:  # a serving loop that takes its time to notice
        release.wait(WAIT_S * 3)
        real_shutdown()

    http.shutdown = slow_shutdown
    stopper = threading.Thread(target=metrics.stop_http)
    stopper.start()
    stopper.join(WAIT_S)
    returned = not stopper.is_alive()
    release.set()
    stopper.join()
    assert returned  # stop_http returned while the shutdown still waited
    for _ in range(int(WAIT_S / 0.05)):
        if http.socket.fileno() == -1:
            break
        time.sleep(0.05)
    assert http.socket.fileno() == -1
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
