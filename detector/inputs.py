"""Command-line inputs: expand files, directories and glob patterns into file lists, and
check that named paths exist.

Imports nothing heavy (no torch, no OpenCV), so that the commands can report a missing
input before loading the model stack.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Sequence
from pathlib import Path

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv")


def expand_inputs(
    inputs: Sequence[str | Path], suffixes: Iterable[str], kind: str
) -> tuple[list[Path], list[str]]:
    """Expand files, directories and glob patterns into files.

    A named file is taken whatever its suffix; a directory gives its files whose
    lower-cased suffix is in ``suffixes`` (sorted, not recursive); a pattern gives the
    files it matches (``**`` recurses). Duplicates are dropped, first occurrence kept.

    Args:
        inputs: what the user typed.
        suffixes: e.g. ``(".jpg", ".png")``.
        kind: a word for the messages, e.g. ``"image"`` or ``"video"``.

    Returns:
        The files, and one message per input that gave none.
    """
    suffixes = tuple(suffixes)
    found: list[Path] = []
    problems: list[str] = []
    for entry in inputs:
        path = Path(entry)
        if path.is_file():
            files = [path]
        elif path.is_dir():
            files = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes
            )
            if not files:
                problems.append(f"{entry}: no {kind} files ({', '.join(suffixes)})")
        elif glob.has_magic(str(entry)):
            files = [Path(p) for p in sorted(glob.glob(str(entry), recursive=True))]
            files = [p for p in files if p.is_file()]
            if not files:
                problems.append(f"{entry}: the pattern matches no files")
        else:
            files = []
            problems.append(f"{entry}: no such file or directory")
        found.extend(files)
    seen: set[Path] = set()
    unique = [p for p in found if not (p.resolve() in seen or seen.add(p.resolve()))]
    return unique, problems


def find_videos(inputs: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Expand files, directories and glob patterns into video files.

    A named file is taken whatever its suffix; a directory gives its files with a
    suffix in ``VIDEO_SUFFIXES``; a pattern gives the files it matches (``**`` recurses).
    Duplicates are dropped, first occurrence kept.

    Returns:
        The files, and one message per input that gave none (the others still run).
    """
    return expand_inputs(inputs, VIDEO_SUFFIXES, "video")


def require_path(path: str | Path, what: str) -> Path:
    """``path`` as a :class:`Path` when it exists (file or folder).

    Raises:
        FileNotFoundError: it does not; the message is ``"{what} {path} not found"``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} not found")
    return path
