"""The ``detector`` subcommands, one module each (see ``detector.cli``)."""

from __future__ import annotations

import argparse

from detector.settings import DetectOptions

# Exit codes of every command (see detector.cli).
EXIT_OK = 0  # everything asked for was done
EXIT_FAILURE = 1  # the work started and some of it failed
EXIT_USAGE = 2  # bad input or usage, found before any work (argparse uses 2 too)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the description's layout and show each option's default, when it has one
    (an unset ``None`` and on/off flags show none)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def add_detect_options(
    parser: argparse.ArgumentParser, defaults: DetectOptions, per: str = "image"
) -> None:
    """``--conf``, ``--iou``, ``--max-det`` and ``--merge-iou``, with ``defaults`` (see
    :func:`detect_options`)."""
    parser.add_argument(
        "--conf",
        type=float,
        default=defaults.score_threshold,
        help="score threshold: boxes scoring at or below it are dropped",
    )
    parser.add_argument(
        "--iou",
        type=float,
        default=defaults.iou_threshold,
        help="NMS IoU threshold: a box overlapping a better one of its class this much is dropped",
    )
    parser.add_argument(
        "--max-det", type=int, default=defaults.max_detections, help=f"most detections per {per}"
    )
    parser.add_argument(
        "--merge-iou",
        type=float,
        default=defaults.merge_iou,
        help="each kept box (and its landmarks) becomes the score-weighted mean of the "
        "candidates of its class overlapping it this much (merge-NMS); 0 = off",
    )


def detect_options(args: argparse.Namespace) -> DetectOptions:
    """The :class:`DetectOptions` of ``--conf``, ``--iou``, ``--max-det``, ``--merge-iou``
    (and ``--classes`` where the command has it); ``ValueError`` for a bad value."""
    return DetectOptions(
        args.conf, args.iou, args.max_det, getattr(args, "classes", None), args.merge_iou
    )


BACKENDS = ("torch", "onnxruntime")  # detector.predict.BACKENDS, without importing torch


def add_backend_option(parser: argparse.ArgumentParser) -> None:
    """``--backend``: what runs the network (see ``Detector.load``)."""
    parser.add_argument(
        "--backend",
        default=BACKENDS[0],
        choices=BACKENDS,
        help="torch (a .safetensors model), or onnxruntime (an .onnx file written by "
        "'detector export'; needs the onnx extra; CPU)",
    )
