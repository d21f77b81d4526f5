"""``detector info``: model sizes, or what one model file holds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detector.commands import HelpFormatter

if TYPE_CHECKING:
    from detector.checkpoint import Checkpoint
    from detector.config import ModelConfig
    from detector.models.window import WindowConfig

DEFAULT_IMGSZ = 320
DEFAULT_CLASSES = 10
GIGA = 1e9
MEGA = 1e6
METRIC_FIELDS = ("ap", "ap50", "ap75")  # of the checkpoint's "metrics" record, when present
# Metadata keys that get their own line; every other key is listed by name.
SHOWN_KEYS = ("command", "dataset", "dataset_hash", "epoch", "metrics", "stale_epochs")
ANCHOR_DECIMALS = 1  # anchors in the text report: 0.1 px
ANCHOR_DECIMALS_JSON = 4  # anchors in --json: drops float32 noise (103.00000762939453)

DESCRIPTION = """\
Without --weights: a table of every model size (widths, depths, parameters and GFLOPs
of one forward pass at IMGSZ x IMGSZ for CLASSES classes).

With --weights: what the model file holds: kind, classes, input size, strides and
anchors, landmarks, parameters, GFLOPs (at the model's input size unless --imgsz is
given), and its training record: command, dataset and its hash, the epoch the file
was saved after, the best epoch and the epochs run as far as the file records them,
and the validation metrics of the saved epoch.
WEIGHTS is a model file or the name of a shipped model in weights/.

The trainer writes two files: last.safetensors (resumable, after every epoch: it knows
the epochs run and which was best) and best.safetensors (weights only, written when an
epoch improves: its epoch is the best one, and epochs run after it are not recorded).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``info`` to the ``detector`` command."""
    parser = subparsers.add_parser(
        "info",
        help="model sizes (parameters, GFLOPs), or what a model file holds",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--weights", metavar="WEIGHTS", help="model file or shipped model name")
    parser.add_argument(
        "--imgsz",
        type=int,
        default=None,
        help=f"input side for the FLOP count (default: {DEFAULT_IMGSZ}, or the model's own)",
    )
    parser.add_argument(
        "--classes", type=int, default=DEFAULT_CLASSES, help="classes of the size table's models"
    )
    parser.add_argument(
        "--json", action="store_true", help="with --weights: print the full metadata as JSON"
    )
    parser.set_defaults(func=run)


def sizes_table(imgsz: int, num_classes: int) -> str:
    """One line per entry of ``MODEL_SIZES``: widths, depths, parameters, GFLOPs, with
    the head that ``detector train`` gives a new model."""
    from detector.commands.train import DEFAULT_HEAD
    from detector.config import MODEL_SIZES, ModelConfig
    from detector.models.yolo import YOLODetector, count_flops, count_parameters

    header = f"{'size':<8}  {'widths':<24}  {'depths':<12}  {'params (M)':>10}  {'GFLOPs':>8}"
    title = f"model sizes: {num_classes} classes, input {imgsz}x{imgsz}, {DEFAULT_HEAD} head"
    lines = [title, header]
    for name, spec in MODEL_SIZES.items():
        config = ModelConfig(
            num_classes=num_classes, size=name, input_size=imgsz, head=DEFAULT_HEAD
        )
        model = YOLODetector(config)
        params = count_parameters(model) / MEGA
        gflops = count_flops(model, imgsz) / GIGA
        widths = ",".join(str(w) for w in spec.widths)
        depths = ",".join(str(d) for d in spec.depths)
        lines.append(f"{name:<8}  {widths:<24}  {depths:<12}  {params:>10.2f}  {gflops:>8.2f}")
    return "\n".join(lines)


def _window_lines(config: WindowConfig) -> list[str]:
    """What a sliding-window model's config says: classes, window, pyramid, input."""
    colour = "luminance" if config.grayscale else "RGB"
    boxes = "regressed" if config.regress_boxes else "the windows"
    return [
        f"classes: {config.num_classes}: {', '.join(config.names)}",
        f"input: {config.input_size}x{config.input_size} (letterboxed, read as {colour})",
        f"window: {config.window}x{config.window}, stride {config.stride}, boxes {boxes}",
        f"pyramid: min size {config.min_size:g} input pixels (0: the window), "
        f"scale step {config.scale_step:.4g}, border {config.border} px",
        f"widths: stages {list(config.stage_widths)}, fully connected {list(config.fc_widths)}",
    ]


