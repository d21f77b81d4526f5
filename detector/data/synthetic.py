"""A synthetic detection dataset of real handwritten digits on varied backgrounds.

Glyphs are scikit-learn's bundled ``load_digits`` (1,797 handwritten digits, 8x8 pixels,
17 grey levels). Backgrounds are smooth Gaussian noise of random grain, linear and radial colour
gradients, and crops of scikit-image's bundled photographs and textures, tinted. Each
digit is upscaled with a random size and aspect ratio, coloured far from the background
under it and alpha-composited with its own intensity as the mask.

Labels are exact: after every object is placed, its visible ink (its alpha times the
transparency of the digits drawn over it, clipped to the image) is thresholded at
``SceneConfig.mask_threshold`` and the label box is the tight box of that mask, in
pixel-edge coordinates (a box ``(x1, y1, x2, y2)`` covers columns ``x1 .. x2 - 1``).
Placements that would leave any object less than ``min_visible`` visible are re-drawn,
so every digit in an image is labelled.

Train / val split: the digit *samples* are split once, independent of any seed: the
first ``1 - VAL_FRACTION`` of ``load_digits`` (in its file order) is ``train``, the
remaining tail is ``val``. Validation images therefore show handwriting instances never
seen in training.

scikit-learn and scikit-image are the optional ``synth`` extra; they are imported only
when glyphs or textures are loaded.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

from detector.boxes import box_iou
from detector.data.formats_common import boxes_from_xyxy
from detector.data.photos import INSTALL_HINT, load_photo

DIGIT_NAMES: tuple[str, ...] = tuple(str(d) for d in range(10))
SPLITS = ("train", "val")
VAL_FRACTION = 0.2  # tail share of load_digits reserved for validation glyphs
GLYPH_LEVELS = 16.0  # load_digits intensities are integers 0..16
INK_LOW, INK_HIGH = 0.35, 0.6  # upscaled intensity ramp mapped to alpha 0..1
TEXTURE_NAMES = (  # bundled with scikit-image; none of them shows digits or text
    "brick", "grass", "gravel", "camera", "moon", "coins",
    "coffee", "chelsea", "hubble_deep_field", "immunohistochemistry",
)  # fmt: skip
IMAGE_FORMATS = ("png", "jpg")
JPEG_QUALITY = 95
COLOUR_CANDIDATES = 16  # random foreground colours tried per digit
LABEL_DECIMALS = 6


@dataclass(frozen=True)
class BackgroundConfig:
    """The ranges backgrounds are drawn from (see :func:`render_background`)."""

    texture_prob: float = 0.5  # chance of a texture crop when textures are given
    min_crop: float = 0.3  # texture crop height, U(min_crop, 1) of the texture's height
    flip_prob: float = 0.5  # chance of a horizontally mirrored crop
    max_tint: float = 0.7  # strength of the multiplicative colour tint, U(0, max)
    gain_jitter: float = 0.3  # brightness gain U(1 - j, 1 + j)
    max_offset: float = 40.0  # brightness offset U(-max, max), grey levels
    noise_octaves: int = 5  # noise grain is 2**U{0..octaves-1} pixels
    noise_amplitude: tuple[float, float] = (10.0, 80.0)  # noise std, grey levels
    radial_radius: tuple[float, float] = (0.5, 1.5)  # radial gradient radius / image diagonal


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are composed. Sizes are fractions of the image's shorter side."""

    min_objects: int = 1  # digits per image, drawn uniformly in [min, max]
    max_objects: int = 6
    min_size: float = 0.05  # glyph cell height, log-uniform in [min_size, max_size]
    max_size: float = 0.375  # (16 .. 120 px at 320)
    aspect_jitter: float = 0.3  # cell width = height * U(1 - j, 1 + j)
    max_iou: float = 0.3  # largest IoU allowed between two objects' boxes
    border_cut_prob: float = 0.15  # chance a digit may be placed across the image border
    min_visible: float = 0.4  # smallest visible share of a digit's ink (border, occlusion)
    mask_threshold: float = 0.25  # alpha at or above which a pixel counts as ink
    min_contrast: float = 120.0  # wanted RGB distance of a digit from the background under it
    background: BackgroundConfig = BackgroundConfig()  # used when no background is given
    max_noise_sigma: float = 4.0  # per-image Gaussian pixel noise, sigma ~ U(0, max)
    placement_attempts: int = 30  # tries per digit before it is left out

    def __post_init__(self) -> None:
        if not 0 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"need 0 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}"
            )
        if not 0 < self.min_size <= self.max_size <= 1:
            raise ValueError(
                f"need 0 < min_size <= max_size <= 1, got {self.min_size}, {self.max_size}"
            )
        for name in ("aspect_jitter", "max_iou", "border_cut_prob", "min_visible"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.mask_threshold < 1:
            raise ValueError(f"mask_threshold must be in (0, 1), got {self.mask_threshold}")


@dataclass(frozen=True)
class DigitSource:
    """The handwritten glyphs of one split.

    Attributes:
        glyphs: ``(N, 8, 8)`` float32 intensities in ``[0, 1]`` (1 = ink).
        labels: ``(N,)`` int64 digit classes ``0..9``.
        indices: ``(N,)`` int64 positions of the glyphs in ``load_digits``.
    """

    glyphs: np.ndarray
    labels: np.ndarray
    indices: np.ndarray

    @classmethod
    def load(cls, split: str) -> DigitSource:
        """The ``"train"`` or ``"val"`` glyphs of ``load_digits`` (see the module docstring)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        try:
            from sklearn.datasets import load_digits
        except ImportError as exc:
            raise ImportError(f"the digits need scikit-learn: {INSTALL_HINT}") from exc
        digits = load_digits()
        n_train = len(digits.target) - round(VAL_FRACTION * len(digits.target))
        indices = np.arange(len(digits.target), dtype=np.int64)
        indices = indices[:n_train] if split == "train" else indices[n_train:]
        glyphs = (digits.images[indices] / GLYPH_LEVELS).astype(np.float32)
        return cls(glyphs, digits.target[indices].astype(np.int64), indices)

    def __len__(self) -> int:
        return len(self.labels)


def load_textures() -> tuple[np.ndarray, ...]:
    """scikit-image's bundled images named in ``TEXTURE_NAMES``, each ``(H, W, 3)`` uint8 RGB."""
    return tuple(load_photo(name, "the background textures") for name in TEXTURE_NAMES)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3).astype(np.float32)


