"""What a run leaves behind: the delta (only what learned), exports, and resumable checkpoints.

A delta (`delta.safetensors`) holds the learned values only: each partly learned weight's learned
slice (`<module>.weight_learned`), the whole parameters that learned (the new classifier, ...) and the
BatchNorm statistics that training updated. Everything fixed is rebuilt from the base recorded in its
metadata: the timm model, its starting weights (timm's pretrained, a local file, or the seeded random
init) and the seeded strategy. A fingerprint (sha256 of every fixed value) recorded at training time
is checked on loading, so a base that cannot be reproduced exactly is refused, never silently used.

A checkpoint (`checkpoints/<name>/`) is Accelerate's save_state (model, optimizer, scheduler, RNG
states) plus `train_state.json`, the loop's position. It is written to a temporary folder and renamed
into place; `checkpoints/latest` names the newest complete one and is itself replaced atomically, so
a crash mid-write leaves the previous checkpoint in charge.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .errors import UserError, first_line
from .partial import updates_norm_stats

DELTA_NAME = "delta.safetensors"
DELTA_FORMAT = "partial_ft.delta/1"
CHECKPOINTS = "checkpoints"
STATE_NAME = "train_state.json"


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / Accelerate / torch.compile wrappers."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return getattr(model, "_orig_mod", model)


# --------------------------------------------------------------------------------------------
# what a delta stores, and the fingerprint of everything else


def _learned(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's own tensors that a delta stores (see delta_state)."""

    state = {name: p for name, p in model.named_parameters() if p.requires_grad}
    for prefix, module in model.named_modules():
        if updates_norm_stats(module):
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                if getattr(module, name, None) is not None:
                    state[f"{prefix}.{name}" if prefix else name] = getattr(module, name)
    return state


def delta_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The learned values (parameters that require grad: learned slices and whole tensors) and the
    running statistics of BatchNorm layers that update them; nothing fixed. CPU copies."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in _learned(unwrap(model)).items()}


def fingerprint(model: nn.Module) -> str:
    """sha256 over every value a delta does not store (fixed parameters, fixed slices, buffers, the
    learned/fixed index maps), in name order. Computed right after apply_strategy, before any forward."""
    model = unwrap(model)
    stored = set(_learned(model))
    h = hashlib.sha256()
    tensors = dict(model.named_parameters())
    tensors.update(model.named_buffers())
    for name in sorted(tensors):
        if name in stored:
            continue
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # the raw bytes, without a copy
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# saving and loading deltas


def save_delta(path: Path, model: nn.Module, recipe: Any, class_names: list[str], data_config: dict,
               base_fingerprint: str) -> Path:
    """Write the delta with everything needed to rebuild its base in the metadata; returns the path."""
    import timm
    from safetensors.torch import save_file

    from . import __version__
    from .recipe import ModelCfg

    model_cfg = dataclasses.asdict(recipe.model)
    if model_cfg["checkpoint"]:  # the delta may be loaded from another working directory
        model_cfg["checkpoint"] = str(Path(model_cfg["checkpoint"]).resolve())
    state = delta_state(model)
    params = {name for name, _ in unwrap(model).named_parameters()}
    meta = {
        "format": DELTA_FORMAT,
        "model": model_cfg,
        "weights": _weights_source(ModelCfg(**model_cfg), recipe.train.seed),
        "strategy": recipe.strategy,
        "seed": recipe.train.seed,
        "class_names": list(class_names),
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
        "versions": {"partial_ft": __version__, "torch": torch.__version__, "timm": timm.__version__},
        "fingerprint": base_fingerprint,
        "learned_params": sum(v.numel() for k, v in state.items() if k in params),
    }
    _atomic(path, lambda tmp: save_file(state, str(tmp), metadata={k: json.dumps(v) for k, v in meta.items()}))
    return path


def delta_path(source: str | Path) -> Path:
    """A delta file, or a run folder holding one."""
    path = Path(source)
    if path.is_dir():
        path = path / DELTA_NAME
    if not path.is_file():
        raise UserError(f"no delta at {path} (a run writes {DELTA_NAME} when it finishes)")
    return path


def read_info(source: str | Path) -> dict[str, Any]:
    """The delta's metadata (base model, strategy, seed, class names, data config, versions, ...)."""
    from safetensors import safe_open

    path = delta_path(source)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
        info = {k: json.loads(v) for k, v in raw.items()}
    except Exception as e:
        raise UserError(f"cannot read delta {path}: {first_line(e)}") from None
    if info.get("format") != DELTA_FORMAT:
        raise UserError(f"{path} is not a partial_ft delta (format {info.get('format')!r}, expected {DELTA_FORMAT})")
    return info


