"""The training loop: anchors, AMP, EMA, warm-up + cosine schedule, checkpoints, resume, DDP.

``train(options)`` runs a whole training from Python; ``detector train`` fills the same
:class:`TrainOptions`. Multi-GPU or multi-node: launch with ``torchrun``; every process
trains on its shard, only rank 0 validates and writes.

``train`` is a loop over steps that share a :class:`TrainRun`: :func:`set_up` (process
group, device, data, anchors, model, EMA, optimizer, resume), :func:`prepare_epoch`,
:func:`train_one_epoch`, :func:`validate_and_checkpoint` (rank 0; returns whether to stop
early) and :func:`finish` (plots, process group teardown).

Its building blocks (options, EMA, schedule, optimizer, anchors, results header) are in
:mod:`detector.train_blocks`.

Model kinds (``TrainOptions.kind``): ``grid`` (YOLO; ``landmark`` when the data has
keypoints) trains on augmented whole images; ``sliding-window`` trains its crop classifier
on labelled windows (:mod:`detector.window_train`). What differs is built once in
:func:`set_up` (:class:`TrainParts`: the batches, their collation and the loss) and in
:func:`prepare_epoch` (the window kind's hard-negative mining); the loop, EMA, schedule,
validation on whole images, checkpoints and resume are shared.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from detector.checkpoint import Checkpoint, remove_stale_temporaries
from detector.config import ModelConfig, TrainConfig
from detector.data.dataset import DetectionDataset, collate
from detector.data.formats import load_dataset
from detector.data.transforms import Augmenter
from detector.data.types import DatasetInfo
from detector.data.window_crops import collate_crops, is_crop_folder, load_crop_folder
from detector.device import resolve_device
from detector.encoding import TargetEncoder
from detector.keypoint_metrics import keypoint_result
from detector.kinds import get_kind, grid_kind_name
from detector.loss import DetectionLoss
from detector.models.window import WindowConfig
from detector.predict import Detector
from detector.progress import progress
from detector.train_blocks import (  # noqa: F401  (TrainOptions, RESULTS_FIELDS…: re-exported)
    BEST,
    LAST,
    MIN_WARMUP_STEPS,
    NUM_ANCHORS,
    RESULTS,
    RESULTS_FIELDS,
    ModelEMA,
    TrainOptions,
    dataset_hash,
    fit_anchors,
    learning_rate,
    make_optimizer,
    start_results,
)
from detector.validate import validate
from detector.window_loss import WindowLoss
from detector.window_train import (
    HARD_NEGATIVES_KEY,
    WINDOW_KIND,
    mine_hard_negatives,
    restore_hard_negatives,
    window_dataset,
    window_model_config,
    window_train_metadata,
)


def _distributed() -> tuple[int, int, int]:
    """(rank, local rank, world size) from torchrun's environment; (0, 0, 1) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


@dataclass
class TrainParts:
    """What differs by model kind in an epoch: the batches and the loss."""

    dataset: Dataset  # items of one epoch (grid: images; sliding-window: an image's crops)
    collate: Callable  # items -> (uint8 images (B, 3, H, W), targets with .to(device), indices)
    criterion: torch.nn.Module  # (raw output as float, targets) -> (total, LossItems)
    trained: torch.nn.Module  # the module a batch goes through (sliding-window: the classifier)
    augmenter: Augmenter | None = None  # grid: the configured one (close_mosaic swaps it)


