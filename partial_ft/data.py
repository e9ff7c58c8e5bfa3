"""Hugging Face datasets in, the train and validation splits out (DataBundle), ready for timm transforms.

Whatever the source (data_sources.py), the same steps follow: detect the image and label columns
(data_columns.py), then pick the validation split or carve a stratified one out of train. Every problem
the user can fix is a one-line UserError raised by `load()`, before any run folder exists; only an
unreadable image is met later, while training (loaders.py).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import zlib
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pyarrow as pa
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from .data_columns import (VAL_SPLIT_NAMES, choose_val_split, classes_missing_from, detect_image_column,
                           detect_label_column, label_array, prepare_columns)
from .data_sources import load_raw
from .errors import UserError
from .sections import DataCfg

@dataclass
class DataBundle:
    """The two splits, ready for transforms, and what we learned about them."""

    train: Dataset
    val: Dataset
    image_column: str
    label_column: str
    class_names: list[str]  # id -> name; for string labels this is the saved mapping
    info: dict[str, Any] = field(default_factory=dict)  # recorded in the run folder as data.json

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def carve(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratified (train, val) row indices by datasets' train_test_split(stratify_by_column):
    `fraction` of the rows (at least as many as classes) goes to validation, each class in proportion.
    Classes with a single row stay in train, which datasets would refuse; no val rows when none has two."""
    classes, counts = np.unique(labels, return_counts=True)
    splittable = classes[counts >= 2]
    rows = np.flatnonzero(np.isin(labels, splittable))
    if not len(rows):
        return np.arange(len(labels)), np.array([], dtype=np.int64)
    # datasets needs as many rows as classes on each side; each class has two, so both sides can have them
    n_val = min(max(math.ceil(fraction * len(rows)), len(splittable)), len(rows) - len(splittable))
    # a small in-memory table of (label, row): the split neither decodes images nor writes cache files
    table = Dataset.from_dict({"label": labels[rows], "row": rows}, features=Features(
        {"label": ClassLabel(num_classes=int(classes.max()) + 1), "row": Value("int64")}))
    split = table.train_test_split(test_size=n_val, stratify_by_column="label", seed=seed)
    val_idx = np.sort(np.asarray(split["test"]["row"], dtype=np.int64))
    return np.setdiff1d(np.arange(len(labels)), val_idx), val_idx


def _subsample(ds: Dataset, n: Optional[int], seed: int) -> Dataset:
    """A seeded random `n` rows (the same rows as `ds.shuffle(seed).select(range(n))`, without its cache file)."""
    if not n or n >= len(ds):
        return ds
    return ds.select(np.random.default_rng(seed).permutation(len(ds))[:n])


def load(cfg: DataCfg, seed: int = 0) -> DataBundle:
    """Open the dataset, detect columns, choose the splits; every problem is a UserError."""
    dsd = load_raw(cfg)
    if cfg.train_split not in dsd:
        raise UserError(f"split '{cfg.train_split}' not found; splits: {', '.join(dsd)} (set data.train_split)")
    train = dsd[cfg.train_split]
    image_col = detect_image_column(train, cfg.image_column)
    label_col = detect_label_column(train.features, cfg.label_column, image_col)
    info: dict[str, Any] = {"dataset": cfg.dataset, "config": cfg.config, "image_column": image_col,
                            "label_column": label_col, "train_split": cfg.train_split}
    # tuning never opens the validation split: its validation is carved out of train below
    splits = (dsd, cfg.val_split, cfg.train_split, label_col)
    val_name = None if cfg.tune_fraction else choose_val_split(*splits, info)
    has_val = bool(cfg.tune_fraction) and choose_val_split(*splits, {}) is not None
    dsd, class_names, label_kind = prepare_columns(
        DatasetDict({k: dsd[k] for k in (cfg.train_split, val_name) if k}), image_col, label_col)

    train = dsd[cfg.train_split]
    if val_name:
        val = dsd[val_name]
        info["val_split"] = val_name
        unseen = classes_missing_from(train, val, label_col)
        if unseen:
            names = ", ".join(class_names[i] for i in unseen[:5]) + (", ..." if len(unseen) > 5 else "")
            raise UserError(f"{len(unseen)} class(es) appear in split '{val_name}' but never in "
                            f"'{cfg.train_split}' ({names}): a classifier cannot learn them; fix the splits or "
                            "set data.val_split")
    else:
        train, val = _carve_val(train, label_col, cfg, seed, info, has_val)
    train = _subsample(train, cfg.max_train_samples, seed)
    val = _subsample(val, cfg.max_val_samples, seed)
    info.update(train_samples=len(train), val_samples=len(val), num_classes=len(class_names),
                labels=label_kind, class_names=class_names,
                rows_sha256={"train": rows_sha256(train, image_col, label_col),
                             "val": rows_sha256(val, image_col, label_col)})
    return DataBundle(train, val, image_col, label_col, class_names, info)


