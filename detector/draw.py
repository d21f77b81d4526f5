"""Drawing detections on images, and tiling images into one grid.

Images are ``(H, W, 3)`` uint8 RGB throughout (convert from OpenCV's BGR at the edges).
Every function returns a new image; the caller's array is never written to.

A box is drawn with its class colour from a fixed palette (class id modulo the palette
length), with a filled tag ``"label score"`` above it (or just inside its top edge
when there is no room above); tags are shifted to stay inside the image. Landmarks are
filled dots coloured by point index k (``PALETTE[7k mod 20]``), so that e.g. a left eye keeps one colour;
a skeleton's pairs ``(i, j)`` join points i and j with a line in the detection's class colour,
under the dots, where both points are visible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from detector.settings import Detections

Colour = tuple[int, int, int]  # (R, G, B), each 0..255

# Twenty distinct RGB colours (class id modulo 20).
PALETTE: tuple[Colour, ...] = (
    (255, 56, 56), (255, 157, 151), (255, 112, 31), (255, 178, 29), (207, 210, 49),
    (72, 249, 10), (146, 204, 23), (61, 219, 134), (26, 147, 52), (0, 212, 187),
    (44, 153, 168), (0, 194, 255), (52, 69, 147), (100, 115, 255), (0, 24, 236),
    (132, 56, 255), (82, 0, 133), (203, 56, 255), (255, 149, 200), (255, 55, 199),
)  # fmt: skip

LINE_WIDTH_FRACTION = 0.003  # auto box line width: this fraction of (H + W) / 2, at least 1
MIN_THICKNESS = 1
FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_SCALE_BASE = 0.1  # cv2 font scale = BASE + PER_THICKNESS * line width
FONT_SCALE_PER_THICKNESS = 0.3  # (0.4 for 1-pixel lines: about 9-pixel text)
TAG_PADDING = 2  # pixels between the tag's edge and its text
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 brightness of an RGB colour
DARK_TEXT_LUMA = 140.0  # tags brighter than this get black text, others white
BLACK: Colour = (0, 0, 0)
WHITE: Colour = (255, 255, 255)
HIDDEN = 0.0  # landmark visibility of a point that is not labelled: not drawn
LANDMARK_COLOUR_STEP = 7  # point k gets PALETTE[7k mod 20]: neighbours far apart in hue

GRID_GAP = 4  # pixels between the cells of image_grid
GRID_BACKGROUND = 255  # grey level of the gaps and of empty cell area


def class_colour(class_id: int, colours: Sequence[Colour] | None = None) -> Colour:
    """The RGB colour of a class: ``colours[class_id % len(colours)]`` (default PALETTE)."""
    palette = PALETTE if colours is None else colours
    r, g, b = palette[int(class_id) % len(palette)]
    return int(r), int(g), int(b)


def auto_thickness(height: int, width: int) -> int:
    """Box line width in pixels for an image of ``height x width``."""
    return max(MIN_THICKNESS, round(LINE_WIDTH_FRACTION * (height + width) / 2))


def draw_detections(
    image: np.ndarray,
    detections: Detections,
    colours: Sequence[Colour] | None = None,
    thickness: int | None = None,
    show_scores: bool = True,
    skeleton: Sequence[tuple[int, int]] = (),
) -> np.ndarray:
    """Draw boxes, label tags, landmarks and their skeleton on a copy of ``image``.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        detections: boxes ``(N, 4)`` xyxy pixels of this image, scores ``(N,)``,
            class ids ``(N,)``, N labels, landmarks ``(N, K, 3)`` ``(x, y, visibility)``
            pixels or ``None`` (points with visibility 0 are skipped).
        colours: RGB colour per class id (cycled); default :data:`PALETTE`.
        thickness: box line width in pixels; default :func:`auto_thickness`.
        show_scores: append the score to each label.
        skeleton: pairs ``(i, j)`` of landmark indices in ``[0, K)`` joined by a line
            (e.g. a model's ``ModelConfig.skeleton``); ignored without landmarks.

    Returns:
        A new ``(H, W, 3)`` uint8 RGB image; with no detections, an identical copy.

    Raises:
        ValueError: a bad image, colours or thickness, detections whose parts disagree in
            length, or a skeleton index outside ``[0, K)``.
    """
    _check_image(image, "image")
    if colours is not None and len(colours) == 0:
        raise ValueError("colours must hold at least one (R, G, B) colour, got an empty list")
    boxes = np.asarray(detections.boxes, dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    if len(detections.scores) != n or len(detections.class_ids) != n or len(detections.labels) != n:
        raise ValueError(
            f"detections disagree in length: {n} boxes, {len(detections.scores)} scores, "
            f"{len(detections.class_ids)} class ids, {len(detections.labels)} labels"
        )
    height, width = image.shape[:2]
    line = auto_thickness(height, width) if thickness is None else int(thickness)
    if line < MIN_THICKNESS:
        raise ValueError(f"thickness must be >= {MIN_THICKNESS} pixel, got {thickness}")
    out = image.copy()
    # Lowest scores first, so that the best detections' tags end up on top.
    for i in reversed(range(n)):
        colour = class_colour(detections.class_ids[i], colours)
        x1, y1, x2, y2 = _pixel_box(boxes[i], height, width)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, line, cv2.LINE_AA)
        text = str(detections.labels[i])
        if show_scores:
            text = f"{text} {float(detections.scores[i]):.2f}"
        _draw_tag(out, text, x1, y1, colour, line)
    if detections.landmarks is not None:
        landmarks = np.asarray(detections.landmarks, dtype=np.float64)
        if len(skeleton):
            _check_skeleton(skeleton, landmarks.shape[1])
            _draw_skeleton(out, landmarks, detections.class_ids, skeleton, colours, line)
        _draw_points(out, landmarks, line)
    return out


def fit_image(image: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Scale ``(H, W, 3)`` uint8 so that its longer side is ``size`` (aspect kept).

    Returns:
        ``(resized image, scale)``: a point ``(x, y)`` of ``image`` is at
        ``(x * scale, y * scale)`` in the resized one.
    """
    _check_image(image, "image")
    if size <= 0:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))  # (w, h) for cv2
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, new_size, interpolation=interpolation), scale


