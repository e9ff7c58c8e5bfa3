"""What a run learned: the delta (save, load, fingerprint) and `merged_state_dict` (export.py writes it
out for plain timm).

A delta (`delta.safetensors`) holds the learned values only: each partly learned weight's learned
slice (`<module>.weight_learned`), the whole parameters that learned (the new classifier, ...) and the
BatchNorm statistics that training updated. Everything fixed is rebuilt from the base recorded in its
metadata: the timm model, its starting weights (timm's pretrained, a local file, or the seeded random
init) and the seeded strategy. A fingerprint (sha256 of every fixed value) recorded at training time
is checked on loading, so a base that cannot be reproduced exactly is refused, never silently used.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import timm
import torch
from accelerate.utils import extract_model_from_parallel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from . import delta_checks, models
from .atomic import write_atomic
from .errors import UserError, first_line
from .learned import learned_tensors
from .sections import ModelCfg, check_model_name
from .strategies import apply_strategy, for_export
from .version import __version__

DELTA_NAME = "delta.safetensors"
DELTA_FORMAT = "partial_ft.delta/1"
# metadata a delta must hold to be rebuilt, and the JSON type of each
REQUIRED_META = {"format": str, "model": dict, "strategy": (dict, list), "seed": int, "class_names": list,
                 "data_config": dict, "fingerprint": str}


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A plain state dict with timm's keys and full tensors (learned and fixed parts joined), loadable
    into a fresh `timm.create_model(name, num_classes=...)`."""
    model = for_export(extract_model_from_parallel(model))  # strategies' own modules merged back into timm's
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def delta_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The learned values (parameters that require grad: learned slices and whole tensors) and the
    running statistics of BatchNorm layers that update them; nothing fixed. CPU copies."""
    model = extract_model_from_parallel(model)
    return {k: v.detach().cpu().contiguous().clone() for k, v in learned_tensors(model).items()}


def fingerprint_parts(model: nn.Module) -> dict[str, str]:
    """sha256 over every value a delta does not store (fixed parameters, fixed slices, buffers, the
    learned/fixed index maps), in name order, one per top-level module (so a mismatch can say where).
    Computed right after apply_strategy, before any forward."""
    model = extract_model_from_parallel(model)
    stored = set(learned_tensors(model))
    tensors = dict(model.named_parameters())
    tensors.update(model.named_buffers())
    hashes: dict[str, Any] = {}
    for name in sorted(tensors):
        if name in stored:
            continue
        t = tensors[name].detach().cpu().contiguous()
        h = hashes.setdefault(name.split(".", 1)[0], hashlib.sha256())
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # the raw bytes, without a copy
    return {part: h.hexdigest() for part, h in hashes.items()}


def fingerprint(parts: dict[str, str]) -> str:
    """One sha256 over fingerprint_parts(model): what a delta records and checks."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def save_delta(path: Path, model: nn.Module, recipe: Any, class_names: list[str], data_config: dict,
               base: dict[str, str], extra: dict[str, Any] | None = None) -> Path:
    """Write the delta with everything needed to rebuild its base in the metadata; returns the path.
    `base` is fingerprint_parts of the model before training; `extra` adds metadata (e.g. a strategy's
    recorded selection)."""
    model_cfg = dataclasses.asdict(recipe.model)
    if model_cfg["checkpoint"]:  # the delta may be loaded from another working directory
        model_cfg["checkpoint"] = str(Path(model_cfg["checkpoint"]).resolve())
    state = delta_state(model)
    params = {name for name, _ in extract_model_from_parallel(model).named_parameters()}
    meta = {
        "format": DELTA_FORMAT,
        "model": model_cfg,
        "weights": _weights_source(ModelCfg(**model_cfg), recipe.train.seed),
        "strategy": recipe.strategy,
        "seed": recipe.train.seed,
        "class_names": list(class_names),
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
        "versions": {"partial_ft": __version__, "torch": torch.__version__, "timm": timm.__version__},
        "fingerprint": fingerprint(base),
        "fingerprint_parts": base,
        "learned_params": sum(v.numel() for k, v in state.items() if k in params),
        **(extra or {}),
    }
    return write_atomic(path, lambda tmp: save_file(state, str(tmp), metadata={k: json.dumps(v) for k, v in meta.items()}))


def delta_path(source: str | Path) -> Path:
    """A delta file, or a folder (run folder, Hub-layout folder) holding one."""
    path = Path(source)
    if path.is_dir():
        path = path / DELTA_NAME
    if not path.is_file():
        raise UserError(f"no delta at {path} (a run writes {DELTA_NAME} when it finishes)")
    return path


