"""``Detector``: batching, the letterbox map back to each image, filters, errors, devices.

Most tests use a small model with random weights (64-pixel input, 3 classes); its head
is re-initialised with larger weights so that scores depend on the image. Tests that
need a trained model use the shipped ``digits`` model and skip while it is missing.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from digit_scenes import digit_scenes

from detector import predict
from detector.boxes import LETTERBOX_PAD_VALUE, box_iou, minimal_input_size
from detector.checkpoint import Checkpoint
from detector.config import ModelConfig
from detector.device import resolve_device
from detector.encoding import CLS, OBJ
from detector.models.yolo import YOLODetector
from detector.predict import Detector
from detector.settings import Detections, DetectOptions

INPUT = 64  # side of the random model's input
NAMES = ("cat", "dog", "bird")
HEAD_STD = 0.3  # std of the re-initialised head weights: scores that vary with the image
LOW_SCORE = 0.05  # score threshold for the random model: tens of detections per image
LANDMARKS = 5
BLOCK = 4  # pixel block side of the test images
MIN_DEVICE_IOU = 0.7  # CPU float32 vs CUDA bfloat16: a detection's twin overlaps this much
MAX_DEVICE_SCORE_GAP = 0.1  # and scores within this
SHIPPED = "digits"
SHIPPED_MISSING = not (predict.WEIGHTS_DIR / f"{SHIPPED}{predict.MODEL_SUFFIX}").is_file()
needs_shipped = pytest.mark.skipif(
    SHIPPED_MISSING, reason=f"shipped model weights/{SHIPPED}.safetensors is not there yet"
)


def random_checkpoint(num_landmarks: int = 0, seed: int = 0) -> Checkpoint:
    """A 3-class, 64-pixel grid model with random weights and an image-dependent head."""
    torch.manual_seed(seed)
    config = ModelConfig(
        num_classes=len(NAMES), input_size=INPUT, class_names=NAMES, num_landmarks=num_landmarks
    )
    model = YOLODetector(config)
    with torch.no_grad():
        for head in model.heads:
            torch.nn.init.normal_(head.weight, std=HEAD_STD)
            bias = head.bias.view(config.num_anchors, config.num_outputs)  # (A, D)
            bias[:, OBJ] = 0.0
            bias[:, CLS : CLS + config.num_classes] = 0.0
    return Checkpoint(config, "grid", model.state_dict())


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return random_checkpoint().save(tmp_path_factory.mktemp("model") / "random.safetensors")


@pytest.fixture(scope="module")
def detector(model_path) -> Detector:
    return Detector.load(model_path, device="cpu")


@pytest.fixture(scope="module")
def landmark_detector(tmp_path_factory) -> Detector:
    """The random model's twin with ``LANDMARKS`` points per detection."""
    folder = tmp_path_factory.mktemp("landmark_model")
    path = random_checkpoint(num_landmarks=LANDMARKS).save(folder / "faces.safetensors")
    return Detector.load(path, device="cpu")


