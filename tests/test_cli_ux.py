"""What a new user of the ``detector`` command meets first: errors before heavy work, one
exit-code convention, help texts with defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from detector.cli import build_parser, main
from detector.commands import EXIT_USAGE

REPO = Path(__file__).resolve().parent.parent
# Runs one command in a fresh interpreter and reports whether torch got imported.
PROBE = (
    "import sys; from detector.cli import main; rc = main(sys.argv[1:]); "
    "print('torch imported:', 'torch' in sys.modules); sys.exit(rc)"
)


def run_fresh(*argv: str | Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, argv)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )


def assert_early_usage_error(result: subprocess.CompletedProcess, *phrases: str) -> None:
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "torch imported: False" in result.stdout, "the error came after importing torch"
    assert result.stderr.startswith("error:"), result.stderr
    for phrase in phrases:
        assert phrase in result.stderr


def test_predict_reports_a_missing_image_before_importing_torch(tmp_path):
    result = run_fresh("predict", tmp_path / "missing.jpg")
    assert_early_usage_error(result, "missing.jpg: no such file", "no images to process")


def test_predict_reports_a_missing_model_before_importing_torch(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"not decoded before the model is found")
    result = run_fresh("predict", image, "--weights", tmp_path / "none.safetensors")
    assert_early_usage_error(result, "none.safetensors", "no shipped model of that name")


def test_eval_reports_a_missing_dataset_before_importing_torch(tmp_path):
    result = run_fresh("eval", "--weights", "digits", "--data", tmp_path / "missing/data.yaml")
    assert_early_usage_error(result, "dataset", "missing/data.yaml not found")


def test_eval_reports_a_missing_model_before_importing_torch(tmp_path):
    (tmp_path / "data.yaml").write_text("train: images/train\nval: images/val\nnames: [a]\n")
    result = run_fresh("eval", "--weights", "no-such-model", "--data", tmp_path / "data.yaml")
    assert_early_usage_error(result, "no-such-model")


def test_video_and_info_report_missing_files_before_importing_torch(tmp_path):
    result = run_fresh("video", tmp_path / "missing.mp4", "-o", tmp_path / "out")
    assert_early_usage_error(result, "missing.mp4: no such file", "no input videos")
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"x")
    result = run_fresh("video", clip, "-o", tmp_path / "out", "--weights", "nope")
    assert_early_usage_error(result, "nope")
    assert_early_usage_error(run_fresh("info", "--weights", "nope"), "nope")


def test_missing_input_is_exit_2_in_predict_and_video(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "missing.png")]) == EXIT_USAGE
    assert "missing.png: no such file" in capsys.readouterr().err
    assert main(["video", str(tmp_path / "missing.mp4"), "-o", str(tmp_path)]) == EXIT_USAGE
    assert "missing.mp4: no such file" in capsys.readouterr().err


def test_help_states_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "exit status" in text
    for code in ("0 ", "1 ", "2 ", "130 "):
        assert f"  {code}" in text


def _subparser(name: str):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[name]


def test_every_train_option_has_help_and_shows_its_default(capsys):
    train = _subparser("train")
    for action in train._actions:
        if action.dest == "help":
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help, f"train {name} has no help text"
        takes_value = action.nargs != 0
        if takes_value and not action.required:
            shown = action.default is not None or "default" in action.help
            assert shown, f"train {name} says nothing about its default"
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "--epochs EPOCHS" in text and "(default: 50)" in text


def test_train_defaults_come_from_the_config_dataclasses():
    from detector.commands.train import train_config
    from detector.config import AugmentConfig, LossConfig, ModelConfig, TrainConfig

    args = _subparser("train").parse_args(["--data", "x.yaml"])
    assert train_config(args) == TrainConfig()
    assert train_config(args).loss == LossConfig()
    assert (args.mosaic, args.fliplr, args.scale) == (
        AugmentConfig.mosaic,
        AugmentConfig.fliplr,
        AugmentConfig.scale,
    )
    assert (args.model, args.imgsz) == (ModelConfig.size, ModelConfig.input_size)


def test_train_options_defaults_agree_with_the_trainer():
    from detector.train import TrainOptions

    args = _subparser("train").parse_args(["--data", "x.yaml"])
    options = TrainOptions(data="x.yaml")
    for field in ("model", "head", "head_depth", "imgsz", "out", "device"):
        assert getattr(args, field) == getattr(options, field), field


def test_a_closed_output_pipe_ends_quietly():
    """``detector … | head``: when the reader goes away the command stops with exit 1 and
    no traceback."""
    code = (
        "import sys\n"
        "import detector.commands.info as info\n"
        "def run(args):\n"
        "    raise BrokenPipeError(32, 'Broken pipe')\n"
        "info.run = run\n"
        "from detector.cli import main\n"
        "sys.exit(main(['info']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