@dataclass
class TrainRun:
    """What the steps of one training run share: built by :func:`set_up`, then updated by
    :func:`validate_and_checkpoint` after every epoch."""

    options: TrainOptions
    rank: int  # this process's rank; 0 validates, logs and writes
    world: int  # number of processes (1 without torchrun)
    device: torch.device
    val_info: DatasetInfo
    kind: str  # the model kind written into checkpoints (see detector.kinds)
    model_config: ModelConfig | WindowConfig
    model: torch.nn.Module  # the weights the optimizer moves (the kind's whole network)
    train_model: torch.nn.Module  # ``parts.trained``, or its DistributedDataParallel wrapper
    ema: ModelEMA
    optimizer: torch.optim.Optimizer
    parts: TrainParts
    metadata: dict  # what every checkpoint records about the run
    start_epoch: int = 0  # > 0 when resumed
    best_fitness: float = -1.0
    best_epoch: int = -1  # the epoch (from 0) of best_fitness, -1 before the first
    stale: int = 0  # epochs since the fitness last improved

    @property
    def cfg(self) -> TrainConfig:
        return self.options.config

    @property
    def dataset(self) -> Dataset:
        return self.parts.dataset

    @property
    def criterion(self) -> torch.nn.Module:
        return self.parts.criterion

    @property
    def main_process(self) -> bool:
        return self.rank == 0

    @property
    def out(self) -> Path:
        return Path(self.options.out)

    def log(self, msg: str) -> None:
        """Print on the main process only."""
        _logger(self.main_process)(msg)


def _logger(main_process: bool) -> Callable[[str], None]:
    """``print`` (flushed) on the main process; nothing on the others."""

    def log(msg: str) -> None:
        if main_process:
            print(msg, flush=True)

    return log


@dataclass
class EpochStats:
    """What :func:`train_one_epoch` measured."""

    lr: float  # the learning rate of the last step
    loss_sums: dict[str, float]  # per loss term, the sum over this process's images
    seen: int  # images this process trained on
    seconds: float

    def mean(self, term: str) -> float:
        return self.loss_sums[term] / self.seen


def train(options: TrainOptions) -> Path:
    """Train, validating every epoch; returns the path of the best checkpoint."""
    run = set_up(options)
    for epoch in range(run.start_epoch, run.cfg.epochs):
        prepare_epoch(run, epoch)
        stats = train_one_epoch(run, epoch)
        if validate_and_checkpoint(run, epoch, stats):
            break
        if options.stop_after_epochs and epoch + 1 - run.start_epoch >= options.stop_after_epochs:
            run.log(f"stopping after {options.stop_after_epochs} epochs of this run (resumable)")
            break
    return finish(run)


def set_up(options: TrainOptions) -> TrainRun:
    """Everything before the first epoch: the process group (under torchrun), the device,
    the data, the anchors, the model, EMA and optimizer, and their state on resume."""
    rank, local_rank, world = _distributed()
    log = _logger(rank == 0)
    cfg = options.config
    device = _set_up_device(options.device, local_rank, world, cfg.workers)
    train_info, val_info = _load_data(options, log)
    model_config, resume_state, init_state = _start_from(options, train_info, log)
    kind = WINDOW_KIND if options.kind == WINDOW_KIND else grid_kind_name(model_config)

    torch.manual_seed(cfg.seed)
    # Channels-last convolutions: measured here 1.25x the training steps/s of NCHW on
    # the CPU (tiny, 320, batch 8); on CUDA they are what bf16 tensor cores want.
    model = get_kind(kind).build(model_config).to(device, memory_format=torch.channels_last)
    if init_state is not None:
        model.load_state_dict(init_state.inference_state)
    ema = ModelEMA(model, cfg.ema_decay)
    optimizer = make_optimizer(model, cfg)
    start_epoch, best_fitness, stale = 0, -1.0, 0
    if resume_state is not None:
        start_epoch, best_fitness, stale = _restore(model, ema, optimizer, resume_state)
    parts = (
        _window_parts(options, train_info, model, device, resume_state)
        if kind == WINDOW_KIND
        else _grid_parts(options, train_info, model, device, log)
    )
    train_model = parts.trained
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None
        )
    metadata = {
        "command": options.command,
        "dataset": str(options.data),
        "dataset_hash": dataset_hash(train_info.samples),
        "train_options": {
            k: v for k, v in asdict(options).items() if k not in ("config", "augment", "window")
        },
        "train_config": asdict(cfg),
        "augment": asdict(options.augment),
    }
    if kind == WINDOW_KIND:
        metadata |= window_train_metadata(options.window)
        if resume_state is not None and HARD_NEGATIVES_KEY in resume_state.metadata:
            metadata[HARD_NEGATIVES_KEY] = resume_state.metadata[HARD_NEGATIVES_KEY]
    run = TrainRun(
        options=options,
        rank=rank,
        world=world,
        device=device,
        val_info=val_info,
        kind=kind,
        model_config=model_config,
        model=model,
        train_model=train_model,
        ema=ema,
        optimizer=optimizer,
        parts=parts,
        metadata=metadata,
        start_epoch=start_epoch,
        best_fitness=best_fitness,
        stale=stale,
    )
    if run.main_process:
        run.out.mkdir(parents=True, exist_ok=True)
        for path in remove_stale_temporaries(run.out, (LAST, BEST)):
            log(f"removed {path.name}, left by an interrupted checkpoint write")
        if resume_state is not None:
            run.best_fitness, run.best_epoch, run.stale = reconcile_best(run.out, resume_state, log)
        start_results(run.out / RESULTS, None if resume_state is None else start_epoch)
    return run


