"""Augmentations move labels exactly as they move pixels.

Each scene is a flat background with several filled rectangles; each rectangle carries 3
landmarks (top-left corner, top-right corner, centre). A rectangle is found in an output
image as the pixels that change when the rectangle is left out of the input (same seed),
and a landmark as the centroid of the change made by a small dot drawn at it. This works
through resizing, padding, flips and colour jitter alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from detector.data.transforms import (
    AugmentConfig,
    Augmenter,
    Target,
    hflip,
    hsv_jitter,
    letterbox,
    mosaic,
    random_affine,
    warp_affine,
)

SIZE = 256  # output side of every transform under test
BACKGROUND = (40, 40, 40)
RECT_COLOURS = ((0, 0, 255), (0, 255, 0), (255, 0, 0))  # BGR red, green, blue
DOT_COLOUR = (255, 255, 255)
DOT_RADIUS = 2  # dots are (2 r + 1) pixels square
FLIP_IDX = (1, 0, 2)  # left corner <-> right corner, centre stays
MIN_IOU = 0.9
LANDMARK_TOLERANCE = 1.5  # pixels
CHANGE_FRACTION = 0.5  # a pixel belongs to a region when it changes by half the most
VISIBLE = 2.0
SEED = 7


@dataclass(frozen=True)
class Scene:
    height: int
    width: int
    rects: tuple[tuple[int, int, int, int], ...]  # xyxy pixel edges
    first_class: int  # rectangle i has class first_class + i


SCENES = (
    Scene(200, 300, ((30, 30, 110, 100), (150, 50, 270, 140), (40, 120, 120, 180)), 0),
    Scene(240, 180, ((20, 20, 100, 110), (60, 140, 160, 220)), 10),
    Scene(160, 160, ((40, 30, 130, 120),), 20),
    Scene(300, 220, ((30, 40, 120, 140), (100, 170, 200, 280)), 30),
)

Images = list[np.ndarray]
Run = Callable[[Images, list[Target]], tuple[np.ndarray, Target]]


def landmark_points(rect: tuple[int, int, int, int]) -> np.ndarray:
    """(3, 2) pixel centres: top-left corner, top-right corner, centre."""
    x1, y1, x2, y2 = rect
    return np.array(
        [[x1 + 0.5, y1 + 0.5], [x2 - 0.5, y1 + 0.5], [(x1 + x2) // 2 + 0.5, (y1 + y2) // 2 + 0.5]],
        np.float32,
    )


def target_of(scene: Scene) -> Target:
    points = np.stack([landmark_points(r) for r in scene.rects])  # (N, 3, 2)
    visibility = np.full(points.shape[:2] + (1,), VISIBLE, np.float32)
    return Target(
        np.array(scene.rects, np.float32),
        scene.first_class + np.arange(len(scene.rects), dtype=np.int64),
        np.concatenate([points, visibility], axis=2),
    )


def render(scene: Scene, skip: int | None = None, dot: tuple[int, int] | None = None):
    """The scene without rectangle ``skip``, with a dot on landmark ``dot = (rect, k)``."""
    image = np.full((scene.height, scene.width, 3), BACKGROUND, np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(scene.rects):
        if i != skip:
            image[y1:y2, x1:x2] = RECT_COLOURS[i % len(RECT_COLOURS)]
    if dot is not None:
        x, y = landmark_points(scene.rects[dot[0]])[dot[1]].astype(int)
        image[y - DOT_RADIUS : y + DOT_RADIUS + 1, x - DOT_RADIUS : x + DOT_RADIUS + 1] = DOT_COLOUR
    return image


def change(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(H, W) per-pixel change, the largest over channels."""
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2).astype(np.float64)


