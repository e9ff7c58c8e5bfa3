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

from . import strategies  # the registry validates its own node
from . import yamlsafe
from .coerce import coerce
from .errors import UserError, did_you_mean


@dataclass
class ModelCfg:
    """Which timm backbone, and where its starting weights come from."""

    name: str = "resnet18"
    pretrained: bool = False  # timm's pretrained weights (Hub or local cache)
    checkpoint: Optional[str] = None  # local .safetensors/.pth used as starting weights
    kwargs: dict = field(default_factory=dict)  # passed to timm.create_model (drop_path_rate, ...)


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
    # timm Mixup on training batches (alphas of its Beta draws; 0: off), with soft-target cross-entropy
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0  # the share of batches mixed
    skip_bad_images: bool = False
    # decode every image once into memory; batches augmented on the training device (see preload.py)
    preload: Literal["auto", "true", "false"] = "auto"


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
    # timm ModelEmaV3 average of the learned tensors, evaluated and saved as the delta when on
    ema: bool = False
    ema_decay: float = 0.999
    layer_decay: Optional[float] = None  # layer-wise lr decay (timm): lr x layer_decay^(layers below the top)
    keep: Literal["last", "best"] = "last"  # best: the epoch with the best top-1 on a tuning carve-out
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
    _check_ranges(recipe)
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


def _check_ranges(r: Recipe) -> None:
    """Values that are well-typed but meaningless are user errors too."""
    checks = [
        (r.train.epochs >= 1, "train.epochs must be >= 1"),
        (r.train.max_steps is None or r.train.max_steps >= 1, "train.max_steps must be >= 1"),
        (r.train.batch_size >= 1, "train.batch_size must be >= 1"),
        (r.train.eval_batch_size is None or r.train.eval_batch_size >= 1, "train.eval_batch_size must be >= 1"),
        (r.train.lr > 0, "train.lr must be > 0"),
        (r.train.weight_decay >= 0, "train.weight_decay must be >= 0"),
        (r.train.grad_accum_steps >= 1, "train.grad_accum_steps must be >= 1"),
        (r.train.warmup_epochs >= 0, "train.warmup_epochs must be >= 0"),
        (r.train.clip_grad is None or r.train.clip_grad > 0, "train.clip_grad must be > 0"),
        (0 <= r.train.label_smoothing < 1, "train.label_smoothing must be in [0, 1)"),
        (0 <= r.train.ema_decay < 1, "train.ema_decay must be in [0, 1)"),
        (r.train.layer_decay is None or 0 < r.train.layer_decay <= 1, "train.layer_decay must be in (0, 1]"),
        (r.data.mixup >= 0 and r.data.cutmix >= 0, "data.mixup and data.cutmix must be >= 0 (0: off)"),
        (0 <= r.data.mixup_prob <= 1, "data.mixup_prob must be in [0, 1]"),
        (r.train.log_every >= 1, "train.log_every must be >= 1"),
        (r.train.checkpoint_every is None or r.train.checkpoint_every >= 1,
         "train.checkpoint_every must be >= 1 (null: only at epoch ends)"),
        (r.train.keep_checkpoints is None or r.train.keep_checkpoints >= 1,
         "train.keep_checkpoints must be >= 1 (null: keep all)"),
        (0 < r.data.val_fraction < 1, "data.val_fraction must be in (0, 1)"),
        (r.data.tune_fraction is None or 0 < r.data.tune_fraction < 1, "data.tune_fraction must be in (0, 1)"),
        (r.data.num_workers >= 0, "data.num_workers must be >= 0"),
        (r.data.max_train_samples is None or r.data.max_train_samples >= 1, "data.max_train_samples must be >= 1"),
        (r.data.max_val_samples is None or r.data.max_val_samples >= 1, "data.max_val_samples must be >= 1"),
        (0 <= r.data.hflip <= 1, "data.hflip must be in [0, 1]"),
        (0 <= r.data.re_prob <= 1, "data.re_prob must be in [0, 1]"),
        (r.data.scale is None or len(r.data.scale) == 2, "data.scale must be [min, max]"),
        (r.data.ratio is None or len(r.data.ratio) == 2, "data.ratio must be [min, max]"),
        (0 <= r.train.seed < 2**32, "train.seed must be in [0, 2**32)"),
        (not r.model.pretrained or not r.model.checkpoint, "set model.pretrained or model.checkpoint, not both"),
    ]
    for ok, message in checks + _data_checks(r.data, r.model.kwargs.get("in_chans", 3)) + _loop_checks(r):
        if not ok:
            raise UserError(message)


