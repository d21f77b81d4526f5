"""Ultralytics-style YOLO datasets: a ``data.yaml`` plus one ``.txt`` label file per image.

``data.yaml`` keys read here:

- ``path``: dataset root, relative to the yaml's folder (or absolute); default the yaml's folder.
- ``train``, ``val``, optional ``test``: relative to the root, each a
  folder of images (searched recursively), a ``.txt`` list of image paths (relative lines are
  relative to the list's folder), a single image, or a list of those.
- ``names``: a list, or a ``{id: name}`` mapping with ids ``0..C-1``; optional ``nc`` must agree.
- ``kpt_shape: [K, 2 or 3]`` and optional ``flip_idx`` (a permutation of ``0..K-1``) for keypoints;
  optional ``kpt_names`` (K names, or Ultralytics' per-class ``{class_id: [names]}``, the
  lowest class id's taken) and ``skeleton`` (``[[i, j], ...]``, 0-based keypoint indices
  joined by a line when drawn).

The label file of ``.../images/.../a.jpg`` is ``.../labels/.../a.txt`` (the last ``images``
path component replaced); an image with no ``images`` component has its label beside it. A
missing label file means an image without objects. Each line is
``class cx cy w h`` normalised to ``[0, 1]`` by the image size, followed for keypoints by
``K`` groups of ``x y`` or ``x y v`` (normalised ``x, y``; ``v`` in ``{0, 1, 2}``). With
``[K, 2]`` a point at ``(0, 0)`` or with a negative coordinate is unlabelled, others visible.

Normalised values may stray :data:`COORD_EPS` outside ``[0, 1]`` (exporters' float rounding);
boxes are then clipped to the image. Keypoint coordinates of unlabelled points are not checked.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from detector.data.formats_common import (
    IMAGE_SUFFIXES,
    KPT_DIMS,
    VIS_UNLABELLED,
    VIS_VISIBLE,
    LabelError,
    boxes_from_xyxy,
    boxes_to_xyxy,
    check_flip_idx,
    check_kpt_names,
    check_skeleton,
    check_visibility,
    image_size,
    list_images,
    make_sample,
    report,
)
from detector.data.types import DatasetInfo, Sample

BOX_COLUMNS = 5  # class cx cy w h
COORD_EPS = 1e-6  # tolerance on normalised values outside [0, 1]
LABEL_DECIMALS = 6  # digits after the point in written label files
SPLIT_KEYS = ("train", "val", "test")  # the split keys Ultralytics reads; other keys are ignored
IMAGES_DIR = "images"
LABELS_DIR = "labels"
DATA_YAML = "data.yaml"


@dataclass(frozen=True)
class YoloData:
    """A parsed ``data.yaml``; every path resolved."""

    yaml_path: Path
    root: Path  # dataset root
    splits: dict[str, list[Path]]  # split name -> its entries (folders, .txt lists, images)
    names: list[str]  # class names, index = class id
    kpt_shape: tuple[int, int] | None  # (K, 2 or 3) as written, None without keypoints
    flip_idx: list[int] | None  # keypoint permutation for a horizontal flip
    kpt_names: list[str] | None = None  # the K keypoint names, when given
    skeleton: list[tuple[int, int]] | None = None  # 0-based keypoint pairs, when given


def read_data_yaml(yaml_path: Path) -> YoloData:
    """Parse an Ultralytics ``data.yaml``.

    Raises:
        FileNotFoundError: ``yaml_path`` does not exist.
        ValueError: the yaml is malformed or its names / keypoint settings are inconsistent.
    """
    yaml_path = Path(yaml_path)
    if not yaml_path.is_file():
        raise FileNotFoundError(f"data yaml {yaml_path} not found")
    try:
        raw = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{yaml_path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{yaml_path}: expected a mapping with train/val/names keys")
    root = Path(raw.get("path") or ".")
    if not root.is_absolute():
        root = yaml_path.parent / root
    splits: dict[str, list[Path]] = {}
    for key in SPLIT_KEYS:
        value = raw.get(key)
        if value is None:
            continue
        entries = value if isinstance(value, list) else [value]
        if not all(isinstance(e, str) for e in entries):
            raise ValueError(f"{yaml_path}: split {key!r} must be a path or a list of paths")
        splits[key] = [p if p.is_absolute() else root / p for p in map(Path, entries)]
    kpt_shape, flip_idx = _keypoint_settings(raw, yaml_path)
    kpt_names, skeleton = _keypoint_names(raw, kpt_shape, yaml_path)
    return YoloData(
        yaml_path=yaml_path,
        root=root,
        splits=splits,
        names=_parse_names(raw.get("names"), raw.get("nc"), yaml_path),
        kpt_shape=kpt_shape,
        flip_idx=flip_idx,
        kpt_names=kpt_names,
        skeleton=skeleton,
    )


def _parse_names(raw: object, nc: object, yaml_path: Path) -> list[str]:
    if raw is None:
        if nc is None:
            raise ValueError(f"{yaml_path}: needs `names` (a list or {{id: name}}) or `nc`")
        names = [str(i) for i in range(int(nc))]
    elif isinstance(raw, dict):
        try:
            by_id = {int(k): str(v) for k, v in raw.items()}
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{yaml_path}: `names` keys must be integer class ids") from exc
        if sorted(by_id) != list(range(len(by_id))):
            raise ValueError(
                f"{yaml_path}: `names` ids {sorted(by_id)} must be 0..{len(by_id) - 1}"
            )
        names = [by_id[i] for i in range(len(by_id))]
    elif isinstance(raw, list):
        names = [str(n) for n in raw]
    else:
        raise ValueError(f"{yaml_path}: `names` must be a list or an {{id: name}} mapping")
    if nc is not None and int(nc) != len(names):
        raise ValueError(f"{yaml_path}: nc is {nc} but {len(names)} names are given")
    return names


def _keypoint_settings(
    raw: dict, yaml_path: Path
) -> tuple[tuple[int, int] | None, list[int] | None]:
    shape = raw.get("kpt_shape")
    if shape is None:
        return None, None
    if (
        not isinstance(shape, list)
        or len(shape) != 2
        or not all(isinstance(v, int) for v in shape)
        or shape[0] < 1
        or shape[1] not in (2, KPT_DIMS)
    ):
        raise ValueError(
            f"{yaml_path}: kpt_shape must be [K, 2] or [K, 3] with K >= 1, got {shape}"
        )
    num_kpts, dims = shape
    flip = raw.get("flip_idx")
    flip_idx = check_flip_idx(flip, num_kpts, yaml_path) if flip is not None else None
    return (num_kpts, dims), flip_idx


def _keypoint_names(
    raw: dict, kpt_shape: tuple[int, int] | None, yaml_path: Path
) -> tuple[list[str] | None, list[tuple[int, int]] | None]:
    """``kpt_names`` and ``skeleton`` of a yaml, checked against K; ``None`` when absent
    (and both ignored without ``kpt_shape``: a pose dataset read for its boxes)."""
    names, skeleton = raw.get("kpt_names"), raw.get("skeleton")
    if kpt_shape is None:
        return None, None
    num_kpts = kpt_shape[0]
    return (
        check_kpt_names(names, num_kpts, yaml_path) if names is not None else None,
        check_skeleton(skeleton, num_kpts, yaml_path) if skeleton is not None else None,
    )


def split_images(data: YoloData, split: str) -> list[Path]:
    """Image paths of ``split``, in the order listed, without duplicates.

    Raises:
        ValueError: the yaml has no such split, or an entry is neither a folder, a list nor
            an image.
        FileNotFoundError: an entry does not exist.
    """
    if split not in data.splits:
        raise ValueError(f"{data.yaml_path} has no split {split!r}; it lists {sorted(data.splits)}")
    images: list[Path] = []
    for entry in data.splits[split]:
        if entry.is_dir():
            images += list_images(entry)
        elif entry.is_file() and entry.suffix.lower() == ".txt":
            images += _read_image_list(entry)
        elif entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES:
            images.append(entry)
        elif not entry.exists():
            raise FileNotFoundError(f"{data.yaml_path}: {split} entry {entry} not found")
        else:
            raise ValueError(
                f"{data.yaml_path}: {split} entry {entry} is not a folder of images, "
                f"a .txt list of images, or an image"
            )
    return list(dict.fromkeys(images))


def _read_image_list(list_path: Path) -> list[Path]:
    lines = list_path.read_text(encoding="utf-8").splitlines()
    paths = [Path(s) for s in (line.strip() for line in lines) if s and not s.startswith("#")]
    return [p if p.is_absolute() else list_path.parent / p for p in paths]


def label_path_for(image_path: Path) -> Path:
    """The YOLO label file of an image: last ``images`` component -> ``labels``, ``.txt``."""
    parts = list(image_path.parts)
    if IMAGES_DIR in parts[:-1]:
        index = len(parts) - 2 - parts[-2::-1].index(IMAGES_DIR)
        parts[index] = LABELS_DIR
    return Path(*parts).with_suffix(".txt")


def parse_label_file(
    label_path: Path, num_classes: int, kpt_shape: tuple[int, int] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read one YOLO label file; a missing file is an image with no objects.

    Returns:
        classes ``(N,)`` int64, boxes ``(N, 4)`` float64 cxcywh normalised, and keypoints
        ``(N, K, 3)`` float64 ``(x, y, v)`` normalised (``None`` without ``kpt_shape``).

    Raises:
        LabelError: naming the file and line of the first bad value.
    """
    num_kpts, dims = kpt_shape if kpt_shape is not None else (0, 0)
    columns = BOX_COLUMNS + num_kpts * KPT_DIMS  # after _parse_line: keypoints as (x, y, v)
    if not label_path.is_file():
        rows = np.zeros((0, columns))
    else:
        try:
            text = label_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise LabelError(label_path, f"cannot read label file: {exc}") from exc
        parsed = [
            _parse_line(line, number, label_path, num_classes, num_kpts, dims)
            for number, line in enumerate(text.splitlines(), start=1)
            if line.strip()
        ]
        rows = np.array(parsed, dtype=np.float64).reshape(-1, columns)
    kpts = rows[:, BOX_COLUMNS:].reshape(-1, num_kpts, KPT_DIMS) if num_kpts else None
    return rows[:, 0].astype(np.int64), rows[:, 1:BOX_COLUMNS], kpts


