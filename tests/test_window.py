"""The sliding-window classifier run on a whole image equals cropping and classifying."""

import math

import numpy as np
import pytest
import torch

from detector.models.window import (
    MAX_LOG_SCALE,
    WindowClassifier,
    WindowConfig,
    decode_window_boxes,
    encode_window_box,
)
from detector.window_pyramid import (
    DEFAULT_SCALE_STEP,
    PyramidLevel,
    WindowCandidates,
    pyramid_candidates,
    pyramid_levels,
    resize_to_level,
    window_boxes,
    window_candidates,
)

CONFIG = WindowConfig(num_classes=3, window=32)  # stride 4, FC kernel 5
MIN_SIZE = 20.0  # smaller than the window: the first levels enlarge the image


def random_model(config: WindowConfig = CONFIG, seed: int = 0) -> WindowClassifier:
    """A random network in eval mode whose BatchNorms have non-trivial statistics and
    whose outputs are of order 1 (He-initialised convolutions), so 1e-4 is a tight bound."""
    torch.manual_seed(seed)
    model = WindowClassifier(config)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.3, 0.3)
            assert module.running_mean.shape == (n,)
    return model.eval()


def crops_at(image: torch.Tensor, config: WindowConfig, output_size) -> torch.Tensor:
    """Every window of a ``(3, H, W)`` image as a ``(H' * W', 3, W, W)`` batch, row-major."""
    boxes = window_boxes(config, output_size).long()  # (P, 4)
    return torch.stack([image[:, y0:y1, x0:x1] for x0, y0, x1, y1 in boxes.tolist()])


@pytest.mark.parametrize("image_size", [(37, 53), (64, 64), (101, 77)])
def test_whole_image_equals_cropping(image_size):
    model = random_model()
    torch.manual_seed(1)
    image = torch.rand(1, 3, *image_size)
    levels = pyramid_levels(image_size, CONFIG.window, MIN_SIZE)
    assert len(levels) >= 3
    checked = 0
    with torch.no_grad():
        for level in levels:
            resized = resize_to_level(image, level)  # (1, 3, h, w)
            out = model(resized)  # (1, C + 5, H', W')
            rows, cols = CONFIG.output_size(level.size)
            assert out.shape == (1, CONFIG.num_outputs, rows, cols)
            crops = crops_at(resized[0], CONFIG, (rows, cols))
            per_crop = model(crops)  # (P, C + 5, 1, 1)
            assert per_crop.shape == (rows * cols, CONFIG.num_outputs, 1, 1)
            whole = out[0].flatten(1).T  # (P, C + 5), row-major like the crops
            torch.testing.assert_close(whole, per_crop[:, :, 0, 0], atol=1e-4, rtol=0)
            # not vacuous: the windows' outputs differ far beyond the tolerance
            assert float(whole.std(0).min()) > 100 * 1e-4
            checked += rows * cols
    assert checked > 0


def test_non_multiple_of_stride_sizes_follow_the_floor_rule():
    model = random_model(WindowConfig(num_classes=1, window=28, stage_widths=(4, 8)))
    config = model.config
    with torch.no_grad():
        for h in range(28, 28 + 2 * config.stride + 1):
            out = model(torch.rand(1, 3, h, 41))
            assert tuple(out.shape[-2:]) == config.output_size((h, 41))
            assert out.shape[-2] == (h - 28) // config.stride + 1
    assert config.output_size((28, 28)) == (1, 1)
    with pytest.raises(ValueError, match="smaller than the window"):
        config.output_size((27, 40))


def test_window_geometry():
    assert CONFIG.stride == 4 and CONFIG.fc_kernel == 5
    boxes = window_boxes(CONFIG, (2, 3))
    assert boxes.shape == (6, 4)
    # row-major: position (i, j) = 1 * 3 + 2 is (x0, y0) = (2 * 4, 1 * 4)
    assert boxes[5].tolist() == [8.0, 4.0, 40.0, 36.0]
    assert boxes[0].tolist() == [0.0, 0.0, 32.0, 32.0]
    assert window_boxes(CONFIG, (0, 0)).shape == (0, 4)
    # 3 stages of 1 conv: the convs eat 2 * (1 + 2 + 4) = 14 px, 46 = 14 + 4 * 8
    deep = WindowConfig(num_classes=2, window=46, stage_widths=(8, 8, 8), convs_per_stage=1)
    assert deep.stride == 8 and deep.fc_kernel == 4
    out = WindowClassifier(deep).eval()(torch.rand(1, 3, 46, 46 + 8))
    assert out.shape == (1, 7, 1, 2)


