"""The torch ``Dataset`` of training and validation: read → augment → encode.

Every random choice of an item comes from a generator seeded by ``(seed, epoch,
index)``, so an epoch's data is the same whatever the number of worker processes,
and a resumed run sees exactly the data the killed run would have seen.
"""

from __future__ import annotations

import sys

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from detector.data.transforms import MOSAIC_TILES, Augmenter, Target
from detector.data.types import DatasetInfo, Sample
from detector.encoding import TargetEncoder, Targets


def read_rgb(path) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB; ``ValueError`` if unreadable."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: cannot read image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _read_or_none(path) -> np.ndarray | None:
    """The image, read-only so that no transform can change a cached one in place; ``None``
    (with a warning) when it cannot be read."""
    try:
        image = read_rgb(path)
    except ValueError as err:
        print(f"warning: {err}; the next image is used in its place", file=sys.stderr)
        return None
    image.setflags(write=False)
    return image


def sample_target(sample: Sample) -> Target:
    return Target(
        np.asarray(sample.boxes, np.float32).reshape(-1, 4),
        np.asarray(sample.classes, np.int64).reshape(-1),
        None if sample.landmarks is None else np.asarray(sample.landmarks, np.float32),
    )


class DetectionDataset(Dataset):
    """Items: ``(image (3, S, S) uint8 RGB, Targets, index)``.

    Args:
        info: the split's samples.
        encoder: turns the augmented boxes into grid targets.
        augmenter: the augmentation pipeline (its ``size`` is the model input size).
        augment: False for validation: letterbox only.
        seed: base seed of every random choice.
        cache: decode every image once, up front, and keep it in memory (worker
            processes share the decoded arrays through fork). Decoding is most of an
            item's cost on a CPU; the price is ``H * W * 3`` bytes per image.
    """

    def __init__(
        self,
        info: DatasetInfo,
        encoder: TargetEncoder,
        augmenter: Augmenter,
        augment: bool = True,
        seed: int = 0,
        cache: bool = False,
    ):
        if not info.samples:
            raise ValueError("the dataset split has no usable samples")
        self.info = info
        self.encoder = encoder
        self.augmenter = augmenter
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.images: list[np.ndarray | None] | None = None
        if cache:
            self.images = [_read_or_none(s.image_path) for s in info.samples]

    def cache_bytes(self) -> int:
        """Memory held by the image cache (0 without one)."""
        return sum(i.nbytes for i in self.images or () if i is not None)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.info.samples)

    def load(self, index: int) -> tuple[np.ndarray, Target]:
        """The image and target of sample ``index``; an unreadable image is replaced by the
        next readable one (with a warning), so one bad file never stops an epoch."""
        for offset in range(len(self)):
            position = (index + offset) % len(self)
            sample = self.info.samples[position]
            if self.images is not None:
                image = self.images[position]  # an unreadable one was reported when cached
            else:
                image = _read_or_none(sample.image_path)
            if image is not None:
                return image, sample_target(sample)
        raise ValueError("no image of the dataset can be read")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Targets, int]:
        image, target = self.load(index)
        if self.augment:
            rng = np.random.default_rng((self.seed, self.epoch, index))

            def others(r: np.random.Generator):
                picks = r.integers(0, len(self), MOSAIC_TILES - 1)
                return [self.load(int(i)) for i in picks]

            image, target = self.augmenter(image, target, rng, others)
        else:
            image, target = self.augmenter.letterbox_only(image, target)
        landmarks = None if target.landmarks is None else torch.from_numpy(target.landmarks)
        targets = self.encoder(
            torch.from_numpy(target.boxes), torch.from_numpy(target.classes), landmarks
        )
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # (3, S, S)
        return tensor, targets, index


def collate(
    items: list[tuple[torch.Tensor, Targets, int]],
) -> tuple[torch.Tensor, Targets, list[int]]:
    """Stack items into ``(B, 3, S, S)`` uint8, batched :class:`Targets`, indices."""
    images = torch.stack([item[0] for item in items])
    return images, Targets.stack([item[1] for item in items]), [item[2] for item in items]
