"""Training-recipe benchmark: how fast our detector learns against Ultralytics YOLOv8n,
same data, same run, same scoring.

Protocol (defaults in brackets):

1. Data: ``detector synth digits --train 1000 --val 200 --seed 0``; both trainers see
   the first ``--images`` [240] training images and validate every epoch on the 200
   validation images. Scored afterwards on a separate fresh set, ``detector synth digits
   --train 0 --val --fresh-images [300] --seed 123``.
2. Training, both at once as two subprocesses, one torch thread each, ``--epochs`` [12]
   from scratch at imgsz 320, batch 8:
   ours: ``detector train --model tiny`` with its default recipe and the README
   walkthrough's flags (``--fliplr 0 --workers 0 --cache --batch 8``), then ``--our-args``
   (later flags win, so an ablation can change one thing at a time: bench/README.md's
   ablation table gives each row's);
   YOLOv8n: built from ``yolov8n.yaml`` (no pretrained weights), ``fliplr=0``, ``batch=8``
   with an optimiser step every batch (``nbs=8``), ``workers=0``, ``cache="ram"`` (as our
   ``--cache``), everything else Ultralytics' defaults (``optimizer=auto``,
   ``close_mosaic=10``, validation every epoch).
3. Scoring: each run's last weights (EMA for both) predict the fresh set with the same
   thresholds (``EVAL_OPTIONS``: score > 0.001, per-class NMS at IoU 0.6, at most 100 per
   image), and one function, ``detector.evaluate.coco_metrics`` (pycocotools), scores both
   against the same ground truth. The COCO results JSON of both and the ground truth are
   written to the work folder, so any COCO tool can re-score them. A class-agnostic AP
   scores the same predictions with every box in one class (how well the boxes are found,
   whatever their label; a box kept for two classes by the per-class NMS counts twice).
4. Timing: the parent polls both ``results.csv`` files and notes when each epoch's row
   appears, so "seconds per epoch" is the same wall-clock measure for both (training,
   validation and checkpointing of one epoch).
5. ``--equal-time``: a second pair of runs, at the same time again: YOLOv8n given the
   wall time of our first run (launch to exit, set-up included) next to a repeat of our
   run (the same contention, and a check of our run-to-run noise). It gets it through
   Ultralytics' ``time=`` argument, set when its training loop starts to what its own
   set-up left of that time; Ultralytics re-plans its epochs (and learning-rate schedule)
   after the first one to fit, stops at the first optimiser step past the time, then
   validates and saves (and validates best.pt once more: its wall time, printed, ends a
   little later than ours).

Ultralytics is never a dependency of the project: install it elsewhere and put it on
``PYTHONPATH`` (``pip install --no-deps --target /tmp/ultra ultralytics ultralytics-thop
py-cpuinfo``). Nothing is downloaded: ``YOLO_OFFLINE=1``, plots off, its settings in the
work folder. Two of its optional imports are replaced when missing, in its subprocess only:
``psutil`` (its RAM check before ``cache="ram"``; here: the free memory from
``os.sysconf``) and ``polars`` (the copy of results.csv it stores in each checkpoint; here:
none). Without Ultralytics, or with ``--skip-ultralytics``, our run trains alone and the
YOLOv8n column says why it is empty.

Usage (from the repository root)::

    PYTHONPATH=.:/tmp/ultra uv run python bench/bench_recipe.py --equal-time
    PYTHONPATH=.:/tmp/ultra uv run python bench/bench_recipe.py --epochs 2 --images 48 \\
        --fresh-images 60 --workdir /tmp/recipe
    uv run python bench/bench_recipe.py --skip-ultralytics --our-args "--assign best"
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

DATA_TRAIN, DATA_VAL, DATA_SEED = 1000, 200, 0  # the training dataset of the protocol
FRESH_SEED = 123  # the fresh scoring set: a seed not used for training
IMGSZ, BATCH = 320, 8
OUR_RECIPE = (
    *("--model", "tiny", "--imgsz", str(IMGSZ), "--batch", str(BATCH)),
    *("--fliplr", "0", "--workers", "0", "--cache"),
)
THREADS = 1  # torch threads of each training process
POLL_S = 0.5  # how often the parent looks at the results.csv files
KILL_GRACE_S = 10.0
MIN_TIME_S = 1.0  # the least training time given to an equal-time YOLOv8n run  # SIGTERM, then SIGKILL after this
MARKER = "bench_recipe.json"  # in a dataset folder: the synth arguments it was made with
SKIPPED_FLAG = "--skip-ultralytics: YOLOv8n not trained"
WORKER_FLAG = "--ultralytics-worker"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--epochs", type=int, default=12, help="epochs of both runs")
    parser.add_argument("--images", type=int, default=240, help="first K training images")
    parser.add_argument("--fresh-images", type=int, default=300, help="images of the fresh set")
    parser.add_argument("--seed", type=int, default=0, help="training seed of both trainers")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="work folder, kept and reused (datasets are regenerated only when their "
        "arguments change; runs are replaced); default: a temporary folder, deleted",
    )
    parser.add_argument("--skip-ultralytics", action="store_true", help="train ours only")
    parser.add_argument(
        "--equal-time",
        action="store_true",
        help="also train YOLOv8n for our run's wall time (time=) next to a repeat of ours",
    )
    parser.add_argument(
        "--our-args",
        default="",
        help='extra flags for detector train, later ones win: "--assign best"; one word '
        "needs the = form: --our-args=--flag",
    )
    parser.add_argument(
        "--timeout", type=float, default=7200, help="seconds per pair of runs, then killed"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.images <= DATA_TRAIN:
        parser.error(f"--images must be in [1, {DATA_TRAIN}], got {args.images}")
    for name in ("epochs", "fresh_images", "timeout"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    args.our_args = shlex.split(args.our_args)
    return args


# --- data ---------------------------------------------------------------------------


def synth_digits(out: Path, train: int, val: int, seed: int) -> Path:
    """``detector synth digits`` into ``out``, unless ``out`` already holds the same
    arguments' output. Returns its data.yaml."""
    spec = {"train": train, "val": val, "seed": seed, "imgsz": IMGSZ}
    marker = out / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        print(f"reusing {out} ({spec})")
        return out / "data.yaml"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "detector", "synth", "digits", "--out", str(out)]
    command += ["--train", str(train), "--val", str(val), "--seed", str(seed)]
    command += ["--imgsz", str(IMGSZ), "--quiet"]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    print(f"wrote {out} ({spec}) in {time.perf_counter() - start:.0f} s")
    marker.write_text(json.dumps(spec))
    return out / "data.yaml"


