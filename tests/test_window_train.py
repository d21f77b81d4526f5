"""Training the sliding-window kind: crop geometry, the crops folder, the loss against a
naive reference, hard-negative mining, and the CLI end to end (train, resume, eval,
predict) on a tiny digits set."""

from __future__ import annotations

import csv
import math
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detector.boxes import box_iou
from detector.checkpoint import Checkpoint
from detector.cli import main
from detector.config import TrainConfig, WindowTrainConfig
from detector.data.transforms import AugmentConfig
from detector.data.types import DatasetInfo, Sample
from detector.data.window_crops import (
    CENTRE_JITTER,
    NEGATIVE_IOU,
    POSITIVE_FILL,
    WindowCropDataset,
    collate_crops,
    crop_targets,
    is_crop_folder,
    is_scene,
    load_crop_folder,
    negative_window,
    positive_window,
    reference_window,
)
from detector.hard_negatives import false_positive_windows
from detector.models.window import BACKGROUND, WindowConfig, decode_window_boxes
from detector.predict import Detector
from detector.settings import Detections
from detector.train import RESULTS_FIELDS, TrainOptions, train
from detector.window_loss import SMOOTH_L1_BETA, WindowLoss
from detector.window_train import (
    HARD_NEGATIVES_KEY,
    hard_negative_epochs,
    mining_indices,
    window_dataset,
    window_model_config,
)

IMGSZ = 64
WINDOW = 24  # 12 + 3 * stride 4: the smallest handy window of the default widths
MIN_SIZE = 16.0  # the pyramid enlarges a 64-px input 1.5x at most: fast validation
BATCH = 8


