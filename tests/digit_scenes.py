"""Digit scenes the shipped digits models are checked on (``test_predict``'s grid
``digits`` and ``test_shipped_digits_window``'s ``digits-window``)."""

from __future__ import annotations

import numpy as np


def digit_scenes() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Large, fully visible digits on plain backgrounds, landscape and portrait:
    ``(image, boxes xyxy, class ids)`` each, drawn from the validation glyphs."""
    from detector.data.synthetic import DigitSource, SceneConfig, render_scene

    source = DigitSource.load("val")
    config = SceneConfig(min_size=0.25, max_size=0.4, border_cut_prob=0.0, max_iou=0.0)
    scenes = []
    for seed, size in enumerate([(240, 560), (560, 240), (300, 420), (420, 300)]):
        rng = np.random.default_rng(seed)
        background = np.full((*size, 3), 200 if seed % 2 else 60, np.uint8)
        scenes.append(render_scene(rng, size, source, 2, config=config, background=background))
    return scenes