def _parse_line(
    line: str, number: int, path: Path, num_classes: int, num_kpts: int, dims: int
) -> list[float]:
    """One line's values: class, cx, cy, w, h, then K (x, y, v) whatever ``dims`` is."""
    tokens = line.split()
    expected = BOX_COLUMNS + num_kpts * dims
    if len(tokens) != expected:
        layout = "class cx cy w h" + (f" + {num_kpts}x{dims} keypoint values" if num_kpts else "")
        raise LabelError(path, f"expected {expected} columns ({layout}), got {len(tokens)}", number)
    values: list[float] = []
    for token in tokens:
        try:
            value = float(token)
        except ValueError:
            raise LabelError(path, f"non-numeric value {token!r}", number) from None
        if not np.isfinite(value):
            raise LabelError(path, f"non-finite value {token!r}", number)
        values.append(value)
    cls = values[0]
    if not cls.is_integer():
        raise LabelError(path, f"class id {tokens[0]!r} is not an integer", number)
    if not 0 <= cls < num_classes:
        raise LabelError(path, f"class id {int(cls)} out of range [0, {num_classes})", number)
    width, height = values[3], values[4]
    if width <= 0 or height <= 0:
        raise LabelError(path, f"box size must be > 0, got w={width:g} h={height:g}", number)
    _check_unit(values[1:BOX_COLUMNS], "box value", path, number)
    if num_kpts:
        kpts = np.array(values[BOX_COLUMNS:]).reshape(num_kpts, dims)
        if dims == KPT_DIMS:
            check_visibility(kpts[:, 2], path, number)
            vis = kpts[:, 2]
        else:
            missing = (kpts < 0).any(axis=1) | (kpts == 0).all(axis=1)
            vis = np.where(missing, VIS_UNLABELLED, VIS_VISIBLE)
        labelled = vis != VIS_UNLABELLED
        _check_unit(kpts[labelled, :2].reshape(-1).tolist(), "keypoint value", path, number)
        xy = np.where(labelled[:, None], kpts[:, :2], 0.0)
        values[BOX_COLUMNS:] = np.column_stack([xy, vis]).reshape(-1).tolist()
    return values


