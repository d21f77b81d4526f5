"""PNG plots of a training run: curves from ``results.csv``, PR curves, predictions.

Figures are drawn with matplotlib's object API on an Agg canvas (no ``pyplot``, no
global figure state, no display needed).

Files :func:`training_plots` writes into the run folder:

- ``results.png``: loss terms, learning rate and AP / AP50 / AP75 per epoch;
- ``pr_curve.png``: precision against recall at IoU 0.5 of the best model on the
  validation split (:func:`detector.evaluate.plot_pr_curves`);
- ``val_predictions.png``: up to 16 validation images, each as a pair: the ground-truth
  boxes on the left (class names, no scores, a dark caption "truth: N"), the best model's
  boxes on the right (with scores; caption "predicted: N", or a red "no detections").
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from detector.data.dataset import read_rgb
from detector.data.types import DatasetInfo, Sample
from detector.draw import GRID_BACKGROUND, draw_detections, fit_image, image_grid
from detector.predict import Detector
from detector.settings import DEFAULT_OPTIONS, Detections, DetectOptions

RESULTS_CSV = "results.csv"
RESULTS_PNG = "results.png"
PR_CURVE_PNG = "pr_curve.png"
VAL_PREDICTIONS_PNG = "val_predictions.png"

LOSS_COLUMNS = ("box", "obj", "cls", "lmk")  # loss terms of results.csv
AP_COLUMNS = ("ap", "ap50", "ap75")
AP_LABELS = {"ap": "AP@[.5:.95]", "ap50": "AP50", "ap75": "AP75"}
REQUIRED_COLUMNS = ("epoch", "lr", *LOSS_COLUMNS, *AP_COLUMNS)
OPTIONAL_LOSSES = ("lmk",)  # plotted only when some epoch has a non-zero value
# A landmark model's validation columns, plotted when every epoch has them.
KEYPOINT_AP_LABELS = {"kpt_ap": "keypoint AP (OKS)", "kpt_ap50": "keypoint AP50"}
NME_COLUMN = "nme"

PANEL_COLUMNS = 3  # subplots per row of results.png
PANEL_SIZE = (4.0, 3.0)  # inches per subplot
DPI = 100
MARKER_SIZE = 3  # dots on the curves, so a single epoch is still visible

PREVIEW_IMAGES = 16  # validation images in val_predictions.png
PREVIEW_COLUMNS = 4  # image pairs (truth | predictions) per row
PREVIEW_CELL = 320  # pixels: each image is scaled to fit this square
PAIR_GAP = 2  # pixels between the truth and the prediction half of a pair
CAPTION_HEIGHT = 18  # pixels of the caption band above each half
CAPTION_FONT_SCALE = 0.45
CAPTION_MARGIN = 4  # pixels from the band's left and bottom edge to the text
CAPTION_COLOUR = (48, 48, 48)  # RGB band behind "truth: N" / "predicted: N"
NO_DETECTIONS_COLOUR = (200, 0, 0)  # RGB band of a prediction half with nothing found
CAPTION_TEXT_COLOUR = (255, 255, 255)
NO_DETECTIONS = "no detections"


def read_results_csv(csv_path: str | Path) -> dict[str, np.ndarray]:
    """Read a trainer's ``results.csv`` into column name -> ``(E,)`` float64 per epoch.

    Epochs are sorted; when a resumed run repeated an epoch, its last row wins.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a required column is missing, a value is not a number, or no rows.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"results file {csv_path} not found")
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{csv_path}: missing columns {missing}; expected at least {list(REQUIRED_COLUMNS)}"
            )
        by_epoch: dict[float, dict[str, float]] = {}
        for line, row in enumerate(reader, start=2):
            try:
                values = {
                    k: float(v) for k, v in row.items() if k is not None and v not in ("", None)
                }
            except ValueError as err:
                raise ValueError(f"{csv_path} line {line}: not a number ({err})") from err
            lacking = [c for c in REQUIRED_COLUMNS if c not in values]
            if lacking:
                raise ValueError(f"{csv_path} line {line}: no value for {lacking}")
            by_epoch[values["epoch"]] = values
    if not by_epoch:
        raise ValueError(f"{csv_path}: no epochs recorded yet")
    rows = [by_epoch[e] for e in sorted(by_epoch)]
    columns = [c for c in rows[0] if all(c in r for r in rows)]
    return {c: np.array([r[c] for r in rows], dtype=np.float64) for c in columns}