def render_background(
    rng: np.random.Generator,
    size: tuple[int, int],
    textures: Sequence[np.ndarray] = (),
    config: BackgroundConfig = BackgroundConfig(),
) -> np.ndarray:
    """A random background: smooth noise, a linear or radial gradient, or a tinted texture crop.

    Args:
        rng: the only source of randomness.
        size: ``(height, width)`` in pixels.
        textures: ``(H, W, 3)`` uint8 RGB images to crop from; none disables that kind.
        config: the ranges the background is drawn from.

    Returns:
        ``(height, width, 3)`` uint8 RGB.
    """
    height, width = size
    if textures and rng.random() < config.texture_prob:
        texture = textures[rng.integers(len(textures))]
        th, tw = texture.shape[:2]
        crop_h = int(min(th, rng.uniform(config.min_crop, 1.0) * th))
        crop_w = int(min(tw, max(1, crop_h * width / height)))
        crop_h = max(1, int(crop_w * height / width))
        y0, x0 = rng.integers(th - crop_h + 1), rng.integers(tw - crop_w + 1)
        crop = texture[y0 : y0 + crop_h, x0 : x0 + crop_w].astype(np.float32)
        image = cv2.resize(crop, (width, height), interpolation=cv2.INTER_LINEAR)
        if rng.random() < config.flip_prob:
            image = image[:, ::-1]
        tint = 1.0 - rng.uniform(0, config.max_tint) * (1.0 - _random_colour(rng) / 255.0)
        gain = rng.uniform(1 - config.gain_jitter, 1 + config.gain_jitter)
        image = image * tint * gain + rng.uniform(-config.max_offset, config.max_offset)
        return np.clip(np.rint(image), 0, 255).astype(np.uint8)
    kind = rng.integers(3)
    if kind == 0:  # smooth Gaussian noise with a random grain
        cell = int(2 ** rng.integers(0, config.noise_octaves))
        small = rng.normal(size=(max(1, height // cell), max(1, width // cell), 3))
        noise = cv2.resize(small.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
        image = _random_colour(rng) + rng.uniform(*config.noise_amplitude) * noise
    else:
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        if kind == 1:  # linear gradient at a random angle
            angle = rng.uniform(0, 2 * np.pi)
            t = xs * np.cos(angle) + ys * np.sin(angle)
            t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        else:  # radial gradient around a random centre
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            radius = rng.uniform(*config.radial_radius) * float(np.hypot(height, width))
            t = np.clip(np.hypot(ys - cy, xs - cx) / radius, 0, 1)
        image = _random_colour(rng) * (1 - t[..., None]) + _random_colour(rng) * t[..., None]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def glyph_alpha(glyph: np.ndarray, width: int, height: int) -> np.ndarray:
    """Upscale an ``(8, 8)`` glyph in ``[0, 1]`` to an ``(height, width)`` float32 alpha mask.

    Bicubic upscaling (rounder strokes than bilinear) followed by a linear ramp from
    ``INK_LOW`` to ``INK_HIGH`` that makes the faint fringe of the 8x8 glyph (and any
    ringing) transparent and the stroke opaque.
    """
    if glyph.ndim != 2:
        raise ValueError(f"glyph must be a 2-D intensity image, got shape {glyph.shape}")
    if width < 1 or height < 1:
        raise ValueError(f"glyph size must be at least 1x1, got {width}x{height}")
    value = cv2.resize(glyph.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip((value - INK_LOW) / (INK_HIGH - INK_LOW), 0, 1).astype(np.float32)


def _paste(alpha: np.ndarray, x0: int, y0: int, size: tuple[int, int]) -> np.ndarray:
    """Place an ``(h, w)`` alpha patch with top-left ``(x0, y0)`` into an ``size`` frame."""
    height, width = size
    frame = np.zeros((height, width), np.float32)
    h, w = alpha.shape
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + w, width), min(y0 + h, height)
    if fx1 > fx0 and fy1 > fy0:
        frame[fy0:fy1, fx0:fx1] = alpha[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
    return frame


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """Tight box of the ``True`` pixels of an ``(H, W)`` mask: ``(4,)`` float32 xyxy pixel edges.

    Returns ``None`` when the mask is empty.
    """
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)


def _composite(image: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return np.rint(image.astype(np.float32) * (1 - a) + colour * a).astype(np.uint8)


def draw_digit(
    image: np.ndarray,
    glyph: np.ndarray,
    box_xyxy: Sequence[float],
    colour: Sequence[float],
    mask_threshold: float = SceneConfig.mask_threshold,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Draw one glyph stretched over a cell box.

    Args:
        image: ``(H, W, 3)`` uint8; not modified.
        glyph: ``(8, 8)`` intensities in ``[0, 1]``.
        box_xyxy: the glyph's cell, xyxy pixels, rounded to whole pixels; it may extend
            past the image border (the outside part is not drawn).
        colour: ``(3,)`` ink colour in the image's channel order, 0..255.
        mask_threshold: alpha at or above which a pixel counts as visible ink.

    Returns:
        The new ``(H, W, 3)`` uint8 image and the tight ``(4,)`` float32 xyxy pixel box of
        the visible ink, or ``None`` when no ink lands inside the image.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    x1, y1, x2, y2 = (round(float(v)) for v in box_xyxy)
    alpha = _paste(glyph_alpha(glyph, x2 - x1, y2 - y1), x1, y1, image.shape[:2])
    drawn = _composite(image, alpha, np.asarray(colour, np.float32))
    return drawn, mask_box(alpha >= mask_threshold)


def _contrasting_colour(
    rng: np.random.Generator, background: np.ndarray, min_contrast: float
) -> np.ndarray:
    """A random colour at least ``min_contrast`` from ``(3,)`` background, else the farthest."""
    candidates = rng.uniform(0, 255, size=(COLOUR_CANDIDATES, 3)).astype(np.float32)
    distance = np.linalg.norm(candidates - background, axis=1)
    far = np.flatnonzero(distance >= min_contrast)
    return candidates[far[0] if far.size else int(distance.argmax())]


def _visible(layers: list[np.ndarray]) -> list[np.ndarray]:
    """Visible alpha of each layer (later layers are drawn on top)."""
    if not layers:
        return []
    cover = np.ones_like(layers[-1])
    out = []
    for layer in reversed(layers):
        out.append(layer * cover)
        cover = cover * (1 - layer)
    return out[::-1]


def _propose(
    rng: np.random.Generator, glyph: np.ndarray, size: tuple[int, int], config: SceneConfig
) -> tuple[np.ndarray, int]:
    """A random cell for a glyph: its full-frame alpha and the ink pixel count of the whole glyph."""
    height, width = size
    short = min(height, width)
    cell_h = np.exp(rng.uniform(np.log(config.min_size * short), np.log(config.max_size * short)))
    cell_w = cell_h * rng.uniform(1 - config.aspect_jitter, 1 + config.aspect_jitter)
    cell_h, cell_w = max(1, round(cell_h)), max(1, round(cell_w))
    alpha = glyph_alpha(glyph, cell_w, cell_h)
    if rng.random() < config.border_cut_prob:
        x0 = int(rng.integers(-cell_w // 2, width - cell_w // 2 + 1))
        y0 = int(rng.integers(-cell_h // 2, height - cell_h // 2 + 1))
    else:
        x0 = int(rng.integers(0, max(width - cell_w, 0) + 1))
        y0 = int(rng.integers(0, max(height - cell_h, 0) + 1))
    ink = np.count_nonzero(alpha >= config.mask_threshold)
    return _paste(alpha, x0, y0, size), ink


def render_scene(
    rng: np.random.Generator,
    size: tuple[int, int],
    source: DigitSource,
    n_objects: int,
    textures: Sequence[np.ndarray] = (),
    config: SceneConfig = SceneConfig(),
    background: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render digits on a background, with exact boxes of their visible ink.

    Args:
        rng: the only source of randomness; the same state gives the same scene.
        size: ``(height, width)`` in pixels, any aspect.
        source: the glyphs to draw from.
        n_objects: digits wanted; fewer are drawn when ``placement_attempts`` random
            placements of a digit all break ``max_iou`` / ``min_visible``.
        textures: ``(H, W, 3)`` uint8 RGB images for backgrounds (see :func:`load_textures`).
        config: composition settings.
        background: ``(height, width, 3)`` uint8 RGB to draw on instead of a random one
            (no pixel noise is added then).

    Returns:
        image ``(height, width, 3)`` uint8 RGB, boxes ``(N, 4)`` float32 xyxy pixels,
        classes ``(N,)`` int64, in drawing order (later digits are on top).
    """
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"size must be (height, width) >= 1, got {size}")
    if len(source) == 0 and n_objects > 0:
        raise ValueError("source has no glyphs")
    if background is None:
        image = render_background(rng, size, textures, config.background)
    elif background.shape != (height, width, 3) or background.dtype != np.uint8:
        raise ValueError(
            f"background must be ({height}, {width}, 3) uint8, got {background.shape} "
            f"{background.dtype}"
        )
    else:
        image = background
    layers: list[np.ndarray] = []
    inks: list[int] = []
    classes: list[int] = []
    boxes: list[np.ndarray] = []
    for _ in range(n_objects):
        index = int(rng.integers(len(source)))
        for _ in range(config.placement_attempts):
            layer, ink = _propose(rng, source.glyphs[index], size, config)
            box = mask_box(layer >= config.mask_threshold)
            if box is None:
                continue
            if boxes:
                iou = box_iou(torch.from_numpy(box[None]), torch.from_numpy(np.stack(boxes)))
                if float(iou.max()) > config.max_iou:
                    continue
            visible = _visible([*layers, layer])
            shares = [
                np.count_nonzero(v >= config.mask_threshold) / max(int(n), 1)
                for v, n in zip(visible, [*inks, ink], strict=True)
            ]
            if min(shares) >= config.min_visible and min(shares) > 0:
                layers.append(layer)
                inks.append(ink)
                classes.append(int(source.labels[index]))
                boxes.append(box)
                break
    for layer in layers:
        under = image[layer >= config.mask_threshold].astype(np.float32).mean(axis=0)
        image = _composite(image, layer, _contrasting_colour(rng, under, config.min_contrast))
    if background is None and config.max_noise_sigma > 0:
        noise = rng.normal(0, rng.uniform(0, config.max_noise_sigma), size=image.shape)
        image = np.clip(np.rint(image + noise), 0, 255).astype(np.uint8)
    final = [mask_box(v >= config.mask_threshold) for v in _visible(layers)]
    out_boxes = np.stack(final).astype(np.float32) if final else np.zeros((0, 4), np.float32)
    return image, out_boxes, np.array(classes, dtype=np.int64)


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`generate_yolo_dataset` wrote."""

    data_yaml: Path  # the Ultralytics-style dataset file
    images: dict[str, int]  # split -> images written
    objects: dict[str, int]  # split -> labelled digits
    class_counts: tuple[int, ...]  # labelled digits per class, all splits
    box_sides: tuple[float, float, float]  # min / median / max of sqrt(w * h), pixels
    seconds: float  # wall time


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one dataset image: independent of every other image and of globals."""
    key = (SPLITS.index(split), index)
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def yolo_label_lines(boxes: np.ndarray, classes: np.ndarray, size: tuple[int, int]) -> list[str]:
    """``class cx cy w h`` lines, normalised to ``[0, 1]``, for ``(N, 4)`` xyxy pixel boxes."""
    height, width = size
    scale = np.array([width, height, width, height], np.float64)
    xyxy = boxes.astype(np.float64) / scale
    cxcywh = boxes_from_xyxy(xyxy, "cxcywh")
    return [
        f"{int(c)} " + " ".join(f"{v:.{LABEL_DECIMALS}f}" for v in row)
        for c, row in zip(classes, cxcywh, strict=True)
    ]


def prepare_split_folders(out: Path, overwrite: bool) -> None:
    """Empty ``images/<split>`` and ``labels/<split>`` folders under ``out`` for every
    split; an existing non-empty one is replaced with ``overwrite``, else a ``ValueError``."""
    for split in SPLITS:
        for kind in ("images", "labels"):
            folder = out / kind / split
            if folder.exists() and any(folder.iterdir()):
                if not overwrite:
                    raise ValueError(f"{folder} is not empty; pass overwrite to replace it")
                shutil.rmtree(folder)
            folder.mkdir(parents=True, exist_ok=True)


def generate_yolo_dataset(
    out_dir: str | Path,
    n_train: int,
    n_val: int,
    seed: int,
    imgsz: int = 320,
    config: SceneConfig = SceneConfig(),
    image_format: str = "png",
    overwrite: bool = False,
    progress: bool = True,
) -> SynthSummary:
    """Write a YOLO-format digits dataset.

    Layout: ``out_dir/images/{train,val}/NNNNNN.<image_format>``, ``out_dir/labels/{train,val}/
    NNNNNN.txt`` (one ``class cx cy w h`` line per digit, normalised, 6 decimals) and
    ``out_dir/data.yaml`` (``path: .`` relative to the yaml, ``train``, ``val``, ``names``).
    Images are square ``imgsz`` x ``imgsz``. Image ``i`` of a split depends only on
    ``(seed, split, i)``: the same seed gives byte-identical files.

    Args:
        out_dir: dataset folder; created if missing.
        n_train, n_val: images per split (``>= 0``).
        seed: the dataset seed.
        imgsz: image side in pixels.
        config: scene composition.
        image_format: ``"png"`` (lossless, exact; the default) or ``"jpg"`` (quality 95).
        overwrite: replace existing ``images/`` and ``labels/`` split folders; otherwise a
            non-empty one is an error.
        progress: show a progress bar over images.
    """
    from detector.progress import progress as show_progress

    if n_train < 0 or n_val < 0:
        raise ValueError(f"image counts must be >= 0, got train={n_train}, val={n_val}")
    if imgsz < 8:
        raise ValueError(f"imgsz must be >= 8 pixels, got {imgsz}")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    start = time.perf_counter()
    out = Path(out_dir)
    counts = {"train": n_train, "val": n_val}
    prepare_split_folders(out, overwrite)
    sources = {split: DigitSource.load(split) for split in SPLITS}
    textures = load_textures()
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if image_format == "jpg" else []
    objects = dict.fromkeys(SPLITS, 0)
    class_counts = np.zeros(len(DIGIT_NAMES), np.int64)
    sides: list[np.ndarray] = []
    bar = show_progress(total=n_train + n_val, desc="synth digits", unit="img", enabled=progress)
    for split in SPLITS:
        for index in range(counts[split]):
            rng = image_rng(seed, split, index)
            n_objects = int(rng.integers(config.min_objects, config.max_objects + 1))
            image, boxes, classes = render_scene(
                rng, (imgsz, imgsz), sources[split], n_objects, textures, config
            )
            name = f"{index:06d}"
            path = out / "images" / split / f"{name}.{image_format}"
            if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params):
                raise ValueError(f"could not write image {path}")
            lines = yolo_label_lines(boxes, classes, (imgsz, imgsz))
            label_path = out / "labels" / split / f"{name}.txt"
            label_path.write_text("".join(line + "\n" for line in lines))
            objects[split] += len(classes)
            class_counts += np.bincount(classes, minlength=len(DIGIT_NAMES))
            sides.append(np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
            bar.update()
    bar.close()
    data_yaml = out / "data.yaml"
    names = dict(enumerate(DIGIT_NAMES))
    spec = {
        "path": ".",
        "train": "images/train",
        "val": "images/val",
        "nc": len(names),
        "names": names,
    }
    header = (
        f"# detector synth digits: seed {seed}, imgsz {imgsz}, train {n_train}, val {n_val}\n"
        "# paths are relative to this file's folder\n"
    )
    data_yaml.write_text(header + yaml.safe_dump(spec, sort_keys=False))
    all_sides = np.concatenate([np.zeros(0), *sides])
    quantiles = np.percentile(all_sides, [0, 50, 100]) if all_sides.size else np.zeros(3)
    return SynthSummary(
        data_yaml=data_yaml,
        images=counts,
        objects=objects,
        class_counts=tuple(int(c) for c in class_counts),
        box_sides=tuple(float(q) for q in quantiles),
        seconds=time.perf_counter() - start,
    )
