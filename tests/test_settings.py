"""Detection settings: the one validation, class filters, and the result type."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from detector.settings import (
    DEFAULT_OPTIONS,
    EVAL_OPTIONS,
    Detections,
    DetectOptions,
    as_rgb_image,
    class_ids,
    options_of,
)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"score_threshold": 1.5}, "score_threshold must be in"),
        ({"score_threshold": -0.01}, "score_threshold must be in"),
        ({"score_threshold": math.nan}, "score_threshold must be in"),
        ({"score_threshold": "0.5"}, "score_threshold must be in"),
        ({"iou_threshold": 1.01}, "iou_threshold must be in"),
        ({"iou_threshold": None}, "iou_threshold must be in"),
        ({"max_detections": 0}, "max_detections must be >= 1"),
        ({"max_detections": 2.5}, "max_detections must be an integer"),
        ({"max_detections": True}, "max_detections must be an integer"),
    ],
)
def test_bad_options_are_value_errors_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DetectOptions(**kwargs)


def test_edges_and_numpy_numbers_are_accepted():
    options = DetectOptions(np.float32(0.0), 1, np.int64(1), ["a", 2])
    assert options.classes == ("a", 2)  # stored as a tuple: options stay hashable
    assert hash(options) == hash(DetectOptions(0.0, 1.0, 1, ("a", 2)))


def test_defaults_and_changes():
    assert DetectOptions() == DEFAULT_OPTIONS
    assert EVAL_OPTIONS.score_threshold < DEFAULT_OPTIONS.score_threshold
    changed = options_of(score_threshold=0.5, iou_threshold=None, max_detections=7)
    assert changed == DetectOptions(0.5, DEFAULT_OPTIONS.iou_threshold, 7)
    assert options_of(EVAL_OPTIONS) == EVAL_OPTIONS
    with pytest.raises(ValueError, match="score_threshold"):
        options_of(score_threshold=2.0)
    with pytest.raises(TypeError, match="by keyword"):
        options_of(0.5)  # a threshold passed where the options go


def test_class_filter_by_id_name_or_digit_string():
    names = ["cat", "dog", "7"]
    assert class_ids(None, names) is None
    assert class_ids([1, "cat", "1", 1], names) == (0, 1)  # sorted, unique
    assert class_ids(["7"], names) == (2,)  # a name made of digits is a name
    with pytest.raises(ValueError, match="unknown class 'horse'"):
        class_ids(["horse"], names)
    with pytest.raises(ValueError, match=r"class id 3 is outside \[0, 3\)"):
        class_ids([3], names)
    with pytest.raises(ValueError, match=r"class id -1 is outside"):
        class_ids([-1], names)


def test_input_images_are_checked_and_brought_to_rgb():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert (as_rgb_image(gray) == np.repeat(gray[:, :, None], 3, 2)).all()
    rgba = np.zeros((2, 2, 4), np.uint8)
    assert as_rgb_image(rgba).shape == (2, 2, 3)
    with pytest.raises(ValueError, match="frame must be uint8"):
        as_rgb_image(np.zeros((2, 2, 3), np.float32), "frame")
    with pytest.raises(ValueError, match="empty"):
        as_rgb_image(np.zeros((0, 2, 3), np.uint8))


def test_detections_to_json():
    det = Detections(
        boxes=np.array([[1.234, 2, 3, 4]], np.float32),
        scores=np.array([0.98761], np.float32),
        class_ids=np.array([1]),
        labels=["dog"],
        landmarks=np.array([[[5.551, 6, 1]]], np.float32),
        image_size=(10, 20),
    )
    assert json.loads(det.to_json()) == {
        "image_size": [10, 20],
        "detections": [
            {
                "box": [1.23, 2.0, 3.0, 4.0],
                "score": 0.9876,
                "class_id": 1,
                "label": "dog",
                "landmarks": [[5.55, 6.0]],
            }
        ],
    }
