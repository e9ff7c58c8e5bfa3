"""Recipes: YAML -> typed, validated dataclasses, with `section.key=value` overrides.

A recipe is plain data. It never names code to import; unknown keys are refused with a suggestion;
the resolved recipe (every default filled in) is saved with each run.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from . import dotted, strategies, yamlsafe  # (the registry validates its own node)
from .coerce import coerce
from .errors import UserError, did_you_mean


@dataclass
class ModelCfg:
    """Which timm backbone, and where its starting weights come from."""

    name: str = "resnet18"
    pretrained: bool = False  # timm's pretrained weights (Hub or local cache)
    checkpoint: Optional[str] = None  # local .safetensors/.pth used as starting weights
    kwargs: dict = field(default_factory=dict)  # passed to timm.create_model (drop_path_rate, ...)

    def validate(self) -> None:
        """Raise UserError for values that are well-typed but meaningless (as strategy options do)."""
        _refuse([(not self.pretrained or not self.checkpoint, "set model.pretrained or model.checkpoint, not both")])


@dataclass
class DataCfg:
    """Which dataset, which columns and splits, and how images become tensors (timm transforms)."""

    dataset: str = "digits"
    config: Optional[str] = None  # Hub dataset configuration name
    image_column: Optional[str] = None  # detected when None
    label_column: Optional[str] = None  # detected when None
    train_split: str = "train"
    val_split: Optional[str] = None  # None: validation, else test, else carved out of train
    val_fraction: float = 0.1  # used only when the dataset has no validation split
    # tuning: validate on a stratified, seeded carve-out of train (and train on the rest) instead of the
    # validation split, which is then never opened (tools/sweep.py's `tune:` sets these)
    tune_fraction: Optional[float] = None
    tune_seed: int = 0
    max_train_samples: Optional[int] = None
    max_val_samples: Optional[int] = None
    num_workers: int = 2
    # timm data config; None means "resolved from the model" (resolve_model_data_config)
    input_size: Optional[Union[int, list[int]]] = None
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    interpolation: Optional[str] = None
    crop_pct: Optional[float] = None
    # training augmentation (timm create_transform options); augment: false = eval transform
    augment: bool = True
    scale: Optional[list[float]] = None
    ratio: Optional[list[float]] = None
    hflip: float = 0.5
    color_jitter: float = 0.0
    auto_augment: Optional[str] = None
    re_prob: float = 0.0
    skip_bad_images: bool = False
    # decode every image once into memory; batches augmented on the training device (see preload.py)
    preload: Literal["auto", "true", "false"] = "auto"

    def validate(self, channels: Any = 3) -> None:
        """Raise UserError for values that are well-typed but meaningless, or that timm or torchvision would
        reject only once images flow; `channels`: what the model takes. (A value only timm can judge, such
        as data.interpolation or data.auto_augment, is checked by building the transforms.)"""
        size = self.input_size
        sizes = [size] if isinstance(size, int) else list(size or [])
        checks = [
            (0 < self.val_fraction < 1, "data.val_fraction must be in (0, 1)"),
            (self.tune_fraction is None or 0 < self.tune_fraction < 1, "data.tune_fraction must be in (0, 1)"),
            (self.num_workers >= 0, "data.num_workers must be >= 0"),
            (self.max_train_samples is None or self.max_train_samples >= 1, "data.max_train_samples must be >= 1"),
            (self.max_val_samples is None or self.max_val_samples >= 1, "data.max_val_samples must be >= 1"),
            (0 <= self.hflip <= 1, "data.hflip must be in [0, 1]"),
            (0 <= self.re_prob <= 1, "data.re_prob must be in [0, 1]"),
            (self.scale is None or len(self.scale) == 2, "data.scale must be [min, max]"),
            (self.ratio is None or len(self.ratio) == 2, "data.ratio must be [min, max]"),
            (size is None or (isinstance(size, int) or len(size) in (2, 3)) and all(v > 0 for v in sizes),
             "data.input_size must be a positive integer, [height, width] or [channels, height, width]"),
            (not isinstance(size, list) or len(size) != 3 or size[0] == channels,
             f"data.input_size has {sizes[0] if sizes else '?'} channels, the model takes {channels} "
             "(model.kwargs.in_chans)"),
            (self.crop_pct is None or 0 < self.crop_pct <= 1, "data.crop_pct must be in (0, 1]"),
            (self.color_jitter >= 0, "data.color_jitter must be >= 0"),
            (self.scale is None or len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1] <= 1,
             "data.scale must be [min, max] with 0 < min <= max <= 1"),
            (self.ratio is None or len(self.ratio) == 2 and 0 < self.ratio[0] <= self.ratio[1],
             "data.ratio must be [min, max] with 0 < min <= max"),
        ]
        checks += [(getattr(self, key) is None or len(getattr(self, key)) in (1, channels),
                    f"data.{key} must have 1 or {channels} values (one per channel)") for key in ("mean", "std")]
        checks.append((self.std is None or all(v > 0 for v in self.std),
                       "data.std must be > 0 (images are divided by it)"))
        _refuse(checks)


@dataclass
class TrainCfg:
    """The optimisation: timm optimizer and scheduler factories, run length, precision, seed."""

    epochs: int = 1
    max_steps: Optional[int] = None  # optimizer updates; stops early when reached
    batch_size: int = 64  # per process
    eval_batch_size: Optional[int] = None  # default: 4 x batch_size on a GPU, 2 x on the CPU
    lr: float = 1e-3
    opt: str = "adamw"  # any timm optimizer name (create_optimizer_v2)
    weight_decay: float = 0.05
    momentum: float = 0.9
    sched: str = "cosine"  # any timm scheduler name (create_scheduler_v2)
    warmup_epochs: int = 0
    min_lr: float = 0.0
    clip_grad: Optional[float] = None  # max gradient norm
    label_smoothing: float = 0.0
    grad_accum_steps: int = 1
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    cache_features: Literal["auto", "on", "off"] = "auto"  # train from cached features of the fixed prefix
    # exact: solve the classifier to convergence on cached features (L-BFGS, L2 strength chosen on a
    # carve-out of train); loop: the epoch loop; auto: exact when only the classifier learns on cached features
    solver: Literal["auto", "exact", "loop"] = "auto"
    channels_last: bool = False  # NHWC memory layout (faster convolutions on recent GPUs)
    compile: bool = False  # torch.compile the model (inductor) through Accelerate
    seed: int = 0
    log_every: int = 10  # steps between progress-bar refreshes of loss / throughput
    checkpoint_every: Optional[int] = 500  # steps between resumable checkpoints (also one at each epoch end)
    keep_checkpoints: Optional[int] = 2  # newest checkpoints kept while running (null: all); a finished run keeps none
    nan_policy: Literal["stop", "skip_batch"] = "stop"  # a NaN/inf loss: stop the run, or skip that batch
    progress: bool = True
    log_with: list[str] = field(default_factory=list)  # Accelerate trackers: tensorboard, wandb, mlflow, ...

    def validate(self) -> None:
        """Raise UserError for values that are well-typed but meaningless."""
        _refuse([
            (self.epochs >= 1, "train.epochs must be >= 1"),
            (self.max_steps is None or self.max_steps >= 1, "train.max_steps must be >= 1"),
            (self.batch_size >= 1, "train.batch_size must be >= 1"),
            (self.eval_batch_size is None or self.eval_batch_size >= 1, "train.eval_batch_size must be >= 1"),
            (self.lr > 0, "train.lr must be > 0"),
            (self.weight_decay >= 0, "train.weight_decay must be >= 0"),
            (self.grad_accum_steps >= 1, "train.grad_accum_steps must be >= 1"),
            (self.warmup_epochs >= 0, "train.warmup_epochs must be >= 0"),
            (self.clip_grad is None or self.clip_grad > 0, "train.clip_grad must be > 0"),
            (0 <= self.label_smoothing < 1, "train.label_smoothing must be in [0, 1)"),
            (self.log_every >= 1, "train.log_every must be >= 1"),
            (self.checkpoint_every is None or self.checkpoint_every >= 1,
             "train.checkpoint_every must be >= 1 (null: only at epoch ends)"),
            (self.keep_checkpoints is None or self.keep_checkpoints >= 1,
             "train.keep_checkpoints must be >= 1 (null: keep all)"),
            (0 <= self.seed < 2**32, "train.seed must be in [0, 2**32)"),
        ])


@dataclass
class OutputCfg:
    """Where the run folder goes."""

    dir: Optional[str] = None  # default: runs/<recipe name>


SECTIONS: dict[str, type] = {"model": ModelCfg, "data": DataCfg, "train": TrainCfg, "output": OutputCfg}
ALL_SECTIONS = ["model", "data", "strategy", "train", "output"]


@dataclass
class Recipe:
    """A whole, validated recipe. `strategy` stays a plain node: the strategy registry validates it."""

    name: str = "recipe"
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    strategy: Any = field(default_factory=lambda: {"name": "full"})
    train: TrainCfg = field(default_factory=TrainCfg)
    output: OutputCfg = field(default_factory=OutputCfg)

    @property
    def run_dir(self) -> Path:
        """The run folder: output.dir, or runs/<recipe name>."""
        return Path(self.output.dir) if self.output.dir else Path("runs") / self.name

    def to_dict(self) -> dict:
        """The resolved recipe as plain data, in section order (what recipe.yaml in a run holds)."""
        out = {s: dataclasses.asdict(getattr(self, s)) for s in ("model", "data")}
        out["strategy"] = copy.deepcopy(self.strategy)
        out.update({s: dataclasses.asdict(getattr(self, s)) for s in ("train", "output")})
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def validate(self) -> None:
        """Each section validates itself, in recipe order (the strategy node: its registry, when parsed)."""
        self.model.validate()
        self.data.validate(channels=self.model.kwargs.get("in_chans", 3))
        self.train.validate()  # (output.dir: whether the folder can be used is rundir.check_folder's, on disk)


# --------------------------------------------------------------------------------------------
# loading


def load(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read a recipe file, apply `section.key=value` overrides, validate everything."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe file not found: {path}")
    raw = yamlsafe.load_file(path, "recipe") or {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a recipe must be a mapping of sections {ALL_SECTIONS}")
    raw = apply_overrides(raw, overrides)
    return from_dict(raw, name=path.stem)


def from_dict(raw: dict, name: str = "recipe") -> Recipe:
    """Build a validated Recipe from plain data (as read from YAML)."""
    for section in raw:
        if section not in ALL_SECTIONS:
            raise UserError(f"unknown recipe section '{section}'{did_you_mean(section, ALL_SECTIONS)}")
    recipe = Recipe(name=name)
    for section, cls in SECTIONS.items():
        node = raw.get(section) or {}
        if not isinstance(node, dict):
            raise UserError(f"recipe section '{section}' must be a mapping, got {type(node).__name__}")
        setattr(recipe, section, _build_section(section, cls, node))
    if "strategy" in raw and raw["strategy"] is not None:
        recipe.strategy = raw["strategy"]
    recipe.strategy = strategies.normalize_spec(recipe.strategy)
    recipe.validate()
    return recipe


def _build_section(section: str, cls: type, node: dict) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in node.items():
        if key not in names:
            hint = did_you_mean(key, names) or did_you_mean(f"{section}.{key}", all_keys())
            raise UserError(f"unknown key '{section}.{key}'{hint}")
        values[key] = coerce(value, hints[key], f"{section}.{key}")
    return cls(**values)


def all_keys() -> list[str]:
    """Every `section.key` of the recipe schema (the strategy section aside: the registry owns it)."""
    return [f"{s}.{f.name}" for s, c in SECTIONS.items() for f in dataclasses.fields(c)]


def _refuse(checks: list[tuple[bool, str]]) -> None:
    """The first failed (ok, message) check, as a UserError."""
    for ok, message in checks:
        if not ok:
            raise UserError(message)


# --------------------------------------------------------------------------------------------
# overrides


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` strings (values parsed as YAML) to a raw recipe; returns a new dict."""
    return dotted.apply(raw, overrides, ALL_SECTIONS)
