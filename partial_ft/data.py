"""Hugging Face datasets in, torch DataLoaders out.

`data.dataset` may be the built-in `digits`, a Hub id, a save_to_disk folder, an imagefolder folder,
or parquet/arrow files (a file, a glob or a folder). Whatever the source, the same steps follow:
detect the image and label columns, pick or carve the validation split, then apply timm transforms
lazily in DataLoader workers. Every problem the user can fix is a one-line UserError raised by `load()`,
before any run folder exists; only an unreadable image is met later, while training.
"""
from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, NamedSplit, Value

from .errors import UserError, first_line
from .recipe import DataCfg

VAL_SPLIT_NAMES = ("validation", "valid", "val", "test")
IMAGE_NAMES = ("image", "img", "images", "pixel_values", "picture", "file", "path", "image_path")
LABEL_NAMES = ("label", "labels", "fine_label", "class", "target", "category", "y")
ID_NAMES = ("id", "idx", "index", "image_id", "file_id", "__index_level_0__")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SAVED_MARKERS = ("dataset_dict.json", "state.json")  # what save_to_disk writes
INDEX_COLUMN = "__index__"  # each row's index in its source split, for error messages


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


# --------------------------------------------------------------------------------------------
# built-in data


def digits(seed: int = 0, val_fraction: float = 0.2) -> DatasetDict:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes) as a DatasetDict with an
    Image and a ClassLabel column and a fixed, seeded, stratified train/validation split. Offline."""
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
# opening the source


def load_raw(cfg: DataCfg) -> DatasetDict:
    """Open `data.dataset` as a DatasetDict whose datasets know their split names, whatever its form."""
    source = cfg.dataset
    if source in BUILTIN:
        return _named(BUILTIN[source]())
    path = Path(source).expanduser()
    try:
        if path.is_dir():
            return _named(_load_dir(path, cfg.config))
        if path.is_file():
            return _named(_load_files([str(path)]))
        if any(ch in source for ch in "*?["):
            files = sorted(f for f in glob.glob(str(path), recursive=True) if Path(f).is_file())
            if not files:
                raise UserError(f"no files match {source}")
            return _named(_load_files(files))
        if source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source:
            raise UserError(f"dataset path does not exist: {source}")
        return _named(datasets.load_dataset(source, cfg.config))
    except UserError:
        raise
    except Exception as e:  # not on the Hub / offline and not cached / unreadable files
        reason = first_line(e)
        if "OfflineModeIsEnabled" in reason or "Couldn't reach" in reason:
            reason += " (offline, and not in the local datasets cache)"
        raise UserError(f"cannot load dataset '{source}' (not a local path, so tried as a Hugging Face Hub "
                        f"dataset id): {reason}" if not path.exists() else
                        f"cannot load dataset '{source}': {reason}") from None


def _load_dir(path: Path, config: Optional[str]) -> Dataset | DatasetDict:
    """A save_to_disk folder, else whatever `load_dataset(folder)` infers: imagefolder layout (labels from
    subfolder names), parquet/arrow files, with splits from file or folder names (train/, test-*.parquet)."""
    if any((path / marker).is_file() for marker in SAVED_MARKERS):
        return datasets.load_from_disk(str(path))
    return datasets.load_dataset(str(path), config)


def _load_files(files: list[str]) -> DatasetDict:
    """Explicit parquet or arrow files: one `train` split."""
    kinds = {Path(f).suffix.lstrip(".").lower() for f in files}
    if len(kinds) != 1 or not kinds <= {"parquet", "arrow"}:
        raise UserError(f"expected .parquet or .arrow files, got {', '.join(sorted(kinds))}")
    return datasets.load_dataset(kinds.pop(), data_files={"train": files})


def _named(ds: Dataset | DatasetDict) -> DatasetDict:
    """A DatasetDict in which each dataset's `.split` is its key (error messages name the source split)."""
    dsd = ds if isinstance(ds, DatasetDict) else DatasetDict(train=ds)
    out = {}
    for name, split in dsd.items():
        if split.split is None or str(split.split) != name:
            split = Dataset(split.data, info=split.info.copy(), split=NamedSplit(name),
                            indices_table=split._indices)
        out[name] = split
    return DatasetDict(out)



# --------------------------------------------------------------------------------------------
# columns


def _columns(features: Features) -> str:
    return ", ".join(f"{c} ({_kind(f)})" for c, f in features.items() if c != INDEX_COLUMN)


def _kind(feature: Any) -> str:
    if isinstance(feature, Value):
        return feature.dtype
    return type(feature).__name__ if not isinstance(feature, dict) else "struct"


def _is_bytes_struct(feature: Any) -> bool:
    return isinstance(feature, dict) and "bytes" in feature and set(feature) <= {"bytes", "path"}


