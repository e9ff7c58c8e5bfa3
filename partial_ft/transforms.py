"""A run's timm transforms from the recipe's data section and the model's data config: built once, as
the model is set up, and handed to the loaders, the scoring pass and the feature cache."""
from __future__ import annotations

from typing import Any, NamedTuple

from PIL import Image as PILImage

from .errors import UserError, first_line
from .sections import DataCfg


def _common(data_config: dict) -> dict[str, Any]:
    return dict(input_size=data_config["input_size"], interpolation=data_config.get("interpolation", "bilinear"),
                mean=data_config["mean"], std=data_config["std"], crop_pct=data_config.get("crop_pct"),
                crop_mode=data_config.get("crop_mode"))


def eval_transform(data_config: dict, to_uint8: bool = False) -> Any:
    """timm's eval transform for a data config (a run's, as its delta records it): validation, `eval`
    and `predict` all preprocess through it. `to_uint8`: its steps up to the tensor, uint8 C x H x W and
    not normalized (timm's prefetcher form; what preloading stores)."""
    from timm.data import create_transform

    return create_transform(is_training=False, use_prefetcher=to_uint8, **_common(data_config))


class Transforms(NamedTuple):
    """A run's timm transforms, built once (see build())."""

    train: Any
    eval: Any
    deterministic: bool  # the train transform draws nothing: it is the eval transform


def build(cfg: DataCfg, data_config: dict) -> Transforms:
    """timm train and eval transforms for the recipe's data section and the model's data config, tried on
    a small image: building them is the check of the values only timm or torchvision can judge (an
    interpolation, an auto-augment policy, a size), an error naming the data keys, before any writing."""
    from timm.data import create_transform

    try:
        eval_tf = eval_transform(data_config)
        tfs = Transforms(eval_tf, eval_tf, True) if not cfg.augment else Transforms(create_transform(
            is_training=True, scale=tuple(cfg.scale) if cfg.scale else None,
            ratio=tuple(cfg.ratio) if cfg.ratio else None, hflip=cfg.hflip, color_jitter=cfg.color_jitter,
            auto_augment=cfg.auto_augment, re_prob=cfg.re_prob,
            **{k: v for k, v in _common(data_config).items() if k not in ("crop_pct", "crop_mode")}), eval_tf, False)
        image = PILImage.new("RGB", (max(8, data_config["input_size"][-1] // 2),) * 2)
        for tf in {id(tfs.train): tfs.train, id(tfs.eval): tfs.eval}.values():
            tf(image)
    except Exception as e:
        keys = "data.input_size / crop_pct / interpolation / mean / std / auto_augment / scale / ratio / color_jitter"
        why = f"unknown value {e}" if isinstance(e, KeyError) else first_line(e)
        raise UserError(f"the image transforms cannot be built from the recipe ({keys}): {why}") from None
    return tfs