def noise(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """An ``(H, W, C)`` uint8 image of random 4x4-pixel blocks, so the network sees structure."""
    rng = np.random.default_rng(seed)
    height, width, channels = shape
    coarse = rng.integers(0, 256, (-(-height // BLOCK), -(-width // BLOCK), channels), np.uint8)
    image = np.repeat(np.repeat(coarse, BLOCK, axis=0), BLOCK, axis=1)
    return np.ascontiguousarray(image[:height, :width])


def mixed_images() -> list[np.ndarray]:
    """Landscape, portrait, a thin strip, a square and a larger-than-input image."""
    sizes = [(40, 64), (64, 40), (17, 90), (64, 64), (120, 200)]
    return [noise((h, w, 3), seed) for seed, (h, w) in enumerate(sizes)]


def assert_same(a: Detections, b: Detections, atol: float = 1e-3) -> None:
    assert a.image_size == b.image_size
    assert len(a) == len(b)
    np.testing.assert_array_equal(a.class_ids, b.class_ids)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=atol)
    np.testing.assert_allclose(a.scores, b.scores, atol=atol)
    assert a.labels == b.labels


def assert_typed(det: Detections, num_landmarks: int = 0) -> None:
    """The documented shapes and dtypes, whatever the number of detections."""
    n = len(det)
    assert det.boxes.shape == (n, 4) and det.boxes.dtype == np.float32
    assert det.scores.shape == (n,) and det.scores.dtype == np.float32
    assert det.class_ids.shape == (n,) and det.class_ids.dtype == np.int64
    assert len(det.labels) == n
    if num_landmarks:
        assert det.landmarks.shape == (n, num_landmarks, 3)
        assert det.landmarks.dtype == np.float32
    else:
        assert det.landmarks is None


# Batching and the map back to each image's pixels.


def test_mixed_size_batch_equals_one_at_a_time(detector):
    images = mixed_images()
    batched = detector.detect(images, score_threshold=LOW_SCORE)
    assert len(batched) == len(images)
    assert sum(len(d) for d in batched) > 0, "the random model should detect something"
    for image, det in zip(images, batched, strict=True):
        assert_same(det, detector.detect([image], score_threshold=LOW_SCORE)[0])
        assert det.image_size == image.shape[:2]
        assert_typed(det)


def test_boxes_lie_in_their_image_and_scores_decrease(detector):
    for image, det in zip(
        mixed_images(), detector.detect(mixed_images(), score_threshold=LOW_SCORE), strict=True
    ):
        h, w = image.shape[:2]
        assert (det.boxes[:, [0, 2]] >= 0).all() and (det.boxes[:, [0, 2]] <= w).all()
        assert (det.boxes[:, [1, 3]] >= 0).all() and (det.boxes[:, [1, 3]] <= h).all()
        assert (det.boxes[:, 2:] >= det.boxes[:, :2]).all()
        assert (np.diff(det.scores) <= 0).all()
        assert (det.scores > LOW_SCORE).all()


@pytest.mark.parametrize("landmarks", [False, True])
@pytest.mark.parametrize("orientation", ["landscape", "portrait"])
def test_padded_and_scaled_copies_map_to_consistent_boxes(
    request, orientation, landmarks, monkeypatch
):
    """Three images the square letterbox turns into the same network input.

    ``small`` (32x64 or 64x32) is padded by the letterbox; ``square`` is ``small``
    already padded with the letterbox grey; ``double`` is ``small`` at twice the size
    (the area-average shrink gives ``small`` back exactly). Their boxes, and a landmark
    model's points (never clipped), must agree through the known offset and scale.
    """
    detector = request.getfixturevalue("landmark_detector" if landmarks else "detector")
    monkeypatch.setattr(detector, "pad_to_square", True)
    long_side, short_side = INPUT, INPUT // 2
    shape = (short_side, long_side) if orientation == "landscape" else (long_side, short_side)
    small = noise((*shape, 3), seed=7)
    offset = (INPUT - short_side) // 2
    pad_y, pad_x = (offset, 0) if orientation == "landscape" else (0, offset)
    square = np.full((INPUT, INPUT, 3), LETTERBOX_PAD_VALUE, np.uint8)
    square[pad_y : pad_y + shape[0], pad_x : pad_x + shape[1]] = small
    double = np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)

    det_small, det_square, det_double = detector.detect(
        [small, square, double], score_threshold=LOW_SCORE
    )
    assert len(det_small) > 0
    # The square's boxes, clipped to where small's content lies, shifted back.
    shifted = det_square.boxes.copy()
    shifted[:, [0, 2]] = shifted[:, [0, 2]].clip(pad_x, pad_x + shape[1]) - pad_x
    shifted[:, [1, 3]] = shifted[:, [1, 3]].clip(pad_y, pad_y + shape[0]) - pad_y
    np.testing.assert_allclose(shifted, det_small.boxes, atol=1e-3)
    np.testing.assert_array_equal(det_square.class_ids, det_small.class_ids)
    np.testing.assert_allclose(det_double.boxes, det_small.boxes * 2, atol=1e-3)
    np.testing.assert_allclose(det_double.scores, det_small.scores, atol=1e-5)
    assert det_double.image_size == (shape[0] * 2, shape[1] * 2)
    if landmarks:
        points = det_small.landmarks[..., :2]
        shifted_points = det_square.landmarks[..., :2] - np.array([pad_x, pad_y], np.float32)
        np.testing.assert_allclose(shifted_points, points, atol=1e-3)
        np.testing.assert_allclose(det_double.landmarks[..., :2], points * 2, atol=1e-3)


@pytest.mark.parametrize("shape", [(30, 64), (64, 30), (50, 130), (130, 50), (64, 64)])
def test_landmarks_map_back_to_original_pixels_exactly(landmark_detector, shape):
    """Known points placed into the letterboxed input by the image's own map come back
    out of ``postprocess`` at their original pixels, whatever the padding and scale."""
    from detector.postprocess import Candidates

    height, width = shape
    _, lb = landmark_detector.preprocess(noise((height, width, 3), 1))
    corners = [(0.0, 0.0), (width, 0.0), (0.0, height), (width, height)]
    original = np.array([*corners, (width / 3, height * 0.7)], np.float32)  # (K, 2)
    box = np.array([1.0, 2.0, width - 3.0, height - 1.0], np.float32)
    scale = np.array([lb.scale_x, lb.scale_y], np.float32)
    pad = np.array([lb.pad_x, lb.pad_y], np.float32)
    in_input = original * scale + pad
    box_in = (box.reshape(2, 2) * scale + pad).reshape(4)
    candidates = Candidates(
        boxes=torch.from_numpy(box_in)[None, None],  # (B=1, P=1, 4)
        scores=torch.ones(1, 1),
        class_ids=torch.tensor([[1]]),  # (1, 1): one "dog"
        landmarks=torch.from_numpy(in_input)[None, None],  # (1, 1, K, 2)
    )
    (det,) = landmark_detector.postprocess(candidates, [lb], DetectOptions(score_threshold=0.5))
    assert det.labels == ["dog"] and det.image_size == shape
    np.testing.assert_allclose(det.boxes[0], box, atol=1e-4)
    np.testing.assert_allclose(det.landmarks[0, :, :2], original, atol=1e-4)
    assert det.to_dict()["detections"][0]["landmarks"] == [
        [round(float(x), 2), round(float(y), 2)] for x, y in original
    ]


@pytest.mark.parametrize("orientation", ["landscape", "portrait"])
def test_minimal_padding_maps_boxes_back_exactly(detector, orientation):
    """Minimal padding: a 20x64 image becomes a 32x64 input (6 grey rows above, 6
    below), not 64x64. The same content already padded by hand, and the image at twice
    the size, give the same input, so their boxes agree through the offset and scale."""
    short, padded = 20, 32
    shape = (short, INPUT) if orientation == "landscape" else (INPUT, short)
    small = noise((*shape, 3), seed=8)
    letterboxed, lb = detector.preprocess(small)
    expected_shape = (padded, INPUT) if orientation == "landscape" else (INPUT, padded)
    assert letterboxed.shape[:2] == expected_shape and lb.input_size == expected_shape
    offset = (padded - short) // 2
    pad_y, pad_x = (offset, 0) if orientation == "landscape" else (0, offset)
    by_hand = np.full((*expected_shape, 3), LETTERBOX_PAD_VALUE, np.uint8)
    by_hand[pad_y : pad_y + shape[0], pad_x : pad_x + shape[1]] = small
    np.testing.assert_array_equal(letterboxed, by_hand)
    double = np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)
    det_small, det_hand, det_double = detector.detect(
        [small, by_hand, double], score_threshold=LOW_SCORE
    )
    assert len(det_small) > 0
    shifted = det_hand.boxes.copy()
    shifted[:, [0, 2]] = shifted[:, [0, 2]].clip(pad_x, pad_x + shape[1]) - pad_x
    shifted[:, [1, 3]] = shifted[:, [1, 3]].clip(pad_y, pad_y + shape[0]) - pad_y
    np.testing.assert_allclose(shifted, det_small.boxes, atol=1e-3)
    np.testing.assert_allclose(det_double.boxes, det_small.boxes * 2, atol=1e-3)
    np.testing.assert_allclose(det_double.scores, det_small.scores, atol=1e-5)


def test_minimal_input_sizes():
    assert minimal_input_size((480, 640), 320, 32) == (256, 320)  # not 320x320
    assert minimal_input_size((640, 480), 320, 32) == (320, 256)
    assert minimal_input_size((100, 100), 320, 32) == (320, 320)
    assert minimal_input_size((1080, 1920), 640, 32) == (384, 640)  # 360 -> 384
    with pytest.raises(ValueError, match="multiple of 32"):
        minimal_input_size((10, 10), 100, 32)


# Filters and thresholds.


def test_class_filter_equals_filtering_the_unfiltered_output(detector):
    images = mixed_images()
    everything = detector.detect(images, score_threshold=LOW_SCORE)
    for classes, ids in (([1], [1]), (["cat", "bird"], [0, 2]), ([np.int64(2), "dog"], [1, 2])):
        filtered = detector.detect(images, score_threshold=LOW_SCORE, classes=classes)
        for full, det in zip(everything, filtered, strict=True):
            keep = np.isin(full.class_ids, ids)
            assert set(det.class_ids.tolist()) <= set(ids)
            np.testing.assert_array_equal(det.class_ids, full.class_ids[keep])
            np.testing.assert_allclose(det.boxes, full.boxes[keep], atol=1e-5)
            np.testing.assert_allclose(det.scores, full.scores[keep], atol=1e-6)
    assert any(np.isin(d.class_ids, [1]).any() for d in everything), "filter test is vacuous"


def test_class_filter_rejects_unknown_classes(detector):
    with pytest.raises(ValueError, match="unknown class 'horse'"):
        detector.detect([noise((8, 8, 3), 0)], classes=["horse"])
    with pytest.raises(ValueError, match=r"class id 3 is outside \[0, 3\)"):
        detector.detect([noise((8, 8, 3), 0)], classes=[3])


def test_max_detections_keeps_the_best(detector):
    image = [noise((64, 64, 3), 3)]
    everything = detector.detect(image, score_threshold=LOW_SCORE)[0]
    assert len(everything) > 2
    top = detector.detect(image, score_threshold=LOW_SCORE, max_detections=2)[0]
    np.testing.assert_allclose(top.boxes, everything.boxes[:2], atol=1e-5)
    np.testing.assert_allclose(top.scores, everything.scores[:2])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"score_threshold": -0.1},
        {"score_threshold": 1.5},
        {"score_threshold": math.nan},
        {"iou_threshold": -0.01},
        {"iou_threshold": 1.01},
        {"max_detections": 0},
    ],
)
def test_bad_thresholds_are_value_errors(detector, kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        detector.detect([noise((8, 8, 3), 0)], **kwargs)
    with pytest.raises(ValueError, match=name):
        detector.detect([], **kwargs)


def test_threshold_bounds_are_allowed(detector):
    image = [noise((32, 32, 3), 1)]
    assert len(detector.detect(image, score_threshold=1.0)[0]) == 0
    one_per_class = detector.detect(image, score_threshold=LOW_SCORE, iou_threshold=0.0)[0]
    everything = detector.detect(image, score_threshold=LOW_SCORE, iou_threshold=1.0)[0]
    assert len(everything) > len(one_per_class) > 0
    assert len(set(one_per_class.class_ids.tolist())) == len(one_per_class)


# Inputs: empty, channels, dtypes, sizes.


def test_empty_list_gives_empty_list(detector):
    assert detector.detect([]) == []


def test_no_detections_are_empty_typed_results(detector):
    dets = detector.detect([noise((30, 50, 3), 0), noise((50, 30, 3), 1)], score_threshold=1.0)
    for det, size in zip(dets, [(30, 50), (50, 30)], strict=True):
        assert len(det) == 0
        assert_typed(det)
        assert det.image_size == size
        assert det.to_dict() == {"image_size": list(size), "detections": []}


def test_grayscale_and_alpha_images_are_accepted(detector):
    rgb_gray = np.repeat(noise((40, 50, 1), 4), 3, axis=2)
    reference = detector.detect([rgb_gray], score_threshold=LOW_SCORE)[0]
    assert len(reference) > 0
    gray2d = rgb_gray[:, :, 0].copy()
    gray3d = rgb_gray[:, :, :1].copy()
    alpha = np.concatenate([rgb_gray, noise((40, 50, 1), 9)], axis=2)
    for det in detector.detect([gray2d, gray3d, alpha], score_threshold=LOW_SCORE):
        assert_same(det, reference, atol=1e-5)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((0, 0, 3), np.uint8), "empty"),
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.zeros((10, 10, 3), np.float32), "uint8"),
        (np.zeros((10, 10, 2), np.uint8), r"\(H, W, 3\)"),
        (np.zeros((2, 10, 10, 3), np.uint8), r"\(H, W, 3\)"),
        ([[0, 1], [2, 3]], "numpy array"),
    ],
)
def test_unusable_images_are_value_errors_naming_the_image(detector, image, message):
    with pytest.raises(ValueError, match=message) as info:
        detector.detect([noise((8, 8, 3), 0), image])
    assert "images[1]" in str(info.value)


