"""``detector synth lfw-faces``: the crops folder of real faces for the sliding-window kind."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("skimage")

from detector.cli import main  # noqa: E402
from detector.commands.synth import LFW_COPIES  # noqa: E402
from detector.data.lfw_faces import (  # noqa: E402
    CLUTTER_SCENES,
    COPIES,
    HELD_OUT_PHOTOS,
    PHOTOS_WITH_FACES,
    ROTATIONS,
    TRAIN_PHOTOS,
    generate_lfw_faces,
)
from detector.data.window_crops import is_crop_folder, is_scene, load_crop_folder  # noqa: E402


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_the_same_seed_writes_the_same_bytes_and_another_seed_other_faces(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert main(["synth", "lfw-faces", "--out", str(a), "--seed", "1", "--copies", "2"]) == 0
    generate_lfw_faces(b, seed=1, copies=2)
    generate_lfw_faces(c, seed=2, copies=2)
    files = _files(a)
    assert files == _files(b)
    other = _files(c)
    assert other.keys() == files.keys()
    changed = [k for k in files if files[k] != other[k]]
    # copy 0 is the original face; the non-face crops and photos are not random
    assert changed and all(k.startswith(("face/c01_", "background/scene_clutter")) for k in changed)
    assert any(k.startswith("background/scene_clutter") for k in changed)
    assert len([k for k in files if k.startswith("face/")]) == 2 * 100


def test_layout_held_out_photos_and_the_crops_folder_it_makes(tmp_path: Path, capsys) -> None:
    root = tmp_path / "lfw"
    generate_lfw_faces(root, copies=1)
    names = {p.name for p in (root / "background").iterdir()}
    assert {f"scene_{n}_r{a}.png" for n in TRAIN_PHOTOS for a in (0, 90, 180, 270)} <= names
    assert not any(n in name for n in (*HELD_OUT_PHOTOS, *PHOTOS_WITH_FACES) for name in names)
    assert len([n for n in names if n.startswith("lfw_")]) == 100
    assert is_crop_folder(root)
    train, val = load_crop_folder(root, "train"), load_crop_folder(root, "val")
    assert train.names == val.names == ["face"]
    scenes = [s for s in train.samples + val.samples if is_scene(s, 24)]
    assert len(scenes) == len(TRAIN_PHOTOS) * ROTATIONS + CLUTTER_SCENES
    assert main(["synth", "lfw-faces", "--out", str(root)]) == 2  # no silent overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert LFW_COPIES == COPIES
