"""The model-kind seam: a model file's kind picks its network and its candidates;
everything after candidates (thresholds, NMS, mapping back, the service) is shared."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from server_fixtures import assert_same, run, serving

from detector.checkpoint import Checkpoint
from detector.kinds import KINDS, get_kind
from detector.models.window import WindowConfig
from detector.predict import Detector
from detector.settings import DetectOptions
from detector.window_pyramid import WindowDetector, pyramid_candidates
from server.client import DetectorClient
from server.repository import ModelRepository

INPUT = 64
KEEP_ALL = DetectOptions(score_threshold=0.0, iou_threshold=1.0, max_detections=100_000)


def window_checkpoint(seed: int = 0) -> Checkpoint:
    torch.manual_seed(seed)
    config = WindowConfig(
        num_classes=2, window=24, input_size=INPUT, min_size=20.0, class_names=("a", "b")
    )
    return Checkpoint(config, "sliding-window", WindowDetector(config).state_dict())


@pytest.fixture(scope="module")
def window_path(tmp_path_factory):
    return window_checkpoint().save(tmp_path_factory.mktemp("window") / "win.safetensors")


def test_every_kind_is_registered_and_an_unknown_one_is_a_clear_error(tmp_path):
    assert set(KINDS) == {"grid", "landmark", "sliding-window"}
    with pytest.raises(ValueError, match=r"unknown model kind 'boxes'; known kinds: grid"):
        get_kind("boxes")
    config = WindowConfig(num_classes=1, window=24, input_size=INPUT)
    with pytest.raises(ValueError, match="unknown model kind 'boxes'"):
        Detector(WindowDetector(config), config, torch.device("cpu"), kind="boxes")
    path = Checkpoint(config, "boxes", WindowDetector(config).state_dict()).save(
        tmp_path / "b.safetensors"
    )
    with pytest.raises(ValueError, match="unknown model kind 'boxes'"):
        Detector.load(path, device="cpu")


def test_a_window_model_file_loads_with_its_kind_and_config(window_path):
    detector = Detector.load(window_path, device="cpu")
    assert detector.kind == "sliding-window" and isinstance(detector.config, WindowConfig)
    assert detector.names == ["a", "b"] and detector.input_size == INPUT


def test_window_candidates_are_the_pyramid_of_the_letterboxed_input(window_path):
    """Detector's forward on a letterboxed batch gives exactly the pyramid's candidates
    (every window of every level, in level order)."""
    detector = Detector.load(window_path, device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (50, 64, 3), np.uint8)
    letterboxed, _ = detector.preprocess(image)
    candidates = detector.forward(letterboxed[None])
    x = torch.from_numpy(letterboxed[None]).permute(0, 3, 1, 2).float() / 255
    model = detector.model
    with torch.inference_mode():
        (want,) = pyramid_candidates(model.classifier, x, model.levels(letterboxed.shape[:2]))
    assert candidates.boxes.shape == (1, len(want.scores), 4)
    torch.testing.assert_close(candidates.boxes[0], want.boxes, rtol=0, atol=1e-4)
    torch.testing.assert_close(candidates.scores[0], want.scores, rtol=0, atol=1e-6)
    assert torch.equal(candidates.class_ids[0], want.class_ids)
    assert candidates.landmarks.shape == (1, len(want.scores), 0, 2)


def test_window_detections_go_through_the_shared_postprocessing(window_path):
    detector = Detector.load(window_path, device="cpu")
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, shape, np.uint8) for shape in ((50, 64, 3), (64, 40, 3))]
    everything = detector.detect(images, KEEP_ALL)
    for image, det in zip(images, everything, strict=True):
        assert len(det) > 0 and det.landmarks is None
        h, w = image.shape[:2]
        assert det.image_size == (h, w)
        assert (det.boxes[:, 2] <= w).all() and (det.boxes[:, 3] <= h).all()
        assert (np.diff(det.scores) <= 0).all()
        assert set(det.labels) <= {"a", "b"}
    only_b = detector.detect(images, KEEP_ALL.with_changes(classes=("b",)))
    for det, b in zip(everything, only_b, strict=True):
        assert set(b.labels) <= {"b"} and len(b) == sum(label == "b" for label in det.labels)


def test_a_window_model_is_served_by_name(window_path, tmp_path):
    detector = Detector.load(window_path, device="cpu")
    repository = ModelRepository.from_detectors({"win": detector})
    image = np.random.default_rng(2).integers(0, 256, (48, 80, 3), np.uint8)

    def calls(address):
        with DetectorClient(address, timeout=60) as client:
            (info,) = client.list_models()
            return info, client.detect(image, model="win", score_threshold=0.0)

    async def main():
        async with serving(repository) as (_, address):
            return await asyncio.to_thread(calls, address)

    info, got = run(main())
    assert info.kind == "sliding-window" and info.class_names == ("a", "b")
    assert_same(got, detector.detect([image], score_threshold=0.0)[0])
