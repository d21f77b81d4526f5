"""``Detector``: the one inference path shared by the CLI, evaluation, video and the server.

Data flow: images (H, W, 3) uint8 RGB → letterbox to the model size (CPU, keeps the
scale and padding) → one uint8 batch → device → float → model → decode → per-class
NMS → boxes mapped back to each image's own pixels → :class:`Detections`.

The work is split in two so that a server can run the first half in a thread pool:
:meth:`Detector.preprocess` (CPU, per image) and :meth:`Detector.infer` (one batched
forward on the device). :meth:`Detector.detect` chains them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detector.boxes import Letterbox, boxes_to_original, letterbox_image, points_to_original
from detector.checkpoint import Checkpoint
from detector.config import ModelConfig
from detector.encoding import Decoded, decode
from detector.models.yolo import YOLODetector
from detector.postprocess import check_thresholds, select_detections
from detector.weights import (  # noqa: F401  (MODEL_SUFFIX, WEIGHTS_DIR: re-exported)
    DEFAULT_MODEL,
    MODEL_SUFFIX,
    WEIGHTS_DIR,
    resolve_model_path,
)

PAD_VALUE = 114  # grey of the letterbox padding, as in training
PREDICTED = 1.0  # landmark "visibility" column of a predicted point


@dataclass
class Detections:
    """The detections of one image, in that image's pixels.

    Attributes:
        boxes: ``(N, 4)`` float32 xyxy pixels, clipped to the image.
        scores: ``(N,)`` float32 in [0, 1], decreasing.
        class_ids: ``(N,)`` int64.
        labels: the N class names.
        landmarks: ``(N, K, 3)`` float32 ``(x, y, 1.0)`` pixels, or ``None`` when the
            model has no landmarks.
        image_size: ``(height, width)`` of the image.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    labels: list[str]
    landmarks: np.ndarray | None
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.scores)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form: one dict per detection, boxes rounded to 0.01 px."""
        items = []
        for i in range(len(self)):
            item = {
                "box": [round(float(v), 2) for v in self.boxes[i]],
                "score": round(float(self.scores[i]), 4),
                "class_id": int(self.class_ids[i]),
                "label": self.labels[i],
            }
            if self.landmarks is not None:
                item["landmarks"] = [
                    [round(float(x), 2), round(float(y), 2)] for x, y, _ in self.landmarks[i]
                ]
            items.append(item)
        return {"image_size": list(self.image_size), "detections": items}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU; anything else is passed to torch."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but CUDA is not available here")
    return device


def as_rgb_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Check one image and bring it to ``(H, W, 3)`` uint8.

    Grayscale ``(H, W)`` or ``(H, W, 1)`` is repeated to 3 channels; a 4th (alpha)
    channel is dropped. Anything else raises ``ValueError``.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(
            f"{name} must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {image.shape}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name} is empty: {image.shape[0]}x{image.shape[1]} pixels")
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.shape[2] == 4:
        return np.ascontiguousarray(image[:, :, :3])
    return image


class Detector:
    """A loaded model with its pre- and post-processing.

    Args:
        model: a network whose ``forward`` returns the raw grid head output.
        config: its :class:`ModelConfig`.
        device: where the model runs.
        metadata: the checkpoint's metadata (name, metrics…), for reporting.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        config: ModelConfig,
        device: torch.device,
        kind: str = "grid",
        name: str = "model",
        metadata: dict | None = None,
    ):
        self.config = config
        self.device = device
        self.kind = kind
        self.name = name
        self.metadata = metadata or {}
        self.use_cuda = device.type == "cuda"
        # Channels-last on every device: measured 1.16x (1 thread) to 1.27x (2 threads)
        # the images/s of NCHW on a 2-core CPU; on CUDA it is what bf16 tensor cores want.
        model = model.to(device, memory_format=torch.channels_last).eval()
        self.model = model
        self.names = list(config.names)

    @classmethod
    def load(
        cls, path_or_name: str | Path = DEFAULT_MODEL, device: str | torch.device = "auto"
    ) -> Detector:
        """Load a model file or a shipped model by name (see :func:`resolve_model_path`)."""
        path = resolve_model_path(path_or_name)
        device = resolve_device(device)
        checkpoint = Checkpoint.load(path)
        if checkpoint.kind != "grid":
            raise ValueError(f"{path}: model kind {checkpoint.kind!r} is not supported by Detector")
        model = YOLODetector(checkpoint.config)
        model.load_state_dict(checkpoint.inference_state)
        return cls(
            model, checkpoint.config, device, checkpoint.kind, path.stem, checkpoint.metadata
        )

    @property
    def input_size(self) -> int:
        return self.config.input_size

    def preprocess(self, image: np.ndarray, name: str = "image") -> tuple[np.ndarray, Letterbox]:
        """Letterbox one ``(H, W, 3)`` uint8 RGB image to the model size (CPU).

        Returns the ``(S, S, 3)`` uint8 letterboxed image and its :class:`Letterbox`;
        ``name`` is how a ``ValueError`` refers to an unusable image.
        """
        return letterbox_image(as_rgb_image(image, name), self.input_size, PAD_VALUE)

    @torch.inference_mode()
    def infer(
        self,
        batch: np.ndarray | torch.Tensor,
        letterboxes: Sequence[Letterbox],
        score_threshold: float = 0.25,
        iou_threshold: float = 0.45,
        max_detections: int = 300,
        classes: Sequence[int | str] | None = None,
    ) -> list[Detections]:
        """One forward on a letterboxed batch, then post-processing: :meth:`forward`
        followed by :meth:`select`.

        Args:
            batch: ``(B, S, S, 3)`` uint8 letterboxed RGB images (numpy or tensor, pinned
                memory welcome).
            letterboxes: the B letterbox maps from :meth:`preprocess`.

        Returns:
            One :class:`Detections` per image, in original pixels.
        """
        check_thresholds(score_threshold, iou_threshold, max_detections)
        class_ids = self.class_ids(classes)
        decoded = self.forward(batch, len(letterboxes))
        return self.select(
            decoded, letterboxes, score_threshold, iou_threshold, max_detections, class_ids
        )

    @torch.inference_mode()
    def forward(self, batch: np.ndarray | torch.Tensor, count: int | None = None) -> Decoded:
        """The device part: ``(B, S, S, 3)`` uint8 → device → float → model → decode.

        ``count`` (B), when given, is checked against the batch. Returns the decoded
        predictions of every anchor, still on the device.
        """
        x = torch.as_tensor(batch)
        expected = (len(x) if count is None else count, self.input_size, self.input_size, 3)
        if tuple(x.shape) != expected or x.dtype != torch.uint8:
            raise ValueError(
                f"batch must be {expected} uint8 (one letterboxed image per letterbox), "
                f"got {tuple(x.shape)} {x.dtype}"
            )
        x = x.to(self.device, non_blocking=True)  # (B, S, S, 3) uint8
        x = x.permute(0, 3, 1, 2).float().div_(255)  # (B, 3, S, S)
        x = x.contiguous(memory_format=torch.channels_last)
        if self.use_cuda:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                raw = self.model(x)
        else:
            raw = self.model(x)
        return decode(raw, self.config)

    @torch.inference_mode()
    def select(
        self,
        decoded: Decoded,
        letterboxes: Sequence[Letterbox],
        score_threshold: float = 0.25,
        iou_threshold: float = 0.45,
        max_detections: int = 300,
        classes: Sequence[int | str] | None = None,
    ) -> list[Detections]:
        """Post-process decoded predictions (one image per letterbox): score threshold,
        per-class NMS, top-k, mapping back to original pixels. Several calls with
        different settings may share one :meth:`forward` (see :meth:`Decoded.take`)."""
        check_thresholds(score_threshold, iou_threshold, max_detections)
        selected = select_detections(
            decoded, score_threshold, iou_threshold, max_detections, self.class_ids(classes)
        )
        return [self._to_original(det, lb) for det, lb in zip(selected, letterboxes, strict=True)]

    def detect(
        self,
        images: Sequence[np.ndarray],
        score_threshold: float = 0.25,
        iou_threshold: float = 0.45,
        max_detections: int = 300,
        classes: Sequence[int | str] | None = None,
    ) -> list[Detections]:
        """Detect objects in a list of ``(H, W, 3)`` uint8 RGB images of any sizes.

        Grayscale images are repeated to 3 channels and an alpha channel is dropped; an
        empty list gives an empty list. ``classes`` keeps only those class ids or names:
        the unfiltered result restricted to them.

        Returns:
            One :class:`Detections` per image: boxes ``(N, 4)`` xyxy pixels of that image.

        Raises:
            ValueError: a threshold outside [0, 1], ``max_detections < 1``, an unknown
                class, or an image (named ``images[i]``) that is not a uint8 array of
                shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) with H, W >= 1.
        """
        if isinstance(images, np.ndarray) and images.ndim in (2, 3):
            raise ValueError("detect takes a list of images; wrap a single image in a list")
        check_thresholds(score_threshold, iou_threshold, max_detections)
        if len(images) == 0:
            return []
        prepared = [self.preprocess(img, f"images[{i}]") for i, img in enumerate(images)]
        batch = np.stack([p[0] for p in prepared])
        return self.infer(
            batch, [p[1] for p in prepared], score_threshold, iou_threshold, max_detections, classes
        )

    def class_ids(self, classes: Sequence[int | str] | None) -> list[int] | None:
        """Class ids from ids or names; ``ValueError`` names an unknown one."""
        if classes is None:
            return None
        ids = []
        for c in classes:
            if isinstance(c, str) and not c.isdigit():
                if c not in self.names:
                    raise ValueError(f"unknown class {c!r}; the model knows {self.names}")
                ids.append(self.names.index(c))
            else:
                if isinstance(c, str) and c in self.names:
                    ids.append(self.names.index(c))
                    continue
                i = int(c)
                if not 0 <= i < len(self.names):
                    raise ValueError(f"class id {i} out of range [0, {len(self.names)})")
                ids.append(i)
        return ids

    def _to_original(self, det, lb: Letterbox) -> Detections:
        boxes = boxes_to_original(det.boxes.float(), lb).cpu().numpy().astype(np.float32)
        class_ids = det.class_ids.cpu().numpy().astype(np.int64)
        landmarks = None
        if self.config.num_landmarks:
            points = points_to_original(det.landmarks.float(), lb).cpu().numpy()
            visible = np.full((*points.shape[:2], 1), PREDICTED, np.float32)
            landmarks = np.concatenate((points.astype(np.float32), visible), -1)
        return Detections(
            boxes=boxes,
            scores=det.scores.float().cpu().numpy(),
            class_ids=class_ids,
            labels=[self.names[i] for i in class_ids],
            landmarks=landmarks,
            image_size=lb.original_size,
        )