def test_the_three_stages_check_their_inputs_and_equal_detect(detector):
    image = noise((20, 30, 3), 0)
    letterboxed, letterbox = detector.preprocess(image)
    batch = letterboxed[None]  # (1, S, S, 3)
    options = DetectOptions(score_threshold=LOW_SCORE)
    (staged,) = detector.postprocess(detector.forward(batch), [letterbox], options)
    assert_same(staged, detector.detect([image], options)[0])
    with pytest.raises(ValueError, match="uint8"):
        detector.forward(batch.astype(np.float32))
    with pytest.raises(ValueError, match="2 letterboxes for a batch of 1"):
        detector.postprocess(detector.forward(batch), [letterbox, letterbox], options)


def test_a_single_image_must_be_wrapped_in_a_list(detector):
    with pytest.raises(ValueError, match="list"):
        detector.detect(noise((8, 8, 3), 0))


# Landmarks and serialisation.


def test_landmark_model_gives_n_k_3_points(tmp_path):
    path = random_checkpoint(num_landmarks=LANDMARKS).save(tmp_path / "faces.safetensors")
    detector = Detector.load(path, device="cpu")
    dets = detector.detect(
        [noise((40, 70, 3), 5), noise((70, 40, 3), 6)], score_threshold=LOW_SCORE
    )
    assert sum(len(d) for d in dets) > 0
    for det in dets:
        assert_typed(det, LANDMARKS)
        assert (det.landmarks[..., 2] == predict.PREDICTED).all()
        for item in det.to_dict()["detections"]:
            assert len(item["landmarks"]) == LANDMARKS
            assert all(len(point) == 2 for point in item["landmarks"])
    empty = detector.detect([noise((40, 70, 3), 5)], score_threshold=1.0)[0]
    assert_typed(empty, LANDMARKS)