pytestmark = pytest.mark.usefixtures("one_training_thread")


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A YOLO digits dataset: 16 train and 8 val images of 64 px."""
    root = tmp_path_factory.mktemp("digits")
    argv = ["synth", "digits", "--out", str(root), "--train", "16", "--val", "8"]
    argv += ["--imgsz", str(IMGSZ), "--quiet"]
    assert main(argv) == 0
    return root / "data.yaml"


def _random_boxes(rng: np.random.Generator, n: int, size: float = 200.0) -> np.ndarray:
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(3, 60, (n, 2))
    return np.concatenate((xy, xy + wh), 1)


# --- crop geometry -------------------------------------------------------------------


def test_positive_windows_contain_their_object_and_decode_back_to_it() -> None:
    rng = np.random.default_rng(0)
    boxes = _random_boxes(rng, 500)
    windows = np.stack([positive_window(b, rng) for b in boxes])
    side = windows[:, 2] - windows[:, 0]
    assert np.array_equal(side, windows[:, 3] - windows[:, 1])  # square
    assert np.array_equal(windows, np.round(windows))  # integer-aligned
    assert (windows[:, :2] <= boxes[:, :2]).all() and (windows[:, 2:] >= boxes[:, 2:]).all()
    fill = (boxes[:, 2:] - boxes[:, :2]).max(1) / side
    # Alignment grows the side by at most 2 pixels.
    assert (fill <= POSITIVE_FILL[1] + 1e-9).all()
    assert (fill * (side / np.maximum(side - 2, 1)) >= POSITIVE_FILL[0] - 1e-9).all()
    offset = np.abs((boxes[:, :2] + boxes[:, 2:]) / 2 - (windows[:, :2] + windows[:, 2:]) / 2)
    assert (offset <= CENTRE_JITTER * side[:, None] + 1).all()

    labels = rng.integers(1, 4, len(boxes))
    targets = crop_targets(windows, labels, boxes)
    assert targets.has_box.all() and torch.equal(targets.labels, torch.from_numpy(labels))
    decoded = decode_window_boxes(targets.boxes.double(), torch.from_numpy(windows))
    torch.testing.assert_close(decoded, torch.from_numpy(boxes), rtol=0, atol=1e-4)


def test_negative_windows_overlap_no_object() -> None:
    rng = np.random.default_rng(1)
    size = (240, 320)
    boxes = _random_boxes(rng, 6)
    windows = [negative_window(size, boxes, 12.0, rng) for _ in range(300)]
    found = np.stack([w for w in windows if w is not None])
    assert len(found) > 200
    side = found[:, 2] - found[:, 0]
    assert (side >= 12).all() and (side <= min(size)).all()
    assert (found[:, :2] >= 0).all() and (found[:, 2] <= size[1]).all()
    assert (found[:, 3] <= size[0]).all()
    others = torch.from_numpy(np.concatenate((boxes, reference_window(boxes))))
    assert (box_iou(torch.from_numpy(found), others) < NEGATIVE_IOU).all()


def test_jitter_and_overhang_follow_the_model_geometry() -> None:
    """A wider jitter reaches past CENTRE_JITTER (a window 16 at stride 4: half a stride is
    0.125 of the side); negatives with an overhang leave the image by at most it, and
    window_dataset sets both from the model (border = window // 4 by default)."""
    rng = np.random.default_rng(2)
    boxes = _random_boxes(rng, 2000)
    windows = np.stack([positive_window(b, rng, 0.125) for b in boxes])
    side = windows[:, 2] - windows[:, 0]
    offset = np.abs((boxes[:, :2] + boxes[:, 2:]) / 2 - (windows[:, :2] + windows[:, 2:]) / 2)
    assert (offset <= 0.125 * side[:, None] + 1).all()
    assert (offset > CENTRE_JITTER * side[:, None] + 1).any()

    size = (240, 320)
    negatives = [negative_window(size, np.zeros((0, 4)), 12.0, rng, 0.25) for _ in range(400)]
    found = np.stack(negatives)
    side = found[:, 2] - found[:, 0]
    outside = np.maximum(-found[:, :2], 0).max(1)
    outside = np.maximum(outside, found[:, 2] - size[1])
    outside = np.maximum(outside, found[:, 3] - size[0])
    assert (outside <= 0.25 * side).all() and (outside > 0).mean() > 0.2

    info = DatasetInfo(["a"], [Sample("x.png", 320, 240, boxes[:1], np.zeros(1, np.int64))])
    window = WindowTrainConfig(window=16, min_size=16)
    config = window_model_config(window, info, 320, print)
    assert config.border == 4  # window // 4
    dataset = window_dataset(info, config, window, AugmentConfig(), "data.yaml", 0)
    assert dataset.centre_jitter == 0.125 and dataset.overhang == 0.25
    bare = window_model_config(replace(window, border=0), info, 320, print)
    assert bare.border == 0


def _bright_box_sample(tmp_path: Path) -> tuple[Sample, np.ndarray]:
    """A black 120x160 image with one white 20x30 object off-centre."""
    image = np.zeros((120, 160, 3), np.uint8)
    box = np.array([[50, 40, 70, 70]], np.float32)
    image[40:70, 50:70] = 255
    path = tmp_path / "one.png"
    cv2.imwrite(str(path), image)
    return Sample(path, 160, 120, box, np.array([2], np.int64)), image


@pytest.mark.parametrize("fliplr", [0.0, 1.0])
def test_dataset_items_the_object_is_where_its_target_says(tmp_path: Path, fliplr: float) -> None:
    sample, _ = _bright_box_sample(tmp_path)
    info = DatasetInfo(names=["a", "b", "c"], samples=[sample])
    augment = AugmentConfig(fliplr=fliplr, hsv_v=0.0)
    dataset = WindowCropDataset(info, 32, 160, 16.0, augment, seed=3, negatives_per_positive=3)
    for epoch in range(4):
        dataset.set_epoch(epoch)
        crops, targets, index = dataset[0]
        assert index == 0 and crops.dtype == torch.uint8 and crops.shape[1:] == (3, 32, 32)
        assert len(crops) == len(targets) <= 4
        assert targets.labels[0] == 3 and (targets.labels[1:] == BACKGROUND).all()
        assert targets.has_box.tolist() == [True] + [False] * (len(targets) - 1)
        # The target, decoded in the crop's own pixels, covers the white pixels.
        decoded = decode_window_boxes(targets.boxes[0], torch.tensor([0.0, 0.0, 32.0, 32.0]))
        ys, xs = np.nonzero(crops[0, 0].numpy() > 127)
        white = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
        np.testing.assert_allclose(decoded.numpy(), white, atol=1.5)
        # The negatives see (almost) no object.
        assert (crops[1:].float().mean((1, 2, 3)) < 0.3 * 255).all()
    again = dataset[0]  # the same epoch and index: the same crops
    assert torch.equal(again[0], dataset[0][0])


def test_crops_folder_reads_classes_and_background_and_masks_the_box(tmp_path: Path) -> None:
    root = tmp_path / "crops"
    rng = np.random.default_rng(0)
    for folder, count in (("cat", 10), ("dog", 12), ("background", 10)):
        (root / folder).mkdir(parents=True)
        for i in range(count):
            shape = (int(rng.integers(10, 50)), int(rng.integers(10, 50)), 3)
            cv2.imwrite(str(root / folder / f"{i:02d}.png"), rng.integers(0, 255, shape, np.uint8))
    assert is_crop_folder(root) and not is_crop_folder(root / "cat")
    train_info, val_info = load_crop_folder(root, "train"), load_crop_folder(root, "val")
    assert train_info.names == val_info.names == ["cat", "dog"]
    assert len(train_info.samples) == 9 + 11 + 9 and len(val_info.samples) == 3
    dataset = WindowCropDataset(train_info, 24, 64, 12.0, AugmentConfig(), whole_images=True)
    items = [dataset[i] for i in range(len(dataset))]
    crops, targets, _ = collate_crops(items)
    assert crops.shape == (len(train_info.samples), 3, 24, 24)
    assert sorted(targets.labels.tolist()) == [0] * 9 + [1] * 9 + [2] * 11
    assert not targets.has_box.any()
    with pytest.raises(ValueError, match="splits 'train' and 'val'"):
        load_crop_folder(root, "test")

    out = tmp_path / "run"  # trains, validating on whole held-out crops
    train(_options(root, out, epochs=1))
    last = Checkpoint.load(out / "last.safetensors")
    assert last.kind == "sliding-window" and last.config.class_names == ("cat", "dog")
    assert [row["epoch"] for row in _rows(out)] == ["1"]


# --- loss ----------------------------------------------------------------------------


def _naive_loss(raw: torch.Tensor, labels, boxes, has_box, box_gain: float) -> float:
    c1 = raw.shape[1] - 4
    ce, l1, positives = 0.0, 0.0, 0
    for i in range(raw.shape[0]):
        logits = [float(v) for v in raw[i, :c1, 0, 0]]
        top = max(logits)
        log_sum = top + math.log(sum(math.exp(v - top) for v in logits))
        ce += log_sum - logits[int(labels[i])]
        if has_box[i]:
            positives += 1
            for k in range(4):
                d = abs(float(raw[i, c1 + k, 0, 0]) - float(boxes[i, k]))
                b = SMOOTH_L1_BETA
                l1 += 0.5 * d * d / b if d < b else d - 0.5 * b
    return ce / raw.shape[0] + box_gain * l1 / max(positives, 1)


def test_loss_matches_a_naive_reference() -> None:
    torch.manual_seed(0)
    n, c = 12, 3
    raw = torch.randn(n, c + 5, 1, 1, dtype=torch.float64)
    labels = torch.randint(0, c + 1, (n,))
    boxes = torch.randn(n, 4) * 0.3
    has_box = labels > 0
    has_box[0] = False
    targets = crop_targets(np.zeros((n, 4)), labels.numpy(), None)
    targets = replace(targets, boxes=boxes, has_box=has_box)
    loss, items = WindowLoss(c, box_gain=2.5)(raw, targets)
    want = _naive_loss(raw, labels, boxes, has_box, 2.5)
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert items.cls + 2.5 * items.box == pytest.approx(want, rel=1e-5)
    assert items.obj == 0.0 and items.landmark == 0.0
    empty = crop_targets(np.zeros((0, 4)), np.zeros(0, np.int64), None)
    zero, _ = WindowLoss(c)(torch.zeros(0, c + 5, 1, 1, requires_grad=True), empty)
    assert float(zero.detach()) == 0.0 and zero.requires_grad  # an empty batch still backpropagates


# --- hard-negative mining ------------------------------------------------------------


class FixedDetector:
    """Answers every image with the same boxes and scores (filtered by the threshold)."""

    def __init__(self, boxes: np.ndarray, scores: np.ndarray):
        self.boxes, self.scores = np.asarray(boxes, np.float32), np.asarray(scores, np.float32)
        self.calls = 0

    def detect(self, images, score_threshold: float):
        self.calls += 1
        keep = self.scores >= score_threshold
        n = int(keep.sum())
        return [
            Detections(
                self.boxes[keep],
                self.scores[keep],
                np.zeros(n, np.int64),
                ["0"] * n,
                None,
                image.shape[:2],
            )
            for image in images
        ]


def test_mining_takes_exactly_the_false_positives(tmp_path: Path) -> None:
    sample, _ = _bright_box_sample(tmp_path)  # truth: (50, 40, 70, 70)
    info = DatasetInfo(names=["a", "b", "c"], samples=[sample, sample])
    boxes = [
        [50, 40, 70, 70],  # the object: IoU 1
        [52, 42, 72, 72],  # IoU > 0.3: not false
        [0, 0, 10, 10],  # false, score 0.9
        [100, 80, 130, 100],  # false, score 0.6
        [10, 60, 30, 90],  # false but below the threshold
    ]
    scores = [0.95, 0.9, 0.9, 0.6, 0.4]
    windows = false_positive_windows(FixedDetector(boxes, scores), info, 0.5, 10, batch_size=1)
    want = np.stack([reference_window(np.array([b]))[0] for b in (boxes[2], boxes[3])])
    for found in windows:
        assert found.shape == (2, 4)
        assert (found[:, :2] <= want[:, :2]).all() and (found[:, 2:] >= want[:, 2:]).all()
        assert (found[:, 2:] - found[:, :2] - (want[:, 2:] - want[:, :2]) <= 2).all()
    capped = false_positive_windows(FixedDetector(boxes, scores), info, 0.5, 1)
    assert [len(w) for w in capped] == [1, 1] and np.array_equal(capped[0], windows[0][:1])


def test_mining_schedule() -> None:
    cfg = WindowTrainConfig()
    assert hard_negative_epochs(10, cfg) == [5]
    assert hard_negative_epochs(10, replace(cfg, hard_negative_rounds=2)) == [5, 7]
    assert hard_negative_epochs(1, cfg) == []  # no epoch after the first to use them
    assert hard_negative_epochs(10, replace(cfg, hard_negative_rounds=0)) == []
    assert hard_negative_epochs(4, replace(cfg, hard_negative_epochs=(1, 3, 4))) == [1, 3]


def _options(data: Path, out: Path, epochs: int, **changes) -> TrainOptions:
    config = TrainConfig(epochs=epochs, batch_size=BATCH, workers=0, patience=0)
    config = replace(config, **changes.pop("config", {}))
    window = WindowTrainConfig(window=WINDOW, min_size=MIN_SIZE, **changes.pop("window", {}))
    return TrainOptions(
        data=str(data),
        kind="sliding-window",
        imgsz=IMGSZ,
        out=str(out),
        device="cpu",
        plots=False,
        progress=False,
        config=config,
        augment=AugmentConfig(fliplr=0.0),
        window=window,
        **changes,
    )


def test_training_mines_the_false_positives_of_the_model(
    data_yaml: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Mining runs the EMA model as a Detector: with its answers fixed, the windows added
    are exactly those false positives', per training image."""
    fixed = FixedDetector([[0, 0, 6, 6], [40, 40, 52, 60]], [0.9, 0.8])
    monkeypatch.setattr(Detector, "detect", lambda self, images, **kw: fixed.detect(images, **kw))
    train(_options(data_yaml, tmp_path, epochs=2))
    printed = capsys.readouterr().out
    info_samples = 16
    want = [
        false_positive_windows(fixed, DatasetInfo(["x"], [s]), 0.5, 10)[0]
        for s in load_train_samples(data_yaml)
    ]
    rows = Checkpoint.load(tmp_path / "last.safetensors").metadata[HARD_NEGATIVES_KEY]
    expected = [[i, *map(int, w)] for i, ws in enumerate(want) for w in ws]
    assert rows == expected and len(rows) == sum(len(w) for w in want)
    assert f"{len(rows)} false positives (score >= 0.5) from" in printed
    assert f"of {info_samples} images added" in printed


def load_train_samples(data_yaml: Path) -> list[Sample]:
    from detector.data.formats import load_dataset

    return load_dataset(str(data_yaml), "train").samples


# --- end to end ----------------------------------------------------------------------


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == RESULTS_FIELDS
        return list(reader)


def _assert_states_equal(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{what} differ in {len(different)} tensors, e.g. {different[:3]}"


def test_cli_trains_resumes_evaluates_and_predicts(data_yaml: Path, tmp_path: Path, capsys) -> None:
    """3 epochs straight, and 2 + a resumed 1, with real mining (score threshold 0) after
    epoch 1: the resumed run restores the mined windows and ends bit-identical."""
    argv = ["train", "--kind", "sliding-window", "--data", str(data_yaml)]
    argv += ["--window", str(WINDOW), "--min-size", str(MIN_SIZE), "--imgsz", str(IMGSZ)]
    argv += ["--batch", str(BATCH), "--workers", "0", "--epochs", "3", "--device", "cpu"]
    argv += ["--fliplr", "0", "--hard-negative-epochs", "1", "--hard-negative-score", "0"]
    argv += ["--no-plots", "--quiet"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main([*argv, "--out", str(straight)]) == 0
    assert main([*argv, "--out", str(resumed), "--stop-after", "2"]) == 0
    assert [row["epoch"] for row in _rows(resumed)] == ["1", "2"]
    assert main([*argv, "--out", str(resumed), "--resume"]) == 0
    assert "hard negatives before epoch 2" in capsys.readouterr().out

    a = Checkpoint.load(straight / "last.safetensors")
    b = Checkpoint.load(resumed / "last.safetensors")
    assert a.kind == b.kind == "sliding-window" and isinstance(a.config, WindowConfig)
    assert a.config.input_size == IMGSZ and a.config.window == WINDOW
    assert (
        a.metadata[HARD_NEGATIVES_KEY]
        and a.metadata[HARD_NEGATIVES_KEY] == b.metadata[HARD_NEGATIVES_KEY]
    )
    _assert_states_equal(a.model_state, b.model_state, "raw weights")
    _assert_states_equal(a.ema_state, b.ema_state, "EMA weights")
    timing = ("images_per_s", "seconds")
    strip = [{k: v for k, v in r.items() if k not in timing} for r in _rows(straight)]
    assert strip == [{k: v for k, v in r.items() if k not in timing} for r in _rows(resumed)]
    assert all(r["obj"] == r["lmk"] == "0.00000" for r in _rows(straight))
    assert all(float(r["cls"]) > 0 for r in _rows(straight))

    best = straight / "best.safetensors"
    detector = Detector.load(best, device="cpu")
    assert detector.kind == "sliding-window" and detector.names == [str(i) for i in range(10)]
    eval_argv = ["eval", "--weights", str(best), "--data", str(data_yaml), "--device", "cpu"]
    assert main([*eval_argv, "--quiet"]) == 0
    images = data_yaml.parent / "images" / "val"
    predict_argv = ["predict", str(images), "--weights", str(best), "--device", "cpu"]
    assert main([*predict_argv, "--no-save", "--quiet"]) == 0


def test_window_flags_on_a_grid_run_and_crops_folder_errors(
    data_yaml: Path, tmp_path: Path, capsys
) -> None:
    argv = ["train", "--data", str(data_yaml), "--window", "32", "--negatives", "2"]
    assert main(argv) == 2
    assert "--window, --negatives apply to --kind sliding-window only" in capsys.readouterr().err
    grid_flags = ["--head", "coupled", "--mosaic", "0.5", "--model", "tiny"]  # tiny: the default
    grid_flags += ["--landmark-loss", "smooth-l1"]
    assert main(["train", "--data", str(data_yaml), "--kind", "sliding-window", *grid_flags]) == 2
    err = capsys.readouterr().err
    assert "--head, --mosaic, --landmark-loss apply to grid models only" in err
    assert "--model" not in err
    crops = tmp_path / "crops"
    (crops / "background").mkdir(parents=True)
    (crops / "a").mkdir()
    with pytest.raises(ValueError, match="crops folder"):
        train(replace(_options(crops, tmp_path / "run", 1), kind="grid"))


def test_crops_folder_scenes_give_random_and_mined_negative_windows(tmp_path: Path) -> None:
    """A background/ image of at least SCENE_WINDOWS windows is a whole scene: random
    negative windows each epoch plus its mined ones; a smaller one stays one crop; mining
    runs on the scenes only."""
    root = tmp_path / "crops"
    rng = np.random.default_rng(0)
    for folder, shapes in (("a", [(20, 20)] * 10), ("background", [(20, 30), (120, 100)])):
        (root / folder).mkdir(parents=True)
        for i, (h, w) in enumerate(shapes):
            image = rng.integers(0, 255, (h, w, 3), np.uint8)
            cv2.imwrite(str(root / folder / f"{i:02d}.png"), image)
    info = load_crop_folder(root, "train")
    scene = next(i for i, s in enumerate(info.samples) if s.width == 100)
    crop = next(i for i, s in enumerate(info.samples) if s.width == 30)
    assert is_scene(info.samples[scene], 24) and not is_scene(info.samples[crop], 24)
    assert not any(is_scene(s, 24) for s in info.samples if len(s.boxes))
    dataset = WindowCropDataset(
        info, 24, 64, 12.0, AugmentConfig(), negatives_per_positive=5, whole_images=True
    )
    assert mining_indices(dataset) == [scene]
    crops, targets, _ = dataset[scene]
    assert crops.shape == (5, 3, 24, 24) and (targets.labels == BACKGROUND).all()
    assert not targets.has_box.any()
    assert torch.equal(dataset[scene][0], crops)  # the same epoch: the same windows
    dataset.set_epoch(1)
    assert not torch.equal(dataset[scene][0], crops)  # another epoch: other windows
    assert len(dataset[crop][0]) == 1
    dataset.add_hard_negatives(scene, np.array([[10, 10, 40, 40]]))
    crops, targets, _ = dataset[scene]
    assert len(crops) == 6 and (targets.labels == BACKGROUND).all()
    box_data = WindowCropDataset(info, 24, 64, 12.0, AugmentConfig())
    assert mining_indices(box_data) == list(range(len(info.samples)))


def test_a_crops_folder_model_boxes_are_its_windows_and_gray_is_recorded(tmp_path: Path) -> None:
    root = tmp_path / "crops"
    rng = np.random.default_rng(1)
    for folder in ("a", "background"):
        (root / folder).mkdir(parents=True)
        for i in range(10):
            cv2.imwrite(
                str(root / folder / f"{i}.png"), rng.integers(0, 255, (24, 24, 3), np.uint8)
            )
    info = load_crop_folder(root)
    gray = WindowTrainConfig(window=24, min_size=0, grayscale=True)
    config = window_model_config(gray, info, 64, print, whole_crops=True)
    assert config.grayscale and not config.regress_boxes
    assert window_model_config(gray, info, 64, print).regress_boxes
    auto = window_model_config(WindowTrainConfig(window=24), info, 64, print, whole_crops=True)
    assert auto.min_size == 12.0  # not the crops' letterboxed side, 64