def _check_unit(values: list[float], what: str, path: Path, number: int) -> None:
    for value in values:
        if not -COORD_EPS <= value <= 1 + COORD_EPS:
            raise LabelError(
                path, f"{what} {value:g} outside [0, 1] (YOLO values are normalised)", number
            )


def read_yolo(
    yaml_path: Path, split: str = "train", strict: bool = False, names: list[str] | None = None
) -> DatasetInfo:
    """Read one split of a YOLO dataset.

    Args:
        yaml_path: the ``data.yaml``.
        split: a split key of the yaml: ``"train"``, ``"val"`` or ``"test"``.
        strict: raise on the first bad sample instead of skipping it.
        names: class names overriding the yaml's.

    Returns:
        Samples with boxes ``(N, 4)`` float32 xyxy pixels, classes ``(N,)`` int64, landmarks
        ``(N, K, 3)`` float32 pixels or ``None``; ``kpt_shape`` is ``(K, 3)`` with keypoints.
    """
    data = read_data_yaml(yaml_path)
    class_names = list(names) if names is not None else data.names
    samples: list[Sample] = []
    skipped: list[str] = []
    for image in split_images(data, split):
        label = label_path_for(image)
        try:
            classes, cxcywh, kpts = parse_label_file(label, len(class_names), data.kpt_shape)
            width, height = image_size(image)
            scale = np.array([width, height, width, height], dtype=np.float64)
            if kpts is not None:
                kpts = kpts * np.array([width, height, 1.0])
            boxes = boxes_to_xyxy(cxcywh * scale, "cxcywh")
            samples.append(make_sample(image, width, height, boxes, classes, kpts, label))
        except LabelError as err:
            report(err, strict, skipped)
    kpt_shape = (data.kpt_shape[0], KPT_DIMS) if data.kpt_shape is not None else None
    return DatasetInfo(
        class_names,
        samples,
        kpt_shape,
        data.flip_idx,
        skipped,
        kpt_names=data.kpt_names,
        skeleton=data.skeleton,
    )


