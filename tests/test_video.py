"""Video: frames in = frames out, one JSON line per frame, stride, Ctrl-C, bad files, memory.

The clips are written here from the moving-digits generator, so every box is known. Most
tests use an "ink" detector that boxes every pixel far from the clip's plain background
(exact, and fast); one test runs the real Detector path with a random tiny model, and one
the shipped digits model (skipped while that file is absent).
"""

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detector.boxes import box_iou
from detector.checkpoint import Checkpoint
from detector.cli import main
from detector.commands import video as video_command
from detector.config import ModelConfig
from detector.data.moving_digits import MovingDigitsConfig, moving_digits
from detector.data.synthetic import DigitSource
from detector.models.yolo import YOLODetector
from detector.predict import Detector, resolve_model_path
from detector.settings import Detections, DetectOptions
from detector.video import (
    CODEC_SUFFIXES,
    VideoInterrupted,
    VideoOptions,
    local_detect_fn,
    model_threads,
    process_frames,
)
from detector.video_jobs import (
    VideoJob,
    find_videos,
    plan_jobs,
    probe_video,
    process_video,
    process_videos,
    read_video,
)

SIZE = (64, 96)  # (height, width) of the test clips
FPS = 12.5
FRAMES = 30
GREY = 90  # plain background of the ink-detector clips
INK_DIFFERENCE = 60  # a pixel this far from GREY in some channel is ink
FAST = MovingDigitsConfig(num_digits=2, min_speed=0.04, max_speed=0.06)  # 2.5-4 px per frame
QUIET = VideoOptions(batch_size=4, progress=False)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_clip(path: Path, frames, fps: float = FPS, codec: str = "mp4v") -> list[np.ndarray]:
    """Encode RGB frames; returns the boxes of each frame."""
    boxes = []
    writer = None
    for frame, frame_boxes, _ in frames:
        if writer is None:
            size = (frame.shape[1], frame.shape[0])
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, size)
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        boxes.append(frame_boxes)
    writer.release()
    return boxes


def decode_all(path: Path) -> list[np.ndarray]:
    return list(read_video(path))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def ink_detect(frames: list[np.ndarray]) -> list[Detections]:
    """One box around all pixels far from the grey background (class 0, score 1)."""
    out = []
    for frame in frames:
        ink = np.abs(frame.astype(np.int16) - GREY).max(axis=2) >= INK_DIFFERENCE
        rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
        boxes = np.zeros((0, 4), np.float32)
        if rows.size:
            boxes = np.array([[cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]], np.float32)
        n = len(boxes)
        out.append(
            Detections(
                boxes,
                np.ones(n, np.float32),
                np.zeros(n, np.int64),
                ["ink"] * n,
                None,
                frame.shape[:2],
            )
        )
    return out


def union_box(boxes: np.ndarray) -> np.ndarray:
    return np.array([*boxes[:, :2].min(0), *boxes[:, 2:].max(0)], np.float32)


@pytest.fixture(scope="module")
def digits():
    return DigitSource.load("val")


@pytest.fixture(scope="module")
def clip(tmp_path_factory, digits):
    """A grey clip of two fast digits: (path, boxes per frame)."""
    path = tmp_path_factory.mktemp("clip") / "digits.mp4"
    grey = np.full((*SIZE, 3), GREY, np.uint8)
    boxes = write_clip(path, moving_digits(digits, FRAMES, SIZE, 1, FAST, grey))
    return path, boxes


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=10, input_size=64)
    path = tmp_path_factory.mktemp("model") / "random.safetensors"
    Checkpoint(cfg, "grid", YOLODetector(cfg).state_dict()).save(path)
    return path


def test_moving_digits_stay_inside_and_move(digits):
    clip = list(moving_digits(digits, 40, SIZE, seed=3, config=FAST))
    again = list(moving_digits(digits, 40, SIZE, seed=3, config=FAST))
    boxes = np.stack([b for _, b, _ in clip])  # (F, N, 4)
    assert boxes.shape == (40, FAST.num_digits, 4)
    assert (boxes[..., :2] >= 0).all() and (boxes[..., 2] <= SIZE[1]).all()
    assert (boxes[..., 3] <= SIZE[0]).all()
    assert (np.abs(np.diff(boxes, axis=0)).max(axis=2) > 0).mean() > 0.9
    assert all((c == clip[0][2]).all() for _, _, c in clip)
    assert all((f == g).all() for (f, _, _), (g, _, _) in zip(clip, again, strict=True))