def first_images(source: Path, out: Path, count: int) -> Path:
    """A dataset of links: the first ``count`` training images (file-name order) of the
    YOLO dataset in ``source`` and its whole val split. Its data.yaml has an absolute
    path (Ultralytics resolves a relative one under its own datasets folder)."""
    shutil.rmtree(out, ignore_errors=True)
    for split, limit in (("train", count), ("val", None)):
        images = sorted((source / "images" / split).iterdir())[:limit]
        for kind in ("images", "labels"):
            (out / kind / split).mkdir(parents=True)
        for image in images:
            label = source / "labels" / split / f"{image.stem}.txt"
            (out / "images" / split / image.name).symlink_to(image.absolute())
            (out / "labels" / split / label.name).symlink_to(label.absolute())
    names = [str(i) for i in range(10)]
    yaml = f"path: {out.absolute()}\ntrain: images/train\nval: images/val\nnc: 10\n"
    yaml += "names: [" + ", ".join(f"'{n}'" for n in names) + "]\n"
    (out / "data.yaml").write_text(yaml)
    return out / "data.yaml"


# --- training runs ------------------------------------------------------------------


@dataclass
class Run:
    """One training subprocess and what the parent saw of it."""

    name: str
    kind: str  # "ours" or "yolov8n"
    command: list[str]
    results_csv: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    started: float = 0.0
    epoch_ends: list[float] = field(default_factory=list)  # s after launch, per row
    wall: float | None = None  # s, launch to exit
    returncode: int | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = os.environ | {"OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env | self.env,
                start_new_session=True,  # its own process group: stopped as one
            )
        self.started = time.perf_counter()

    def poll(self) -> bool:
        """Note new results.csv rows; True while the process runs."""
        now = time.perf_counter() - self.started
        rows = count_rows(self.results_csv)
        self.epoch_ends += [now] * (rows - len(self.epoch_ends))
        if self.returncode is None and self.process.poll() is not None:
            self.returncode, self.wall = self.process.returncode, now
        return self.returncode is None

    def stop(self) -> None:
        """SIGTERM to its process group, SIGKILL after ``KILL_GRACE_S``."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def count_rows(path: Path) -> int:
    """Epoch rows of a results.csv (lines that start with a digit), 0 if absent."""
    if not path.is_file():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line[:1].isdigit())


def run_together(runs: list[Run], timeout: float) -> None:
    """Start ``runs`` at once and wait for all of them; past ``timeout`` seconds (or on
    Ctrl-C) stop those still running."""
    try:
        for run in runs:
            run.start()
        deadline = time.perf_counter() + timeout
        while any([run.poll() for run in runs]):
            if time.perf_counter() > deadline:
                print(f"timeout: {timeout:.0f} s passed; stopping the runs still going")
                break
            time.sleep(POLL_S)
    finally:
        for run in runs:
            run.stop()
            run.poll()
    for run in runs:
        if run.returncode != 0:
            print(f"{run.name}: exit code {run.returncode}; the end of {run.log}:\n{run.tail()}")


def our_run(name: str, data: Path, folder: Path, args: argparse.Namespace) -> Run:
    out = folder / name
    shutil.rmtree(out, ignore_errors=True)
    (folder / f"{name}.fresh.json").unlink(missing_ok=True)
    command = [sys.executable, "-m", "detector", "train", "--data", str(data), *OUR_RECIPE]
    command += ["--epochs", str(args.epochs), "--seed", str(args.seed), "--out", str(out)]
    command += ["--quiet", "--no-plots", *args.our_args]
    return Run(name, "ours", command, out / "results.csv", folder / f"{name}.log")


def ultralytics_run(
    name: str, data: Path, folder: Path, args: argparse.Namespace, wall: float | None = None
) -> Run:
    """YOLOv8n's run; with ``wall`` (seconds) it trains for that long from its launch."""
    shutil.rmtree(folder / name, ignore_errors=True)
    for suffix in (".json", ".fresh.json"):
        (folder / f"{name}{suffix}").unlink(missing_ok=True)
    spec = {
        "data": str(data),
        "project": str(folder),
        "name": name,
        "epochs": args.epochs,
        "seed": args.seed,
        "wall": wall,
        "summary": str(folder / f"{name}.json"),
    }
    command = [sys.executable, str(Path(__file__).absolute()), WORKER_FLAG, json.dumps(spec)]
    env = ultralytics_env(folder)
    return Run(name, "yolov8n", command, folder / name / "results.csv", folder / f"{name}.log", env)


