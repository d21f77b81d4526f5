"""Benchmark of the gRPC server: dynamic batching on vs off, and the cost of gRPC itself.

    uv run python bench/bench_server.py                       # the shipped 'digits' model
    uv run python bench/bench_server.py --random-model 320    # random weights, input 320
    uv run python bench/bench_server.py --concurrency 32 --duration 20 --device cuda
    uv run python bench/bench_server.py --backend onnxruntime  # the model exported to ONNX

1. Load: for batching on (``--max-batch``, ``--max-delay-ms``) and off (``--max-batch 1``),
   start ``python -m server`` serving one model, run ``--concurrency`` clients, each
   sending Detect calls back to back for ``--duration`` seconds (at most
   ``--max-requests`` in all), and print throughput, p50/p99 latency and the mean batch
   size (from the server's Prometheus metrics); then the on/off ratios.
2. Overhead: in-process, p50 of one ``Detector.detect`` on the image, and p50 of one
   Detect call on the same image to a server in this process (batching off); their
   difference is what gRPC, (de)serialisation and the batcher cost per call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import grpc
import numpy as np

from detector.predict import Detector, resolve_model_path
from proto.detector.v1 import detector_pb2_grpc as pb_grpc
from server.app import ServerConfig, create_server
from server.batcher import BatcherConfig
from server.client import DetectorClient
from server.convert import request_to_proto
from server.repository import ModelRepository

REPO_ROOT = Path(__file__).resolve().parent.parent
MS_PER_S = 1000.0
P50, P99 = 50, 99
WARMUP_CALLS = 3  # per client, before timing starts
STARTUP_TIMEOUT_S = 120.0
JPEG_QUALITY = 90


@dataclass
class LoadResult:
    mode: str
    requests: int
    seconds: float
    latencies_s: list[float]
    mean_batch: float

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def percentile_ms(self, q: int) -> float:
        return float(np.percentile(self.latencies_s, q)) * MS_PER_S


def make_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A test picture: smooth noise with a few bright rectangles, ``(H, W, 3)`` RGB."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(height // 16, 1), max(width // 16, 1), 3), np.uint8)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    for _ in range(5):
        x, y = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        image[y : y + 40, x : x + 28] = 255
    return image


def random_model(folder: Path, input_size: int) -> Path:
    """A random-weights tiny model file (for a run before a trained model exists)."""
    import torch

    from detector.checkpoint import Checkpoint
    from detector.config import ModelConfig
    from detector.models.yolo import YOLODetector

    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=10, input_size=input_size)
    return Checkpoint(cfg, "grid", YOLODetector(cfg).state_dict()).save(
        folder / "random.safetensors"
    )


class ServerProcess:
    """``python -m server`` serving the models of one folder, on free ports."""

    def __init__(
        self,
        models: Path,
        device: str,
        max_batch: int,
        max_delay_ms: float,
        queue: int,
        backend: str = "torch",
    ):
        args = [sys.executable, "-m", "server", "--models", str(models), "--host", "127.0.0.1"]
        args += ["--port", "0", "--metrics-port", "0", "--device", device, "--backend", backend]
        args += ["--max-batch", str(max_batch), "--max-delay-ms", str(max_delay_ms)]
        args += ["--max-queue", str(queue)]
        self.proc = subprocess.Popen(
            args,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.address, self.metrics_url = self._wait_started()

    def _wait_started(self) -> tuple[str, str]:
        text, deadline = "", time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"server exited while starting:\n{text}")
            text += line
            grpc_port = re.search(r" on 127\.0\.0\.1:(\d+)", text)
            metrics = re.search(r"metrics on (http://\S+)", text)
            if grpc_port and metrics:
                threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # drain
                return f"127.0.0.1:{grpc_port.group(1)}", metrics.group(1)
        raise RuntimeError(f"server did not start in {STARTUP_TIMEOUT_S} s:\n{text}")

    def mean_batch_size(self) -> float:
        text = urllib.request.urlopen(self.metrics_url).read().decode()
        total = float(re.search(r"^detector_batch_size_sum\S* (\S+)", text, re.M).group(1))
        count = float(re.search(r"^detector_batch_size_count\S* (\S+)", text, re.M).group(1))
        return total / count if count else 0.0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def run_load(address: str, payload, concurrency: int, duration: float, cap: int):
    """``concurrency`` clients calling back to back; returns (latencies, elapsed seconds)."""
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.DetectorServiceStub(channel)
        await asyncio.gather(*(stub.Detect(payload) for _ in range(concurrency * WARMUP_CALLS)))
        start = time.monotonic()
        end = start + duration

        async def client() -> None:
            while time.monotonic() < end and len(latencies) < cap:
                t0 = time.monotonic()
                await stub.Detect(payload)
                latencies.append(time.monotonic() - t0)

        await asyncio.gather(*(client() for _ in range(concurrency)))
        return latencies, time.monotonic() - start


def load_test(args, models: Path, payload, mode: str, max_batch: int) -> LoadResult:
    queue = max(args.concurrency, BatcherConfig().max_queue)
    server = ServerProcess(models, args.device, max_batch, args.max_delay_ms, queue, args.backend)
    try:
        latencies, seconds = asyncio.run(
            run_load(server.address, payload, args.concurrency, args.duration, args.max_requests)
        )
        mean_batch = server.mean_batch_size()
    finally:
        server.stop()
    return LoadResult(mode, len(latencies), seconds, latencies, mean_batch)


def overhead(
    model_path: Path, image: np.ndarray, device: str, calls: int, backend: str = "torch"
) -> tuple[float, float]:
    """p50 seconds of ``Detector.detect`` and of one Detect call, both in this process.

    The two are interleaved call by call, so that a change in the machine's load hits
    both alike; ``Detector.detect`` runs in a worker thread, as the server's forward does
    (torch's CPU thread pool behaves differently from the main thread).
    """
    detector = Detector.load(model_path, device, backend)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    config = ServerConfig(batcher=BatcherConfig(max_batch=1, max_delay_ms=0))
    repository = ModelRepository.from_detectors({"m": detector})
    server, port = asyncio.run_coroutine_threadsafe(
        create_server("127.0.0.1:0", repository, config), loop
    ).result()
    direct, remote = [], []
    try:
        with DetectorClient(f"127.0.0.1:{port}") as client, ThreadPoolExecutor(1) as worker:
            for i in range(WARMUP_CALLS + calls):
                t0 = time.perf_counter()
                worker.submit(detector.detect, [image]).result()
                t1 = time.perf_counter()
                client.detect(image)
                t2 = time.perf_counter()
                if i >= WARMUP_CALLS:
                    direct.append(t1 - t0)
                    remote.append(t2 - t1)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
    return statistics.median(direct), statistics.median(remote)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="digits", help="model file or shipped model name")
    parser.add_argument(
        "--random-model", type=int, default=None, metavar="SIZE", help="random weights, input SIZE"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--concurrency", type=int, default=16, help="clients (default: 16)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per mode")
    parser.add_argument("--max-requests", type=int, default=20_000, help="cap per mode")
    parser.add_argument("--max-batch", type=int, default=BatcherConfig().max_batch)
    parser.add_argument("--max-delay-ms", type=float, default=BatcherConfig().max_delay_ms)
    parser.add_argument("--image-size", default="640x480", help="WxH of the test image")
    parser.add_argument("--encoding", choices=("jpeg", "raw"), default="jpeg")
    parser.add_argument("--overhead-calls", type=int, default=50)
    parser.add_argument(
        "--backend",
        choices=("torch", "onnxruntime"),
        default="torch",
        help="onnxruntime: the model is exported to ONNX first and served from that (CPU)",
    )
    args = parser.parse_args(argv)

    width, height = (int(v) for v in args.image_size.lower().split("x"))
    image = make_image(width, height)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.random_model:
            model_path = random_model(folder, args.random_model)
        else:
            model_path = shutil.copy(resolve_model_path(args.model), folder)
        model_path = Path(model_path)
        if args.backend == "onnxruntime":
            from detector.export import export_model

            exported = export_model(model_path, "onnx", folder / f"{model_path.stem}.onnx")
            model_path.unlink()  # the folder serves the .onnx file only
            model_path = Path(exported)
        if args.encoding == "jpeg":
            bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            sent = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1].tobytes()
        else:
            sent = image
        payload = request_to_proto(sent)
        print(
            f"model {model_path.stem}, image {width}x{height} sent as {args.encoding}, "
            f"{args.concurrency} clients x {args.duration:g} s per mode, device {args.device}, "
            f"backend {args.backend}"
        )
        results = [
            load_test(args, folder, payload, f"batching on (max {args.max_batch})", args.max_batch),
            load_test(args, folder, payload, "batching off (max 1)", 1),
        ]
        direct_s, remote_s = overhead(
            model_path, image, args.device, args.overhead_calls, args.backend
        )

    print(f"\n{'mode':<24} {'requests':>9} {'img/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'batch':>6}")
    for r in results:
        print(
            f"{r.mode:<24} {r.requests:>9} {r.throughput:>8.1f} {r.percentile_ms(P50):>8.1f} "
            f"{r.percentile_ms(P99):>8.1f} {r.mean_batch:>6.2f}"
        )
    on, off = results
    print(
        f"\nratio on/off: throughput x{on.throughput / off.throughput:.2f}, "
        f"p50 latency x{on.percentile_ms(P50) / off.percentile_ms(P50):.2f}, "
        f"p99 latency x{on.percentile_ms(P99) / off.percentile_ms(P99):.2f}"
    )
    print(
        f"\ngRPC overhead (in-process, raw {width}x{height}, {args.overhead_calls} calls): "
        f"Detect p50 {remote_s * MS_PER_S:.2f} ms - Detector.detect p50 "
        f"{direct_s * MS_PER_S:.2f} ms = {(remote_s - direct_s) * MS_PER_S:.2f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
