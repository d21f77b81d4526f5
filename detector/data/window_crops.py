"""Training crops of the sliding-window model kind: labelled windows cut from images.

A :class:`~detector.models.window.WindowClassifier` learns from W×W crops. Per epoch, each
training image gives (:class:`WindowCropDataset`):

* **positives**: one window per labelled object, square, with the object's longer side
  ``POSITIVE_FILL`` (0.6–0.9, log-uniform) of the window's side, its centre jittered by up
  to ``CENTRE_JITTER`` of the side, or half the model's stride if more (the pyramid's
  nearest window is that far off at most; the object always stays inside); class
  ``c + 1`` and the regression target ``encode_window_box(object, window)``;
* **random negatives**: ``negatives_per_positive`` (default 3) per positive (at least that
  many for an image without objects), square windows at uniform places (reaching past the
  image's edge as far as the model's ``border`` lets its windows) and log-uniform
  sides from the pyramid's smallest window to the image's short side, with IoU below
  ``NEGATIVE_IOU`` (0.3) with every object's box and with every object's reference window
  (:func:`reference_window`), so that no negative looks like a positive; a draw that
  fails ``NEGATIVE_ATTEMPTS`` times is left out;
* **hard negatives**: the windows of the detector's false positives that hard-negative
  mining added for this image (:mod:`detector.hard_negatives`), every epoch.

Each crop is resized to W×W (area interpolation when shrinking), padded with the letterbox
grey where the window leaves the image, and lightly augmented: a brightness gain in
``[1 - hsv_v, 1 + hsv_v]`` and a contrast gain in ``[1 - CONTRAST, 1 + CONTRAST]``, and a
horizontal flip with probability ``fliplr`` (``AugmentConfig``; 0 for digits or text).

A **crops folder** (``--data`` a folder with ``background/``: one folder of images per
class plus ``background/``) reads as a :class:`DatasetInfo` whose samples are whole crops
(:func:`load_crop_folder`); the dataset then resizes each whole image to W×W with its
folder's class and no regression target (the box loss is masked). A ``background/`` image
whose short side is at least ``SCENE_WINDOWS`` windows is a **scene** (a whole photo
without objects, as Dalal–Triggs and Viola–Jones trained on): each epoch it gives
``negatives_per_positive`` random negative windows (as an image of a box dataset without
objects), plus the hard negatives mined on it (:func:`is_scene`).

Windows are ``(4,)`` float xyxy in the image's pixels, integer-aligned (``x0, y0`` and the
side are whole pixels), so a crop is exactly the pixels of its window. Every random choice
comes from a generator seeded by ``(seed, epoch, index)``: resume and worker processes see
the same crops.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from detector.boxes import box_iou
from detector.data.dataset import read_rgb
from detector.data.transforms import AugmentConfig
from detector.data.types import DatasetInfo, Sample
from detector.models.window import BACKGROUND, NUM_BOX_VALUES, encode_window_box

POSITIVE_FILL = (0.6, 0.9)  # object's longer side / window side of positives, log-uniform
REFERENCE_FILL = math.sqrt(POSITIVE_FILL[0] * POSITIVE_FILL[1])  # the fill of a reference window
CENTRE_JITTER = 0.1  # largest offset of an object's centre from its window's, x window side
NEGATIVE_IOU = 0.3  # a negative's IoU with every object (box and reference window) is below
NEGATIVES_PER_POSITIVE = 3  # random negatives per positive (per image without objects: this)
NEGATIVE_ATTEMPTS = 20  # draws per negative before it is left out
CONTRAST = 0.2  # contrast gain drawn from [1 - CONTRAST, 1 + CONTRAST]
BACKGROUND_DIR = "background"  # the crops folder's class-less images
SCENE_WINDOWS = 4  # a background/ image at least this many windows on its short side is a scene
CROP_FOLDER_VAL_EVERY = 10  # a crops folder's every 10th image (per class, sorted) validates
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def reference_window(boxes: np.ndarray) -> np.ndarray:
    """The square window centred on each box with its longer side ``REFERENCE_FILL`` of the
    window's side: the window a positive of that box is drawn around.

    Args:
        boxes: ``(N, 4)`` float xyxy pixels.

    Returns:
        ``(N, 4)`` float64 xyxy, not integer-aligned.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).max(1, keepdims=True) / REFERENCE_FILL / 2
    return np.concatenate((centre - half, centre + half), 1)


