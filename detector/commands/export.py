"""``detector export``: the raw network as ONNX, or as a Triton model repository."""

from __future__ import annotations

import argparse
import sys

from detector.commands import HelpFormatter

# Kept in step with detector.export (imported lazily: it loads torch).
FORMATS = ("onnx", "triton")
DEFAULT_OPSET = 18
DEFAULT_MAX_BATCH = 16
DEFAULT_PREFERRED_BATCHES = (4, 8, 16)
DEFAULT_MAX_QUEUE_DELAY_US = 2000

DESCRIPTION = """\
Export a grid (or landmark) model's raw network, without decoding or NMS.

--format onnx writes one ONNX file, OUT. Input "images": float32 (B, 3, H, W), RGB in
[0, 1] (uint8 / 255, letterboxed with grey 114), B, H and W dynamic, H and W multiples
of 32. Outputs "raw_s8", "raw_s16", "raw_s32": float32 (B, H/s, W/s, A, 5 + C + 2K) per
stride s. The model's metadata_props["detector"] is a JSON record of what a runtime
needs: kind, classes, anchors, strides, input size, landmarks (names, flip_idx), the
input's and outputs' names and layouts, and the full model config.

--format triton writes a Triton Inference Server model repository entry:
OUT/NAME/config.pbtxt (platform onnxruntime_onnx, dynamic batching) and
OUT/NAME/1/model.onnx (the same ONNX file).

Needs the optional packages onnx, onnxscript and onnxruntime (the 'onnx' extra).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export`` to the ``detector`` command."""
    parser = subparsers.add_parser(
        "export",
        help="export the network to ONNX or a Triton model repository",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--weights", required=True, metavar="WEIGHTS", help="model file or shipped model name"
    )
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="what to write")
    parser.add_argument(
        "--out", required=True, help="onnx: the .onnx file; triton: the repository folder"
    )
    parser.add_argument("--name", help="model name (default: the model file's name)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version")
    triton = parser.add_argument_group("triton")
    triton.add_argument(
        "--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="max_batch_size of the config"
    )
    triton.add_argument(
        "--preferred-batch",
        type=int,
        nargs="+",
        default=list(DEFAULT_PREFERRED_BATCHES),
        metavar="N",
        help="dynamic batching's preferred batch sizes",
    )
    triton.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=DEFAULT_MAX_QUEUE_DELAY_US,
        help="dynamic batching's longest wait for a batch to fill, microseconds",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from detector.export import export_model

        written = export_model(
            args.weights,
            args.format,
            args.out,
            name=args.name,
            opset=args.opset,
            max_batch_size=args.max_batch,
            preferred_batch_sizes=args.preferred_batch,
            max_queue_delay_us=args.max_queue_delay_us,
        )
    except ModuleNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {written}")
    return 0