def test_frame_count_size_fps_and_one_record_per_frame(clip, random_model, tmp_path):
    source, _ = clip
    detector = Detector.load(random_model, "cpu")
    job = VideoJob(source, tmp_path / "out.mp4", tmp_path / "out.jsonl")
    result = process_video(job, local_detect_fn(detector), QUIET)
    frames_in, frames_out = decode_all(source), decode_all(job.video)
    assert result.frames == result.detected == len(frames_in) == len(frames_out) == FRAMES
    info_in, info_out = probe_video(source), probe_video(job.video)
    assert (info_out.width, info_out.height) == (info_in.width, info_in.height)
    assert info_out.fps == pytest.approx(info_in.fps)
    records = read_jsonl(job.jsonl)
    assert [r["index"] for r in records] == list(range(FRAMES))
    assert [r["timestamp"] for r in records] == pytest.approx([i / FPS for i in range(FRAMES)])
    assert all(r["source"] == "model" and r["image_size"] == list(SIZE) for r in records)


def test_progress_in_a_log_is_a_few_plain_lines(clip, tmp_path, capsys):
    source, _ = clip
    job = VideoJob(source, tmp_path / "out.mp4", tmp_path / "out.jsonl")
    process_video(job, ink_detect, VideoOptions(batch_size=4, progress=True))
    err = capsys.readouterr().err  # not a terminal: detector.progress's plain lines
    lines = [line for line in err.splitlines() if line.startswith(f"{source}: ")]
    assert "\r" not in err and 2 <= len(lines) <= 5, err
    assert f"started, {FRAMES} frame" in lines[0]
    assert f"done, {FRAMES}/{FRAMES} frame (100%)" in lines[-1]


def test_detections_stay_with_their_frames(clip, tmp_path):
    source, truth = clip
    job = VideoJob(source, tmp_path / "out.mp4", tmp_path / "out.jsonl")
    process_video(job, ink_detect, QUIET)
    records = read_jsonl(job.jsonl)
    assert len(records) == FRAMES
    frames_in, frames_out = decode_all(source), decode_all(job.video)
    for before, after in zip(frames_in, frames_out, strict=True):  # a box drawn on each
        assert np.abs(after.astype(np.int16) - before).max() > INK_DIFFERENCE
    found = torch.tensor([r["detections"][0]["box"] for r in records])
    expected = torch.from_numpy(np.stack([union_box(b) for b in truth]))
    iou = box_iou(found, expected)  # (F, F): frame i's box against every frame's truth
    assert bool((iou.diagonal() > 0.8).all())
    # The digits move several pixels a frame: the neighbours' truths fit worse.
    assert bool((iou.diagonal()[1:] > iou.diagonal(1)).all())
    assert bool((iou.diagonal()[:-1] > iou.diagonal(-1)).all())


def test_stride_carries_the_last_detected_frame(clip, tmp_path):
    source, _ = clip
    stride, batch = 3, 2
    calls: list[int] = []

    def counting(frames):
        calls.append(len(frames))
        return ink_detect(frames)

    job = VideoJob(source, tmp_path / "out.avi", tmp_path / "out.jsonl")
    options = VideoOptions(batch_size=batch, stride=stride, codec="MJPG", progress=False)
    result = process_video(job, counting, options)
    assert len(decode_all(job.video)) == FRAMES
    assert max(calls) <= batch and sum(calls) == result.detected == -(-FRAMES // stride)
    records = read_jsonl(job.jsonl)
    assert len(records) == FRAMES
    for record in records:
        index = record["index"]
        assert record["detected_index"] == index - index % stride
        assert record["source"] == ("model" if index % stride == 0 else "carried")
        assert record["detections"] == records[record["detected_index"]]["detections"]
    moving = [records[i]["detections"] != records[i + stride]["detections"] for i in (0, stride)]
    assert all(moving)


def test_ctrl_c_leaves_playable_video_and_parsable_jsonl(clip, tmp_path):
    source, _ = clip
    batch, batches_done = 4, 2
    calls = []

    def interrupted_after_two_batches(frames):
        calls.append(len(frames))
        if len(calls) > batches_done:
            raise KeyboardInterrupt
        return ink_detect(frames)

    job = VideoJob(source, tmp_path / "out.mp4", tmp_path / "out.jsonl")
    options = VideoOptions(batch_size=batch, progress=False)
    with pytest.raises(VideoInterrupted) as stopped:
        process_video(job, interrupted_after_two_batches, options)
    assert isinstance(stopped.value, KeyboardInterrupt)
    written = batch * batches_done
    assert stopped.value.result.frames == written
    assert len(decode_all(job.video)) == written
    records = read_jsonl(job.jsonl)
    assert [r["index"] for r in records] == list(range(written))


def test_unreadable_inputs_are_reported_and_the_others_run(clip, tmp_path):
    source, _ = clip
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"not a video at all" * 100)
    missing = tmp_path / "missing.mp4"
    jobs = plan_jobs([corrupt, missing, source], tmp_path / "out")
    results = list(process_videos(jobs, ink_detect, QUIET))
    assert [r.error is not None for r in results] == [True, True, False]
    assert "corrupt.mp4" in results[0].error and "missing.mp4" in results[1].error
    assert results[2].frames == FRAMES
    assert len(read_jsonl(jobs[2].jsonl)) == FRAMES


