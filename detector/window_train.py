"""What training a sliding-window model adds to the trainer (:mod:`detector.train`).

The trainer's steps are shared by every kind; this module gives the sliding-window kind's
parts: its :class:`WindowConfig` from the options and the training boxes, its crop
dataset and loss, and hard-negative mining (over the training images; of a crops folder,
over the scenes of its ``background/``) before the epochs
:func:`hard_negative_epochs` names. The network trained on crops is the pyramid model's
:class:`~detector.models.window.WindowClassifier` (``WindowDetector.classifier``), so
``last`` / ``best`` hold a whole ``sliding-window`` model file.

Mined windows are recorded in every checkpoint's metadata (``hard_negatives``: rows
``[sample index, x0, y0, x1, y1]``), so ``--resume`` trains on exactly the same crops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from detector.config import WindowTrainConfig
from detector.data.transforms import AugmentConfig
from detector.data.types import DatasetInfo
from detector.data.window_crops import (
    CENTRE_JITTER,
    WindowCropDataset,
    is_crop_folder,
    is_scene,
)
from detector.hard_negatives import false_positive_windows
from detector.models.window import WindowConfig

if TYPE_CHECKING:
    from detector.train import TrainRun

WINDOW_KIND = "sliding-window"
MIN_SIZE_PERCENTILE = 2  # auto min_size: this percentile of the boxes' longer sides
# ... and at least window / MAX_UPSCALE: the pyramid enlarges the input at most 2x (its
# first level costs MAX_UPSCALE**2 times the input's pixels).
MAX_UPSCALE = 2.0
BORDER_FRACTION = 4  # default border: window // 4 pixels around each pyramid level
HARD_NEGATIVES_KEY = "hard_negatives"  # checkpoint metadata: [[sample, x0, y0, x1, y1], ...]


def window_model_config(
    window: WindowTrainConfig,
    info: DatasetInfo,
    input_size: int,
    log: Callable[[str], None],
    whole_crops: bool = False,
) -> WindowConfig:
    """The classifier and pyramid of a new window model for ``info`` at ``input_size``.

    ``whole_crops`` (a crops folder): the crops carry no box target, so the model's boxes
    are its windows (``regress_boxes`` False), and no object size, so ``min_size`` None
    becomes ``window / MAX_UPSCALE`` (the crops' letterboxed sides would give the input).

    ``min_size`` None becomes the ``MIN_SIZE_PERCENTILE``-th percentile of the training
    boxes' longer sides in letterboxed input pixels, at least ``window / MAX_UPSCALE``.
    """
    min_size = window.min_size
    if min_size is None and whole_crops:  # whole crops say nothing of the objects' sizes
        min_size = window.window / MAX_UPSCALE
        log(f"min size: {min_size:g} input pixels (window / {MAX_UPSCALE:g}: whole crops)")
    if min_size is None:
        sides = [
            (s.boxes[:, 2:] - s.boxes[:, :2]).max(1) * input_size / max(s.width, s.height)
            for s in info.samples
            if len(s.boxes)
        ]
        longer = np.concatenate(sides) if sides else np.zeros(0)
        min_size = float(np.percentile(longer, MIN_SIZE_PERCENTILE)) if len(longer) else 0.0
        floor = window.window / MAX_UPSCALE
        min_size = round(min(max(min_size, floor), input_size), 1)
        log(
            f"min size: {min_size:g} input pixels (the {MIN_SIZE_PERCENTILE}nd percentile of "
            f"the boxes' longer sides, at least window / {MAX_UPSCALE:g})"
        )
    shape = {}
    if window.stage_widths is not None:
        shape["stage_widths"] = tuple(window.stage_widths)
    if window.fc_widths is not None:
        shape["fc_widths"] = tuple(window.fc_widths)
    return WindowConfig(
        num_classes=len(info.names),
        window=window.window,
        class_names=tuple(info.names),
        input_size=input_size,
        min_size=min_size,
        grayscale=window.grayscale,
        regress_boxes=not whole_crops,
        border=window.window // BORDER_FRACTION if window.border is None else window.border,
        **shape,
    )


def window_dataset(
    info: DatasetInfo,
    config: WindowConfig,
    window: WindowTrainConfig,
    augment: AugmentConfig,
    data_path: str,
    seed: int,
) -> WindowCropDataset:
    """The crop dataset of a training split (whole crops for a crops folder): positives
    jittered by at least half the stride, negatives reaching as far past the image's edge
    as the model's windows (its ``border``)."""
    return WindowCropDataset(
        info,
        config.window,
        config.input_size,
        config.smallest_object,
        augment,
        seed=seed,
        negatives_per_positive=window.negatives_per_positive,
        whole_images=is_crop_folder(data_path),
        centre_jitter=max(CENTRE_JITTER, config.stride / (2 * config.window)),
        overhang=config.border / config.window,
    )


def hard_negative_epochs(epochs: int, window: WindowTrainConfig) -> list[int]:
    """The 0-based epochs before which hard negatives are mined (sorted, each >= 1).

    ``window.hard_negative_epochs`` (1-based "after epoch E") when given; otherwise
    ``hard_negative_rounds`` rounds spread over the second half: round ``k`` before epoch
    ``epochs // 2 + k * (epochs - epochs // 2) // rounds``. A round that falls on or after
    the last epoch is dropped.
    """
    if window.hard_negative_epochs:
        wanted = set(window.hard_negative_epochs)
    else:
        half, rounds = epochs // 2, window.hard_negative_rounds
        wanted = {half + k * (epochs - half) // rounds for k in range(rounds)}
    return sorted(e for e in wanted if 1 <= e < epochs)


def restore_hard_negatives(dataset: WindowCropDataset, rows: list) -> None:
    """Put the windows a checkpoint recorded back into ``dataset``."""
    for index, *window in rows:
        dataset.add_hard_negatives(int(index), np.asarray(window, np.float64))


def mine_hard_negatives(run: TrainRun, epoch: int) -> None:
    """Before ``epoch``, if it is a mining epoch: the EMA model's false positives on the
    training images become negatives of the crop dataset; logs how many."""
    window = run.options.window
    if epoch not in hard_negative_epochs(run.cfg.epochs, window):
        return
    from detector.predict import Detector

    detector = Detector(run.ema.module, run.model_config, run.device, WINDOW_KIND)
    dataset: WindowCropDataset = run.dataset
    indices = mining_indices(dataset)
    found = false_positive_windows(
        detector,
        replace(dataset.info, samples=[dataset.info.samples[i] for i in indices]),
        window.hard_negative_score,
        window.hard_negatives_per_image,
        batch_size=run.cfg.batch_size,
        progress=run.main_process and run.options.progress,
    )
    rows = list(run.metadata.get(HARD_NEGATIVES_KEY, []))
    for index, windows in zip(indices, found, strict=True):
        dataset.add_hard_negatives(index, windows)
        rows += [[index, *(int(v) for v in w)] for w in windows]
    run.metadata[HARD_NEGATIVES_KEY] = rows
    added = sum(len(w) for w in found)
    images = sum(1 for w in found if len(w))
    run.log(
        f"hard negatives before epoch {epoch + 1}: {added} false positives (score >= "
        f"{window.hard_negative_score:g}) from {images} of {len(found)} images added; "
        f"{dataset.num_hard_negatives()} in all"
    )


def mining_indices(dataset: WindowCropDataset) -> list[int]:
    """The samples hard-negative mining runs on: every image of a box dataset; of a crops
    folder, its scenes only (a whole crop is one window, nothing to mine in it)."""
    samples = dataset.info.samples
    if not dataset.whole_images:
        return list(range(len(samples)))
    return [i for i, s in enumerate(samples) if is_scene(s, dataset.window)]


def window_train_metadata(window: WindowTrainConfig) -> dict:
    """What a window run's checkpoints record of its window settings."""
    from dataclasses import asdict

    return {"window_train": asdict(replace(window))}
