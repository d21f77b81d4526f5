"""Keypoint metrics: perfect predictions, a known shift, the normaliser, undefined cases."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from detector.data.types import Sample
from detector.keypoint_metrics import (
    BOX_DIAGONAL,
    FACE5_SIGMAS,
    INTER_OCULAR,
    UNIFORM_SIGMA,
    default_sigmas,
    keypoint_metrics,
)

# Two faces: eyes 40 px apart in the first, 20 px in the second (whose right mouth corner
# is unlabelled).
BOXES = np.array([[100, 100, 200, 220], [300, 50, 350, 110]], np.float32)
POINTS = np.array(
    [
        [[130, 150, 2], [170, 150, 2], [150, 175, 2], [135, 195, 2], [165, 195, 2]],
        [[315, 70, 2], [335, 70, 2], [325, 85, 2], [318, 95, 2], [0, 0, 0]],
    ],
    np.float32,
)
CLASSES = np.array([0, 0])


def _sample(points=POINTS) -> Sample:
    return Sample(Path("a.png"), 400, 300, BOXES, CLASSES, points)


def _prediction(points=POINTS, boxes=BOXES):
    return (boxes, np.array([0.9, 0.8]), CLASSES, points[..., :2])


def test_perfect_predictions_give_ap_one_and_nme_zero() -> None:
    result = keypoint_metrics([_sample()], [_prediction()], num_classes=1)
    assert (result.ap, result.ap50, result.ap75) == pytest.approx((1.0, 1.0, 1.0))
    assert result.nme == 0.0
    assert result.normaliser == INTER_OCULAR
    assert result.sigmas == FACE5_SIGMAS
    assert (result.num_points, result.num_matched, result.num_unmatched) == (9, 2, 0)


def test_known_shift_gives_the_hand_computed_nme() -> None:
    shifted = POINTS.copy()
    shifted[..., 0] += 3.0
    shifted[..., 1] += 4.0  # every point 5 px off
    result = keypoint_metrics([_sample()], [_prediction(shifted)], num_classes=1)
    # face 1: 5 points of 5/40; face 2: 4 labelled points of 5/20
    expected = (5 * 5 / 40 + 4 * 5 / 20) / 9
    assert result.nme == pytest.approx(expected)
    assert result.ap < 1.0

    names = ["a", "b", "c", "d", "e"]  # no eyes: box diagonal
    by_box = keypoint_metrics([_sample()], [_prediction(shifted)], 1, keypoint_names=names)
    d1, d2 = math.hypot(100, 120), math.hypot(50, 60)
    assert by_box.normaliser == BOX_DIAGONAL
    assert by_box.nme == pytest.approx((5 * 5 / d1 + 4 * 5 / d2) / 9)
    assert by_box.sigmas == (UNIFORM_SIGMA,) * 5


def test_unmatched_and_eyeless_objects_are_counted_not_scored() -> None:
    points = POINTS.copy()
    points[1, 0] = 0  # second face: left eye unlabelled, no inter-ocular distance
    far = BOXES + np.array([0, 0, 0, 0], np.float32)
    far[0] += 1000  # first face: the detection is elsewhere
    result = keypoint_metrics([_sample(points)], [_prediction(points, far)], num_classes=1)
    assert (result.num_matched, result.num_unmatched, result.num_without_norm) == (1, 1, 1)
    assert math.isnan(result.nme) and result.num_points == 0
    assert result.to_dict()["nme"] is None


def test_sigmas_from_the_caller_and_defaults() -> None:
    result = keypoint_metrics([_sample()], [_prediction()], 1, sigmas=[0.1] * 5)
    assert result.sigmas == (0.1,) * 5
    assert default_sigmas(2) == (UNIFORM_SIGMA,) * 2
    with pytest.raises(ValueError, match="sigmas"):
        keypoint_metrics([_sample()], [_prediction()], 1, sigmas=[0.1] * 3)


def test_no_predictions_score_zero() -> None:
    empty = (np.zeros((0, 4)), np.zeros(0), np.zeros(0), np.zeros((0, 5, 2)))
    result = keypoint_metrics([_sample()], [empty], num_classes=1)
    assert result.ap == 0.0 and result.num_unmatched == 2 and math.isnan(result.nme)


# --- through `detector eval` on a generated faces split ----------------------------------


class LandmarkOracle:
    """Answers each sample of the split, in order, with its ground truth (boxes, classes)
    and its landmarks moved by ``shift`` pixels."""

    def __init__(self, samples, shift):
        from detector.config import ModelConfig

        self.config = ModelConfig(1, input_size=96, num_landmarks=5, class_names=("face",))
        self.names, self.kind, self.name, self.device = ("face",), "landmark", "oracle", "cpu"
        self.queue, self.shift = list(samples), np.asarray(shift, np.float32)

    def preprocess(self, image):
        return image, None  # postprocess answers from the ground truth, in original pixels

    def detect_letterboxed(self, letterboxed, letterboxes, options):
        from detector.settings import Detections

        out = []
        for _ in letterboxes:
            s = self.queue.pop(0)
            points = s.landmarks.copy()
            points[..., :2] += self.shift
            points[..., 2] = 1.0
            n = len(s.boxes)
            scores = np.linspace(0.9, 0.5, n).astype(np.float32)
            out.append(
                Detections(s.boxes, scores, s.classes, ["face"] * n, points, (s.height, s.width))
            )
        return out


@pytest.mark.parametrize("shift", [(0.0, 0.0), (3.0, 4.0)])
def test_eval_reports_keypoint_metrics_for_a_landmark_model(tmp_path, capsys, monkeypatch, shift):
    import json

    from detector.cli import main
    from detector.data.formats import load_dataset
    from detector.predict import Detector

    pytest.importorskip("skimage")
    data = tmp_path / "faces"
    argv = ["synth", "faces", "--out", str(data), "--train", "0", "--val", "4", "--imgsz", "96"]
    assert main([*argv, "--quiet"]) == 0
    info = load_dataset(str(data / "data.yaml"), "val")
    oracle = LandmarkOracle(info.samples, shift)
    monkeypatch.setattr(Detector, "load", classmethod(lambda cls, *a, **k: oracle))
    metrics = tmp_path / "m.json"
    weights = tmp_path / "oracle.safetensors"  # exists; Detector.load is the oracle
    weights.touch()
    argv = ["eval", "--weights", str(weights), "--data", str(data / "data.yaml"), "--device", "cpu"]
    assert main([*argv, "--quiet", "--json", str(metrics)]) == 0
    printed = capsys.readouterr().out
    assert "COCO keypoints" in printed and "inter-ocular distance" in printed
    record = json.loads(metrics.read_text())["keypoints"]
    assert record["nme_normaliser"] == INTER_OCULAR
    assert record["sigmas"] == list(FACE5_SIGMAS)
    errors = []
    for s in info.samples:
        for kp in s.landmarks:
            if (kp[:2, 2] > 0).all():
                iod = np.linalg.norm(kp[0, :2] - kp[1, :2])
                errors += [math.hypot(*shift) / iod] * int((kp[:, 2] > 0).sum())
    assert record["nme"] == pytest.approx(np.mean(errors), rel=1e-4)
    assert record["num_points"] == len(errors) > 0
    if shift == (0.0, 0.0):
        assert record["ap"] == pytest.approx(1.0) and record["nme"] == 0.0
    else:
        assert record["ap"] < 1.0