def ultralytics_env(folder: Path) -> dict[str, str]:
    """Offline, settings in the work folder, no plots needing a downloaded font."""
    return {
        "YOLO_OFFLINE": "1",
        "YOLO_CONFIG_DIR": str(folder / "ultralytics-settings"),
        "MPLBACKEND": "Agg",
    }


def ultralytics_worker(spec_json: str) -> int:
    """The YOLOv8n training subprocess (``WORKER_FLAG``): trains as ``spec_json`` says
    and writes a JSON summary (optimiser, learning rate, threads) next to its run.

    With ``spec["wall"]`` seconds, Ultralytics' ``time=`` is set when its training loop
    starts, to what is left of that wall time since this process's launch: its own set-up
    (imports, dataset scan, caching) counts, as ours does in our run's wall time."""
    launched = time.perf_counter()
    import torch

    spec = json.loads(spec_json)
    torch.set_num_threads(THREADS)
    from ultralytics import YOLO, __version__
    from ultralytics.utils import torch_utils

    torch_utils.NUM_THREADS = THREADS  # select_device sets the CPU threads to this
    replace_missing_extras()
    model = YOLO("yolov8n.yaml")
    seen: dict[str, float] = {}

    def on_train_start(trainer) -> None:
        seen["threads"] = torch.get_num_threads()
        seen["set_up_s"] = time.perf_counter() - launched
        if spec["wall"] is not None:
            left = max(spec["wall"] - seen["set_up_s"], MIN_TIME_S)
            trainer.args.time = left / 3600  # hours; re-plans its epochs after the first

    model.add_callback("on_train_start", on_train_start)
    model.train(
        data=spec["data"],
        epochs=spec["epochs"],
        imgsz=IMGSZ,
        batch=BATCH,
        nbs=BATCH,  # an optimiser step every batch, weight decay unscaled
        fliplr=0.0,
        workers=0,
        cache="ram",
        device="cpu",
        pretrained=False,
        amp=False,
        plots=False,
        seed=spec["seed"],
        project=spec["project"],
        name=spec["name"],
        exist_ok=True,
    )
    groups = model.trainer.optimizer.param_groups
    summary = {
        "version": __version__,
        "optimizer": type(model.trainer.optimizer).__name__,
        "lr0": groups[0]["initial_lr"],
        "epochs_planned": model.trainer.epochs,
        "close_mosaic": model.trainer.args.close_mosaic,
        "threads": seen.get("threads"),
        "set_up_s": round(seen.get("set_up_s", float("nan")), 1),
        "time_h": model.trainer.args.time,
        "weights": str(model.trainer.last),
    }
    Path(spec["summary"]).write_text(json.dumps(summary))
    return 0


