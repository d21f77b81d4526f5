"""Run a :class:`Detector` over a dataset split and score it with COCO metrics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch.utils.data import DataLoader, Dataset

from detector.boxes import Letterbox
from detector.data.dataset import read_rgb
from detector.data.types import DatasetInfo
from detector.evaluate import EvalResult, coco_metrics
from detector.predict import Detector
from detector.progress import progress as show_progress
from detector.settings import EVAL_OPTIONS, Detections, DetectOptions


class _LetterboxedImages(Dataset):
    def __init__(self, info: DatasetInfo, detector: Detector):
        self.info = info
        self.detector = detector

    def __len__(self) -> int:
        return len(self.info.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, Letterbox, int]:
        image, lb = self.detector.preprocess(read_rgb(self.info.samples[index].image_path))
        return image, lb, index


def _collate(items):
    return [i[0] for i in items], [i[1] for i in items], [i[2] for i in items]


@dataclass
class Validation:
    """Metrics and the per-image detections they were computed from (sample order)."""

    result: EvalResult
    detections: list[Detections]


def validate(
    detector: Detector,
    info: DatasetInfo,
    batch_size: int = 16,
    workers: int = 0,
    progress: bool = True,
    options: DetectOptions = EVAL_OPTIONS,
) -> Validation:
    """Detect on every sample of ``info`` and compute COCO bbox metrics against its labels.

    ``options`` default to :data:`~detector.settings.EVAL_OPTIONS`, which keep nearly
    every box: COCO AP integrates over all scores.
    """
    loader = DataLoader(
        _LetterboxedImages(info, detector),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
    )
    detections: list[Detections | None] = [None] * len(info.samples)
    bar = show_progress(loader, desc="validate", unit="batch", enabled=progress, leave=False)
    for images, letterboxes, indices in bar:
        out = detector.detect_letterboxed(images, letterboxes, options)
        for index, det in zip(indices, out, strict=True):
            detections[index] = det
    predictions = [(d.boxes, d.scores, d.class_ids) for d in detections]
    result = coco_metrics(info.samples, predictions, info.names)
    return Validation(result, detections)