def model_report(path: Path, checkpoint: Checkpoint, imgsz: int | None = None) -> str:
    """The lines ``detector info --weights`` prints for one model file."""
    from detector.models.window import WindowConfig  # torch: loaded with the checkpoint

    config = checkpoint.config
    if isinstance(config, WindowConfig):
        network = _window_lines(config)
    else:
        network = [
            f"size: {config.size}",
            f"classes: {config.num_classes}: {', '.join(config.names)}",
            f"input: {config.input_size}x{config.input_size} (letterboxed RGB)",
            f"strides: {list(config.strides)}",
            "anchors (w, h) in input pixels:",
            *(
                f"  stride {s}: {list(_rounded(a, ANCHOR_DECIMALS))}"
                for s, a in zip(config.strides, config.anchors, strict=True)
            ),
            _landmarks_line(config),
        ]
    lines = [
        f"file: {path}",
        f"kind: {checkpoint.kind}",
        *network,
        f"weights: {'EMA' if checkpoint.ema_state is not None else 'model'}",
        *_compute_lines(checkpoint, imgsz),
        *_metadata_lines(checkpoint.metadata, resumable=checkpoint.optimizer_state is not None),
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.imgsz is not None and args.imgsz <= 0:
        raise ValueError(f"--imgsz must be a positive number of pixels, got {args.imgsz}")
    if args.classes < 1:
        raise ValueError(f"--classes must be >= 1, got {args.classes}")
    if args.weights is None:
        if args.json:
            raise ValueError("--json needs --weights: it prints a model file's metadata")
        print(sizes_table(args.imgsz or DEFAULT_IMGSZ, args.classes))
        return 0

    from detector.weights import resolve_model_path

    path = resolve_model_path(args.weights)  # a missing model is reported before torch loads

    from detector.checkpoint import Checkpoint

    checkpoint = Checkpoint.load(path)
    if args.json:
        model = checkpoint.config.to_dict()
        if "anchors" in model:  # grid networks; a window model has none
            model["anchors"] = _rounded(model["anchors"], ANCHOR_DECIMALS_JSON)
        record = {"kind": checkpoint.kind, "model": model, **checkpoint.metadata}
        print(json.dumps(record, indent=2))
        return 0
    print(model_report(path, checkpoint, args.imgsz))
    return 0


def _landmarks_line(config: ModelConfig) -> str:
    if not config.num_landmarks:
        return "landmarks: none"
    names = ", ".join(config.landmark_names) if config.landmark_names else "unnamed"
    flip = f", flip_idx {list(config.flip_idx)}" if config.flip_idx else ""
    skeleton = f", skeleton {[list(p) for p in config.skeleton]}" if config.skeleton else ""
    return f"landmarks: {config.num_landmarks} ({names}){flip}{skeleton}"


def _compute_lines(checkpoint: Checkpoint, imgsz: int | None) -> list[str]:
    """Parameters and GFLOPs for a kind built as the grid network (grid, landmark); the
    stored tensor sizes otherwise."""
    from detector.kinds import get_kind
    from detector.models.yolo import YOLODetector, count_flops, count_parameters

    if get_kind(checkpoint.kind).build is not YOLODetector:
        values = sum(t.numel() for t in checkpoint.inference_state.values())
        return [f"stored weight values: {values / MEGA:.2f} M"]

    size = imgsz or checkpoint.config.input_size
    model = YOLODetector(checkpoint.config)
    return [
        f"parameters: {count_parameters(model) / MEGA:.2f} M",
        f"GFLOPs: {count_flops(model, size) / GIGA:.2f} at {size}x{size}",
    ]


def _rounded(values: Any, decimals: int) -> Any:
    """Nested tuples/lists of numbers with each number rounded (tuples stay tuples)."""
    if isinstance(values, list | tuple):
        return type(values)(_rounded(v, decimals) for v in values)
    return round(float(values), decimals)


def _epoch_lines(metadata: dict[str, Any], resumable: bool) -> list[str]:
    """The saved epoch, the best epoch and the epochs run, as far as the file knows them.

    ``epoch`` is stored 0-based; ``stale_epochs`` counts the epochs since the best one.
    A resumable file (with optimizer state) is the trainer's last.safetensors, written
    after every epoch; a weights-only file is its best.safetensors, written when an
    epoch improves, so later epochs are not in it.
    """
    epoch = metadata.get("epoch")
    if not isinstance(epoch, int):
        return []
    saved = epoch + 1
    train_config = metadata.get("train_config")
    planned = train_config.get("epochs") if isinstance(train_config, dict) else None
    lines = [f"saved after epoch: {saved}" + (f" of {planned} planned" if planned else "")]
    stale = metadata.get("stale_epochs")
    if not isinstance(stale, int):
        lines.append("best epoch: not recorded")
    elif stale == 0:
        lines.append(f"best epoch: {saved} (the weights in this file)")
    else:
        lines.append(
            f"best epoch: {saved - stale} ({stale} epochs without improvement since; "
            "its weights are in the run's best.safetensors)"
        )
    if resumable:
        lines.append(f"epochs run: {saved} (a resumable checkpoint, saved after every epoch)")
    else:
        lines.append(
            f"epochs run: at least {saved} (a weights-only file, saved when an epoch "
            "improved; later epochs are not recorded in it)"
        )
    options = metadata.get("train_options")
    if isinstance(options, dict) and options.get("init"):
        lines.append(f"started from: {options['init']} (--init; epochs count from there)")
    return lines


def _metadata_lines(metadata: dict[str, Any], resumable: bool = False) -> list[str]:
    lines = []
    if metadata.get("command"):
        lines.append(f"training command: {metadata['command']}")
    if "dataset" in metadata:
        lines.append(f"dataset: {metadata['dataset']}")
    if "dataset_hash" in metadata:
        lines.append(f"dataset hash: {metadata['dataset_hash']}")
    lines += _epoch_lines(metadata, resumable)
    metrics = metadata.get("metrics")
    if isinstance(metrics, dict):
        shown = "  ".join(
            f"{name} {_number(metrics.get(name))}" for name in METRIC_FIELDS if name in metrics
        )
        epoch = metadata.get("epoch")
        of_epoch = f" (epoch {epoch + 1})" if isinstance(epoch, int) else ""
        lines.append(f"validation metrics{of_epoch}: {shown or 'none'}")
    others = sorted(k for k in metadata if k not in SHOWN_KEYS)
    if others:
        lines.append(f"other metadata: {', '.join(others)} (--json shows them)")
    if not metadata:
        lines.append("metadata: none (no training record)")
    return lines


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"
