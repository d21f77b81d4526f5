"""The house rules of the code base, checked.

* One-way imports: the library (``detector/`` except its command-line layer,
  ``detector/commands/``) never imports ``server/``.
* A light client: the gRPC client, ``detector client`` and the command line's parsing
  load no torch.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts)
    for path in (ROOT / "detector").rglob("*.py")
    if "commands" not in path.parts and path.name not in ("__main__.py", "cli.py")
)


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_library_never_imports_the_server():
    assert "detector.predict" in LIBRARY and "detector.commands.serve" not in LIBRARY
    done = run_python(
        f"""
        import importlib, importlib.abc, sys

        class BlockServer(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "server" or name.startswith("server."):
                    raise ImportError(f"the library imported {{name}}")
                return None

        sys.meta_path.insert(0, BlockServer())
        for name in {LIBRARY!r}:
            importlib.import_module(name)
        print(sorted(m for m in sys.modules if m == "server" or m.startswith("server.")))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_block_would_catch_a_server_import():
    """The check above fails when a library module does import the server."""
    done = run_python(
        """
        import importlib.abc, sys

        class BlockServer(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "server" or name.startswith("server."):
                    raise ImportError(f"the library imported {name}")
                return None

        sys.meta_path.insert(0, BlockServer())
        import server.errors
        """
    )
    assert done.returncode != 0 and "the library imported server" in done.stderr


@pytest.mark.parametrize(
    "module",
    [
        "server.client",
        "detector.settings",
        "detector.commands.client",
        "detector.video_jobs",
        "server.config",
    ],
)
def test_light_modules_load_no_torch(module):
    done = run_python(
        f"""
        import importlib, sys
        importlib.import_module({module!r})
        print("torch" in sys.modules)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_every_help_loads_no_torch():
    done = run_python(
        """
        import contextlib, io, sys
        from detector.cli import COMMANDS, build_parser

        parser = build_parser()
        for command in COMMANDS:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
                parser.parse_args([command, "--help"])
        print("torch" in sys.modules)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_client_models_without_a_server_fails_fast_without_torch():
    done = run_python(
        """
        import sys
        from detector.cli import main

        code = main(["client", "models", "--server", "127.0.0.1:1", "--timeout", "2"])
        print(code, "torch" in sys.modules)
        """
    )
    assert done.stdout.strip().splitlines()[-1] == "1 False", done.stderr
    assert "127.0.0.1:1" in done.stderr and "UNAVAILABLE" in done.stderr


def test_video_through_a_server_loads_no_torch(tmp_path):
    """``detector video --server``: frames go to the server, so no model stack is loaded
    (here the server is unreachable: exit 1, the video's failure reported)."""
    clip = tmp_path / "clip.avi"
    done = run_python(
        f"""
        import sys
        import cv2
        import numpy as np

        writer = cv2.VideoWriter({str(clip)!r}, cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
        for i in range(3):
            writer.write(np.full((24, 32, 3), 40 * i, np.uint8))
        writer.release()
        from detector.cli import main

        code = main(["video", {str(clip)!r}, "-o", {str(tmp_path / "out")!r},
                     "--server", "127.0.0.1:1", "--quiet"])
        print(code, "torch" in sys.modules)
        """
    )
    assert done.stdout.strip().splitlines()[-1] == "1 False", done.stderr
    assert "127.0.0.1:1" in done.stderr
