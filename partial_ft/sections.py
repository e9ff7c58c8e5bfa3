"""The recipe's sections as typed dataclasses, each key with its default and meaning (docs/recipe.md's
tables are generated from them), each section validating its own values. recipe.py assembles them.
"""
from __future__ import annotations

import copy
import difflib
import os
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

import accelerate.tracking
import timm
from accelerate.utils import LoggerType
from timm.optim import create_optimizer_v2, list_optimizers
from timm.scheduler import create_scheduler_v2
from torch import nn

from .errors import UserError, did_you_mean, first_line

HUB_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")  # timm loads these from the Hub / a folder by itself
# DataLoader workers per CPU this process may use. Workers decode and augment images: past one per core
# they only queue for it, and a few per core still cover reads that wait on a slow disk or network. A
# number far beyond (data.num_workers=100000) forks until the machine runs out of processes and hangs.
WORKERS_PER_CPU = 4
# what `pip install` needs where the package is not named as the tracker
TRACKER_PACKAGES = {"comet_ml": "comet-ml"}


def key(default: Any, help: str) -> Any:
    """A recipe key: its default and its meaning (docs/recipe.md's tables are generated from these)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class ModelCfg:
    """Which timm backbone, and where its starting weights come from."""

    name: str = key("resnet18", "any timm model name (`timm.list_models()`), optionally with a pretrained tag "
                                "(`resnet18.a1_in1k`)")
    pretrained: bool = key(False, "load timm's pretrained weights (Hub or local cache)")
    checkpoint: Optional[str] = key(None, "a local `.safetensors` / `.pth` file of starting weights; a classifier "
                                          "of another size is replaced")
    kwargs: dict = key({}, "passed to `timm.create_model` (`drop_path_rate`, `zero_init_last`, `img_size`, ...)")

    def validate(self, here: bool = False) -> None:
        """Raise UserError for values that are well-typed but meaningless (as strategy options do); `here`:
        also a name that this timm does not know."""
        refuse([(not self.pretrained or not self.checkpoint, "set model.pretrained or model.checkpoint, not both")])
        if here:
            check_model_name(self.name)


@dataclass
class DataCfg:
    """Which dataset, which columns and splits, and how images become tensors (timm transforms)."""

    dataset: str = key("digits", "the built-in `digits`, a Hub id, an imagefolder folder, a `save_to_disk` "
                                 "folder, or parquet/arrow files")
    config: Optional[str] = key(None, "Hub dataset configuration")
    image_column: Optional[str] = key(None, "detected: the Image feature, else image bytes / paths")
    label_column: Optional[str] = key(None, "detected: the ClassLabel feature, else an integer or string column. "
                                            "Integer labels are class ids 0..K-1 (the largest defines K, and may "
                                            "not exceed the number of rows); strings are class names (sorted). "
                                            "Float labels, a single class, or classes found only in the "
                                            "validation split are errors")
    train_split: str = key("train", "training split")
    val_split: Optional[str] = key(None, "the dataset's `validation` (or `valid`, `val`, `test`) split with "
                                         "labels, else carved out of train")
    val_fraction: float = key(0.1, "the stratified, seeded share of train carved out when there is no "
                                   "validation split (datasets' `train_test_split`: each class in proportion, at "
                                   "least as many rows as classes; a class with a single row stays in train)")
    tune_fraction: Optional[float] = key(None, "tuning: validate on this stratified, seeded share carved out of "
                                               "train (and train on the rest); the validation split is then never "
                                               "opened (when validation is itself carved from train, that "
                                               "carve-out is removed first). A sweep's `tune:` sets it")
    tune_seed: int = key(0, "the seed of that carve-out (the same for every candidate)")
    max_train_samples: Optional[int] = key(None, "cap on training samples (a seeded subset)")
    max_val_samples: Optional[int] = key(None, "cap on validation samples")
    num_workers: int = key(2, "DataLoader worker processes (persistent); with preloaded data, the processes of "
                              "the one decoding pass")
    # timm data config; None means "resolved from the model" (resolve_model_data_config)
    input_size: Optional[Union[int, list[int]]] = key(None, "`N`, `[H, W]` or `[C, H, W]`; default: the model's "
                                                            "data config")
    mean: Optional[list[float]] = key(None, "normalisation mean; default: the model's")
    std: Optional[list[float]] = key(None, "normalisation standard deviation; default: the model's")
    interpolation: Optional[str] = key(None, "resize interpolation; default: the model's")
    crop_pct: Optional[float] = key(None, "eval center-crop fraction; default: the model's")
    augment: bool = key(True, "timm's training transform; `false` trains on the eval transform")
    scale: Optional[list[float]] = key(None, "random-resized-crop scale range (timm's default)")
    ratio: Optional[list[float]] = key(None, "random-resized-crop aspect-ratio range (timm's default)")
    hflip: float = key(0.5, "horizontal flip probability")
    color_jitter: float = key(0.0, "color jitter strength")
    auto_augment: Optional[str] = key(None, "timm auto-augment policy, e.g. `rand-m9-mstd0.5`")
    re_prob: float = key(0.0, "random-erasing probability")
    mixup: float = key(0.0, "timm Mixup's mixup alpha (0: off); soft-target cross-entropy (see Training extras)")
    cutmix: float = key(0.0, "timm Mixup's cutmix alpha (0: off); with both on, timm switches per batch")
    mixup_prob: float = key(1.0, "the share of training batches mixed")
    skip_bad_images: bool = key(False, "skip unreadable images (counted in the summary) instead of stopping")
    preload: Literal["auto", "true", "false"] = key("auto", "`auto`, `true` or `false`: decode every image once "
                                                            "into memory and augment batches on the training "
                                                            "device (see Concepts); `auto` preloads on a GPU when "
                                                            "it fits")

    def validate(self, channels: Any = 3, here: bool = False) -> None:
        """Raise UserError for values that are well-typed but meaningless, or that timm or torchvision would
        reject only once images flow; `channels`: what the model takes; `here`: also more workers than this
        machine can start. (A value only timm can judge, such as an interpolation or an auto-augment policy,
        is checked by building the transforms.)"""
        size = self.input_size
        sizes = [size] if isinstance(size, int) else list(size or [])
        refuse([
            (0 < self.val_fraction < 1, "data.val_fraction must be in (0, 1)"),
            (self.tune_fraction is None or 0 < self.tune_fraction < 1, "data.tune_fraction must be in (0, 1)"),
            (self.num_workers >= 0, "data.num_workers must be >= 0"),
            (self.max_train_samples is None or self.max_train_samples >= 1, "data.max_train_samples must be >= 1"),
            (self.max_val_samples is None or self.max_val_samples >= 1, "data.max_val_samples must be >= 1"),
            (0 <= self.hflip <= 1, "data.hflip must be in [0, 1]"),
            (0 <= self.re_prob <= 1, "data.re_prob must be in [0, 1]"),
            (self.mixup >= 0 and self.cutmix >= 0, "data.mixup and data.cutmix must be >= 0 (0: off)"),
            (0 <= self.mixup_prob <= 1, "data.mixup_prob must be in [0, 1]"),
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
            *[(getattr(self, k) is None or len(getattr(self, k)) in (1, channels),
               f"data.{k} must have 1 or {channels} values (one per channel)") for k in ("mean", "std")],
            (self.std is None or all(v > 0 for v in self.std), "data.std must be > 0 (images are divided by it)"),
            (not here or self.num_workers <= max_workers(),
             f"data.num_workers {self.num_workers:,} is more than this machine can use: at most {max_workers()} "
             f"({WORKERS_PER_CPU} per CPU it may use)"),
        ])


@dataclass
class TrainCfg:
    """The optimisation: timm optimizer and scheduler factories, run length, precision, seed."""

    epochs: int = key(1, "epochs (ignored when `train.max_steps` is set)")
    max_steps: Optional[int] = key(None, "optimizer updates to run; the last epoch stops early")
    batch_size: int = key(64, "per process")
    eval_batch_size: Optional[int] = key(None, "default 4 × batch size on a GPU, 2 × on the CPU")
    lr: float = key(1e-3, "peak learning rate")
    opt: str = key("adamw", "any timm optimizer (`create_optimizer_v2`): `sgd`, `momentum`, `adamw`, `lamb`, ...")
    weight_decay: float = key(0.05, "biases and norm parameters get none (timm's grouping)")
    momentum: float = key(0.9, "for SGD-type optimizers")
    sched: str = key("cosine", "any timm scheduler (`create_scheduler_v2`), stepped per update")
    warmup_epochs: int = key(0, "linear warm-up")
    min_lr: float = key(0.0, "floor of the schedule")
    clip_grad: Optional[float] = key(None, "max gradient norm")
    label_smoothing: float = key(0.0, "cross-entropy label smoothing")
    ema: bool = key(False, "keep timm's ModelEmaV3 average of the learned tensors; evaluated and saved as the delta")
    ema_decay: float = key(0.999, "the average's decay, in [0, 1)")
    layer_decay: Optional[float] = key(None, "timm layer-wise lr decay: lr × layer_decay^(layers above), in (0, 1]")
    keep: Literal["last", "best"] = key("last", "`last`, or `best`: the epoch with the best top-1, on a tuning "
                                                "carve-out only (`data.tune_fraction`)")
    grad_accum_steps: int = key(1, "gradient accumulation")
    mixed_precision: Literal["no", "fp16", "bf16"] = key("no", "`no`, `fp16` or `bf16` (Accelerate autocast)")
    cache_features: Literal["auto", "on", "off"] = key(
        "auto", "`auto`, `on` or `off` (YAML booleans mean on / off): train the layers after the fixed prefix on "
                "its cached features (see Concepts)")
    solver: Literal["auto", "exact", "loop"] = key(
        "auto", "`exact`: when only the classifier learns on cached features, solve it to convergence "
                "(multinomial logistic regression, full-batch L-BFGS in float64; the L2 strength chosen by "
                "stratified 5-fold cross-validation on train, never the validation split, then refit on all of "
                "train; lr, epochs and the optimizer are unused); `loop`: the epoch loop; `auto`: exact whenever "
                "it applies")
    channels_last: bool = key(False, "NHWC memory layout for the model and its inputs (faster convolutions with "
                                     "mixed precision on recent GPUs)")
    compile: bool = key(False, "`torch.compile` the model (inductor) for training and evaluation; the first steps "
                               "pay the compilation (minutes on a small CPU)")
    seed: int = key(0, "seeds the model init, data order, random selections and fixed random parts")
    log_every: int = key(10, "steps between progress-bar updates")
    checkpoint_every: Optional[int] = key(500, "steps between resumable checkpoints (one is also written at each "
                                               "epoch end; `null`: epoch ends only); removed when the run finishes")
    keep_checkpoints: Optional[int] = key(2, "how many of the newest resumable checkpoints stay on disk during a "
                                             "run (`null`: all); the one `latest` names is never removed; a "
                                             "finished run keeps none")
    nan_policy: Literal["stop", "skip_batch"] = key(
        "stop", "a NaN or infinite training loss: `stop` at that step with an `error:` line naming the step, epoch "
                "and value (exit 2; the last checkpoint is kept, so `train.nan_policy=skip_batch --resume` "
                "continues), or `skip_batch`: no update from that batch, counted in `summary.json`'s "
                "`nan_skipped_batches`")
    progress: bool = key(True, "show the progress bar")
    log_with: list[str] = key([], "experiment trackers, through Accelerate: any of `tensorboard`, `wandb`, "
                                  "`mlflow`, `comet_ml`, `aim`, `clearml`, `dvclive`, `swanlab`, `trackio` that is "
                                  "installed (one that is not is an `error:` before training). They get the "
                                  "resolved recipe as hyperparameters, `loss`, `lr` and `images_per_second` every "
                                  "`train.log_every` steps, and `val_top1`, `val_top5`, `val_loss`, `train_loss` "
                                  "each epoch; local ones write under `RUN_DIR/logs/`")

    def validate(self, here: bool = False) -> None:
        """Raise UserError for values that are well-typed but meaningless; `here`: also optimizer or
        scheduler names this timm does not know and trackers that are unknown or not installed."""
        refuse([
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
            (0 <= self.ema_decay < 1, "train.ema_decay must be in [0, 1)"),
            (self.layer_decay is None or 0 < self.layer_decay <= 1, "train.layer_decay must be in (0, 1]"),
            (self.log_every >= 1, "train.log_every must be >= 1"),
            (self.checkpoint_every is None or self.checkpoint_every >= 1,
             "train.checkpoint_every must be >= 1 (null: only at epoch ends)"),
            (self.keep_checkpoints is None or self.keep_checkpoints >= 1,
             "train.keep_checkpoints must be >= 1 (null: keep all)"),
            (0 <= self.seed < 2**32, "train.seed must be in [0, 2**32)"),
        ])
        if here:
            self._check_timm_names()
            check_trackers(self.log_with)

    def _check_timm_names(self) -> None:
        """train.opt and train.sched are timm names: try them on a stand-in parameter, so a typo (or a
        scheduler that cannot step per update, like plateau) fails before any work."""
        try:
            opt = create_optimizer_v2(nn.Linear(1, 1), opt=self.opt, lr=self.lr, weight_decay=self.weight_decay,
                                      momentum=self.momentum)
        except Exception as e:
            hint = did_you_mean(self.opt, list_optimizers())
            raise UserError(f"train.opt '{self.opt}': {first_line(e)}{hint}") from None
        try:
            create_scheduler_v2(opt, sched=self.sched, num_epochs=max(self.epochs, 2), warmup_epochs=self.warmup_epochs,
                                min_lr=self.min_lr, step_on_epochs=False, updates_per_epoch=1)
        except Exception as e:
            raise UserError(f"train.sched '{self.sched}': {first_line(e)}") from None


@dataclass
class OutputCfg:
    """Where the run folder goes."""

    dir: Optional[str] = key(None, "the run folder; default `runs/<recipe file name>`")


SECTIONS: dict[str, type] = {"model": ModelCfg, "data": DataCfg, "train": TrainCfg, "output": OutputCfg}


def check_model_name(name: str) -> None:
    """Refuse an unknown timm model name, suggesting the closest ones."""
    base = name.split(".", 1)[0]  # timm accepts name.pretrained_tag
    if timm.is_model(base) or name.startswith(HUB_PREFIXES):
        return
    close = difflib.get_close_matches(base, timm.list_models(), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    raise UserError(f"unknown timm model '{name}'{hint}")


def max_workers() -> int:
    """The most DataLoader workers a process of this machine starts (WORKERS_PER_CPU x usable CPUs)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return WORKERS_PER_CPU * max(1, cpus)


def check_trackers(log_with: list[str]) -> None:
    """Every tracker is one Accelerate knows and is installed here."""
    known = [name for name in LoggerType.list() if name != "all"]
    available = {str(getattr(t, "value", t)) for t in accelerate.tracking.get_available_trackers()}
    for name in log_with:
        if name not in known:
            raise UserError(f"train.log_with: unknown tracker '{name}'{did_you_mean(name, known)} "
                            f"(Accelerate's trackers: {', '.join(known)})")
        if name not in available:
            raise UserError(f"train.log_with: {name} is not installed (pip install {TRACKER_PACKAGES.get(name, name)})")


def refuse(checks: list[tuple[bool, str]]) -> None:
    """The first failed (ok, message) check, as a UserError."""
    for ok, message in checks:
        if not ok:
            raise UserError(message)