def load_delta(source: str | Path) -> nn.Module:
    """Rebuild a trained model from its delta: the base (timm model, its starting weights or seeded
    random init, the seeded strategy) plus the learned values. Refuses a base whose fixed values differ
    from those the delta was trained on. Returns the model on CPU in eval mode."""
    import timm
    from safetensors.torch import load_file

    from . import __version__, models
    from .recipe import ModelCfg
    from .strategies import apply_strategy

    path = delta_path(source)
    info = read_info(path)
    cfg = ModelCfg(**info["model"])
    seed, num_classes = int(info["seed"]), len(info["class_names"])
    model, init_model = models.build(cfg, num_classes, seed=seed)
    apply_strategy(model, info["strategy"], seed=seed, init_model=init_model)
    if fingerprint(model) != info["fingerprint"]:
        trained = info.get("versions", {})
        raise UserError(
            f"delta {path} does not fit its rebuilt base: the fixed weights of {_weights_source(cfg, seed)} differ "
            f"from those it was trained on (trained with torch {trained.get('torch')}, timm {trained.get('timm')}, "
            f"partial_ft {trained.get('partial_ft')}; here torch {torch.__version__}, timm {timm.__version__}, "
            f"partial_ft {__version__}); its predictions would be wrong, so it is "
            "not loaded (use the same weights and versions, or export the run where it was trained)")
    state = load_file(str(path))
    own = dict(model.named_parameters())
    own.update(model.named_buffers())
    expected = set(_learned(model))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise UserError(f"delta {path} does not match its strategy: missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for key, value in state.items():
            if own[key].shape != value.shape:
                raise UserError(f"delta {path}: {key} has shape {tuple(value.shape)}, "
                                f"the model {tuple(own[key].shape)}")
            own[key].copy_(value)
    return model.eval()


def _weights_source(cfg: Any, seed: int) -> str:
    """Where a base's starting weights come from, in words."""
    if cfg.checkpoint:
        return f"'{cfg.name}' with weights from {cfg.checkpoint}"
    if cfg.pretrained:
        return f"'{cfg.name}' with timm's pretrained weights"
    return f"'{cfg.name}' at its random init (seed {seed})"


def export(source: str | Path, out: str | Path) -> tuple[Path, dict[str, Any]]:
    """Write a plain timm state dict (full weights, learned and fixed joined) that timm loads without
    partial_ft; returns (path, delta metadata)."""
    from safetensors.torch import save_file

    from . import merged_state_dict

    info = read_info(source)
    state = {k: v.contiguous() for k, v in merged_state_dict(load_delta(source)).items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", "architecture": info["model"]["name"], "num_classes": str(len(info["class_names"])),
            "class_names": json.dumps(info["class_names"])}
    _atomic(out, lambda tmp: save_file(state, str(tmp), metadata=meta))
    return out, info


# --------------------------------------------------------------------------------------------
# resumable checkpoints


# keys that may change between a run and its resumption: they do not change the numbers
RESUME_MAY_DIFFER = {"train.progress", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                     "train.nan_policy"}


def check_run_dir(recipe: Any, overwrite: bool = False, resume: bool = False) -> Optional[Path]:
    """Decide, without writing anything, whether the run folder can be used: refuses an output path that is
    a file or not writable, and a folder holding a run unless --overwrite (start again) or --resume
    (continue it). Returns the checkpoint to resume from, if any. Cheap: runs before any data or model."""
    run_dir = recipe.run_dir
    if overwrite and resume:
        raise UserError("pass --resume or --overwrite, not both")
    _check_writable(run_dir)
    if not (run_dir.is_dir() and any(run_dir.iterdir())):
        return None
    last = latest(run_dir)
    finished = (run_dir / "summary.json").is_file()
    if overwrite:
        return None
    if not resume:
        if finished:
            raise UserError(f"run folder {run_dir} already holds a run that finished; pass --overwrite to replace "
                            "it or set output.dir")
        state = f"stopped at step {_step(last)}" if last else "that stopped before its first checkpoint"
        raise UserError(f"run folder {run_dir} already holds a run {state}; pass --resume to continue it from "
                        "its last checkpoint, --overwrite to replace it, or set output.dir")
    if finished:
        raise UserError(f"the run in {run_dir} already finished: nothing to resume (--overwrite runs it again)")
    _check_same_recipe(recipe, run_dir)
    return last  # None: stopped before its first checkpoint, so it starts from the beginning


def _check_writable(run_dir: Path) -> None:
    """output.dir must be a folder (or not exist yet) somewhere this process may create files."""
    import tempfile

    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"output.dir {run_dir} is a file, not a folder")
    parent = run_dir
    while not parent.exists():  # the nearest existing folder is where mkdir would start
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"output.dir {run_dir}: {parent} is a file, not a folder")
    try:  # a real probe: os.access says yes to root, and knows nothing of read-only or special file systems
        with tempfile.TemporaryFile(dir=parent, prefix=".partial_ft-probe-"):
            pass
    except OSError as e:
        raise UserError(f"output.dir {run_dir} is not writable: cannot create files in {parent} "
                        f"({e.strerror or type(e).__name__})") from None


