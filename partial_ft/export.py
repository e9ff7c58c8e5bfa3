"""`export`: a run's delta as plain timm weights plus the `config.json` timm's Hub models carry
(architecture, num_classes, label_names, pretrained_cfg with the run's preprocessing), so timm alone loads
the model and resolves the exact eval transform the run used."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from timm.models._hub import HF_SAFE_WEIGHTS_NAME, save_config_for_hf

from .atomic import check_file_target, write_atomic
from .delta import delta_path, merged_state_dict, read_info, rebuild
from .errors import UserError
from .outputs import check_output

CONFIG_NAME = "config.json"  # timm's name: `local-dir:` and `hf-hub:` models read it


def export(source: str | Path, out: str | Path) -> tuple[Path, Path, dict[str, Any]]:
    """Write a plain timm state dict (full weights, learned and fixed joined) to `out` and timm's
    `config.json` beside it; returns (weights path, config path, delta metadata). Refuses to write over
    the delta itself, into a folder, below a file or into a read-only place; nothing is replaced on error."""
    out = check_file_target(out, "export --out")
    src = delta_path(source)
    config = out.parent / CONFIG_NAME
    # never over a run's files, the delta or folder being read, or through a link to them
    check_output(out, "export --out", [src], [source] if Path(source).is_dir() else [])
    if out.name == CONFIG_NAME or config.is_dir():
        raise UserError(f"export --out {out}: its folder's {CONFIG_NAME} is where the model's config goes; "
                        "choose another file or folder")
    info = read_info(src)
    model = rebuild(src)  # its pretrained_cfg is the run's preprocessing and classes
    plain = merged_state_dict(model)
    state = {k: v.contiguous() for k, v in plain.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", "architecture": info["model"]["name"], "num_classes": str(len(info["class_names"])),
            "class_names": json.dumps(info["class_names"])}
    write_atomic(out, lambda tmp: save_file(state, str(tmp), metadata=meta))
    # timm's own writer (the format its loaders read); the model's pretrained_cfg is the run's already
    write_atomic(config, lambda tmp: save_config_for_hf(model, str(tmp),
                                                        model_config={"label_names": list(info["class_names"])}))
    return out, config, info


def load_line(out: Path, info: dict[str, Any]) -> str:
    """The one line of plain timm that loads the export with its preprocessing: from the folder when
    timm picks this file there (it looks for model.safetensors first), else from the file with the run's
    data config as the pretrained_cfg overlay."""
    if out.name == HF_SAFE_WEIGHTS_NAME:
        return f"timm.create_model({'local-dir:' + str(out.parent)!r}, pretrained=True)"
    data = {k: tuple(v) if isinstance(v, list) else v for k, v in info["data_config"].items()}
    overlay = "".join(f", {k}={v!r}" for k, v in data.items())
    kwargs = "".join(f", {k}={v!r}" for k, v in info["model"]["kwargs"].items())
    return (f"timm.create_model({info['model']['name']!r}, pretrained=True, pretrained_cfg_overlay=dict("
            f"file={str(out)!r}, num_classes={len(info['class_names'])}{overlay}){kwargs})")
