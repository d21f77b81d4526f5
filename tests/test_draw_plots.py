"""Drawing detections, image grids, and the training plots."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from detector.checkpoint import Checkpoint
from detector.config import ModelConfig
from detector.data.types import DatasetInfo, Sample
from detector.draw import PALETTE, class_colour, draw_detections, fit_image, image_grid
from detector.models.yolo import YOLODetector
from detector.plots import (
    CAPTION_COLOUR,
    CAPTION_HEIGHT,
    NO_DETECTIONS_COLOUR,
    PAIR_GAP,
    PR_CURVE_PNG,
    PREVIEW_CELL,
    RESULTS_PNG,
    VAL_PREDICTIONS_PNG,
    plot_results_csv,
    preview_pair,
    read_results_csv,
    training_plots,
)
from detector.settings import Detections

HEIGHT, WIDTH = 200, 240
MARGIN = 40  # pixels around a box where its outline, tag and dots may land
NAMES = ("cat", "dog", "bird")
INPUT_SIZE = 64

CSV_HEADER = "epoch,lr,box,obj,cls,lmk,ap,ap50,ap75,images_per_s,seconds"
CSV_ROWS = [
    "1,0.002,0.09,0.05,0.04,0,0.01,0.03,0.0,100,10",
    "2,0.008,0.07,0.04,0.03,0,0.08,0.2,0.04,101,10",
    "3,0.01,0.05,0.03,0.02,0,0.2,0.45,0.15,99,10",
]


def _image(seed: int = 0, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _detections(boxes, class_ids, landmarks=None, size=(HEIGHT, WIDTH)) -> Detections:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    class_ids = np.asarray(class_ids, np.int64)
    return Detections(
        boxes=boxes,
        scores=np.linspace(0.9, 0.5, len(boxes)).astype(np.float32),
        class_ids=class_ids,
        labels=[NAMES[c] for c in class_ids],
        landmarks=landmarks,
        image_size=size,
    )


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.any(a != b, axis=2)  # (H, W) bool


def test_draw_changes_only_pixels_near_the_boxes():
    image = _image()
    boxes = [[50, 60, 110, 150], [150, 100, 200, 140]]
    out = draw_detections(image, _detections(boxes, [0, 1]))
    near = np.zeros((HEIGHT, WIDTH), bool)
    for x1, y1, x2, y2 in boxes:
        near[max(0, y1 - MARGIN) : y2 + 2, max(0, x1 - 2) : x2 + MARGIN] = True
    changed = _changed(out, image)
    assert changed.any()
    assert not changed[~near].any()
    # The outline is drawn, the middle of a box is left alone.
    assert changed[100, 50] and changed[100, 109]
    assert not changed[100:140, 60:100].any()


def test_draw_uses_the_class_colour_and_never_writes_to_the_input():
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    before = image.copy()
    out = draw_detections(image, _detections([[40, 80, 120, 160]], [2]), thickness=3)
    np.testing.assert_array_equal(image, before)
    assert tuple(out[120, 40]) == class_colour(2) == PALETTE[2]
    custom = draw_detections(image, _detections([[40, 80, 120, 160]], [2]), colours=[(1, 2, 3)])
    assert tuple(custom[120, 40]) == (1, 2, 3)


def test_draw_with_no_detections_returns_an_identical_copy():
    image = _image(1)
    out = draw_detections(image, _detections(np.zeros((0, 4)), []))
    np.testing.assert_array_equal(out, image)
    assert not np.shares_memory(out, image)


def test_tags_stay_inside_the_image():
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    # Box touching the top-right corner: no room above it or to its right.
    x1 = WIDTH - 20
    out = draw_detections(image, _detections([[x1, 0, WIDTH, 30]], [0]))
    changed = _changed(out, image)
    assert changed[:, :x1].any(), "the tag should be shifted left, inside the image"
    assert changed[1:10, x1 + 2 : WIDTH - 2].any(), "the tag should sit inside the box top"


def test_landmarks_are_drawn_unless_unlabelled():
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    points = np.array([[[80, 120, 1.0], [100, 130, 0.0]]], np.float32)  # (1, K=2, 3)
    out = draw_detections(image, _detections([[40, 80, 140, 180]], [0], points))
    changed = _changed(out, image)
    assert changed[120, 80]
    assert not changed[130, 100]


def test_skeleton_joins_visible_points_with_a_line_in_the_class_colour():
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    box = [[40, 60, 200, 180]]
    points = np.array([[[60, 120, 1.0], [180, 120, 1.0], [120, 170, 0.0]]], np.float32)
    joined = draw_detections(
        image, _detections(box, [1], points), skeleton=[(0, 1), (1, 2)], thickness=3
    )
    plain = draw_detections(image, _detections(box, [1], points), thickness=3)
    assert not _changed(plain, image)[120, 120], "no line without a skeleton"
    assert tuple(joined[120, 120]) == class_colour(1), "the 0-1 line, in the class colour"
    # (1, 2) ends at a hidden point: not drawn; nor is anything outside the lines and dots.
    assert not _changed(joined, image)[145, 150]
    np.testing.assert_array_equal(joined[:100], plain[:100])
    nothing = draw_detections(image, _detections(box, [1]), skeleton=[(0, 1)])  # no points
    np.testing.assert_array_equal(nothing, draw_detections(image, _detections(box, [1])))
    with pytest.raises(ValueError, match=r"skeleton pair \(0, 3\) must be two landmark indices"):
        draw_detections(image, _detections(box, [1], points), skeleton=[(0, 3)])


def test_draw_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        draw_detections(np.zeros((10, 10, 3), np.float32), _detections(np.zeros((0, 4)), []))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        draw_detections(np.zeros((10, 10), np.uint8), _detections(np.zeros((0, 4)), []))
    with pytest.raises(ValueError, match="thickness"):
        draw_detections(_image(), _detections([[1, 1, 5, 5]], [0]), thickness=0)


def test_image_grid_places_every_image_in_its_cell():
    gap = 4
    images = [np.full((10, 20, 3), 10 * (i + 1), np.uint8) for i in range(5)]
    grid = image_grid(images, columns=2, gap=gap, background=255)
    assert grid.shape == (3 * 10 + 2 * gap, 2 * 20 + gap, 3)
    for i in range(5):
        row, col = divmod(i, 2)
        top, left = row * (10 + gap), col * (20 + gap)
        assert np.all(grid[top : top + 10, left : left + 20] == 10 * (i + 1))
    assert np.all(grid[2 * (10 + gap) :, 20 + gap :] == 255)  # the empty sixth cell


def test_image_grid_scales_to_the_cell_size_and_rejects_nothing():
    images = [_image(0, 50, 100), _image(1, 120, 60)]
    grid = image_grid(images, columns=2, cell_size=40, gap=0)
    assert grid.shape == (40, 80, 3)
    small, scale = fit_image(images[1], 40)
    assert small.shape == (40, 20, 3) and scale == pytest.approx(40 / 120)
    with pytest.raises(ValueError, match="at least one image"):
        image_grid([])


def _write_csv(path, rows=CSV_ROWS):
    path.write_text("\n".join([CSV_HEADER, *rows]) + "\n")
    return path


def _assert_png(path, min_side: int = 100):
    image = cv2.imread(str(path))
    assert image is not None, f"{path} is not a readable image"
    assert min(image.shape[:2]) >= min_side
    assert image.std() > 0, f"{path} is blank"


def test_plot_results_csv_writes_a_png(tmp_path):
    out = plot_results_csv(_write_csv(tmp_path / "results.csv"), tmp_path / "plots" / "r.png")
    assert out == tmp_path / "plots" / "r.png"
    _assert_png(out)


def test_plot_results_csv_adds_keypoint_panels_for_a_landmark_run(tmp_path):
    """A landmark run's keypoint AP and NME columns get two more panels (a third row of
    three); a plain run's empty keypoint cells (the trainer writes "") get none."""
    header = f"{CSV_HEADER},kpt_ap,kpt_ap50,nme"
    plain = [f"{row},,," for row in CSV_ROWS]
    landmark = [
        f"{row},{0.1 * i:.1f},{0.2 * i:.1f},{0.3 / i:.2f}" for i, row in enumerate(CSV_ROWS, 1)
    ]
    sides = {}
    for name, rows in (("plain", plain), ("landmark", landmark)):
        csv_path = tmp_path / f"{name}.csv"
        csv_path.write_text("\n".join([header, *rows]) + "\n")
        columns = read_results_csv(csv_path)
        assert ("nme" in columns) == (name == "landmark")
        out = plot_results_csv(csv_path, tmp_path / f"{name}.png")
        _assert_png(out)
        sides[name] = cv2.imread(str(out)).shape[:2]
    assert sides["landmark"][1] == sides["plain"][1]
    assert sides["landmark"][0] == pytest.approx(sides["plain"][0] * 3 / 2, rel=0.02)


