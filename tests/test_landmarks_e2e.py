"""Landmarks end to end with a trained K = 5 face model: ``detector predict`` (JSON lines
and the skeleton in the annotated image), ``detector video`` (JSONL), a real gRPC server
(``Detect``, ``StreamDetect`` and ``ListModels`` against ``Detector.detect`` in-process)
and ``detector client``.

The model is trained once per module, for one epoch on a tiny ``detector synth faces``
set at a 64-pixel input: it is barely trained, so the tests keep every candidate
(score threshold 0) and compare landmarks, not their quality.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from server_fixtures import run, serving

from detector.cli import main
from detector.data.dataset import read_rgb
from detector.data.faces import KEYPOINT_NAMES, SKELETON
from detector.draw import auto_thickness, draw_detections
from detector.predict import Detector
from detector.settings import Detections, DetectOptions
from detector.video_jobs import read_video
from server.client import DetectorClient
from server.repository import ModelRepository

pytest.importorskip("skimage")  # detector synth faces draws on scikit-image textures

K = len(KEYPOINT_NAMES)
IMGSZ = 64  # model input side
SYNTH_SIDE = 64  # side of the synthetic images
TRAIN_IMAGES, VAL_IMAGES = 16, 4
MODEL = "faces"  # the served model's name
ALL = DetectOptions(score_threshold=0.0)  # every candidate after NMS (at most 300)
FEW = 3  # detections per image where drawing or printing them all would only slow a test
POINT_ATOL = 0.01  # pixels: server vs in-process
JSON_ATOL = 0.011  # pixels: JSON rounds to 0.01 px
BOX_MATCH_ATOL = 1e-3  # pixels: the same detection's box in two runs
FRAMES, FPS = 4, 5.0
UPSCALE = 5  # the predict test's image: a val image this many times its size

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def faces(tmp_path_factory, one_torch_thread) -> tuple[Path, Path]:
    """``(model file, data folder)``: a K = 5 model trained through ``detector train``."""
    root = tmp_path_factory.mktemp("faces")
    data, run_dir = root / "data", root / "run"
    synth = ["synth", "faces", "--out", str(data), "--seed", "0", "--imgsz", str(SYNTH_SIDE)]
    assert main([*synth, "--train", str(TRAIN_IMAGES), "--val", str(VAL_IMAGES), "--quiet"]) == 0
    train = ["train", "--data", str(data / "data.yaml"), "--imgsz", str(IMGSZ), "--epochs", "1"]
    train += ["--batch", "8", "--workers", "0", "--device", "cpu", "--out", str(run_dir)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")  # the trainer then leaves torch's threads alone
        assert main([*train, "--no-plots", "--quiet"]) == 0
    models = root / "models"
    models.mkdir()
    model = shutil.copy(run_dir / "best.safetensors", models / f"{MODEL}.safetensors")
    return Path(model), data


@pytest.fixture(scope="module")
def detector(faces) -> Detector:
    return Detector.load(faces[0], "cpu")


def val_image(data: Path, index: int) -> np.ndarray:
    return read_rgb(data / "images" / "val" / f"{index:06d}.png")


def shaped_images(data: Path) -> dict[str, np.ndarray]:
    """Three val faces as a landscape, a portrait and a square input: the letterbox pads
    them top and bottom, left and right, and not at all."""
    a, b, c = (val_image(data, i) for i in range(3))
    return {
        "landscape": np.concatenate([a, b], axis=1),
        "portrait": np.concatenate([b, c], axis=0),
        "square": c,
    }


def assert_same_landmarks(got: Detections, want: Detections, atol: float = POINT_ATOL) -> None:
    """The same detections with the same K points each, within ``atol`` pixels. Each
    detection is matched by its box, so that near-tied scores may come in either order."""
    assert got.image_size == want.image_size
    assert len(got) == len(want) > 0
    assert got.landmarks.shape == want.landmarks.shape == (len(want), K, 3)
    for box, points in zip(want.boxes, want.landmarks, strict=True):
        distance = np.abs(got.boxes - box).max(axis=1)
        match = int(distance.argmin())
        assert distance[match] < BOX_MATCH_ATOL
        np.testing.assert_allclose(got.landmarks[match, :, :2], points[:, :2], atol=atol, rtol=0)


def assert_json_landmarks(items: list[dict], want: Detections) -> None:
    """JSON detections (``box``, ``landmarks`` [[x, y]] * K) equal to ``want`` within
    the JSON rounding."""
    assert len(items) == len(want) > 0
    for item in items:
        assert len(item["landmarks"]) == K and all(len(p) == 2 for p in item["landmarks"])
        distance = np.abs(want.boxes - np.array(item["box"])).max(axis=1)
        match = int(distance.argmin())
        assert distance[match] < JSON_ATOL
        np.testing.assert_allclose(
            item["landmarks"], want.landmarks[match, :, :2], atol=JSON_ATOL, rtol=0
        )


def test_the_model_records_the_datasets_landmark_names_and_skeleton(detector) -> None:
    assert detector.config.num_landmarks == K
    assert detector.config.landmark_names == KEYPOINT_NAMES
    assert detector.config.skeleton == SKELETON
    assert detector.config.flip_idx == (1, 0, 2, 4, 3)


def test_predict_writes_landmarks_and_draws_the_skeleton(faces, detector, tmp_path) -> None:
    model, data = faces
    # Five times the size: the barely trained model's points, a few input pixels apart,
    # are then far enough apart for lines between them to show beside the dots.
    image = cv2.resize(val_image(data, 0), None, fx=UPSCALE, fy=UPSCALE)
    image_path = tmp_path / "face.png"
    cv2.imwrite(str(image_path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    out, lines = tmp_path / "annotated", tmp_path / "out.jsonl"
    argv = ["predict", str(image_path), "--weights", str(model), "--device", "cpu"]
    argv += ["--conf", "0", "--max-det", str(FEW), "--save-dir", str(out), "--json", str(lines)]
    assert main([*argv, "--quiet"]) == 0
    (record,) = [json.loads(line) for line in lines.read_text().splitlines()]
    (want,) = detector.detect([image], ALL, max_detections=FEW)
    assert_json_landmarks(record["detections"], want)

    annotated = read_rgb(Path(record["saved"]))
    np.testing.assert_array_equal(annotated, draw_detections(image, want, skeleton=SKELETON))
    plain = draw_detections(image, want)  # boxes and points, no skeleton
    differs = np.any(annotated != plain, axis=2)
    assert differs.any(), "the skeleton's lines should show"
    # Every changed pixel lies on a skeleton line (drawn a little wider here).
    lines_mask = np.zeros(image.shape[:2], np.uint8)
    width = auto_thickness(*image.shape[:2]) + 2
    for points in want.landmarks:
        for i, j in SKELETON:
            start, end = (tuple(int(round(v)) for v in points[k, :2]) for k in (i, j))
            cv2.line(lines_mask, start, end, 1, width)
    assert lines_mask[differs].all()


def test_video_writes_k_landmarks_per_detection(faces, detector, tmp_path) -> None:
    model, data = faces
    clip = tmp_path / "clip.avi"
    frames = [np.concatenate([val_image(data, i % VAL_IMAGES)] * 2, axis=1) for i in range(FRAMES)]
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (width, height))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    out = tmp_path / "out.avi"
    argv = ["video", str(clip), "-o", str(out), "--codec", "MJPG", "--weights", str(model)]
    argv += ["--device", "cpu", "--threads", "1", "--conf", "0", "--batch", "2", "--quiet"]
    assert main(argv) == 0
    records = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    decoded = list(read_video(clip))
    assert len(records) == len(decoded) == FRAMES
    for record, want in zip(records, detector.detect(decoded, ALL), strict=True):
        assert record["image_size"] == [height, width]
        assert_json_landmarks(record["detections"], want)


@pytest.fixture(scope="module")
def served(faces) -> ModelRepository:
    """The trained model as a server's repository (each test starts its server on a free
    port with ``server_fixtures.serving``)."""
    return ModelRepository.from_folder(faces[0].parent, default=MODEL, device="cpu")


def test_server_detect_and_stream_equal_the_in_process_detector(faces, detector, served) -> None:
    images = shaped_images(faces[1])

    def calls(address: str):
        with DetectorClient(address, timeout=60) as client:
            one_by_one = [client.detect(image, score_threshold=0.0) for image in images.values()]
            stream = list(client.stream_detect(iter(images.values()), score_threshold=0.0))
            return one_by_one, stream, client.list_models()

    async def serve():
        async with serving(served) as (_, address):
            return await asyncio.to_thread(calls, address)

    one_by_one, stream, models = run(serve())
    for name, image, got, streamed in zip(images, images.values(), one_by_one, stream, strict=True):
        (want,) = detector.detect([image], ALL)
        assert want.image_size == image.shape[:2], name
        assert_same_landmarks(got, want)
        assert_same_landmarks(streamed, want)
    (info,) = models
    assert info.name == MODEL and info.num_landmarks == K
    assert info.landmark_names == KEYPOINT_NAMES and info.skeleton == SKELETON


def test_client_detect_prints_landmarks_and_models_their_names(
    faces, detector, served, tmp_path, capsys
) -> None:
    image = shaped_images(faces[1])["landscape"]
    path = tmp_path / "landscape.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))

    async def serve():
        async with serving(served) as (_, address):
            detect = ["client", "detect", "--server", address, "--score-threshold", "0"]
            codes = [await asyncio.to_thread(main, [*detect, str(path)])]
            printed = capsys.readouterr().out
            codes.append(await asyncio.to_thread(main, ["client", "models", "--server", address]))
            return codes, printed, capsys.readouterr().out

    codes, printed, listed = run(serve())
    assert codes == [0, 0]
    (record,) = [json.loads(line) for line in printed.splitlines()]
    assert record["image"] == str(path) and record["image_size"] == list(image.shape[:2])
    (want,) = detector.detect([image], ALL)
    assert_json_landmarks(record["detections"], want)
    assert f"{K} landmarks {list(KEYPOINT_NAMES)}" in listed
    assert f"skeleton {[list(pair) for pair in SKELETON]}" in listed


def test_training_validates_the_points_as_detector_eval_does(faces, tmp_path) -> None:
    """The trainer's per-epoch validation of a landmark model scores its points too:
    results.csv's keypoint AP, AP50 and NME (and the checkpoint's metrics) equal
    ``detector eval --json`` on the same split with the saved model, and pick the best
    epoch with the box metrics."""
    import csv

    from detector.checkpoint import Checkpoint

    model, data = faces
    run_dir = model.parent.parent / "run"
    with (run_dir / "results.csv").open(newline="") as f:
        (row,) = list(csv.DictReader(f))
    report = tmp_path / "eval.json"
    argv = ["eval", "--weights", str(run_dir / "best.safetensors"), "--data", str(data)]
    assert main([*argv, "--device", "cpu", "--json", str(report), "--quiet"]) == 0
    keypoints = json.loads(report.read_text())["keypoints"]
    assert keypoints["num_matched"] > 0  # so that NME is a number
    for column, key in (("kpt_ap", "ap"), ("kpt_ap50", "ap50"), ("nme", "nme")):
        want = keypoints[key] or 0.0  # JSON null: an undefined AP, 0 in results.csv
        assert float(row[column]) == pytest.approx(want, abs=1e-5)
    meta = Checkpoint.load(run_dir / "last.safetensors").metadata
    assert meta["metrics"]["keypoints"] == {**keypoints, "nme": pytest.approx(keypoints["nme"])}
    box = 0.9 * float(row["ap"]) + 0.1 * float(row["ap50"])
    points = 0.9 * float(row["kpt_ap"]) + 0.1 * float(row["kpt_ap50"])
    assert meta["best_fitness"] == pytest.approx((box + points) / 2, abs=1e-4)