def _grid_parts(
    options: TrainOptions,
    train_info: DatasetInfo,
    model: torch.nn.Module,
    device: torch.device,
    log: Callable[[str], None],
) -> TrainParts:
    """The grid kind's epoch: augmented whole images (mosaic…), grid targets, the grid loss."""
    cfg, model_config = options.config, model.config
    encoder = TargetEncoder.from_config(model_config, cfg.loss)
    augmenter = Augmenter(options.augment, model_config.input_size, model_config.flip_idx or None)
    dataset = DetectionDataset(
        train_info, encoder, augmenter, augment=True, seed=cfg.seed, cache=options.cache
    )
    if options.cache:
        log(f"cached {len(dataset)} decoded images: {dataset.cache_bytes() / 2**20:.0f} MiB")
    criterion = DetectionLoss(model_config, cfg.loss).to(device)
    return TrainParts(dataset, collate, criterion, model, augmenter)


def _window_parts(
    options: TrainOptions,
    train_info: DatasetInfo,
    model: torch.nn.Module,
    device: torch.device,
    resume_state: Checkpoint | None,
) -> TrainParts:
    """The sliding-window kind's epoch: each image's labelled crops (with the hard
    negatives mined so far, restored on resume) through the classifier, its loss."""
    config, window = model.config, options.window
    if options.cache:
        raise ValueError("--cache applies to grid training only")
    dataset = window_dataset(
        train_info, config, window, options.augment, options.data, options.config.seed
    )
    if resume_state is not None:
        restore_hard_negatives(dataset, resume_state.metadata.get(HARD_NEGATIVES_KEY, []))
    criterion = WindowLoss(config.num_classes, window.box_gain).to(device)
    return TrainParts(dataset, collate_crops, criterion, model.classifier)


