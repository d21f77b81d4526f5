"""The synthetic digits: exact boxes, disjoint splits, determinism, the dataset writer and CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from detector.cli import main
from detector.data.synthetic import (
    DIGIT_NAMES,
    DigitSource,
    SceneConfig,
    draw_digit,
    image_rng,
    render_scene,
    yolo_label_lines,
)

GREY = 90
INK = (250, 240, 20)


@pytest.fixture(scope="module")
def train_source() -> DigitSource:
    return DigitSource.load("train")


def changed_box(before: np.ndarray, after: np.ndarray) -> np.ndarray | None:
    """Pixel-edge xyxy box of the pixels that differ, or None."""
    changed = (before != after).any(axis=2)
    rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
    if rows.size == 0:
        return None
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)


def flat(height: int, width: int) -> np.ndarray:
    return np.full((height, width, 3), GREY, np.uint8)


def test_train_and_val_glyphs_are_disjoint_and_cover_load_digits() -> None:
    train, val = DigitSource.load("train"), DigitSource.load("val")
    assert set(train.indices.tolist()).isdisjoint(val.indices.tolist())
    assert len(train) + len(val) == 1797
    assert 0.15 < len(val) / (len(train) + len(val)) < 0.25
    for source in (train, val):
        assert source.glyphs.shape == (len(source), 8, 8)
        assert source.glyphs.dtype == np.float32
        assert source.glyphs.min() >= 0 and source.glyphs.max() == 1
        assert set(source.labels.tolist()) == set(range(10))
    assert DigitSource.load("val").indices.tolist() == val.indices.tolist()
    with pytest.raises(ValueError, match="split"):
        DigitSource.load("test")


@pytest.mark.parametrize(
    "glyph_index, cell",
    [
        (0, (10, 12, 26, 32)),
        (7, (40, 5, 140, 125)),
        (33, (3, 60, 60, 100)),
        (101, (70, 70, 92, 88)),
    ],
)
def test_draw_digit_box_is_the_changed_pixels(
    train_source: DigitSource, glyph_index: int, cell: tuple[int, int, int, int]
) -> None:
    before = flat(140, 160)
    after, box = draw_digit(before, train_source.glyphs[glyph_index], cell, INK)
    assert (before == GREY).all()  # the input is not modified
    expected = changed_box(before, after)
    assert box is not None and expected is not None
    assert box.dtype == np.float32 and box.shape == (4,)
    np.testing.assert_allclose(box, expected, atol=1)
    x1, y1, x2, y2 = cell
    assert x1 <= box[0] < box[2] <= x2 and y1 <= box[1] < box[3] <= y2


def test_draw_digit_clips_to_the_image(train_source: DigitSource) -> None:
    before = flat(50, 60)
    after, box = draw_digit(before, train_source.glyphs[3], (-20, 30, 20, 90), INK)
    assert box is not None
    assert box[0] == 0 and box[3] == 50
    np.testing.assert_allclose(box, changed_box(before, after), atol=1)
    outside, none = draw_digit(before, train_source.glyphs[3], (70, 0, 100, 40), INK)
    assert none is None
    assert (outside == before).all()


@pytest.mark.parametrize("seed", range(6))
def test_render_scene_labels_every_visible_digit(train_source: DigitSource, seed: int) -> None:
    height, width = 96, 200
    background = flat(height, width)
    config = SceneConfig(border_cut_prob=0.5)
    rng = np.random.default_rng(seed)
    image, boxes, classes = render_scene(
        rng, (height, width), train_source, 5, config=config, background=background
    )
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    assert boxes.dtype == np.float32 and boxes.shape == (len(classes), 4)
    assert classes.dtype == np.int64 and set(classes.tolist()) <= set(range(10))
    assert 1 <= len(classes) <= 5
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all()
    assert (boxes[:, 3] <= height).all() and (boxes[:, 2:] > boxes[:, :2]).all()
    changed = (image != background).any(axis=2)
    covered = np.zeros_like(changed)
    for x1, y1, x2, y2 in boxes.astype(int):
        covered[max(y1 - 1, 0) : y2 + 1, max(x1 - 1, 0) : x2 + 1] = True
        inside = changed[y1:y2, x1:x2]
        # tight: ink touches every side of the box
        assert inside[0].any() and inside[-1].any()
        assert inside[:, 0].any() and inside[:, -1].any()
    assert not (changed & ~covered).any(), "ink outside every label box"


def test_render_scene_separates_objects_with_max_iou_zero(train_source: DigitSource) -> None:
    config = SceneConfig(max_iou=0.0)
    for seed in range(4):
        _, boxes, _ = render_scene(
            np.random.default_rng(seed), (160, 160), train_source, 6, config=config
        )
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                overlap_w = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
                overlap_h = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
                assert overlap_w <= 0 or overlap_h <= 0


def test_render_scene_cuts_digits_at_the_border(train_source: DigitSource) -> None:
    config = SceneConfig(border_cut_prob=1.0)
    touching = 0
    for seed in range(8):
        _, boxes, _ = render_scene(
            np.random.default_rng(seed), (128, 128), train_source, 3, config=config
        )
        touching += int(((boxes[:, :2] == 0) | (boxes[:, 2:] == 128)).any(axis=1).sum())
    assert touching > 0


def test_render_scene_is_deterministic(train_source: DigitSource) -> None:
    def scene(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return render_scene(np.random.default_rng(seed), (64, 80), train_source, 4)

    first, again, other = scene(5), scene(5), scene(6)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


def test_render_scene_empty_and_bad_input(train_source: DigitSource) -> None:
    image, boxes, classes = render_scene(np.random.default_rng(0), (32, 48), train_source, 0)
    assert image.shape == (32, 48, 3)
    assert boxes.shape == (0, 4) and boxes.dtype == np.float32
    assert classes.shape == (0,) and classes.dtype == np.int64
    with pytest.raises(ValueError, match="background"):
        render_scene(np.random.default_rng(0), (32, 48), train_source, 1, background=flat(48, 32))
    with pytest.raises(ValueError, match="min_objects"):
        SceneConfig(min_objects=4, max_objects=2)


def test_yolo_label_lines_normalise_centre_and_size() -> None:
    boxes = np.array([[10, 20, 30, 60]], np.float32)
    lines = yolo_label_lines(boxes, np.array([7]), (100, 200))
    assert lines == ["7 0.100000 0.400000 0.100000 0.400000"]
    assert yolo_label_lines(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), (8, 8)) == []


def test_image_rng_is_per_image() -> None:
    a = image_rng(3, "train", 0).random(4)
    np.testing.assert_array_equal(a, image_rng(3, "train", 0).random(4))
    assert not np.array_equal(a, image_rng(3, "train", 1).random(4))
    assert not np.array_equal(a, image_rng(3, "val", 0).random(4))
    assert not np.array_equal(a, image_rng(4, "train", 0).random(4))


def read_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def synth(out: Path, seed: int, *extra: str) -> int:
    args = ["synth", "digits", "--out", str(out), "--train", "5", "--val", "3"]
    return main([*args, "--seed", str(seed), "--imgsz", "96", "--quiet", *extra])


def test_cli_writes_a_deterministic_yolo_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert synth(tmp_path / "a", seed=1) == 0
    assert "train: 5 images" in capsys.readouterr().out
    root = tmp_path / "a"
    spec = yaml.safe_load((root / "data.yaml").read_text())
    assert spec["path"] == "." and spec["train"] == "images/train" and spec["val"] == "images/val"
    assert spec["names"] == dict(enumerate(DIGIT_NAMES)) and spec["nc"] == 10
    for split, count in (("train", 5), ("val", 3)):
        images = sorted((root / "images" / split).glob("*.png"))
        labels = sorted((root / "labels" / split).glob("*.txt"))
        assert len(images) == len(labels) == count
        assert [p.stem for p in images] == [p.stem for p in labels]
        for label in labels:
            lines = label.read_text().splitlines()
            assert 1 <= len(lines) <= 6
            for line in lines:
                fields = line.split()
                assert len(fields) == 5 and fields[0] in DIGIT_NAMES
                assert all(len(f.split(".")[1]) == 6 for f in fields[1:])
                cx, cy, w, h = map(float, fields[1:])
                assert 0 < w <= 1 and 0 < h <= 1
                assert cx - w / 2 >= -1e-6 and cx + w / 2 <= 1 + 1e-6
                assert cy - h / 2 >= -1e-6 and cy + h / 2 <= 1 + 1e-6

    assert synth(tmp_path / "b", seed=1) == 0
    assert read_files(root) == read_files(tmp_path / "b")
    assert synth(tmp_path / "c", seed=2) == 0
    different = read_files(tmp_path / "c")
    assert different.keys() == read_files(root).keys()
    assert different["labels/train/000000.txt"] != read_files(root)["labels/train/000000.txt"]


def test_cli_refuses_a_non_empty_folder_without_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "images" / "train" / "old.png").write_bytes(b"x")
    assert synth(tmp_path, seed=0) == 2
    assert "not empty" in capsys.readouterr().err
    assert synth(tmp_path, 0, "--overwrite") == 0
    assert not (tmp_path / "images" / "train" / "old.png").exists()


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"yolo-detector\[synth\]"):
        DigitSource.load("train")
