"""BatchNorm folding for inference, and the fast candidate decoding, against the
unfused network and :func:`detector.encoding.decode`."""

import copy

import pytest
import torch
from torch import nn

from detector.config import ModelConfig
from detector.encoding import decode, decode_candidates, grid_cells
from detector.models.fuse import fuse_conv_bn
from detector.models.window import WindowClassifier, WindowConfig
from detector.models.yolo import YOLODetector


def _randomise_batchnorm(model: nn.Module, seed: int) -> None:
    """Running statistics and affine parameters far from the identity, so that a fold
    that forgot any of them shows."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen))
            m.running_var.copy_(torch.rand(n, generator=gen) * 2 + 0.1)
            m.weight.data.copy_(torch.randn(n, generator=gen))
            m.bias.data.copy_(torch.randn(n, generator=gen))


def _as_list(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


@pytest.mark.parametrize(
    ("num_landmarks", "head"), [(0, "coupled"), (5, "coupled"), (0, "decoupled"), (2, "cls-branch")]
)
def test_fused_grid_model_computes_the_same(num_landmarks, head):
    torch.manual_seed(0)
    config = ModelConfig(num_classes=3, num_landmarks=num_landmarks, head=head)
    model = YOLODetector(config).eval()
    _randomise_batchnorm(model, 1)
    fused = fuse_conv_bn(copy.deepcopy(model))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    for shape in ((1, 3, 64, 96), (2, 3, 96, 64)):
        x = torch.rand(shape)
        with torch.no_grad():
            for a, b in zip(_as_list(model(x)), _as_list(fused(x)), strict=True):
                assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_fused_window_classifier_computes_the_same():
    torch.manual_seed(0)
    model = WindowClassifier(WindowConfig(num_classes=2)).eval()
    _randomise_batchnorm(model, 2)
    fused = fuse_conv_bn(copy.deepcopy(model))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    x = torch.rand(2, 3, 80, 72)
    with torch.no_grad():
        for a, b in zip(_as_list(model(x)), _as_list(fused(x)), strict=True):
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_fuse_refuses_a_training_model():
    with pytest.raises(ValueError, match="eval mode"):
        fuse_conv_bn(YOLODetector(ModelConfig(num_classes=1)))


@pytest.mark.parametrize("num_landmarks", [0, 2])
def test_decode_candidates_matches_decode(num_landmarks):
    """Boxes, scores (objectness × best class probability), best class and landmarks
    as computed from :func:`decode`'s full output."""
    torch.manual_seed(3)
    config = ModelConfig(num_classes=4, num_landmarks=num_landmarks)
    model = YOLODetector(config).eval()
    with torch.no_grad():
        raw = [r * 3 for r in model(torch.rand(2, 3, 64, 96))]  # spread the logits
    full = decode(raw, config)
    best_prob, best_class = full.class_probs.max(-1)
    boxes, scores, class_ids, landmarks = decode_candidates(raw, config)
    assert torch.allclose(boxes, full.boxes, atol=1e-4)
    assert torch.allclose(scores, full.objectness * best_prob, atol=1e-6)
    assert torch.equal(class_ids, best_class)
    assert torch.allclose(landmarks, full.landmarks, atol=1e-4)


def test_grid_cells_made_under_inference_mode_still_train():
    """The cache may first fill at inference; the tensor must still take part in a
    backward pass later."""
    grid_cells.cache_clear()
    with torch.inference_mode():
        grid_cells(3, 5, torch.device("cpu"))
    weight = torch.ones(1, requires_grad=True)
    (grid_cells(3, 5, torch.device("cpu")) * weight).pow(2).sum().backward()
    assert weight.grad is not None