def load_split(cfg: DataCfg, split: Optional[str], seed: int = 0, flag: str = "--split") -> DataBundle:
    """One whole split of a dataset, to measure a finished run on (`eval --dataset/--split`): `split`, else
    the dataset's validation split, else its only split (a plain folder of class folders has just `train`).
    Both sides of the bundle are that split; errors name `flag`, the option the user typed."""
    dsd = load_raw(cfg)
    if split is None:
        named = [n for n in VAL_SPLIT_NAMES if n in dsd]
        split = named[0] if named else next(iter(dsd)) if len(dsd) == 1 else None
        if split is None:
            raise UserError(f"{cfg.dataset} has the splits {', '.join(dsd)}; choose one with {flag}")
    if split not in dsd:
        raise UserError(f"split '{split}' not found in {cfg.dataset}; its splits: {', '.join(dsd)} ({flag})")
    image_col = detect_image_column(dsd[split], cfg.image_column)
    label_col = detect_label_column(dsd[split].features, cfg.label_column, image_col)
    dsd, class_names, label_kind = prepare_columns(DatasetDict({split: dsd[split]}), image_col, label_col)
    ds = _subsample(dsd[split], cfg.max_val_samples, seed)
    info = {"dataset": cfg.dataset, "config": cfg.config, "image_column": image_col, "label_column": label_col,
            "val_split": split, "val_samples": len(ds), "num_classes": len(class_names), "labels": label_kind,
            "class_names": class_names}
    return DataBundle(ds, ds, image_col, label_col, class_names, info)


def _carve_val(train: Dataset, label_col: str, cfg: DataCfg, seed: int, info: dict,
               has_val: bool) -> tuple[Dataset, Dataset]:
    """Carve a seeded, stratified validation split out of train, recording exactly which rows. When
    tuning (data.tune_fraction) on a dataset whose validation is itself carved from train, that carve-out
    (data.val_fraction, this seed) is removed first: tuning must never see it."""
    if cfg.tune_fraction and not has_val:
        keep, held = carve(label_array(train, label_col).to_numpy(), cfg.val_fraction, seed)
        train = train.select(keep)
        info["validation_removed"] = {"fraction": cfg.val_fraction, "seed": seed, "rows": len(held)}
    fraction, carve_seed = (cfg.tune_fraction, cfg.tune_seed) if cfg.tune_fraction else (cfg.val_fraction, seed)
    train_idx, val_idx = carve(label_array(train, label_col).to_numpy(), fraction, carve_seed)
    if not len(val_idx):
        raise UserError(f"cannot carve a validation split out of '{cfg.train_split}' ({len(train)} rows, no "
                        "class with two samples); add a validation split or set data.val_split")
    info["val_split"] = {"carved_from": cfg.train_split, "fraction": fraction, "seed": carve_seed,
                         "stratified": True, "purpose": "tune" if cfg.tune_fraction else "validation",
                         "indices": val_idx.tolist()}
    return train.select(train_idx), train.select(val_idx)


def rows_sha256(ds: Dataset, image_col: str, label_col: str) -> str:
    """sha256 over the rows, in order: each label and each image's identity: for an image file its path,
    size and modification time (two swapped class folders, an edited image), for embedded bytes their
    length and CRC-32 (cheap next to decoding them). What --resume compares to continue the same run."""
    h = hashlib.sha256()
    for batch in ds.with_format("arrow", columns=[image_col, label_col]).iter(batch_size=4096):
        h.update(json.dumps(batch.column(label_col).to_pylist()).encode())
        images = batch.column(image_col)
        if not pa.types.is_struct(images.type):  # not an Image feature: its values as they are
            h.update(repr(images.to_pylist()).encode())
            continue
        for item in images.to_pylist():
            h.update(_image_identity(item or {}).encode())
    return h.hexdigest()


def _image_identity(item: dict[str, Any]) -> str:
    data, path = item.get("bytes"), item.get("path")
    if data is not None:
        return f"bytes:{len(data)}:{zlib.crc32(data)};"
    try:
        st = os.stat(path)
        return f"file:{path}:{st.st_size}:{st.st_mtime_ns};"
    except (OSError, TypeError):
        return f"missing:{path};"  # reading it will say why