def image_grid(
    images: Sequence[np.ndarray],
    columns: int = 4,
    cell_size: int | None = None,
    gap: int = GRID_GAP,
    background: int = GRID_BACKGROUND,
) -> np.ndarray:
    """Tile images row by row into one image.

    Args:
        images: ``(H_i, W_i, 3)`` uint8 RGB images of any sizes.
        columns: cells per row (fewer when there are fewer images).
        cell_size: scale every image to fit a ``cell_size`` square (aspect kept); default:
            keep sizes, cells as large as the largest image.
        gap: pixels between cells.
        background: grey level of the gaps and of cell area an image does not cover.

    Returns:
        ``(rows * cell_h + (rows - 1) * gap, cols * cell_w + (cols - 1) * gap, 3)`` uint8
        RGB; each image centred in its cell.
    """
    if len(images) == 0:
        raise ValueError("image_grid needs at least one image, got none")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    if gap < 0:
        raise ValueError(f"gap must be >= 0 pixels, got {gap}")
    for index, image in enumerate(images):
        _check_image(image, f"images[{index}]")
    tiles = [fit_image(img, cell_size)[0] for img in images] if cell_size else list(images)
    cell_h = max(t.shape[0] for t in tiles)
    cell_w = max(t.shape[1] for t in tiles)
    cols = min(columns, len(tiles))
    rows = -(-len(tiles) // cols)  # ceil
    grid = np.full(
        (rows * cell_h + (rows - 1) * gap, cols * cell_w + (cols - 1) * gap, 3),
        background,
        dtype=np.uint8,
    )
    for index, tile in enumerate(tiles):
        row, col = divmod(index, cols)
        top = row * (cell_h + gap) + (cell_h - tile.shape[0]) // 2
        left = col * (cell_w + gap) + (cell_w - tile.shape[1]) // 2
        grid[top : top + tile.shape[0], left : left + tile.shape[1]] = tile
    return grid


def _check_image(image: np.ndarray, name: str) -> None:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name} is empty: {image.shape[0]}x{image.shape[1]} pixels")


