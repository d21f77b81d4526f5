"""``detector predict`` end to end, with a random-weights model file."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_predict import LOW_SCORE, NAMES, noise, random_checkpoint

from detector.cli import main
from detector.commands import predict as command
from detector.predict import Detector

CONF = str(LOW_SCORE)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return random_checkpoint().save(tmp_path_factory.mktemp("model") / "random.safetensors")


def write(path: Path, rgb: np.ndarray) -> Path:
    """Write ``(H, W, 3)`` RGB as an image file (OpenCV writes BGR)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def predict(model_path: Path, *args: str) -> int:
    return main(["predict", "--weights", str(model_path), "--device", "cpu", *args])


def test_end_to_end_with_a_folder_a_corrupt_file_and_a_missing_one(tmp_path, model_path, capsys):
    folder = tmp_path / "photos"
    landscape = write(folder / "wide.png", noise((40, 70, 3), 1))
    portrait = write(folder / "tall.jpg", noise((70, 40, 3), 2))
    (folder / "notes.txt").write_text("not an image")
    write(folder / "nested" / "deeper.png", noise((30, 30, 3), 3))  # folders are not recursive
    single = write(tmp_path / "single.bmp", noise((33, 33, 3), 4))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    save_dir, jsonl = tmp_path / "out", tmp_path / "out" / "detections.jsonl"
    inputs = [folder, corrupt, empty, tmp_path / "missing.png", single]
    code = predict(
        model_path, *map(str, inputs), "--save-dir", str(save_dir), "--json", str(jsonl),
        "--conf", CONF,
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1  # some inputs could not be read; the others were processed
    assert captured.out == ""
    assert "corrupt.png: not a decodable image" in captured.err
    assert "empty.jpg: empty file" in captured.err
    assert "missing.png: no such file or directory" in captured.err
    assert "3 of 5 image(s)" in captured.err

    lines = records(jsonl.read_text())
    expected = sorted([landscape, portrait]) + [single]
    assert [r["image"] for r in lines] == [str(p) for p in expected]
    detector = Detector.load(model_path, device="cpu")
    for record, source in zip(lines, expected, strict=True):
        rgb = read_rgb(source)
        assert (record["height"], record["width"]) == rgb.shape[:2]
        # The command converts BGR to RGB: its detections are the library's on RGB.
        reference = detector.detect([rgb], score_threshold=LOW_SCORE)[0].to_dict()["detections"]
        assert record["detections"] == reference
        saved = Path(record["saved"])
        assert saved == save_dir / source.name and saved.is_file()
        annotated = read_rgb(saved)
        assert annotated.shape == rgb.shape
        if reference and saved.suffix == ".png":
            assert not np.array_equal(annotated, rgb), "boxes should have been drawn"
    assert sum(len(r["detections"]) for r in lines) > 0
    assert not (save_dir / "deeper.png").exists() and not (save_dir / "corrupt.png").exists()


def test_json_to_stdout_without_saving(tmp_path, model_path, capsys):
    image = write(tmp_path / "a.png", noise((50, 60, 3), 5))
    save_dir = tmp_path / "never"
    code = predict(model_path, str(image), "--no-save", "--save-dir", str(save_dir), "--quiet")
    captured = capsys.readouterr()
    assert code == 0
    (record,) = records(captured.out)
    assert record["image"] == str(image) and "saved" not in record
    assert (record["width"], record["height"]) == (60, 50)
    assert captured.err == ""
    assert not save_dir.exists()


def test_glob_batches_progress_and_class_filter(tmp_path, model_path, capsys):
    count = command.PROGRESS_MIN_IMAGES + 2
    for i in range(count):
        write(tmp_path / "in" / f"{i:02d}.png", noise((30 + 7 * i, 60 - 3 * i, 3), i))
    jsonl = tmp_path / "d.jsonl"
    args = [str(tmp_path / "in" / "*.png"), "--json", str(jsonl), "--no-save", "--conf", CONF]
    assert predict(model_path, *args, "--batch", "3") == 0
    everything = records(jsonl.read_text())
    assert len(everything) == count
    assert f"{count}/{count}" in capsys.readouterr().err, "expected a progress bar"
    assert predict(model_path, *args, "--batch", str(count), "--classes", "dog", "2") == 0
    filtered = records(jsonl.read_text())
    assert [r["image"] for r in filtered] == [r["image"] for r in everything]
    for full, some in zip(everything, filtered, strict=True):
        kept = [d for d in full["detections"] if d["label"] in ("dog", NAMES[2])]
        assert some["detections"] == kept
    assert any(r["detections"] for r in filtered), "class filter test is vacuous"


def test_same_names_from_two_folders_do_not_overwrite(tmp_path, model_path, capsys):
    first = write(tmp_path / "one" / "a.png", noise((20, 20, 3), 1))
    second = write(tmp_path / "two" / "a.png", noise((25, 20, 3), 2))
    save_dir = tmp_path / "out"
    code = predict(
        model_path, str(first), str(second), "--save-dir", str(save_dir), "--quiet",
        "--conf", CONF,
    )  # fmt: skip
    assert code == 0
    saved = [Path(r["saved"]) for r in records(capsys.readouterr().out)]
    assert saved == [save_dir / "a.png", save_dir / "a_2.png"]
    assert read_rgb(saved[1]).shape == (25, 20, 3)


def test_saving_next_to_the_inputs_never_overwrites_them(tmp_path, model_path, capsys):
    source = write(tmp_path / "a.png", noise((20, 30, 3), 1))
    before = source.read_bytes()
    assert predict(model_path, str(source), "--save-dir", str(tmp_path), "--quiet") == 0
    (record,) = records(capsys.readouterr().out)
    assert source.read_bytes() == before
    assert Path(record["saved"]) == tmp_path / "a_2.png"


def test_nothing_readable_exits_1(tmp_path, model_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    assert predict(model_path, str(bad), str(tmp_path / "nope"), "--no-save") == 1
    err = capsys.readouterr().err
    assert "bad.jpg: not a decodable image" in err and "nope: no such file" in err


def test_empty_folder_exits_2(tmp_path, model_path, capsys):
    (tmp_path / "empty").mkdir()
    assert predict(model_path, str(tmp_path / "empty")) == 2  # no input: a usage error
    assert "no image files" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--conf", "1.5"], "score_threshold must be in [0, 1]"),
        (["--iou", "-1"], "iou_threshold must be in [0, 1]"),
        (["--max-det", "0"], "max_detections must be >= 1"),
        (["--batch", "0"], "--batch must be >= 1"),
        (["--classes", "horse"], "unknown class 'horse'"),
        (["--device", "tpu"], "device"),
    ],
)
def test_bad_options_are_usage_errors(tmp_path, model_path, capsys, args, message):
    image = write(tmp_path / "a.png", noise((20, 20, 3), 0))
    assert predict(model_path, str(image), "--no-save", *args) == 2
    assert message in capsys.readouterr().err


def test_missing_model_is_a_usage_error(tmp_path, capsys):
    image = write(tmp_path / "a.png", noise((20, 20, 3), 0))
    assert main(["predict", str(image), "--weights", str(tmp_path / "none.safetensors")]) == 2
    assert "none.safetensors" in capsys.readouterr().err


def test_help_documents_outputs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for phrase in ("standard output", "--save-dir", "--classes", "Exit status", "(default: 0.25)"):
        assert phrase in text
