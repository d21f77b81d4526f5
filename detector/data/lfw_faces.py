"""``detector synth lfw-faces``: a crops folder of real faces for the sliding-window kind.

scikit-image's ``lfw_subset`` holds 100 face and 100 non-face 25×25 grey crops (Labeled
Faces in the Wild). This writes, in the crops folder format of
:func:`detector.data.window_crops.load_crop_folder`:

* ``face/``: every face ``copies`` times, each copy jittered about the crop's centre
  (shift up to ``SHIFT`` of the side, scale ``SCALE``, rotation up to ``ROTATION`` degrees,
  a horizontal flip with probability 1/2, brightness and contrast gains; the border
  reflected). The files are named copy-major (``cCC_fFFF.png``), so the crops folder's
  every-10th validation split holds every copy of one face in ten and none of the others;
* ``background/``: the 100 non-face crops as they are, and whole scenes from which
  training cuts random and mined negative windows: the face-free scikit-image photos and
  textures of ``TRAIN_PHOTOS`` (their longer side at most ``SCENE_SIDE``), each turned by
  0, 90, 180 and 270 degrees, and ``CLUTTER_SCENES`` procedural scenes of noise, lines,
  boxes and ellipses (:func:`clutter_scene`).

Never written: ``PHOTOS_WITH_FACES`` (the astronaut and the cameraman, the shipped model's
test photos; ``cat`` is ``chelsea``) and ``HELD_OUT_PHOTOS`` (face-free photos kept for
the test that the model reports nothing on them). The same seed gives byte-identical files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from detector.data.photos import load_photo, skimage_data

FACE_DIR = "face"
BACKGROUND_DIR = "background"  # detector.data.window_crops.BACKGROUND_DIR (imports torch)
COPIES = 10  # jittered copies per face
SHIFT = 0.06  # largest centre shift, x the crop side
SCALE = (0.9, 1.1)  # zoom range, log-uniform
ROTATION = 10.0  # largest rotation, degrees
BRIGHTNESS = 0.25  # gain in [1 - b, 1 + b]
CONTRAST = 0.25  # contrast gain in [1 - c, 1 + c]
SCENE_SIDE = 512  # a scene's longer side is at most this (shrunk with area interpolation)
# Face-free scikit-image images that train (bundled, nothing downloads).
TRAIN_PHOTOS = (
    "brick", "grass", "moon", "coins", "clock", "hubble_deep_field", "immunohistochemistry",
    "retina", "page", "cell", "colorwheel", "logo", "horse", "microaneurysms", "checkerboard",
    "stereo_motorcycle", "shepp_logan_phantom",
)  # fmt: skip
ROTATIONS = 4  # each photo is written turned by 0, 90, 180, 270 degrees (more textures' angles)
CLUTTER_SCENES = 20  # procedural scenes: multi-scale noise with lines, boxes and ellipses
CLUTTER_SIDE = 256
# Face-free photos never written: the shipped model's test that it reports nothing on them.
HELD_OUT_PHOTOS = ("coffee", "rocket", "chelsea", "cat", "gravel", "text")
# Photos with real faces: the shipped model's test that it finds them; never written.
PHOTOS_WITH_FACES = ("astronaut", "camera")
PURPOSE = "the lfw-faces crops"  # what an ImportError says needs scikit-image


@dataclass
class LfwSummary:
    """What :func:`generate_lfw_faces` wrote."""

    root: Path
    faces: int  # files in face/
    crops: int  # non-face crops in background/
    scenes: int  # scenes in background/
    seconds: float


def load_lfw() -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's ``lfw_subset``: ``(faces (100, 25, 25), non_faces (100, 25, 25))``
    uint8 grey."""
    data = skimage_data(PURPOSE)
    crops = np.round(data.lfw_subset() * 255).astype(np.uint8)  # (200, 25, 25)
    return crops[:100], crops[100:]