def test_box_encoding_round_trip():
    torch.manual_seed(0)
    windows = torch.tensor([[0.0, 0.0, 32.0, 32.0], [8.0, 4.0, 40.0, 36.0], [3.5, 7.0, 67.5, 71.0]])
    xy = torch.rand(3, 2) * 50
    boxes = torch.cat((xy, xy + 1 + torch.rand(3, 2) * 80), 1)
    deltas = encode_window_box(boxes, windows)
    torch.testing.assert_close(decode_window_boxes(deltas, windows), boxes)
    # a box equal to its window encodes to zeros, and zeros decode to the window
    assert encode_window_box(windows, windows).abs().max() == 0
    torch.testing.assert_close(decode_window_boxes(torch.zeros(3, 4), windows), windows)
    # the documented formula on one case: centre offset in window sides, log size ratio
    d = encode_window_box(torch.tensor([[16.0, 8.0, 80.0, 24.0]]), windows[:1])
    torch.testing.assert_close(d, torch.tensor([[1.0, 0.0, math.log(2.0), math.log(0.5)]]))
    huge = decode_window_boxes(torch.tensor([[0.0, 0.0, 1e4, 1e4]]), windows[:1])
    assert torch.isfinite(huge).all()
    assert huge[0, 2] - huge[0, 0] == pytest.approx(32 * math.exp(MAX_LOG_SCALE), rel=1e-5)
    assert encode_window_box(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)
    with pytest.raises(ValueError, match="positive width"):
        encode_window_box(torch.tensor([[5.0, 5.0, 5.0, 9.0]]), windows[:1])
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        encode_window_box(boxes, windows[:2])


@pytest.mark.parametrize("image_size", [(37, 53), (480, 640), (101, 77)])
@pytest.mark.parametrize("min_size", [12.0, 32.0, 36.0])
def test_pyramid_covers_min_size_to_image_size(image_size, min_size):
    window = 32
    levels = pyramid_levels(image_size, window, min_size)
    short = min(image_size)
    if min_size > short:
        assert levels == []
        return
    sides = [window / level.scale for level in levels]  # object side of each level
    assert sides[0] == pytest.approx(min_size)
    for smaller, larger in zip(sides, sides[1:], strict=False):
        assert larger / smaller == pytest.approx(DEFAULT_SCALE_STEP)
    assert sides[-1] <= short < sides[-1] * DEFAULT_SCALE_STEP
    for level in levels:
        assert level.original_size == image_size
        assert min(level.size) >= window
        assert level.size == tuple(round(s * level.scale) for s in image_size)
    # every object side in [min_size, short side] has a level within one step below it
    for side in torch.linspace(min_size, short, 50).tolist():
        assert any(s <= side * (1 + 1e-9) < s * DEFAULT_SCALE_STEP for s in sides)


def test_pyramid_exact_bounds_and_bad_arguments():
    # objects from 32 to 64 px in a 64x64 image, one octave with step 2: scales 1 and 0.5
    levels = pyramid_levels((64, 64), 32, 32, step=2.0)
    assert [lv.scale for lv in levels] == [1.0, 0.5]
    assert [lv.size for lv in levels] == [(64, 64), (32, 32)]
    for bad in ({"min_size": 0}, {"min_size": -3}, {"step": 1.0}, {"step": 0.5}):
        kwargs = {"image_size": (64, 64), "window": 32, "min_size": 16.0} | bad
        with pytest.raises(ValueError, match=next(iter(bad))):
            pyramid_levels(**kwargs)
    with pytest.raises(ValueError, match="image size"):
        pyramid_levels((0, 64), 32, 16.0)
    with pytest.raises(ValueError, match="level is for"):
        resize_to_level(torch.rand(1, 3, 10, 10), levels[0])


