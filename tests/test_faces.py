"""`detector synth faces`: determinism, disjoint splits, landmarks on the drawn features,
visibility, the left/right convention through the horizontal flip, and COCO conversion."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from detector.cli import main
from detector.data.faces import (
    FLIP_IDX,
    HIDDEN,
    KEYPOINT_NAMES,
    SKELETON,
    VISIBLE,
    FaceConfig,
    face_free_textures,
    generate_faces_dataset,
    render_faces,
)
from detector.data.formats import load_dataset
from detector.data.synthetic import image_rng
from detector.data.transforms import AugmentConfig, Augmenter, Target, hflip

pytest.importorskip("skimage")

SIZE = 160
LEFT_EYE, RIGHT_EYE, NOSE, LEFT_MOUTH, RIGHT_MOUTH = range(5)


@pytest.fixture(scope="module")
def textures():
    return face_free_textures()


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    a, b, c = (tmp_path / name for name in "abc")
    for out, seed in ((a, 3), (b, 3), (c, 4)):
        generate_faces_dataset(out, n_train=3, n_val=2, seed=seed, imgsz=96, progress=False)
    assert _digests(a) == _digests(b)
    images = [k for k in _digests(a) if k.startswith("images/")]
    assert len(images) == 5
    assert all(_digests(a)[k] != _digests(c)[k] for k in images)


def test_train_and_val_come_from_disjoint_streams(textures) -> None:
    def scene(split: str, index: int) -> np.ndarray:
        return render_faces(image_rng(0, split, index), (64, 64), 2, textures).image

    train = {scene("train", i).tobytes() for i in range(6)}
    val = {scene("val", i).tobytes() for i in range(6)}
    assert len(train) == len(val) == 6
    assert not train & val


def _scenes(textures, config: FaceConfig, count: int, seed: int = 0, size: int = SIZE):
    return [
        render_faces(image_rng(seed, "train", i), (size, size), 4, textures, config)
        for i in range(count)
    ]


def test_landmarks_lie_inside_their_box(textures) -> None:
    checked = 0
    for scene in _scenes(textures, FaceConfig(border_cut_prob=0.5), 30):
        for box, points in zip(scene.boxes, scene.landmarks, strict=True):
            visible = points[:, 2] == VISIBLE
            xy = points[visible, :2]
            assert np.all((xy >= box[:2]) & (xy <= box[2:]))
            checked += int(visible.sum())
    assert checked > 100


def test_points_outside_the_image_are_hidden_and_written_as_zeros(textures, tmp_path: Path) -> None:
    config = FaceConfig(border_cut_prob=1.0, min_inside=0.3)
    outside = 0
    for scene in _scenes(textures, config, 30):
        xy, vis = scene.landmarks[..., :2], scene.landmarks[..., 2]
        out = ((xy < 0) | (xy >= SIZE)).any(-1)
        assert np.all(vis[out] == HIDDEN)
        outside += int(out.sum())
    assert outside > 0

    generate_faces_dataset(tmp_path, 6, 0, seed=1, imgsz=64, config=config, progress=False)
    rows = [
        line.split()
        for label in (tmp_path / "labels" / "train").glob("*.txt")
        for line in label.read_text().splitlines()
    ]
    points = np.array([row[5:] for row in rows], np.float64).reshape(-1, 5, 3)
    hidden = points[..., 2] == 0
    assert hidden.any() and np.all(points[hidden] == 0)
    assert np.all((points[~hidden][:, :2] >= 0) & (points[~hidden][:, :2] <= 1))


def _pixel(image: np.ndarray, x: float, y: float) -> np.ndarray:
    return image[int(y), int(x)].astype(np.float64)


def _near(image: np.ndarray, x: float, y: float, colours, radius: int = 1) -> float:
    """Smallest RGB distance to any of ``colours`` in the (2r+1)² pixels around a point."""
    patch = image[
        int(y) - radius : int(y) + radius + 1, int(x) - radius : int(x) + radius + 1
    ].reshape(-1, 3)
    colours = np.asarray(colours, np.float64)
    return float(np.linalg.norm(patch[:, None].astype(np.float64) - colours, axis=-1).min())


def test_landmarks_sit_on_the_drawn_features(textures) -> None:
    config = FaceConfig(
        lighting=0.0, max_noise_sigma=0.0, min_side=110, max_side=140, occluder_prob=0.0
    )
    checked = 0
    for scene in _scenes(textures, config, 12, size=200):
        for points, style in zip(scene.landmarks, scene.styles, strict=True):
            if not (points[:, 2] == VISIBLE).all():
                continue
            for k in (LEFT_EYE, RIGHT_EYE):
                pupil = np.linalg.norm(_pixel(scene.image, *points[k, :2]) - style.pupil)
                assert pupil < 25, f"eye {k} at {points[k, :2]} is not the pupil colour"
            nose = np.linalg.norm(_pixel(scene.image, *points[NOSE, :2]) - style.nose)
            assert nose < 25
            lips = [style.lips, tuple(0.5 * np.asarray(style.lips))]
            for k in (LEFT_MOUTH, RIGHT_MOUTH):
                assert _near(scene.image, *points[k, :2], lips) < 40
            # The viewer's left eye is left of the right eye (faces turn at most 30°).
            assert points[LEFT_EYE, 0] < points[RIGHT_EYE, 0]
            assert points[LEFT_MOUTH, 0] < points[RIGHT_MOUTH, 0]
            checked += 1
    assert checked >= 5


def test_horizontal_flip_swaps_left_and_right_through_flip_idx(textures) -> None:
    config = FaceConfig(
        lighting=0.0,
        max_noise_sigma=0.0,
        min_faces=1,
        max_faces=1,
        min_side=110,
        max_side=130,
        occluder_prob=0.0,
        border_cut_prob=0.0,
    )
    scene = render_faces(image_rng(5, "train", 0), (SIZE, SIZE), 1, textures, config)
    (points,) = scene.landmarks
    assert (points[:, 2] == VISIBLE).all()
    target = Target(scene.boxes, np.zeros(1, np.int64), scene.landmarks.copy())

    # Only the flip: no mosaic, no zoom or shift, no colour change; the size is kept.
    augment = AugmentConfig(mosaic=0, scale=0, translate=0, fliplr=1, hsv_h=0, hsv_s=0, hsv_v=0)
    augmenter = Augmenter(augment, SIZE, FLIP_IDX)
    image, flipped = augmenter(scene.image, target, np.random.default_rng(0))
    assert np.array_equal(image, scene.image[:, ::-1])
    (new,) = flipped.landmarks
    for k, source in enumerate(FLIP_IDX):
        assert new[k, 0] == pytest.approx(SIZE - points[source, 0], abs=1e-4)
        assert new[k, 1] == pytest.approx(points[source, 1], abs=1e-4)
    # The mirrored face keeps the convention: its (viewer's) left eye is still on the left,
    # and it is the mirror of the other eye, drawn in the pupil colour.
    assert new[LEFT_EYE, 0] < new[RIGHT_EYE, 0]
    assert new[LEFT_MOUTH, 0] < new[RIGHT_MOUTH, 0]
    for k in (LEFT_EYE, RIGHT_EYE):
        assert np.linalg.norm(_pixel(image, *new[k, :2]) - scene.styles[0].pupil) < 25
    box = flipped.boxes[0]
    assert np.all((new[:, :2] >= box[:2]) & (new[:, :2] <= box[2:]))
    # The plain hflip agrees with the augmenter.
    _, direct = hflip(scene.image, target, FLIP_IDX)
    np.testing.assert_allclose(direct.landmarks, flipped.landmarks, atol=1e-4)


def test_cli_writes_a_pose_dataset_that_converts_to_coco(tmp_path: Path, capsys) -> None:
    out = tmp_path / "faces"
    argv = ["synth", "faces", "--out", str(out), "--train", "4", "--val", "2", "--seed", "1"]
    assert main([*argv, "--imgsz", "96", "--quiet"]) == 0
    assert "faces" in capsys.readouterr().out
    spec = yaml.safe_load((out / "data.yaml").read_text())
    assert spec["kpt_shape"] == [5, 3]
    assert spec["flip_idx"] == [1, 0, 2, 4, 3]
    assert spec["kpt_names"] == list(KEYPOINT_NAMES)
    assert spec["skeleton"] == [list(pair) for pair in SKELETON]
    assert spec["names"] == {0: "face"}
    assert "VIEWER" in (out / "data.yaml").read_text()
    info = load_dataset(str(out / "data.yaml"), "train")
    assert info.kpt_shape == (5, 3) and list(info.flip_idx) == list(FLIP_IDX)
    assert info.kpt_names == list(KEYPOINT_NAMES) and info.skeleton == list(SKELETON)
    assert len(info.samples) == 4

    coco = tmp_path / "coco"
    assert (
        main(["convert", "--data", str(out / "data.yaml"), "--to", "coco", "--out", str(coco)]) == 0
    )
    data = json.loads((coco / "train.json").read_text())
    assert len(data["categories"][0]["keypoints"]) == 5
    assert data["categories"][0]["flip_idx"] == [1, 0, 2, 4, 3]
    assert data["categories"][0]["keypoints"] == list(KEYPOINT_NAMES)
    assert data["categories"][0]["skeleton"] == [[i + 1, j + 1] for i, j in SKELETON]
    back = load_dataset(str(coco / "train.json"), "train")
    faces = sum(len(s.boxes) for s in info.samples)
    assert faces == len(data["annotations"]) == sum(len(s.boxes) for s in back.samples)
    for a, b in zip(info.samples, back.samples, strict=True):
        np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-3)
