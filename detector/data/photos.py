"""scikit-image's bundled images (photos, textures, face crops), read the one way the
synthetic datasets use them. Torch-free; scikit-image is the ``synth`` extra."""

from __future__ import annotations

from types import ModuleType

import numpy as np

INSTALL_HINT = "pip install 'yolo-detector[synth]'"


def skimage_data(purpose: str) -> ModuleType:
    """``skimage.data``; an ``ImportError`` saying that ``purpose`` needs scikit-image
    (and how to install it) when it is missing."""
    try:
        from skimage import data
    except ImportError as exc:
        raise ImportError(f"{purpose} need scikit-image: {INSTALL_HINT}") from exc
    return data


def load_photo(name: str, purpose: str = "the photos") -> np.ndarray:
    """A bundled scikit-image image as ``(H, W, 3)`` uint8 RGB (grey repeated, alpha
    dropped, float and bool images scaled to 0..255, a stereo pair's left image)."""
    image = getattr(skimage_data(purpose), name)()
    image = np.asarray(image[0] if isinstance(image, tuple) else image)  # stereo: the left
    if image.dtype.kind == "f":
        image = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3], dtype=np.uint8)