def jitter_face(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One augmented copy of a ``(S, S)`` uint8 crop, the same shape (see the module
    docstring)."""
    side = face.shape[0]
    angle = rng.uniform(-ROTATION, ROTATION)
    scale = float(np.exp(rng.uniform(np.log(SCALE[0]), np.log(SCALE[1]))))
    centre = (side / 2 - 0.5, side / 2 - 0.5)
    matrix = cv2.getRotationMatrix2D(centre, angle, scale)  # (2, 3)
    matrix[:, 2] += rng.uniform(-SHIFT, SHIFT, 2) * side
    out = cv2.warpAffine(
        face, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    if rng.random() < 0.5:
        out = out[:, ::-1]
    pixels = out.astype(np.float32)
    mean = pixels.mean()
    gain = 1 + rng.uniform(-BRIGHTNESS, BRIGHTNESS)
    contrast = 1 + rng.uniform(-CONTRAST, CONTRAST)
    pixels = (pixels - mean) * contrast + mean * gain
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def generate_lfw_faces(
    out: str | Path, seed: int = 0, copies: int = COPIES, overwrite: bool = False
) -> LfwSummary:
    """Write the crops folder (see the module docstring) to ``out``.

    Raises:
        FileExistsError: ``out`` already holds ``face/`` or ``background/`` files and not
            ``overwrite``.
        ValueError: ``copies`` < 1.
        ImportError: scikit-image is missing.
    """
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    start = time.perf_counter()
    root = Path(out)
    face_dir, background_dir = root / FACE_DIR, root / BACKGROUND_DIR
    existing = [p for d in (face_dir, background_dir) if d.is_dir() for p in d.iterdir()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{root} already holds a crops folder; pass --overwrite to replace it"
        )
    for path in existing:
        path.unlink()
    face_dir.mkdir(parents=True, exist_ok=True)
    background_dir.mkdir(parents=True, exist_ok=True)
    faces, non_faces = load_lfw()
    rng = np.random.default_rng(seed)
    for copy in range(copies):
        for i, face in enumerate(faces):
            crop = face if copy == 0 else jitter_face(face, rng)  # copy 0: the original
            _write(face_dir / f"c{copy:02d}_f{i:03d}.png", crop)
    for i, crop in enumerate(non_faces):
        _write(background_dir / f"lfw_{i:03d}.png", crop)
    for name in TRAIN_PHOTOS:
        photo = load_photo(name, PURPOSE)
        shrink = SCENE_SIDE / max(photo.shape[:2])
        if shrink < 1:
            size = (round(photo.shape[1] * shrink), round(photo.shape[0] * shrink))
            photo = cv2.resize(photo, size, interpolation=cv2.INTER_AREA)
        for turn in range(ROTATIONS):
            turned = cv2.cvtColor(np.rot90(photo, turn), cv2.COLOR_RGB2BGR)
            _write(background_dir / f"scene_{name}_r{90 * turn}.png", turned)
    for i in range(CLUTTER_SCENES):
        _write(background_dir / f"scene_clutter_{i:02d}.png", clutter_scene(rng, CLUTTER_SIDE))
    scenes = len(TRAIN_PHOTOS) * ROTATIONS + CLUTTER_SCENES
    return LfwSummary(
        root, copies * len(faces), len(non_faces), scenes, time.perf_counter() - start
    )


def clutter_scene(rng: np.random.Generator, side: int) -> np.ndarray:
    """A ``(side, side)`` uint8 grey scene of blurred noise at several scales with random
    lines, rectangles and ellipses: edges and blobs that are not faces."""
    image = np.zeros((side, side), np.float32)
    for cells in (4, 16, 64):
        noise = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
        image += cv2.resize(noise, (side, side), interpolation=cv2.INTER_CUBIC) * 40
    image = np.clip(image + 128, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(5, 15))):
        shade = int(rng.integers(0, 256))
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, side, 4))
        kind = int(rng.integers(3))
        thickness = int(rng.integers(1, 6)) if rng.random() < 0.6 else -1
        if kind == 0:
            cv2.line(image, (x0, y0), (x1, y1), shade, max(thickness, 1))
        elif kind == 1:
            cv2.rectangle(image, (x0, y0), (x1, y1), shade, thickness)
        else:
            axes = (int(rng.integers(3, side // 4)), int(rng.integers(3, side // 4)))
            cv2.ellipse(image, (x0, y0), axes, float(rng.uniform(0, 180)), 0, 360, shade, thickness)
    return image


def _write(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), np.ascontiguousarray(image)):
        raise OSError(f"{path}: cannot write image")