def plot_results_csv(csv_path: str | Path, path: str | Path) -> Path:
    """Save a PNG of the loss terms, learning rate and AP / AP50 / AP75 per epoch, and a
    landmark model's keypoint AP / AP50 and NME when the file has them.

    Args:
        csv_path: a ``results.csv`` with columns ``epoch, lr, box, obj, cls, lmk, ap,
            ap50, ap75`` (more are ignored).
        path: the PNG to write; folders are created.

    Returns:
        The path written.
    """
    from matplotlib.ticker import MaxNLocator

    columns = read_results_csv(csv_path)
    epochs = columns["epoch"]
    losses = [c for c in LOSS_COLUMNS if c not in OPTIONAL_LOSSES or np.any(columns[c] != 0)]
    panels = [(f"{c} loss", [(c, c)]) for c in losses]
    panels.append(("learning rate", [("lr", "lr")]))
    panels.append(("validation AP", [(c, AP_LABELS[c]) for c in AP_COLUMNS]))
    if all(c in columns for c in KEYPOINT_AP_LABELS):
        panels.append(("validation keypoint AP", list(KEYPOINT_AP_LABELS.items())))
    if NME_COLUMN in columns:
        panels.append(("validation NME", [(NME_COLUMN, "NME")]))

    rows = math.ceil(len(panels) / PANEL_COLUMNS)
    figure = _figure((PANEL_SIZE[0] * PANEL_COLUMNS, PANEL_SIZE[1] * rows))
    for index, (title, series) in enumerate(panels):
        axes = figure.add_subplot(rows, PANEL_COLUMNS, index + 1)
        for column, label in series:
            axes.plot(epochs, columns[column], marker="o", markersize=MARKER_SIZE, label=label)
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        if len(series) > 1:
            axes.set_ylim(bottom=0)
            axes.legend(loc="best", fontsize="small")
    figure.suptitle(f"Training results ({len(epochs)} epochs)")
    figure.tight_layout()
    return _save_figure(figure, path)


def plot_predictions(
    detector: Detector,
    info: DatasetInfo,
    path: str | Path,
    max_images: int = PREVIEW_IMAGES,
    options: DetectOptions = DEFAULT_OPTIONS,
) -> Path:
    """Save a grid of the first ``max_images`` images of ``info``, each as a pair (see
    :func:`preview_pair`): its ground truth, and ``detector``'s boxes at
    boxes chosen with ``options``. Returns the path written."""
    samples = info.samples[:max_images]
    if not samples:
        raise ValueError("plot_predictions needs at least one image; the split is empty")
    images = [read_rgb(sample.image_path) for sample in samples]
    detections = detector.detect(images, options)
    skeleton = detector.config.skeleton
    pairs = [
        preview_pair(image, sample, info.names, found, skeleton)
        for image, sample, found in zip(images, samples, detections, strict=True)
    ]
    return save_rgb(image_grid(pairs, PREVIEW_COLUMNS), path)