def read_info(source: str | Path) -> dict[str, Any]:
    """The delta's metadata (base model, strategy, seed, class names, data config, versions, ...), each
    required field checked for presence and type."""
    path = delta_path(source)
    delta_checks.check_header_size(path)  # before safetensors parses it
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
        info = {k: json.loads(v) for k, v in raw.items()}
    except Exception as e:
        raise UserError(f"cannot read delta {path}: {first_line(e)} (the file is damaged: train again or "
                        "restore it)") from None
    if info.get("format") != DELTA_FORMAT:
        raise UserError(f"{path} is not a partial_ft delta (format {info.get('format')!r}, expected {DELTA_FORMAT})")
    for key, kind in REQUIRED_META.items():
        if not isinstance(info.get(key), kind) or isinstance(info.get(key), bool):
            raise UserError(f"delta {path}: metadata '{key}' is missing or not a {_type_name(kind)} (the file was "
                            "altered: train again or restore it)")
    try:
        ModelCfg(**info["model"])
    except TypeError as e:
        raise UserError(f"delta {path}: metadata 'model' is not a model section ({first_line(e)})") from None
    delta_checks.check_class_names(path, info["class_names"])
    delta_checks.check_data_config(path, info["data_config"])
    delta_checks.check_fingerprint_parts(path, info)
    return info


def _type_name(kind: Any) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({str: "string", int: "integer", dict: "mapping", list: "list"}[k] for k in kinds)


def rebuild(source: str | Path) -> nn.Module:
    """Rebuild a trained model from its delta (`RUN_DIR/delta.safetensors`, or the folder holding it).

    The base (timm model, its starting weights or seeded random init, the seeded strategy) is rebuilt
    and checked against the fingerprint of the fixed values the delta was trained on: a base that
    differs (other weights, another release's random generator) raises UserError naming the parts that
    differ, instead of predicting garbage. Returns the model on CPU in eval mode.
    """
    path = delta_path(source)
    info = read_info(path)
    cfg = ModelCfg(**info["model"])
    check_model_name(cfg.name)  # (a recipe's is checked with the recipe)
    seed, num_classes = int(info["seed"]), len(info["class_names"])
    delta_checks.check_classifier(path, cfg, num_classes, delta_checks.header_tensors(path))
    model, init_model = models.build(cfg, num_classes, seed=seed)
    apply_strategy(model, info["strategy"], seed=seed, init_model=init_model)
    parts = fingerprint_parts(model)
    if fingerprint(parts) != info["fingerprint"]:
        raise UserError(_mismatch(path, cfg, seed, info, parts))
    _copy_in(model, _read_tensors(path), path)
    models.set_run_config(model, info["data_config"], info["class_names"])  # timm's data config = the run's
    return model.eval()


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:
        raise UserError(f"cannot read delta {path}: {first_line(e)} (the file is damaged: train again or "
                        "restore it)") from None


def _copy_in(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    own = dict(model.named_parameters())
    own.update(model.named_buffers())
    expected = set(learned_tensors(model))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise UserError(f"delta {path} does not match its strategy: missing {missing[:3]}, unexpected {extra[:3]}")
    delta_checks.check_tensors(path, own, state)
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value)


def _mismatch(path: Path, cfg: ModelCfg, seed: int, info: dict[str, Any], parts: dict[str, str]) -> str:
    """The error for a rebuilt base whose fixed values differ: which parts, which versions."""
    recorded = info["fingerprint_parts"]
    differ = sorted(k for k in recorded.keys() | parts.keys() if recorded.get(k) != parts.get(k))
    if not differ:  # the parts agree, so the recorded whole-fingerprint was edited
        return (f"delta {path}: its metadata 'fingerprint' is not the hash of its own 'fingerprint_parts' (the file "
                "was altered: train again or restore it)")
    where = f" (differing parts: {', '.join(differ[:6])}{', ...' if len(differ) > 6 else ''})"
    trained = info.get("versions") if isinstance(info.get("versions"), dict) else {}
    return (f"delta {path} does not fit its rebuilt base: the fixed weights of {_weights_source(cfg, seed)} differ "
            f"from those it was trained on{where} (trained with torch {trained.get('torch')}, timm "
            f"{trained.get('timm')}, partial_ft {trained.get('partial_ft')}; here torch {torch.__version__}, timm "
            f"{timm.__version__}, partial_ft {__version__}); its predictions would be wrong, so it is not loaded "
            "(use the same weights and versions, or export the run where it was trained)")


def _weights_source(cfg: Any, seed: int) -> str:
    """Where a base's starting weights come from, in words."""
    if cfg.checkpoint:
        return f"'{cfg.name}' with weights from {cfg.checkpoint}"
    if cfg.pretrained:
        return f"'{cfg.name}' with timm's pretrained weights"
    return f"'{cfg.name}' at its random init (seed {seed})"
