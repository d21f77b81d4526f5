"""The model repository: every model file in a folder, served under its name."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from detector.predict import DEFAULT_MODEL, MODEL_SUFFIX, Detector
from detector.settings import DEFAULT_OPTIONS, DetectOptions
from server.config import quoted
from server.errors import ModelNotFoundError

ONNX_SUFFIX = ".onnx"  # model files served with backend onnxruntime
HASH_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class ServedModel:
    """One model as the server serves it."""

    name: str
    detector: Detector
    sha256: str = ""  # of the model file, hex; empty when not loaded from a file
    options: DetectOptions = DEFAULT_OPTIONS  # for a request that sets none


class ModelRepository:
    """Served models by name, with a default for requests that name none.

    Args:
        models: the models; their names must be unique.
        default: the default model's name; ``None`` picks ``DEFAULT_MODEL`` when served,
            else the only model, else the first by name.
    """

    def __init__(self, models: list[ServedModel], default: str | None = None):
        if not models:
            raise ValueError("a model repository needs at least one model")
        self._models: dict[str, ServedModel] = {}
        for model in sorted(models, key=lambda m: m.name):
            if model.name in self._models:
                raise ValueError(f"two models are named {model.name!r}")
            self._models[model.name] = model
        if default is None:
            default = DEFAULT_MODEL if DEFAULT_MODEL in self._models else next(iter(self._models))
        if default not in self._models:
            raise ValueError(
                f"default model {default!r} is not among the served models {self.names}"
            )
        self.default = default

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        default: str | None = None,
        device: str = "auto",
        backend: str = "torch",
    ) -> ModelRepository:
        """Load every ``*.safetensors`` file of ``folder`` (``*.onnx`` with backend
        ``onnxruntime``), each under its file name's stem.

        Raises:
            FileNotFoundError: no such folder, or no model file in it.
            ValueError: a file is not a valid model, or ``default`` is not among them.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"model folder {folder} does not exist")
        suffix = ONNX_SUFFIX if backend == "onnxruntime" else MODEL_SUFFIX
        paths = sorted(folder.glob(f"*{suffix}"))
        if not paths:
            raise FileNotFoundError(f"no model files (*{suffix}) in {folder}")
        models = [
            ServedModel(path.stem, Detector.load(path, device, backend), file_sha256(path))
            for path in paths
        ]
        return cls(models, default)

    @classmethod
    def from_detectors(
        cls, detectors: Mapping[str, Detector], default: str | None = None
    ) -> ModelRepository:
        """Serve already-loaded detectors under the given names."""
        return cls([ServedModel(name, det) for name, det in detectors.items()], default)

    @property
    def names(self) -> list[str]:
        """Served model names, sorted."""
        return list(self._models)

    def get(self, name: str = "") -> ServedModel:
        """The model called ``name``; the default one for ``""``.

        Raises:
            ModelNotFoundError: no such model (the message lists the served ones).
        """
        model = self._models.get(name or self.default)
        if model is None:
            raise ModelNotFoundError(f"no model named {quoted(name)}; served models: {self.names}")
        return model

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
