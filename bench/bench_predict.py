"""Predict benchmark: our ``Detector`` against Ultralytics YOLOv8n, post-processing,
and the torch and ONNX Runtime backends, in one run on one machine.

1. Single-image predict, a 640x480 frame at size 320 (both letterbox with minimal padding
   to 320x256): ``Detector.detect`` end to end (letterbox, forward, decode, NMS, map back)
   against YOLOv8n end to end with Ultralytics' own pieces (``LetterBox(auto=True)``, the
   predictor's uint8 → float conversion, forward, ``non_max_suppression``,
   ``scale_boxes``); the raw forwards alone; parameters and GFLOPs. Goal: ours >= 2x.
2. Post-processing of the same 300 and 3,000 candidate boxes (B = 1, C = 10):
   ``select_detections`` against Ultralytics' ``non_max_suppression`` on the equivalent
   ``(1, 4 + C, N)`` prediction, per-class, IoU 0.45. Goal: ours <= theirs. Both
   without merging (Ultralytics' has none), and ours with the merge-NMS that
   ``Detector`` does by default, for its cost.
3. Our ``Detector`` with the torch backend against the ONNX Runtime backend (the model
   exported to a temporary .onnx), batch 1 and 8.

On the CPU every table has a column per thread count (``--threads``; ONNX Runtime's
intra-op threads follow it). ``--device cuda`` runs the same on the GPU: ours in bf16
autocast (as ``Detector`` does on CUDA), YOLOv8n in fp16 (Ultralytics' ``half=True``).

Each timed row is measured in turns with the row it is compared to (A, B, A, B, ...,
``--rounds`` rounds of ``--calls`` calls each) and the median round is kept, so that a
busy machine slows both alike; the ratios are the figures to read, not the absolute rates.

Ultralytics is optional and never a dependency of the project: install it elsewhere
(``pip install --no-deps --target /tmp/ultra ultralytics ultralytics-thop py-cpuinfo``)
and run with ``PYTHONPATH=.:/tmp/ultra``. YOLOv8n is built from the bundled
``yolov8n.yaml`` with C classes and random weights (nothing is downloaded), fused, in
eval mode. Without Ultralytics its rows say so and the other rows still run.

Usage (from the repository root)::

    uv run python bench/bench_predict.py
    PYTHONPATH=.:/tmp/ultra uv run python bench/bench_predict.py --threads 1 2
    uv run python bench/bench_predict.py --device cuda
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from detector.data.moving_digits import moving_digits
from detector.data.synthetic import DigitSource
from detector.models.yolo import count_flops, count_parameters
from detector.postprocess import Candidates, select_detections
from detector.predict import Detector
from detector.settings import DEFAULT_OPTIONS

GOAL_END_TO_END = 2.0  # ours / YOLOv8n images/s, end to end
GOAL_POSTPROCESS = 1.0  # ours / theirs ms per call, at most
IMAGE_SIZE = (480, 640)  # (H, W) of the test frame
BATCHES = (1, 8)  # section 3
CANDIDATE_COUNTS = (300, 3000)  # section 2
BOXES_PER_CLUSTER = 10  # section 2: candidates scattered around an object
SKIPPED = "ultralytics not installed: rows skipped"
NO_GPU = "no GPU on this machine"
MS = 1000.0
GIGA = 1e9


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--weights", default="digits", help="shipped model name or model file")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU columns")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per row (median)")
    parser.add_argument("--calls", type=int, default=4, help="calls per round")
    parser.add_argument("--seed", type=int, default=0, help="frame and candidate seed")
    args = parser.parse_args(argv)
    for name in ("rounds", "calls"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if any(t < 1 for t in args.threads):
        parser.error(f"--threads must be >= 1, got {args.threads}")
    return args


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int, calls: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in turns: every round runs each
    function ``calls`` times, in order (A, B, A, B, ...). One untimed call each first.
    A function on CUDA must synchronise before it returns."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(t) for name, t in times.items()}


def load_ultralytics() -> SimpleNamespace | None:
    """Ultralytics' pieces, or None when it is not installed. Offline, quiet, and its
    settings file in a temporary folder rather than the user's config directory."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(tempfile.gettempdir()) / "bench-ultra"))
    try:
        import ultralytics
        from ultralytics.data.augment import LetterBox
        from ultralytics.nn.tasks import DetectionModel
        from ultralytics.utils import ops
        from ultralytics.utils.torch_utils import get_flops
    except ModuleNotFoundError:
        return None
    try:
        from ultralytics.utils.nms import non_max_suppression
    except ModuleNotFoundError:  # before 8.3.x it lived in ops
        non_max_suppression = ops.non_max_suppression
    return SimpleNamespace(
        version=ultralytics.__version__,
        LetterBox=LetterBox,
        DetectionModel=DetectionModel,
        scale_boxes=ops.scale_boxes,
        non_max_suppression=non_max_suppression,
        get_flops=get_flops,
    )