def test_to_dict_is_plain_json_and_round_trips(detector):
    det = detector.detect([noise((45, 70, 3), 2)], score_threshold=LOW_SCORE)[0]
    assert len(det) > 0
    record = det.to_dict()
    assert json.loads(det.to_json()) == record
    assert json.loads(json.dumps(record)) == record
    assert record["image_size"] == [45, 70]
    assert len(record["detections"]) == len(det)
    for item, box, score, class_id, label in zip(
        record["detections"], det.boxes, det.scores, det.class_ids, det.labels, strict=True
    ):
        assert set(item) == {"box", "score", "class_id", "label"}
        np.testing.assert_allclose(item["box"], box, atol=0.01)
        assert item["score"] == pytest.approx(score, abs=1e-4)
        assert item["class_id"] == class_id and item["label"] == label == NAMES[class_id]


# Loading.


def test_load_reports_a_missing_model():
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        Detector.load("no-such-model", device="cpu")


def test_load_rejects_other_model_kinds(tmp_path):
    checkpoint = random_checkpoint()
    path = Checkpoint(checkpoint.config, "window", checkpoint.model_state).save(
        tmp_path / "w.safetensors"
    )
    with pytest.raises(ValueError, match="'window'"):
        Detector.load(path, device="cpu")


def test_auto_device_follows_cuda(model_path):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert Detector.load(model_path).device.type == expected
    assert resolve_device("cpu").type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_asking_for_cuda_without_it_is_a_value_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")