def detect_image_column(ds: Dataset, override: Optional[str]) -> str:
    """The Image feature (preferring common names), else a column of image bytes or image file paths."""
    features = ds.features
    if override:
        if override not in features:
            raise UserError(f"data.image_column '{override}' not found; columns: {_columns(features)}")
        return override
    by_name = sorted((c for c in features if c != INDEX_COLUMN), key=lambda c: c.lower() not in IMAGE_NAMES)
    for c in by_name:
        if isinstance(features[c], Image):
            return c
    for c in by_name:
        f = features[c]
        if _is_bytes_struct(f) or (isinstance(f, Value) and f.dtype in ("binary", "large_binary")):
            return c
    strings = [c for c in by_name if isinstance(features[c], Value) and features[c].dtype in ("string", "large_string")]
    if strings and len(ds):
        first = ds.select_columns(strings)[0]
        for c in strings:
            if isinstance(first[c], str) and first[c].lower().endswith(IMAGE_SUFFIXES):
                return c
    raise UserError(f"no image column found; columns: {_columns(features)} (set data.image_column)")


def detect_label_column(features: Features, override: Optional[str], image_column: str) -> str:
    """The ClassLabel feature (preferring common names), else an integer or string column: a commonly
    named one, else the only string column, else the only integer column that is not an id."""
    if override:
        if override not in features:
            raise UserError(f"data.label_column '{override}' not found; columns: {_columns(features)}")
        if override == image_column:
            raise UserError(f"data.label_column '{override}' is also the image column")
        return override
    by_name = sorted((c for c in features if c not in (image_column, INDEX_COLUMN)),
                     key=lambda c: c.lower() not in LABEL_NAMES)
    for c in by_name:
        if isinstance(features[c], ClassLabel):
            return c
    ints = [c for c in by_name if _is_int(features[c])]
    strings = [c for c in by_name if _is_string(features[c])]
    named = [c for c in ints + strings if c.lower() in LABEL_NAMES]
    if named:
        return named[0]
    if len(strings) == 1:
        return strings[0]
    not_ids = [c for c in ints if c.lower() not in ID_NAMES]
    if not strings and len(not_ids) == 1:
        return not_ids[0]
    raise UserError(f"no label column found; columns: {_columns(features)} (set data.label_column)")


def _is_int(feature: Any) -> bool:
    return isinstance(feature, Value) and feature.dtype.startswith(("int", "uint"))


def _is_string(feature: Any) -> bool:
    return isinstance(feature, Value) and feature.dtype in ("string", "large_string")


def _label_array(ds: Dataset, column: str) -> pa.ChunkedArray:
    """The label column as arrow (respecting any selection), without decoding images."""
    return ds.select_columns([column]).with_format("arrow")[:][column]


def _encode_labels(dsd: DatasetDict, column: str) -> tuple[DatasetDict, list[str], str]:
    """Make the label column a ClassLabel shared by every split; returns (splits, class names, kind).

    The column is replaced, not cast: datasets' cast of a non-image column rewrites every row (images
    included) into a cache file, which for a save_to_disk folder would land inside the user's data."""
    feature = dsd[next(iter(dsd))].features[column]
    if isinstance(feature, ClassLabel):
        return dsd, list(feature.names), "ClassLabel"
    if not (_is_int(feature) or _is_string(feature)):
        raise UserError(f"label column '{column}' holds {_kind(feature)} values; labels must be class ids "
                        "(integers) or class names (strings)")
    values = set()
    for split in dsd.values():
        values.update(v for v in pc.unique(_label_array(split, column)).to_pylist() if v is not None)
    if _is_string(feature):
        names, kind = sorted(values), "strings (id = position in class_names, names sorted)"
    else:
        if values and min(values) < 0:
            bad = sorted(v for v in values if v < 0)[:5]
            raise UserError(f"labels outside the class range: column '{column}' holds negative labels {bad}")
        names, kind = [str(i) for i in range(int(max(values)) + 1)] if values else [], "integers"
    out = {}
    for name, split in dsd.items():
        labels = _label_array(split, column).combine_chunks()
        if _is_string(feature):
            labels = pc.index_in(labels, value_set=pa.array(names, type=labels.type))
        labels = labels.cast(pa.int64())
        out[name] = split.remove_columns([column]).add_column(column, labels, feature=ClassLabel(names=names))
    return DatasetDict(out), names, kind


def _check_labels(ds: Dataset, column: str, num_classes: int, split: str) -> None:
    """Every label is a class id 0..num_classes-1 (not missing, not -1 for 'unlabelled')."""
    values = pc.unique(_label_array(ds, column)).to_pylist()
    bad = [v for v in values if v is None or not 0 <= v < num_classes]
    if bad:
        shown = ", ".join("missing" if v is None else str(v) for v in sorted(bad, key=lambda v: (v is None, v))[:5])
        raise UserError(f"labels outside the class range: split '{split}' column '{column}' holds {shown} "
                        f"(classes are 0..{num_classes - 1})")