def aligned_window(x0: float, y0: float, side: float) -> np.ndarray:
    """The smallest integer-aligned square window containing the square ``(x0, y0, side)``:
    ``(4,)`` float64 xyxy."""
    left, top = math.floor(x0), math.floor(y0)
    whole = max(math.ceil(x0 + side) - left, math.ceil(y0 + side) - top, 1)
    return np.array([left, top, left + whole, top + whole], np.float64)


def positive_window(
    box: np.ndarray, rng: np.random.Generator, jitter: float = CENTRE_JITTER
) -> np.ndarray:
    """A random positive window of one object (see the module docstring).

    Args:
        box: ``(4,)`` xyxy pixels, positive width and height.
        jitter: the largest offset of the object's centre from the window's, x its side.

    Returns:
        ``(4,)`` float64 xyxy, integer-aligned, containing ``box``.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    fill = math.exp(rng.uniform(math.log(POSITIVE_FILL[0]), math.log(POSITIVE_FILL[1])))
    side = max(w, h) / fill
    # Centre offsets that keep the object inside: |dx| <= (side - w) / 2.
    room = np.array([(side - w) / 2, (side - h) / 2])
    dx, dy = rng.uniform(-1, 1, 2) * np.minimum(room, jitter * side)
    cx, cy = (x1 + x2) / 2 + dx, (y1 + y2) / 2 + dy
    return aligned_window(cx - side / 2, cy - side / 2, side)


def is_negative(windows: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Whether each window's IoU with every box and every box's reference window is below
    ``NEGATIVE_IOU``.

    Args:
        windows: ``(M, 4)`` xyxy; boxes: ``(N, 4)`` xyxy, the same pixels.

    Returns:
        ``(M,)`` bool; all True when there is no box.
    """
    windows = torch.as_tensor(np.asarray(windows, np.float64).reshape(-1, 4))
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return np.ones(len(windows), bool)
    others = torch.as_tensor(np.concatenate((boxes, reference_window(boxes))))
    return (box_iou(windows, others) < NEGATIVE_IOU).all(1).numpy()


def negative_window(
    image_size: tuple[int, int],
    boxes: np.ndarray,
    min_side: float,
    rng: np.random.Generator,
    overhang: float = 0.0,
) -> np.ndarray | None:
    """A random negative window of an ``(h, w)`` image, or ``None`` when
    ``NEGATIVE_ATTEMPTS`` draws all overlapped an object.

    Args:
        boxes: ``(N, 4)`` the image's objects, xyxy pixels.
        min_side: the smallest side to draw (the pyramid's smallest window in these
            pixels); the largest is the image's short side.
        overhang: how far the window may leave the image on each side, x its side (the
            model's ``border`` / window: the windows of a padded pyramid level do).

    Returns:
        ``(4,)`` float64 xyxy, integer-aligned, inside the image grown by ``overhang``.
    """
    h, w = image_size
    largest = min(h, w)
    smallest = min(max(1.0, min_side), largest)
    for _ in range(NEGATIVE_ATTEMPTS):
        side = min(largest, round(math.exp(rng.uniform(math.log(smallest), math.log(largest)))))
        side = max(side, 1)
        out = int(overhang * side)
        x0 = int(rng.integers(-out, w - side + out + 1))
        y0 = int(rng.integers(-out, h - side + out + 1))
        window = np.array([x0, y0, x0 + side, y0 + side], np.float64)
        if is_negative(window[None], boxes)[0]:
            return window
    return None


