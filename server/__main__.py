"""``python -m server``: the same as ``detector serve`` (see ``--help``)."""

from __future__ import annotations

import argparse
import sys

from detector.commands import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description=serve.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return serve.run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
