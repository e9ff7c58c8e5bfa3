"""Opening `data.dataset`, whatever its form, as a DatasetDict whose datasets know their split names:
the built-in `digits`, a Hub id, a save_to_disk folder, an imagefolder folder, or parquet/arrow files
(a file, a glob or a folder). Every problem the user can fix is a one-line UserError."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import datasets
import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, NamedSplit

from . import walk
from .data_columns import IMAGE_SUFFIXES
from .errors import UserError, first_line
from .sections import DataCfg

SAVED_MARKERS = ("dataset_dict.json", "state.json")  # what save_to_disk writes


def digits() -> DatasetDict:
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
    split = full.train_test_split(test_size=0.2, seed=0, stratify_by_column="label")
    return DatasetDict(train=split["train"], validation=split["test"])


BUILTIN = {"digits": digits}


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
            files = [str(f) for f in walk.glob(str(path)) if f.is_file()]  # never loops on linked folders
            if not files:
                raise UserError(f"no files match {source}")
            return _named(_load_files(files))
        if _path_like(source):
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


def _path_like(source: str) -> bool:
    """Whether `source` can only be meant as a local path (a Hub id is `name` or `owner/name`)."""
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source


def hub_id(source: str) -> Optional[str]:
    """`source` when data.dataset names a Hugging Face Hub dataset (not built in, not a local path, file
    or pattern), else None."""
    if source in BUILTIN or any(ch in source for ch in "*?[") or _path_like(source) or \
            Path(source).expanduser().exists():
        return None
    return source


def _load_dir(path: Path, config: Optional[str]) -> Dataset | DatasetDict:
    """A save_to_disk folder, else whatever `load_dataset(folder)` infers: imagefolder layout (labels from
    subfolder names), parquet/arrow files, with splits from file or folder names (train/, test-*.parquet)."""
    if any((path / marker).is_file() for marker in SAVED_MARKERS):
        return datasets.load_from_disk(str(path))
    empty = _empty_class_folders(path)
    if empty:
        raise UserError(f"class folder {empty[0]} is empty (beside folders of images): loaded as an image folder, "
                        "that class would silently not exist; add its images or remove the folder")
    return datasets.load_dataset(str(path), config)


def _empty_class_folders(root: Path) -> list[Path]:
    """Folders holding no file at all beside sibling folders that hold images: in an imagefolder layout
    (labels from folder names) such a class would be dropped without a word."""
    empty = []
    for folder, dirs, _ in os.walk(root):
        subs = [Path(folder) / d for d in sorted(dirs)]
        if any(f.suffix.lower() in IMAGE_SUFFIXES for s in subs for f in s.iterdir() if f.is_file()):
            empty += [s for s in subs if not any(p.is_file() for p in s.rglob("*"))]
    return empty


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