# CPU and CUDA agree.


def _matched(ref: Detections, other: Detections, min_score: float) -> None:
    """Every ``ref`` detection scoring >= min_score has a close same-class twin in ``other``."""
    for box, score, class_id in zip(ref.boxes, ref.scores, ref.class_ids, strict=True):
        if score < min_score:
            continue
        same = other.class_ids == class_id
        assert same.any(), f"class {class_id} (score {score:.3f}) missing"
        iou = box_iou(torch.from_numpy(box[None]), torch.from_numpy(other.boxes[same]))[0]
        best = int(iou.argmax())
        assert iou[best] >= MIN_DEVICE_IOU, f"box {box} not found (best IoU {float(iou[best]):.3f})"
        assert abs(other.scores[same][best] - score) <= MAX_DEVICE_SCORE_GAP


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_agree(model_path):
    """Both sides: detections well above the threshold have a close twin on the other."""
    if SHIPPED_MISSING:
        # Random weights give many overlapping boxes; without NMS (IoU threshold 1) a
        # small score difference cannot change which boxes survive.
        source, images, threshold, iou_threshold = model_path, mixed_images(), LOW_SCORE, 1.0
    else:
        source, images, threshold = SHIPPED, [s[0] for s in digit_scenes()], 0.25
        iou_threshold = 0.45
    cpu = Detector.load(source, device="cpu")
    cuda = Detector.load(source, device="cuda")
    assert cuda.device.type == "cuda"
    on_cpu = cpu.detect(images, score_threshold=threshold, iou_threshold=iou_threshold)
    on_cuda = cuda.detect(images, score_threshold=threshold, iou_threshold=iou_threshold)
    assert sum(len(d) for d in on_cpu) > 0
    for a, b in zip(on_cpu, on_cuda, strict=True):
        assert a.image_size == b.image_size
        assert_typed(b)
        _matched(a, b, threshold + MAX_DEVICE_SCORE_GAP)
        _matched(b, a, threshold + MAX_DEVICE_SCORE_GAP)


