"""Where model files are found: a path, or the name of a shipped model in ``weights/``.

Imports no torch, so that the command line can check a ``--weights`` value (and report a
missing one) before loading the model stack.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"  # shipped models
MODEL_SUFFIX = ".safetensors"
DEFAULT_MODEL = "digits"


def resolve_model_path(path_or_name: str | Path) -> Path:
    """A model file path, or the name of a shipped model in ``weights/``.

    Raises:
        FileNotFoundError: neither a file nor a shipped model's name (lists the shipped ones).
    """
    path = Path(path_or_name)
    if path.is_file():
        return path
    shipped = WEIGHTS_DIR / f"{path_or_name}{MODEL_SUFFIX}"
    if shipped.is_file():
        return shipped
    available = sorted(p.stem for p in WEIGHTS_DIR.glob(f"*{MODEL_SUFFIX}"))
    raise FileNotFoundError(
        f"no model file {str(path_or_name)!r} and no shipped model of that name "
        f"(shipped: {', '.join(available) or 'none'})"
    )
