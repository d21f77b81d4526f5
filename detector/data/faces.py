"""A synthetic face dataset with 5 landmarks, drawn procedurally with OpenCV.

Each face is drawn upright on its own canvas in *face units* (the head ellipse has height 1,
centre ``(0, 0)``, ``y`` down): hair behind and over the head, a skin-toned head ellipse,
eyes (sclera, iris, pupil), brows, nose, lips, optional glasses; the canvas is lit by a
random linear gradient, then warped into the image by one affine map: a horizontal squash
(a yaw-like turn, with the features shifted toward the turned side), an in-plane rotation
and a translation. Occluders (a hand-like blob or a box) may be drawn over a face, and
later faces over earlier ones. Backgrounds come from :func:`detector.data.synthetic.
render_background` (scikit-image textures and photos, noise, gradients).

Labels, per face: the box is the tight box of the warped head ellipse (hair excluded),
clipped to the image; the 5 landmarks, in this order (``KEYPOINT_NAMES``)::

    0 left eye centre, 1 right eye centre, 2 nose tip, 3 left mouth corner, 4 right mouth corner

"Left" and "right" are the **viewer's**: on an upright frontal face, point 0 is the eye on
the image's left side (the person's right eye), as in RetinaFace / InsightFace 5-point
labels. The order is a property of the face, not of the image: a face rotated by 30° keeps
it, and a horizontal flip swaps 0↔1 and 3↔4 (``FLIP_IDX``). A point's visibility is 2 when
it lies inside the image and less than half covered by whatever is drawn after its face
(an occluder or another face), else 0 (written ``0 0 0``, Ultralytics' "not labelled").

Every image depends only on ``(seed, split, index)`` through
:func:`detector.data.synthetic.image_rng`, so train and val come from disjoint random streams.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

from detector.data.synthetic import (
    IMAGE_FORMATS,
    JPEG_QUALITY,
    LABEL_DECIMALS,
    SPLITS,
    TEXTURE_NAMES,
    BackgroundConfig,
    image_rng,
    load_textures,
    prepare_split_folders,
    render_background,
)

CLASS_NAMES: tuple[str, ...] = ("face",)
KEYPOINT_NAMES: tuple[str, ...] = (
    "left_eye", "right_eye", "nose_tip", "left_mouth_corner", "right_mouth_corner",
)  # fmt: skip
FLIP_IDX: tuple[int, ...] = (1, 0, 2, 4, 3)
# Lines drawn between the points: eye-eye, eyes-nose, nose-mouth corners, corner-corner.
SKELETON: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2), (2, 3), (2, 4), (3, 4))
VISIBLE, HIDDEN = 2.0, 0.0  # keypoint visibility values written
SKIN_TONES = (  # RGB, light to dark
    (255, 224, 196), (241, 194, 160), (224, 172, 130), (198, 134, 96),
    (160, 102, 70), (120, 76, 50), (86, 56, 40),
)  # fmt: skip
HAIR_COLOURS = ((20, 16, 14), (60, 40, 25), (110, 70, 40), (190, 150, 90), (150, 150, 150))
IRIS_COLOURS = ((80, 50, 25), (50, 90, 140), (70, 110, 60), (120, 90, 50))
PUPIL = (12, 10, 10)
SCLERA = (240, 238, 232)
ELLIPSE_POINTS = 72  # points sampled on the head outline for its box
SHIFT = 4  # cv2 fixed-point bits for sub-pixel drawing
COVERED = 0.5  # cover (by later layers) at or above which a point is hidden
# scikit-image's "camera" shows a real, unlabelled face: a wrong negative for a face detector.
TEXTURES_WITH_FACES = frozenset({"camera"})


@dataclass(frozen=True)
class FaceConfig:
    """How face scenes are composed."""

    min_faces: int = 1  # faces per image, uniform in [min, max]
    max_faces: int = 6
    min_side: float = 24.0  # face (head ellipse) height in pixels, log-uniform
    max_side: float = 200.0  # capped at 0.8 of the image's shorter side
    max_rotation: float = 30.0  # in-plane rotation, U(-max, max) degrees
    max_squash: float = 0.35  # yaw: horizontal scale 1 - max_squash * |yaw|, yaw ~ U(-1, 1)
    border_cut_prob: float = 0.2  # chance a face may be placed across the image border
    min_inside: float = 0.4  # smallest share of a face's box left inside the image
    max_iou: float = 0.3  # largest box IoU between two faces (overlaps happen below it)
    min_visible: float = 0.5  # smallest visible share of every face's head after overlaps
    hair_prob: float = 0.85
    glasses_prob: float = 0.2
    occluder_prob: float = 0.2  # chance of a hand or an object over part of a face
    lighting: float = 1.0  # strength of the gain and gradient over each face; 0: flat colours
    max_noise_sigma: float = 3.0  # per-image Gaussian pixel noise, sigma ~ U(0, max)
    placement_attempts: int = 30  # tries per face before it is left out
    background: BackgroundConfig = field(default_factory=BackgroundConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.min_faces <= self.max_faces:
            raise ValueError(
                f"need 0 <= min_faces <= max_faces, got {self.min_faces}, {self.max_faces}"
            )
        if not 4 <= self.min_side <= self.max_side:
            raise ValueError(
                f"need 4 <= min_side <= max_side, got {self.min_side}, {self.max_side}"
            )


@dataclass(frozen=True)
class FaceStyle:
    """The colours one face was drawn with (RGB, before lighting)."""

    skin: tuple[int, int, int]
    nose: tuple[int, int, int]
    lips: tuple[int, int, int]
    pupil: tuple[int, int, int] = PUPIL


@dataclass
class FaceScene:
    """One rendered image and its labels, faces in drawing order (later on top).

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        boxes: ``(N, 4)`` float32 xyxy pixels, clipped to the image.
        landmarks: ``(N, 5, 3)`` float32 ``(x, y, visibility)`` pixels; hidden points keep
            their true position here (the label files write them ``0 0 0``).
        styles: the colours of each face.
    """

    image: np.ndarray
    boxes: np.ndarray
    landmarks: np.ndarray
    styles: list[FaceStyle]


def _shade(colour, gain: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(round(c * gain), 0, 255)) for c in colour)


class _Canvas:
    """An upright face canvas: colour and alpha, face units mapped to canvas pixels."""

    def __init__(self, side_px: float):
        self.scale = side_px  # pixels per face unit
        self.size = int(math.ceil(1.5 * side_px)) + 4
        self.centre = self.size / 2.0
        self.rgb = np.zeros((self.size, self.size, 3), np.uint8)
        self.alpha = np.zeros((self.size, self.size), np.uint8)

    def px(self, u: float, v: float) -> tuple[float, float]:
        return self.centre + u * self.scale, self.centre + v * self.scale

    def _fixed(self, u: float, v: float) -> tuple[int, int]:
        x, y = self.px(u, v)
        return round(x * (1 << SHIFT)), round(y * (1 << SHIFT))

    def _len(self, d: float) -> int:
        return max(1, round(d * self.scale * (1 << SHIFT)))

    def ellipse(self, centre, axes, colour, angle=0.0, start=0, end=360) -> None:
        args = (self._fixed(*centre), (self._len(axes[0]), self._len(axes[1])), angle, start, end)
        cv2.ellipse(self.rgb, *args, colour, -1, cv2.LINE_AA, SHIFT)
        cv2.ellipse(self.alpha, *args, 255, -1, cv2.LINE_AA, SHIFT)

    def line(self, a, b, colour, thickness: float) -> None:
        width = max(1, round(thickness * self.scale))
        args = (self._fixed(*a), self._fixed(*b))
        cv2.line(self.rgb, *args, colour, width, cv2.LINE_AA, SHIFT)
        cv2.line(self.alpha, *args, 255, width, cv2.LINE_AA, SHIFT)

    def ring(self, centre, radius: float, colour, thickness: float) -> None:
        width = max(1, round(thickness * self.scale))
        args = (self._fixed(*centre), self._len(radius))
        cv2.circle(self.rgb, *args, colour, width, cv2.LINE_AA, SHIFT)
        cv2.circle(self.alpha, *args, 255, width, cv2.LINE_AA, SHIFT)


def _draw_face(rng: np.random.Generator, side: float, config: FaceConfig):
    """Draw one upright face; returns the canvas, its 5 points ``(5, 2)`` in face units,
    the head semi-axes, the yaw and the style."""
    canvas = _Canvas(side)
    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))]
    skin = _shade(skin, rng.uniform(0.9, 1.08))
    hair = HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))]
    style = FaceStyle(
        skin=skin, nose=_shade(skin, 0.7), lips=_shade((170, 70, 70), rng.uniform(0.7, 1.1))
    )
    head_w = rng.uniform(0.34, 0.42)
    yaw = rng.uniform(-1, 1)
    dx = 0.07 * yaw  # features turn toward one side
    if rng.random() < config.hair_prob:
        canvas.ellipse((0, -0.04), (head_w + 0.05, 0.54), hair, start=180, end=360)
        if rng.random() < 0.4:  # long hair down the sides
            canvas.ellipse((0, 0.0), (head_w + 0.05, 0.5), hair)
    canvas.ellipse((0, 0), (head_w, 0.5), skin)
    if rng.random() < config.hair_prob:  # fringe: the head above a hairline
        hairline = canvas.px(0, rng.uniform(-0.38, -0.26))[1]
        cap = np.zeros_like(canvas.alpha)
        cv2.ellipse(
            cap,
            canvas._fixed(0, 0),
            (canvas._len(head_w), canvas._len(0.5)),
            0,
            0,
            360,
            255,
            -1,
            cv2.LINE_AA,
            SHIFT,
        )
        cap[int(math.ceil(hairline)) :] = 0
        mask = cap > 0
        canvas.rgb[mask] = hair
    eye_y, eye_dx = rng.uniform(-0.1, -0.02), rng.uniform(0.13, 0.17)
    eyes = [(dx - eye_dx, eye_y), (dx + eye_dx, eye_y)]  # viewer's left, then right
    iris = IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))]
    brow_lift = rng.uniform(0.07, 0.1)
    for ex, ey in eyes:
        canvas.ellipse((ex, ey), (0.06, 0.032), SCLERA)
        canvas.ellipse((ex, ey), (0.03, 0.03), iris)
        canvas.ellipse((ex, ey), (0.016, 0.016), style.pupil)
        tilt = rng.uniform(-0.015, 0.015)
        canvas.line(
            (ex - 0.065, ey - brow_lift + tilt), (ex + 0.065, ey - brow_lift - tilt), hair, 0.022
        )
    nose = (1.6 * dx, rng.uniform(0.1, 0.15))
    canvas.line((dx, eye_y + 0.04), nose, _shade(skin, 0.8), 0.015)
    canvas.ellipse(nose, (0.035, 0.022), style.nose)
    mouth_y, half = rng.uniform(0.24, 0.3), rng.uniform(0.09, 0.13)
    mouth = [(dx - half, mouth_y), (dx + half, mouth_y)]
    canvas.ellipse((dx, mouth_y), (half, rng.uniform(0.02, 0.04)), style.lips)
    canvas.line(mouth[0], mouth[1], _shade(style.lips, 0.5), 0.012)
    if rng.random() < config.glasses_prob:
        frame = _shade(HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))], 0.6)
        for ex, ey in eyes:
            canvas.ring((ex, ey), 0.08, frame, 0.014)
        canvas.line((eyes[0][0] + 0.08, eye_y), (eyes[1][0] - 0.08, eye_y), frame, 0.014)
    if config.lighting > 0:
        gain = rng.uniform(1 - 0.3 * config.lighting, 1 + 0.15 * config.lighting)
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0 : canvas.size, 0 : canvas.size].astype(np.float32) / canvas.size - 0.5
        slope = rng.uniform(0, 0.6) * config.lighting
        field_ = gain * (1 + slope * (xs * math.cos(angle) + ys * math.sin(angle)))
        canvas.rgb = np.clip(canvas.rgb * field_[..., None], 0, 255).astype(np.uint8)
    points = np.array([eyes[0], eyes[1], nose, mouth[0], mouth[1]], np.float64)
    return canvas, points, head_w, yaw, style


def _face_matrix(canvas: _Canvas, centre, angle_deg: float, squash: float) -> np.ndarray:
    """``(2, 3)`` affine map from canvas pixels to image pixels."""
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    linear = rot @ np.diag([squash, 1.0])
    offset = np.asarray(centre, np.float64) - linear @ np.array([canvas.centre, canvas.centre])
    return np.hstack([linear, offset[:, None]])


def _to_image(matrix: np.ndarray, canvas: _Canvas, uv: np.ndarray) -> np.ndarray:
    """Face units ``(N, 2)`` to image pixels ``(N, 2)`` in the labels' pixel-edge convention
    (pixel ``i`` spans ``[i, i + 1)``; OpenCV puts pixel centres on integers, hence + 0.5)."""
    px = np.stack(canvas.px(uv[:, 0], uv[:, 1]), -1)
    return px @ matrix[:, :2].T + matrix[:, 2] + 0.5


def _occluder(rng: np.random.Generator, size, target_xy, side: float):
    """A hand-like blob or a box over a point: full-frame ``(rgb, alpha)``."""
    height, width = size
    rgb = np.zeros((height, width, 3), np.uint8)
    alpha = np.zeros((height, width), np.uint8)
    cx, cy = target_xy + rng.normal(0, 0.05 * side, 2)
    r = rng.uniform(0.12, 0.2) * side
    fixed = lambda x, y: (round(x * (1 << SHIFT)), round(y * (1 << SHIFT)))  # noqa: E731
    if rng.random() < 0.5:  # a hand: palm and four fingers, in a skin tone
        colour = _shade(SKIN_TONES[rng.integers(len(SKIN_TONES))], rng.uniform(0.85, 1.05))
        angle = rng.uniform(0, 360)
        shapes = [((cx, cy), (r, 0.8 * r), angle)]
        for k in range(4):
            a = math.radians(angle - 45 + 30 * k)
            fx, fy = cx + 1.4 * r * math.cos(a), cy + 1.4 * r * math.sin(a)
            shapes.append(((fx, fy), (0.7 * r, 0.22 * r), math.degrees(a)))
        for (x, y), (ax, ay), ang in shapes:
            args = (fixed(x, y), (round(ax * (1 << SHIFT)), round(ay * (1 << SHIFT))), ang, 0, 360)
            cv2.ellipse(rgb, *args, colour, -1, cv2.LINE_AA, SHIFT)
            cv2.ellipse(alpha, *args, 255, -1, cv2.LINE_AA, SHIFT)
    else:  # an object: a rotated rectangle of a random colour
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = cv2.boxPoints(((cx, cy), (2.2 * r, 1.2 * r), rng.uniform(0, 180)))
        cv2.fillPoly(
            rgb, [np.round(box * (1 << SHIFT)).astype(np.int32)], colour, cv2.LINE_AA, SHIFT
        )
        cv2.fillPoly(
            alpha, [np.round(box * (1 << SHIFT)).astype(np.int32)], 255, cv2.LINE_AA, SHIFT
        )
    return rgb, alpha.astype(np.float32) / 255


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _cover_after(alphas: list[np.ndarray], index: int) -> np.ndarray:
    """``(H, W)`` share of each pixel covered by the layers drawn after layer ``index``."""
    clear = np.ones_like(alphas[index])
    for alpha in alphas[index + 1 :]:
        clear = clear * (1 - alpha)
    return 1 - clear


def face_free_textures() -> tuple[np.ndarray, ...]:
    """scikit-image's background textures without the ones that show real faces."""
    textures = zip(TEXTURE_NAMES, load_textures(), strict=True)
    return tuple(image for name, image in textures if name not in TEXTURES_WITH_FACES)