def test_candidates_map_a_known_window_back_exactly():
    config = CONFIG
    level = PyramidLevel(0.5, (96, 128), (48, 64))  # exactly half size
    rows, cols = config.output_size(level.size)
    assert (rows, cols) == (5, 9)
    raw = torch.zeros(2, config.num_outputs, rows, cols)
    raw[0, 0] = 5.0  # background everywhere in image 0 ...
    raw[0, 1 + 2, 3, 7] = 20.0  # ... except class 2 at window (i, j) = (3, 7)
    raw[1, 1 + 1, 1, 2] = 20.0
    raw[1, -4:, 1, 2] = torch.tensor([0.25, -0.5, math.log(2.0), 0.0])  # shifted, twice as wide
    first, second = window_candidates(raw, config, level)
    assert first.boxes.shape == (rows * cols, 4) and first.scores.shape == (rows * cols,)
    assert first.class_ids.dtype == torch.int64
    p = 3 * cols + 7
    assert int(first.scores.argmax()) == p and int(first.class_ids[p]) == 2
    assert float(first.scores[p]) == pytest.approx(1.0, abs=1e-6)
    # window (x0, y0) = (28, 12) of 32 px at scale 0.5 is (56, 24, 120, 88) in the original
    assert first.boxes[p].tolist() == [56.0, 24.0, 120.0, 88.0]
    q = 1 * cols + 2  # window (8, 4, 40, 36): centre (24 + 8, 20 - 16), size (64, 32)
    assert int(second.class_ids[q]) == 1
    assert second.boxes[q].tolist() == [(32 - 32) * 2, (4 - 16) * 2, (32 + 32) * 2, (4 + 16) * 2]
    with pytest.raises(ValueError, match="raw must be"):
        window_candidates(raw[:, :5], config, level)


def test_candidate_scores_are_the_best_object_class():
    raw = torch.randn(1, CONFIG.num_outputs, 2, 2)
    (cand,) = window_candidates(raw, CONFIG, PyramidLevel(1.0, (36, 36), (36, 36)))
    probs = raw[0, : CONFIG.num_classes + 1].flatten(1).softmax(0)  # (C + 1, P)
    best, label = probs[1:].max(0)
    torch.testing.assert_close(cand.scores, best)
    assert cand.class_ids.tolist() == label.tolist()


def test_pyramid_candidates_gather_every_level():
    model = random_model()
    images = torch.rand(2, 3, 37, 53)
    levels = pyramid_levels((37, 53), CONFIG.window, MIN_SIZE)
    with torch.no_grad():
        cands = pyramid_candidates(model, images, levels)
    expected = sum(math.prod(CONFIG.output_size(lv.size)) for lv in levels)
    assert len(cands) == 2 and all(c.boxes.shape == (expected, 4) for c in cands)
    assert all(c.scores.shape == (expected,) and c.class_ids.shape == (expected,) for c in cands)
    none = pyramid_candidates(model, images, [])
    assert len(none) == 2 and none[0].boxes.shape == (0, 4) and none[1].class_ids.numel() == 0
    with pytest.raises(ValueError, match="at least one"):
        WindowCandidates.cat([])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 2, "window": 30}, "window 30 does not fit"),
        ({"num_classes": 2, "window": 12}, "window 12 does not fit"),
        ({"num_classes": 2, "stage_widths": ()}, "stage_widths"),
        ({"num_classes": 2, "stage_widths": (8, 0)}, "stage_widths"),
        ({"num_classes": 2, "convs_per_stage": 0}, "convs_per_stage"),
        ({"num_classes": 2, "fc_widths": ()}, "fc_widths"),
        ({"num_classes": 2, "class_names": ("a",)}, "class names"),
    ],
)
def test_bad_configs_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WindowConfig(**kwargs)


def test_config_round_trip():
    config = WindowConfig(
        num_classes=2, window=36, stage_widths=(8, 16), fc_widths=(32, 16), class_names=("a", "b")
    )
    data = config.to_dict()
    # through JSON, tuples come back as lists
    as_json = {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}
    assert WindowConfig.from_dict(as_json) == config
    assert config.names == ("a", "b") and CONFIG.names == ("0", "1", "2")
    assert config.num_outputs == 2 + 1 + 4
    with pytest.raises(ValueError, match="unknown window config keys"):
        WindowConfig.from_dict(data | {"size": "tiny"})