class YoloV8n:
    """YOLOv8n end to end with Ultralytics' own functions, as its ``DetectionPredictor``
    runs one BGR uint8 image: letterbox with minimal padding, uint8 to the device, BCHW,
    BGR → RGB, float / 255, forward, ``non_max_suppression``, ``scale_boxes``."""

    def __init__(self, ul: SimpleNamespace, num_classes: int, size: int, device: torch.device):
        model = ul.DetectionModel("yolov8n.yaml", nc=num_classes, verbose=False)
        self.half = device.type == "cuda"  # the predictor's half=True
        self.model = model.fuse(verbose=False).to(device).eval()
        if self.half:
            self.model.half()
        self.device = device
        self.ul = ul
        self.letterbox = ul.LetterBox(size, auto=True, stride=int(model.stride.max()))

    def input(self, image_bgr: np.ndarray) -> torch.Tensor:
        letterboxed = self.letterbox(image=image_bgr)  # (h, w, 3) uint8
        x = torch.from_numpy(letterboxed).unsqueeze(0).to(self.device)  # (1, h, w, 3)
        x = x.permute(0, 3, 1, 2).contiguous().flip(1)  # (1, 3, h, w) RGB
        return (x.half() if self.half else x.float()).div_(255)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> Any:
        return self.model(x)

    @torch.inference_mode()
    def predict(self, image_bgr: np.ndarray) -> np.ndarray:
        """``(N, 6)`` x1, y1, x2, y2, score, class in the image's pixels."""
        x = self.input(image_bgr)
        options = DEFAULT_OPTIONS
        (det,) = self.ul.non_max_suppression(
            self.model(x),
            options.score_threshold,
            options.iou_threshold,
            max_det=options.max_detections,
        )
        det[:, :4] = self.ul.scale_boxes(x.shape[2:], det[:, :4], image_bgr.shape)
        return det.cpu().numpy()


def flops(model: Any, x: torch.Tensor) -> float:
    """GFLOPs of one forward of ``x`` by torch's counter (a multiply-add counts 2)."""
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return counter.get_total_flops() / GIGA


