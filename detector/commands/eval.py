"""``detector eval``: COCO metrics of a model on one split of a labelled dataset."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from detector.commands import HelpFormatter, add_detect_options, detect_options
from detector.settings import EVAL_OPTIONS

if TYPE_CHECKING:
    from detector.data.types import DatasetInfo
    from detector.settings import Detections

GT_SUFFIX = ".gt.json"  # preds.json -> preds.gt.json: the ground truth to score against

DESCRIPTION = """\
Run a model over one split of a dataset and print COCO bbox metrics (pycocotools):
AP@[.5:.95], AP50, AP75, AP for small / medium / large objects, AR100, and AP50 and
AP per class.

WEIGHTS is a model file or the name of a shipped model in weights/.
DATA is a YOLO data.yaml (or its folder), a COCO .json, or a Pascal VOC folder.

Classes are matched by name when the model's and the dataset's class names differ
(a warning lists the differences); model classes the dataset lacks are ignored, and
dataset classes the model lacks score 0. With no name in common but the same number
of classes, class i of the model is scored as class i of the dataset.

For a landmark model (K > 0 keypoints) on a dataset with keypoints, the output adds
COCO keypoint AP / AP50 / AP75 (pycocotools, iouType "keypoints"; OKS sigmas from the
data.yaml key kpt_sigmas, else COCO's face sigmas 0.025 0.025 0.026 0.025 0.025 for the
5 face points, else 0.05 per point) and NME: the mean error of the labelled points of
each ground truth's best-IoU detection of its class (IoU >= 0.5), divided by the
inter-ocular distance (5-point face layout: kpt_names with eyes first, or K = 5) or
else by the box diagonal; the output says which.

