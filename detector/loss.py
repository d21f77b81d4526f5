"""The training loss: objectness, box, class and landmark terms.

Every term is computed only where the targets define it:

* box (1 − CIoU between decoded prediction and ground truth), class (BCE against the
  one-hot class) and landmarks (L1 or smooth-L1 in anchor units) on positives only, landmarks
  further masked by their visibility;
* objectness (BCE) on positives and negatives; ignored slots contribute nothing. The
  objectness target of a positive is its CIoU with the ground truth (clamped to ≥ 0)
  when ``LossConfig.iou_objectness`` is set, else 1.

The total is ``Σ gain·term`` times the batch size, so the gradient per image does not
depend on the batch size (the gains follow YOLOv5's scale).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import complete_box_iou_loss

from detector.boxes import box_convert
from detector.config import LossConfig, ModelConfig
from detector.encoding import (
    CLS,
    IGNORED,
    OBJ,
    POSITIVE,
    Targets,
    anchor_tensor,
    decode_scale,
    grid_cells,
)


@dataclass
class LossItems:
    """The detached terms of one loss evaluation, for logging."""

    box: float
    obj: float
    cls: float
    landmark: float

    def as_dict(self) -> dict[str, float]:
        return {"box": self.box, "obj": self.obj, "cls": self.cls, "lmk": self.landmark}


class DetectionLoss(nn.Module):
    """``loss(outputs, targets) -> (total, LossItems)``.

    Args:
        config: the model configuration (anchors, strides, C, K).
        loss_config: gains and rules.
    """

    def __init__(self, config: ModelConfig, loss_config: LossConfig | None = None):
        super().__init__()
        self.config = config
        self.hyp = loss_config or LossConfig()
        if len(self.hyp.scale_balance) != len(config.strides):
            raise ValueError("LossConfig.scale_balance needs one weight per stride")
        self.register_buffer("anchors", anchor_tensor(config.anchors), persistent=False)

    def forward(
        self, outputs: list[torch.Tensor], targets: Targets
    ) -> tuple[torch.Tensor, LossItems]:
        """Args:
        outputs: per stride ``(B, H, W, A, D)`` raw head output.
        targets: batched :class:`Targets` on the same device.
        """
        c = self.config.num_classes
        k = self.config.num_landmarks
        device = outputs[0].device
        zero = torch.zeros((), device=device)
        box_loss, obj_loss, cls_loss, lm_loss = zero, zero, zero, zero
        num_pos_total = 0
        for i, raw in enumerate(outputs):
            raw = raw.float()
            target, state = targets.target[i], targets.state[i]
            pos = state == POSITIVE  # (B, H, W, A)
            obj_target = torch.zeros_like(raw[..., OBJ])
            num_pos = int(pos.sum())
            if num_pos:
                num_pos_total += num_pos
                cxcywh, _, _, _ = decode_scale(raw, self.anchors[i], self.config.strides[i], c)
                pred_xyxy = box_convert(cxcywh[pos], "cxcywh", "xyxy")  # (P, 4)
                true_xyxy = box_convert(target[..., 0:4][pos], "cxcywh", "xyxy")  # (P, 4)
                ciou_loss = complete_box_iou_loss(pred_xyxy, true_xyxy, reduction="none")
                box_loss = box_loss + ciou_loss.sum()
                iou = (1.0 - ciou_loss.detach()).clamp(min=0)
                obj_target[pos] = iou.to(obj_target.dtype) if self.hyp.iou_objectness else 1.0
                cls_loss = (
                    cls_loss
                    + F.binary_cross_entropy_with_logits(
                        raw[..., CLS : CLS + c][pos],
                        target[..., CLS : CLS + c][pos],
                        reduction="sum",
                    )
                    / c
                )
                if k:
                    lm_loss = lm_loss + self._landmark_term(
                        raw, target, targets.landmark_mask[i], pos, i
                    )
            defined = state != IGNORED
            obj_bce = F.binary_cross_entropy_with_logits(
                raw[..., OBJ][defined], obj_target[defined], reduction="mean"
            )
            obj_loss = obj_loss + self.hyp.scale_balance[i] * obj_bce
        denom = max(num_pos_total, 1)
        box_loss, cls_loss, lm_loss = box_loss / denom, cls_loss / denom, lm_loss / denom
        batch = outputs[0].shape[0]
        total = (
            self.hyp.box_gain * box_loss
            + self.hyp.obj_gain * obj_loss
            + self.hyp.cls_gain * cls_loss
            + self.hyp.landmark_gain * lm_loss
        ) * batch
        items = LossItems(
            float(box_loss.detach()),
            float(obj_loss.detach()),
            float(cls_loss.detach()),
            float(lm_loss.detach()),
        )
        return total, items

    def _landmark_term(
        self,
        raw: torch.Tensor,
        target: torch.Tensor,
        landmark_mask: torch.Tensor,
        pos: torch.Tensor,
        scale: int,
    ) -> torch.Tensor:
        """One scale's landmark term, before the division by the batch's positives.

        L1 (or smooth-L1 with β = 1, ``LossConfig.landmark_loss``) between the raw offsets
        and the target offsets, both in anchor units from the cell centre (the inverse of :func:`decode_scale`), summed over x and
        y, averaged over the labelled points of this scale's positives and weighted by the
        number of positives ``P``: ``P · Σ mask·err / Σ mask`` (0 where nothing is labelled).

        Args:
            raw: ``(B, H, W, A, D)`` raw head output (float32).
            target: ``(B, H, W, A, D)`` targets; landmarks ``x, y`` in input pixels.
            landmark_mask: ``(B, H, W, A, K)`` bool, True where a point is labelled.
            pos: ``(B, H, W, A)`` bool positives.
            scale: index of this scale's stride.
        """
        c, k = self.config.num_classes, self.config.num_landmarks
        mask = landmark_mask[pos]  # (P, K)
        if not mask.any():
            return torch.zeros((), device=raw.device)
        stride = self.config.strides[scale]
        slots = raw.shape[:4]  # (B, H, W, A)
        cells = grid_cells(raw.shape[1], raw.shape[2], raw.device)  # (H, W, 1, 2)
        centre = ((cells + 0.5) * stride).expand(*slots, 2)[pos]  # (P, 2)
        anchor_wh = self.anchors[scale].expand(*slots, 2)[pos]  # (P, 2)
        true_lm = target[..., CLS + c :].reshape(*slots, k, 2)[pos]  # (P, K, 2)
        true_t = (true_lm - centre[:, None]) / anchor_wh[:, None]  # (P, K, 2)
        pred_t = raw[..., CLS + c :].reshape(*slots, k, 2)[pos]  # (P, K, 2)
        if self.hyp.landmark_loss == "l1":
            err = (pred_t - true_t).abs().sum(-1)  # (P, K)
        else:
            err = F.smooth_l1_loss(pred_t, true_t, reduction="none").sum(-1)
        return (err * mask).sum() / mask.sum() * len(mask)