def synced(fn: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    if device.type != "cuda":
        return fn

    def call() -> Any:
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return call


def test_frame(seed: int) -> np.ndarray:
    """A ``(480, 640, 3)`` uint8 RGB frame of handwritten digits."""
    frames = moving_digits(DigitSource.load("val"), 1, IMAGE_SIZE, seed=seed)
    frame, _, _ = next(frames)
    return frame


def columns(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(column title, torch threads) for each column of every table."""
    if args.device == "cuda":
        return [("cuda", torch.get_num_threads())]
    return [(f"threads {t}", t) for t in args.threads]


def print_table(title: str, cols: list[str], rows: list[tuple[str, list[str]]]) -> None:
    print(f"\n{title}\n")
    print("| row | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name, cells in rows:
        print(f"| {name} | " + " | ".join(cells) + " |")


def section_predict(args, cols, ours: Detector, ul, frame: np.ndarray) -> None:
    device = ours.device
    theirs = YoloV8n(ul, len(ours.names), ours.input_size, device) if ul else None
    frame_bgr = np.ascontiguousarray(frame[..., ::-1])  # what cv2.imread would give them
    letterboxed, _ = ours.preprocess(frame)
    ours_x = torch.from_numpy(letterboxed[None]).to(device).permute(0, 3, 1, 2).float() / 255
    ours_x = ours_x.contiguous(memory_format=torch.channels_last)  # as Detector.forward
    h, w = letterboxed.shape[:2]
    rows: dict[str, list[str]] = {}

    def add(name: str, cell: str) -> None:
        rows.setdefault(name, []).append(cell)

    @torch.inference_mode()
    def ours_forward() -> Any:
        if ours.use_cuda:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return ours.model(ours_x)
        return ours.model(ours_x)

    found = {"ours": len(ours.detect([frame])[0].boxes)}
    if theirs:
        their_x = theirs.input(frame_bgr)
        found["YOLOv8n"] = len(theirs.predict(frame_bgr))
    for _, threads in cols:
        torch.set_num_threads(threads)
        fns = {
            "ours": synced(lambda: ours.detect([frame]), device),
            "ours fwd": synced(ours_forward, device),
        }
        if theirs:
            fns["theirs"] = synced(lambda: theirs.predict(frame_bgr), device)
            fns["theirs fwd"] = synced(lambda: theirs.forward(their_x), device)
        fns = {k: fns[k] for k in sorted(fns, key=lambda k: k.endswith("fwd"))}  # e2e first
        t = interleaved(fns, args.rounds, args.calls)
        add("ours end to end (Detector.detect)", f"{1 / t['ours']:.1f} images/s")
        add("ours forward only", f"{1 / t['ours fwd']:.1f} images/s")
        if theirs:
            add("YOLOv8n end to end", f"{1 / t['theirs']:.1f} images/s")
            add("YOLOv8n forward only", f"{1 / t['theirs fwd']:.1f} images/s")
            add(
                f"**ours / YOLOv8n, end to end** (goal >= {GOAL_END_TO_END:g})",
                f"**{t['theirs'] / t['ours']:.2f}x**",
            )
            add("ours / YOLOv8n, forward only", f"{t['theirs fwd'] / t['ours fwd']:.2f}x")
        else:
            for name in ("YOLOv8n end to end", "YOLOv8n forward only", "ours / YOLOv8n"):
                add(name, SKIPPED)
    add_static = [
        (
            "detections on the frame (ours / YOLOv8n)",
            f"{found['ours']} / {found.get('YOLOv8n', '-')}",
        ),
    ]
    body = list(rows.items()) + [(n, [v] * len(cols)) for n, v in add_static]
    title = (
        f"1. single-image predict, a {IMAGE_SIZE[1]}x{IMAGE_SIZE[0]} frame at size "
        f"{ours.input_size} (input {w}x{h}), {ours.name} vs YOLOv8n, on {device}"
    )
    print_table(title, [c for c, _ in cols], body)

    size = ours.input_size
    net = ours.model
    gflops = [
        ("ours: parameters", f"{count_parameters(net) / 1e6:.2f} M"),
        (f"ours: GFLOPs at {size}x{size} (detector info)", f"{count_flops(net, size) / GIGA:.2f}"),
        (f"ours: GFLOPs at {w}x{h} (torch counter)", f"{flops(net, ours_x):.2f}"),
    ]
    if theirs:
        model = theirs.model
        x = torch.zeros(1, 3, h, w, device=device, dtype=next(model.parameters()).dtype)
        gflops += [
            ("YOLOv8n: parameters", f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M"),
            (
                f"YOLOv8n: GFLOPs at {size}x{size} (thop, get_flops)",
                f"{ul.get_flops(model, size):.2f}",
            ),
            (f"YOLOv8n: GFLOPs at {w}x{h} (torch counter)", f"{flops(model, x):.2f}"),
        ]
    else:
        gflops.append(("YOLOv8n", SKIPPED))
    print_table(
        "1b. model size (fused; a multiply-add counts 2 FLOPs)",
        ["value"],
        [(n, [v]) for n, v in gflops],
    )


def synthetic_candidates(
    count: int, num_classes: int, size: tuple[int, int], seed: int, device: torch.device
) -> Candidates:
    """``count`` candidates of one image ``size = (h, w)``: clusters of about
    ``BOXES_PER_CLUSTER`` jittered boxes of one class around each object (as a detector's
    neighbouring anchors give), scores in (0.3, 1]."""
    g = torch.Generator().manual_seed(seed)
    clusters = max(1, count // BOXES_PER_CLUSTER)
    h, w = size
    centres = torch.rand(clusters, 2, generator=g) * torch.tensor([w, h])  # (M, 2) xy
    sizes = 16 + torch.rand(clusters, 2, generator=g) * 48  # (M, 2) wh
    labels = torch.randint(num_classes, (clusters,), generator=g)  # (M,)
    which = torch.randint(clusters, (count,), generator=g)  # (N,)
    xy = centres[which] + torch.randn(count, 2, generator=g) * 4  # (N, 2)
    wh = sizes[which] * (1 + 0.15 * torch.randn(count, 2, generator=g)).clamp(min=0.5)
    boxes = torch.cat((xy - wh / 2, xy + wh / 2), -1)  # (N, 4) xyxy
    scores = 0.3 + 0.7 * torch.rand(count, generator=g)  # (N,)
    return Candidates(
        boxes=boxes[None].to(device),  # (1, N, 4)
        scores=scores[None].to(device),  # (1, N)
        class_ids=labels[which][None].to(device),  # (1, N)
        landmarks=torch.zeros(1, count, 0, 2, device=device),  # (1, N, 0, 2)
    )


def as_ultralytics_prediction(c: Candidates, num_classes: int) -> torch.Tensor:
    """The same candidates as Ultralytics' ``(1, 4 + C, N)`` prediction: xywh rows, then
    one score row per class (the candidate's score in its class's row, 0 elsewhere)."""
    boxes, scores, labels = c.boxes[0], c.scores[0], c.class_ids[0]  # (N, 4), (N,), (N,)
    xywh = torch.cat(((boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]), -1)
    class_scores = torch.zeros(len(scores), num_classes, device=scores.device)  # (N, C)
    class_scores[torch.arange(len(scores)), labels] = scores
    return torch.cat((xywh, class_scores), -1).T[None].contiguous()  # (1, 4 + C, N)


def section_postprocess(args, cols, ours: Detector, ul) -> None:
    device, options = ours.device, DEFAULT_OPTIONS
    num_classes = len(ours.names)
    rows: dict[str, list[str]] = {}
    for count in CANDIDATE_COUNTS:
        cands = synthetic_candidates(count, num_classes, (256, 320), args.seed, device)
        pred = as_ultralytics_prediction(cands, num_classes)

        def ours_fn(cands=cands, merge_iou=0.0):
            return select_detections(
                cands,
                options.score_threshold,
                options.iou_threshold,
                options.max_detections,
                merge_iou=merge_iou,
            )

        def merged_fn(cands=cands):  # Detector's default: merge-NMS after NMS
            return ours_fn(cands, options.merge_iou)

        def theirs_fn(pred=pred):
            return ul.non_max_suppression(
                pred, options.score_threshold, options.iou_threshold, max_det=options.max_detections
            )

        (kept,) = ours_fn()
        same = "-"
        if ul:
            (det,) = theirs_fn()
            same = f"{len(kept.boxes)} / {len(det)}"
            if len(det) == len(kept.boxes):
                diff = (det[:, :4] - kept.boxes).abs().max().item() if len(det) else 0.0
                same += f", same boxes in the same order (max diff {diff:.1e} px)"
        for _, threads in cols:
            torch.set_num_threads(threads)
            fns = {"ours": synced(ours_fn, device), "merged": synced(merged_fn, device)}
            if ul:
                fns["theirs"] = synced(theirs_fn, device)
            t = interleaved(fns, args.rounds, args.calls * 5)
            rows.setdefault(f"{count}: ours select_detections", []).append(
                f"{t['ours'] * MS:.2f} ms"
            )
            rows.setdefault(
                f"{count}: ours with merge-NMS (merge_iou {options.merge_iou:g}, the default)", []
            ).append(f"{t['merged'] * MS:.2f} ms")
            if ul:
                rows.setdefault(f"{count}: Ultralytics non_max_suppression", []).append(
                    f"{t['theirs'] * MS:.2f} ms"
                )
                rows.setdefault(f"**{count}: ours / theirs** (goal <= 1)", []).append(
                    f"**{t['ours'] / t['theirs']:.2f}**"
                )
            else:
                rows.setdefault(f"{count}: Ultralytics non_max_suppression", []).append(SKIPPED)
        rows[f"{count}: kept, ours / theirs"] = [same] * len(cols)
    title = (
        f"2. post-processing per call, B = 1, C = {num_classes}, per-class NMS at IoU "
        f"{options.iou_threshold}, score > {options.score_threshold}, at most "
        f"{options.max_detections}, on {device}"
    )
    print_table(title, [c for c, _ in cols], list(rows.items()))


def section_backends(args, cols, ours: Detector, ul, folder: Path) -> None:
    cells = [c for c, _ in cols]
    title = f"3. torch vs ONNX Runtime backends of Detector ({ours.name}), images/s"
    try:
        import onnxruntime as ort

        from detector.export import OnnxRuntimeNetwork, export_model
    except ModuleNotFoundError as exc:
        print_table(title, cells, [("onnxruntime", [f"not installed ({exc.name})"] * len(cells))])
        return
    providers = ["CPUExecutionProvider"]
    if ours.device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            msg = "onnxruntime has no CUDAExecutionProvider here: rows skipped"
            print_table(title, cells, [("onnxruntime", [msg] * len(cells))])
            return
        providers = ["CUDAExecutionProvider"]
    start = time.perf_counter()
    path = export_model(args.weights, "onnx", folder / f"{ours.name}.onnx")
    exported = time.perf_counter() - start
    frames = [test_frame(args.seed + i) for i in range(max(BATCHES))]
    theirs = YoloV8n(ul, len(ours.names), ours.input_size, ours.device) if ul else None
    frame_bgr = np.ascontiguousarray(frames[0][..., ::-1])
    rows: dict[str, list[str]] = {}
    for _, threads in cols:
        torch.set_num_threads(threads)
        network = OnnxRuntimeNetwork(path, providers, threads=threads)
        onnx = Detector(network, network.config, ours.device, network.kind, path.stem)
        for batch in BATCHES:
            images = frames[:batch]
            fns = {
                "torch": synced(lambda images=images: ours.detect(images), ours.device),
                "onnx": synced(lambda images=images, onnx=onnx: onnx.detect(images), ours.device),
            }
            if theirs and batch == 1:  # the predict goal of section 1, with this backend
                fns["theirs"] = synced(lambda: theirs.predict(frame_bgr), ours.device)
            t = interleaved(fns, args.rounds, max(1, args.calls // batch * 2))
            rows.setdefault(f"batch {batch}: torch", []).append(f"{batch / t['torch']:.1f}")
            rows.setdefault(f"batch {batch}: onnxruntime", []).append(f"{batch / t['onnx']:.1f}")
            rows.setdefault(f"**batch {batch}: onnxruntime / torch**", []).append(
                f"**{t['torch'] / t['onnx']:.2f}x**"
            )
            if "theirs" in t:
                rows.setdefault("batch 1: YOLOv8n end to end (torch)", []).append(
                    f"{1 / t['theirs']:.1f}"
                )
                rows.setdefault(
                    f"**batch 1: ours onnxruntime / YOLOv8n** (goal >= {GOAL_END_TO_END:g})", []
                ).append(f"**{t['theirs'] / t['onnx']:.2f}x**")
    rows["export time"] = [f"{exported:.1f} s (onnxruntime {ort.__version__})"] * len(cells)
    print_table(
        title + f", on {ours.device}, ONNX Runtime intra-op threads = torch threads",
        cells,
        list(rows.items()),
    )


def print_no_gpu() -> None:
    for title in ("1. single-image predict", "2. post-processing", "3. torch vs ONNX Runtime"):
        print_table(title, ["cuda"], [("all rows", [NO_GPU])])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"--device cuda: {NO_GPU}; every row skipped")
        print_no_gpu()
        return 0
    try:
        ours = Detector.load(args.weights, args.device)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ul = load_ultralytics()
    cols = columns(args)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load:.1f} at the start; torch "
        f"{torch.__version__}; "
        + (f"ultralytics {ul.version}" if ul else SKIPPED)
        + f"; {args.rounds} rounds, medians"
    )
    frame = test_frame(args.seed)
    section_predict(args, cols, ours, ul, frame)
    section_postprocess(args, cols, ours, ul)
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as folder:
        section_backends(args, cols, ours, ul, Path(folder))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nload average {load:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