def _start_from(
    options: TrainOptions, train_info: DatasetInfo, log: Callable[[str], None]
) -> tuple[ModelConfig | WindowConfig, Checkpoint | None, Checkpoint | None]:
    """The model's configuration, and the checkpoint to resume (``--resume``: out/last)
    or to take the first weights from (``--init``); a new grid model gets k-means
    anchors, a new window model its pyramid's smallest object from the boxes.

    A new grid model records the dataset's landmark names, flip_idx and skeleton;
    ``--init`` keeps the initial model's unless the dataset gives them (the data describes
    its points); ``--resume`` continues with the checkpoint's configuration as it is."""
    window_kind = options.kind == WINDOW_KIND
    if options.resume:
        last_path = Path(options.out) / LAST
        if not last_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {last_path}")
        resume_state = Checkpoint.load(last_path)
        _check_kind(resume_state, options, f"--resume {last_path}")
        log(f"resuming from {last_path} after epoch {resume_state.metadata['epoch'] + 1}")
        return resume_state.config, resume_state, None
    if options.init:
        init_state = Checkpoint.load(options.init)
        _check_kind(init_state, options, f"--init {options.init}")
        model_config = init_state.config
        if list(model_config.names) != list(train_info.names):
            raise ValueError(
                f"--init {options.init}: its classes {list(model_config.names)} differ from the "
                f"dataset's {train_info.names}"
            )
        if not window_kind:
            num_kpts = train_info.kpt_shape[0] if train_info.kpt_shape else 0
            if model_config.num_landmarks != num_kpts:
                raise ValueError(
                    f"--init {options.init}: its {model_config.num_landmarks} landmarks differ "
                    f"from the dataset's {num_kpts}"
                )
            model_config = replace(model_config, **_landmark_fields(train_info, model_config))
        what = "its window and pyramid" if window_kind else f"size {model_config.size}, its anchors"
        log(f"initialised from {options.init} ({what})")
        return model_config, None, init_state
    if window_kind:
        whole_crops = is_crop_folder(options.data)
        config = window_model_config(options.window, train_info, options.imgsz, log, whole_crops)
        return config, None, None
    model_config = ModelConfig(
        num_classes=len(train_info.names),
        size=options.model,
        head=options.head,
        head_depth=options.head_depth,
        head_width=options.head_width,
        input_size=options.imgsz,
        anchors=fit_anchors(train_info, options.imgsz, options.config.seed, log),
        num_landmarks=train_info.kpt_shape[0] if train_info.kpt_shape else 0,
        class_names=tuple(train_info.names),
        **_landmark_fields(train_info),
    )
    return model_config, None, None


def _landmark_fields(info: DatasetInfo, base: ModelConfig | None = None) -> dict:
    """``landmark_names``, ``flip_idx`` and ``skeleton`` of a ModelConfig from a dataset;
    where the dataset gives none, ``base``'s (or empty)."""
    given = {
        "landmark_names": tuple(info.kpt_names) if info.kpt_names else None,
        "flip_idx": tuple(info.flip_idx) if info.flip_idx else None,
        "skeleton": tuple((int(i), int(j)) for i, j in info.skeleton) if info.skeleton else None,
    }
    return {
        name: value if value is not None else (getattr(base, name) if base else ())
        for name, value in given.items()
    }


def _check_kind(checkpoint: Checkpoint, options: TrainOptions, what: str) -> None:
    """``ValueError`` when a checkpoint to start from is not of the kind being trained."""
    is_window = checkpoint.kind == WINDOW_KIND
    if is_window != (options.kind == WINDOW_KIND):
        raise ValueError(
            f"{what} is a {checkpoint.kind} model; train it with --kind "
            f"{WINDOW_KIND if is_window else 'grid'}"
        )


def _set_up_device(name: str, local_rank: int, world: int, workers: int) -> torch.device:
    """The training device; under torchrun also this process's GPU and the process group
    (NCCL on CUDA, gloo on the CPU). On the CPU, the intra-op threads."""
    device = resolve_device(name)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Leave a core to each data worker: oversubscribed OpenMP threads wait on each
        # other at every barrier (measured here: 2 threads on a busy 2-core machine ran a
        # step 5x slower than 1 thread).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))
    return device


def _load_data(
    options: TrainOptions, log: Callable[[str], None]
) -> tuple[DatasetInfo, DatasetInfo]:
    """The training and validation splits; logs their sizes and the first skipped samples.
    A crops folder (sliding-window only) holds both (see ``load_crop_folder``)."""
    if is_crop_folder(options.data):
        if options.kind != WINDOW_KIND:
            raise ValueError(
                f"{options.data} is a crops folder (it holds background/): train it with "
                f"--kind {WINDOW_KIND}"
            )
        train_info = load_crop_folder(options.data, options.train_split)
        val_info = load_crop_folder(options.data, options.val_split)
    else:
        train_info = load_dataset(options.data, options.train_split, strict=options.strict)
        val_info = load_dataset(options.data, options.val_split, strict=options.strict)
    for split, info in ((options.train_split, train_info), (options.val_split, val_info)):
        log(
            f"{split}: {len(info.samples)} images, {sum(len(s.classes) for s in info.samples)} boxes, "
            f"{len(info.skipped)} skipped"
        )
        for message in info.skipped[:5]:
            log(f"  skipped: {message}")
    if options.val_images is not None and options.val_images < len(val_info.samples):
        kept = val_info.samples[: options.val_images]
        log(
            f"{options.val_split}: validating on the first {len(kept)} of "
            f"{len(val_info.samples)} images (--val-images), "
            f"{sum(len(s.classes) for s in kept)} boxes"
        )
        val_info = replace(val_info, samples=kept)
    return train_info, val_info


