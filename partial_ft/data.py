"""Hugging Face datasets in, torch DataLoaders out.

`data.dataset` may be the built-in `digits`, a Hub id, a save_to_disk folder, an imagefolder folder,
or parquet/arrow files (a file, a glob or a folder). Whatever the source, the same steps follow:
detect the image and label columns, pick or carve the validation split, then apply timm transforms
lazily in DataLoader workers.
"""
from __future__ import annotations

import glob
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import datasets
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value

from .errors import UserError
from .recipe import DataCfg

VAL_SPLIT_NAMES = ("validation", "valid", "val", "test")
IMAGE_NAMES = ("image", "img", "images", "pixel_values", "picture", "file", "path", "image_path")
LABEL_NAMES = ("label", "labels", "fine_label", "class", "target", "category", "y")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class DataBundle:
    """The two splits, ready for transforms, and what we learned about them."""

    train: Dataset
    val: Dataset
    image_column: str
    label_column: str
    class_names: list[str]
    info: dict[str, Any] = field(default_factory=dict)  # recorded in the run folder

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# --------------------------------------------------------------------------------------------
# built-in data


def digits(seed: int = 0, val_fraction: float = 0.2) -> DatasetDict:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes) as a DatasetDict with an
    Image and a ClassLabel column and a fixed, seeded, stratified train/validation split. Offline."""
    import numpy as np
    from PIL import Image as PILImage
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.clip(bunch.images * 16, 0, 255).astype(np.uint8)  # 0..16 -> 0..255 grayscale
    features = Features({"image": Image(), "label": ClassLabel(names=[str(i) for i in range(10)])})
    full = Dataset.from_dict(
        {"image": [PILImage.fromarray(p, mode="L") for p in pixels], "label": bunch.target.tolist()},
        features=features,
    )
    split = full.train_test_split(test_size=val_fraction, seed=seed, stratify_by_column="label")
    return DatasetDict(train=split["train"], validation=split["test"])


BUILTIN = {"digits": digits}


# --------------------------------------------------------------------------------------------
# loading


def load_raw(cfg: DataCfg) -> DatasetDict:
    """Open `data.dataset` as a DatasetDict, whatever its form."""
    source = cfg.dataset
    if source in BUILTIN:
        return BUILTIN[source]()
    path = Path(source).expanduser()
    try:
        if path.is_dir():
            return _as_dict(_load_dir(path))
        if path.is_file():
            return _as_dict(_load_files([str(path)]))
        if any(ch in source for ch in "*?["):
            files = sorted(glob.glob(source, recursive=True))
            if not files:
                raise UserError(f"no files match {source}")
            return _as_dict(_load_files(files))
        if source.startswith((".", "/", "~")) or source.count("/") > 1:
            raise UserError(f"dataset path does not exist: {source}")
        return _as_dict(datasets.load_dataset(source, cfg.config))
    except UserError:
        raise
    except Exception as e:  # not found on the Hub / offline / unreadable files
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load dataset '{source}': {message}") from None


def _load_dir(path: Path) -> Dataset | DatasetDict:
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return datasets.load_from_disk(str(path))
    tables = sorted(p for ext in ("parquet", "arrow") for p in path.rglob(f"*.{ext}"))
    if tables:
        return _load_files([str(p) for p in tables])
    return datasets.load_dataset("imagefolder", data_dir=str(path))


def _load_files(files: list[str]) -> DatasetDict:
    kinds = {Path(f).suffix.lstrip(".") for f in files}
    if len(kinds) != 1 or not kinds <= {"parquet", "arrow"}:
        raise UserError(f"expected .parquet or .arrow files, got {', '.join(sorted(kinds))}")
    return datasets.load_dataset(kinds.pop(), data_files={"train": files})


def _as_dict(ds: Dataset | DatasetDict) -> DatasetDict:
    return ds if isinstance(ds, DatasetDict) else DatasetDict(train=ds)


# --------------------------------------------------------------------------------------------
# columns


def detect_image_column(features: Features, override: Optional[str], sample: dict) -> str:
    """The Image feature, else a column of image bytes or image paths."""
    if override:
        if override not in features:
            raise UserError(f"data.image_column '{override}' not found; columns: {', '.join(features)}")
        return override
    images = [c for c, f in features.items() if isinstance(f, Image)]
    if images:
        return images[0]
    for c in sorted(features, key=lambda c: c.lower() not in IMAGE_NAMES):
        value = sample.get(c)
        if isinstance(value, dict) and ("bytes" in value or "path" in value):
            return c
        if isinstance(value, (bytes, bytearray)):
            return c
        if isinstance(value, str) and value.lower().endswith(IMAGE_SUFFIXES):
            return c
    raise UserError(f"no image column found; columns: {', '.join(features)} (set data.image_column)")


def detect_label_column(features: Features, override: Optional[str], image_column: str) -> str:
    """The ClassLabel feature (preferring common names), else an integer or string column."""
    if override:
        if override not in features:
            raise UserError(f"data.label_column '{override}' not found; columns: {', '.join(features)}")
        return override
    by_name = sorted((c for c in features if c != image_column), key=lambda c: c.lower() not in LABEL_NAMES)
    for c in by_name:
        if isinstance(features[c], ClassLabel):
            return c
    for c in by_name:
        f = features[c]
        if isinstance(f, Value) and (f.dtype.startswith(("int", "uint")) or f.dtype in ("string", "large_string")):
            if c.lower() in LABEL_NAMES or len(by_name) == 1:
                return c
    raise UserError(f"no label column found; columns: {', '.join(features)} (set data.label_column)")


def _encode_labels(dsd: DatasetDict, column: str) -> tuple[DatasetDict, list[str]]:
    """Make the label column a ClassLabel shared by every split; returns the class names."""
    feature = dsd[next(iter(dsd))].features[column]
    if isinstance(feature, ClassLabel):
        return dsd, list(feature.names)
    values = sorted({v for split in dsd.values() for v in split.unique(column) if v is not None})
    if feature.dtype in ("string", "large_string"):
        names = [str(v) for v in values]  # string labels -> ids in sorted order (saved in the run folder)
    else:
        if values and min(values) < 0:
            raise UserError(f"label column '{column}' holds negative labels ({min(values)})")
        names = [str(i) for i in range(int(max(values)) + 1)] if values else []
    label = ClassLabel(names=names)
    return DatasetDict({k: v.cast_column(column, label) for k, v in dsd.items()}), names


def _check_labels(ds: Dataset, column: str, num_classes: int, split: str) -> None:
    values = ds.unique(column)
    bad = [v for v in values if v is None or not 0 <= v < num_classes]
    if bad:
        raise UserError(f"split '{split}' has labels outside 0..{num_classes - 1} in column '{column}': "
                        f"{sorted(map(str, bad))[:5]}")


# --------------------------------------------------------------------------------------------


def load(cfg: DataCfg, seed: int = 0) -> DataBundle:
    """Open the dataset, detect columns, choose the splits; every problem is a UserError."""
    dsd = load_raw(cfg)
    if cfg.train_split not in dsd:
        raise UserError(f"split '{cfg.train_split}' not found; splits: {', '.join(dsd)} (set data.train_split)")
    train = dsd[cfg.train_split]
    image_col = detect_image_column(train.features, cfg.image_column, train[0] if len(train) else {})
    label_col = detect_label_column(train.features, cfg.label_column, image_col)
    if not isinstance(train.features[image_col], Image):
        dsd = DatasetDict({k: v.cast_column(image_col, Image()) for k, v in dsd.items()})
    info: dict[str, Any] = {"dataset": cfg.dataset, "image_column": image_col, "label_column": label_col}

    if cfg.val_split is not None:
        if cfg.val_split not in dsd:
            raise UserError(f"split '{cfg.val_split}' not found; splits: {', '.join(dsd)} (set data.val_split)")
        val_name = cfg.val_split
    else:
        val_name = next((s for s in VAL_SPLIT_NAMES if s in dsd and s != cfg.train_split), None)
    keep = [cfg.train_split] + ([val_name] if val_name else [])
    dsd, class_names = _encode_labels(DatasetDict({k: dsd[k] for k in keep}), label_col)
    train = dsd[cfg.train_split]
    if val_name:
        val = dsd[val_name]
        info["val_split"] = val_name
    else:  # carve a seeded, stratified validation split out of train
        parts = train.train_test_split(test_size=cfg.val_fraction, seed=seed, stratify_by_column=label_col)
        train, val = parts["train"], parts["test"]
        info["val_split"] = {"carved_from": cfg.train_split, "fraction": cfg.val_fraction, "seed": seed}
    for name, ds in ((cfg.train_split, train), (val_name or "validation", val)):
        _check_labels(ds, label_col, len(class_names), name)
    if cfg.max_train_samples and cfg.max_train_samples < len(train):
        train = train.shuffle(seed=seed).select(range(cfg.max_train_samples))
    if cfg.max_val_samples and cfg.max_val_samples < len(val):
        val = val.shuffle(seed=seed).select(range(cfg.max_val_samples))
    info.update(train_samples=len(train), val_samples=len(val), class_names=class_names)
    return DataBundle(train, val, image_col, label_col, class_names, info)


# --------------------------------------------------------------------------------------------
# transforms and loaders


def transforms(cfg: DataCfg, data_config: dict) -> tuple[Any, Any, bool]:
    """timm train and eval transforms; returns (train, eval, train_is_deterministic)."""
    from timm.data import create_transform

    common = dict(input_size=data_config["input_size"], interpolation=data_config.get("interpolation", "bilinear"),
                  mean=data_config["mean"], std=data_config["std"], crop_pct=data_config.get("crop_pct"),
                  crop_mode=data_config.get("crop_mode"))
    eval_tf = create_transform(is_training=False, **common)
    if not cfg.augment:
        return eval_tf, eval_tf, True
    train_tf = create_transform(
        is_training=True, scale=tuple(cfg.scale) if cfg.scale else None, ratio=tuple(cfg.ratio) if cfg.ratio else None,
        hflip=cfg.hflip, color_jitter=cfg.color_jitter, auto_augment=cfg.auto_augment, re_prob=cfg.re_prob,
        **{k: v for k, v in common.items() if k not in ("crop_pct", "crop_mode")},
    )
    return train_tf, eval_tf, False


class ImageDataset(torch.utils.data.Dataset):
    """A HF split as (tensor, label) pairs; images decoded and converted to RGB lazily, per item."""

    def __init__(self, hf: Dataset, image_column: str, label_column: str, transform: Any, split: str,
                 skip_bad_images: bool = False):
        self.hf = hf.select_columns([image_column, label_column])
        self.image_column, self.label_column = image_column, label_column
        self.transform, self.split, self.skip_bad_images = transform, split, skip_bad_images

    def __len__(self) -> int:
        return len(self.hf)

    def __getitem__(self, index: int):
        try:
            row = self.hf[index]
            image = row[self.image_column]
            if image.mode != "RGB":  # grayscale, RGBA, palette -> RGB
                image = image.convert("RGBA" if image.mode == "P" else image.mode).convert("RGB")
            return self.transform(image), row[self.label_column]
        except Exception as e:
            if self.skip_bad_images:
                return None
            raise UserError(f"cannot read image {index} of the {self.split} split: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__} "
                            "(set data.skip_bad_images: true to skip such images)") from None


def collate(batch: list) -> Optional[tuple[torch.Tensor, torch.Tensor, int]]:
    """Stack (image, label) pairs, dropping unreadable ones; returns (x, y, skipped)."""
    good = [b for b in batch if b is not None]
    if not good:
        return None
    x = torch.stack([b[0] for b in good])
    y = torch.tensor([b[1] for b in good], dtype=torch.long)
    return x, y, len(batch) - len(good)


def loader(ds: ImageDataset, batch_size: int, shuffle: bool, num_workers: int, seed: int,
           pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader with seeded shuffling and persistent workers."""
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, collate_fn=collate,
        persistent_workers=num_workers > 0, pin_memory=pin_memory, drop_last=False,
        generator=torch.Generator().manual_seed(seed),
    )


def steps_per_epoch(n: int, batch_size: int, processes: int) -> int:
    return math.ceil(math.ceil(n / processes) / batch_size)


def save_info(bundle: DataBundle, path: Path) -> None:
    path.write_text(json.dumps(bundle.info, indent=2))
