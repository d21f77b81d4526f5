"""The ``detector`` command: one subcommand per job.

Each subcommand lives in ``detector/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable taking
the parsed arguments and returning an exit code. Heavy imports happen inside ``func``
so that ``detector --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Order is the order shown in --help.
COMMANDS = (
    "synth",
    "convert",
    "anchors",
    "info",
    "train",
    "eval",
    "predict",
    "video",
    "serve",
    "client",
    "export",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detector",
        description="A YOLO-style object detector: generate or convert data, fit anchors, "
        "train, evaluate, predict on images and videos, and serve over gRPC.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"detector.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"detector.commands.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv  # what was asked, for commands that record it (train)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
