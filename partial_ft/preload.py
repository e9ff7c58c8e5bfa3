"""Preloaded images (`data.preload: auto | true | false`): every image decoded and resized once into one
uint8 tensor, batches gathered from it and augmented on the training device.

The per-image PIL pipeline costs a CPU core about 0.3-0.6 ms per image; on a GPU the fast strategies
would wait for it. Preloaded, a batch is a gather from memory (from GPU memory when the images take
little of it), one copy and one batched random-resized crop + flip on the device (augment.py), so the
loader stops being the bottleneck.

What is stored (uint8, C x H x W at the input size):
  - validation images exactly as timm's eval transform makes them before ToTensor (resize, center
    crop): evaluation sees the very values it sees without preload;
  - training images the same way with the whole image kept (crop_pct 1; for square images such as
    digits, CIFAR or Tiny ImageNet, simply resized), or with `data.augment: false` the eval transform.
Each item's augmentation is drawn from (seed, epoch, index) alone, as ImageDataset's is: resume stays
exact and the draws do not depend on batching or processes. Only what can run batched on the device is
supported: random resized crop (timm's sampling: `data.scale`, `data.ratio`) and horizontal flip.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any, Optional

import psutil
import torch

from . import loaders, transforms
from .augment import Augment, device_augment
from .errors import UserError

FIT_AUTO = 0.25  # auto: the images take at most this share of the memory available now
FIT_ON = 0.8  # true: refused beyond this share
ON_DEVICE = 0.05  # images kept in GPU memory when they take at most this share of it


def normalization(data_config: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the data config as C x 1 x 1, so that (uint8 / 255 - mean) / std repeats the eval
    transform's ToTensor + Normalize exactly."""
    return tuple(torch.as_tensor(data_config[k], dtype=torch.float32).reshape(-1, 1, 1) for k in ("mean", "std"))


def available_bytes() -> int:
    """Memory that can hold the images now: available RAM, and on Linux no more than /dev/shm has free
    (the images live in shared memory)."""
    free = psutil.virtual_memory().available
    if os.path.isdir("/dev/shm"):
        free = min(free, psutil.disk_usage("/dev/shm").free)
    return int(free)


def decide(mode: str, device: torch.device, need: int, unsupported: list[str],
           cache_used: bool = False) -> tuple[bool, str]:
    """Whether to preload, for `data.preload` = mode and `need` bytes of images in every process of this
    machine; returns (preload, note). A `true` that cannot be honoured is a UserError."""
    if mode == "false":
        return False, "off"
    if unsupported:
        if mode == "true":
            raise UserError(f"data.preload: true augments on the device (random resized crop, flip) and cannot "
                            f"run {', '.join(unsupported)} (set data.color_jitter: 0, data.auto_augment: null, "
                            "data.re_prob: 0, or data.preload: false)")
        return False, f"not used: {', '.join(unsupported)} augment per image"
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # each process of this machine holds a copy
    need, free = need * processes, available_bytes()
    gib = f"{need / 2**30:.2f} GiB" + (f" ({processes} processes)" if processes > 1 else "")
    if mode == "true":
        if need > FIT_ON * free:
            raise UserError(f"data.preload: true, but the decoded images need {gib}, more than "
                            f"{FIT_ON:.0%} of the {free / 2**30:.1f} GiB of memory available (use "
                            "data.max_train_samples, a smaller data.input_size, or data.preload: false)")
        return True, f"on: {gib}"
    if cache_used:
        return False, "not used: the feature cache already reads each image once"
    if device.type != "cuda":
        return False, "not used: training on CPU (data.preload: true preloads anyway)"
    if need > FIT_AUTO * free:
        return False, f"not used: the decoded images need {gib}, over {FIT_AUTO:.0%} of the " \
                      f"{free / 2**30:.1f} GiB available"
    return True, f"on: {gib}"


def image_bytes(num_images: int, input_size: tuple[int, ...]) -> int:
    """Bytes of `num_images` preloaded images of `input_size` (C, H, W), one byte per value."""
    return num_images * math.prod(input_size)


# --------------------------------------------------------------------------------------------
# the one decoding pass