def replace_missing_extras() -> None:
    """Stand-ins for two optional imports of Ultralytics' trainer, when not installed:
    psutil (the RAM check before caching images) and polars (the copy of results.csv that
    each checkpoint carries)."""
    try:
        import psutil  # noqa: F401
    except ModuleNotFoundError:
        from ultralytics.data.base import BaseDataset

        def check_cache_ram(self, safety_margin: float = 0.5) -> bool:
            needed = self.ni * self.imgsz * self.imgsz * 3 * (1 + safety_margin)  # uint8
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            if needed > free:
                self.cache = None
            return needed <= free

        BaseDataset.check_cache_ram = check_cache_ram
    try:
        import polars  # noqa: F401
    except ModuleNotFoundError:
        from ultralytics.engine.trainer import BaseTrainer

        BaseTrainer.read_results_csv = lambda self: {}


def ultralytics_available() -> str | None:
    """None when Ultralytics can be imported here, else why not (not imported: it would
    write its settings file before the environment is set)."""
    if importlib.util.find_spec("ultralytics") is None:
        return "ultralytics not installed: install it outside the project, on PYTHONPATH"
    return None


# --- scoring ------------------------------------------------------------------------


@dataclass
class Score:
    ap: float
    ap50: float
    predictions: int
    agnostic_ap: float  # every box and detection in one class: the boxes, whatever the label
    agnostic_ap50: float


def our_predictions(weights: Path, info) -> list[tuple]:
    """``(boxes (M, 4) xyxy pixels, scores (M,), classes (M,))`` per fresh image."""
    from detector.data.dataset import read_rgb
    from detector.predict import Detector
    from detector.settings import EVAL_OPTIONS

    detector = Detector.load(weights, "cpu")
    out = []
    for start in range(0, len(info.samples), BATCH):
        images = [read_rgb(s.image_path) for s in info.samples[start : start + BATCH]]
        out += [(d.boxes, d.scores, d.class_ids) for d in detector.detect(images, EVAL_OPTIONS)]
    return out


def ultralytics_predictions(weights: Path, info) -> list[tuple]:
    """The same for a YOLOv8n checkpoint, with Ultralytics' predictor (its letterbox, its
    NMS) at the same thresholds."""
    from ultralytics import YOLO

    from detector.settings import EVAL_OPTIONS

    model = YOLO(str(weights))
    out = []
    for start in range(0, len(info.samples), BATCH):
        paths = [str(s.image_path) for s in info.samples[start : start + BATCH]]
        results = model.predict(
            paths,
            imgsz=IMGSZ,
            conf=EVAL_OPTIONS.score_threshold,
            iou=EVAL_OPTIONS.iou_threshold,
            max_det=EVAL_OPTIONS.max_detections,
            device="cpu",
            verbose=False,
        )
        for r in results:
            b = r.boxes
            out.append((b.xyxy.numpy(), b.conf.numpy(), b.cls.numpy().astype(int)))
    return out


