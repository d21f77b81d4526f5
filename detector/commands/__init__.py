"""The ``detector`` subcommands, one module each (see ``detector.cli``)."""

from __future__ import annotations

import argparse

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
