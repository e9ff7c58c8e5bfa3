"""Frozen-prefix feature cache (`train.cache_features: auto | on | off`).

When everything below some point of the network is fixed and the train transform is deterministic, that
fixed prefix maps each image to the same features in every epoch: compute them once (one pass over the
data), then train only the rest of the network from the cached features. The cut is found by
`cuts.find_cut`; this module decides whether caching is exact, extracts the features, and serves them.

The cached prefix runs in eval mode. So it is the same computation as training without the cache only
when the prefix behaves the same in training: no BatchNorm in it updates its statistics, and nothing in
it is random (dropout, drop-path). `auto` caches only then (and only when the features are at most
4x the size of the images and fit in memory); `on` caches anyway, freezing the prefix's BatchNorm statistics and
switching off its dropout, and says so.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import psutil
import torch
from torch import nn

from . import cuts, loaders, signals
from .errors import UserError
from .normstats import freeze_norm_stats, updates_norm_stats


MAX_GROWTH = 4  # auto: features at most this many times the image's values (early, wide layers are not worth it)


@dataclass
class Decision:
    """What the cache will do: the cut (None: train on images) and what to tell the user."""

    cut: Optional[cuts.Cut]
    note: str


def decide_cut(model: nn.Module, mode: str, deterministic: bool, input_size: tuple[int, ...],
           num_images: int) -> Decision:
    """Whether and where to cache, for `train.cache_features` = mode. Raises UserError for an `on` that
    cannot be honoured; may freeze the prefix's BatchNorm statistics for `on` (said in the note)."""
    if mode == "off":
        return Decision(None, "off")
    if not deterministic:
        if mode == "on":
            raise UserError("train.cache_features: on needs a deterministic train transform, but data.augment "
                            "is true (set data.augment: false, or cache_features: auto)")
        return Decision(None, "not used: the train transform is random (data.augment: true)")
    sample = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0))
    cut, reason = cuts.find_cut(model, sample)
    if cut is None:
        if mode == "on":
            raise UserError(f"train.cache_features: on, but there is nothing to cache: {reason}")
        return Decision(None, f"not used: {reason}")
    with torch.no_grad(), cuts.eval_mode(model):
        per_image = cut.prefix(sample[:1]).numel()
    budget = _memory_budget(mode)
    need = per_image * 4 * num_images
    if mode == "auto" and per_image > MAX_GROWTH * sample[0].numel():
        return Decision(None, f"not used: the features at {cut.name} ({per_image:,} values per image) are over "
                              f"{MAX_GROWTH}x larger than the images ({sample[0].numel():,})")
    if need > budget:
        if mode == "on":
            raise UserError(f"train.cache_features: on, but the features at {cut.name} need {need / 2**30:.1f} GiB, "
                            f"more than the {budget / 2**30:.1f} GiB this machine can spare")
        return Decision(None, f"not used: the features need {need / 2**30:.1f} GiB (more than "
                              f"{budget / 2**30:.1f} GiB)")
    notes = []
    updating = [n for n in cut.prefix_modules if updates_norm_stats(model.get_submodule(n))]
    if updating:
        if mode == "auto":
            return Decision(None, f"not used: {len(updating)} BatchNorm layers below {cut.name} update their "
                                  "statistics in training (set the strategy's norm_stats: freeze, or "
                                  "cache_features: on)")
        for n in updating:
            freeze_norm_stats(model.get_submodule(n))
        notes.append(f"{len(updating)} BatchNorm layers below the cut now keep their statistics fixed")
    if not cuts.same_in_training(model, cut, sample):
        if mode == "auto":
            return Decision(None, f"not used: the network below {cut.name} is random in training (dropout or "
                                  "drop-path); cache_features: on would switch it off")
        notes.append("its dropout / drop-path is off (the cached prefix runs in eval mode)")
    return Decision(cut, f"features at {cut.name}" + "".join(f"; {n}" for n in notes))


def _memory_budget(mode: str) -> int:
    """Bytes the cache may take: a share of the memory available now (host memory: the cache lives there)."""
    return int(psutil.virtual_memory().available * (0.25 if mode == "auto" else 0.6))


