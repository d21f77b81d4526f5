"""One file per model: safetensors tensors plus one JSON metadata record.

File layout (a standard ``.safetensors`` file, readable by any safetensors tool):

- tensors ``model/<name>``: the model's own ``state_dict()`` (the raw trained weights);
- tensors ``ema/<name>``: the exponential-moving-average weights, when training kept them.
  **Inference uses the EMA weights when present, else the model weights**
  (:func:`load_weights_only`, :meth:`Checkpoint.inference_state`);
- tensors ``optim/<path>``: the optimizer's tensors, for resuming
  (:func:`flatten_optimizer_state`); its non-tensor structure is in the JSON;
- ``__metadata__`` holds one key, ``"detector"``: a JSON object with ``format_version``,
  ``sha256``, ``kind`` (``"grid"``, ``"landmark"``, ``"sliding-window"``), ``model``
  (``ModelConfig.to_dict()``), ``optimizer`` (structure or null), ``ema`` (bool), and
  whatever the trainer adds (command, dataset hash, metrics, epoch...).

Integrity: ``sha256`` is a SHA-256 over the canonical JSON of the rest of the metadata and
over every tensor's name, dtype, shape and bytes (in name order). Loading recomputes it,
so a truncated file, an edited header or a changed tensor byte raises ``ValueError``
("<path> is not a valid model checkpoint: ..."). Loading never unpickles anything.

Writes are atomic: the bytes go to a temporary file in the target's folder, are flushed
and fsync'ed, then ``os.replace`` puts them in place; a crash leaves the old file intact
(and, at worst, a temporary ``.<name>.<16 hex digits>.tmp`` beside it, which
:func:`remove_stale_temporaries` removes).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError

from detector.config import ModelConfig

FORMAT_VERSION = 1
METADATA_KEY = "detector"  # the one key of the safetensors __metadata__
MODEL_PREFIX = "model/"
EMA_PREFIX = "ema/"
OPTIMIZER_PREFIX = "optim/"
KNOWN_KINDS = ("grid", "landmark", "sliding-window")

# Keys of the metadata record that this module writes; callers' metadata may not use them.
_FILE_KEYS = ("format_version", "sha256")
_CHECKPOINT_KEYS = ("kind", "model", "optimizer", "ema")

# Tags of the JSON encoding of nested optimizer state.
_TENSOR_TAG = "__tensor__"  # {"__tensor__": "optim/state/0/exp_avg"}
_TUPLE_TAG = "__tuple__"  # {"__tuple__": [...]}
_ITEMS_TAG = "__items__"  # {"__items__": [[key, value], ...]} for non-str keys
_TAGS = (_TENSOR_TAG, _TUPLE_TAG, _ITEMS_TAG)

_HEADER_SIZE_BYTES = 8  # safetensors: little-endian u64 length of the JSON header


def save_checkpoint(
    path: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any],
    extra_tensors: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint atomically.

    Args:
        path: the file to write (``.safetensors`` by convention); folders are created.
        state_dict: model tensors, stored as ``model/<name>``.
        metadata: a JSON-serialisable dict; ``format_version`` and ``sha256`` are added.
        extra_tensors: more tensors stored under their own names, which must not start
            with ``model/`` (e.g. ``ema/...``, ``optim/...``).

    Returns:
        The path written.
    """
    path = Path(path)
    taken = [k for k in _FILE_KEYS if k in metadata]
    if taken:
        raise ValueError(f"metadata keys {taken} are reserved for the checkpoint file format")
    extra = dict(extra_tensors or {})
    clash = [k for k in extra if k.startswith(MODEL_PREFIX)]
    if clash:
        raise ValueError(f"extra tensor names must not start with {MODEL_PREFIX!r}: {clash}")
    tensors = {MODEL_PREFIX + k: _storable(v, k) for k, v in state_dict.items()}
    tensors.update({k: _storable(v, k) for k, v in extra.items()})
    try:
        record = json.loads(json.dumps({"format_version": FORMAT_VERSION, **metadata}))
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint metadata must be JSON-serialisable: {err}") from err
    record["sha256"] = _digest(record, tensors)
    data = safetensors.torch.save(tensors, metadata={METADATA_KEY: json.dumps(record)})
    _atomic_write(path, data)
    return path


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor]]:
    """Read and verify a file written by :func:`save_checkpoint`.

    Returns:
        ``(state_dict, metadata, extra_tensors)``: model tensors without their ``model/``
        prefix, the metadata (with ``format_version``, without ``sha256``), and every
        other tensor under its stored name; tensors on ``map_location``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a checkpoint, truncated, modified, or from a newer format.
    """
    path = Path(path)
    if not path.is_file():
        if path.exists():
            raise ValueError(f"{path} is not a valid model checkpoint: not a regular file")
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    data = path.read_bytes()
    record = _read_record(data, path)
    try:
        tensors = safetensors.torch.load(data)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise _invalid(path, f"unreadable tensor data ({err})") from err
    stored = record.pop("sha256", None)
    if stored != _digest(record, tensors):
        raise _invalid(path, "SHA-256 mismatch: the file was truncated, corrupted or modified")
    version = record.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise _invalid(path, f"format_version {version!r}, this code reads <= {FORMAT_VERSION}")
    tensors = {k: v.to(map_location) for k, v in tensors.items()}
    model = {k[len(MODEL_PREFIX) :]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
    extra = {k: v for k, v in tensors.items() if not k.startswith(MODEL_PREFIX)}
    return model, record, extra


def flatten_optimizer_state(
    state: Mapping[str, Any], prefix: str = OPTIMIZER_PREFIX
) -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested state (``optimizer.state_dict()``, or a scheduler's, scaler's)
    into tensors and a JSON-serialisable structure.

    Tensors are named ``<prefix><path>`` (e.g. ``optim/state/0/momentum_buffer``) and
    replaced in the structure by ``{"__tensor__": name}``; tuples and dicts with non-string
    keys (the optimizer's integer parameter ids) are tagged so they come back as they were.

    Returns:
        ``(tensors, structure)``; :func:`unflatten_optimizer_state` inverts it.
    """
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(state, prefix, tensors)
    return tensors, structure


def unflatten_optimizer_state(tensors: Mapping[str, torch.Tensor], structure: Any) -> Any:
    """Inverse of :func:`flatten_optimizer_state`: the nested state with its tensors."""
    return _decode(structure, tensors)


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """Everything one model file holds.

    Attributes:
        config: the model's architecture and decoding settings: a ``ModelConfig``, or
            the config type of its kind (see :mod:`detector.kinds`).
        kind: the model kind, a key of ``detector.kinds.KINDS``.
        model_state: ``model.state_dict()``, the raw trained weights.
        ema_state: the EMA weights, or ``None``; preferred for inference when present.
        optimizer_state: ``optimizer.state_dict()`` for resuming, or ``None``.
        metadata: JSON-serialisable extras (training command, dataset hash, metrics, epoch).
    """

    config: ModelConfig
    kind: str
    model_state: dict[str, torch.Tensor]
    ema_state: dict[str, torch.Tensor] | None = None
    optimizer_state: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not self.kind:
            raise ValueError(f"kind must be a non-empty string such as 'grid', got {self.kind!r}")
        taken = [k for k in (*_FILE_KEYS, *_CHECKPOINT_KEYS) if k in self.metadata]
        if taken:
            raise ValueError(f"metadata keys {taken} are reserved by the checkpoint format")

    @property
    def inference_state(self) -> dict[str, torch.Tensor]:
        """The weights to run: the EMA weights when present, else the model weights."""
        return self.ema_state if self.ema_state is not None else self.model_state

    def for_inference(self) -> Checkpoint:
        """A copy holding only the inference weights (as ``model_state``): a file to ship."""
        return replace(self, model_state=self.inference_state, ema_state=None, optimizer_state=None)

    def save(self, path: str | Path) -> Path:
        """Write this checkpoint atomically to ``path``; returns the path."""
        extra: dict[str, torch.Tensor] = {}
        if self.ema_state is not None:
            extra.update({EMA_PREFIX + k: v for k, v in self.ema_state.items()})
        optimizer_structure = None
        if self.optimizer_state is not None:
            optim_tensors, optimizer_structure = flatten_optimizer_state(self.optimizer_state)
            extra.update(optim_tensors)
        record = {
            "kind": self.kind,
            "model": self.config.to_dict(),
            "optimizer": optimizer_structure,
            "ema": self.ema_state is not None,
            **self.metadata,
        }
        return save_checkpoint(path, self.model_state, record, extra)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
        """Read and verify a checkpoint written by :meth:`save` (tensors on ``map_location``).

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a valid model checkpoint (see :func:`load_checkpoint`).
        """
        model_state, record, extra = load_checkpoint(path, map_location)
        missing = [k for k in _CHECKPOINT_KEYS if k not in record]
        if missing:
            raise _invalid(Path(path), f"metadata lacks {missing}")
        from detector.kinds import get_kind

        try:
            config = get_kind(record["kind"]).config_type.from_dict(record.pop("model"))
            optimizer_structure = record.pop("optimizer")
            optimizer_state = (
                None
                if optimizer_structure is None
                else unflatten_optimizer_state(extra, optimizer_structure)
            )
        except (ValueError, TypeError, KeyError) as err:
            raise _invalid(Path(path), str(err)) from err
        has_ema = record.pop("ema")
        ema_state = (
            {k[len(EMA_PREFIX) :]: v for k, v in extra.items() if k.startswith(EMA_PREFIX)}
            if has_ema
            else None
        )
        kind = record.pop("kind")
        record.pop("format_version")
        return cls(config, kind, model_state, ema_state, optimizer_state, record)


def load_weights_only(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """The inference weights of a checkpoint: EMA weights when stored, else model weights."""
    return Checkpoint.load(path, map_location).inference_state


def _storable(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """A contiguous CPU copy (copies never share memory, which safetensors refuses)."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"tensor {name!r} must be a torch.Tensor, got {type(tensor).__name__}")
    return tensor.detach().to("cpu", copy=True).contiguous()


def _digest(record: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the canonical JSON of ``record`` and each tensor's name, dtype, shape
    and bytes, in name order."""
    hasher = hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(tensors):
        tensor = tensors[name]
        hasher.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        hasher.update(raw.numpy().tobytes())
    return hasher.hexdigest()


def _read_record(data: bytes, path: Path) -> dict[str, Any]:
    """The ``"detector"`` metadata record of the safetensors bytes ``data``."""
    if len(data) < _HEADER_SIZE_BYTES:
        raise _invalid(path, f"{len(data)} bytes, too short for a safetensors header")
    (header_size,) = struct.unpack("<Q", data[:_HEADER_SIZE_BYTES])
    available = len(data) - _HEADER_SIZE_BYTES
    if header_size > available:
        raise _invalid(
            path, f"header claims {header_size} bytes, the file has {available} after it"
        )
    try:
        header = json.loads(data[_HEADER_SIZE_BYTES : _HEADER_SIZE_BYTES + header_size])
        text = header["__metadata__"][METADATA_KEY]
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _invalid(path, f"safetensors header is not valid JSON ({err})") from err
    except (KeyError, TypeError) as err:
        raise _invalid(path, f"no {METADATA_KEY!r} metadata (not written by this project)") from err
    try:
        record = json.loads(text)
    except (TypeError, json.JSONDecodeError) as err:
        raise _invalid(path, f"{METADATA_KEY!r} metadata is not valid JSON ({err})") from err
    if not isinstance(record, dict):
        raise _invalid(path, f"{METADATA_KEY!r} metadata must be a JSON object")
    return record


def _invalid(path: Path, reason: str) -> ValueError:
    return ValueError(f"{path} is not a valid model checkpoint: {reason}")


TEMP_TOKEN_BYTES = 8  # random bytes in a temporary file's name (16 hex digits)
TEMP_NAME = re.compile(rf"^\.(?P<target>.+)\.[0-9a-f]{{{2 * TEMP_TOKEN_BYTES}}}\.tmp$")


def temporary_path(path: Path) -> Path:
    """A fresh temporary path beside ``path``: ``.<name>.<16 hex digits>.tmp``."""
    return path.parent / f".{path.name}.{secrets.token_hex(TEMP_TOKEN_BYTES)}.tmp"


def remove_stale_temporaries(
    folder: str | Path, names: tuple[str, ...] | None = None
) -> list[Path]:
    """Remove the temporary files an interrupted atomic write left in ``folder`` (only
    names of :func:`temporary_path`'s pattern, for targets in ``names`` when given);
    returns them. Call it only where no other process is writing to ``folder``."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in sorted(folder.iterdir()):
        match = TEMP_NAME.match(path.name)
        if match is None or not path.is_file() or path.is_symlink():
            continue
        if names is not None and match["target"] not in names:
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a fsync'ed temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Persist the rename itself (POSIX); a no-op where folders cannot be opened."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode(value: Any, name: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        if name in tensors:
            raise ValueError(f"two state entries map to the tensor name {name!r}")
        tensors[name] = _storable(value, name)
        return {_TENSOR_TAG: name}
    if isinstance(value, Mapping):
        if all(isinstance(k, str) for k in value) and not any(t in value for t in _TAGS):
            return {k: _encode(v, _child(name, k), tensors) for k, v in value.items()}
        for key in value:
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise ValueError(f"state at {name!r}: key {key!r} is not a JSON scalar")
        pairs = [[k, _encode(v, _child(name, k), tensors)] for k, v in value.items()]
        return {_ITEMS_TAG: pairs}
    if isinstance(value, tuple | list):
        items = [_encode(v, _child(name, i), tensors) for i, v in enumerate(value)]
        return {_TUPLE_TAG: items} if isinstance(value, tuple) else items
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise ValueError(f"state at {name!r}: cannot store a {type(value).__name__}")


def _child(name: str, key: Any) -> str:
    """The tensor name of entry ``key`` below ``name`` (``optim/`` + ``state`` -> ``optim/state``)."""
    return f"{name}{key}" if name.endswith("/") else f"{name}/{key}"


def _decode(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if _TENSOR_TAG in value:
        name = value[_TENSOR_TAG]
        if name not in tensors:
            raise ValueError(f"state refers to a tensor {name!r} that the file does not hold")
        return tensors[name]
    if _TUPLE_TAG in value:
        return tuple(_decode(v, tensors) for v in value[_TUPLE_TAG])
    if _ITEMS_TAG in value:
        return {k: _decode(v, tensors) for k, v in value[_ITEMS_TAG]}
    return {k: _decode(v, tensors) for k, v in value.items()}
