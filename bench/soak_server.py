"""Soak of the gRPC server under hostile and heavy load: a bounded, rerunnable script.

    uv run python bench/soak_server.py --seconds 5

Starts ``python -m server`` (loopback only) on the shipped ``digits`` model and runs, each
phase for ``--seconds`` (every loop is bounded in count and time):

1. baseline: 2 clients back to back -> p50/p99 of a valid call (the "unloaded" figures);
2. capacity: 16 clients back to back -> completed calls per second;
3. overload, right after (the machine's load drifts): open-loop arrivals at 4x capacity,
   without and with 150 ms deadlines -> goodput (answers per second) vs capacity, images
   the server ran for callers who had already given up (server images run - answers),
   and where the device's time went (busy share, images per batch, time per image);
4. malformed: bad bytes, oversized strings, bad images, raw pixels of the wrong length;
5. bombs: 8 clients sending a small PNG that decodes to 8000x8000 (and 2 a large JPEG)
   next to 2 clients of valid calls -> the valid calls' p50/p99 vs the baseline;
6. streams: 16 streams next to 16 unary clients on a default server; an 8-frame stream
   on a ``--max-queue 4`` server -> frames unanswered, status codes;
7. SIGTERM while streams and unary calls run -> stream statuses, frames read but not
   answered, seconds from the signal to the process exit.

The server's output is drained (and its warning/error/traceback lines counted): a pipe
nobody reads would block the server once full.

Prints one table: per phase, the status codes received, p50/p99 of valid calls, goodput,
and the server's RSS before/after (and its peak).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import grpc
import numpy as np

from proto.detector.v1 import detector_pb2 as pb
from proto.detector.v1 import detector_pb2_grpc as pb_grpc
from server.convert import request_to_proto

REPO_ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = REPO_ROOT / "weights" / "digits.safetensors"
HOST = "127.0.0.1"
MS = 1000.0
STARTUP_TIMEOUT_S = 120.0
CALL_TIMEOUT_S = 30.0  # every call of the soak has a deadline: nothing hangs
MAX_IN_FLIGHT = 512  # open-loop overload: at most this many calls outstanding
BOMB_SIDE = 8000
DEADLINE_S = 0.150
OVERLOAD = 4
Code = grpc.StatusCode


@dataclass
class Phase:
    name: str
    codes: collections.Counter = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)  # seconds, valid calls answered
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    rss: tuple[float, float, float] | None = None  # MiB before, after, peak

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * MS if self.latencies else float("nan")

    def ok_per_s(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0


class Server:
    """``python -m server`` in a subprocess on a free loopback port, with /metrics."""

    def __init__(self, models: Path, *args: str):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "server", "--models", str(models), "--host", HOST]
        cmd += ["--port", "0", "--metrics-port", "0", *args]
        self.proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        end = time.monotonic() + STARTUP_TIMEOUT_S
        text = ""
        while not re.search(r"metrics on http://\S+:(\d+)", text):
            line = self.proc.stdout.readline()
            if not line or time.monotonic() > end:
                raise RuntimeError(f"server did not start: {text}")
            self.lines.append(line)
            text = "".join(self.lines)
        port = re.search(r"on 127\.0\.0\.1:(\d+)", text).group(1)
        self.address = f"{HOST}:{port}"
        self.metrics_url = re.search(r"metrics on (http://\S+)", text).group(1)
        # Drain the server's output: a pipe nobody reads fills up (64 KiB) and blocks
        # whichever server thread writes next (this hung the soak's server once).
        self._drain = threading.Thread(target=self._read_output, daemon=True)
        self._drain.start()

    def _read_output(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def log_problems(self) -> tuple[collections.Counter, dict[str, str]]:
        """Lines of the server's output that are warnings, errors or tracebacks: their
        count per kind, and the first line of each kind."""
        found, first = collections.Counter(), {}
        for line in self.lines:
            for word in ("WARNING", "ERROR", "Traceback", "libpng", "Corrupt JPEG"):
                if word in line:
                    found[word] += 1
                    first.setdefault(word, line.strip()[:200])
        return found, first

    def rss_mib(self) -> tuple[float, float]:
        """(current, peak) resident memory of the server process, MiB."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024
        peak = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024
        return rss, peak

    def metric(self, name: str) -> float:
        """The sum of a metric's samples over its labels, from /metrics."""
        text = urllib.request.urlopen(self.metrics_url, timeout=10).read().decode()
        return sum(float(m) for m in re.findall(rf"^{name}\{{[^}}]*\}} (\S+)", text, re.M))

    def images_run(self) -> float:
        return self.metric("detector_batch_size_sum")

    def device_counters(self) -> tuple[float, float, float]:
        """(seconds of batches on the device, batches, images) so far."""
        return (
            self.metric("detector_inference_seconds_sum"),
            self.metric("detector_batch_size_count"),
            self.images_run(),
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


def valid_requests(count: int = 8) -> list[pb.DetectRequest]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        image = rng.integers(0, 256, (240, 320, 3), np.uint8)
        data = cv2.imencode(".jpg", image)[1].tobytes()
        out.append(request_to_proto(data))
    return out


def png_bomb() -> bytes:
    return cv2.imencode(
        ".png", np.zeros((BOMB_SIDE, BOMB_SIDE, 3), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9]
    )[1].tobytes()


def jpeg_large() -> bytes:
    return cv2.imencode(".jpg", np.zeros((BOMB_SIDE, BOMB_SIDE, 3), np.uint8))[1].tobytes()


def malformed_requests(valid: pb.DetectRequest) -> list[tuple[str, object]]:
    """(kind, request): a DetectRequest, or bytes that are no request at all."""
    png = cv2.imencode(".png", np.zeros((40, 40, 3), np.uint8))[1].tobytes()
    return [
        ("garbage bytes", b"\xff" * 64),
        ("huge request_id", pb.DetectRequest(image=valid.image, request_id="x" * 100_000)),
        ("huge model name", pb.DetectRequest(image=valid.image, model="m" * 100_000)),
        ("many class names", pb.DetectRequest(image=valid.image, class_names=["a"] * 5000)),
        ("not an image", pb.DetectRequest(image=pb.Image(encoded=b"hello world"))),
        ("truncated png", pb.DetectRequest(image=pb.Image(encoded=png[: len(png) // 2]))),
        (
            "raw length",
            pb.DetectRequest(
                image=pb.Image(raw=pb.RawImage(data=b"\0" * 5, width=4, height=4, channels=3))
            ),
        ),
        (
            "huge raw claim",
            pb.DetectRequest(
                image=pb.Image(raw=pb.RawImage(data=b"", width=100_000, height=100_000, channels=3))
            ),
        ),
    ]


async def call(
    stub, request, phase: Phase | None, timeout: float = CALL_TIMEOUT_S, valid=True
) -> Code:
    start = time.monotonic()
    try:
        await stub.Detect(request, timeout=timeout)
        code = Code.OK
        if phase is not None and valid:
            phase.latencies.append(time.monotonic() - start)
    except grpc.aio.AioRpcError as err:
        code = err.code()
    if phase is not None:
        phase.codes[code.name] += 1
    return code


async def closed_loop(
    stub, requests, clients: int, seconds: float, phase: Phase, valid=True
) -> None:
    end = time.monotonic() + seconds

    async def client(i: int) -> None:
        n = i
        while time.monotonic() < end:
            await call(stub, requests[n % len(requests)], phase, valid=valid)
            n += 1

    await asyncio.gather(*(client(i) for i in range(clients)))


async def open_loop(
    stub, requests, rate: float, seconds: float, phase: Phase, timeout: float
) -> None:
    """Arrivals at ``rate`` per second for ``seconds``, at most MAX_IN_FLIGHT outstanding."""
    tasks: set[asyncio.Task] = set()
    start = time.monotonic()
    sent = 0
    while (now := time.monotonic()) < start + seconds:
        due = int((now - start) * rate)
        while sent < due and len(tasks) < MAX_IN_FLIGHT:
            task = asyncio.ensure_future(call(stub, requests[sent % len(requests)], phase, timeout))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.sleep(0.002)
    if tasks:
        await asyncio.wait(tasks, timeout=CALL_TIMEOUT_S + 5)
    phase.notes.append(f"sent {sent}")


async def with_server(server: Server, body) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.DetectorServiceStub(channel)
        await body(stub, channel)


def device_note(
    before: tuple[float, float, float], after: tuple[float, float, float], seconds: float
) -> str:
    """Where a phase's device time went: busy share, images per batch, ms per image."""
    busy, batches, images = (b - a for a, b in zip(before, after, strict=True))
    return (
        f"device busy {100 * busy / seconds:.0f}% of the phase, {images / max(batches, 1):.1f} "
        f"images per batch, {MS * busy / max(images, 1):.1f} ms of batch per image"
    )


async def run_main_phases(server: Server, seconds: float) -> list[Phase]:
    valid = valid_requests()
    phases: list[Phase] = []

    async def body(stub, channel):
        for request in valid[:2]:  # warm up
            await call(stub, request, None)

        async def timed(phase: Phase, coro) -> Phase:
            before = server.rss_mib()[0]
            start = time.monotonic()
            await coro
            phase.seconds = time.monotonic() - start
            after, peak = server.rss_mib()
            phase.rss = (before, after, peak)
            phases.append(phase)
            return phase

        base = Phase("baseline (2 clients)")
        await timed(base, closed_loop(stub, valid, 2, seconds, base))
        capacity = Phase("capacity (16 clients)")
        counters = server.device_counters()
        await timed(capacity, closed_loop(stub, valid, 16, seconds, capacity))
        capacity.notes.append(device_note(counters, server.device_counters(), capacity.seconds))
        rate = OVERLOAD * capacity.ok_per_s()

        for deadline, label in ((CALL_TIMEOUT_S, "no deadline"), (DEADLINE_S, "150 ms deadline")):
            phase = Phase(f"overload {OVERLOAD}x ({rate:.0f}/s, {label})")
            run_before = server.images_run()
            counters = server.device_counters()
            await timed(phase, open_loop(stub, valid, rate, seconds, phase, deadline))
            phase.notes.append(device_note(counters, server.device_counters(), phase.seconds))
            await asyncio.sleep(0.5)
            wasted = server.images_run() - run_before - phase.codes["OK"]
            phase.notes.append(
                f"goodput {phase.ok_per_s():.1f}/s = {100 * phase.ok_per_s() / capacity.ok_per_s():.0f}% "
                f"of capacity {capacity.ok_per_s():.1f}/s; images run for callers gone: {wasted:.0f}"
            )

        bad = Phase("malformed mix (4 clients)")
        mix = malformed_requests(valid[0])
        raw_detect = channel.unary_unary("/detector.v1.DetectorService/Detect")

        async def malformed_client(i: int, end: float) -> None:
            n = i
            while time.monotonic() < end:
                kind, request = mix[n % len(mix)]
                n += 1
                try:
                    if isinstance(request, bytes):
                        await raw_detect(request, timeout=CALL_TIMEOUT_S)
                    else:
                        await stub.Detect(request, timeout=CALL_TIMEOUT_S)
                    bad.codes["OK"] += 1
                except grpc.aio.AioRpcError as err:
                    bad.codes[err.code().name] += 1

        end = time.monotonic() + seconds
        await timed(bad, asyncio.gather(*(malformed_client(i, end) for i in range(4))))

        bombs = Phase("bombs: 8 PNG + 2 JPEG 8000x8000 clients, 2 valid")
        png, jpeg = (
            pb.DetectRequest(image=pb.Image(encoded=png_bomb())),
            pb.DetectRequest(image=pb.Image(encoded=jpeg_large())),
        )
        bombs.notes.append(
            f"PNG bomb {len(png.image.encoded) / 1024:.0f} KB, JPEG {len(jpeg.image.encoded) / 1024:.0f} KB"
        )
        bomb_codes = Phase("bomb calls")
        await timed(
            bombs,
            asyncio.gather(
                closed_loop(stub, valid, 2, seconds, bombs),
                closed_loop(stub, [png], 8, seconds, bomb_codes, valid=False),
                closed_loop(stub, [jpeg], 2, seconds, bomb_codes, valid=False),
            ),
        )
        bombs.notes.append(f"bomb calls: {dict(bomb_codes.codes)}")
        bombs.notes.append(f"valid p99 / baseline p99 = {bombs.pct(99) / base.pct(99):.2f}")

        streams = Phase("16 streams x 16 frames + 16 unary clients")
        unary = Phase("unary next to streams")
        answered = collections.Counter()

        async def stream_client() -> None:
            frames = [valid[i % len(valid)] for i in range(16)]
            got = 0
            try:
                async for _ in stub.StreamDetect(iter(frames), timeout=CALL_TIMEOUT_S * 4):
                    got += 1
                streams.codes["OK"] += 1
            except grpc.aio.AioRpcError as err:
                streams.codes[err.code().name] += 1
            answered["answered"] += got
            answered["unanswered"] += len(frames) - got

        await timed(
            streams,
            asyncio.gather(
                *(stream_client() for _ in range(16)), closed_loop(stub, valid, 16, seconds, unary)
            ),
        )
        streams.notes.append(f"frames {dict(answered)}; unary codes {dict(unary.codes)}")

    await with_server(server, body)
    return phases


async def small_queue_stream(models: Path) -> Phase:
    server = Server(models, "--max-queue", "4")
    phase = Phase("1 stream x 8 frames, --max-queue 4")
    try:

        async def body(stub, _):
            frames = valid_requests(8)
            got = 0
            start = time.monotonic()
            try:
                async for _ in stub.StreamDetect(iter(frames), timeout=CALL_TIMEOUT_S):
                    got += 1
                phase.codes["OK"] += 1
            except grpc.aio.AioRpcError as err:
                phase.codes[err.code().name] += 1
            phase.seconds = time.monotonic() - start
            phase.notes.append(f"frames answered {got}/8")

        await with_server(server, body)
    finally:
        server.stop()
    return phase


async def sigterm_under_load(models: Path) -> Phase:
    server = Server(models, "--grace", "10")
    phase = Phase("SIGTERM: 4 endless streams + 4 unary clients")
    read_answered = collections.Counter()
    try:

        async def body(stub, _):
            valid = valid_requests()
            stop_at = time.monotonic() + 60  # bound: the streams end at the SIGTERM anyway

            async def frames():
                n = 0
                while time.monotonic() < stop_at:
                    yield valid[n % len(valid)]
                    n += 1
                    await asyncio.sleep(0.01)

            async def stream() -> None:
                got = 0
                call_ = stub.StreamDetect(frames(), timeout=CALL_TIMEOUT_S * 4)
                try:
                    async for _ in call_:
                        got += 1
                    phase.codes["stream OK"] += 1
                except grpc.aio.AioRpcError as err:
                    phase.codes[f"stream {err.code().name}"] += 1
                    match = re.search(r"the (\d+) frames", err.details() or "")
                    if match:
                        read_answered["said answered"] += int(match.group(1))
                read_answered["answered"] += got

            async def unary() -> None:
                end = time.monotonic() + 30
                while time.monotonic() < end and server.proc.poll() is None:
                    code = await call(stub, valid[0], None, timeout=5)
                    phase.codes[f"unary {code.name}"] += 1
                    if code == Code.UNAVAILABLE:
                        return

            tasks = [asyncio.ensure_future(stream()) for _ in range(4)]
            tasks += [asyncio.ensure_future(unary()) for _ in range(4)]
            await asyncio.sleep(2.0)
            sent_at = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            await asyncio.wait(tasks, timeout=60)
            last_answer = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(None, server.proc.wait, 60)
            exited = time.monotonic()
            phase.seconds = exited - sent_at
            phase.notes.append(
                f"exit code {server.proc.returncode}; exited {exited - sent_at:.2f} s after "
                f"SIGTERM ({exited - last_answer:.2f} s after the clients' last call ended); "
                f"stream frames answered {read_answered['answered']}, server said "
                f"{read_answered['said answered']}"
            )

        await with_server(server, body)
    finally:
        server.stop()
    return phase


def print_table(phases: list[Phase]) -> None:
    print(
        "\n| phase | status codes | valid p50 / p99 ms | answers/s | RSS MiB before → after (peak) |"
    )
    print("|---|---|---|---|---|")
    for p in phases:
        codes = ", ".join(f"{k} {v}" for k, v in sorted(p.codes.items()))
        lat = f"{p.pct(50):.0f} / {p.pct(99):.0f}" if p.latencies else "-"
        rate = f"{p.ok_per_s():.1f}" if p.latencies else "-"
        rss = f"{p.rss[0]:.0f} → {p.rss[1]:.0f} ({p.rss[2]:.0f})" if p.rss else "-"
        print(f"| {p.name} | {codes} | {lat} | {rate} | {rss} |")
    for p in phases:
        for note in p.notes:
            print(f"- {p.name}: {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each phase")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp)
        (models / "digits.safetensors").symlink_to(WEIGHTS)
        phases: list[Phase] = []
        server = Server(models)
        try:
            phases += asyncio.run(run_main_phases(server, args.seconds))
        finally:
            server.stop()
        phases.append(asyncio.run(small_queue_stream(models)))
        phases.append(asyncio.run(sigterm_under_load(models)))
    print_table(phases)
    problems, first = server.log_problems()
    print(f"- server output of the main phases, warning/error/traceback lines: {dict(problems)}")
    for word, line in first.items():
        print(f"  - first {word} line: {line}")


if __name__ == "__main__":
    main()
