"""Sliding-window benchmark: how much faster is the convolutional whole-image forward than
cropping every window and classifying the crops?

On one random image (default 640x480) and a random-weights
:class:`~detector.models.window.WindowClassifier` in eval mode, for the same windows at
the same pyramid levels (:func:`detector.window_pyramid.pyramid_levels`), in one run:

* naive: each level resized, every W×W window cropped and classified, crops in batches
  of ``--batch``; the per-window outputs are put back into the level's map and turned
  into candidates by the same :func:`~detector.window_pyramid.window_candidates`;
* convolutional: :func:`~detector.window_pyramid.pyramid_candidates`, one forward per
  level over the whole resized image;
* both in images/s, their ratio (goal >= 20), and the largest difference between the two
  paths' scores and boxes (they must agree: the mode's correctness check).

Usage (from the repository root)::

    uv run python bench/bench_window.py --threads 1
    uv run python bench/bench_window.py --window 36 --image 320x240 --min-size 24
    uv run python bench/bench_window.py --models digits-window,digits

``--models A,B,...`` times trained models instead (names in ``weights/`` or paths):
``Detector.detect`` on the same image (a random-noise frame, the same for every model),
the whole call from the uint8 image to ``Detections``, interleaved in rounds so that
every model sees the same load; images/s and the ratio to the first model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from detector.models.window import WindowClassifier, WindowConfig
from detector.window_pyramid import (
    DEFAULT_SCALE_STEP,
    PyramidLevel,
    WindowCandidates,
    pyramid_candidates,
    pyramid_levels,
    resize_to_level,
    window_candidates,
)

GOAL = 20.0  # convolutional images/s over naive images/s


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--window", type=int, default=32, help="window side W in pixels")
    parser.add_argument("--image", default="640x480", help="image size WIDTHxHEIGHT")
    parser.add_argument(
        "--min-size", type=float, default=32.0, help="smallest object side in image pixels"
    )
    parser.add_argument("--step", type=float, default=DEFAULT_SCALE_STEP, help="pyramid step")
    parser.add_argument("--classes", type=int, default=10, help="object classes C")
    parser.add_argument("--batch", type=int, default=256, help="crops per naive forward")
    parser.add_argument("--repeats", type=int, default=3, help="timed convolutional runs")
    parser.add_argument("--seed", type=int, default=0, help="image and weights seed")
    parser.add_argument(
        "--models",
        default="",
        help="comma-separated trained models (weights/ names or paths) to time end to end "
        "instead, e.g. digits-window,digits",
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (--models)")
    args = parser.parse_args(argv)
    try:
        width, height = (int(v) for v in args.image.lower().split("x"))
    except ValueError:
        parser.error(f"--image must be WIDTHxHEIGHT, e.g. 640x480, got {args.image!r}")
    args.size = (height, width)
    for name in ("threads", "batch", "repeats", "classes", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    return args


def naive_candidates(
    model: WindowClassifier, images: torch.Tensor, levels: list[PyramidLevel], batch: int
) -> list[WindowCandidates]:
    """The crop-and-classify reference: every window of every level classified alone."""
    config = model.config
    w, s = config.window, config.stride
    per_level = []
    for level in levels:
        resized = resize_to_level(images, level)[0]  # (3, h, w)
        rows, cols = config.output_size(level.size)
        windows = resized.unfold(1, w, s).unfold(2, w, s)  # (3, H', W', W, W), a view
        i, j = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        i, j = i.flatten(), j.flatten()  # (P,) row-major positions
        outputs = []
        for first in range(0, i.numel(), batch):
            crops = windows[:, i[first : first + batch], j[first : first + batch]]  # (3, n, W, W)
            outputs.append(model(crops.transpose(0, 1).contiguous())[:, :, 0, 0])  # (n, C + 5)
        raw = torch.cat(outputs).T.reshape(1, config.num_outputs, rows, cols)  # (1, C + 5, H', W')
        per_level.append(window_candidates(raw, config, level))
    return [WindowCandidates.cat(parts) for parts in zip(*per_level, strict=True)]


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls of ``fn`` and its last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def compare_models(args: argparse.Namespace) -> int:
    """``--models``: each trained model's ``Detector.detect`` on one image, interleaved."""
    import numpy as np

    from detector.predict import Detector

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    try:
        detectors = {name: Detector.load(name, device="cpu") for name in names}
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    image = rng.integers(0, 256, (*args.size, 3), dtype=np.uint8)
    for detector in detectors.values():
        detector.detect([image])  # warm-up
    times: dict[str, list[float]] = {name: [] for name in detectors}
    for _ in range(args.rounds):
        for name, detector in detectors.items():
            seconds, _ = timed(lambda d=detector: d.detect([image]), args.repeats)
            times[name].append(seconds)
    print(
        f"image {args.size[1]}x{args.size[0]} (random noise), Detector.detect, torch threads "
        f"{torch.get_num_threads()}, median of {args.rounds} interleaved rounds of "
        f"{args.repeats} calls"
    )
    first = statistics.median(times[names[0]])
    width = max(len(name) for name in names)
    for name, detector in detectors.items():
        seconds = statistics.median(times[name])
        print(
            f"{name:<{width}}  {detector.kind:<14}  {1 / seconds:8.2f} images/s  "
            f"({seconds * 1000:.0f} ms/image, {first / seconds:.2f}x {names[0]})"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.models:
        return compare_models(args)
    try:
        config = WindowConfig(num_classes=args.classes, window=args.window)
        levels = pyramid_levels(args.size, args.window, args.min_size, args.step)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not levels:
        print("error: no pyramid level: --min-size above the image's short side", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    model = WindowClassifier(config).eval()
    image = torch.rand(1, 3, *args.size)  # (1, 3, H, W)
    windows = sum(r * c for r, c in (config.output_size(lv.size) for lv in levels))
    with torch.inference_mode():
        pyramid_candidates(model, image, levels)  # warm-up
        conv_s, conv = timed(lambda: pyramid_candidates(model, image, levels), args.repeats)
        naive_s, naive = timed(lambda: naive_candidates(model, image, levels, args.batch), 1)
    (conv,), (naive,) = conv, naive
    score_diff = float((conv.scores - naive.scores).abs().max())
    box_diff = float((conv.boxes - naive.boxes).abs().max())
    same_classes = bool((conv.class_ids == naive.class_ids).all())
    sides = [args.window / lv.scale for lv in levels]
    print(
        f"image {args.size[1]}x{args.size[0]}, window {args.window} (stride {config.stride}), "
        f"C = {args.classes}, {len(levels)} levels for objects {sides[0]:.0f}..{sides[-1]:.0f} px "
        f"(step {args.step:.3f}), {windows} windows; torch threads {torch.get_num_threads()}, "
        f"naive batch {args.batch}"
    )
    rows = [
        ("naive crop + classify", f"{1 / naive_s:10.3f} images/s  ({naive_s:.2f} s/image)"),
        ("convolutional", f"{1 / conv_s:10.3f} images/s  ({conv_s:.3f} s/image)"),
        ("convolutional / naive", f"{naive_s / conv_s:10.1f}x   (goal >= {GOAL:.0f}x)"),
        ("naive windows/s", f"{windows / naive_s:10.0f}"),
        ("convolutional windows/s", f"{windows / conv_s:10.0f}"),
        ("max |score diff|", f"{score_diff:10.2e}"),
        ("max |box diff| (px)", f"{box_diff:10.2e}"),
        ("same class ids", f"{same_classes!s:>10}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
