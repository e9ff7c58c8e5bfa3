"""From a split of a Hugging Face dataset to batches: RGB conversion, unreadable images, and DataLoaders
with seeded order and persistent workers (the timm transforms they apply: transforms.py)."""
from __future__ import annotations

import os
import random
import re
from typing import Any, Optional

import numpy as np
import torch
from datasets import Dataset, Image
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from .data import DataBundle
from .data_columns import INDEX_COLUMN
from .errors import UserError, first_line
from .sections import DataCfg, max_workers
from .transforms import Transforms



class BadImageError(UserError):
    """An unreadable image. A DataLoader worker's exception comes back to the main process re-built from
    'Caught BadImageError in DataLoader worker process N. Original Traceback ...'; keep only our message
    so the CLI's `error:` line stays the useful one."""

    collective = False  # only the process whose shard holds the image sees it

    def __init__(self, message: str):
        if message.startswith("Caught ") and "BadImageError: " in message:
            message = message.strip().splitlines()[-1].split("BadImageError: ", 1)[1]
        super().__init__(message)


def to_rgb(image: Any) -> Any:
    """Any PIL image as 8-bit RGB: grayscale, 16-bit, float, RGBA, palette (with transparency), CMYK."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        array = np.asarray(image, dtype=np.float64)
        top = 1.0 if image.mode == "F" and array.max() <= 1.0 else 255.0 if array.max() <= 255 else 65535.0
        image = PILImage.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8), mode="L")
    elif image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    return image.convert("RGB")


def read_image(value: Optional[dict]) -> Any:
    """Decode an undecoded `datasets` Image value ({"bytes": ..., "path": ...}) to an RGB PIL image, as
    every image the package reads is decoded; raises on an unreadable or missing image."""
    if value is None:
        raise ValueError("the image is missing")
    image = Image().decode_example(value)
    image.load()  # PIL decodes lazily: surface truncated data here, not inside the transform
    return to_rgb(image)


def reason(e: Exception) -> str:
    """Why an image could not be read, in one line."""
    if isinstance(e, UnidentifiedImageError):
        return "not a readable image file (unknown format or corrupt data)"
    return re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "", first_line(e))


class ImageDataset(torch.utils.data.Dataset):
    """A HF split as (tensor, label) pairs; images decoded and converted to RGB lazily, per item.

    Decoding is ours (the column is read undecoded), so an unreadable image can be named by its index in
    the source split, and skipped when `skip_bad_images` is set (collate() then counts it).

    With `augment_seed` set (a random train transform), each item's augmentation draws come from
    (augment_seed, epoch, index) alone: not from which worker or process loads it, nor from what was
    loaded before. So a resumed run augments exactly as a run that went straight through, and the
    augmentation does not depend on num_workers or the number of processes."""

    def __init__(self, hf: Dataset, image_column: str, label_column: str, transform: Any, split: str,
                 skip_bad_images: bool = False, augment_seed: Optional[int] = None):
        index = [INDEX_COLUMN] if INDEX_COLUMN in hf.column_names else []
        self.hf = hf.select_columns([image_column, label_column, *index]).cast_column(image_column, Image(decode=False))
        self.image_column, self.label_column = image_column, label_column
        self.transform, self.split, self.skip_bad_images = transform, split, skip_bad_images
        self.source = str(hf.split) if hf.split is not None else split  # the split the rows come from
        self.augment_seed = augment_seed
        # shared memory: persistent workers hold their own copy of the dataset, but see this tensor change.
        # Workers only get an epoch's indices after the loop has set it, so there is no race.
        self._epoch = torch.zeros((), dtype=torch.long).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentation draws the next items use (see the class docstring)."""
        self._epoch.fill_(epoch)

    def _augment(self, image: Any, index: int) -> torch.Tensor:
        """The transform, with Python's, NumPy's and torch's generators seeded for this item and epoch
        (timm and torchvision transforms draw from all three). In the main process (num_workers: 0) the
        generators' states are restored afterwards: the training's own draws must not depend on data
        loading. A worker's generators serve only its transforms, so there is nothing to restore."""
        seed = int(np.random.SeedSequence([self.augment_seed, int(self._epoch), index]).generate_state(1)[0])
        in_worker = torch.utils.data.get_worker_info() is not None
        saved = None if in_worker else (random.getstate(), np.random.get_state(), torch.get_rng_state())
        random.seed(seed)
        np.random.seed(seed)
        torch.default_generator.manual_seed(seed)  # the CPU generator only (torch.manual_seed also seeds GPUs: slow)
        try:
            return self.transform(image)
        finally:
            if saved is not None:
                random.setstate(saved[0])
                np.random.set_state(saved[1])
                torch.set_rng_state(saved[2])

    def __len__(self) -> int:
        return len(self.hf)

    def __getitem__(self, index: int):
        row = self.hf[index]
        try:
            image = read_image(row[self.image_column])
        except Exception as e:
            if self.skip_bad_images:
                return None
            used = f" (used for {self.split})" if self.split != self.source else ""
            cell = row[self.image_column]
            file = f"{cell['path']} " if isinstance(cell, dict) and cell.get("path") else ""
            raise BadImageError(f"cannot read image {file}at index {row.get(INDEX_COLUMN, index)} of split "
                                f"'{self.source}'{used}: {reason(e)} (set data.skip_bad_images: true to skip "
                                "unreadable images)") from None
        if self.augment_seed is None:
            return self.transform(image), row[self.label_column]
        return self._augment(image, index), row[self.label_column]