def _restore(
    model: torch.nn.Module, ema: ModelEMA, optimizer: torch.optim.Optimizer, state: Checkpoint
) -> tuple[int, float, int]:
    """Resume from ``state`` (a last checkpoint): load the weights, EMA and optimizer;
    returns the epoch to start at, the best fitness so far and the stale epochs."""
    model.load_state_dict(state.model_state)
    ema.module.load_state_dict(state.ema_state)
    optimizer.load_state_dict(state.optimizer_state)
    meta = state.metadata
    ema.updates = meta["ema_updates"]
    return meta["epoch"] + 1, meta["best_fitness"], meta["stale_epochs"]


def reconcile_best(
    out: Path, last: Checkpoint, log: Callable[[str], None]
) -> tuple[float, int, int]:
    """Make ``out/best`` hold what ``last`` (the checkpoint resumed from) says is best;
    returns the best fitness so far, its epoch and the epochs since it improved, to
    resume with.

    ``last`` records the best fitness so far and its epoch (``best_epoch``; older files:
    ``epoch - stale_epochs``); ``best`` records its own ``epoch`` and fitness. A run
    writes ``best`` before ``last`` (:func:`validate_and_checkpoint`), each atomically,
    so a kill leaves one of these, and the rule is:

    1. ``best`` is ``last``'s best epoch: nothing to do.
    2. ``best`` is newer than ``last`` (killed after writing ``best``, before ``last``):
       ``best`` holds measured weights of an epoch that will run again; keep them and
       resume with their fitness and epoch as the best so far, so the rerun replaces
       them only if it does better.
    3. ``last``'s own epoch is its best and ``best`` is not that epoch (missing,
       unreadable, older: e.g. a kill between the writes of an older version, which
       wrote ``last`` first): rewrite ``best`` from ``last``'s inference weights.
    4. Otherwise the weights ``last`` calls best are gone: keep ``best`` as it is (or
       none) and resume with its fitness and epoch (-1 without one), so the next epoch
       that beats what ``best`` really holds rewrites it.
    """
    meta = last.metadata
    stale = meta["stale_epochs"]
    best_fitness = meta["best_fitness"]
    best_epoch = meta.get("best_epoch", meta["epoch"] - stale)
    best_path = out / BEST
    try:
        best = Checkpoint.load(best_path).metadata if best_path.is_file() else None
    except ValueError as err:
        log(f"warning: {err}")
        best = None
    if best is not None and best.get("epoch") == best_epoch:  # 1
        return best_fitness, best_epoch, stale
    if best is not None and best.get("epoch", -1) > meta["epoch"]:  # 2
        log(
            f"{best_path} is from epoch {best['epoch'] + 1}, after {LAST}'s epoch "
            f"{meta['epoch'] + 1} (a run stopped between the two writes): keeping it as best"
        )
        return best.get("best_fitness", -1.0), best["epoch"], 0
    if best_epoch == meta["epoch"]:  # 3
        last.for_inference().save(best_path)
        log(f"rewrote {best_path} from {LAST} (epoch {best_epoch + 1}, its best)")
        return best_fitness, best_epoch, stale
    fitness = -1.0 if best is None else best.get("best_fitness", -1.0)  # 4
    epoch = -1 if best is None else best.get("epoch", -1)
    log(
        f"warning: the weights of epoch {best_epoch + 1}, best by {LAST}, were not saved; "
        f"resuming with the fitness of what {best_path} holds ({fitness:.4f})"
    )
    return fitness, epoch, stale


