"""timm backbones: creation by name, starting weights (random, pretrained, local file), a new classifier,
and the data config (input size, normalisation) the model expects."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import timm
import torch
from timm.data import resolve_model_data_config
from timm.models import load_state_dict
from torch import nn

from .errors import UserError, first_line, load_reason
from .sections import HUB_PREFIXES, DataCfg, ModelCfg
from .layers import classifier_params


def build(cfg: ModelCfg, num_classes: int, seed: int = 0) -> tuple[nn.Module, Callable[[], nn.Module]]:
    """Create the model with a new `num_classes` classifier, seeded; load its starting weights.

    Returns (model, init_model): init_model() builds the same architecture at its own random init,
    which strategies use to re-draw fixed weights (`fixed: random`). The name was checked with the
    recipe (ModelCfg.validate, here=True, with suggestions); timm's own refusal is a UserError too.
    """

    def create(pretrained: bool) -> nn.Module:
        try:
            return timm.create_model(cfg.name, pretrained=pretrained, num_classes=num_classes, **cfg.kwargs)
        except TypeError as e:
            raise UserError(f"model.kwargs not accepted by {cfg.name}: {first_line(e)}") from None
        except RuntimeError as e:
            if "pretrained tag" in str(e) or "Unknown model" in str(e):  # also an unknown `name.tag`
                raise UserError(f"model.name '{cfg.name}': {first_line(e)}") from None
            raise
        except (ValueError, AssertionError, KeyError) as e:  # timm's own checks of kwargs values
            if pretrained:
                raise
            raise UserError(f"model '{cfg.name}' refuses model.kwargs {cfg.kwargs}: {first_line(e) or type(e).__name__}") from None

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = create(cfg.pretrained)
        except UserError:
            raise
        except Exception as e:  # the Hub is unreachable and the weights are not cached, or similar
            if not (cfg.pretrained or cfg.name.startswith(HUB_PREFIXES)):
                raise
            raise UserError(f"cannot load pretrained weights for '{cfg.name}': {_pretrained_reason(e)}; "
                            "connect once to cache them, or set model.checkpoint to a local file") from None
    if cfg.checkpoint:
        load_checkpoint(model, cfg.checkpoint)

    def init_model() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return create(False)

    return model, init_model


def classifier_shapes(cfg: ModelCfg, num_classes: int) -> dict[str, tuple[int, ...]]:
    """{name: shape} of the new classifier's parameters for `num_classes` outputs, from the architecture
    built on the meta device (no memory, no weights). Empty when timm cannot build it so (then the real
    build says why)."""
    try:
        with torch.device("meta"):
            model = timm.create_model(cfg.name, pretrained=False, num_classes=num_classes, **cfg.kwargs)
    except Exception:  # noqa: BLE001 - only a pre-check: the real build reports the problem
        return {}
    params = dict(model.named_parameters())
    return {name: tuple(params[name].shape) for name in sorted(classifier_params(model))}


def _pretrained_reason(e: Exception) -> str:
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    if isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        return "not in the local Hugging Face cache, and the Hub cannot be reached (offline)"
    return first_line(e)


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file, read by timm's load_state_dict: `weights_only` (never
    unpickles code), `state_dict` / `model` wrappers and `module.` / `_orig_mod.` prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint file not found: {path}")
    try:
        # use_ema=False: a training checkpoint's `state_dict` (the weights as trained), not its EMA copy
        state = load_state_dict(str(path), use_ema=False, device="cpu", weights_only=True)
    except AttributeError:  # timm's prefix cleaning calls .items(): the file holds something else
        state = None
    except Exception as e:
        raise UserError(f"cannot read checkpoint {path}: {load_reason(e)}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"checkpoint {path} does not hold a state dict of tensors")
    return state


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load local starting weights; the classifier is kept new when its shape differs (new classes)."""
    state = read_weights(path)
    own = model.state_dict()
    head = classifier_params(model)
    for key in head:  # adapting to the new number of classes, as timm's pretrained loading does
        if key in state and key in own and state[key].shape != own[key].shape:
            del state[key]
    # BatchNorm's num_batches_tracked is absent from older checkpoints and harmless to leave at 0
    missing = [k for k in own if k not in state and k not in head and not k.endswith("num_batches_tracked")]
    unexpected = sorted((k for k in state if k not in own), key=lambda k: k.endswith("num_batches_tracked"))
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in state
              if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        if shapes:
            parts.append(f"shape mismatch {_few(shapes)}")
        arch = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
        raise UserError(f"checkpoint {path} does not fit model '{arch}': " + "; ".join(parts))
    model.load_state_dict(state, strict=False)


def _few(items: list[str], n: int = 3) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def data_config(model: nn.Module, cfg: DataCfg) -> dict:
    """timm's data config for the model (input size, interpolation, mean, std, crop), the recipe's keys
    passed as its args (a None key falls back to the model's pretrained config)."""
    size = cfg.input_size
    # images are converted to RGB before the transforms, so the input always has 3 channels
    input_size = None if size is None else (3, size, size) if isinstance(size, int) else (3, *size[-2:])
    args = {"input_size": input_size, "mean": cfg.mean, "std": cfg.std, "interpolation": cfg.interpolation,
            "crop_pct": cfg.crop_pct}
    return dict(resolve_model_data_config(model, args=args))


# the source checkpoint's test-time hints; they describe its weights, not the run's preprocessing
_SOURCE_HINTS = ("test_input_size", "test_crop_pct", "test_pool_size", "label_offset", "label_descriptions")


def set_run_config(model: nn.Module, data_config: dict, class_names: list[str]) -> nn.Module:
    """Make the model's `pretrained_cfg` describe the run: its eval preprocessing (input size,
    interpolation, mean, std, crop) and its classes, so that timm's `resolve_data_config({}, model=m)`
    and `create_transform` give exactly the run's eval transform. Returns the model."""
    cfg = {k: v for k, v in dict(getattr(model, "pretrained_cfg", None) or {}).items() if k not in _SOURCE_HINTS}
    run = {k: tuple(v) if isinstance(v, list) else v for k, v in data_config.items()}
    if tuple(run["input_size"][1:]) != tuple(cfg.get("input_size", (3, 224, 224))[1:]):
        cfg["pool_size"] = None  # the source's final feature map size no longer holds (as timm's export says)
    cfg.update(run, num_classes=len(class_names), label_names=list(class_names))
    model.pretrained_cfg = cfg
    return model


def try_forward(model: nn.Module, name: str, input_size: tuple[int, ...]) -> None:
    """One forward of a tiny batch at the data's input size, before anything is written: a size the
    model cannot take (a ViT whose patch size does not divide it, a too small image) is one error line."""
    x = torch.zeros(2, *input_size)
    training = model.training
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model.eval()
            model(x)
    except Exception as e:
        raise UserError(f"model '{name}' cannot run on data.input_size {list(input_size)}: {first_line(e)}") from None
    finally:
        model.train(training)
