"""The sliding-window classifier's training loss on crops.

``loss = cls + box_gain * box`` with

* ``cls``: cross-entropy over the C + 1 logits (index 0 the background), mean over crops;
* ``box``: smooth-L1 (``beta`` = 1/9, as Fast R-CNN's box regressor) between the 4
  predicted values and :func:`~detector.models.window.encode_window_box`'s target, summed
  over the 4 values, mean over the crops that have a target (positives cut around a
  labelled box; negatives and whole crops of a crops folder have none).

``box_gain`` defaults to 1 (Fast R-CNN's λ): at a typical early error of 0.05 of the
window side the box gradient (0.45) is of the order of the class gradient.

The reported terms map onto ``results.csv``'s columns: ``box`` and ``cls`` as above
(before the gain, as the grid loss reports its terms), ``obj`` and ``lmk`` 0: the background logit plays the part of
objectness and is counted in ``cls``; a window model has no landmarks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from detector.data.window_crops import WindowTargets
from detector.loss import LossItems
from detector.models.window import NUM_BOX_VALUES

WINDOW_BOX_GAIN = 1.0  # weight of the box term
SMOOTH_L1_BETA = 1 / 9  # smooth-L1's switch from quadratic to linear, in target units


class WindowLoss(nn.Module):
    """``loss(raw, targets) -> (total, LossItems)`` for a batch of crops.

    Args:
        num_classes: C.
        box_gain: weight of the box term.
    """

    def __init__(self, num_classes: int, box_gain: float = WINDOW_BOX_GAIN):
        super().__init__()
        self.num_classes = num_classes
        self.box_gain = box_gain

    def forward(self, raw: torch.Tensor, targets: WindowTargets) -> tuple[torch.Tensor, LossItems]:
        """
        Args:
            raw: ``(N, C + 5, 1, 1)`` (or ``(N, C + 5)``) classifier output on W×W crops.
            targets: the crops' :class:`WindowTargets`, on the same device.

        Returns:
            The total (a scalar with a graph, 0 for an empty batch) and its terms.
        """
        c = self.num_classes
        out = raw.float().flatten(1)  # (N, C + 5)
        if out.shape[1] != c + 1 + NUM_BOX_VALUES:
            raise ValueError(f"raw must have {c + 1 + NUM_BOX_VALUES} channels, got {out.shape[1]}")
        n = max(len(out), 1)
        cls = F.cross_entropy(out[:, : c + 1], targets.labels, reduction="sum") / n
        has_box = targets.has_box
        per_value = F.smooth_l1_loss(
            out[has_box, c + 1 :], targets.boxes[has_box], reduction="sum", beta=SMOOTH_L1_BETA
        )
        box = per_value / max(int(has_box.sum()), 1)
        total = cls + self.box_gain * box
        items = LossItems(box=float(box.detach()), obj=0.0, cls=float(cls.detach()), landmark=0.0)
        return total, items