def yolo_splits(yaml_path: Path) -> list[str]:
    """The split names a ``data.yaml`` lists, in file order."""
    return list(read_data_yaml(yaml_path).splits)


def format_labels(sample: Sample) -> str:
    """A sample's YOLO label file text: one ``class cx cy w h [x y v]*K`` line per object.

    Keypoint coordinates are clipped to the image; unlabelled points are written ``0 0 0``.
    """
    scale = np.array([sample.width, sample.height] * 2, dtype=np.float64)
    boxes = np.clip(boxes_from_xyxy(sample.boxes, "cxcywh") / scale, 0.0, 1.0)
    lines = []
    for i, (cls, box) in enumerate(zip(sample.classes, boxes, strict=True)):
        values = [f"{v:.{LABEL_DECIMALS}f}" for v in box]
        if sample.landmarks is not None:
            for x, y, vis in sample.landmarks[i].astype(np.float64):
                if vis == VIS_UNLABELLED:
                    values += ["0", "0", "0"]
                    continue
                nx, ny = np.clip([x / sample.width, y / sample.height], 0.0, 1.0)
                values += [f"{nx:.{LABEL_DECIMALS}f}", f"{ny:.{LABEL_DECIMALS}f}", f"{vis:.0f}"]
        lines.append(" ".join([str(int(cls)), *values]))
    return "".join(line + "\n" for line in lines)