def render_faces(
    rng: np.random.Generator,
    size: tuple[int, int],
    n_faces: int,
    textures=(),
    config: FaceConfig = FaceConfig(),
) -> FaceScene:
    """Render up to ``n_faces`` faces on a random background (see the module docstring).

    Args:
        rng: the only source of randomness.
        size: ``(height, width)`` in pixels.
        n_faces: faces wanted; fewer when every placement of one breaks the overlap rules.
        textures: ``(H, W, 3)`` uint8 RGB images for backgrounds.
        config: composition settings.
    """
    height, width = size
    image = render_background(rng, size, textures, config.background)
    max_side = min(config.max_side, 0.8 * min(height, width))
    min_side = min(config.min_side, max_side)
    layers: list[tuple[np.ndarray, np.ndarray, int]] = []  # rgb, alpha, face index or -1
    boxes, points, styles = [], [], []
    for _ in range(n_faces):
        side = float(np.exp(rng.uniform(math.log(min_side), math.log(max_side))))
        canvas, uv, head_w, yaw, style = _draw_face(rng, side, config)
        angle = rng.uniform(-config.max_rotation, config.max_rotation)
        squash = 1 - config.max_squash * abs(yaw)
        outline = np.linspace(0, 2 * math.pi, ELLIPSE_POINTS, endpoint=False)
        ellipse_uv = np.stack([head_w * np.cos(outline), 0.5 * np.sin(outline)], -1)
        margin = 0.0 if rng.random() < config.border_cut_prob else 0.5 * side
        for _ in range(config.placement_attempts):
            centre = rng.uniform([margin, margin], [width - margin, height - margin])
            matrix = _face_matrix(canvas, centre, angle, squash)
            corners = _to_image(matrix, canvas, ellipse_uv)
            full = np.concatenate([corners.min(0), corners.max(0)])
            box = np.clip(full, 0, [width, height, width, height])
            area = (full[2] - full[0]) * (full[3] - full[1])
            if (box[2] - box[0]) * (box[3] - box[1]) < config.min_inside * area:
                continue
            if any(_iou(box, other) > config.max_iou for other in boxes):
                continue
            alpha = cv2.warpAffine(canvas.alpha, matrix, (width, height), flags=cv2.INTER_LINEAR)
            alpha = alpha.astype(np.float32) / 255
            alphas = [a for _, a, _ in layers] + [alpha]
            faces = [i for i, (_, _, f) in enumerate(layers) if f >= 0] + [len(layers)]
            if all(
                (alphas[i] * (1 - _cover_after(alphas, i))).sum()
                >= config.min_visible * alphas[i].sum()
                for i in faces
            ):
                break
        else:
            continue
        rgb = cv2.warpAffine(canvas.rgb, matrix, (width, height), flags=cv2.INTER_LINEAR)
        layers.append((rgb, alpha, len(boxes)))
        boxes.append(box)
        points.append(_to_image(matrix, canvas, uv))
        styles.append(style)
        if rng.random() < config.occluder_prob:
            target = points[-1][rng.integers(len(uv))]
            layers.append((*_occluder(rng, size, target, side), -1))
    out = image.astype(np.float32)
    for rgb, alpha, _ in layers:
        out = out * (1 - alpha[..., None]) + rgb.astype(np.float32) * alpha[..., None]
    if config.max_noise_sigma > 0:
        out = out + rng.normal(0, rng.uniform(0, config.max_noise_sigma), out.shape)
    image = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    landmarks = np.zeros((len(boxes), len(KEYPOINT_NAMES), 3), np.float32)
    alphas = [a for _, a, _ in layers]
    for index, (_, _, face) in enumerate(layers):
        if face < 0:
            continue
        cover = _cover_after(alphas, index)
        for k, (x, y) in enumerate(points[face]):
            inside = 0 <= x < width and 0 <= y < height
            hidden = not inside or cover[int(y), int(x)] >= COVERED
            landmarks[face, k] = (x, y, HIDDEN if hidden else VISIBLE)
    out_boxes = np.array(boxes, np.float32).reshape(-1, 4)
    return FaceScene(image, out_boxes, landmarks, styles)