def start_run_dir(recipe: Any, overwrite: bool = False, resume: bool = False) -> Optional[Path]:
    """Make the run folder ready (check_run_dir's decisions, then --overwrite removes the old run);
    returns the checkpoint to resume from, if any."""
    run_dir = recipe.run_dir
    last = check_run_dir(recipe, overwrite, resume)
    if overwrite and run_dir.is_dir() and any(run_dir.iterdir()):
        shutil.rmtree(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create run folder {run_dir}: {e.strerror}") from None
    return last


def _step(folder: Optional[Path]) -> int:
    return json.loads((folder / STATE_NAME).read_text())["step"] if folder else 0


def _check_same_recipe(recipe: Any, run_dir: Path) -> None:
    """Resuming with another recipe would silently mix two runs: refuse, naming what differs."""
    import yaml

    from .recipe import from_dict

    saved = run_dir / "recipe.yaml"
    if not saved.is_file():
        raise UserError(f"{run_dir} holds no recipe.yaml: not a run folder to resume (--overwrite starts afresh)")
    old, new = _flat(from_dict(yaml.safe_load(saved.read_text())).to_dict()), _flat(recipe.to_dict())
    differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and k not in RESUME_MAY_DIFFER)
    if differ:
        raise UserError(f"cannot resume {run_dir} with a different recipe: {', '.join(differ)} differ "
                        f"from its recipe.yaml (--overwrite starts afresh)")


def _flat(resolved: dict) -> dict[str, Any]:
    """{'train.lr': 0.001, ..., 'strategy': {...}}; the output section names the folder, not the run."""
    out: dict[str, Any] = {}
    for section, node in resolved.items():
        if section == "strategy" or not isinstance(node, dict):
            out[section] = node
        elif section != "output":
            out.update({f"{section}.{key}": value for key, value in node.items()})
    return out


def latest(run_dir: Path) -> Optional[Path]:
    """The newest complete checkpoint of a run, or None."""
    pointer = run_dir / CHECKPOINTS / "latest"
    if not pointer.is_file():
        return None
    folder = run_dir / CHECKPOINTS / pointer.read_text().strip()
    return folder if (folder / STATE_NAME).is_file() else None


def save_checkpoint(acc: Any, run_dir: Path, progress: dict[str, Any], keep: Optional[int] = 2) -> Path:
    """Accelerate's save_state plus the loop's position, into a temporary folder renamed into place;
    then point `latest` at it and keep the newest `keep` checkpoints (None: all). Every process calls this."""
    root = run_dir / CHECKPOINTS
    name = f"step-{progress['step']:08d}-epoch-{progress['epoch']}-batch-{progress['batches']}"
    tmp, final = root / f".tmp-{name}", root / name
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    acc.wait_for_everyone()
    if acc.is_main_process:
        (tmp / STATE_NAME).write_text(json.dumps(progress) + "\n")
        _fsync_tree(tmp)  # the data is on disk before any name points at it
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _atomic(root / "latest", lambda p: p.write_text(name + "\n"))
        prune_checkpoints(root, keep)
    acc.wait_for_everyone()
    return final


def prune_checkpoints(root: Path, keep: Optional[int]) -> None:
    """Bound disk use: keep the newest `keep` complete checkpoints (never the one `latest` names), and no
    leftovers of interrupted writes."""
    pointer = root / "latest"
    current = pointer.read_text().strip() if pointer.is_file() else None
    folders = sorted((f for f in root.iterdir() if f.is_dir()), key=lambda f: f.name)  # step-<zero padded>
    complete = [f for f in folders if f.name.startswith("step-") and f.name != current]
    older = complete if keep is None else complete[-(keep - 1):] if keep > 1 else []  # + current = keep
    kept = {f.name for f in older}
    for old in folders:
        if old.name != current and old.name not in kept:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(acc: Any, folder: Path) -> dict[str, Any]:
    """Restore model, optimizer and RNG states; returns the loop's position (and the scheduler's state:
    plain data, never a pickle)."""
    if any(folder.glob("custom_checkpoint_*.pkl")):  # Accelerate would unpickle it with weights_only=False
        raise UserError(f"checkpoint {folder} was written by an older partial_ft (a pickled scheduler); resume it "
                        "with that version, or --overwrite to start again")
    acc.load_state(str(folder))
    return json.loads((folder / STATE_NAME).read_text())


def remove_checkpoints(run_dir: Path) -> None:
    """A finished run keeps its delta, not the (whole-model) checkpoints."""
    shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)


def _atomic(path: Path, write) -> None:
    """Write through a temporary sibling, then rename: readers see the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # as any new file (some writers create private files)
    os.replace(tmp, path)


def _fsync_tree(folder: Path) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            with open(f, "rb") as handle:
                os.fsync(handle.fileno())