def decode(ds: loaders.ImageDataset, shape: tuple[int, ...], num_workers: int,
           batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run `ds` (whose transform gives uint8 tensors of `shape`) once, in `num_workers` processes;
    returns (images in shared memory, labels, ok), `ok` False where an image was skipped as unreadable."""
    n = len(ds)
    images = torch.empty((n, *shape), dtype=torch.uint8).share_memory_()
    labels, ok = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.bool)
    dl = torch.utils.data.DataLoader(loaders.Indexed(ds), batch_size=batch_size, num_workers=num_workers,
                                     collate_fn=loaders.collate_indexed, worker_init_fn=loaders.lower_priority)
    for index, x, y in dl:
        if x is None:
            continue
        images[index], labels[index], ok[index] = x, y, True
    return images, labels, ok


# --------------------------------------------------------------------------------------------
# the dataset and its loaders


class PreloadedImages(torch.utils.data.Dataset):
    """Decoded images (uint8) and their labels. The DataLoader takes whole batches (__getitems__):
    gathered, moved to `device`, augmented there when `augment` is set, normalized: (x, y, skipped), x
    float32 on the device. An item alone (__getitem__: one-off passes such as the feature cache's) is the
    normalized, unaugmented image on the CPU, or None where the image was skipped as unreadable."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, ok: torch.Tensor, mean: torch.Tensor,
                 std: torch.Tensor, device: torch.device, augment: Optional[Augment], seed: int):
        on_device = device.type == "cuda" and \
            images.numel() <= ON_DEVICE * torch.cuda.get_device_properties(device).total_memory
        self.images = images.to(device) if on_device else images  # small data: no copy per batch at all
        self.host_images, self.labels, self.ok = images, labels, ok
        self.mean, self.std, self._norm = mean, std, (mean.to(device), std.to(device))
        self.device, self.augment, self.seed, self.epoch = device, augment, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentation draws the next batches use."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Optional[tuple[torch.Tensor, int]]:
        if not self.ok[index]:
            return None
        # the very operations of ToTensor and Normalize, so the values are the eval transform's
        return self.host_images[index].float().div(255).sub_(self.mean).div_(self.std), int(self.labels[index])

    def __getitems__(self, indices: list[int]) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], int]:
        index = torch.as_tensor(indices, dtype=torch.long)
        keep = self.ok[index]
        index = index[keep]
        skipped = len(indices) - len(index)
        if not len(index):
            return None, None, skipped
        x = self._gather(index)
        x = self.augment(x, self.seed, self.epoch, index) if self.augment is not None else x.float()
        mean, std = self._norm
        return x.div_(255).sub_(mean).div_(std), self.labels[index].to(self.device), skipped

    def _gather(self, index: torch.Tensor) -> torch.Tensor:
        """The batch's uint8 images on the device: gathered there, or into pinned memory and copied
        without blocking (the copy overlaps the work already queued on the GPU)."""
        if self.images.device.type != "cpu":
            return self.images.index_select(0, index.to(self.images.device))
        pin = self.device.type == "cuda"
        out = torch.empty((len(index), *self.images.shape[1:]), dtype=torch.uint8, pin_memory=pin)
        torch.index_select(self.images, 0, index, out=out)
        return out.to(self.device, non_blocking=pin)


def collate_preloaded(batch: tuple) -> tuple:
    """PreloadedImages returns whole batches already: nothing to collate."""
    return batch


@dataclass
class Loaders:
    """The train and validation DataLoaders, what data.preload decided, and how long decoding took."""

    train: torch.utils.data.DataLoader
    val: torch.utils.data.DataLoader
    note: str
    seconds: float = 0.0


def make_loaders(bundle: Any, cfg: Any, data_config: dict, tfs: transforms.Transforms, batch_sizes: tuple[int, int],
                 seed: int, device: torch.device, cache_used: bool = False) -> Loaders:
    """The train and validation DataLoaders: preloaded when `data.preload` says so (see decide()), else
    per-image PIL loaders in worker processes. Preloading decodes every image here, before any run
    folder is written: an unreadable one is a UserError now, not mid-run."""
    size = tuple(data_config["input_size"])
    augment, unsupported = (None, []) if tfs.deterministic else device_augment(cfg)
    use, note = decide(cfg.preload, device, image_bytes(len(bundle.train) + len(bundle.val), size), unsupported,
                       cache_used)
    if not use:
        pin = device.type == "cuda"
        return Loaders(loaders.train_loader(bundle, cfg, tfs, batch_sizes[0], seed, pin),
                       loaders.eval_loader(bundle, cfg, tfs.eval, batch_sizes[1], seed, pin), note)
    columns = (bundle.image_column, bundle.label_column)
    start = time.perf_counter()
    eval_store, (mean, std) = transforms.eval_transform(data_config, to_uint8=True), normalization(data_config)
    # augmented training crops from the whole image (crop_pct 1), as the per-image transform does
    train_store = eval_store if tfs.deterministic else \
        transforms.eval_transform({**data_config, "crop_pct": 1.0}, to_uint8=True)
    made = []
    for split, tf, role, aug in ((bundle.train, train_store, "train", augment),
                                 (bundle.val, eval_store, "validation", None)):
        images, labels, ok = decode(loaders.ImageDataset(split, *columns, tf, role, cfg.skip_bad_images), size,
                                    cfg.num_workers)
        if role == "train" and not bool(ok.any()):
            raise UserError("no image of the training data could be read")
        made.append(loaders.loader(PreloadedImages(images, labels, ok, mean, std, device, aug, seed),
                                   batch_sizes[len(made)], role == "train", 0, seed, collate_fn=collate_preloaded))
    return Loaders(made[0], made[1], note, time.perf_counter() - start)
