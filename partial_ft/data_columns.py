"""Which columns hold the images and the labels, and the labels as one ClassLabel shared by every split
(checked: class ids 0..n-1, nothing missing). Works on arrow columns, without decoding images."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value

from .errors import UserError

IMAGE_NAMES = ("image", "img", "images", "pixel_values", "picture", "file", "path", "image_path")
LABEL_NAMES = ("label", "labels", "fine_label", "class", "target", "category", "y")
ID_NAMES = ("id", "idx", "index", "image_id", "file_id", "__index_level_0__")
# not timm's get_img_extensions(): it knows .png/.jpg/.jpeg only, and PIL reads these others as well
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
INDEX_COLUMN = "__index__"  # each row's index in its source split, for error messages
VAL_SPLIT_NAMES = ("validation", "valid", "val", "test")  # looked for in this order when data.val_split is unset


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
    misfit = [c for c in by_name if c.lower() in LABEL_NAMES]  # named like labels, but neither ints nor strings
    if misfit:
        raise UserError(f"label column '{misfit[0]}' holds {_kind(features[misfit[0]])} values; labels must be "
                        "class ids (integers) or class names (strings)")
    raise UserError(f"no label column found; columns: {_columns(features)} (set data.label_column)")


def _is_int(feature: Any) -> bool:
    return isinstance(feature, Value) and feature.dtype.startswith(("int", "uint"))


def _is_string(feature: Any) -> bool:
    return isinstance(feature, Value) and feature.dtype in ("string", "large_string")


def label_array(ds: Dataset, column: str) -> pa.ChunkedArray:
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
        values.update(v for v in pc.unique(label_array(split, column)).to_pylist() if v is not None)
    if _is_string(feature):
        names, kind = sorted(values), "strings (id = position in class_names, names sorted)"
    else:
        if values and min(values) < 0:
            bad = sorted(v for v in values if v < 0)[:5]
            raise UserError(f"labels outside the class range: column '{column}' holds negative labels {bad}")
        _check_label_bound(values, sum(len(split) for split in dsd.values()), column)
        names, kind = [str(i) for i in range(int(max(values)) + 1)] if values else [], "integers"
    out = {}
    for name, split in dsd.items():
        labels = label_array(split, column).combine_chunks()
        if _is_string(feature):
            labels = pc.index_in(labels, value_set=pa.array(names, type=labels.type))
        labels = labels.cast(pa.int64())
        out[name] = split.remove_columns([column]).add_column(column, labels, feature=ClassLabel(names=names))
    return DatasetDict(out), names, kind


def _check_label_bound(values: set[int], rows: int, column: str) -> None:
    """Integer labels are class ids 0..K-1, so the largest defines K. One beyond the number of rows cannot
    be a class id (most classes would have no example; a label of 2e9 would ask for a 2e9-way classifier)."""
    if values and max(values) + 1 > max(rows, 2):
        raise UserError(f"label column '{column}' holds the integer label {max(values)}, which would make "
                        f"{max(values) + 1:,} classes for {rows:,} rows: integer labels are class ids 0..K-1; "
                        "map them to consecutive ids, or use class-name strings")


def classes_missing_from(train: Dataset, other: Dataset, column: str) -> list[int]:
    """Class ids that `other` holds but `train` never does: a classifier cannot learn them."""
    seen = set(pc.unique(label_array(train, column)).to_pylist())
    return sorted(v for v in pc.unique(label_array(other, column)).to_pylist() if v not in seen)


def _check_labels(ds: Dataset, column: str, num_classes: int, split: str) -> None:
    """Every label is a class id 0..num_classes-1 (not missing, not -1 for 'unlabelled')."""
    values = pc.unique(label_array(ds, column)).to_pylist()
    bad = [v for v in values if v is None or not 0 <= v < num_classes]
    if bad:
        shown = ", ".join("missing" if v is None else str(v) for v in sorted(bad, key=lambda v: (v is None, v))[:5])
        raise UserError(f"labels outside the class range: split '{split}' column '{column}' holds {shown} "
                        f"(classes are 0..{num_classes - 1})")


def is_labelled(ds: Dataset, column: str) -> bool:
    """False for a split whose labels are all missing or negative (an unlabelled test split)."""
    if column not in ds.features or not len(ds):
        return False
    values = pc.unique(label_array(ds, column)).to_pylist()
    return any(v is not None and not (isinstance(v, int) and v < 0) for v in values)


def choose_val_split(dsd: DatasetDict, val_split: Optional[str], train_split: str, label_column: str,
                     info: dict) -> Optional[str]:
    """The validation split: data.val_split, else the first of VAL_SPLIT_NAMES with labels (unlabelled ones
    are noted in `info`), else None (carved out of train)."""
    if val_split is not None:
        if val_split not in dsd:
            raise UserError(f"split '{val_split}' not found; splits: {', '.join(dsd)} (set data.val_split)")
        if val_split == train_split:
            raise UserError(f"data.val_split and data.train_split are both '{val_split}'")
        return val_split
    for name in VAL_SPLIT_NAMES:
        if name in dsd and name != train_split:
            if is_labelled(dsd[name], label_column):
                return name
            info.setdefault("unlabelled_splits_skipped", []).append(name)
    return None


def prepare_columns(dsd: DatasetDict, image_col: str, label_col: str) -> tuple[DatasetDict, list[str], str]:
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
