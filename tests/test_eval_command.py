"""``detector eval`` and ``detector info`` end to end on a tiny hand-made dataset."""

from __future__ import annotations

import contextlib
import io
import json

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.checkpoint import Checkpoint
from detector.cli import main
from detector.commands.eval import align_classes, class_warning
from detector.config import MODEL_SIZES, ModelConfig
from detector.data.formats import load_dataset, write_yolo
from detector.data.types import DatasetInfo, Sample
from detector.evaluate import SUMMARY_FIELDS
from detector.models.yolo import YOLODetector
from detector.predict import Detector
from detector.settings import EVAL_OPTIONS, Detections

INPUT_SIZE = 96
NUM_IMAGES = 6
OBJECTS_PER_IMAGE = 3
MIN_BOX, MAX_BOX = 10.0, 40.0  # box sides in pixels
DIGITS = tuple(str(d) for d in range(10))
TRAIN_COMMAND = "detector train --data digits --epochs 3"
SIZES_IMGSZ = "32"  # small input for a fast size table
JITTER_PX = 1.0  # std of the oracle's box noise: AP strictly between 0 and 1
WRONG_CLASS_RATE = 0.2  # share of the oracle's boxes given the next class
LOW_SCORE, HIGH_SCORE = 0.3, 1.0


def _checkpoint(path, names, metadata=None):
    config = ModelConfig(num_classes=len(names), input_size=INPUT_SIZE, class_names=tuple(names))
    model = YOLODetector(config)
    return Checkpoint(config, "grid", model.state_dict(), metadata=metadata or {}).save(path)