def score(name: str, predictions: list[tuple], info, folder: Path) -> Score:
    """COCO AP of ``predictions`` on the fresh set, and class-agnostic; writes them as COCO
    results JSON."""
    import numpy as np

    from detector.evaluate import IMAGE_ID_OFFSET, coco_metrics, predictions_to_coco_json

    ids = [i + IMAGE_ID_OFFSET for i in range(len(predictions))]
    predictions_to_coco_json(predictions, ids, folder / f"{name}.fresh.json")
    result = coco_metrics(info.samples, predictions, info.names)
    one_class = [(s.boxes, np.zeros(len(s.classes), int), s.width, s.height) for s in info.samples]
    unlabelled = [(b, scores, np.zeros(len(scores), int)) for b, scores, _ in predictions]
    agnostic = coco_metrics(one_class, unlabelled, ["object"])
    return Score(result.ap, result.ap50, result.num_predictions, agnostic.ap, agnostic.ap50)


def write_ground_truth(info, path: Path) -> None:
    from detector.evaluate import ground_truth_to_coco

    path.write_text(json.dumps(ground_truth_to_coco(info.samples, info.names)))


# --- report -------------------------------------------------------------------------


def epoch_seconds(run: Run) -> str:
    """Median seconds between results.csv rows (epochs after the first)."""
    ends = run.epoch_ends
    if len(ends) < 2:
        return "- (one epoch)" if ends else "-"
    return f"{statistics.median(b - a for a, b in zip(ends, ends[1:], strict=False)):.1f}"


def timing_cells(run: Run | None, reason: str) -> list[str]:
    if run is None:
        return [reason] * 4
    return [
        str(len(run.epoch_ends)),
        f"{run.epoch_ends[0]:.1f}" if run.epoch_ends else "-",
        epoch_seconds(run),
        f"{run.wall:.1f}" if run.wall is not None else "-",
    ]


def score_cells(s: Score | None, reason: str) -> list[str]:
    if s is None:
        return [reason] * 4
    return [
        f"{s.ap:.4f}",
        f"{s.ap50:.4f}",
        f"{s.agnostic_ap:.4f} / {s.agnostic_ap50:.4f}",
        str(s.predictions),
    ]


ROWS = (
    "epochs done",
    "first epoch done at (s after launch, incl. set-up)",
    "seconds per epoch (median between results.csv rows)",
    "wall time, launch to exit (s)",
    "fresh-set AP@[.5:.95]",
    "fresh-set AP50",
    "fresh-set class-agnostic AP / AP50 (boxes, whatever the label)",
    "fresh-set predictions scored",
)


