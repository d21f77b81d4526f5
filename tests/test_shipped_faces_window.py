"""The shipped ``faces-window`` sliding-window model (skipped while
``weights/faces-window.safetensors`` is absent): on real photos it finds the astronaut's
face (``skimage.data.astronaut()``) and the cameraman's (``skimage.data.camera()``) with
IoU >= 0.5 to the boxes stated here, and reports nothing above the default score
threshold on the face-free photos held out of its training
(``detector.data.lfw_faces.HELD_OUT_PHOTOS``). None of these photos trained it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from detector.predict import MODEL_SUFFIX, WEIGHTS_DIR, Detector
from detector.settings import DetectOptions

pytest.importorskip("skimage")  # the photos are scikit-image's

MODEL = "faces-window"
MISSING = not (WEIGHTS_DIR / f"{MODEL}{MODEL_SUFFIX}").is_file()
pytestmark = [
    pytest.mark.skipif(MISSING, reason=f"weights/{MODEL}{MODEL_SUFFIX} is not there yet"),
    pytest.mark.usefixtures("one_torch_thread"),
]

MIN_IOU = 0.5  # the bar
# The faces, xyxy pixels, read off the photos by eye in the lfw_subset crops' framing
# (mid-forehead to chin, cheek to cheek; the cameraman's three-quarter face without his ear).
FACES = {
    "astronaut": (180.0, 70.0, 275.0, 165.0),
    "camera": (190.0, 115.0, 265.0, 200.0),
}


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector.load(WEIGHTS_DIR / f"{MODEL}{MODEL_SUFFIX}", device="cpu")


def test_shipped_faces_window_model_is_a_grey_sliding_window_face_model(detector) -> None:
    assert detector.kind == "sliding-window" and detector.names == ["face"]
    assert detector.config.grayscale and not detector.config.regress_boxes


@pytest.mark.parametrize("name", sorted(FACES))
def test_finds_the_face_in_a_real_photo(detector, name: str) -> None:
    from detector.data.photos import load_photo

    found = detector.detect([load_photo(name)])[0]  # the default threshold
    assert len(found) > 0, f"{name}: no face found"
    iou = box_iou(torch.tensor([FACES[name]]), torch.as_tensor(np.asarray(found.boxes)))[0]
    best = int(iou.argmax())
    assert float(iou[best]) >= MIN_IOU, (
        f"{name}: best IoU {float(iou[best]):.2f} ({found.boxes[best].round().tolist()}, "
        f"score {float(found.scores[best]):.2f})"
    )


def test_reports_nothing_on_held_out_face_free_photos(detector) -> None:
    from detector.data.lfw_faces import HELD_OUT_PHOTOS
    from detector.data.photos import load_photo

    threshold = DetectOptions().score_threshold
    reported = {}
    for name in HELD_OUT_PHOTOS:
        found = detector.detect([load_photo(name)])[0]
        if len(found):
            reported[name] = [
                (b.round().tolist(), round(float(s), 3))
                for b, s in zip(found.boxes, found.scores, strict=True)
            ]
    assert not reported, f"face-free photos with detections above {threshold}: {reported}"