def _write_dataset(root, num_images: int, seed: int = 0):
    """A YOLO val split of noise images, each with a few labelled rectangles."""
    rng = np.random.default_rng(seed)
    source = root / "source"
    source.mkdir()
    samples = []
    for index in range(num_images):
        image = rng.integers(0, 256, (INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
        sides = rng.uniform(MIN_BOX, MAX_BOX, (OBJECTS_PER_IMAGE, 2))
        corners = rng.uniform(0, INPUT_SIZE - sides)
        boxes = np.concatenate([corners, corners + sides], axis=1).astype(np.float32)
        path = source / f"{index}.png"
        cv2.imwrite(str(path), image)
        classes = rng.integers(0, len(DIGITS), OBJECTS_PER_IMAGE)
        samples.append(Sample(path, INPUT_SIZE, INPUT_SIZE, boxes, classes))
    return write_yolo({"val": DatasetInfo(list(DIGITS), samples)}, root / "data")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A 6-image val split and a random-weights model with the same 10 class names."""
    root = tmp_path_factory.mktemp("eval")
    data = _write_dataset(root, NUM_IMAGES)
    metadata = {"command": TRAIN_COMMAND, "dataset_hash": "abc123", "epoch": 2}
    model = _checkpoint(root / "model.safetensors", DIGITS, metadata)
    return root, data, model


def _eval(capsys, weights, data, *extra):
    args = ["eval", "--weights", str(weights), "--data", str(data), "--device", "cpu", "--quiet"]
    code = main(args + [str(e) for e in extra])
    return code, capsys.readouterr()


def _score_files(gt_path, results_path) -> np.ndarray:
    """pycocotools' own summary of a results file against a ground-truth file."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        evaluator = COCOeval(gt, gt.loadRes(str(results_path)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def _as_number(value) -> float:
    return -1.0 if value is None else value  # pycocotools' "undefined"


class OracleDetector(Detector):
    """Jittered ground truth with some wrong classes and one false positive per image:
    an imperfect detector with known inputs. Answers samples in the split's order."""

    def __init__(self, samples, names):
        config = ModelConfig(num_classes=len(names), input_size=INPUT_SIZE, class_names=names)
        super().__init__(YOLODetector(config), config, torch.device("cpu"), name="oracle")
        self.queue = list(samples)
        self.rng = np.random.default_rng(0)

    def detect_letterboxed(self, letterboxed, letterboxes, options):
        return [self._answer(self.queue.pop(0)) for _ in letterboxes]

    def _answer(self, sample) -> Detections:
        limits = np.array([sample.width, sample.height] * 2, np.float32)
        boxes = sample.boxes + self.rng.normal(0, JITTER_PX, sample.boxes.shape)
        wrong = self.rng.random(len(boxes)) < WRONG_CLASS_RATE
        classes = np.where(wrong, (sample.classes + 1) % len(self.names), sample.classes)
        false_box = np.sort(self.rng.uniform(0, 1, (1, 4)) * limits).reshape(2, 2).T.reshape(1, 4)
        boxes = np.clip(np.concatenate([boxes, false_box]), 0, limits).astype(np.float32)
        classes = np.append(classes, 0).astype(np.int64)
        scores = self.rng.uniform(LOW_SCORE, HIGH_SCORE, len(boxes)).astype(np.float32)
        order = np.argsort(-scores)
        return Detections(
            boxes[order],
            scores[order],
            classes[order],
            [self.names[c] for c in classes[order]],
            None,
            (sample.height, sample.width),
        )


def test_eval_end_to_end_on_a_random_model(workspace, capsys):
    root, data, model = workspace
    metrics, preds, plots = root / "m.json", root / "preds.json", root / "plots"
    code, captured = _eval(
        capsys, model, data, "--json", metrics, "--save-predictions", preds, "--plots", plots
    )
    assert code == 0, captured.err
    assert "AP50" in captured.out and "class" in captured.out
    assert all(f"\n{name} " in captured.out for name in DIGITS)
    assert "warning" not in captured.err
    record = json.loads(metrics.read_text())
    for key in (*SUMMARY_FIELDS, "per_class_ap", "per_class_ap50", "num_predictions"):
        assert key in record
    assert set(record["per_class_ap"]) == set(DIGITS)
    assert record["num_images"] == len(load_dataset(data, "val").samples)
    gt = root / "preds.gt.json"
    assert str(gt) in captured.out
    stats = _score_files(gt, preds)
    assert stats[0] == pytest.approx(_as_number(record["ap"]), abs=1e-12)
    assert {p.name for p in plots.iterdir()} == {"pr_curve.png", "val_predictions.png"}
    assert record["merge_iou"] == EVAL_OPTIONS.merge_iou > 0  # merge-NMS on by default
    unmerged = root / "unmerged.json"
    code, captured = _eval(capsys, model, data, "--json", unmerged, "--merge-iou", "0")
    assert code == 0, captured.err
    assert json.loads(unmerged.read_text())["merge_iou"] == 0


def test_saved_predictions_score_the_same_in_pycocotools(workspace, capsys, monkeypatch):
    root, data, model = workspace
    info = load_dataset(data, "val")
    oracle = OracleDetector(info.samples, DIGITS)
    monkeypatch.setattr(Detector, "load", classmethod(lambda cls, *args, **kwargs: oracle))
    metrics, preds = root / "oracle.json", root / "oracle_preds.json"
    code, captured = _eval(capsys, model, data, "--json", metrics, "--save-predictions", preds)
    assert code == 0, captured.err
    record = json.loads(metrics.read_text())
    assert 0 < record["ap"] < record["ap50"] <= 1
    stats = _score_files(root / "oracle_preds.gt.json", preds)
    for index, field in enumerate(SUMMARY_FIELDS):
        assert stats[index] == pytest.approx(_as_number(record[field]), abs=1e-12), field
    gt = json.loads((root / "oracle_preds.gt.json").read_text())
    assert [image["id"] for image in gt["images"]] == list(range(1, len(info.samples) + 1))
    assert all((root / image["file_name"]).is_file() for image in gt["images"])


def test_class_alignment_rules():
    assert align_classes(["a", "b"], ["a", "b"]) == [0, 1]
    assert align_classes(["b", "x", "a"], ["a", "b", "c"]) == [1, None, 0]
    assert align_classes(["p", "q"], ["a", "b"]) == [0, 1]
    with pytest.raises(ValueError, match="share no name"):
        align_classes(["p"], ["a", "b"])
    assert class_warning(["a", "b"], ["a", "b"], [0, 1]) is None
    warning = class_warning(["b", "x", "a"], ["a", "b", "c"], [1, None, 0])
    assert "['x']" in warning and "['c']" in warning


def test_eval_warns_and_matches_classes_by_name(workspace, capsys):
    root, data, _ = workspace
    model = _checkpoint(root / "partial.safetensors", ("0", "1", "extra"))
    metrics, preds = root / "partial.json", root / "partial_preds.json"
    code, captured = _eval(capsys, model, data, "--json", metrics, "--save-predictions", preds)
    assert code == 0, captured.err
    assert "warning" in captured.err and "extra" in captured.err
    record = json.loads(metrics.read_text())
    assert record["per_class_ap"]["extra"] is None  # no ground truth behind it
    assert set(DIGITS) <= set(record["per_class_ap"])
    categories = {
        c["id"] for c in json.loads((root / "partial_preds.gt.json").read_text())["categories"]
    }
    assert {p["category_id"] for p in json.loads(preds.read_text())} <= categories


def test_eval_errors_are_short_messages(workspace, capsys):
    root, data, model = workspace
    other = _checkpoint(root / "other.safetensors", ("p", "q"))
    code, captured = _eval(capsys, other, data)
    assert code == 2 and captured.err.startswith("error:") and "share no name" in captured.err
    code, captured = _eval(capsys, root / "missing.safetensors", data)
    assert code == 2 and "missing.safetensors" in captured.err
    code, captured = _eval(capsys, model, root / "nowhere.yaml")
    assert code == 2 and "nowhere.yaml" in captured.err


def test_info_lists_every_model_size(capsys):
    assert main(["info", "--imgsz", SIZES_IMGSZ]) == 0
    out = capsys.readouterr().out
    assert "GFLOPs" in out
    for name in MODEL_SIZES:
        assert f"\n{name} " in out


def test_info_describes_a_model_file(workspace, capsys):
    _, _, model = workspace
    assert main(["info", "--weights", str(model)]) == 0
    out = capsys.readouterr().out
    assert ", ".join(DIGITS) in out
    assert f"{INPUT_SIZE}x{INPUT_SIZE}" in out
    assert TRAIN_COMMAND in out and "abc123" in out
    assert "saved after epoch: 3\n" in out and "best epoch: not recorded" in out
    assert "epochs run: at least 3 " in out  # weights only: later epochs are not in the file
    assert main(["info", "--weights", str(model), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["kind"] == "grid" and record["model"]["class_names"] == list(DIGITS)
    assert main(["info", "--weights", "no-such-model"]) == 2
    assert "no-such-model" in capsys.readouterr().err


def test_info_counts_parameters_and_flops_of_a_landmark_model(tmp_path, capsys):
    from detector.models.yolo import count_parameters

    config = ModelConfig(num_classes=1, input_size=INPUT_SIZE, num_landmarks=5)
    model = YOLODetector(config)
    path = Checkpoint(config, "landmark", model.state_dict()).save(tmp_path / "f.safetensors")
    assert main(["info", "--weights", str(path)]) == 0
    out = capsys.readouterr().out
    assert "kind: landmark" in out and "GFLOPs: " in out
    assert f"parameters: {count_parameters(model) / 1e6:.2f} M" in out


def test_info_describes_a_sliding_window_model_file(tmp_path, capsys):
    """A window model has no size, strides or anchors: info says its window and pyramid
    (it used to fail on ``config.size``, and --json on ``config.anchors``)."""
    from detector.models.window import WindowConfig
    from detector.window_pyramid import WindowDetector

    config = WindowConfig(num_classes=2, input_size=64, grayscale=True, class_names=("a", "b"))
    state = WindowDetector(config).state_dict()
    path = Checkpoint(config, "sliding-window", state).save(tmp_path / "w.safetensors")
    assert main(["info", "--weights", str(path)]) == 0
    out = capsys.readouterr().out
    assert "kind: sliding-window" in out and "classes: 2: a, b" in out
    assert f"window: 32x32, stride {config.stride}" in out and "read as luminance" in out
    assert "stored weight values: " in out and "anchors" not in out
    assert main(["info", "--weights", str(path), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["kind"] == "sliding-window" and record["model"] == json.loads(
        json.dumps(config.to_dict())
    )


def test_info_tells_epochs_run_from_the_best_epoch_and_rounds_anchors(tmp_path, capsys):
    anchors = (((10.0, 13.0),), ((30.0, 61.0),), ((70.0, 103.00000762939453),))
    config = ModelConfig(num_classes=2, input_size=INPUT_SIZE, anchors=anchors)
    model = YOLODetector(config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    metadata = {
        "epoch": 11,
        "stale_epochs": 3,
        "train_config": {"epochs": 50},
        "metrics": {"ap": 0.5, "ap50": 0.75},
    }
    state = model.state_dict()
    last = Checkpoint(config, "grid", state, state, optimizer.state_dict(), metadata)
    last_path = last.save(tmp_path / "last.safetensors")
    assert main(["info", "--weights", str(last_path)]) == 0
    out = capsys.readouterr().out
    assert "saved after epoch: 12 of 50 planned" in out
    assert "epochs run: 12 " in out
    assert "best epoch: 9 (3 epochs without improvement since" in out
    assert "validation metrics (epoch 12): ap 0.5000  ap50 0.7500" in out
    assert "stride 32: [(70.0, 103.0)]" in out and "103.0000" not in out

    best_meta = metadata | {"epoch": 8, "stale_epochs": 0}
    best_path = Checkpoint(config, "grid", state, metadata=best_meta).save(
        tmp_path / "b.safetensors"
    )
    assert main(["info", "--weights", str(best_path)]) == 0
    out = capsys.readouterr().out
    assert "best epoch: 9 (the weights in this file)" in out
    assert "epochs run: at least 9 " in out

    assert main(["info", "--weights", str(best_path), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["model"]["anchors"][2] == [[70.0, 103.0]]  # numbers, float32 noise gone
    assert record["epoch"] == 8  # the metadata itself, unchanged
