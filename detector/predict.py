"""``Detector``: the one inference path shared by the CLI, evaluation, video and the server.

Data flow: images (H, W, 3) uint8 RGB → letterbox to the model size (CPU, keeps the
scale and padding) → one uint8 batch → device → float → model → decode → per-class
NMS → boxes mapped back to each image's own pixels → :class:`Detections`.

Call :meth:`Detector.detect`. A server that batches other callers' images runs its three
stages apart: :meth:`Detector.preprocess` (CPU, one image, in a thread pool),
:meth:`Detector.forward` (one batch on the device) and :meth:`Detector.postprocess`
(per set of :class:`~detector.settings.DetectOptions`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detector.boxes import (
    Letterbox,
    boxes_to_original,
    letterbox_image,
    minimal_input_size,
    points_to_original,
)
from detector.checkpoint import Checkpoint
from detector.config import ModelConfig
from detector.device import resolve_device
from detector.kinds import get_kind
from detector.models.fuse import fuse_conv_bn
from detector.postprocess import Candidates, RawDetections, select_detections
from detector.settings import (
    PREDICTED,
    Detections,
    DetectOptions,
    as_rgb_image,
    class_ids,
    options_of,
)
from detector.weights import (  # noqa: F401  (MODEL_SUFFIX, WEIGHTS_DIR: re-exported)
    DEFAULT_MODEL,
    MODEL_SUFFIX,
    WEIGHTS_DIR,
    resolve_model_path,
)

BACKENDS = ("torch", "onnxruntime")  # what runs the network (see Detector.load)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads, then restore the number it
    had (process-wide, as ``torch.set_num_threads`` is); ``None``: leave it."""
    before = torch.get_num_threads()
    if threads is None or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Detector:
    """A loaded model with its pre- and post-processing, for every model kind.

    Args:
        model: a network whose ``forward`` returns its raw output.
        config: its config (:class:`ModelConfig`, or the config type of its kind).
        device: where the model runs.
        kind: the model kind (see :mod:`detector.kinds`), which turns the raw output into
            candidates; everything after that is shared.
        name: a name for messages.
        metadata: the checkpoint's metadata (name, metrics…), for reporting.

    Raises:
        ValueError: an unknown kind.
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
        self._candidates = get_kind(kind).candidates
        self.name = name
        self.metadata = metadata or {}
        self.use_cuda = device.type == "cuda"
        self.pad_to_square = False  # True: letterbox every image to the model's square
        # torch threads of forward's and postprocess's own work: what the network asks
        # for (an ONNX Runtime network: 1, see OnnxRuntimeNetwork.torch_threads), else
        # None, as the process has them.
        self.torch_threads: int | None = getattr(model, "torch_threads", None)
        # Channels-last on every device: measured 1.16x (1 thread) to 1.27x (2 threads)
        # the images/s of NCHW on a 2-core CPU; on CUDA it is what bf16 tensor cores want.
        model = model.to(device, memory_format=torch.channels_last).eval()
        self.model = model
        self.names = list(config.names)

    @classmethod
    def load(
        cls,
        path_or_name: str | Path = DEFAULT_MODEL,
        device: str | torch.device = "auto",
        backend: str = "torch",
    ) -> Detector:
        """Load a model file or a shipped model by name (see :func:`resolve_model_path`).

        With ``backend="onnxruntime"`` the file is an ``.onnx`` model written by
        ``detector export`` (needs the ``onnx`` extra), run by ONNX Runtime on the CPU;
        everything around the network is the same.

        Raises:
            FileNotFoundError: no such file or shipped model.
            ValueError: not a model file, an unknown backend or kind, or a device that
                is not there.
        """
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {list(BACKENDS)}")
        path = resolve_model_path(path_or_name)
        if backend == "onnxruntime" and str(device) == "auto":
            device = "cpu"  # ONNX Runtime runs here on the CPU whatever GPU there is
        device = resolve_device(device)
        if backend == "onnxruntime":
            return cls._load_onnx(path, device)
        if path.suffix == ".onnx":
            raise ValueError(f"{path} is an ONNX model: load it with backend='onnxruntime'")
        checkpoint = Checkpoint.load(path)
        model = get_kind(checkpoint.kind).build(checkpoint.config)
        model.load_state_dict(checkpoint.inference_state)
        # Inference only from here: BatchNorm folded into the convolutions, measured 1.12x
        # the forward's images/s on a 2-core CPU (the trainer's own Detector is not fused).
        fuse_conv_bn(model.eval())
        return cls(
            model, checkpoint.config, device, checkpoint.kind, path.stem, checkpoint.metadata
        )

    @classmethod
    def _load_onnx(cls, path: Path, device: torch.device) -> Detector:
        from detector.export import OnnxRuntimeNetwork

        if path.suffix != ".onnx":
            raise ValueError(
                f"backend onnxruntime runs an .onnx file written by 'detector export', got {path}"
            )
        if device.type != "cpu":
            raise ValueError("backend onnxruntime runs on the CPU here; use --device cpu")
        network = OnnxRuntimeNetwork(path)
        return cls(network, network.config, device, network.kind, path.stem, network.metadata)

    @property
    def input_size(self) -> int:
        return self.config.input_size

    def detect(
        self, images: Sequence[np.ndarray], options: DetectOptions | None = None, **settings: Any
    ) -> list[Detections]:
        """Detect objects in a list of ``(H, W, 3)`` uint8 RGB images of any sizes.

        Grayscale images are repeated to 3 channels and an alpha channel is dropped; an
        empty list gives an empty list.

        Args:
            images: the images.
            options: thresholds, most detections, class filter (ids or names);
                :data:`~detector.settings.DEFAULT_OPTIONS` when None.
            settings: fields of :class:`~detector.settings.DetectOptions` that replace
                those of ``options``, e.g. ``score_threshold=0.5``.

        Returns:
            One :class:`Detections` per image: boxes ``(N, 4)`` xyxy pixels of that image.

        Raises:
            ValueError: a bad setting, an unknown class, or an image (named
                ``images[i]``) that is not a uint8 array of shape (H, W), (H, W, 1),
                (H, W, 3) or (H, W, 4) with H, W >= 1.
        """
        if isinstance(images, np.ndarray) and images.ndim in (2, 3):
            raise ValueError("detect takes a list of images; wrap a single image in a list")
        options = options_of(options, **settings)
        class_ids(options.classes, self.names)  # an unknown class fails before any work
        if len(images) == 0:
            return []
        prepared = [self.preprocess(img, f"images[{i}]") for i, img in enumerate(images)]
        return self.detect_letterboxed([p[0] for p in prepared], [p[1] for p in prepared], options)

    def detect_letterboxed(
        self,
        letterboxed: Sequence[np.ndarray],
        letterboxes: Sequence[Letterbox],
        options: DetectOptions,
    ) -> list[Detections]:
        """Stages 2 and 3 for images already letterboxed by :meth:`preprocess`: one
        forward per input shape (images of one shape batch together), answers in order."""
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(letterboxed):
            by_shape.setdefault(image.shape, []).append(i)
        results: list[Detections | None] = [None] * len(letterboxed)
        for indices in by_shape.values():
            candidates = self.forward(np.stack([letterboxed[i] for i in indices]))
            found = self.postprocess(candidates, [letterboxes[i] for i in indices], options)
            for i, det in zip(indices, found, strict=True):
                results[i] = det
        return results  # type: ignore[return-value]

    def input_shape(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """``(h, w)`` of the letterboxed input of an ``image_size = (H, W)`` image: the
        image scaled so its long side is the model size, padded to the next multiples of
        the model's stride (minimal padding; e.g. 640×480 at 320 → 256×320), or the
        model's square when ``pad_to_square`` is set."""
        if self.pad_to_square:
            return self.input_size, self.input_size
        return minimal_input_size(image_size, self.input_size, self.config.input_multiple)

    def preprocess(self, image: np.ndarray, name: str = "image") -> tuple[np.ndarray, Letterbox]:
        """Stage 1 (CPU, one image): letterbox an ``(H, W, 3)`` uint8 RGB image to the
        model size with minimal padding (see :meth:`input_shape`).

        Returns the ``(h, w, 3)`` uint8 letterboxed image and its :class:`Letterbox`;
        ``name`` is how a ``ValueError`` refers to an unusable image.
        """
        image = as_rgb_image(image, name)
        return letterbox_image(image, self.input_shape(image.shape[:2]))

    @torch.inference_mode()
    def forward(self, batch: np.ndarray | torch.Tensor) -> Candidates:
        """Stage 2 (device, one batch): ``(B, h, w, 3)`` uint8 letterboxed images of one
        shape (numpy or tensor, pinned memory welcome; ``h, w`` at most the model size and
        multiples of its stride) → device → float → model → candidates (the model kind's
        reading of the raw output).

        Returns every candidate box of the batch, still on the device.
        """
        x = torch.as_tensor(batch)
        size, multiple = self.input_size, self.config.input_multiple
        if (
            x.dtype != torch.uint8
            or x.ndim != 4
            or x.shape[-1] != 3
            or not all(0 < side <= size and side % multiple == 0 for side in x.shape[1:3])
        ):
            raise ValueError(
                f"batch must be (B, h, w, 3) uint8 letterboxed images, h and w multiples of "
                f"{multiple} up to {size}; got {tuple(x.shape)} {x.dtype}"
            )
        with torch_threads(self.torch_threads):
            x = x.to(self.device, non_blocking=True)  # (B, S, S, 3) uint8
            x = x.permute(0, 3, 1, 2).float().div_(255)  # (B, 3, S, S)
            x = x.contiguous(memory_format=torch.channels_last)
            if self.use_cuda:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    raw = self.model(x)
            else:
                raw = self.model(x)
            return self._candidates(raw, self.config, tuple(x.shape[-2:]))

    @torch.inference_mode()
    def postprocess(
        self, candidates: Candidates, letterboxes: Sequence[Letterbox], options: DetectOptions
    ) -> list[Detections]:
        """Stage 3: score threshold, per-class NMS, top-k and mapping back to original
        pixels of a batch's candidates (one image per letterbox). Several calls with
        different options may share one :meth:`forward` (see :meth:`Candidates.take`).

        Raises:
            ValueError: the number of letterboxes is not the batch's, or an unknown class.
        """
        if len(letterboxes) != len(candidates):
            raise ValueError(
                f"{len(letterboxes)} letterboxes for a batch of {len(candidates)} images"
            )
        with torch_threads(self.torch_threads):
            selected = select_detections(
                candidates,
                options.score_threshold,
                options.iou_threshold,
                options.max_detections,
                class_ids(options.classes, self.names),
                options.merge_iou,
            )
            pairs = zip(selected, letterboxes, strict=True)
            return [self._to_original(det, lb) for det, lb in pairs]

    def _to_original(self, det: RawDetections, lb: Letterbox) -> Detections:
        boxes = boxes_to_original(det.boxes.float(), lb).cpu().numpy().astype(np.float32)
        ids = det.class_ids.cpu().numpy().astype(np.int64)
        landmarks = None
        if self.config.num_landmarks:
            points = points_to_original(det.landmarks.float(), lb).cpu().numpy()
            visible = np.full((*points.shape[:2], 1), PREDICTED, np.float32)
            landmarks = np.concatenate((points.astype(np.float32), visible), -1)
        return Detections(
            boxes=boxes,
            scores=det.scores.float().cpu().numpy(),
            class_ids=ids,
            labels=[self.names[i] for i in ids],
            landmarks=landmarks,
            image_size=lb.original_size,
        )