class FeatureDataset(torch.utils.data.Dataset):
    """Cached features as (features, label) items; None where the image could not be read (collate()
    skips and counts it, as for images)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, ok: torch.Tensor):
        self.features, self.labels, self.ok = features, labels, ok

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Optional[tuple[torch.Tensor, int]]:
        return (self.features[index], int(self.labels[index])) if self.ok[index] else None

    def set_epoch(self, epoch: int) -> None:
        """Nothing is random here (the loop sets every training set's epoch)."""


@torch.no_grad()
def extract(cut: cuts.Cut, model: nn.Module, dataset: torch.utils.data.Dataset, batch_size: int, num_workers: int,
            device: torch.device, autocast: Callable[[], Any], input_size: tuple[int, ...],
            channels_last: bool = False, shard: tuple[int, int] = (0, 1)) -> FeatureDataset:
    """Run the prefix (in eval mode, under `autocast()`) once over the items of `dataset` that are this
    process's `shard` = (index, count): items index, index + count, ...; the others stay zero (see
    `share`). The features stay in host memory."""
    rank, world = shard
    n = len(dataset)
    items = torch.utils.data.Subset(loaders.Indexed(dataset), range(rank, n, world))
    dl = torch.utils.data.DataLoader(items, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                     collate_fn=loaders.collate_indexed)
    with cuts.eval_mode(model), autocast():
        sample = cut.prefix(torch.zeros(1, *input_size, device=device))  # the features' shape and dtype
        features = torch.zeros((n, *sample.shape[1:]), dtype=sample.dtype)
        labels = torch.zeros(n, dtype=torch.long)
        ok = torch.zeros(n, dtype=torch.bool)
        for index, x, y in dl:
            signals.raise_if_stopped("feature extraction")
            if x is None:
                continue
            x = x.to(device)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            features[index] = cut.prefix(x).detach().to("cpu")
            labels[index] = y
            ok[index] = True
    return FeatureDataset(features, labels, ok)


def share(ds: FeatureDataset, reduce: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
          chunk_bytes: int = 64 * 2**20) -> FeatureDataset:
    """Every process extracted its own shard (the rest zero): a sum over processes gives each of them
    the whole cache. Summed in chunks on the device (NCCL reduces device tensors), so a large cache
    never needs to fit in accelerator memory at once."""
    def summed(t: torch.Tensor) -> torch.Tensor:
        flat = t.reshape(len(t), -1)
        rows = max(1, chunk_bytes // max(1, flat.shape[1] * flat.element_size()))
        for start in range(0, len(flat), rows):
            flat[start:start + rows] = reduce(flat[start:start + rows].to(device)).to("cpu")
        return t

    ok = summed(ds.ok.to(torch.uint8)).bool()
    return FeatureDataset(summed(ds.features), summed(ds.labels), ok)


@dataclass
class Cached:
    """The cached training: the module that learns, its train and validation loaders, and a report."""

    suffix: nn.Module
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    info: dict[str, Any]


def build(cut: cuts.Cut, model: nn.Module, train_loader: torch.utils.data.DataLoader,
          val_loader: torch.utils.data.DataLoader, seed: int, num_workers: int, acc: Any,
          input_size: tuple[int, ...], channels_last: bool = False) -> Cached:
    """Extract the training and validation features once (each process its shard, then shared) and make
    loaders over them with the same batch size, order (same seed) and sharding as the image loaders
    they replace."""
    start = time.perf_counter()
    model.to(acc.device)
    shard = (acc.process_index, acc.num_processes)
    sets = [extract(cut, model, dl.dataset, dl.batch_size, num_workers, acc.device, acc.autocast, input_size,
                    channels_last, shard) for dl in (train_loader, val_loader)]
    if acc.num_processes > 1:
        sets = [share(ds, lambda t: acc.reduce(t, reduction="sum"), acc.device) for ds in sets]
    if not bool(sets[0].ok.any()):
        raise UserError("no image of the training data could be read")
    seconds = time.perf_counter() - start
    train_cached = loaders.loader(sets[0], train_loader.batch_size, True, 0, seed)
    val_cached = loaders.loader(sets[1], val_loader.batch_size, False, 0, seed)
    size = sum(s.features.numel() * s.features.element_size() for s in sets)
    info = {"cut": cut.name, "feature_shape": list(sets[0].features.shape[1:]), "bytes": size,
            "images": sum(len(s) for s in sets), "extract_seconds": round(seconds, 3)}
    return Cached(cut.suffix, train_cached, val_cached, info)
