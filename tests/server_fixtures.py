"""Shared by the server tests: random-weights model files, a server on a free port, and
a detector whose device thread can be held."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from detector.checkpoint import Checkpoint
from detector.config import ModelConfig
from detector.models.yolo import YOLODetector
from detector.predict import Detector
from detector.settings import Detections
from server.app import DetectorServer, ServerConfig, create_server
from server.batcher import BatcherConfig
from server.repository import ModelRepository

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
GRACE_S = 2.0  # shutdown grace of test servers
WAIT_S = 20.0  # generous bound on anything that should happen soon
TEST_TIMEOUT_S = 60.0
LOW_SCORE = 0.0  # random weights score low: keep every box so there is something to compare
MODEL_CONFIGS = {
    "m": ModelConfig(num_classes=3, input_size=64),
    "pets": ModelConfig(num_classes=2, input_size=64, class_names=("cat", "dog")),
    "faces": ModelConfig(
        num_classes=1,
        input_size=64,
        num_landmarks=2,
        landmark_names=("left_eye", "right_eye"),
        skeleton=((0, 1),),
    ),
}


def write_models(folder: Path) -> Path:
    """One random-weights model file per entry of ``MODEL_CONFIGS``."""
    for seed, (name, cfg) in enumerate(MODEL_CONFIGS.items()):
        torch.manual_seed(seed)
        Checkpoint(cfg, "grid", YOLODetector(cfg).state_dict()).save(folder / f"{name}.safetensors")
    return folder


def random_images(count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` RGB images of assorted sizes."""
    rng = np.random.default_rng(seed)
    return [
        rng.integers(0, 256, (int(rng.integers(24, 96)), int(rng.integers(24, 96)), 3), np.uint8)
        for _ in range(count)
    ]


def png_bytes(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def assert_same(got: Detections, want: Detections) -> None:
    """Equal detections: same boxes, scores, classes, labels and image size."""
    assert got.image_size == want.image_size
    assert len(got) == len(want) > 0
    np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-4)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
    np.testing.assert_array_equal(got.class_ids, want.class_ids)
    assert got.labels == want.labels


class GatedDetector(Detector):
    """A detector whose forward waits for ``gate``; ``running`` is set while it waits."""

    def __init__(self, inner: Detector):
        self.__dict__.update(inner.__dict__)
        self.gate = threading.Event()
        self.running = threading.Event()

    def forward(self, *args, **kwargs):
        self.running.set()
        assert self.gate.wait(WAIT_S), "the test never opened the gate"
        self.running.clear()
        return super().forward(*args, **kwargs)


def run(coro) -> object:
    """Run a test coroutine with an overall time limit."""
    return asyncio.run(asyncio.wait_for(coro, TEST_TIMEOUT_S))


@contextlib.asynccontextmanager
async def serving(
    repository: ModelRepository, batcher: BatcherConfig | None = None, **config
) -> AsyncIterator[tuple[DetectorServer, str]]:
    """A started server on a free loopback port; yields it and its ``host:port``."""
    server_config = ServerConfig(batcher=batcher or BatcherConfig(), decode_workers=2, **config)
    server, port = await create_server(f"{HOST}:0", repository, server_config)
    try:
        yield server, f"{HOST}:{port}"
    finally:
        await server.stop(GRACE_S)


def served_answers(
    repository: ModelRepository, model: str, images: list, score: float, timeout: float
):
    """Serve ``repository`` on a free loopback port and ask it as a user would: one
    ``Detect`` per image and one ``StreamDetect`` of them all for ``model`` at ``score``,
    then ``ListModels``, each call with ``timeout`` seconds. Returns ``(unary, streamed,
    models)``."""
    from server.client import DetectorClient

    def calls(address: str):
        with DetectorClient(address, timeout=timeout) as client:
            unary = [client.detect(image, model=model, score_threshold=score) for image in images]
            stream = client.stream_detect(iter(images), model=model, score_threshold=score)
            return unary, list(stream), client.list_models()

    async def serve():
        async with serving(repository) as (_, address):
            return await asyncio.to_thread(calls, address)

    return run(serve())


async def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_S) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.01)


def start_server_process(args: list[str]) -> tuple[subprocess.Popen, str, list[str]]:
    """Start ``python ARGS`` (a server on ``--port 0``) in the repository root, one torch
    thread, output unbuffered on a pipe; read its output until it says where it listens.

    Returns:
        the process, its ``host:port`` and the lines it printed so far.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        while not (match := re.search(r"on 127\.0\.0\.1:(\d+)", "".join(lines))):
            line = proc.stdout.readline()
            assert line, f"server exited: {''.join(lines)}"
            lines.append(line)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, f"127.0.0.1:{match.group(1)}", lines