def loop_features(r: Recipe) -> list[str]:
    """The recipe keys on that act on training steps, which the exact solver (no steps) cannot honour."""
    d, t = r.data, r.train
    return [key for key, on in (("data.mixup", d.mixup > 0), ("data.cutmix", d.cutmix > 0), ("train.ema", t.ema),
                                ("train.layer_decay", t.layer_decay is not None), ("train.keep: best", t.keep == "best"))
            if on]


def _loop_checks(r: Recipe) -> list[tuple[bool, str]]:
    features = loop_features(r)
    return [
        (r.train.keep != "best" or r.data.tune_fraction is not None,
         "train.keep: best picks the epoch by its validation top-1, so it needs validation carved out of train "
         "(data.tune_fraction); on the real validation split it would report a peeked number"),
        (r.train.solver != "exact" or not features,
         f"train.solver: exact solves the classifier in one go, with no steps to apply {', '.join(features)} to "
         "(set train.solver: loop or auto)"),
        (r.train.cache_features != "on" or not (r.data.mixup > 0 or r.data.cutmix > 0),
         "train.cache_features: on cannot mix images (data.mixup / data.cutmix): cached features are computed once "
         "from unmixed images (set cache_features: auto or off)"),
    ]


INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos", "random")


def _data_checks(d: DataCfg, channels: Any) -> list[tuple[bool, str]]:
    """The image pipeline's values that timm or torchvision would reject only once images flow."""
    size = d.input_size
    sizes = [size] if isinstance(size, int) else list(size or [])
    checks = [
        (size is None or (isinstance(size, int) or len(size) in (2, 3)) and all(v > 0 for v in sizes),
         "data.input_size must be a positive integer, [height, width] or [channels, height, width]"),
        (not isinstance(size, list) or len(size) != 3 or size[0] == channels,
         f"data.input_size has {sizes[0] if sizes else '?'} channels, the model takes {channels} "
         "(model.kwargs.in_chans)"),
        (d.crop_pct is None or 0 < d.crop_pct <= 1, "data.crop_pct must be in (0, 1]"),
        (d.color_jitter >= 0, "data.color_jitter must be >= 0"),
        (d.interpolation is None or d.interpolation in INTERPOLATIONS,
         f"data.interpolation must be one of {list(INTERPOLATIONS)}"),
        (d.scale is None or len(d.scale) == 2 and 0 < d.scale[0] <= d.scale[1] <= 1, "data.scale must be [min, max] with 0 < min <= max <= 1"),
        (d.ratio is None or len(d.ratio) == 2 and 0 < d.ratio[0] <= d.ratio[1], "data.ratio must be [min, max] with 0 < min <= max"),
    ]
    for key in ("mean", "std"):
        values = getattr(d, key)
        checks.append((values is None or len(values) in (1, channels),
                       f"data.{key} must have 1 or {channels} values (one per channel)"))
    checks.append((d.std is None or all(v > 0 for v in d.std), "data.std must be > 0 (images are divided by it)"))
    return checks


# --------------------------------------------------------------------------------------------
# overrides


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` strings (values parsed as YAML) to a raw recipe; returns a new dict."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' must look like section.key=value")
        dotted, text = item.split("=", 1)
        keys = dotted.strip().split(".")
        if len(keys) < 2 or not all(keys):
            raise UserError(f"override '{item}' must name section.key (e.g. train.epochs=3)")
        if keys[0] not in ALL_SECTIONS:
            raise UserError(f"override '{item}': unknown section '{keys[0]}'{did_you_mean(keys[0], ALL_SECTIONS)}")
        try:
            value = yamlsafe.load(text, f"override '{dotted.strip()}'") if text.strip() else None
        except yamlsafe.Refused:
            raise  # a bomb or a duplicate key, never taken as a plain string
        except UserError:
            value = text  # an unparsable value is taken as a plain string
        _set_path(raw, keys, value, item)
    return raw


def _set_path(node: Any, keys: list[str], value: Any, item: str) -> None:
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise UserError(f"override '{item}': '{key}' is not an index of a {len(node)}-item list")
            key = int(key)
        elif isinstance(node, dict):
            if not last and node.get(key) is None:
                node[key] = {}
        else:
            raise UserError(f"override '{item}': '{keys[i - 1]}' holds a value, not a section")
        if last:
            node[key] = value
        else:
            node = node[key]
