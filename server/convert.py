"""Between protobuf messages and the library's types, for the servicer and the client."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from detector.settings import Detections, DetectOptions
from proto.detector.v1 import detector_pb2 as pb

if TYPE_CHECKING:  # the server's side; the client imports this module without them
    from server.batcher import Timings
    from server.images import ImageSource
    from server.repository import ServedModel

MS_PER_S = 1000.0
LANDMARK_COLUMNS = 3  # x, y, visibility
FLOAT32_DIGITS = 6  # decimal digits a float32 holds

ImageLike = np.ndarray | bytes | str | os.PathLike  # an array, file bytes, or a file path


def image_to_proto(image: ImageLike) -> pb.Image:
    """A request image from an ``(H, W[, C])`` uint8 RGB array (sent raw), the bytes of an
    image file, or the path of one (both sent encoded)."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(
                f"an image array must be (H, W) or (H, W, C) uint8, got {image.shape} {image.dtype}"
            )
        channels = 1 if image.ndim == 2 else image.shape[2]
        raw = pb.RawImage(
            data=np.ascontiguousarray(image).tobytes(),
            width=image.shape[1],
            height=image.shape[0],
            channels=channels,
        )
        return pb.Image(raw=raw)
    if isinstance(image, bytes | bytearray):
        return pb.Image(encoded=bytes(image))
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file {path} does not exist")
        return pb.Image(encoded=path.read_bytes())
    raise ValueError(f"an image must be an array, bytes or a path, got {type(image).__name__}")


def image_from_proto(image: pb.Image) -> ImageSource:
    """The request image for :meth:`server.batcher.Batcher.submit`."""
    from server.images import RawPixels

    kind = image.WhichOneof("data")
    if kind == "encoded":
        return image.encoded
    if kind == "raw":
        raw = image.raw
        return RawPixels(raw.data, raw.width, raw.height, raw.channels)
    raise ValueError("the request has no image: set image.encoded or image.raw")


def options_from_request(request: pb.DetectRequest, defaults: DetectOptions) -> DetectOptions:
    """The request's settings, ``defaults`` (the served model's) where unset. Class ids
    and names are checked against the model by the batcher.

    Raises:
        ValueError: a threshold outside [0, 1].
    """
    return defaults.with_changes(
        score_threshold=request.score_threshold if request.HasField("score_threshold") else None,
        iou_threshold=request.iou_threshold if request.HasField("iou_threshold") else None,
        max_detections=request.max_detections or None,
        classes=(*request.class_ids, *request.class_names) or None,
        merge_iou=request.merge_iou if request.HasField("merge_iou") else None,
    )


def request_to_proto(
    image: ImageLike,
    *,
    model: str = "",
    score_threshold: float | None = None,
    iou_threshold: float | None = None,
    max_detections: int | None = None,
    classes: Sequence[int | str] | None = None,
    merge_iou: float | None = None,
    request_id: str = "",
) -> pb.DetectRequest:
    """A ``DetectRequest``; ``None`` leaves a setting to the model's default."""
    ids = [int(c) for c in classes or () if not isinstance(c, str)]
    names = [c for c in classes or () if isinstance(c, str)]
    return pb.DetectRequest(
        request_id=request_id,
        model=model,
        image=image_to_proto(image),
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        max_detections=max_detections or 0,
        class_ids=ids,
        class_names=names,
        merge_iou=merge_iou,
    )