def face_label_lines(scene: FaceScene) -> list[str]:
    """``0 cx cy w h (x y v)*5`` lines, normalised; hidden points are ``0 0 0``."""
    height, width = scene.image.shape[:2]
    lines = []
    for box, points in zip(scene.boxes.astype(np.float64), scene.landmarks, strict=True):
        cx, cy = (box[0] + box[2]) / 2 / width, (box[1] + box[3]) / 2 / height
        w, h = (box[2] - box[0]) / width, (box[3] - box[1]) / height
        values = [f"{v:.{LABEL_DECIMALS}f}" for v in (cx, cy, w, h)]
        for x, y, v in points.astype(np.float64):
            if v == HIDDEN:
                values += ["0", "0", "0"]
            else:
                values += [
                    f"{x / width:.{LABEL_DECIMALS}f}",
                    f"{y / height:.{LABEL_DECIMALS}f}",
                    "2",
                ]
        lines.append("0 " + " ".join(values))
    return lines


@dataclass(frozen=True)
class FacesSummary:
    """What :func:`generate_faces_dataset` wrote."""

    data_yaml: Path
    images: dict[str, int]  # split -> images
    faces: dict[str, int]  # split -> labelled faces
    visible_points: float  # share of landmarks with visibility 2
    face_sides: tuple[float, float, float]  # min / median / max box height, pixels
    seconds: float


