"""Dataset formats: YOLO / COCO / VOC readers, writers, bad labels, and `detector convert`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from detector.cli import main
from detector.data.formats import (
    available_splits,
    detect_format,
    load_dataset,
    load_splits,
    write_coco,
    write_yolo,
)
from detector.data.types import DatasetInfo, Sample

FIXTURES = Path(__file__).parent / "fixtures" / "formats"
ATOL = 1e-3  # pixels


def write_image(path: Path, width: int, height: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((height, width, 3), 127, dtype=np.uint8))
    return path


def fixture(name: str, tmp_path: Path, images: dict[str, tuple[int, int]]) -> Path:
    """Copy a fixture tree into tmp_path and write its images (relative path -> (w, h))."""
    root = shutil.copytree(FIXTURES / name, tmp_path / name)
    for relative, (width, height) in images.items():
        write_image(root / relative, width, height)
    return root


@pytest.fixture
def yolo_root(tmp_path: Path) -> Path:
    sizes = {f"images/train/{n}.png": (64, 48) for n in "abc"}
    return fixture("yolo", tmp_path, {**sizes, "images/val/d.png": (64, 48)})


@pytest.fixture
def pose_root(tmp_path: Path) -> Path:
    return fixture("yolo_pose", tmp_path, {"images/train/p.png": (80, 64)})


def by_name(info: DatasetInfo) -> dict[str, Sample]:
    return {s.image_path.name: s for s in info.samples}


def test_yolo_reads_boxes_in_pixels_and_missing_label_is_empty(yolo_root: Path) -> None:
    info = load_dataset(yolo_root / "data.yaml", "train")
    assert info.names == ["cat", "dog", "bird"]
    assert info.skipped == [] and info.kpt_shape is None
    samples = by_name(info)
    assert sorted(samples) == ["a.png", "b.png", "c.png"]
    a = samples["a.png"]
    assert (a.width, a.height) == (64, 48)
    assert a.boxes.dtype == np.float32 and a.classes.dtype == np.int64
    np.testing.assert_allclose(a.boxes, [[24, 12, 40, 36], [12, 9, 20, 15]], atol=ATOL)
    assert a.classes.tolist() == [0, 1] and a.landmarks is None
    np.testing.assert_allclose(samples["b.png"].boxes, [[32, 0, 64, 48]], atol=ATOL)
    assert samples["c.png"].boxes.shape == (0, 4) and samples["c.png"].classes.shape == (0,)


def test_yolo_txt_list_split_and_split_names(yolo_root: Path) -> None:
    assert available_splits(yolo_root / "data.yaml") == ["train", "val"]
    val = load_dataset(yolo_root, "val")  # the folder holding data.yaml works too
    assert [s.image_path.name for s in val.samples] == ["d.png"]
    np.testing.assert_allclose(val.samples[0].boxes, [[0, 0, 64, 48]])
    with pytest.raises(ValueError, match="no split 'test'"):
        load_dataset(yolo_root / "data.yaml", "test")


def test_yolo_names_override_and_inconsistent_yaml(yolo_root: Path, tmp_path: Path) -> None:
    info = load_dataset(yolo_root / "data.yaml", names=["x", "y", "z"])
    assert info.names == ["x", "y", "z"]
    bad = yolo_root / "bad.yaml"
    bad.write_text("train: images/train\nnc: 2\nnames: [a, b, c]\n")
    with pytest.raises(ValueError, match="nc is 2 but 3 names"):
        load_dataset(bad)
    bad.write_text("train: images/train\nnames: {0: a, 2: b}\n")
    with pytest.raises(ValueError, match="must be 0..1"):
        load_dataset(bad)
    absolute = tmp_path / "elsewhere.yaml"
    absolute.write_text(f"path: {yolo_root}\ntrain: images/train\nnames: [a, b, c]\n")
    assert len(load_dataset(absolute).samples) == 3


def test_yolo_keypoints_k3(pose_root: Path) -> None:
    info = load_dataset(pose_root / "data.yaml")
    assert info.kpt_shape == (3, 3) and info.flip_idx == [1, 0, 2]
    sample = info.samples[0]
    np.testing.assert_allclose(sample.boxes, [[20, 16, 60, 48]])
    assert sample.landmarks.shape == (1, 3, 3) and sample.landmarks.dtype == np.float32
    np.testing.assert_allclose(sample.landmarks[0], [[30, 28, 2], [50, 28, 1], [0, 0, 0]])


@pytest.mark.parametrize(
    "names", [["a", "b", "c"], {0: ["a", "b", "c"]}, {1: ["x", "y", "z"], 0: ["a", "b", "c"]}]
)
def test_yolo_keypoint_names_as_a_list_or_per_class_and_a_skeleton(
    pose_root: Path, names: object
) -> None:
    spec = yaml.safe_load((pose_root / "data.yaml").read_text())
    spec |= {"kpt_names": names, "skeleton": [[0, 1], [1, 2]]}
    (pose_root / "data.yaml").write_text(yaml.safe_dump(spec))
    info = load_dataset(pose_root / "data.yaml")
    assert info.kpt_names == ["a", "b", "c"] and info.skeleton == [(0, 1), (1, 2)]


def test_yolo_without_names_or_skeleton_leaves_them_none(pose_root: Path) -> None:
    info = load_dataset(pose_root / "data.yaml")
    assert info.kpt_names is None and info.skeleton is None


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"kpt_names": ["a", "b"]}, "2 kpt_names for 3 keypoints"),
        ({"kpt_names": "abc"}, "kpt_names must be a list"),
        ({"skeleton": [[0, 3]]}, "skeleton pair [0, 3] must be two keypoint indices in [0, 2]"),
        ({"skeleton": [[0, 1, 2]]}, "skeleton pair [0, 1, 2]"),
        ({"skeleton": "0-1"}, "skeleton must be a list of [i, j] pairs"),
    ],
)
def test_yolo_bad_keypoint_names_or_skeleton(pose_root: Path, change: dict, problem: str) -> None:
    spec = yaml.safe_load((pose_root / "data.yaml").read_text()) | change
    (pose_root / "data.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError) as excinfo:
        load_dataset(pose_root / "data.yaml")
    assert str(pose_root / "data.yaml") in str(excinfo.value) and problem in str(excinfo.value)


def test_yolo_keypoints_k2_marks_origin_and_negative_points_unlabelled(pose_root: Path) -> None:
    (pose_root / "data.yaml").write_text("train: images/train\nkpt_shape: [3, 2]\nnames: [face]\n")
    label = pose_root / "labels" / "train" / "p.txt"
    label.write_text("0 0.5 0.5 0.5 0.5 0.375 0.4375 0 0 -1 -1\n")
    info = load_dataset(pose_root / "data.yaml", strict=True)
    assert info.kpt_shape == (3, 3) and info.flip_idx is None
    np.testing.assert_allclose(info.samples[0].landmarks[0], [[30, 28, 2], [0, 0, 0], [0, 0, 0]])


def test_yolo_tolerates_tiny_overshoot_and_clips(yolo_root: Path) -> None:
    (yolo_root / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 1.0000005 0.5\n")
    info = load_dataset(yolo_root / "data.yaml", strict=True)
    np.testing.assert_allclose(by_name(info)["a.png"].boxes, [[0, 12, 64, 36]])


BAD_LINES = [
    ("5 0.5 0.5 0.2 0.2", "class id 5 out of range [0, 3)"),
    ("1.5 0.5 0.5 0.2 0.2", "class id '1.5' is not an integer"),
    ("0 1.5 0.5 0.2 0.2", "box value 1.5 outside [0, 1]"),
    ("0 0.5 -0.01 0.2 0.2", "box value -0.01 outside [0, 1]"),
    ("0 0.5 0.5 0.2", "expected 5 columns"),
    ("0 0.5 0.5 0.2 0.2 0.1", "expected 5 columns"),
    ("0 0.5 abc 0.2 0.2", "non-numeric value 'abc'"),
    ("0 0.5 0.5 nan 0.2", "non-finite value 'nan'"),
    ("0 0.5 0.5 0 0.2", "box size must be > 0"),
    ("0 0.5 0.5 0.2 -0.3", "box size must be > 0"),
]


@pytest.mark.parametrize(("line", "problem"), BAD_LINES)
def test_yolo_bad_line_names_file_and_line(yolo_root: Path, line: str, problem: str) -> None:
    label = yolo_root / "labels" / "train" / "a.txt"
    label.write_text(f"0 0.5 0.5 0.2 0.2\n{line}\n")
    with pytest.raises(ValueError) as excinfo:
        load_dataset(yolo_root / "data.yaml", strict=True)
    message = str(excinfo.value)
    assert message.startswith(f"{label}:2: ") and problem in message
    info = load_dataset(yolo_root / "data.yaml")
    assert info.skipped == [message]
    assert sorted(by_name(info)) == ["b.png", "c.png"]  # the whole image is dropped


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("0 0.5 0.5 0.5 0.5 0.1 0.1 3 0.2 0.2 2 0 0 0", "visibility 3 is not one of [0, 1, 2]"),
        ("0 0.5 0.5 0.5 0.5 1.2 0.1 2 0.2 0.2 2 0 0 0", "keypoint value 1.2 outside [0, 1]"),
        ("0 0.5 0.5 0.5 0.5 0.1 0.1 2 0.2 0.2", "expected 14 columns"),
    ],
)
def test_yolo_bad_keypoints(pose_root: Path, line: str, problem: str) -> None:
    label = pose_root / "labels" / "train" / "p.txt"
    label.write_text(line + "\n")
    with pytest.raises(ValueError, match=problem.replace("[", r"\[")) as excinfo:
        load_dataset(pose_root / "data.yaml", strict=True)
    assert str(excinfo.value).startswith(f"{label}:1: ")
    info = load_dataset(pose_root / "data.yaml")
    assert info.samples == [] and len(info.skipped) == 1


def test_yolo_unlabelled_keypoint_coordinates_are_not_checked(pose_root: Path) -> None:
    (pose_root / "labels" / "train" / "p.txt").write_text(
        "0 0.5 0.5 0.5 0.5 0.1 0.1 2 0.2 0.2 2 7 -3 0\n"
    )
    landmarks = load_dataset(pose_root / "data.yaml", strict=True).samples[0].landmarks
    np.testing.assert_allclose(landmarks[0, 2], [0, 0, 0])


def test_yolo_missing_and_unreadable_images(yolo_root: Path) -> None:
    (yolo_root / "images" / "train" / "c.png").write_bytes(b"not an image")
    (yolo_root / "val.txt").write_text("./images/val/d.png\n./images/val/gone.png\n")
    with pytest.raises(ValueError, match="c.png: image file cannot be decoded"):
        load_dataset(yolo_root / "data.yaml", strict=True)
    train = load_dataset(yolo_root / "data.yaml")
    assert sorted(by_name(train)) == ["a.png", "b.png"] and len(train.skipped) == 1
    val = load_dataset(yolo_root / "data.yaml", "val")
    assert [s.image_path.name for s in val.samples] == ["d.png"]
    assert len(val.skipped) == 1 and "gone.png: image file not found" in val.skipped[0]


def test_coco_reads_contiguous_sorted_categories_and_skips_crowd(tmp_path: Path) -> None:
    images = {"images/val/x.png": (64, 48), "images/val/y.png": (32, 32)}
    root = fixture("coco", tmp_path, {**images, "images/val/z.png": (40, 30)})
    json_path = root / "annotations" / "instances_val.json"
    assert detect_format(json_path) == "coco" and available_splits(json_path) == ["val"]
    info = load_dataset(json_path)
    assert info.names == ["cat", "dog"]  # category ids 3, 7 -> 0, 1
    samples = by_name(info)
    np.testing.assert_allclose(samples["x.png"].boxes, [[4, 6, 14, 18], [0, 0, 64, 48]])
    assert samples["x.png"].classes.tolist() == [1, 0]
    np.testing.assert_allclose(samples["y.png"].boxes, [[5, 5, 25, 25]])
    assert samples["z.png"].boxes.shape == (0, 4)
    assert samples["x.png"].image_path == root / "images" / "val" / "x.png"
    assert info.skipped == [f"{json_path}: 1 iscrowd annotations skipped"]
    reordered = load_dataset(json_path, names=["dog", "cat"])
    assert by_name(reordered)["x.png"].classes.tolist() == [0, 1]


def test_coco_keypoints_and_flip_idx_from_names(tmp_path: Path) -> None:
    root = fixture("coco_pose", tmp_path, {"q.png": (50, 40)})
    info = load_dataset(root / "person_keypoints_train.json")
    assert info.kpt_shape == (3, 3) and info.flip_idx == [0, 2, 1]
    sample = info.samples[0]
    np.testing.assert_allclose(sample.boxes, [[10, 5, 40, 35]])
    np.testing.assert_allclose(sample.landmarks[0], [[20, 15, 2], [18, 12, 1], [0, 0, 0]])
    assert info.kpt_names == ["nose", "left_eye", "right_eye"] and info.skeleton is None


def test_coco_skeleton_is_one_based_and_read_zero_based(tmp_path: Path) -> None:
    root = fixture("coco_pose", tmp_path, {"q.png": (50, 40)})
    json_path = root / "person_keypoints_train.json"
    data = json.loads(json_path.read_text())
    data["categories"][0]["skeleton"] = [[1, 2], [1, 3]]
    json_path.write_text(json.dumps(data))
    info = load_dataset(json_path)
    assert info.skeleton == [(0, 1), (0, 2)]
    written = json.loads(write_coco(info, tmp_path / "out.json").read_text())
    assert written["categories"][0]["skeleton"] == [[1, 2], [1, 3]]
    assert written["categories"][0]["keypoints"] == ["nose", "left_eye", "right_eye"]
    data["categories"][0]["skeleton"] = [[0, 1]]  # 0-based: index 0 does not exist in COCO
    json_path.write_text(json.dumps(data))
    with pytest.raises(
        ValueError, match=r"skeleton pair \[0, 1\] must be two keypoint indices in \[1, 3\]"
    ):
        load_dataset(json_path)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"category_id": 99}, "annotation id 1 (image 'q.png'): unknown category_id 99"),
        ({"bbox": [10, 5, 0, 30]}, "annotation id 1 (image 'q.png'): box size must be > 0"),
        ({"bbox": [10, 5, "w", 30]}, "bbox must be [x, y, w, h] numbers"),
        ({"keypoints": [1, 2, 2]}, "expected 9 keypoint values"),
        (
            {"keypoints": [1, 2, 2, 3, 4, 5, 0, 0, 0]},
            "annotation id 1 (image 'q.png'): keypoint visibility 5 is not one of",
        ),
        ({"bbox": [60, 50, 5, 5]}, "lies outside the 50x40 image"),
    ],
)
def test_coco_bad_annotation_skips_image(tmp_path: Path, change: dict, problem: str) -> None:
    root = fixture("coco_pose", tmp_path, {"q.png": (50, 40), "r.png": (50, 40)})
    json_path = root / "person_keypoints_train.json"
    data = json.loads(json_path.read_text())
    data["images"].append({"id": 6, "file_name": "r.png", "width": 50, "height": 40})
    data["annotations"][0].update(change)
    json_path.write_text(json.dumps(data))
    with pytest.raises(ValueError) as excinfo:
        load_dataset(json_path, strict=True)
    message = str(excinfo.value)
    assert message.startswith(f"{json_path}: ") and problem in message
    info = load_dataset(json_path)
    assert [s.image_path.name for s in info.samples] == ["r.png"] and info.skipped == [message]


def test_coco_missing_image_and_images_dir(tmp_path: Path) -> None:
    root = fixture("coco_pose", tmp_path, {"q.png": (50, 40)})
    json_path = root / "person_keypoints_train.json"
    data = json.loads(json_path.read_text())
    data["images"].append({"id": 6, "file_name": "gone.png", "width": 50, "height": 40})
    json_path.write_text(json.dumps(data))
    info = load_dataset(json_path)
    assert len(info.samples) == 1 and "image id 6: image file" in info.skipped[0]
    moved = tmp_path / "pictures"
    moved.mkdir()
    shutil.move(root / "q.png", moved / "q.png")
    with pytest.raises(FileNotFoundError, match="pass images_dir"):
        load_dataset(json_path)
    assert len(load_dataset(json_path, images_dir=moved).samples) == 1


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    sizes = {"000001.jpg": (60, 40), "000002.jpg": (32, 32), "000003.jpg": (40, 30)}
    return fixture("voc", tmp_path, {f"JPEGImages/{k}": v for k, v in sizes.items()})


def test_voc_reads_splits_sorted_names_and_difficult(voc_root: Path) -> None:
    assert detect_format(voc_root) == "voc" and available_splits(voc_root) == ["train", "val"]
    train = load_dataset(voc_root, "train", strict=True)
    assert train.names == ["cat", "dog", "person"]  # from every annotation, all splits
    samples = by_name(train)
    assert sorted(samples) == ["000001.jpg", "000003.jpg"]
    first = samples["000001.jpg"]
    np.testing.assert_allclose(first.boxes, [[0, 0, 30, 20], [9, 4, 50, 40]])
    assert first.classes.tolist() == [1, 2]  # the difficult person is kept
    third = samples["000003.jpg"]  # no <size>: read from the image; ymax clipped
    assert (third.width, third.height) == (40, 30)
    np.testing.assert_allclose(third.boxes, [[1.5, 2, 12, 30]])
    val = load_dataset(voc_root, "val")
    assert val.names == train.names and val.samples[0].classes.tolist() == [0]


def test_voc_without_imagesets_is_one_train_split(voc_root: Path) -> None:
    shutil.rmtree(voc_root / "ImageSets")
    assert available_splits(voc_root) == ["train"]
    assert len(load_dataset(voc_root).samples) == 3
    with pytest.raises(ValueError, match="not 'val'"):
        load_dataset(voc_root, "val")


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("<xmax>30</xmax>", "<xmax>0.5</xmax>", "object 1 ('dog'): negative box size"),
        ("<ymin>1</ymin>", "<ymin>one</ymin>", "object 1 ('dog'): <ymin> is 'one'"),
        ("</annotation>", "", "not valid XML"),
        ("<filename>000001.jpg", "<filename>gone.jpg", "image 'gone.jpg' not found"),
    ],
)
def test_voc_bad_file_skips_image(voc_root: Path, old: str, new: str, problem: str) -> None:
    xml_path = voc_root / "Annotations" / "000001.xml"
    xml_path.write_text(xml_path.read_text().replace(old, new))
    if "gone" in new:
        (voc_root / "JPEGImages" / "000001.jpg").unlink()
    with pytest.raises(ValueError) as excinfo:
        load_dataset(voc_root, "train", strict=True)
    assert str(excinfo.value).startswith(str(xml_path)) and problem in str(excinfo.value)
    info = load_dataset(voc_root, "train")
    assert [s.image_path.name for s in info.samples] == ["000003.jpg"]
    assert info.skipped == [str(excinfo.value)]


def test_voc_given_names_reject_unknown_class(voc_root: Path) -> None:
    info = load_dataset(voc_root, "train", names=["cat", "dog"])
    assert [s.image_path.name for s in info.samples] == ["000003.jpg"]
    assert "object 2: class 'person' not in names" in info.skipped[0]


def test_load_dataset_rejects_unknown_inputs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_dataset(tmp_path / "nothing.yaml")
    (tmp_path / "labels.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_dataset(tmp_path / "labels.csv")


def make_pose_dataset(root: Path, rng: np.random.Generator) -> Path:
    """A random 2-split, 3-class, K=4 YOLO dataset with varied image sizes."""
    for split, count in (("train", 4), ("val", 2)):
        for i in range(count):
            width, height = (int(v) for v in rng.integers(24, 90, size=2))
            write_image(root / "images" / split / f"{split}{i}.png", width, height)
            lines = []
            for _ in range(int(rng.integers(0, 4))):
                x1, x2 = np.sort(rng.uniform(0, 1, 2))
                y1, y2 = np.sort(rng.uniform(0, 1, 2))
                box = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1 + 1e-3, y2 - y1 + 1e-3]
                points = rng.uniform(0, 1, (4, 3))
                points[:, 2] = rng.integers(0, 3, 4)
                points[points[:, 2] == 0, :2] = 0
                values = [f"{v:.6f}" for v in box] + [f"{v:.6f}" for v in points.reshape(-1)]
                lines.append(" ".join([str(int(rng.integers(0, 3))), *values]))
            label = root / "labels" / split / f"{split}{i}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("\n".join(lines))
    config = {"train": "images/train", "val": "images/val", "names": ["a", "b", "c"]}
    config |= {"kpt_shape": [4, 3], "flip_idx": [1, 0, 3, 2]}
    config |= {"kpt_names": ["la", "ra", "lb", "rb"], "skeleton": [[0, 1], [2, 3], [0, 2]]}
    (root / "data.yaml").write_text(yaml.safe_dump(config))
    return root / "data.yaml"


def assert_same_samples(a: DatasetInfo, b: DatasetInfo) -> None:
    assert a.names == b.names and a.kpt_shape == b.kpt_shape and a.flip_idx == b.flip_idx
    assert a.kpt_names == b.kpt_names and a.skeleton == b.skeleton
    assert len(a.samples) == len(b.samples)
    for x, y in zip(a.samples, b.samples, strict=True):
        assert (x.width, x.height) == (y.width, y.height)
        np.testing.assert_allclose(x.boxes, y.boxes, atol=ATOL)
        np.testing.assert_array_equal(x.classes, y.classes)
        np.testing.assert_allclose(x.landmarks, y.landmarks, atol=ATOL)


def test_round_trip_yolo_coco_yolo(tmp_path: Path) -> None:
    yaml_path = make_pose_dataset(tmp_path / "src", np.random.default_rng(0))
    original = load_splits(yaml_path, strict=True)
    assert sum(len(s.boxes) for s in original["train"].samples) > 0
    coco = {
        name: write_coco(info, tmp_path / "coco" / f"{name}.json")
        for name, info in original.items()
    }
    via_coco = {name: load_dataset(path, strict=True) for name, path in coco.items()}
    out_yaml = write_yolo(via_coco, tmp_path / "out")
    assert out_yaml == tmp_path / "out" / "data.yaml"
    again = load_splits(out_yaml, strict=True)
    assert list(again) == ["train", "val"]
    for name in original:
        assert_same_samples(original[name], via_coco[name])
        assert_same_samples(original[name], again[name])


def test_write_yolo_renames_clashing_stems_and_refuses_non_empty(tmp_path: Path) -> None:
    samples = [
        Sample(
            write_image(tmp_path / d / "a.png", 20, 10),
            20,
            10,
            np.array([[1, 2, 5, 8]], np.float32),
            np.array([1]),
        )
        for d in ("one", "two")
    ]
    yaml_path = write_yolo(
        {"train": DatasetInfo(["p", "q"], samples)}, tmp_path / "out", copy_images=False
    )
    assert sorted(p.name for p in (tmp_path / "out" / "labels" / "train").iterdir()) == [
        "a.txt",
        "a_1.txt",
    ]
    assert (tmp_path / "out" / "images" / "train" / "a_1.png").is_symlink()
    info = load_dataset(yaml_path, strict=True)
    assert info.names == ["p", "q"] and len(info.samples) == 2
    np.testing.assert_allclose(info.samples[1].boxes, [[1, 2, 5, 8]], atol=ATOL)
    with pytest.raises(ValueError, match="already holds files"):
        write_yolo({"train": DatasetInfo(["p", "q"], samples)}, tmp_path / "out")
    with pytest.raises(ValueError, match="cannot write split 'trainval'"):
        write_yolo({"trainval": DatasetInfo(["p", "q"], samples)}, tmp_path / "other")
    with pytest.raises(ValueError, match="other class names"):
        write_yolo(
            {"train": DatasetInfo(["p", "q"], []), "val": DatasetInfo(["p"], [])}, tmp_path / "x"
        )


def test_convert_command_yolo_to_coco(yolo_root: Path, tmp_path: Path, capsys) -> None:
    (yolo_root / "labels" / "train" / "b.txt").write_text("7 0.5 0.5 0.1 0.1\n")
    out = tmp_path / "coco"
    assert (
        main(["convert", "--data", str(yolo_root / "data.yaml"), "--to", "coco", "--out", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "train             2        2        1" in printed
    assert "val               1        1        0" in printed
    assert "class id 7 out of range" in printed
    train = load_dataset(out / "train.json")
    assert train.names == ["cat", "dog", "bird"] and len(train.samples) == 2


def test_convert_command_voc_to_yolo_and_errors(voc_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "yolo"
    assert main(["convert", "--data", str(voc_root), "--to", "yolo", "--out", str(out)]) == 0
    assert f"wrote {out / 'data.yaml'}" in capsys.readouterr().out
    splits = load_splits(out / "data.yaml", strict=True)
    assert [len(s.samples) for s in splits.values()] == [2, 1]
    assert (
        main(["convert", "--data", str(tmp_path / "none"), "--to", "coco", "--out", str(out)]) == 2
    )
    assert "not found" in capsys.readouterr().err
    shutil.rmtree(voc_root / "JPEGImages")
    empty_out = tmp_path / "empty"
    args = ["convert", "--data", str(voc_root), "--to", "yolo", "--out", str(empty_out)]
    assert main(args) == 1
    assert "nothing written" in capsys.readouterr().err and not empty_out.exists()
