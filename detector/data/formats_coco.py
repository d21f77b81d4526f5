"""COCO JSON datasets: ``images``, ``annotations`` and ``categories`` in one file per split.

- ``bbox`` is ``[x, y, w, h]`` in pixels; boxes are clipped to the image.
- ``keypoints`` is ``[x, y, v] * K`` in pixels, ``v`` in ``{0, 1, 2}``; K comes from the
  categories' ``keypoints`` name lists (all equal in length). ``flip_idx`` comes from a
  category's ``flip_idx`` (written by :func:`write_coco`) or else from keypoint names that
  differ only by left/right. The names themselves become ``kpt_names``, and the category's
  ``skeleton`` (1-based keypoint index pairs, as in COCO) a 0-based ``skeleton``.
- Categories map to contiguous class ids ``0..C-1`` in sorted category-id order, names kept;
  or, with ``names`` given, to the index of their name in it.
- ``iscrowd`` annotations are skipped (their regions then look like background) and counted
  in one ``skipped`` message.
- Images come from ``images_dir`` if given, else from the first folder, among the json's
  folder, its parent, ``<parent>/images`` and each of those with the split's subfolder
  (``instances_val2017.json`` -> ``val2017``), that holds the first listed images.

A bad annotation skips its whole image; messages name the json and the annotation id.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.data.formats_common import (
    KPT_DIMS,
    VIS_UNLABELLED,
    LabelError,
    boxes_from_xyxy,
    boxes_to_xyxy,
    check_flip_idx,
    check_kpt_names,
    check_skeleton,
    check_visibility,
    flip_idx_from_names,
    image_size,
    make_sample,
    report,
)
from detector.data.types import DatasetInfo, Sample

ID_START = 1  # first category, image and annotation id written by write_coco
PROBE_IMAGES = 8  # images tried when looking for the images folder
SPLIT_WORDS = ("train", "val", "test")  # in the order tried when guessing a json's split
PIXEL_DECIMALS = 4  # digits after the point of pixel values written by write_coco


def guess_coco_split(json_path: Path) -> str:
    """The split a COCO json holds, from its name: ``"train"``, ``"val"`` or ``"test"``.

    ``instances_val2017.json`` -> ``"val"``, ``trainval.json`` -> ``"train"``; no match
    -> ``"train"``.
    """
    stem = Path(json_path).stem.lower()
    return next((word for word in SPLIT_WORDS if word in stem), SPLIT_WORDS[0])


def _load_json(json_path: Path) -> dict:
    if not json_path.is_file():
        raise FileNotFoundError(f"COCO json {json_path} not found")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{json_path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise ValueError(f"{json_path}: expected a COCO object with 'images' and 'categories'")
    return data


COCO_SKELETON_BASE = 1  # COCO skeletons count keypoints from 1


@dataclass(frozen=True)
class _Keypoints:
    """The keypoint layout the categories describe."""

    count: int  # K, 0 without keypoints
    flip_idx: list[int] | None
    names: list[str] | None
    skeleton: list[tuple[int, int]] | None  # 0-based


def _category_map(
    categories: list[dict], names: list[str] | None, json_path: Path
) -> tuple[dict[int, int], list[str], _Keypoints]:
    """category id -> class id, class names, and the keypoint layout."""
    for category in categories:
        if not isinstance(category.get("id"), int) or "name" not in category:
            raise ValueError(f"{json_path}: category {category} needs an integer 'id' and a 'name'")
    ordered = sorted(categories, key=lambda c: c["id"])
    if names is None:
        class_names = [str(c["name"]) for c in ordered]
        mapping = {int(c["id"]): i for i, c in enumerate(ordered)}
    else:
        class_names = list(names)
        unknown = [c["name"] for c in ordered if c["name"] not in class_names]
        if unknown:
            raise ValueError(f"{json_path}: categories {unknown} are not in names {class_names}")
        mapping = {int(c["id"]): class_names.index(c["name"]) for c in ordered}
    with_kpts = [c for c in ordered if c.get("keypoints")]
    counts = {len(c["keypoints"]) for c in with_kpts}
    if len(counts) > 1:
        raise ValueError(f"{json_path}: categories have different keypoint counts {sorted(counts)}")
    num_kpts = counts.pop() if counts else 0
    if not with_kpts:
        return mapping, class_names, _Keypoints(0, None, None, None)
    kpt_names = check_kpt_names(list(with_kpts[0]["keypoints"]), num_kpts, json_path)
    given = next((c["flip_idx"] for c in with_kpts if c.get("flip_idx") is not None), None)
    if given is not None:
        flip_idx = check_flip_idx(given, num_kpts, json_path)
    else:
        flip_idx = flip_idx_from_names(kpt_names)
    edges = next((c["skeleton"] for c in with_kpts if c.get("skeleton")), None)
    skeleton = None
    if edges is not None:
        skeleton = check_skeleton(edges, num_kpts, json_path, base=COCO_SKELETON_BASE)
    return mapping, class_names, _Keypoints(num_kpts, flip_idx, kpt_names, skeleton)


def _find_images_dir(json_path: Path, file_names: list[str]) -> Path:
    folder = json_path.parent
    bases = [folder, folder.parent, folder.parent / "images"]
    split_dir = json_path.stem.split("_")[-1]
    candidates = [d for base in bases for d in (base, base / split_dir)]
    probe = file_names[:PROBE_IMAGES]
    for candidate in candidates:
        if any((candidate / name).is_file() for name in probe):
            return candidate
    if not probe:
        return folder
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"{json_path}: cannot find its images (e.g. {probe[0]!r}) in {tried}; pass images_dir"
    )


def _annotation_arrays(
    anns: list[dict], mapping: dict[int, int], num_kpts: int, json_path: Path, file_name: str
) -> tuple[np.ndarray, list[int], np.ndarray | None]:
    """``(N, 4)`` xywh pixels, N class ids, ``(N, K, 3)`` keypoints (or ``None``)."""
    boxes, classes, kpts = [], [], []
    for ann in anns:
        where = f"annotation id {ann.get('id')} (image {file_name!r})"
        if ann.get("category_id") not in mapping:
            raise LabelError(json_path, f"{where}: unknown category_id {ann.get('category_id')}")
        try:
            box = np.array(ann["bbox"], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            raise LabelError(json_path, f"{where}: bbox must be [x, y, w, h] numbers") from None
        if box.shape != (4,) or not np.isfinite(box).all():
            raise LabelError(json_path, f"{where}: bbox must be 4 finite numbers, got {box}")
        if box[2] <= 0 or box[3] <= 0:
            raise LabelError(
                json_path, f"{where}: box size must be > 0, got w={box[2]:g} h={box[3]:g}"
            )
        boxes.append(box)
        classes.append(mapping[ann["category_id"]])
        if num_kpts:
            kpts.append(_keypoints(ann.get("keypoints"), num_kpts, json_path, where))
    landmarks = np.array(kpts).reshape(-1, num_kpts, KPT_DIMS) if num_kpts else None
    return np.array(boxes).reshape(-1, 4), classes, landmarks


def _keypoints(raw: object, num_kpts: int, json_path: Path, where: str) -> np.ndarray:
    if not raw:
        return np.zeros((num_kpts, KPT_DIMS))
    try:
        values = np.array(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise LabelError(json_path, f"{where}: keypoints must be numbers") from None
    if values.shape != (num_kpts * KPT_DIMS,) or not np.isfinite(values).all():
        raise LabelError(
            json_path, f"{where}: expected {num_kpts * KPT_DIMS} keypoint values (x y v)*{num_kpts}"
        )
    points = values.reshape(num_kpts, KPT_DIMS)
    check_visibility(points[:, 2], f"{json_path}: {where}")
    points[points[:, 2] == VIS_UNLABELLED, :2] = 0.0
    return points


def read_coco(
    json_path: Path,
    strict: bool = False,
    names: list[str] | None = None,
    images_dir: Path | None = None,
) -> DatasetInfo:
    """Read a COCO json (one split).

    Args:
        json_path: the annotation file.
        strict: raise on the first bad image or annotation instead of skipping the image.
        names: class names; categories are matched by name. Default: the categories' names.
        images_dir: folder that ``file_name`` is relative to; default: found near the json.

    Returns:
        Samples with boxes ``(N, 4)`` float32 xyxy pixels, classes ``(N,)`` int64, landmarks
        ``(N, K, 3)`` float32 pixels or ``None``. Images without annotations have ``N = 0``.
    """
    json_path = Path(json_path)
    data = _load_json(json_path)
    mapping, class_names, keypoints = _category_map(data["categories"], names, json_path)
    num_kpts = keypoints.count
    images = data["images"]
    folder = Path(images_dir) if images_dir is not None else None
    if folder is None:
        folder = _find_images_dir(json_path, [str(im.get("file_name", "")) for im in images])
    by_image: dict[object, list[dict]] = defaultdict(list)
    crowd = 0
    skipped: list[str] = []
    known_ids = {im.get("id") for im in images}
    for ann in data.get("annotations", []):
        if ann.get("iscrowd"):
            crowd += 1
        elif ann.get("image_id") not in known_ids:
            problem = f"annotation id {ann.get('id')}: image_id {ann.get('image_id')} not in images"
            report(LabelError(json_path, problem), strict, skipped)
        else:
            by_image[ann["image_id"]].append(ann)
    samples: list[Sample] = []
    for image in images:
        try:
            samples.append(
                _image_sample(
                    image, by_image[image.get("id")], folder, mapping, num_kpts, json_path
                )
            )
        except LabelError as err:
            report(err, strict, skipped)
    if crowd:
        skipped.append(f"{json_path}: {crowd} iscrowd annotations skipped")
    kpt_shape = (num_kpts, KPT_DIMS) if num_kpts else None
    return DatasetInfo(
        class_names,
        samples,
        kpt_shape,
        keypoints.flip_idx,
        skipped,
        kpt_names=keypoints.names,
        skeleton=keypoints.skeleton,
    )


def _image_sample(
    image: dict,
    anns: list[dict],
    folder: Path,
    mapping: dict[int, int],
    num_kpts: int,
    json_path: Path,
) -> Sample:
    file_name = str(image.get("file_name", ""))
    path = folder / file_name
    if not file_name or not path.is_file():
        raise LabelError(json_path, f"image id {image.get('id')}: image file {path} not found")
    width, height = image.get("width"), image.get("height")
    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
        width, height = image_size(path)
    xywh, classes, landmarks = _annotation_arrays(anns, mapping, num_kpts, json_path, file_name)
    boxes = boxes_to_xyxy(xywh, "xywh")
    return make_sample(path, width, height, boxes, classes, landmarks, json_path)


def write_coco(info: DatasetInfo, json_path: Path) -> Path:
    """Write one split as a COCO json referencing the images where they are.

    ``file_name`` is each image's path relative to the json's folder. Category ids are
    ``class id + 1``; with keypoints, categories carry the ``keypoints`` names (``kp0..``
    when the dataset has none), the ``skeleton`` (1-based, as in COCO; empty when none) and,
    if known, a ``flip_idx`` list (an extension :func:`read_coco` reads back).

    Returns:
        ``json_path``.
    """
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    base = json_path.parent.absolute()
    categories = []
    for i, name in enumerate(info.names):
        category: dict = {"id": i + ID_START, "name": name, "supercategory": ""}
        if info.kpt_shape is not None:
            num_kpts = info.kpt_shape[0]
            category["keypoints"] = list(info.kpt_names or (f"kp{k}" for k in range(num_kpts)))
            category["skeleton"] = [
                [int(i) + COCO_SKELETON_BASE, int(j) + COCO_SKELETON_BASE]
                for i, j in info.skeleton or ()
            ]
            if info.flip_idx is not None:
                category["flip_idx"] = list(info.flip_idx)
        categories.append(category)
    images, annotations = [], []
    for image_id, sample in enumerate(info.samples, start=ID_START):
        relative = os.path.relpath(Path(sample.image_path).absolute(), base)
        images.append(
            {
                "id": image_id,
                "file_name": Path(relative).as_posix(),
                "width": sample.width,
                "height": sample.height,
            }
        )
        xywh = boxes_from_xyxy(sample.boxes, "xywh")
        for i, (box, cls) in enumerate(zip(xywh, sample.classes, strict=True)):
            ann: dict = {
                "id": len(annotations) + ID_START,
                "image_id": image_id,
                "category_id": int(cls) + ID_START,
                "bbox": [_pixel(v) for v in box],
                "area": _pixel(box[2] * box[3]),
                "iscrowd": 0,
            }
            if sample.landmarks is not None:
                points = sample.landmarks[i].astype(np.float64)
                ann["keypoints"] = [
                    v for x, y, vis in points for v in (_pixel(x), _pixel(y), int(vis))
                ]
                ann["num_keypoints"] = int((points[:, 2] != VIS_UNLABELLED).sum())
            annotations.append(ann)
    data = {
        "info": {"description": "written by detector"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    json_path.write_text(json.dumps(data), encoding="utf-8")
    return json_path


def _pixel(value: float) -> float:
    return round(float(value), PIXEL_DECIMALS)