def test_cli_runs_good_files_and_fails_on_bad_ones(clip, random_model, tmp_path, capsys):
    source, _ = clip
    corrupt = tmp_path / "corrupt.avi"
    corrupt.write_bytes(b"\x00" * 4096)
    out = tmp_path / "out"
    argv = ["video", str(source), str(corrupt), "-o", str(out), "--weights", str(random_model)]
    code = main([*argv, "--device", "cpu", "--quiet", "--codec", "MJPG"])
    assert code == 1
    assert "corrupt.avi" in capsys.readouterr().err
    assert len(decode_all(out / f"{source.stem}.avi")) == FRAMES
    assert len(read_jsonl(out / f"{source.stem}.jsonl")) == FRAMES
    assert main(["video", str(tmp_path / "nothing*.mp4"), "-o", str(out)]) == 2


def test_find_videos_expands_folders_and_globs(tmp_path):
    for name in ("b.mp4", "a.AVI", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.mkv").write_bytes(b"x")
    found, problems = find_videos([tmp_path, str(tmp_path / "**" / "*.mkv"), tmp_path / "b.mp4"])
    assert [p.name for p in found] == ["a.AVI", "b.mp4", "c.mkv"]
    assert problems == []
    found, problems = find_videos([tmp_path / "nope.mp4", str(tmp_path / "*.webm")])
    assert found == [] and len(problems) == 2


def test_plan_jobs_names_outputs(tmp_path):
    a, b = tmp_path / "x" / "a.mp4", tmp_path / "y" / "b.avi"
    (single,) = plan_jobs([a], tmp_path / "result.mp4")
    assert (single.video, single.jsonl) == (tmp_path / "result.mp4", tmp_path / "result.jsonl")
    (named,) = plan_jobs([a], tmp_path / "result.mp4", jsonl=tmp_path / "r.jsonl")
    assert named.jsonl == tmp_path / "r.jsonl"
    jobs = plan_jobs([a, b], tmp_path / "out", codec="MJPG")
    assert [j.video.name for j in jobs] == ["a.avi", "b.avi"]
    assert [j.jsonl.name for j in jobs] == ["a.jsonl", "b.jsonl"]
    with pytest.raises(ValueError, match="--jsonl"):
        plan_jobs([a, b], tmp_path / "out", jsonl=tmp_path / "all.jsonl")
    with pytest.raises(ValueError, match="both write"):
        plan_jobs([a, tmp_path / "z" / "a.mov"], tmp_path / "out")
    with pytest.raises(ValueError, match="overwrite an input"):
        plan_jobs([a], a)
    with pytest.raises(ValueError, match="no input"):
        plan_jobs([], tmp_path / "out")


def test_bad_frames_and_options_raise_clear_errors(tmp_path):
    frames = [np.zeros((*SIZE, 3), np.uint8), np.zeros((SIZE[0] + 2, SIZE[1], 3), np.uint8)]
    with pytest.raises(ValueError, match="frame 1 is"):
        process_frames(frames, SIZE, FPS, ink_detect, tmp_path / "o.mp4", tmp_path / "o.jsonl")
    with pytest.raises(ValueError, match="codec"):
        VideoOptions(codec="H264")
    with pytest.raises(ValueError, match="stride"):
        VideoOptions(stride=0)
    with pytest.raises(ValueError, match="2 results for 1 frames"):
        process_frames(
            frames[:1], SIZE, FPS, lambda f: ink_detect(f * 2), tmp_path / "o.mp4", tmp_path / "j"
        )


def test_a_failing_writer_stops_the_video(tmp_path):
    n_frames, calls = 400, []

    def failing_draw(frame, detections):
        raise OSError("disk full")

    def detect(frames):
        calls.append(len(frames))
        return ink_detect(frames)

    frames = (np.full((*SIZE, 3), GREY, np.uint8) for _ in range(n_frames))
    with pytest.raises(OSError, match="disk full"):
        process_frames(
            frames, SIZE, FPS, detect, tmp_path / "o.mp4", tmp_path / "o.jsonl", QUIET,
            draw_fn=failing_draw,
        )  # fmt: skip
    # Only what the bounded queues held was detected, not the whole stream.
    assert sum(calls) <= 2 * QUIET.queue_frames + 2 * QUIET.batch_size


def test_cli_defaults_match_the_library():
    options = VideoOptions()
    assert options.batch_size == video_command.DEFAULT_BATCH
    assert options.queue_frames == video_command.DEFAULT_QUEUE
    assert options.codec == video_command.DEFAULT_CODEC
    assert set(video_command.CODECS) == set(CODEC_SUFFIXES)


def test_model_threads_leave_cores_to_the_reader_and_writer():
    assert [model_threads(n) for n in (1, 2, 3, 16)] == [1, 1, 1, 14]


def rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm (Linux)."""
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_memory_stays_flat_over_a_long_video(digits, random_model, tmp_path):
    n_frames, size, warm_up, every = 2000, (160, 160), 200, 50
    bound = 40 * 2**20  # bytes of RSS growth allowed after warm-up
    all_frames = n_frames * size[0] * size[1] * 3
    assert bound < all_frames / 2, "the bound must be far below holding every frame"
    detector = Detector.load(random_model, "cpu")
    samples: dict[int, int] = {}

    def sample(index: int) -> None:
        if index % every == 0:
            samples[index] = rss_bytes()

    frames = (frame for frame, _, _ in moving_digits(digits, n_frames, size, seed=2))
    result = process_frames(
        frames,
        size,
        FPS,
        local_detect_fn(detector, DetectOptions(score_threshold=0.01)),
        tmp_path / "long.mp4",
        tmp_path / "long.jsonl",
        VideoOptions(batch_size=8, progress=False),
        on_frame=sample,
    )
    assert result.frames == n_frames
    growth = max(samples.values()) - samples[warm_up]
    print(
        f"RSS at frame {warm_up}: {samples[warm_up] / 2**20:.1f} MiB, peak growth after: "
        f"{growth / 2**20:.1f} MiB over {n_frames} frames ({all_frames / 2**20:.0f} MiB of pixels)"
    )
    assert growth < bound, f"RSS grew {growth / 2**20:.1f} MiB after frame {warm_up}"


def test_shipped_model_finds_the_moving_digits(digits, tmp_path):
    try:
        resolve_model_path("digits")
    except FileNotFoundError:
        pytest.skip("the shipped model weights/digits.safetensors is not there yet")
    detector = Detector.load("digits", "cpu")
    n_frames, size = 24, (240, 320)
    source = tmp_path / "digits.mp4"
    truth = write_clip(source, moving_digits(digits, n_frames, size, seed=5))
    classes = next(moving_digits(digits, 1, size, seed=5))[2]
    job = VideoJob(source, tmp_path / "out.mp4", tmp_path / "out.jsonl")
    process_video(job, local_detect_fn(detector), QUIET)
    records = read_jsonl(job.jsonl)
    assert len(records) == n_frames == len(decode_all(job.video))
    found = 0
    for record, boxes in zip(records, truth, strict=True):
        for box, cls in zip(boxes, classes, strict=True):
            same = [d["box"] for d in record["detections"] if d["class_id"] == cls]
            if (
                same
                and float(
                    box_iou(torch.tensor(np.array([box])), torch.tensor(np.array(same))).max()
                )
                >= 0.5
            ):
                found += 1
    wanted = n_frames * len(classes)
    assert found >= 0.8 * wanted, f"found {found} of {wanted} digits (frames x digits)"


def test_synth_video_writes_a_clip_from_the_command_line(tmp_path, capsys):
    from detector.commands import synth

    out, labels = tmp_path / "clips" / "digits.avi", tmp_path / "clips" / "digits.jsonl"
    argv = ["synth", "video", "--out", str(out), "--frames", "12", "--seed", "4"]
    size = ["--width", "96", "--height", "64", "--fps", "10", "--codec", "MJPG"]
    assert main([*argv, *size, "--labels", str(labels), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: 12 frames, 96x64, 10 fps" in printed and str(labels) in printed
    capture = cv2.VideoCapture(str(out))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(10)
    capture.release()
    frames = decode_all(out)
    assert len(frames) == 12 and frames[0].shape == (64, 96, 3)
    records = read_jsonl(labels)
    assert [r["index"] for r in records] == list(range(12))
    assert all(len(r["boxes"]) == synth.VIDEO_DIGITS for r in records)
    assert MovingDigitsConfig.num_digits == synth.VIDEO_DIGITS
    assert main([*argv, "--frames", "0"]) == 2
    assert "at least 1 frame" in capsys.readouterr().err
