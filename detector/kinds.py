"""Model kinds: the one seam between a kind of network and everything shared.

A model file's ``kind`` picks a :class:`ModelKind`, which says three things:

1. ``config_type``: the config dataclass stored in the file (``to_dict``/``from_dict``);
2. ``build``: the network, from that config; its ``forward`` returns the raw output;
3. ``candidates``: raw output → :class:`~detector.postprocess.Candidates` (boxes in
   model-input pixels, scores, class ids, landmarks).

Everything after candidates is shared by every kind: thresholds, per-class NMS, mapping
back to the image, ``Detections``, drawing, JSON, the proto, the batcher, video and
evaluation. Training targets and losses stay with each kind's trainer.

Kinds:

* ``grid``: the YOLO grid detector (:mod:`detector.models.yolo`, decoded by
  :func:`detector.encoding.decode_candidates`);
* ``landmark``: the same network and decoding with K > 0 keypoints per anchor;
* ``sliding-window``: a W×W crop classifier written convolutionally, run over an image
  pyramid (:mod:`detector.models.window`, :mod:`detector.window_pyramid`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from detector.config import ModelConfig
from detector.encoding import decode_candidates
from detector.models.window import WindowConfig
from detector.models.yolo import YOLODetector
from detector.postprocess import Candidates
from detector.window_pyramid import WindowDetector, window_detector_candidates

# raw output, config, (height, width) of the input batch -> candidates
CandidatesFn = Callable[[Any, Any, tuple[int, int]], Candidates]


@dataclass(frozen=True)
class ModelKind:
    """How one kind of model is built and read (see the module docstring)."""

    name: str
    config_type: type
    build: Callable[[Any], nn.Module]
    candidates: CandidatesFn


def grid_candidates(
    raw: list[torch.Tensor], config: ModelConfig, input_size: tuple[int, int]
) -> Candidates:
    """Grid head output → candidates: every anchor of every cell, its best class, and
    score = objectness × that class's probability."""
    return Candidates(*decode_candidates(raw, config))


GRID = ModelKind("grid", ModelConfig, YOLODetector, grid_candidates)
KINDS: dict[str, ModelKind] = {
    "grid": GRID,
    "landmark": ModelKind("landmark", ModelConfig, YOLODetector, grid_candidates),
    "sliding-window": ModelKind(
        "sliding-window", WindowConfig, WindowDetector, window_detector_candidates
    ),
}


def get_kind(name: str) -> ModelKind:
    """The kind called ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model kind {name!r}; known kinds: {', '.join(KINDS)}") from None


def grid_kind_name(config: ModelConfig) -> str:
    """``"landmark"`` for a grid model with keypoints, else ``"grid"``."""
    return "landmark" if config.num_landmarks else "grid"