def _pixel_box(box: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """Integer corners of an xyxy pixel-edge box, inside the image."""
    x1, y1, x2, y2 = (int(round(v)) if np.isfinite(v) else 0 for v in box)
    x1, x2 = (min(max(v, 0), width - 1) for v in (x1, x2 - 1))
    y1, y2 = (min(max(v, 0), height - 1) for v in (y1, y2 - 1))
    return x1, y1, max(x1, x2), max(y1, y2)


def _text_colour(colour: Colour) -> Colour:
    luma = sum(w * c for w, c in zip(LUMA_WEIGHTS, colour, strict=True))
    return BLACK if luma > DARK_TEXT_LUMA else WHITE


def _draw_tag(out: np.ndarray, text: str, x: int, y: int, colour: Colour, line: int) -> None:
    """A filled tag with ``text`` whose bottom-left is the box corner ``(x, y)``; moved
    inside the box when there is no room above, and inside the image horizontally."""
    height, width = out.shape[:2]
    scale = FONT_SCALE_BASE + FONT_SCALE_PER_THICKNESS * line
    text_line = max(MIN_THICKNESS, line - 1)
    (text_w, text_h), baseline = cv2.getTextSize(text, FONT, scale, text_line)
    tag_w = text_w + 2 * TAG_PADDING
    tag_h = text_h + baseline + 2 * TAG_PADDING
    top = y - tag_h if y - tag_h >= 0 else y
    top = max(0, min(top, height - tag_h))
    left = max(0, min(x, width - tag_w))
    cv2.rectangle(out, (left, top), (left + tag_w - 1, top + tag_h - 1), colour, cv2.FILLED)
    origin = (left + TAG_PADDING, top + TAG_PADDING + text_h)
    cv2.putText(out, text, origin, FONT, scale, _text_colour(colour), text_line, cv2.LINE_AA)


def _check_skeleton(skeleton: Sequence[tuple[int, int]], num_points: int) -> None:
    for pair in skeleton:
        if len(pair) != 2 or not all(0 <= int(i) < num_points for i in pair):
            raise ValueError(
                f"skeleton pair {tuple(pair)} must be two landmark indices in [0, {num_points})"
            )


def _visible(point: np.ndarray) -> bool:
    x, y, visibility = point
    return visibility != HIDDEN and bool(np.isfinite(x) and np.isfinite(y))


def _draw_skeleton(
    out: np.ndarray,
    landmarks: np.ndarray,
    class_ids: Sequence[int],
    skeleton: Sequence[tuple[int, int]],
    colours: Sequence[Colour] | None,
    line: int,
) -> None:
    """Lines between the ``(N, K, 3)`` points of each skeleton pair where both are visible."""
    for points, class_id in zip(landmarks, class_ids, strict=True):
        colour = class_colour(class_id, colours)
        for i, j in skeleton:
            a, b = points[int(i)], points[int(j)]
            if _visible(a) and _visible(b):
                start = (int(round(a[0])), int(round(a[1])))
                end = (int(round(b[0])), int(round(b[1])))
                cv2.line(out, start, end, colour, line, cv2.LINE_AA)


def _draw_points(out: np.ndarray, landmarks: np.ndarray, line: int) -> None:
    """Filled dots for ``(N, K, 3)`` ``(x, y, visibility)`` points, coloured by index k."""
    radius = line + 1
    for points in landmarks:
        for k, point in enumerate(points):
            if not _visible(point):
                continue
            centre = (int(round(point[0])), int(round(point[1])))
            cv2.circle(
                out, centre, radius, class_colour(k * LANDMARK_COLOUR_STEP), cv2.FILLED, cv2.LINE_AA
            )
