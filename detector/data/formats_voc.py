"""Pascal VOC datasets: ``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``.

- Without ``ImageSets/Main`` every annotation belongs to the split ``"train"``.
- Class names: given, or every ``<object><name>`` found in ``Annotations/`` (all splits, so
  that train and val agree on ids) in sorted order.
- ``<bndbox>`` values are 1-based inclusive pixel indices (``xmin=1, xmax=W`` spans the whole
  image); they become xyxy pixels ``(xmin - 1, ymin - 1, xmax, ymax)``, clipped to the image.
- ``difficult`` objects are kept as ordinary objects (a sample has no per-object flag);
  ``truncated``, ``pose`` and ``<part>`` elements are ignored.
- Image size comes from ``<size>``; when that is missing or zero the image is read.

XML has no useful line numbers here: messages name the file and the object's 1-based index.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.data.formats_common import (
    IMAGE_SUFFIXES,
    LabelError,
    image_size,
    make_sample,
    report,
)
from detector.data.types import DatasetInfo, Sample

ANNOTATIONS_DIR = "Annotations"
JPEG_DIR = "JPEGImages"
SPLITS_DIR = Path("ImageSets", "Main")
DEFAULT_SPLIT = "train"  # the split of a folder without ImageSets/Main
PREFERRED_SPLITS = ("train", "val", "test")
PIXEL_ORIGIN = 1.0  # VOC pixel indices start at 1
BOX_TAGS = ("xmin", "ymin", "xmax", "ymax")


@dataclass(frozen=True)
class VocObject:
    """One ``<object>``: class name, ``(4,)`` xyxy pixels, difficult flag."""

    name: str
    box: tuple[float, float, float, float]
    difficult: bool


@dataclass(frozen=True)
class VocRecord:
    """One parsed annotation file."""

    xml_path: Path
    filename: str  # <filename>, "" when absent
    width: int  # 0 when <size> is missing
    height: int
    objects: tuple[VocObject, ...]


def is_voc_dir(path: Path) -> bool:
    """Whether ``path`` is a folder with an ``Annotations/`` subfolder."""
    return (Path(path) / ANNOTATIONS_DIR).is_dir()


def voc_splits(root: Path) -> list[str]:
    """Split names of a VOC folder: train/val/test where listed, else every list file."""
    main = Path(root) / SPLITS_DIR
    if not main.is_dir():
        return [DEFAULT_SPLIT]
    found = sorted(p.stem for p in main.glob("*.txt") if "_" not in p.stem)
    return [s for s in PREFERRED_SPLITS if s in found] or found


def _split_ids(root: Path, split: str) -> list[str]:
    main = root / SPLITS_DIR
    if not main.is_dir():
        if split != DEFAULT_SPLIT:
            raise ValueError(
                f"{root} has no {SPLITS_DIR.as_posix()}: all its annotations form the split "
                f"{DEFAULT_SPLIT!r}, not {split!r}"
            )
        return sorted(p.stem for p in (root / ANNOTATIONS_DIR).glob("*.xml"))
    list_path = main / f"{split}.txt"
    if not list_path.is_file():
        raise FileNotFoundError(f"{list_path} not found; splits here: {voc_splits(root)}")
    lines = list_path.read_text(encoding="utf-8").splitlines()
    return [line.split()[0] for line in lines if line.strip()]


def parse_voc_xml(xml_path: Path) -> VocRecord:
    """Parse one VOC annotation file.

    Raises:
        LabelError: missing file, invalid XML, or a bad object (named by its index).
    """
    if not xml_path.is_file():
        raise LabelError(xml_path, "annotation file not found")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise LabelError(xml_path, f"not valid XML: {exc}", exc.position[0]) from None
    size = root.find("size")
    width = _int_or_zero(size.findtext("width") if size is not None else None)
    height = _int_or_zero(size.findtext("height") if size is not None else None)
    objects = []
    for index, obj in enumerate(root.findall("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise LabelError(xml_path, f"object {index}: missing <name>")
        where = f"object {index} ({name!r})"
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise LabelError(xml_path, f"{where}: missing <bndbox>")
        values = []
        for tag in BOX_TAGS:
            text = bndbox.findtext(tag)
            try:
                values.append(float(text))
            except (TypeError, ValueError):
                raise LabelError(
                    xml_path, f"{where}: <{tag}> is {text!r}, expected a number"
                ) from None
        if not np.isfinite(values).all():
            raise LabelError(xml_path, f"{where}: non-finite box {values}")
        xmin, ymin, xmax, ymax = values
        if xmax < xmin or ymax < ymin:
            raise LabelError(
                xml_path,
                f"{where}: negative box size (xmin={xmin:g} xmax={xmax:g} ymin={ymin:g} ymax={ymax:g})",
            )
        box = (xmin - PIXEL_ORIGIN, ymin - PIXEL_ORIGIN, xmax, ymax)
        difficult = (obj.findtext("difficult") or "0").strip() == "1"
        objects.append(VocObject(name, box, difficult))
    filename = (root.findtext("filename") or "").strip()
    return VocRecord(xml_path, filename, width, height, tuple(objects))


def _int_or_zero(text: str | None) -> int:
    try:
        return max(int(float(text or 0)), 0)
    except ValueError:
        return 0


def _image_path(record: VocRecord, root: Path) -> Path:
    folder = root / JPEG_DIR
    if record.filename and (folder / record.filename).is_file():
        return folder / record.filename
    stem = record.xml_path.stem
    for suffix in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    raise LabelError(record.xml_path, f"image {record.filename or stem!r} not found in {folder}")


def _record_sample(record: VocRecord, root: Path, class_index: dict[str, int]) -> Sample:
    for index, obj in enumerate(record.objects, start=1):
        if obj.name not in class_index:
            raise LabelError(
                record.xml_path,
                f"object {index}: class {obj.name!r} not in names {list(class_index)}",
            )
    path = _image_path(record, root)
    width, height = record.width, record.height
    if not (width and height):
        width, height = image_size(path)
    boxes = np.array([obj.box for obj in record.objects], dtype=np.float64).reshape(-1, 4)
    classes = [class_index[obj.name] for obj in record.objects]
    return make_sample(path, width, height, boxes, classes, None, record.xml_path)


def read_voc(
    root: Path, split: str = DEFAULT_SPLIT, strict: bool = False, names: list[str] | None = None
) -> DatasetInfo:
    """Read one split of a Pascal VOC folder.

    Args:
        root: folder holding ``Annotations/`` and ``JPEGImages/``.
        split: a list in ``ImageSets/Main`` (``"train"``, ``"val"``, ``"trainval"``, ...).
        strict: raise on the first bad file instead of skipping it.
        names: class names; default every name in ``Annotations/``, sorted.

    Returns:
        Samples with boxes ``(N, 4)`` float32 xyxy pixels and classes ``(N,)`` int64; no
        landmarks.
    """
    root = Path(root)
    if not is_voc_dir(root):
        raise FileNotFoundError(f"{root} has no {ANNOTATIONS_DIR}/ folder (not a VOC dataset)")
    ids = _split_ids(root, split)
    records: dict[str, VocRecord | LabelError] = {}
    if names is None:
        for xml_path in sorted((root / ANNOTATIONS_DIR).glob("*.xml")):
            records[xml_path.stem] = _try_parse(xml_path)
        found = {o.name for r in records.values() if isinstance(r, VocRecord) for o in r.objects}
        names = sorted(found)
    class_index = {name: i for i, name in enumerate(names)}
    samples: list[Sample] = []
    skipped: list[str] = []
    for stem in ids:
        record = records.get(stem) or _try_parse(root / ANNOTATIONS_DIR / f"{stem}.xml")
        try:
            if isinstance(record, LabelError):
                raise record
            samples.append(_record_sample(record, root, class_index))
        except LabelError as err:
            report(err, strict, skipped)
    return DatasetInfo(list(names), samples, None, None, skipped)


def _try_parse(xml_path: Path) -> VocRecord | LabelError:
    try:
        return parse_voc_xml(xml_path)
    except LabelError as err:
        return err