def print_table(title: str, cols: list[str], cells: list[list[str]]) -> None:
    print(f"\n{title}\n")
    print("| row | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for i, row in enumerate(ROWS):
        print(f"| {row} | " + " | ".join(c[i] for c in cells) + " |")


def evaluate_run(run: Run | None, info, folder: Path) -> Score | None:
    """Score a finished run's last weights on the fresh set; None without them."""
    if run is None or run.returncode != 0:
        return None
    if run.kind == "yolov8n":
        summary = json.loads((folder / f"{run.name}.json").read_text())
        weights = Path(summary["weights"])
        return score(run.name, ultralytics_predictions(weights, info), info, folder)
    weights = run.results_csv.parent / "last.safetensors"
    return score(run.name, our_predictions(weights, info), info, folder)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [WORKER_FLAG]:
        return ultralytics_worker(argv[1])
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_recipe_") as temporary:
        work = args.workdir or Path(temporary)
        (work / "runs").mkdir(parents=True, exist_ok=True)
        os.environ.update(ultralytics_env(work / "runs"))  # before any Ultralytics import
        reason = SKIPPED_FLAG if args.skip_ultralytics else ultralytics_available()
        if reason:
            print(f"YOLOv8n skipped: {reason}")
        skip = reason and "skipped (see the first line)"
        return bench(args, work, skip)


def bench(args: argparse.Namespace, work: Path, skip: str | None) -> int:
    import torch

    from detector.data.formats import load_dataset

    load = os.getloadavg()[0]
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load:.1f} at the start; torch "
        f"{torch.__version__}; work folder {work}"
    )
    dataset = synth_digits(work / "digits", DATA_TRAIN, DATA_VAL, DATA_SEED)
    fresh = synth_digits(work / "digits-fresh", 0, args.fresh_images, FRESH_SEED)
    data = first_images(dataset.parent, work / f"digits-first{args.images}", args.images)
    runs = work / "runs"
    print(
        f"training: {args.images} images, {args.epochs} epochs, {THREADS} torch thread each, "
        f"{'ours and YOLOv8n at once' if not skip else 'ours alone'}"
    )

    ours = our_run("ours", data, runs, args)
    print(f"ours: detector {shlex.join(ours.command[3:])}")
    theirs = None if skip else ultralytics_run("yolov8n", data, runs, args)
    start = time.perf_counter()
    run_together([r for r in (ours, theirs) if r], args.timeout)
    print(f"pair of runs: {time.perf_counter() - start:.0f} s")

    ours2 = theirs2 = None
    equal_skip = skip or "not run (--equal-time not given)"
    if args.equal_time and not skip and ours.wall is not None and ours.returncode == 0:
        ours2 = our_run("ours-repeat", data, runs, args)
        theirs2 = ultralytics_run("yolov8n-equal-time", data, runs, args, ours.wall)
        start = time.perf_counter()
        run_together([ours2, theirs2], args.timeout)
        print(f"equal-time pair: {time.perf_counter() - start:.0f} s")
    elif args.equal_time and not skip:
        equal_skip = "not run (our run failed: no time to give)"

    torch.set_num_threads(os.cpu_count() or 1)
    info = load_dataset(fresh, "val")
    write_ground_truth(info, runs / "fresh.gt.json")
    reason_theirs = skip or "run failed (see its log)"
    scores = {
        "ours": evaluate_run(ours, info, runs),
        "yolov8n": evaluate_run(theirs, info, runs),
        "ours-repeat": evaluate_run(ours2, info, runs),
        "yolov8n-equal-time": evaluate_run(theirs2, info, runs),
    }
    cols = ["ours (tiny)", "YOLOv8n"]
    cells = [
        timing_cells(ours, "") + score_cells(scores["ours"], "run failed"),
        timing_cells(theirs, reason_theirs) + score_cells(scores["yolov8n"], reason_theirs),
    ]
    print_table(
        f"1. same epochs: {args.epochs} epochs on the first {args.images} images, "
        f"{'ours alone' if skip else 'both at once'}, scored on {len(info.samples)} fresh images (seed {FRESH_SEED})",
        cols,
        cells,
    )
    if ours2 is not None:
        cells = [
            timing_cells(ours2, "") + score_cells(scores["ours-repeat"], "run failed"),
            timing_cells(theirs2, "") + score_cells(scores["yolov8n-equal-time"], "run failed"),
        ]
        print_table(
            f"2. equal time: YOLOv8n given our first run's wall time, {ours.wall:.0f} s from "
            "launch (Ultralytics' time= set to what its set-up left), next to a repeat of ours",
            ["ours, repeat", "YOLOv8n, time="],
            cells,
        )
    else:
        print(f"\n2. equal time: {equal_skip}")
    for run in (r for r in (theirs, theirs2) if r is not None):  # this invocation's only
        name, path = run.name, runs / f"{run.name}.json"
        if path.is_file():
            s = json.loads(path.read_text())
            time_s = "-" if s["time_h"] is None else f"{s['time_h'] * 3600:.1f} s"
            print(
                f"{name}: ultralytics {s['version']}, {s['optimizer']} lr0 {s['lr0']:g} "
                f"(optimizer=auto), close_mosaic {s['close_mosaic']}, {s['threads']} torch "
                f"thread(s), set-up {s['set_up_s']} s, time= {time_s}, epochs planned "
                f"{s['epochs_planned']}"
            )
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
