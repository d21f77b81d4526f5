"""The shipped ``digits-window`` sliding-window model (skipped while
``weights/digits-window.safetensors`` is absent): it is a sliding-window model of the ten
digits, finds large digits drawn on plain backgrounds (landscape and portrait) with the
right class and IoU >= 0.5, and ``detector serve`` serves it next to the grid ``digits``,
``ListModels`` naming its kind, with ``Detect`` and ``StreamDetect`` answering what the
model answers in process.
"""

from __future__ import annotations

import pytest
import torch
from digit_scenes import digit_scenes
from server_fixtures import assert_same, served_answers
from torchvision.ops import box_iou

from detector.predict import MODEL_SUFFIX, WEIGHTS_DIR, Detector

MODEL = "digits-window"
MISSING = not (WEIGHTS_DIR / f"{MODEL}{MODEL_SUFFIX}").is_file()
pytestmark = [
    pytest.mark.skipif(MISSING, reason=f"weights/{MODEL}{MODEL_SUFFIX} is not there yet"),
    pytest.mark.usefixtures("one_torch_thread"),
]

MIN_IOU = 0.5
SCORE = 0.25  # the default score threshold


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector.load(MODEL, device="cpu")


@pytest.fixture(scope="module")
def scenes():
    return digit_scenes()


def test_shipped_digits_window_is_a_sliding_window_digits_model(detector) -> None:
    assert detector.kind == "sliding-window"
    assert detector.names == [str(d) for d in range(10)]
    assert detector.config.regress_boxes  # trained on boxes: OverFeat's regression is used


def assert_digits_found(scenes, found, where: str) -> None:
    for (image, boxes, classes), det in zip(scenes, found, strict=True):
        assert det.image_size == image.shape[:2]
        for box, class_id in zip(boxes, classes, strict=True):
            same = det.class_ids == class_id
            assert same.any(), f"{where}: digit {class_id} at {box.round()} missed"
            iou = box_iou(torch.from_numpy(box[None]), torch.from_numpy(det.boxes[same]))
            assert iou.max() >= MIN_IOU, (
                f"{where}: digit {class_id} at {box.round()}: best IoU {iou.max():.2f}"
            )


def test_finds_digits_where_they_were_drawn(detector, scenes) -> None:
    found = detector.detect([s[0] for s in scenes], score_threshold=SCORE)
    assert_digits_found(scenes, found, "in process")


def test_the_service_serves_it_by_name_next_to_the_grid_digits(detector, scenes) -> None:
    from server.repository import ModelRepository

    repository = ModelRepository.from_folder(WEIGHTS_DIR, device="cpu")  # as `detector serve`
    images = [s[0] for s in scenes]
    unary, streamed, models = served_answers(repository, MODEL, images, SCORE, timeout=120)
    kinds = {m.name: m.kind for m in models}
    assert kinds["digits"] == "grid" and kinds[MODEL] == "sliding-window"
    local = detector.detect(images, score_threshold=SCORE)
    for want, one, many in zip(local, unary, streamed, strict=True):
        assert_same(one, want)
        assert_same(many, want)
    assert_digits_found(scenes, unary, "Detect")