DATA_YAML_HEADER = """\
# detector synth faces: seed {seed}, imgsz {imgsz}, train {train}, val {val}
# paths are relative to this file's folder
# keypoints: left/right are the VIEWER's (on an upright frontal face, left_eye is the eye on
# the image's left side, i.e. the person's right eye; RetinaFace/InsightFace order);
# a horizontal flip swaps them through flip_idx. Visibility 2: visible; 0 (written 0 0 0):
# outside the image or covered by an occluder or another face.
"""


def generate_faces_dataset(
    out_dir: str | Path,
    n_train: int,
    n_val: int,
    seed: int,
    imgsz: int = 320,
    config: FaceConfig = FaceConfig(),
    image_format: str = "png",
    overwrite: bool = False,
    progress: bool = True,
) -> FacesSummary:
    """Write an Ultralytics pose dataset of synthetic faces (``kpt_shape: [5, 3]``).

    Layout as :func:`detector.data.synthetic.generate_yolo_dataset`; ``data.yaml`` adds
    ``kpt_shape``, ``flip_idx``, ``kpt_names`` and ``skeleton``. Image ``i`` of a split depends only on
    ``(seed, split, i)``: the same seed gives byte-identical files.
    """
    from detector.progress import progress as show_progress

    if n_train < 0 or n_val < 0:
        raise ValueError(f"image counts must be >= 0, got train={n_train}, val={n_val}")
    if imgsz < 32:
        raise ValueError(f"imgsz must be >= 32 pixels, got {imgsz}")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    start = time.perf_counter()
    out = Path(out_dir)
    counts = {"train": n_train, "val": n_val}
    prepare_split_folders(out, overwrite)
    textures = face_free_textures()
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if image_format == "jpg" else []
    faces = dict.fromkeys(SPLITS, 0)
    sides, visible, total_points = [], 0, 0
    bar = show_progress(total=n_train + n_val, desc="synth faces", unit="img", enabled=progress)
    for split in SPLITS:
        for index in range(counts[split]):
            rng = image_rng(seed, split, index)
            n_faces = int(rng.integers(config.min_faces, config.max_faces + 1))
            scene = render_faces(rng, (imgsz, imgsz), n_faces, textures, config)
            name = f"{index:06d}"
            path = out / "images" / split / f"{name}.{image_format}"
            if not cv2.imwrite(str(path), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR), params):
                raise ValueError(f"could not write image {path}")
            lines = face_label_lines(scene)
            (out / "labels" / split / f"{name}.txt").write_text("".join(f"{x}\n" for x in lines))
            faces[split] += len(scene.boxes)
            sides.extend((scene.boxes[:, 3] - scene.boxes[:, 1]).tolist())
            visible += int((scene.landmarks[..., 2] == VISIBLE).sum())
            total_points += scene.landmarks[..., 2].size
            bar.update()
    bar.close()
    spec = {
        "path": ".",
        "train": "images/train",
        "val": "images/val",
        "nc": len(CLASS_NAMES),
        "names": dict(enumerate(CLASS_NAMES)),
        "kpt_shape": [len(KEYPOINT_NAMES), 3],
        "flip_idx": list(FLIP_IDX),
        "kpt_names": list(KEYPOINT_NAMES),
        "skeleton": [list(pair) for pair in SKELETON],
    }
    header = DATA_YAML_HEADER.format(seed=seed, imgsz=imgsz, train=n_train, val=n_val)
    data_yaml = out / "data.yaml"
    data_yaml.write_text(header + yaml.safe_dump(spec, sort_keys=False))
    quantiles = np.percentile(sides, [0, 50, 100]) if sides else np.zeros(3)
    return FacesSummary(
        data_yaml=data_yaml,
        images=counts,
        faces=faces,
        visible_points=visible / max(total_points, 1),
        face_sides=tuple(float(q) for q in quantiles),
        seconds=time.perf_counter() - start,
    )