def test_a_grayscale_model_reads_luma_and_still_equals_cropping():
    config = WindowConfig(num_classes=2, window=24, grayscale=True)
    model = random_model(config)
    assert model.features[0][0].in_channels == 1
    assert "luma" not in model.state_dict()  # fixed by the config, not a weight
    image = torch.rand(3, 41, 57)
    with torch.no_grad():
        whole = model(image[None])[0]  # (C + 5, H', W')
        # the same as the grey image (OpenCV's RGB2GRAY weights) repeated in every channel
        grey = (image * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0)
        torch.testing.assert_close(model(grey.expand(3, -1, -1)[None])[0], whole)
        output_size = tuple(whole.shape[-2:])
        crops = model(crops_at(image, config, output_size))  # (P, C + 5, 1, 1)
    torch.testing.assert_close(crops[:, :, 0, 0], whole.flatten(1).T, atol=1e-4, rtol=1e-4)


def test_without_box_regression_a_candidate_is_its_window():
    config = WindowConfig(num_classes=3, window=32, regress_boxes=False)
    level = PyramidLevel(0.5, (96, 128), (48, 64))
    raw = torch.randn(2, config.num_outputs, *config.output_size(level.size))
    for cand in window_candidates(raw, config, level):
        want = window_boxes(config, tuple(raw.shape[-2:])) * 2  # level pixels -> original
        assert torch.equal(cand.boxes, want)
    assert WindowConfig.from_dict(config.to_dict()) == config
    old_file = {
        k: v for k, v in config.to_dict().items() if k not in ("grayscale", "regress_boxes")
    }
    assert WindowConfig.from_dict(old_file).regress_boxes  # files from before: regressing


def test_a_bordered_pyramid_classifies_windows_that_leave_the_image_as_training_cuts_them():
    """With ``border`` b, every level is padded by b grey pixels: the first window starts
    at (-b, -b) in the level, and each window's output equals the classifier run on that
    window cut as the training crops are (``cut_window``: the letterbox grey outside)."""
    from detector.config import LETTERBOX_PAD_VALUE
    from detector.data.window_crops import cut_window
    from detector.window_pyramid import WindowDetector, level_input

    config = WindowConfig(num_classes=3, window=24, border=6, min_size=30.0)
    model = random_model(config)
    detector = WindowDetector(config).eval()
    detector.classifier = model
    pixels = torch.randint(0, 256, (45, 61, 3), dtype=torch.uint8)
    image = pixels.permute(2, 0, 1)[None].float() / 255  # (1, 3, 45, 61)
    levels = detector.levels((45, 61))
    with torch.no_grad():
        raw = detector(image)
        assert len(raw) == len(levels)
        for level, out in zip(levels, raw, strict=True):
            h, w = level.size
            assert tuple(out.shape[-2:]) == config.output_size((h + 12, w + 12))
            boxes = window_boxes(config, tuple(out.shape[-2:]))
            assert boxes[0].tolist() == [-6.0, -6.0, 18.0, 18.0]
            # the level's pixels as uint8, cut like a training crop, must classify alike
            resized = resize_to_level(image, level)[0]  # (3, h, w), no border
            as_uint8 = (resized * 255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
            picks = [0, out.shape[-1] - 1, out.shape[-2] * out.shape[-1] - 1]
            crops = [
                cut_window(as_uint8, boxes[p].numpy(), config.window, LETTERBOX_PAD_VALUE)
                for p in picks
            ]
            batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
            want = model(batch)[:, :, 0, 0]  # (3, C + 5)
            # the level itself padded, not rounded to uint8: close, not equal
            got = out[0].flatten(1).T[picks]
            torch.testing.assert_close(got, want, atol=0.05, rtol=0.05)
            exact = model(level_input(image, level, 6))[0].flatten(1).T
            torch.testing.assert_close(exact, out[0].flatten(1).T)
    with pytest.raises(ValueError, match="border"):
        WindowConfig(num_classes=3, window=24, border=-1)
