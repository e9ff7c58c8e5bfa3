"""Training augmentation for a whole batch on the training device, each item's draws from (seed, epoch,
index) alone: timm's random-resized-crop sampling, vectorized, and a horizontal flip, resampled with one
grid_sample. Used for preloaded data (preload.py), built from the recipe's data section; which of its
augmentations cannot run so is decided here too."""
from __future__ import annotations

import math
from dataclasses import dataclass
import numpy as np
import torch

from .sections import DataCfg

_GOLDEN, _M1, _M2 = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))
DRAWS = 23  # per item: 10 crop attempts x (area, aspect), crop position (2), flip
DEFAULT_SCALE, DEFAULT_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)  # timm's random resized crop's defaults


@dataclass
class Augment:
    """The batched training augmentation: timm's random-resized-crop sampling, then a flip."""

    scale: tuple[float, float]
    ratio: tuple[float, float]
    hflip: float

    def __call__(self, x: torch.Tensor, seed: int, epoch: int, index: torch.Tensor) -> torch.Tensor:
        """The uint8 batch `x` (on its device) of items `index`, augmented: float32 in 0..255."""
        u = uniforms(seed, epoch, index.cpu().numpy())
        boxes = torch.from_numpy(crop_boxes(u, x.shape[-2], x.shape[-1], self.scale, self.ratio)).float()
        flip = torch.from_numpy(u[:, DRAWS - 1] < self.hflip)
        return augment_batch(x, boxes.to(x.device), flip.to(x.device))


def device_augment(cfg: DataCfg) -> tuple[Augment, list[str]]:
    """The recipe's training augmentation (data.augment: true) as it runs batched on the device: timm's
    random resized crop (its default scale and ratio unless data.scale / data.ratio say) and flip.
    Returns (augment, the data keys set to what cannot run so: color jitter, auto-augment, erasing)."""
    unsupported = [f"data.{key}" for key in ("color_jitter", "auto_augment", "re_prob") if getattr(cfg, key)]
    return Augment(tuple(cfg.scale or DEFAULT_SCALE), tuple(cfg.ratio or DEFAULT_RATIO), cfg.hflip), unsupported


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijection of uint64 whose output bits all depend on every input bit."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def uniforms(seed: int, epoch: int, index: np.ndarray, count: int = DRAWS) -> np.ndarray:
    """(len(index), count) numbers in [0, 1) that depend on (seed, epoch, index) alone: a counter-based
    hash, vectorized over the batch (seeding a generator per item would cost more than the step)."""
    with np.errstate(over="ignore"):
        key = _mix(np.asarray([seed % 2**64], dtype=np.uint64) + _GOLDEN)
        key = _mix(key ^ np.uint64(epoch % 2**64))
        key = _mix(key ^ np.asarray(index, dtype=np.uint64))[:, None]
        bits = _mix(key + _GOLDEN * np.arange(1, count + 1, dtype=np.uint64)[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def crop_boxes(u: np.ndarray, height: int, width: int, scale: tuple[float, float],
               ratio: tuple[float, float]) -> np.ndarray:
    """timm's RandomResizedCrop sampling (10 attempts, then a center crop), vectorized: boxes
    (x1, y1, x2, y2) in pixels, one per row of `u` (uniforms as `uniforms()` gives them)."""
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * u[:, 0:10])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = np.exp(log_lo + (log_hi - log_lo) * u[:, 10:20])
    w, h = np.rint(np.sqrt(target * aspect)), np.rint(np.sqrt(target / aspect))
    fits = (w <= width) & (h <= height)
    first = fits.argmax(axis=1)
    rows = np.arange(len(u))
    w, h, found = w[rows, first], h[rows, first], fits.any(axis=1)
    in_ratio = width / height  # the fallback: the whole image, or its center at the nearest allowed ratio
    fw, fh = (width, round(width / min(ratio))) if in_ratio < min(ratio) else \
        (round(height * max(ratio)), height) if in_ratio > max(ratio) else (width, height)
    w, h = np.maximum(np.where(found, w, fw), 1), np.maximum(np.where(found, h, fh), 1)
    top = np.where(found, np.floor(u[:, 20] * (height - h + 1)), (height - h) // 2)
    left = np.where(found, np.floor(u[:, 21] * (width - w + 1)), (width - w) // 2)
    return np.stack([left, top, left + w, top + h], axis=1)


def augment_batch(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Crop each image of the uint8 batch `x` to its box (x1, y1, x2, y2; pixel p spans [p, p + 1)),
    resize it back to x's size (bilinear, sampled at the output pixels' centers) and mirror it where
    `flip`: one grid_sample for the batch. Boxes lie inside the images, so crops are only ever enlarged
    (no antialiasing needed). Returns float32 in 0..255."""
    import torch.nn.functional as F

    n, _, height, width = x.shape
    x1, y1, x2, y2 = boxes.unbind(1)
    # grid_sample's coordinates (align_corners=False): -1 and 1 are the image's outer edges, so the box's
    # edges are 2 * x1 / W - 1 and 2 * x2 / W - 1; output pixel k's center is at (2k + 1) / W - 1
    out_x = (2 * torch.arange(width, device=x.device, dtype=torch.float32) + 1) / width - 1
    out_y = (2 * torch.arange(height, device=x.device, dtype=torch.float32) + 1) / height - 1
    sign = 1 - 2 * flip.to(torch.float32)  # a flip mirrors where each output pixel samples
    gx = ((x2 - x1) / width * sign)[:, None] * out_x[None, :] + ((x1 + x2) / width - 1)[:, None]
    gy = ((y2 - y1) / height)[:, None] * out_y[None, :] + ((y1 + y2) / height - 1)[:, None]
    grid = torch.stack([gx[:, None, :].expand(n, height, width), gy[:, :, None].expand(n, height, width)], dim=-1)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