# The shipped, trained model.


@needs_shipped
def test_shipped_model_finds_digits_where_they_were_drawn():
    detector = Detector.load(SHIPPED)
    scenes = digit_scenes()
    dets = detector.detect([s[0] for s in scenes], score_threshold=0.25)
    for (image, boxes, classes), det in zip(scenes, dets, strict=True):
        assert det.image_size == image.shape[:2]
        assert len(boxes) > 0
        for box, class_id in zip(boxes, classes, strict=True):
            same = det.class_ids == class_id
            assert same.any(), f"digit {class_id} at {box} in a {image.shape[:2]} image missed"
            iou = box_iou(torch.from_numpy(box[None]), torch.from_numpy(det.boxes[same]))
            assert iou.max() >= 0.5, f"digit {class_id} at {box}: best IoU {iou.max():.2f}"


@needs_shipped
def test_shipped_model_batch_equals_one_at_a_time_and_filters():
    detector = Detector.load(SHIPPED, device="cpu")
    images = [s[0] for s in digit_scenes()]
    batched = detector.detect(images)
    for image, det in zip(images, batched, strict=True):
        assert_same(det, detector.detect([image])[0])
    wanted = sorted({int(c) for s in digit_scenes() for c in s[2]})[:2]
    filtered = detector.detect(images, classes=[str(c) for c in wanted])
    for full, det in zip(batched, filtered, strict=True):
        np.testing.assert_array_equal(
            det.class_ids, full.class_ids[np.isin(full.class_ids, wanted)]
        )


@pytest.mark.slow
def test_minimal_padding_keeps_the_ap_of_the_square_letterbox():
    """The shipped digits model on non-square frames of handwritten digits it has not
    seen (the validation glyphs): COCO AP with the minimal-padding letterbox within 0.005
    of the square letterbox's (issue 13's accuracy bar)."""
    pytest.importorskip("sklearn")
    from detector.data.moving_digits import moving_digits
    from detector.data.synthetic import DigitSource
    from detector.evaluate import coco_metrics
    from detector.settings import EVAL_OPTIONS

    detector = Detector.load("digits", device="cpu")
    source = DigitSource.load("val")
    frames, truth = [], []
    for clip, size in enumerate([(480, 640), (640, 480), (360, 640), (600, 800)] * 5):
        # two frames far apart per clip: different places, the same digits
        for i, (frame, boxes, classes) in enumerate(moving_digits(source, 25, size, clip)):
            if i in (0, 24):
                frames.append(frame)
                truth.append((boxes, classes, size[1], size[0]))
    ap = {}
    for square in (False, True):
        detector.pad_to_square = square
        found = [detector.detect([f], EVAL_OPTIONS)[0] for f in frames]
        predictions = [(d.boxes, d.scores, d.class_ids) for d in found]
        ap[square] = coco_metrics(truth, predictions, detector.names).ap
    print(f"AP minimal padding {ap[False]:.4f}, square {ap[True]:.4f}")
    assert ap[True] > 0.5  # the comparison means something: the model finds the digits
    assert abs(ap[False] - ap[True]) <= 0.005
