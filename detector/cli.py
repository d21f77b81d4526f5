"""The ``detector`` command: one subcommand per job.

Each subcommand lives in ``detector/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable taking
the parsed arguments and returning an exit code. Heavy imports happen inside ``func``
so that ``detector --help`` stays fast, and ``func`` checks what it can without them
(input files, dataset and model paths, option values) before importing torch, so that
a typo is reported in a second, not after the model stack has loaded.

Exit status, the same for every command (``EXIT_*`` in :mod:`detector.commands`):

- 0: success, everything asked for was done;
- 1: a failure while running: the work started and some of it failed (an input that
  could not be decoded or processed while others were, a server call that failed, a
  video that failed mid-way); the rest was still done where it could be;
- 2: bad input or usage, reported before any work: a missing input file, dataset or
  model, a bad option value, an argparse error;
- 130: interrupted (Ctrl-C); outputs written so far are closed and valid.

A ``ValueError`` or ``FileNotFoundError`` that reaches :func:`main` is printed as one
``error:`` line with status 2. ``detector serve`` exits 0 after a graceful shutdown on
SIGINT or SIGTERM (that is how a server is meant to stop).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys

from detector.commands import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE

EPILOG = """\
exit status (every command):
  0    success: everything asked for was done
  1    failure while running: the work started and some of it failed (an input
       that could not be processed, a server call, a video that failed mid-way)
  2    bad input or usage, reported before any work: a missing input file,
       dataset or model, a bad option value
  130  interrupted (Ctrl-C)

'detector COMMAND --help' describes each command.
"""

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
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"detector.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv  # what was asked, for commands that record it (train)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or EXIT_OK)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader of our output went away (`| head`): stop quietly
        # Python would report the pipe again when it flushes stdout at exit.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