def test_results_csv_keeps_the_last_row_of_a_repeated_epoch(tmp_path):
    rows = [*CSV_ROWS, CSV_ROWS[1].replace("0.08,0.2", "0.5,0.6"), CSV_ROWS[0]]
    columns = read_results_csv(_write_csv(tmp_path / "results.csv", rows))
    np.testing.assert_array_equal(columns["epoch"], [1, 2, 3])
    assert columns["ap"][1] == 0.5


def test_results_csv_errors_name_the_file_and_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_results_csv(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("epoch,lr,box\n1,0.1,0.2\n")
    with pytest.raises(ValueError, match="missing columns.*obj"):
        read_results_csv(bad)
    empty = _write_csv(tmp_path / "empty.csv", [])
    with pytest.raises(ValueError, match="no epochs"):
        read_results_csv(empty)
    nan = _write_csv(tmp_path / "text.csv", [CSV_ROWS[0].replace("0.09", "x")])
    with pytest.raises(ValueError, match="line 2"):
        read_results_csv(nan)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A run folder with results.csv and a random-weights model, and a 3-image val split."""
    root = tmp_path_factory.mktemp("run")
    config = ModelConfig(num_classes=len(NAMES), input_size=INPUT_SIZE, class_names=NAMES)
    best = Checkpoint(config, "grid", YOLODetector(config).state_dict()).save(
        root / "best.safetensors"
    )
    samples = []
    for i, (height, width) in enumerate([(80, 96), (64, 64), (120, 90)]):
        path = root / f"{i}.png"
        cv2.imwrite(str(path), _image(i, height, width))
        boxes = np.array([[5, 5, width / 2, height / 2]], np.float32)
        samples.append(Sample(path, width, height, boxes, np.array([i % len(NAMES)])))
    _write_csv(root / "results.csv")
    return root, best, DatasetInfo(list(NAMES), samples)


def test_training_plots_writes_three_pngs(run_folder):
    out, best, info = run_folder
    paths = training_plots(out, best, info, "cpu", progress=False)
    assert [p.name for p in paths] == [RESULTS_PNG, PR_CURVE_PNG, VAL_PREDICTIONS_PNG]
    for path in paths:
        assert path.parent == out
        _assert_png(path)


def _band_has(band: np.ndarray, colour) -> bool:
    return bool(np.all(band == np.array(colour, np.uint8), axis=2).any())


def test_preview_pair_shows_truth_left_predictions_right_and_says_no_detections():
    image = np.full((100, 160, 3), 90, np.uint8)
    sample = Sample("x.png", 160, 100, np.array([[20, 30, 60, 80]], np.float32), np.array([1]))
    small, scale = fit_image(image, PREVIEW_CELL)
    height, width = small.shape[:2]

    pair = preview_pair(image, sample, NAMES, _detections(np.zeros((0, 4)), [], size=(100, 160)))
    assert pair.shape == (CAPTION_HEIGHT + height, 2 * width + PAIR_GAP, 3)
    left = pair[CAPTION_HEIGHT:, :width]
    right = pair[CAPTION_HEIGHT:, width + PAIR_GAP :]
    changed = _changed(left, small)
    x1, y1 = round(20 * scale), round(80 * scale) - 1
    assert changed[y1, x1], "the ground-truth box should be drawn on the left"
    np.testing.assert_array_equal(right, small)  # nothing found: the image as it is
    right_band = pair[:CAPTION_HEIGHT, width + PAIR_GAP :]
    assert _band_has(right_band, NO_DETECTIONS_COLOUR), "expected the red 'no detections' band"
    assert _band_has(pair[:CAPTION_HEIGHT, :width], CAPTION_COLOUR)
    assert not _band_has(pair[:CAPTION_HEIGHT, :width], NO_DETECTIONS_COLOUR)

    found = _detections([[100, 10, 150, 60]], [2], size=(100, 160))
    pair = preview_pair(image, sample, NAMES, found)
    right_band = pair[:CAPTION_HEIGHT, width + PAIR_GAP :]
    assert _band_has(right_band, CAPTION_COLOUR) and not _band_has(right_band, NO_DETECTIONS_COLOUR)
    assert _changed(pair[CAPTION_HEIGHT:, width + PAIR_GAP :], small).any()
    # The truth half is the same whatever the model found.
    np.testing.assert_array_equal(
        pair[:, :width], preview_pair(image, sample, NAMES, found)[:, :width]
    )


def test_preview_pair_draws_truth_and_predicted_landmarks_with_the_skeleton():
    image = np.full((100, 160, 3), 90, np.uint8)
    points = np.array([[[30, 50, 2], [50, 50, 2]]], np.float32)  # (1, K=2, 3)
    sample = Sample(
        "x.png", 160, 100, np.array([[20, 30, 60, 80]], np.float32), np.array([1]), points
    )
    found = _detections([[20, 30, 60, 80]], [1], points.copy(), size=(100, 160))
    small, scale = fit_image(image, PREVIEW_CELL)
    width = small.shape[1]
    plain = preview_pair(image, sample, NAMES, found)
    joined = preview_pair(image, sample, NAMES, found, skeleton=[(0, 1)])
    middle = (CAPTION_HEIGHT + round(50 * scale), round(40 * scale))  # between the points
    for offset in (0, width + PAIR_GAP):  # truth, then predictions
        y, x = middle[0], middle[1] + offset
        assert tuple(plain[y, x]) == (90, 90, 90), "no line without a skeleton"
        assert tuple(joined[y, x]) != (90, 90, 90), "the 0-1 line"
        dot = (CAPTION_HEIGHT + round(50 * scale), round(30 * scale) + offset)
        assert tuple(plain[dot]) != (90, 90, 90), "the landmark dots are drawn on both halves"