def _epoch_loader(run: TrainRun, epoch: int) -> DataLoader:
    """This epoch's batches: its augmentation seed and shuffle (this process's shard under
    DDP); whole images for the last ``close_mosaic`` epochs."""
    cfg, dataset = run.cfg, run.dataset
    dataset.set_epoch(epoch)
    augmenter = run.parts.augmenter
    if cfg.close_mosaic and augmenter is not None and epoch >= cfg.epochs - cfg.close_mosaic:
        # The last epochs see whole images, as validation and inference do.
        dataset.augmenter = replace(augmenter, config=replace(augmenter.config, mosaic=0.0))
        if epoch == cfg.epochs - cfg.close_mosaic:
            run.log(f"mosaic off for the last {cfg.close_mosaic} epochs")
    if run.world > 1:
        sampler = DistributedSampler(dataset, run.world, run.rank, shuffle=True, seed=cfg.seed)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(
            dataset, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        )
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.workers,
        collate_fn=run.parts.collate,
        pin_memory=run.device.type == "cuda",
        drop_last=False,
    )


def prepare_epoch(run: TrainRun, epoch: int) -> None:
    """Before an epoch, per kind: the sliding window mines hard negatives before its
    mining epochs (see :func:`detector.window_train.hard_negative_epochs`); the grid
    needs nothing."""
    if run.kind == WINDOW_KIND:
        mine_hard_negatives(run, epoch)