def _labelled(ds: Dataset, column: str) -> bool:
    """False for a split whose labels are all missing or negative (an unlabelled test split)."""
    if column not in ds.features or not len(ds):
        return False
    values = pc.unique(_label_array(ds, column)).to_pylist()
    return any(v is not None and not (isinstance(v, int) and v < 0) for v in values)


# --------------------------------------------------------------------------------------------
# splits


def carve(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratified (train, val) indices: `fraction` of each class (at least one sample of every
    class with two or more, never all of a class) goes to validation."""
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        if len(members) < 2:
            continue
        val.append(members[:min(max(round(fraction * len(members)), 1), len(members) - 1)])
    val_idx = np.sort(np.concatenate(val)) if val else np.array([], dtype=np.int64)
    return np.setdiff1d(np.arange(len(labels)), val_idx), val_idx


def _subsample(ds: Dataset, n: Optional[int], seed: int) -> Dataset:
    """A seeded random `n` rows (the same rows as `ds.shuffle(seed).select(range(n))`, without its cache file)."""
    if not n or n >= len(ds):
        return ds
    return ds.select(np.random.default_rng(seed).permutation(len(ds))[:n])


def _choose_val_split(dsd: DatasetDict, cfg: DataCfg, label_column: str, info: dict) -> Optional[str]:
    if cfg.val_split is not None:
        if cfg.val_split not in dsd:
            raise UserError(f"split '{cfg.val_split}' not found; splits: {', '.join(dsd)} (set data.val_split)")
        if cfg.val_split == cfg.train_split:
            raise UserError(f"data.val_split and data.train_split are both '{cfg.val_split}'")
        return cfg.val_split
    for name in VAL_SPLIT_NAMES:
        if name in dsd and name != cfg.train_split:
            if _labelled(dsd[name], label_column):
                return name
            info.setdefault("unlabelled_splits_skipped", []).append(name)
    return None


# --------------------------------------------------------------------------------------------


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
    val_name = _choose_val_split(dsd, cfg, label_col, info)
    dsd, class_names, label_kind = _prepare_splits(
        DatasetDict({k: dsd[k] for k in (cfg.train_split, val_name) if k}), image_col, label_col)

    train = dsd[cfg.train_split]
    if val_name:
        val = dsd[val_name]
        info["val_split"] = val_name
    else:  # carve a seeded, stratified validation split out of train, and record exactly which rows
        train_idx, val_idx = carve(_label_array(train, label_col).to_numpy(), cfg.val_fraction, seed)
        if not len(val_idx):
            raise UserError(f"cannot carve a validation split out of '{cfg.train_split}' ({len(train)} rows, no "
                            "class with two samples); add a validation split or set data.val_split")
        train, val = train.select(train_idx), train.select(val_idx)
        info["val_split"] = {"carved_from": cfg.train_split, "fraction": cfg.val_fraction, "seed": seed,
                             "stratified": True, "indices": val_idx.tolist()}
    train = _subsample(train, cfg.max_train_samples, seed)
    val = _subsample(val, cfg.max_val_samples, seed)
    info.update(train_samples=len(train), val_samples=len(val), num_classes=len(class_names),
                labels=label_kind, class_names=class_names)
    return DataBundle(train, val, image_col, label_col, class_names, info)


def _prepare_splits(dsd: DatasetDict, image_col: str, label_col: str) -> tuple[DatasetDict, list[str], str]:
    """Check the kept splits, make images an Image feature and labels a shared ClassLabel, and add each
    row's index in its source split (so an unreadable image can be named). Returns (splits, names, kind)."""
    for name, split in dsd.items():
        missing = [c for c in (image_col, label_col) if c not in split.features]
        if missing:
            raise UserError(f"split '{name}' has no column {', '.join(map(repr, missing))}; "
                            f"columns: {_columns(split.features)}")
        if not len(split):
            raise UserError(f"split '{name}' is empty")
    if not isinstance(dsd[next(iter(dsd))].features[image_col], Image):  # bytes or paths, decoded lazily
        dsd = DatasetDict({k: v.cast_column(image_col, Image()) for k, v in dsd.items()})
    dsd, class_names, label_kind = _encode_labels(dsd, label_col)
    if len(class_names) < 2:
        raise UserError(f"label column '{label_col}' has {len(class_names)} class; need at least 2")
    for name, split in dsd.items():
        _check_labels(split, label_col, len(class_names), name)
    dsd = DatasetDict({k: v.remove_columns([c for c in v.column_names if c == INDEX_COLUMN])
                       .add_column(INDEX_COLUMN, np.arange(len(v))) for k, v in dsd.items()})
    return dsd, class_names, label_kind
