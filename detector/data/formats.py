"""Dataset formats: one front door to read YOLO, COCO and Pascal VOC, and writers for YOLO/COCO.

:func:`load_dataset` dispatches on what ``path`` is:

- ``.yaml`` / ``.yml`` file, or a folder holding ``data.yaml``: Ultralytics YOLO
  (:mod:`detector.data.formats_yolo`);
- ``.json`` file: COCO (:mod:`detector.data.formats_coco`), one split per file;
- folder with ``Annotations/``: Pascal VOC (:mod:`detector.data.formats_voc`).

Every reader returns a :class:`~detector.data.types.DatasetInfo` whose samples have boxes
``(N, 4)`` float32 xyxy pixels (clipped to the image), classes ``(N,)`` int64 in
``[0, C)``, and landmarks ``(N, K, 3)`` float32 ``(x, y, visibility)`` pixels or ``None``.

Bad labels (class id out of range, coordinates outside the image, wrong column count,
non-numeric values, a missing or unreadable image, a box of zero or negative size) skip
the whole sample, never just the offending object, so that a half-labelled image never
trains as background. Each skip appends one message naming the file and line (or
annotation / object) to ``DatasetInfo.skipped``; ``strict=True`` raises ``ValueError``
with the same message instead. Problems with the dataset as a whole (a missing yaml,
split or json, inconsistent class names) always raise.
"""

from __future__ import annotations

from pathlib import Path

from detector.data.formats_coco import guess_coco_split, read_coco, write_coco
from detector.data.formats_common import LabelError
from detector.data.formats_voc import is_voc_dir, read_voc, voc_splits
from detector.data.formats_yolo import DATA_YAML, read_yolo, write_yolo, yolo_splits
from detector.data.types import DatasetInfo

__all__ = [
    "FORMATS",
    "LabelError",
    "available_splits",
    "detect_format",
    "load_dataset",
    "load_splits",
    "write_coco",
    "write_yolo",
]

FORMATS = ("yolo", "coco", "voc")
YAML_SUFFIXES = (".yaml", ".yml")


def detect_format(path: Path) -> str:
    """``"yolo"``, ``"coco"`` or ``"voc"`` for a dataset path.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is none of the known forms.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset {path} not found")
    if path.is_file() and path.suffix.lower() in YAML_SUFFIXES:
        return "yolo"
    if path.is_file() and path.suffix.lower() == ".json":
        return "coco"
    if path.is_dir() and is_voc_dir(path):
        return "voc"
    if path.is_dir() and (path / DATA_YAML).is_file():
        return "yolo"
    raise ValueError(
        f"cannot tell the format of {path}: expected a YOLO data .yaml, a COCO .json, "
        f"or a Pascal VOC folder with Annotations/"
    )


def _yaml_path(path: Path) -> Path:
    return path / DATA_YAML if path.is_dir() else path


def available_splits(path: Path) -> list[str]:
    """Split names a dataset holds; a COCO json holds one, guessed from its file name."""
    path = Path(path)
    kind = detect_format(path)
    if kind == "yolo":
        return yolo_splits(_yaml_path(path))
    if kind == "coco":
        return [guess_coco_split(path)]
    return voc_splits(path)


def load_dataset(
    path: Path | str,
    split: str = "train",
    strict: bool = False,
    names: list[str] | None = None,
    images_dir: Path | str | None = None,
) -> DatasetInfo:
    """Read one split of a YOLO, COCO or VOC dataset.

    Args:
        path: a YOLO ``data.yaml`` (or its folder), a COCO ``.json``, or a VOC folder.
        split: the split to read; ignored for COCO, whose json is one split.
        strict: raise ``ValueError`` on the first bad sample instead of skipping it.
        names: class names overriding (YOLO) or fixing the order of (COCO, VOC) the dataset's.
        images_dir: COCO only: the folder ``file_name`` is relative to.

    Returns:
        The split's samples: boxes ``(N, 4)`` float32 xyxy pixels, classes ``(N,)`` int64,
        landmarks ``(N, K, 3)`` float32 pixels or ``None``; skipped samples' messages.
    """
    path = Path(path)
    kind = detect_format(path)
    if images_dir is not None and kind != "coco":
        raise ValueError(f"images_dir applies to COCO json only, not to the {kind} dataset {path}")
    if kind == "yolo":
        return read_yolo(_yaml_path(path), split, strict, names)
    if kind == "coco":
        return read_coco(path, strict, names, Path(images_dir) if images_dir else None)
    return read_voc(path, split, strict, names)


def load_splits(
    path: Path | str,
    splits: list[str] | None = None,
    strict: bool = False,
    names: list[str] | None = None,
    images_dir: Path | str | None = None,
) -> dict[str, DatasetInfo]:
    """Read several splits (default: all that :func:`available_splits` finds).

    For a COCO json, ``splits`` may hold one name: the split the json is labelled as.

    Returns:
        split name -> :class:`DatasetInfo`, in the order asked for.
    """
    path = Path(path)
    wanted = list(splits) if splits else available_splits(path)
    if detect_format(path) == "coco" and len(wanted) != 1:
        raise ValueError(f"a COCO json holds one split; got {wanted} for {path}")
    return {split: load_dataset(path, split, strict, names, images_dir) for split in wanted}