def write_yolo(splits: Mapping[str, DatasetInfo], out_dir: Path, copy_images: bool = True) -> Path:
    """Write splits as a YOLO dataset: ``images/<split>/``, ``labels/<split>/``, ``data.yaml``.

    Args:
        splits: split name (``"train"``, ``"val"`` or ``"test"``) -> its samples; every
            split must share class names and keypoint shape.
        out_dir: output folder; its ``images/<split>`` and ``labels/<split>`` must not hold
            files yet.
        copy_images: copy image files; ``False`` makes symbolic links to them instead.

    Returns:
        Path of the written ``data.yaml`` (it has no ``path`` key: the root is its folder).

    Raises:
        ValueError: no splits, splits that disagree, a split name other than train/val/test,
            or a non-empty target.
        FileNotFoundError: an image to copy does not exist.
    """
    if not splits:
        raise ValueError("write_yolo needs at least one split")
    out_dir = Path(out_dir)
    first = next(iter(splits.values()))
    for split, info in splits.items():
        if split not in SPLIT_KEYS:
            raise ValueError(f"YOLO splits are {list(SPLIT_KEYS)}; cannot write split {split!r}")
        if info.names != first.names or info.kpt_shape != first.kpt_shape:
            raise ValueError(f"split {split!r} has other class names or kpt_shape than the first")
        for sub in (IMAGES_DIR, LABELS_DIR):
            target = out_dir / sub / split
            if target.is_dir() and any(target.iterdir()):
                raise ValueError(f"{target} already holds files; choose an empty output folder")
    for split, info in splits.items():
        _write_split(info, out_dir, split, copy_images)
    config: dict = {split: f"{IMAGES_DIR}/{split}" for split in splits}
    config["nc"] = len(first.names)
    config["names"] = dict(enumerate(first.names))
    if first.kpt_shape is not None:
        config["kpt_shape"] = [first.kpt_shape[0], KPT_DIMS]
        if first.flip_idx is not None:
            config["flip_idx"] = list(first.flip_idx)
        if first.kpt_names is not None:
            config["kpt_names"] = list(first.kpt_names)
        if first.skeleton is not None:
            config["skeleton"] = [[int(i), int(j)] for i, j in first.skeleton]
    yaml_path = out_dir / DATA_YAML
    yaml_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return yaml_path


def _write_split(info: DatasetInfo, out_dir: Path, split: str, copy_images: bool) -> None:
    image_dir = out_dir / IMAGES_DIR / split
    label_dir = out_dir / LABELS_DIR / split
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for sample in info.samples:
        source = Path(sample.image_path)
        if not source.is_file():
            raise FileNotFoundError(f"image {source} of split {split!r} not found")
        stem = _unique_stem(source.stem, used)
        target = image_dir / f"{stem}{source.suffix}"
        if copy_images:
            shutil.copy2(source, target)
        else:
            target.symlink_to(source.absolute())
        (label_dir / f"{stem}.txt").write_text(format_labels(sample), encoding="utf-8")


def _unique_stem(stem: str, used: set[str]) -> str:
    """``stem``, or ``stem_1``, ``stem_2``, ... if taken; label files are named by stem."""
    candidate, count = stem, 0
    while candidate in used:
        count += 1
        candidate = f"{stem}_{count}"
    used.add(candidate)
    return candidate