--save-predictions P writes COCO results JSON (image id = position in the split + 1,
category id = dataset class index + 1, as 'detector convert' writes COCO) and the
split's ground truth next to it (P with .gt.json), so any COCO tool can score them:
  COCOeval(COCO(GT), COCO(GT).loadRes(P), "bbox")
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``eval`` to the ``detector`` command."""
    parser = subparsers.add_parser(
        "eval",
        help="COCO metrics (AP, AP50, AP75, per class) of a model on a dataset split",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--weights", required=True, metavar="WEIGHTS", help="model file or shipped model name"
    )
    parser.add_argument("--data", required=True, type=Path, metavar="DATA", help="dataset path")
    parser.add_argument("--split", default="val", help="split to evaluate (ignored for COCO)")
    parser.add_argument("--batch", type=int, default=16, help="images per forward pass")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_detect_options(parser, EVAL_OPTIONS)  # keep them low: AP integrates over all scores
    parser.add_argument("--workers", type=int, default=0, help="image loading processes")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the metrics as JSON")
    parser.add_argument(
        "--save-predictions",
        type=Path,
        metavar="FILE",
        help="write COCO results JSON, and the ground truth as FILE with .gt.json",
    )
    parser.add_argument(
        "--plots", type=Path, metavar="DIR", help="write pr_curve.png and val_predictions.png"
    )
    parser.add_argument("--strict", action="store_true", help="a bad label is fatal, not skipped")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def align_classes(model_names: Sequence[str], data_names: Sequence[str]) -> list[int | None]:
    """The dataset class each model class is scored as (``None``: not in the dataset).

    Equal names: identity. Some names shared: by name. None shared but the same count:
    by index. Otherwise ``ValueError``.
    """
    model_names, data_names = list(model_names), list(data_names)
    if set(model_names) & set(data_names):
        return [data_names.index(n) if n in data_names else None for n in model_names]
    if len(model_names) == len(data_names):
        return list(range(len(model_names)))
    raise ValueError(
        f"the model's {len(model_names)} classes {model_names} share no name with the "
        f"dataset's {len(data_names)} classes {data_names}; cannot match them"
    )


def class_warning(
    model_names: Sequence[str], data_names: Sequence[str], alignment: Sequence[int | None]
) -> str | None:
    """A readable warning when the class names differ, else ``None``."""
    if list(model_names) == list(data_names):
        return None
    if not set(model_names) & set(data_names):
        pairs = ", ".join(f"{m}={d}" for m, d in zip(model_names, data_names, strict=True))
        return f"no class name in common; scoring by index (model=dataset): {pairs}"
    lines = ["the model's and the dataset's class names differ; matching by name"]
    only_model = [n for n, j in zip(model_names, alignment, strict=True) if j is None]
    only_data = [n for n in data_names if n not in model_names]
    if only_model:
        lines.append(f"  model classes not in the dataset (ignored): {only_model}")
    if only_data:
        lines.append(f"  dataset classes the model does not know (score 0): {only_data}")
    if not only_model and not only_data:
        lines.append(f"  same classes, different order: model {list(model_names)}")
    return "\n".join(lines)


def evaluation_info(
    info: DatasetInfo, model_names: Sequence[str], alignment: Sequence[int | None]
) -> DatasetInfo:
    """``info`` relabelled in the model's class indices, for scoring the model's output.

    Class names become the model's, then the dataset classes the model lacks; per-class
    numbers of model classes without ground truth come out undefined and do not count.
    """
    import numpy as np

    if list(model_names) == list(info.names):
        return info
    data_to_eval = {j: i for i, j in enumerate(alignment) if j is not None}
    names = list(model_names)
    for j, name in enumerate(info.names):
        if j not in data_to_eval:
            data_to_eval[j] = len(names)
            names.append(name)
    lookup = np.array([data_to_eval[j] for j in range(len(info.names))], dtype=np.int64)
    samples = [replace(s, classes=lookup[np.asarray(s.classes, np.int64)]) for s in info.samples]
    return replace(info, names=names, samples=samples)


def save_predictions(
    detections: Sequence[Detections],
    info: DatasetInfo,
    alignment: Sequence[int | None],
    path: Path,
) -> tuple[Path, Path]:
    """Write COCO results for ``detections`` (one per sample of ``info``) and the split's
    ground truth next to them; class ids through ``alignment`` into the dataset's.

    Returns:
        ``(results path, ground-truth path)``.
    """
    import numpy as np

    from detector.evaluate import (
        IMAGE_ID_OFFSET,
        ground_truth_to_coco,
        predictions_to_coco_json,
    )

    lookup = np.array([-1 if j is None else j for j in alignment], dtype=np.int64)
    predictions = []
    for det in detections:
        classes = lookup[det.class_ids]
        keep = classes >= 0
        predictions.append((det.boxes[keep], det.scores[keep], classes[keep]))
    image_ids = [index + IMAGE_ID_OFFSET for index in range(len(info.samples))]
    results_path = predictions_to_coco_json(predictions, image_ids, path)

    gt_path = path.with_suffix(GT_SUFFIX)
    ground_truth = ground_truth_to_coco(info.samples, info.names)
    base = gt_path.parent.absolute()
    for image, sample in zip(ground_truth["images"], info.samples, strict=True):
        relative = os.path.relpath(Path(sample.image_path).absolute(), base)
        image["file_name"] = Path(relative).as_posix()
    gt_path.write_text(json.dumps(ground_truth), encoding="utf-8")
    return results_path, gt_path


def run(args: argparse.Namespace) -> int:
    from detector.inputs import require_path
    from detector.weights import resolve_model_path

    # Checks that need no model come first: a typo costs no torch import.
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    require_path(args.data, "dataset")
    weights = resolve_model_path(args.weights)

    from detector.data.formats import load_dataset
    from detector.predict import Detector
    from detector.validate import validate

    detector = Detector.load(weights, args.device)
    config = detector.config
    print(
        f"model: {detector.name} ({detector.kind}, {_shape(config)}, input {config.input_size}, "
        f"{len(detector.names)} classes) on {detector.device}"
    )
    info = load_dataset(args.data, args.split, strict=args.strict)
    print(
        f"dataset: {args.data} split {args.split}: {len(info.samples)} images, "
        f"{len(info.skipped)} skipped"
    )
    if not info.samples:
        raise ValueError(f"{args.data} split {args.split!r} has no images to evaluate")
    alignment = align_classes(detector.names, info.names)
    warning = class_warning(detector.names, info.names, alignment)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)

    start = time.perf_counter()
    validation = validate(
        detector,
        evaluation_info(info, detector.names, alignment),
        batch_size=args.batch,
        workers=args.workers,
        progress=not args.quiet,
        options=detect_options(args),
    )
    seconds = time.perf_counter() - start
    result = validation.result
    print(f"evaluated {len(info.samples)} images in {seconds:.1f} s")
    print(result.format_table())
    keypoints = None
    if config.num_landmarks and info.kpt_shape:
        from detector.keypoint_metrics import keypoint_result

        keypoints = keypoint_result(
            validation.detections,
            evaluation_info(info, detector.names, alignment),
            args.data,
            config.landmark_names,
        )
        print()
        print(keypoints.format_table())

    if args.json:
        record = result.to_dict() | {
            "weights": str(args.weights),
            "data": str(args.data),
            "split": args.split,
            "score_threshold": args.conf,
            "iou_threshold": args.iou,
            "max_detections": args.max_det,
            "merge_iou": args.merge_iou,
        }
        if keypoints is not None:
            record["keypoints"] = keypoints.to_dict()
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2), encoding="utf-8")
        print(f"metrics: {args.json}")
    if args.save_predictions:
        results_path, gt_path = save_predictions(
            validation.detections, info, alignment, args.save_predictions
        )
        print(f"predictions: {results_path} (COCO results; score against {gt_path})")
    if args.plots:
        from detector.evaluate import plot_pr_curves
        from detector.plots import PR_CURVE_PNG, VAL_PREDICTIONS_PNG, plot_predictions

        print(f"plot: {plot_pr_curves(result, args.plots / PR_CURVE_PNG)}")
        print(f"plot: {plot_predictions(detector, info, args.plots / VAL_PREDICTIONS_PNG)}")
    return 0


def _shape(config) -> str:
    """The model's shape in a few words: a grid model's size, a window model's window."""
    size = getattr(config, "size", None)
    return f"size {size}" if size is not None else f"window {config.window}"
