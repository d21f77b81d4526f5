"""Video pipeline benchmark: is ``detector video`` as fast as its slowest stage?

Writes a synthetic clip of moving digits, then measures on this machine, in one run:

* decode only: OpenCV decoding + BGR → RGB, frames/s;
* model only: ``Detector.detect`` (letterbox, forward, decode, NMS, map back) on decoded
  frames at ``--batch``, frames/s, measured before and after the end-to-end run (the
  faster is the bound: on a shared machine one measurement can be off by 20 % or more);
* draw + encode only: drawing the model's detections and encoding, frames/s;
* end to end: ``detect_fn`` through :func:`detector.video_jobs.process_video` (three
  threads), frames/s, and its ratio to min(decode, model) (goal >= 0.9);
* the model's latency per image at batch 1 and at ``--batch``;
* post-processing per image (box decoding, per-class NMS, mapping back to the frame) with
  about ``--candidates`` boxes above the score threshold.

Usage (from the repository root)::

    uv run python bench/bench_video.py                      # shipped digits model
    uv run python bench/bench_video.py --weights runs/x/best.safetensors --frames 60
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from detector.boxes import boxes_to_original
from detector.data.moving_digits import moving_digits
from detector.data.synthetic import DigitSource
from detector.draw import draw_detections
from detector.kinds import grid_candidates
from detector.postprocess import select_detections
from detector.predict import Detector
from detector.settings import DEFAULT_OPTIONS
from detector.video import CODEC_SUFFIXES, VideoOptions, local_detect_fn, model_threads
from detector.video_jobs import VideoJob, process_video, read_video

GOAL = 0.9  # end-to-end frames/s over the slower of decoding and the model
FRAME_POOL = 32  # decoded frames cycled through by the model-only and encode-only runs
LATENCY_REPEATS = 5  # timed forwards per batch size (after one warm-up); the median is kept
POSTPROCESS_REPEATS = 20
MS = 1000.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--weights", default="digits", help="shipped model name or model file")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--frames", type=int, default=300, help="frames in the synthetic clip")
    parser.add_argument("--width", type=int, default=640, help="clip width in pixels")
    parser.add_argument("--height", type=int, default=480, help="clip height in pixels")
    parser.add_argument("--batch", type=int, default=8, help="frames per model call")
    parser.add_argument("--codec", default="mp4v", choices=sorted(CODEC_SUFFIXES))
    parser.add_argument("--candidates", type=int, default=300, help="boxes into post-processing")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: as detector video, see detector.video.model_threads)",
    )
    parser.add_argument("--seed", type=int, default=0, help="clip seed")
    args = parser.parse_args(argv)
    for name in ("frames", "width", "height", "batch", "candidates"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    return args


def write_clip(path: Path, frames: int, size: tuple[int, int], codec: str, seed: int) -> None:
    """Encode ``frames`` frames of moving digits, ``size = (height, width)``, at 25 fps."""
    fps = 25.0
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, size[::-1])
    if not writer.isOpened():
        raise ValueError(f"OpenCV cannot write {codec!r} to {path}")
    for frame, _, _ in moving_digits(DigitSource.load("val"), frames, size, seed=seed):
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def decode_fps(path: Path) -> float:
    start = time.perf_counter()
    count = sum(1 for _ in read_video(path))
    return rate(count, time.perf_counter() - start)


def model_fps(detect: Callable, pool: list[np.ndarray], frames: int, batch: int) -> float:
    detect(pool[:batch])  # warm-up
    start = time.perf_counter()
    for first in range(0, frames, batch):
        n = min(batch, frames - first)
        detect([pool[(first + i) % len(pool)] for i in range(n)])
    return rate(frames, time.perf_counter() - start)


def encode_fps(
    detect: Callable, pool: list[np.ndarray], frames: int, path: Path, codec: str
) -> float:
    detections = detect(pool)
    height, width = pool[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), 25.0, (width, height))
    start = time.perf_counter()
    for i in range(frames):
        image = draw_detections(pool[i % len(pool)], detections[i % len(pool)])
        writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    writer.release()
    return rate(frames, time.perf_counter() - start)


def latency_ms(detector: Detector, frame: np.ndarray, batch: int) -> float:
    """Median milliseconds per image of :meth:`Detector.forward` + :meth:`Detector.postprocess`
    on a letterboxed batch."""
    letterboxed, lb = detector.preprocess(frame)
    images = np.stack([letterboxed] * batch)  # (B, S, S, 3) uint8
    detector.postprocess(detector.forward(images), [lb] * batch, DEFAULT_OPTIONS)  # warm-up
    times = []
    for _ in range(LATENCY_REPEATS):
        start = time.perf_counter()
        # returns numpy: the device has finished
        detector.postprocess(detector.forward(images), [lb] * batch, DEFAULT_OPTIONS)
        times.append(time.perf_counter() - start)
    return statistics.median(times) / batch * MS


def postprocess_ms(detector: Detector, frame: np.ndarray, candidates: int) -> tuple[float, ...]:
    """Median ms of (box decoding, score + NMS, mapping back) for one image whose score
    threshold lets about ``candidates`` boxes through."""
    letterboxed, lb = detector.preprocess(frame)
    x = torch.from_numpy(letterboxed[None]).to(detector.device)  # (1, S, S, 3) uint8
    x = x.permute(0, 3, 1, 2).float().div(255)  # (1, 3, S, S)
    with torch.inference_mode():
        raw = [r.float() for r in detector.model(x)]
        scores = grid_candidates(raw, detector.config, x.shape[-2:]).scores.flatten()  # (P,)
        k = min(candidates, scores.numel() - 1)
        threshold = float(scores.topk(k + 1).values[-1])  # exactly k scores lie above it
        parts: list[list[float]] = [[], [], []]
        for _ in range(POSTPROCESS_REPEATS + 1):
            t0 = _sync_time(detector.device)
            candidates = grid_candidates(raw, detector.config, x.shape[-2:])
            t1 = _sync_time(detector.device)
            (kept,) = select_detections(
                candidates, threshold, DEFAULT_OPTIONS.iou_threshold, DEFAULT_OPTIONS.max_detections
            )
            t2 = _sync_time(detector.device)
            boxes_to_original(kept.boxes.float(), lb).cpu().numpy()
            t3 = _sync_time(detector.device)
            for part, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                part.append(seconds)
    return tuple(statistics.median(p[1:]) * MS for p in parts) + (float(k),)


def _sync_time(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        detector = Detector.load(args.weights, args.device)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if detector.device.type == "cpu":
        torch.set_num_threads(args.threads or model_threads())
    detect = local_detect_fn(detector)
    size = (args.height, args.width)
    with tempfile.TemporaryDirectory(prefix="bench_video_") as folder:
        clip = Path(folder) / f"clip{CODEC_SUFFIXES[args.codec]}"
        start = time.perf_counter()
        write_clip(clip, args.frames, size, args.codec, args.seed)
        made = time.perf_counter() - start
        pool = [f for _, f in zip(range(FRAME_POOL), read_video(clip), strict=False)]
        decode_rate = decode_fps(clip)
        model_rate = model_fps(detect, pool, args.frames, args.batch)
        encode_rate = encode_fps(
            detect, pool, args.frames, Path(folder) / f"enc{clip.suffix}", args.codec
        )
        job = VideoJob(clip, Path(folder) / f"out{clip.suffix}", Path(folder) / "out.jsonl")
        options = VideoOptions(batch_size=args.batch, codec=args.codec, progress=False)
        result = process_video(job, detect, options)
        end_to_end = result.fps
        # Model-only again after the pipeline: on a shared machine a rate measured once can
        # be off by 20 % or more; the faster of the two is the bound the pipeline is held to.
        model_after = model_fps(detect, pool, args.frames, args.batch)
        latency = {b: latency_ms(detector, pool[0], b) for b in sorted({1, args.batch})}
        post = postprocess_ms(detector, pool[0], args.candidates)
    model_before, model_rate = model_rate, max(model_rate, model_after)
    bound = min(decode_rate, model_rate)
    slowest = min(decode_rate, model_rate, encode_rate)
    print(
        f"clip: {args.frames} frames {args.width}x{args.height} of moving digits ({args.codec}, "
        f"written in {made:.1f} s); model {detector.name} (input {detector.input_size}) on "
        f"{detector.device}, batch {args.batch}, torch threads {torch.get_num_threads()}"
    )
    rows = [
        ("decode only", f"{decode_rate:8.1f} frames/s"),
        (
            f"model only (batch {args.batch}), before / after",
            f"{model_before:8.1f} / {model_after:.1f} frames/s",
        ),
        ("draw + encode only", f"{encode_rate:8.1f} frames/s"),
        ("end to end (pipelined)", f"{end_to_end:8.1f} frames/s"),
        ("end to end / min(decode, model)", f"{end_to_end / bound:8.2f}   (goal >= {GOAL})"),
        ("end to end / slowest stage", f"{end_to_end / slowest:8.2f}"),
    ]
    rows += [(f"model latency, batch {b}", f"{ms:8.2f} ms/image") for b, ms in latency.items()]
    decode_ms, nms_ms, map_ms, n = post
    rows += [
        (f"post-processing, {n:.0f} candidates", f"{sum(post[:3]):8.2f} ms/image"),
        ("  box decoding", f"{decode_ms:8.2f} ms"),
        ("  score + per-class NMS", f"{nms_ms:8.2f} ms"),
        ("  map back to the frame", f"{map_ms:8.2f} ms"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
