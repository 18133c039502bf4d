"""Training-time image augmentation: colour jitter, background replacement, truncation.

GDRNPP applies, with probability 0.8, a random-order subset of colour operations
(imgaug "code" augmentation), and with probability 0.5 replaces the background around the
object with another image after randomly truncating the object's mask. The operations here
are written with numpy/OpenCV; each is a small callable ``(image uint8 HxWx3, rng) →
image`` applied with its own probability, listed in :data:`COLOR_OPS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

ColorOp = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(image, 0, 255).astype(np.uint8)


def coarse_dropout(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Zero 20 % of the cells of a grid whose cells are 5 % of the image side."""
    h, w = image.shape[:2]
    gh, gw = max(1, round(h * 0.05)), max(1, round(w * 0.05))
    cells = rng.random((int(np.ceil(h / gh)), int(np.ceil(w / gw)))) < 0.2
    drop = np.kron(cells, np.ones((gh, gw), dtype=bool))[:h, :w]
    out = image.copy()
    out[drop] = 0
    return out


def gaussian_blur(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    sigma = rng.uniform(0.0, 3.0)
    return image if sigma < 0.1 else cv2.GaussianBlur(image, (0, 0), sigma)


def sharpness(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    factor = rng.uniform(0.0, 50.0) / 10.0  # PIL-like enhance factor, scaled to a sane range
    blurred = cv2.blur(image, (3, 3)).astype(np.float32)
    return _to_uint8(blurred + factor * (image.astype(np.float32) - blurred))


def contrast(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    factor = rng.uniform(0.2, 2.0)
    mean = image.mean()
    return _to_uint8(mean + factor * (image.astype(np.float32) - mean))


def brightness(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _to_uint8(image.astype(np.float32) * rng.uniform(0.3, 2.0))


def saturation(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)[..., None]
    return _to_uint8(gray + rng.uniform(0.0, 3.0) * (image.astype(np.float32) - gray))


def add_offset(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    per_channel = rng.random() < 0.3
    offset = rng.uniform(-25, 25, size=3 if per_channel else 1)
    return _to_uint8(image.astype(np.float32) + offset)


def invert(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    channels = rng.random(3) < 0.2
    out = image.copy()
    out[..., channels] = 255 - out[..., channels]
    return out


def multiply(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    per_channel = rng.random() < 0.5
    factor = rng.uniform(0.6, 1.4, size=3 if per_channel else 1)
    return _to_uint8(image.astype(np.float32) * factor)


def gaussian_noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _to_uint8(image.astype(np.float32) + rng.normal(0.0, 10.0, size=image.shape))


def linear_contrast(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    factor = rng.uniform(0.5, 2.2, size=3 if rng.random() < 0.3 else 1)
    return _to_uint8(128 + factor * (image.astype(np.float32) - 128))


def grayscale(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)[..., None]
    alpha = rng.uniform(0.0, 1.0)
    return _to_uint8(alpha * gray + (1 - alpha) * image.astype(np.float32))


# (operation, probability), after GDRNPP's "code" colour augmentation.
COLOR_OPS: tuple[tuple[ColorOp, float], ...] = (
    (coarse_dropout, 0.5),
    (gaussian_blur, 0.4),
    (sharpness, 0.3),
    (contrast, 0.3),
    (brightness, 0.5),
    (saturation, 0.3),
    (add_offset, 0.5),
    (invert, 0.3),
    (multiply, 0.5),
    (multiply, 0.5),
    (gaussian_noise, 0.1),
    (linear_contrast, 0.5),
    (grayscale, 0.5),
)


def color_augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Apply each of :data:`COLOR_OPS` with its probability, in random order."""
    for index in rng.permutation(len(COLOR_OPS)):
        op, prob = COLOR_OPS[index]
        if rng.random() < prob:
            image = op(image, rng)
    return image


def truncate_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cut the mask along a random line between its box edge and centre (GDRNPP TRUNCATE_FG).

    With probability 0.2 each the top, bottom, left or right part is cut away; with 0.2
    the mask is kept. Returns a new bool mask.
    """
    ys, xs = np.nonzero(mask)
    choice = rng.integers(5)
    if len(ys) == 0 or choice == 4:
        return mask.copy()
    out = mask.copy()
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    if choice == 0:
        out[: rng.integers(y0, cy + 1)] = False
    elif choice == 1:
        out[rng.integers(cy, y1 + 1) + 1 :] = False
    elif choice == 2:
        out[:, : rng.integers(x0, cx + 1)] = False
    else:
        out[:, rng.integers(cx, x1 + 1) + 1 :] = False
    return out


def random_background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A procedural BGR background: smooth colour noise over a gradient, with texture."""
    low = rng.integers(0, 256, size=(rng.integers(2, 9), rng.integers(2, 9), 3)).astype(np.uint8)
    base = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    grain = rng.normal(0.0, rng.uniform(2.0, 25.0), size=(height, width, 1))
    return _to_uint8(base + grain)


class BackgroundSource:
    """Background images: files from a folder, or procedural ones when none is given.

    Args:
        folder: directory of .jpg/.png images (e.g. VOC2012 as in GDRNPP), or None.
    """

    def __init__(self, folder: str | Path | None = None) -> None:
        self.paths: Sequence[Path] = []
        if folder is not None:
            self.paths = sorted(
                p for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")
            )

    def sample(self, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        if self.paths:
            image = cv2.imread(str(self.paths[rng.integers(len(self.paths))]), cv2.IMREAD_COLOR)
            if image is not None:
                return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        return random_background(height, width, rng)


def replace_background(image: np.ndarray, keep: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Pixels outside ``keep`` (bool HxW) taken from ``background`` (HxWx3)."""
    return np.where(keep[..., None], image, background)