def response_to_proto(
    request_id: str, model: str, detections: Detections, timings: Timings, total_s: float
) -> pb.DetectResponse:
    """The ``DetectResponse`` of one image."""
    height, width = detections.image_size
    items = []
    for i in range(len(detections)):
        x_min, y_min, x_max, y_max = (float(v) for v in detections.boxes[i])
        landmarks = []
        if detections.landmarks is not None:
            landmarks = [
                pb.Landmark(x=float(x), y=float(y), visibility=float(v))
                for x, y, v in detections.landmarks[i]
            ]
        items.append(
            pb.Detection(
                box=pb.Box(x_min=x_min, y_min=y_min, x_max=x_max, y_max=y_max),
                score=float(detections.scores[i]),
                class_id=int(detections.class_ids[i]),
                label=detections.labels[i],
                landmarks=landmarks,
            )
        )
    return pb.DetectResponse(
        request_id=request_id,
        model=model,
        image_size=pb.ImageSize(width=width, height=height),
        detections=items,
        timings=pb.Timings(
            decode_ms=timings.decode_s * MS_PER_S,
            queue_ms=timings.queue_s * MS_PER_S,
            inference_ms=timings.inference_s * MS_PER_S,
            total_ms=total_s * MS_PER_S,
            batch_size=timings.batch_size,
        ),
    )


def detections_from_proto(response: pb.DetectResponse, num_landmarks: int = 0) -> Detections:
    """The :class:`Detections` of a ``DetectResponse``.

    ``landmarks`` is ``(N, K, 3)`` when the detections carry keypoints (or
    ``num_landmarks`` says the model has K of them), else ``None``.
    """
    items = response.detections
    boxes = np.array(
        [[d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max] for d in items], np.float32
    ).reshape(-1, 4)
    k = max([len(d.landmarks) for d in items] + [num_landmarks])
    landmarks = None
    if k:
        landmarks = np.array(
            [[[p.x, p.y, p.visibility] for p in d.landmarks] for d in items], np.float32
        ).reshape(-1, k, LANDMARK_COLUMNS)
    return Detections(
        boxes=boxes,
        scores=np.array([d.score for d in items], np.float32),
        class_ids=np.array([d.class_id for d in items], np.int64),
        labels=[d.label for d in items],
        landmarks=landmarks,
        image_size=(response.image_size.height, response.image_size.width),
    )


@dataclass(frozen=True)
class ModelInfo:
    """What ``ListModels`` says about one model."""

    name: str
    kind: str
    class_names: tuple[str, ...]
    input_size: int
    landmark_names: tuple[str, ...]
    num_landmarks: int
    sha256: str
    default_score_threshold: float
    default_iou_threshold: float
    default_max_detections: int
    is_default: bool
    skeleton: tuple[tuple[int, int], ...] = ()  # 0-based landmark index pairs, drawn as lines
    default_merge_iou: float = 0.0


def model_info_to_proto(model: ServedModel, is_default: bool) -> pb.ModelInfo:
    config = model.detector.config
    return pb.ModelInfo(
        name=model.name,
        kind=model.detector.kind,
        class_names=list(model.detector.names),
        input_size=config.input_size,
        landmark_names=list(config.landmark_names),
        num_landmarks=config.num_landmarks,
        sha256=model.sha256,
        default_score_threshold=model.options.score_threshold,
        default_iou_threshold=model.options.iou_threshold,
        default_max_detections=model.options.max_detections,
        default_merge_iou=model.options.merge_iou,
        is_default=is_default,
        skeleton=[pb.SkeletonEdge(first=i, second=j) for i, j in config.skeleton],
    )


def model_info_from_proto(info: pb.ModelInfo) -> ModelInfo:
    """The client's view of a ``ModelInfo`` (thresholds rounded from float32)."""
    return ModelInfo(
        name=info.name,
        kind=info.kind,
        class_names=tuple(info.class_names),
        input_size=info.input_size,
        landmark_names=tuple(info.landmark_names),
        num_landmarks=info.num_landmarks,
        sha256=info.sha256,
        default_score_threshold=round(info.default_score_threshold, FLOAT32_DIGITS),
        default_iou_threshold=round(info.default_iou_threshold, FLOAT32_DIGITS),
        default_max_detections=info.default_max_detections,
        default_merge_iou=round(info.default_merge_iou, FLOAT32_DIGITS),
        is_default=info.is_default,
        skeleton=tuple((edge.first, edge.second) for edge in info.skeleton),
    )
