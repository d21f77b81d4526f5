"""``detector video --server``: frames through a real server's StreamDetect give the same
detections as the local Detector; server problems are clear errors, never tracebacks.

The server runs in this process, its event loop in a background thread, on a free
loopback port, with random-weights models (see ``server_fixtures``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from server_fixtures import GRACE_S, HOST, WAIT_S, assert_same

from detector.cli import main
from detector.commands import video as video_command
from detector.data.moving_digits import MovingDigitsConfig, moving_digits
from detector.data.synthetic import DigitSource
from detector.predict import Detector
from detector.settings import DetectOptions
from detector.video import DetectError, VideoOptions
from detector.video_jobs import plan_jobs, process_videos, read_video
from server.app import ServerConfig, create_server
from server.client import DetectorClient
from server.repository import ModelRepository

SIZE = (64, 96)  # (height, width) of the test clip
FRAMES = 10
FPS = 10.0
CONF, IOU, MAX_DET = 0.0, 0.45, 20  # random weights score below 0.01: keep every box
BATCH = 4  # frames per StreamDetect call: the clip takes three calls, the last one short
BOX_ATOL = 0.011  # the JSON lines round boxes to 0.01 px
SCORE_ATOL = 2e-4  # and scores to 4 decimals
QUICK_CONNECT_S = 0.5  # connection wait of the unreachable-server test

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@contextlib.contextmanager
def server_in_thread(repository: ModelRepository) -> Iterator[str]:
    """A started server whose event loop runs in a background thread; yields ``host:port``."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def call(coro):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(WAIT_S)

    try:
        server, port = call(create_server(f"{HOST}:0", repository, ServerConfig(decode_workers=1)))
        try:
            yield f"{HOST}:{port}"
        finally:
            call(server.stop(GRACE_S))
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT_S)
        loop.close()


@pytest.fixture(scope="module")
def address(model_dir) -> Iterator[str]:
    with server_in_thread(ModelRepository.from_folder(model_dir, default="m", device="cpu")) as a:
        yield a


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "digits.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, SIZE[::-1])
    config = MovingDigitsConfig(num_digits=2)
    for frame, _, _ in moving_digits(DigitSource.load("val"), FRAMES, SIZE, 0, config):
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def free_port() -> int:
    """A loopback port nothing listens on (free when this returns)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def test_video_through_the_server_equals_the_local_model(clip, address, model_dir, tmp_path):
    out = tmp_path / "out.mp4"
    settings = ["--conf", str(CONF), "--iou", str(IOU), "--max-det", str(MAX_DET)]
    argv = ["video", str(clip), "-o", str(out), "--server", address, *settings]
    assert main([*argv, "--batch", str(BATCH), "--quiet"]) == 0
    frames = list(read_video(clip))
    assert len(frames) == len(list(read_video(out))) == FRAMES
    records = read_jsonl(out.with_suffix(".jsonl"))
    assert [r["index"] for r in records] == list(range(FRAMES))
    local = Detector.load(model_dir / "m.safetensors", "cpu").detect(
        frames, DetectOptions(CONF, IOU, MAX_DET)
    )
    assert sum(len(d) for d in local) > 0
    for record, want in zip(records, local, strict=True):
        expected = want.to_dict()
        assert record["source"] == "model" and record["image_size"] == expected["image_size"]
        got, expected = record["detections"], expected["detections"]
        assert [d["class_id"] for d in got] == [d["class_id"] for d in expected]
        assert [d["label"] for d in got] == [d["label"] for d in expected]
        for key, atol in (("box", BOX_ATOL), ("score", SCORE_ATOL)):
            np.testing.assert_allclose(
                [d[key] for d in got], [d[key] for d in expected], atol=atol, rtol=0
            )


def test_remote_detect_fn_uses_the_named_model(address, model_dir):
    frames = [f for f, _, _ in moving_digits(DigitSource.load("val"), 3, SIZE, seed=1)]
    local = Detector.load(model_dir / "pets.safetensors", "cpu").detect(
        frames, score_threshold=0.0, iou_threshold=IOU, max_detections=MAX_DET
    )
    with DetectorClient(address, timeout=WAIT_S) as client:
        assert video_command.served_model(client) == "m"  # the server's default
    # One wait for readiness per client: a second one on a connected channel leaves grpc
    # polling it, and closing the channel then raises in grpc's polling thread.
    with DetectorClient(address, timeout=WAIT_S) as client:
        assert video_command.served_model(client, "pets") == "pets"
        detect = video_command.remote_detect_fn(client, "pets", DetectOptions(0.0, IOU, MAX_DET))
        for got, want in zip(detect(frames), local, strict=True):
            assert_same(got, want)


def test_a_failing_server_call_fails_that_input_only(clip, address, tmp_path):
    jobs = plan_jobs([clip], tmp_path / "out")
    with DetectorClient(address, timeout=WAIT_S) as client:
        detect = video_command.remote_detect_fn(client, "no-such-model")
        with pytest.raises(DetectError, match="NOT_FOUND"):
            detect([np.zeros((*SIZE, 3), np.uint8)])
        options = VideoOptions(batch_size=BATCH, progress=False)
        (result,) = process_videos(jobs, detect, options)
    assert result.error is not None and result.frames == 0
    assert str(clip) in result.error and "no-such-model" in result.error


def test_unknown_model_is_a_clear_error(clip, address, tmp_path, capsys):
    argv = ["video", str(clip), "-o", str(tmp_path / "out"), "--server", address]
    assert main([*argv, "--model", "nope", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "no model 'nope'" in err and "'pets'" in err
    assert not (tmp_path / "out").exists()


def test_unreachable_server_is_a_clear_error(clip, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(video_command, "CONNECT_TIMEOUT_S", QUICK_CONNECT_S)
    server = f"{HOST}:{free_port()}"
    assert main(["video", str(clip), "-o", str(tmp_path / "out"), "--server", server]) == 1
    err = capsys.readouterr().err
    assert f"error: server {server}: UNAVAILABLE" in err and "Traceback" not in err


def test_server_options_are_checked(clip, tmp_path):
    argv = ["video", str(clip), "-o", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as bad_address:
        main([*argv, "--server", "no-port"])
    assert bad_address.value.code == 2
    assert main([*argv, "--model", "m"]) == 2  # --model without --server
    assert main([*argv, "--server", f"{HOST}:1", "--timeout", "0"]) == 2
    assert main([*argv, "--server", f"{HOST}:1", "--conf", "2"]) == 2


@pytest.mark.parametrize("remote", [False, True])
def test_frames_are_drawn_with_the_models_skeleton(
    remote, clip, address, model_dir, tmp_path, monkeypatch
):
    """The local model's ``ModelConfig.skeleton``, or the served model's from ListModels,
    reaches the function that draws the frames."""
    drawn_with = []

    def fake_run_jobs(jobs, detect_fn, options, failed=0, draw_fn=None):
        drawn_with.append(draw_fn)
        return 0

    monkeypatch.setattr(video_command, "run_jobs", fake_run_jobs)
    argv = ["video", str(clip), "-o", str(tmp_path / "out.mp4"), "--quiet"]
    for model, skeleton in (("faces", ((0, 1),)), ("pets", None)):
        where = ["--server", address, "--model", model] if remote else []
        weights = [] if remote else ["--weights", str(model_dir / f"{model}.safetensors")]
        assert main([*argv, *where, *weights]) == 0
        draw_fn = drawn_with.pop()
        assert getattr(draw_fn, "keywords", {}).get("skeleton") == skeleton