def collate(batch: list) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], int]:
    """Stack (image, label) pairs, dropping unreadable ones (None); returns (x, y, skipped), with x and
    y None when no image of the batch could be read."""
    good = [b for b in batch if b is not None]
    if not good:
        return None, None, len(batch)
    x = torch.stack([b[0] for b in good])
    y = torch.tensor([b[1] for b in good], dtype=torch.long)
    return x, y, len(batch) - len(good)


class Indexed(torch.utils.data.Dataset):
    """A dataset's items with their index: (index, item); for one-off passes that fill a tensor by index."""

    def __init__(self, ds: torch.utils.data.Dataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.ds[index]


def collate_indexed(batch: list) -> tuple[list[int], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Stack Indexed items, dropping unreadable ones (None); returns (indices, x, y)."""
    good = [(i, item) for i, item in batch if item is not None]
    if not good:
        return [], None, None
    x = torch.stack([item[0] for _, item in good])
    return [i for i, _ in good], x, torch.tensor([item[1] for _, item in good], dtype=torch.long)


def loader(ds: torch.utils.data.Dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int,
           pin_memory: bool = False, collate_fn: Optional[Any] = None) -> torch.utils.data.DataLoader:
    """A DataLoader with seeded shuffling and persistent workers; `collate_fn` defaults to collate().
    Workers beyond max_workers() are not started (a run recorded on a larger machine, evaluated here)."""
    num_workers = min(num_workers, max_workers())
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, collate_fn=collate_fn or collate,
        persistent_workers=num_workers > 0, pin_memory=pin_memory, drop_last=False,
        generator=torch.Generator().manual_seed(seed), worker_init_fn=lower_priority,
    )


def lower_priority(worker_id: int) -> None:
    """Workers yield the CPU to the training process's compute threads. Where cores are few, a worker
    preempting one of them stalls all of them at their next barrier; at a lower priority it runs in the
    gaps instead, and its prefetched batches still arrive in time."""
    try:
        os.nice(5)
    except (AttributeError, OSError):  # not on this platform, or not permitted: harmless
        pass


def eval_batch_size(requested: Optional[int], batch_size: int, device: torch.device) -> int:
    """`train.eval_batch_size`, or by default 4x the training batch on a GPU (evaluation keeps no
    activations for a backward pass, and larger batches keep the GPU busy) and 2x on the CPU."""
    return requested or (4 if device.type == "cuda" else 2) * batch_size


def train_dataset(bundle: DataBundle, cfg: DataCfg, tfs: Transforms, seed: int) -> ImageDataset:
    """The training split as items of the train transform; a random transform draws its augmentation per
    item from (seed, epoch, index)."""
    return ImageDataset(bundle.train, bundle.image_column, bundle.label_column, tfs.train, "train",
                        cfg.skip_bad_images, augment_seed=None if tfs.deterministic else seed)


def train_loader(bundle: DataBundle, cfg: DataCfg, tfs: Transforms, batch_size: int, seed: int,
                 pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """The training loader (train transform, seeded shuffling)."""
    return loader(train_dataset(bundle, cfg, tfs, seed), batch_size, True, cfg.num_workers, seed, pin_memory)


def eval_loader(bundle: DataBundle, cfg: DataCfg, eval_tf: Any, batch_size: int, seed: int,
                pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """The validation loader (eval transform, in order): the one builder that training, the `eval`
    command and tools/ensemble.py use, so all three measure the same images the same way."""
    ds = ImageDataset(bundle.val, bundle.image_column, bundle.label_column, eval_tf, "validation",
                      cfg.skip_bad_images)
    return loader(ds, batch_size, False, cfg.num_workers, seed, pin_memory)


def shutdown_workers(*loaders: torch.utils.data.DataLoader) -> None:
    """Stop persistent DataLoader workers now. On an error path they would otherwise live until Python's
    exit, which ends them with SIGTERM, a signal workers ignore while training (see signals.py)."""
    for dl in loaders:
        iterator = getattr(dl, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
            dl._iterator = None
