"""Checks of a delta file that may have been altered (issue 21.7): sizes bounded before anything is allocated,
class names that can name a classifier's outputs, learned tensors of the model's own dtype and shape, and
only finite values. Each failure is one UserError naming the file and what is wrong; delta.py calls them
in that order (header, metadata, classifier shape from the header, then the tensors themselves)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from . import models
from .errors import UserError, first_line, shorten
from .sections import ModelCfg

# A delta's header holds its tensor table and metadata: a few KB, plus the class names (a million names
# of 15 characters is 16 MiB). safetensors itself would parse up to 100 MB of JSON before we see it.
MAX_HEADER_BYTES = 16 * 2**20
# When the delta does not store the classifier (a strategy with head: false), nothing in the file tells
# how many outputs it has: the class names are then bounded (ImageNet-21k has 21,841) so that a tampered
# list cannot make the rebuilt model allocate gigabytes.
MAX_CLASSES_UNCHECKED = 100_000
ALTERED = "the file was altered: train again or restore it"
# The largest image side a delta may ask predict / eval to resize to: one 8,192 px RGB image is 805 MB of
# floats, and no classifier is trained at more.
MAX_SIDE = 8192


def check_header_size(path: Path) -> None:
    """The 8-byte little-endian header length of a safetensors file, bounded before the header is read."""
    try:
        with open(path, "rb") as f:
            prefix = f.read(8)
    except OSError as e:
        raise UserError(f"cannot read delta {path}: {e.strerror or first_line(e)}") from None
    size = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
    if size < 0:
        raise UserError(f"cannot read delta {path}: shorter than a safetensors header ({ALTERED})")
    if size > MAX_HEADER_BYTES:
        raise UserError(f"delta {path}: its header says {size:,} bytes, more than {MAX_HEADER_BYTES:,} ({ALTERED})")


def check_class_names(path: Path, names: list[Any]) -> None:
    """Unique, non-empty strings without line breaks (each is one line of a model card and of predict)."""
    if not names:
        raise UserError(f"delta {path}: metadata 'class_names' is empty ({ALTERED})")
    seen: set[str] = set()
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip() or name.splitlines() != [name]:
            raise UserError(f"delta {path}: class name {i} is {shorten(name)}; class names are non-empty strings "
                            f"without line breaks ({ALTERED})")
        if name in seen:
            raise UserError(f"delta {path}: class name {shorten(name)} appears twice ({ALTERED})")
        seen.add(name)


def check_data_config(path: Path, config: dict[str, Any]) -> None:
    """The preprocessing predict and eval will apply: an input size of [channels, height, width] within
    MAX_SIDE, and finite per-channel mean and std (std > 0) where recorded."""
    size = config.get("input_size")
    ints = isinstance(size, list) and len(size) == 3 and all(isinstance(v, int) and not isinstance(v, bool)
                                                             for v in size)
    if not ints or not (1 <= size[0] <= 64 and all(1 <= v <= MAX_SIDE for v in size[1:])):
        raise UserError(f"delta {path}: data_config input_size {shorten(size)} is not [channels, height, width] "
                        f"with sides of 1..{MAX_SIDE:,} pixels ({ALTERED})")
    for key in ("mean", "std"):
        values = config.get(key)
        if values is None:
            continue
        numbers = isinstance(values, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                   and math.isfinite(v) for v in values)
        if not numbers or len(values) not in (1, size[0]) or (key == "std" and min(values) <= 0):
            raise UserError(f"delta {path}: data_config {key} {shorten(values)} is not {size[0]} finite numbers"
                            f"{' above 0' if key == 'std' else ''} ({ALTERED})")


def check_fingerprint_parts(path: Path, info: dict[str, Any]) -> None:
    parts = info.get("fingerprint_parts")
    if not isinstance(parts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in parts.items()):
        raise UserError(f"delta {path}: metadata 'fingerprint_parts' is not a mapping of names to hashes ({ALTERED})")


def header_tensors(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{name: (dtype, shape)} as the file's header declares them, read without loading any tensor."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
    except Exception as e:
        raise UserError(f"cannot read delta {path}: {first_line(e)} ({ALTERED})") from None


def check_classifier(path: Path, cfg: ModelCfg, num_classes: int, declared: dict[str, tuple]) -> None:
    """As many class names as the stored classifier has outputs, checked before the model is built (a
    model for a tampered five million classes would allocate gigabytes first)."""
    expected = models.classifier_shapes(cfg, num_classes)
    stored = {k: declared[k][1] for k in expected if k in declared}
    for name, shape in stored.items():
        if shape == expected[name]:
            continue
        if len(shape) == len(expected[name]) and shape[1:] == expected[name][1:]:
            raise UserError(f"delta {path}: {num_classes:,} class names, but its classifier {name} has "
                            f"{shape[0]:,} outputs ({ALTERED})")
        raise UserError(f"delta {path}: {name} has shape {shape}, the model's is {expected[name]} ({ALTERED})")
    if not stored and num_classes > MAX_CLASSES_UNCHECKED:
        raise UserError(f"delta {path}: {num_classes:,} class names, more than {MAX_CLASSES_UNCHECKED:,} for a "
                        f"classifier the delta does not store ({ALTERED})")


def check_tensors(path: Path, own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
    """Each learned tensor has the dtype and shape of the model's own (never cast or broadcast), and
    only finite values (a NaN weight predicts NaN for every image)."""
    for key, value in state.items():
        target = own[key]
        if value.dtype != target.dtype or value.shape != target.shape:
            raise UserError(f"delta {path}: {key} is {str(value.dtype).removeprefix('torch.')} "
                            f"{tuple(value.shape)}, the model's is {str(target.dtype).removeprefix('torch.')} "
                            f"{tuple(target.shape)} ({ALTERED})")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise UserError(f"delta {path}: {key} holds {bad:,} NaN or infinite values; such a model predicts "
                            "nothing meaningful, so it is not loaded")