def changed_box(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """xyxy pixel edges of the pixels changed by at least half the largest change."""
    amount = change(a, b)
    ys, xs = np.nonzero(amount >= CHANGE_FRACTION * amount.max())
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


def changed_centre(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Change-weighted centroid of the changed pixels, continuous xy."""
    amount = change(a, b)
    amount[amount < CHANGE_FRACTION * amount.max()] = 0
    ys, xs = np.mgrid[: amount.shape[0], : amount.shape[1]] + 0.5
    return np.array([(xs * amount).sum(), (ys * amount).sum()]) / amount.sum()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None).prod()
    union = np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter
    return float(inter / union)


def check_labels_follow_pixels(run: Run, scenes: tuple[Scene, ...], order=(0, 1, 2)) -> Target:
    """Every output box bounds its rectangle's pixels, every visible landmark its dot.

    ``order[k]`` is the input landmark that output landmark k comes from.
    """
    targets = [target_of(s) for s in scenes]
    images = [render(s) for s in scenes]
    out, out_target = run(images, targets)
    assert len(out_target.boxes) > 0, "the transform kept no box to check"
    height, width = out.shape[:2]
    margin = 2 * DOT_RADIUS  # dots cut by the border have a shifted centroid
    owners = {s.first_class + i: (j, i) for j, s in enumerate(scenes) for i in range(len(s.rects))}
    for row, cls in enumerate(out_target.classes):
        scene_index, rect = owners[int(cls)]
        probe = list(images)
        probe[scene_index] = render(scenes[scene_index], skip=rect)
        found = changed_box(out, run(probe, targets)[0])
        assert iou(found, out_target.boxes[row]) > MIN_IOU, (cls, found, out_target.boxes[row])
        for k, source_k in enumerate(order):
            x, y, visibility = out_target.landmarks[row, k]
            if visibility == 0 or not (
                margin < x < width - margin and margin < y < height - margin
            ):
                continue
            probe = list(images)
            probe[scene_index] = render(scenes[scene_index], dot=(rect, source_k))
            centre = changed_centre(run(probe, targets)[0], out)
            assert np.hypot(*(centre - (x, y))) < LANDMARK_TOLERANCE, (cls, k, centre, (x, y))
    return out_target


def single(transform) -> Run:
    """A Run for a one-image transform ``transform(image, target, rng)``."""
    return lambda images, targets: transform(images[0], targets[0], np.random.default_rng(SEED))


def letterboxed_affine(image, target, rng, scale=0.3, translate=0.1):
    image, target = letterbox(image, target, SIZE)
    return random_affine(image, target, SIZE, scale, translate, rng)


def seeded_mosaic(images, targets, seed=SEED):
    return mosaic(list(zip(images, targets, strict=True)), SIZE, np.random.default_rng(seed))


def augmenter_run(config: AugmentConfig, seed: int = SEED) -> Run:
    augment = Augmenter(config, SIZE, FLIP_IDX)

    def run(images, targets):
        extra = list(zip(images[1:], targets[1:], strict=True)) or None
        return augment(images[0], targets[0], np.random.default_rng(seed), extra)

    return run


def all_transforms() -> dict[str, Run]:
    """Every transform under test, as a Run on the 4 scenes (one-image ones use the first)."""
    config = AugmentConfig(mosaic=0.5, fliplr=0.5)
    return {
        "letterbox": single(lambda im, t, rng: letterbox(im, t, SIZE)),
        "random_affine": single(letterboxed_affine),
        "hflip": single(lambda im, t, rng: hflip(im, t, FLIP_IDX)),
        "hsv_jitter": single(lambda im, t, rng: (hsv_jitter(im, (0.1, 0.7, 0.4), rng), t)),
        "mosaic": seeded_mosaic,
        "augmenter": augmenter_run(config),
    }


@pytest.mark.parametrize("scene", SCENES[:3])
def test_letterbox_labels_follow_pixels(scene):
    run = single(lambda im, t, rng: letterbox(im, t, SIZE))
    out_target = check_labels_follow_pixels(run, (scene,))
    assert len(out_target.boxes) == len(scene.rects)


@pytest.mark.parametrize("scene", SCENES[:2])
def test_random_affine_labels_follow_pixels(scene):
    check_labels_follow_pixels(single(letterboxed_affine), (scene,))


def test_random_affine_rotation_moves_landmarks_with_pixels():
    def rotate(image, target, rng):
        image, target = letterbox(image, target, SIZE)
        return random_affine(image, target, SIZE, 0.2, 0.05, rng, degrees=30)

    run = single(rotate)
    scene = SCENES[0]
    out, out_target = run([render(scene)], [target_of(scene)])
    for k in range(3):
        centre = changed_centre(run([render(scene, dot=(0, k))], [target_of(scene)])[0], out)
        assert np.hypot(*(centre - out_target.landmarks[0, k, :2])) < LANDMARK_TOLERANCE


@pytest.mark.parametrize("gain", [1.5, 2.0, 3.0])
def test_warp_affine_is_exact_on_the_continuous_pixel_grid(gain):
    # A blob [12, 30) x [10, 20) zoomed about the origin and shifted: its half-coverage
    # edges and its centroid land exactly where the matrix sends them.
    image = np.zeros((64, 64, 3), np.uint8)
    image[10:20, 12:30] = RECT_COLOURS[0]
    blob = Target(np.array([[12, 10, 30, 20]], np.float32), np.zeros(1, np.int64))
    matrix = np.array([[gain, 0.0, 3.0], [0.0, gain, 1.0]])
    out, target = warp_affine(image, blob, matrix, SIZE)
    blank, _ = warp_affine(np.zeros_like(image), blob, matrix, SIZE)
    np.testing.assert_array_equal(changed_box(out, blank), target.boxes[0])
    box_centre = (target.boxes[0, :2] + target.boxes[0, 2:]) / 2
    np.testing.assert_allclose(changed_centre(out, blank), box_centre, atol=0.05)


def test_hflip_labels_follow_pixels_and_swap_landmarks():
    run = single(lambda im, t, rng: hflip(im, t, FLIP_IDX))
    scene = SCENES[0]
    out_target = check_labels_follow_pixels(run, (scene,), order=FLIP_IDX)
    source = target_of(scene)
    np.testing.assert_allclose(out_target.boxes[:, 0], scene.width - source.boxes[:, 2])
    np.testing.assert_allclose(out_target.boxes[:, 2], scene.width - source.boxes[:, 0])
    # The "left corner" landmark is still the left corner of the mirrored box.
    np.testing.assert_allclose(out_target.landmarks[:, 0, 0], out_target.boxes[:, 0] + 0.5)
    np.testing.assert_allclose(out_target.landmarks[:, 1, 0], out_target.boxes[:, 2] - 0.5)


def test_hflip_needs_a_valid_flip_idx_for_landmarks():
    image, target = render(SCENES[0]), target_of(SCENES[0])
    with pytest.raises(ValueError, match="flip_idx is required"):
        hflip(image, target)
    with pytest.raises(ValueError, match="permutation"):
        hflip(image, target, (1, 0))
    plain = Target(target.boxes, target.classes)
    assert np.array_equal(hflip(hflip(image, plain)[0], plain)[0], image)


def test_hsv_jitter_keeps_geometry_and_changes_colour():
    gains = (0.1, 0.7, 0.4)
    run = single(lambda im, t, rng: (hsv_jitter(im, gains, rng), t))
    check_labels_follow_pixels(run, SCENES[:1])
    image = render(SCENES[0])
    jittered = hsv_jitter(image, gains, np.random.default_rng(SEED))
    assert jittered.shape == image.shape and not np.array_equal(jittered, image)
    assert np.array_equal(hsv_jitter(image, (0.0, 0.0, 0.0), np.random.default_rng(SEED)), image)


def test_mosaic_labels_follow_pixels():
    out, out_target = seeded_mosaic([render(s) for s in SCENES], [target_of(s) for s in SCENES])
    assert out.shape == (2 * SIZE, 2 * SIZE, 3)
    check_labels_follow_pixels(seeded_mosaic, SCENES)
    assert len(out_target.boxes) >= len(SCENES)  # at least one box of every image survives


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mosaic_tiles_fill_exactly_their_boxes(seed):
    # Four flat model-sized images, each labelled with one box over all of it: in the canvas
    # every box holds exactly its image's colour and the rest is padding.
    colours = (*RECT_COLOURS, DOT_COLOUR)
    images = [np.full((SIZE, SIZE, 3), colour, np.uint8) for colour in colours]
    whole = np.array([[0, 0, SIZE, SIZE]], np.float32)
    targets = [Target(whole, np.array([i], np.int64)) for i in range(len(colours))]
    canvas, out = seeded_mosaic(images, targets, seed)
    covered = np.zeros(canvas.shape[:2], bool)
    for box, cls in zip(out.boxes.astype(int), out.classes, strict=True):
        x1, y1, x2, y2 = box
        assert (canvas[y1:y2, x1:x2] == colours[cls]).all()
        covered[y1:y2, x1:x2] = True
    assert (canvas[~covered] == AugmentConfig().pad_value).all()


@pytest.mark.parametrize(
    ("config", "seed"),
    [
        (AugmentConfig(mosaic=1.0, fliplr=1.0, hsv_h=0.1), 0),  # seed 0 keeps all 8 boxes
        (AugmentConfig(mosaic=0.0, fliplr=0.0, scale=0.3), SEED),
    ],
    ids=["mosaic-flip", "letterbox"],
)
def test_augmenter_labels_follow_pixels(config, seed):
    order = FLIP_IDX if config.fliplr == 1.0 else (0, 1, 2)
    scenes = SCENES if config.mosaic > 0 else SCENES[:1]
    out_target = check_labels_follow_pixels(augmenter_run(config, seed), scenes, order=order)
    assert len(out_target.boxes) == sum(len(s.rects) for s in scenes)


def test_boxes_pushed_out_are_dropped_with_their_landmarks():
    scene = SCENES[0]  # rects at x 30..110, 150..270, 40..120
    shift = np.array([[1.0, 0.0, -105.0], [0.0, 1.0, 0.0]])
    _, out = warp_affine(render(scene), target_of(scene), shift, SIZE, min_area_ratio=0.1)
    # Rect 0 keeps 5 of 80 columns (< 10 %): dropped. Rect 2 keeps 15 of 80: kept, cut.
    assert out.classes.tolist() == [1, 2]
    np.testing.assert_allclose(out.boxes, [[45, 50, 165, 140], [0, 120, 15, 180]])
    assert out.landmarks[1, 0, 2] == 0  # its left corner is off the image
    assert out.landmarks[0, :, 2].tolist() == [VISIBLE] * 3


def test_small_boxes_are_dropped():
    target = Target(
        np.array([[10, 10, 11.5, 60], [20, 20, 80, 80]], np.float32), np.array([3, 4], np.int64)
    )
    image = np.zeros((100, 100, 3), np.uint8)
    _, out = warp_affine(image, target, np.eye(2, 3), SIZE, min_box_size=2.0)
    assert out.classes.tolist() == [4]


@pytest.mark.parametrize("name", list(all_transforms()))
@pytest.mark.parametrize("num_landmarks", [None, 3])
def test_empty_target(name, num_landmarks):
    run = all_transforms()[name]
    images = [render(s) for s in SCENES]
    empty = [Target.empty(num_landmarks)] * len(SCENES)
    out, target = run(images, empty)
    assert out.dtype == np.uint8 and out.ndim == 3
    assert target.boxes.shape == (0, 4) and target.classes.shape == (0,)
    assert target.num_landmarks == num_landmarks


@pytest.mark.parametrize("name", list(all_transforms()))
def test_deterministic_for_a_seed_and_inputs_untouched(name):
    run = all_transforms()[name]
    images = [render(s) for s in SCENES]
    targets = [target_of(s) for s in SCENES]
    copies = [
        (im.copy(), t.boxes.copy(), t.landmarks.copy())
        for im, t in zip(images, targets, strict=True)
    ]
    first, second = run(images, targets), run(images, targets)
    assert np.array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1].boxes, second[1].boxes)
    np.testing.assert_array_equal(first[1].landmarks, second[1].landmarks)
    for (image, boxes, landmarks), im, t in zip(copies, images, targets, strict=True):
        assert np.array_equal(image, im)
        assert np.array_equal(boxes, t.boxes) and np.array_equal(landmarks, t.landmarks)


def test_augmenter_seeds_differ_and_output_is_model_sized():
    augment = Augmenter(AugmentConfig(), SIZE, FLIP_IDX)
    samples = [(render(s), target_of(s)) for s in SCENES]
    outputs = [augment(*samples[0], np.random.default_rng(seed), samples[1:]) for seed in range(3)]
    for image, target in outputs:
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        assert (target.boxes >= 0).all() and (target.boxes <= SIZE).all()
    assert not np.array_equal(outputs[0][0], outputs[1][0])


def test_augmenter_mosaic_source_and_eval_path():
    config = AugmentConfig(mosaic=0.5)
    augment = Augmenter(config, SIZE, FLIP_IDX)
    image, target = render(SCENES[0]), target_of(SCENES[0])
    with pytest.raises(ValueError, match="extra_samples"):
        augment(image, target, np.random.default_rng(SEED))
    calls = []

    def draw_others(rng):
        calls.append(rng)
        return [(render(s), target_of(s)) for s in SCENES[1:]]

    for seed in range(8):
        augment(image, target, np.random.default_rng(seed), draw_others)
    assert 0 < len(calls) < 8  # drawn only when a mosaic is made
    expected = letterbox(image, target, SIZE)
    got = augment.letterbox_only(image, target)
    assert np.array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1].boxes, expected[1].boxes)


def test_bad_inputs_name_what_was_expected():
    with pytest.raises(ValueError, match="boxes must be"):
        Target(np.zeros((2, 5), np.float32), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="classes must be"):
        Target(np.zeros((2, 4), np.float32), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="landmarks must be"):
        Target(np.zeros((2, 4), np.float32), np.zeros(2, np.int64), np.zeros((2, 3, 2), np.float32))
    with pytest.raises(ValueError, match="image must be"):
        letterbox(np.zeros((10, 10), np.uint8), Target.empty(), SIZE)
    with pytest.raises(ValueError, match="mosaic needs 4"):
        mosaic([(render(SCENES[0]), target_of(SCENES[0]))], SIZE, np.random.default_rng(0))
    with pytest.raises(ValueError, match="AugmentConfig.fliplr"):
        AugmentConfig(fliplr=1.5)
    with pytest.raises(ValueError, match="AugmentConfig.scale"):
        AugmentConfig(scale=1.0)