def cut_window(image: np.ndarray, window: np.ndarray, size: int, pad_value: int) -> np.ndarray:
    """The pixels of an integer-aligned square window, resized to ``size × size``.

    Args:
        image: ``(H, W, 3)`` uint8.
        window: ``(4,)`` xyxy, integer-aligned; parts outside the image are ``pad_value``.

    Returns:
        ``(size, size, 3)`` uint8.
    """
    x0, y0, x1, y1 = (int(round(v)) for v in window)
    side = x1 - x0
    h, w = image.shape[:2]
    canvas = np.full((side, side, 3), pad_value, np.uint8)
    left, top, right, bottom = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if right > left and bottom > top:
        canvas[top - y0 : bottom - y0, left - x0 : right - x0] = image[top:bottom, left:right]
    return resize_square(canvas, size)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` resized to ``size × size``: area interpolation when shrinking, bilinear
    when enlarging."""
    if image.shape[:2] == (size, size):
        return np.ascontiguousarray(image)
    shrink = max(image.shape[:2]) > size
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


@dataclass
class WindowTargets:
    """The labels of a batch of crops.

    Attributes:
        labels: ``(N,)`` int64 in ``[0, C]``: 0 background, ``c + 1`` object class ``c``.
        boxes: ``(N, 4)`` float32 ``(tx, ty, tw, th)`` of :func:`encode_window_box`; zeros
            where ``has_box`` is False.
        has_box: ``(N,)`` bool: the crop has a regression target (a positive cut around a
            labelled box; not a negative, not a whole crop of a crops folder).
    """

    labels: torch.Tensor
    boxes: torch.Tensor
    has_box: torch.Tensor

    def to(self, device: torch.device | str) -> WindowTargets:
        return WindowTargets(self.labels.to(device), self.boxes.to(device), self.has_box.to(device))

    def __len__(self) -> int:
        return len(self.labels)

    @staticmethod
    def cat(parts: list[WindowTargets]) -> WindowTargets:
        return WindowTargets(
            torch.cat([p.labels for p in parts]),
            torch.cat([p.boxes for p in parts]),
            torch.cat([p.has_box for p in parts]),
        )


def crop_targets(
    windows: np.ndarray, labels: np.ndarray, boxes: np.ndarray | None
) -> WindowTargets:
    """Targets of crops: ``windows`` ``(N, 4)``, ``labels`` ``(N,)`` in ``[0, C]``, and for
    each crop its object's box ``(N, 4)`` xyxy (NaN rows: no regression target) or None."""
    n = len(labels)
    targets = torch.zeros((n, NUM_BOX_VALUES), dtype=torch.float32)
    has_box = torch.zeros(n, dtype=torch.bool)
    if boxes is not None and n:
        has_box = torch.from_numpy(~np.isnan(boxes).any(1))
        if bool(has_box.any()):
            b = torch.from_numpy(boxes[has_box.numpy()]).double()
            win = torch.from_numpy(windows[has_box.numpy()]).double()
            targets[has_box] = encode_window_box(b, win).float()
    return WindowTargets(torch.as_tensor(labels, dtype=torch.int64), targets, has_box)


class WindowCropDataset(Dataset):
    """Items: ``(crops (n, 3, W, W) uint8 RGB, WindowTargets, index)``, one item per image.

    Args:
        info: the split's samples (xyxy boxes in each image's pixels).
        window: W, the crop side.
        input_size: the model's letterboxed input side; with ``smallest_object`` it sets
            the smallest negative window (the pyramid's smallest, in image pixels).
        smallest_object: the smallest object side the pyramid looks for, input pixels.
        augment: brightness (``hsv_v``), flips (``fliplr``) and the pad grey.
        seed: base seed of every random choice.
        negatives_per_positive: random negatives per positive.
        centre_jitter: positives' largest centre offset, x the window side.
        overhang: how far random negatives may leave the image, x their side.
        whole_images: each sample is a crop of a crops folder: one crop per image, the
            whole image, labelled by its first box's class (background without a box),
            no regression target; a scene (:func:`is_scene`) gives random negative
            windows instead.
    """

    def __init__(
        self,
        info: DatasetInfo,
        window: int,
        input_size: int,
        smallest_object: float,
        augment: AugmentConfig,
        seed: int = 0,
        negatives_per_positive: int = NEGATIVES_PER_POSITIVE,
        whole_images: bool = False,
        centre_jitter: float = CENTRE_JITTER,
        overhang: float = 0.0,
    ):
        if not info.samples:
            raise ValueError("the dataset split has no usable samples")
        if negatives_per_positive < 0:
            raise ValueError(f"negatives_per_positive must be >= 0, got {negatives_per_positive}")
        self.info = info
        self.window = window
        self.input_size = input_size
        self.smallest_object = smallest_object
        self.augment = augment
        self.seed = seed
        self.negatives_per_positive = negatives_per_positive
        self.whole_images = whole_images
        self.centre_jitter = centre_jitter
        self.overhang = overhang
        self.epoch = 0
        # Per sample, the hard-negative windows mining added: (M, 4) float64 xyxy.
        self.hard_negatives: list[np.ndarray] = [np.zeros((0, 4)) for _ in info.samples]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.info.samples)

    def add_hard_negatives(self, index: int, windows: np.ndarray) -> None:
        """Add integer-aligned ``(M, 4)`` xyxy windows of sample ``index`` as negatives."""
        windows = np.asarray(windows, np.float64).reshape(-1, 4)
        self.hard_negatives[index] = np.concatenate((self.hard_negatives[index], windows))

    def num_hard_negatives(self) -> int:
        return sum(len(w) for w in self.hard_negatives)

    def load(self, index: int) -> tuple[np.ndarray, Sample]:
        """The image and sample ``index``; an unreadable image is replaced by the next
        readable one (with a warning), as in :class:`DetectionDataset`."""
        for offset in range(len(self)):
            sample = self.info.samples[(index + offset) % len(self)]
            try:
                return read_rgb(sample.image_path), sample
            except ValueError as err:
                print(f"warning: {err}; the next image is used in its place", file=sys.stderr)
        raise ValueError("no image of the dataset can be read")

    def windows(
        self, sample: Sample, image_size: tuple[int, int], rng: np.random.Generator, index: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This epoch's windows of one image: ``(windows (n, 4), labels (n,), boxes (n, 4))``,
        positives first, then random negatives, then hard negatives; ``boxes`` holds the
        object of each positive and NaN rows for negatives."""
        boxes = np.asarray(sample.boxes, np.float64).reshape(-1, 4)
        classes = np.asarray(sample.classes, np.int64).reshape(-1)
        windows = [positive_window(box, rng, self.centre_jitter) for box in boxes]
        labels = list(classes + 1)
        targets = list(boxes)
        h, w = image_size
        ratio = self.input_size / max(h, w)  # letterbox scale: input px per image px
        wanted = self.negatives_per_positive * max(1, len(boxes))
        for _ in range(wanted):
            negative = negative_window(
                image_size, boxes, self.smallest_object / ratio, rng, self.overhang
            )
            if negative is not None:
                windows.append(negative)
                labels.append(BACKGROUND)
                targets.append(np.full(4, np.nan))
        hard = self.hard_negatives[index]
        windows += list(hard)
        labels += [BACKGROUND] * len(hard)
        targets += [np.full(4, np.nan)] * len(hard)
        return (
            np.asarray(windows, np.float64).reshape(-1, 4),
            np.asarray(labels, np.int64),
            np.asarray(targets, np.float64).reshape(-1, 4),
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, WindowTargets, int]:
        image, sample = self.load(index)
        rng = np.random.default_rng((self.seed, self.epoch, index))
        size, pad = self.window, self.augment.pad_value
        if self.whole_images and is_scene(sample, self.window):
            windows, labels, boxes = self.windows(sample, image.shape[:2], rng, index)
            crops = [cut_window(image, win, size, pad) for win in windows]
        elif self.whole_images:
            label = int(sample.classes[0]) + 1 if len(sample.classes) else BACKGROUND
            crops = [resize_square(image, size)]
            h, w = image.shape[:2]
            windows = np.array([[0, 0, w, h]], np.float64)
            labels, boxes = np.array([label]), np.full((1, 4), np.nan)
            hard = self.hard_negatives[index]
            crops += [cut_window(image, win, size, pad) for win in hard]
            windows = np.concatenate((windows, hard))
            labels = np.concatenate((labels, np.full(len(hard), BACKGROUND)))
            boxes = np.concatenate((boxes, np.full((len(hard), 4), np.nan)))
        else:
            windows, labels, boxes = self.windows(sample, image.shape[:2], rng, index)
            crops = [cut_window(image, win, size, pad) for win in windows]
        crops, boxes = self._augment(crops, windows, boxes, rng)
        targets = crop_targets(windows, labels, boxes)
        stacked = np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)
        tensor = torch.from_numpy(np.ascontiguousarray(stacked)).permute(0, 3, 1, 2)  # (n, 3, W, W)
        return tensor, targets, index

    def _augment(
        self,
        crops: list[np.ndarray],
        windows: np.ndarray,
        boxes: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """Brightness, contrast and horizontal flips (the object box mirrored about its
        window's vertical centre line, so the regression target stays exact)."""
        out, boxes = [], boxes.copy()
        for i, crop in enumerate(crops):
            gain = 1 + rng.uniform(-1, 1) * self.augment.hsv_v
            contrast = 1 + rng.uniform(-1, 1) * CONTRAST
            flip = rng.random() < self.augment.fliplr
            pixels = crop.astype(np.float32)
            mean = pixels.mean()
            pixels = (pixels - mean) * contrast + mean * gain
            crop = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
            if flip:
                crop = crop[:, ::-1]
                mirror = windows[i, 0] + windows[i, 2]  # x -> x0 + x1 - x
                boxes[i, [0, 2]] = mirror - boxes[i, [2, 0]]
            out.append(np.ascontiguousarray(crop))
        return out, boxes


def collate_crops(
    items: list[tuple[torch.Tensor, WindowTargets, int]],
) -> tuple[torch.Tensor, WindowTargets, list[int]]:
    """Concatenate items' crops into ``(N, 3, W, W)`` uint8 and their targets."""
    crops = torch.cat([item[0] for item in items])
    return crops, WindowTargets.cat([item[1] for item in items]), [item[2] for item in items]


def is_scene(sample: Sample, window: int) -> bool:
    """Whether a crops folder's sample is a scene: a background image (no box) whose short
    side is at least ``SCENE_WINDOWS`` windows of ``window`` pixels."""
    return len(sample.boxes) == 0 and min(sample.width, sample.height) >= SCENE_WINDOWS * window


def is_crop_folder(path: str | Path) -> bool:
    """Whether ``path`` is a crops folder: a folder holding ``background/``."""
    path = Path(path)
    return path.is_dir() and (path / BACKGROUND_DIR).is_dir()


def load_crop_folder(path: str | Path, split: str = "train") -> DatasetInfo:
    """Read a crops folder as a :class:`DatasetInfo` of whole crops.

    Every class folder's image is one sample whose box is the whole image; a
    ``background/`` image has no box. Classes are the other folders' names, sorted. Every
    ``CROP_FOLDER_VAL_EVERY``-th image of each folder (sorted by name) is ``"val"``, the
    others ``"train"``.

    Raises:
        ValueError: an unknown split, no class folder, or an unreadable image.
    """
    path = Path(path)
    if split not in ("train", "val"):
        raise ValueError(f"a crops folder has the splits 'train' and 'val', not {split!r}")
    folders = sorted(p for p in path.iterdir() if p.is_dir() and p.name != BACKGROUND_DIR)
    if not folders:
        raise ValueError(f"crops folder {path}: no class folder beside {BACKGROUND_DIR}/")
    names = [p.name for p in folders]
    samples: list[Sample] = []
    for class_id, folder in [(None, path / BACKGROUND_DIR), *enumerate(folders)]:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for i, file in enumerate(files):
            is_val = i % CROP_FOLDER_VAL_EVERY == CROP_FOLDER_VAL_EVERY - 1
            if is_val != (split == "val"):
                continue
            h, w = read_rgb(file).shape[:2]
            boxes = np.zeros((0, 4), np.float32)
            classes = np.zeros(0, np.int64)
            if class_id is not None:
                boxes = np.array([[0, 0, w, h]], np.float32)
                classes = np.array([class_id], np.int64)
            samples.append(Sample(file, w, h, boxes, classes))
    return DatasetInfo(names=names, samples=samples)