def preview_pair(
    image: np.ndarray,
    sample: Sample,
    names: Sequence[str],
    detections: Detections,
    skeleton: Sequence[tuple[int, int]] = (),
) -> np.ndarray:
    """One image scaled to fit ``PREVIEW_CELL``, twice side by side: the ground truth of
    ``sample`` on the left (class names, no scores, its labelled landmarks), ``detections``
    on the right; each half under a caption band (``"truth: N"``, ``"predicted: N"``, or a
    red ``NO_DETECTIONS`` band when there are none). Both halves join landmarks by
    ``skeleton`` (pairs of landmark indices, see :func:`detector.draw.draw_detections`).

    Args:
        image: ``(H, W, 3)`` uint8 RGB, the image of ``sample``.
        sample: its labels: boxes ``(N, 4)`` xyxy pixels, classes ``(N,)``, landmarks
            ``(N, K, 3)`` pixels or ``None``.
        names: class names of the sample's class ids.
        detections: the model's, in the image's pixels.

    Returns:
        ``(CAPTION_HEIGHT + h, 2 w + PAIR_GAP, 3)`` uint8 RGB, ``(h, w)`` the scaled size.
    """
    small, scale = fit_image(image, PREVIEW_CELL)
    classes = np.asarray(sample.classes, np.int64)
    truth_points = None
    if sample.landmarks is not None:
        truth_points = np.asarray(sample.landmarks, np.float32).copy()
        truth_points[..., :2] *= scale
    truth = Detections(
        boxes=np.asarray(sample.boxes, np.float32).reshape(-1, 4) * scale,
        scores=np.ones(len(classes), np.float32),
        class_ids=classes,
        labels=[names[c] if 0 <= c < len(names) else str(c) for c in classes],
        landmarks=truth_points,
        image_size=small.shape[:2],
    )
    left = _captioned(
        draw_detections(small, truth, show_scores=False, skeleton=skeleton),
        f"truth: {len(truth)}",
        CAPTION_COLOUR,
    )
    found = len(detections)
    right = _captioned(
        draw_detections(small, _scaled(detections, scale), skeleton=skeleton),
        f"predicted: {found}" if found else NO_DETECTIONS,
        CAPTION_COLOUR if found else NO_DETECTIONS_COLOUR,
    )
    gap = np.full((left.shape[0], PAIR_GAP, 3), GRID_BACKGROUND, np.uint8)
    return np.concatenate([left, gap, right], axis=1)


def _captioned(image: np.ndarray, text: str, colour: tuple[int, int, int]) -> np.ndarray:
    """``image`` under a ``CAPTION_HEIGHT`` band of ``colour`` with ``text`` in it."""
    band = np.empty((CAPTION_HEIGHT, image.shape[1], 3), np.uint8)
    band[:] = colour
    origin = (CAPTION_MARGIN, CAPTION_HEIGHT - CAPTION_MARGIN)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(band, text, origin, font, CAPTION_FONT_SCALE, CAPTION_TEXT_COLOUR, 1, cv2.LINE_AA)
    return np.concatenate([band, image], axis=0)


def training_plots(
    out_dir: str | Path,
    best_path: str | Path,
    val_info: DatasetInfo,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> list[Path]:
    """Write the plots of a finished run into ``out_dir`` (see the module docstring).

    Args:
        out_dir: the run folder holding ``results.csv``.
        best_path: the model file to validate and draw with.
        val_info: the validation split.
        device: where the model runs.
        progress: show the validation progress bar.

    Returns:
        The PNG paths written (``results.png`` only when ``results.csv`` exists; the
        other two only when the split has images).
    """
    from detector.evaluate import plot_pr_curves
    from detector.validate import validate

    out_dir = Path(out_dir)
    written = []
    csv_path = out_dir / RESULTS_CSV
    if csv_path.is_file():
        written.append(plot_results_csv(csv_path, out_dir / RESULTS_PNG))
    if val_info.samples:
        detector = Detector.load(best_path, device)
        validation = validate(detector, val_info, progress=progress)
        written.append(plot_pr_curves(validation.result, out_dir / PR_CURVE_PNG))
        written.append(plot_predictions(detector, val_info, out_dir / VAL_PREDICTIONS_PNG))
    return written


def save_rgb(image: np.ndarray, path: str | Path) -> Path:
    """Write an ``(H, W, 3)`` uint8 RGB image (PNG, JPEG… by suffix); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise ValueError(f"cannot write image {path}: unknown suffix or unwritable folder")
    return path


def _scaled(detections: Detections, scale: float) -> Detections:
    """The same detections in an image scaled by ``scale``."""
    landmarks = detections.landmarks
    if landmarks is not None:
        landmarks = landmarks.copy()
        landmarks[..., :2] *= scale
    height, width = detections.image_size
    return dataclasses.replace(
        detections,
        boxes=detections.boxes * scale,
        landmarks=landmarks,
        image_size=(round(height * scale), round(width * scale)),
    )


def _figure(size: Sequence[float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=tuple(size))
    FigureCanvasAgg(figure)
    return figure


def _save_figure(figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path