def _as_float(outputs: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """The raw output in float32 for the loss (a grid's per-scale list, or one tensor)."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float()
    return [o.float() for o in outputs]


def train_one_epoch(run: TrainRun, epoch: int) -> EpochStats:
    """One pass over this process's shard: schedule, forward (bf16 autocast on CUDA),
    loss, backward, clipped step, EMA update; a progress bar with the running means."""
    cfg, device = run.cfg, run.device
    use_amp = cfg.amp and device.type == "cuda"
    steps_per_epoch = math.ceil(len(run.dataset) / (cfg.batch_size * run.world))
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = max(MIN_WARMUP_STEPS, round(cfg.warmup_epochs * steps_per_epoch))
    run.model.train()
    sums = {"box": 0.0, "obj": 0.0, "cls": 0.0, "lmk": 0.0}
    seen, started = 0, time.perf_counter()
    bar = progress(
        _epoch_loader(run, epoch),
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        unit="batch",
        enabled=run.main_process and run.options.progress,
    )
    lr = cfg.lr
    for i, (images, targets, _) in enumerate(bar):
        lr = learning_rate(epoch * steps_per_epoch + i, total_steps, warmup_steps, cfg)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        images = images.to(device, non_blocking=True).float().div_(255)
        images = images.contiguous(memory_format=torch.channels_last)
        targets = targets.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            outputs = run.train_model(images)
        loss, items = run.criterion(_as_float(outputs), targets)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), max_norm=10.0)
        run.optimizer.step()
        run.ema.update(run.model)
        seen += len(images)
        for k, v in items.as_dict().items():
            sums[k] += v * len(images)
        rate = seen * run.world / (time.perf_counter() - started)
        shown = {k: v for k, v in sums.items() if k != "lmk" or run.model_config.num_landmarks}
        bar.set_postfix({k: f"{v / seen:.4f}" for k, v in shown.items()} | {"img/s": f"{rate:.1f}"})
    bar.close()
    return EpochStats(lr, sums, seen, time.perf_counter() - started)


def validate_and_checkpoint(run: TrainRun, epoch: int, stats: EpochStats) -> bool:
    """On the main process: validate the EMA weights, append the epoch's row to
    ``results.csv``, save ``best`` when the fitness improved, then ``last``. Returns
    whether to stop early (patience ran out), agreed by every process."""
    stop = torch.zeros(1, device=run.device)
    if run.main_process:
        detector = Detector(run.ema.module, run.model_config, run.device, run.kind)
        val = validate(
            detector,
            run.val_info,
            batch_size=run.cfg.batch_size,
            workers=run.cfg.workers,
            progress=run.options.progress,
        )
        r = val.result
        fitness = _fitness(r.ap, r.ap50)
        keypoints = None
        if run.model_config.num_landmarks and run.val_info.kpt_shape:
            keypoints = keypoint_result(
                val.detections, run.val_info, run.options.data, run.model_config.landmark_names
            )
            # a landmark model is chosen by its points as much as by its boxes
            fitness = (fitness + _fitness(keypoints.ap, keypoints.ap50)) / 2
        improved = fitness > run.best_fitness
        if improved:
            run.best_fitness, run.best_epoch, run.stale = fitness, epoch, 0
        else:
            run.stale += 1
        images_per_s = stats.seen * run.world / stats.seconds
        row = [
            epoch + 1,
            f"{stats.lr:.6f}",
            *(f"{stats.mean(k):.5f}" for k in ("box", "obj", "cls", "lmk")),
            f"{_nz(r.ap):.5f}",
            f"{_nz(r.ap50):.5f}",
            f"{_nz(r.ap75):.5f}",
            f"{images_per_s:.1f}",
            f"{stats.seconds:.1f}",
            *(
                ("", "", "")
                if keypoints is None
                else (
                    f"{_nz(keypoints.ap):.5f}",
                    f"{_nz(keypoints.ap50):.5f}",
                    f"{keypoints.nme:.5f}",
                )
            ),
        ]
        with (run.out / RESULTS).open("a", newline="") as f:
            csv.writer(f).writerow(row)
        run.log(
            f"epoch {epoch + 1}: AP {_nz(r.ap):.4f}  AP50 {_nz(r.ap50):.4f}  AP75 {_nz(r.ap75):.4f}"
            + (
                ""
                if keypoints is None
                else f"  keypoint AP {_nz(keypoints.ap):.4f}  NME {keypoints.nme:.4f}"
            )
            + ("  (best)" if improved else "")
        )
        checkpoint = Checkpoint(
            run.model_config,
            run.kind,
            {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
            {k: v.detach().cpu() for k, v in run.ema.module.state_dict().items()},
            run.optimizer.state_dict(),
            run.metadata
            | {
                "epoch": epoch,
                "best_fitness": run.best_fitness,
                "best_epoch": run.best_epoch,
                "stale_epochs": run.stale,
                "ema_updates": run.ema.updates,
                "metrics": r.to_dict()
                | ({} if keypoints is None else {"keypoints": keypoints.to_dict()}),
            },
        )
        # best before last: a kill between the two leaves a newer best, which
        # reconcile_best keeps on resume (last first would lose the best weights)
        if improved:
            checkpoint.for_inference().save(run.out / BEST)
        checkpoint.save(run.out / LAST)
        if run.cfg.patience and run.stale >= run.cfg.patience:
            run.log(f"early stop: no improvement for {run.stale} epochs")
            stop += 1
    if run.world > 1:
        dist.broadcast(stop, 0)
    return bool(stop.item())


def finish(run: TrainRun) -> Path:
    """After the last epoch: plots (main process), the process group's teardown; returns
    the best checkpoint's path."""
    if run.main_process and run.options.plots and (run.out / BEST).exists():
        from detector.plots import training_plots

        for path in training_plots(run.out, run.out / BEST, run.val_info, run.device):
            run.log(f"plot: {path}")
    if run.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    run.log(f"done: best {run.out / BEST} (fitness {run.best_fitness:.4f}), last {run.out / LAST}")
    return run.out / BEST


def _fitness(ap: float, ap50: float) -> float:
    """What picks the best epoch: 0.9 AP@[.5:.95] + 0.1 AP50 (Ultralytics' weights)."""
    return 0.1 * _nz(ap50) + 0.9 * _nz(ap)


def _nz(value: float) -> float:
    """nan (undefined metric) as 0 for arithmetic."""
    return 0.0 if value != value else float(value)


if __name__ == "__main__":  # python -m detector.train is the same as `detector train`
    from detector.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
