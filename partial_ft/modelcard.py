"""The model card of a run (RUN_DIR/README.md, and the README.md of a pushed repo), in the Hub's format:
YAML front matter (library_name, base_model, datasets, tags, metrics, model-index) and a body saying
what the base is, what learned, how well, how to load it, and the recipe that made it."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml

from .data_sources import hub_id
from .errors import UserError, did_you_mean

TAGS = ["partial_ft", "timm", "image-classification", "parameter-efficient-fine-tuning"]
# the Hub's license identifiers (https://huggingface.co/docs/hub/repositories-licenses); huggingface_hub
# ships no list of them, and the Hub only checks them after an upload
LICENSES = (
    "apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 "
    "bigcode-openrail-m afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc "
    "cc0-1.0 cc-by-2.0 cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 "
    "cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 "
    "cdla-sharing-1.0 cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 "
    "eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc lppl-1.3c ms-pl mpl-2.0 odc-by odbl "
    "openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license llama2 llama3 "
    "llama3.1 llama3.2 llama3.3 gemma unknown other").split()


def check_license(license: Optional[str]) -> None:
    """A Hub license identifier (`push --license`), or None (the card then says none was given)."""
    if license is not None and license not in LICENSES:
        raise UserError(f"--license '{license}' is not a Hub license identifier{did_you_mean(license, LICENSES)} "
                        "(see https://huggingface.co/docs/hub/repositories-licenses)")


def base_model(model: dict[str, Any]) -> Optional[str]:
    """The Hub repo of the starting weights when they are timm's pretrained weights on the Hub; None for
    a random init or a local checkpoint (which no Hub repo holds)."""
    if not model.get("pretrained") or model.get("checkpoint"):
        return None
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(model["name"])
    except Exception:  # an unknown tag: the card says timm's weights, without a link
        return None
    return getattr(cfg, "hf_hub_id", None) or None


def _weights(model: dict[str, Any], seed: Any) -> str:
    if model.get("checkpoint"):
        return f"the weights of a local file ({Path(model['checkpoint']).name})"
    if model.get("pretrained"):
        return "timm's pretrained weights" + (f" ([{base_model(model)}](https://huggingface.co/{base_model(model)}))"
                                              if base_model(model) else "")
    return f"its random initialisation (seed {seed}; fixed random weights are rebuilt from the seed, never stored)"


def _split(val_split: Any) -> str:
    """The validation split as the Hub's `dataset.split` takes it: a split name, or the split a seeded
    carve-out came from and its fraction."""
    if isinstance(val_split, dict):
        return f"{val_split.get('carved_from')} (seeded carve-out, {val_split.get('fraction')})"
    return str(val_split) if val_split else "validation"


def _split_words(val_split: Any) -> str:
    if isinstance(val_split, dict):
        return f"a seeded {val_split.get('fraction')} carve-out of `{val_split.get('carved_from')}`"
    return f"`{val_split}`" if val_split else "the validation split"


def _preprocessing(data_config: Optional[dict]) -> str:
    if not data_config:
        return ""
    size = "×".join(str(v) for v in data_config["input_size"][-2:])
    return (f"\n- **Preprocessing (eval):** {size} px, {data_config.get('interpolation')} interpolation, crop "
            f"{data_config.get('crop_pct')} ({data_config.get('crop_mode')}), mean {list(data_config['mean'])}, std "
            f"{list(data_config['std'])}; the loaded model carries it as timm's `pretrained_cfg`.")


def _license(license: Optional[str]) -> str:
    if license is None:
        return ("No license was given for this model (`push --license ID` sets one); the front matter says "
                "`license: other`. Ask the author before reusing it.")
    return f"License: `{license}`."


def front_matter(recipe: dict[str, Any], summary: dict[str, Any], name: str, val_split: Any,
                 license: Optional[str] = None) -> str:
    """The card's YAML metadata (huggingface_hub's ModelCardData: the keys the Hub indexes)."""
    from huggingface_hub import EvalResult, ModelCardData

    dataset = recipe["data"]["dataset"]
    results = [EvalResult(task_type="image-classification", dataset_type=hub_id(dataset) or dataset,
                          dataset_name=Path(dataset).name or dataset, dataset_split=_split(val_split),
                          metric_type=metric, metric_value=summary[key], metric_name=label)
               for key, metric, label in (("val_top1", "accuracy", "top-1 accuracy"),
                                          ("val_top5", "top_5_accuracy", "top-5 accuracy"))
               if summary.get(key) is not None]
    data = ModelCardData(license=license or "other", library_name="partial_ft",
                         base_model=base_model(recipe["model"]),
                         datasets=[hub_id(dataset)] if hub_id(dataset) else None,
                         tags=TAGS, metrics=["accuracy"], pipeline_tag="image-classification",
                         model_name=name, eval_results=results or None)
    return data.to_yaml()


BODY = """
# {title}

A [timm](https://github.com/huggingface/pytorch-image-models) `{name}` adapted to {dataset_link}
by learning only a small part of its weights with partial_ft: this repository holds only what learned
(`delta.safetensors`), never the whole model.

- **Base model:** `{name}`, starting from {weights}.
- **Dataset:** `{dataset}`, {num_classes} classes ({classes}); validated on {split}.
- **Strategy:** {strategy}.
- **What learned:** {learned:,} of {total:,} parameters ({percent:.3g}%); everything else stayed fixed.{preprocessing}

{license}
{plan}
## Validation

top-1 {top1:.4f}{top5}, loss {loss:.4f}, after {epochs} epochs ({steps} steps).

## How to load it

With partial_ft, which rebuilds the base and adds the delta (checking that the base is the one it was
trained on):

```python
import timm
from partial_ft import load_delta
model = load_delta("{ref}")  # a timm model, eval mode; its pretrained_cfg is the run's preprocessing
transform = timm.data.create_transform(**timm.data.resolve_data_config({{}}, model=model))
```

```bash
python -m partial_ft predict {ref} images/ --top-k 5
```

With plain timm, after exporting the full weights (and timm's `config.json`: architecture, classes,
preprocessing) once:

```bash
python -m partial_ft export {ref} --out exported/model.safetensors
```

```python
import timm
model = timm.create_model("local-dir:exported", pretrained=True).eval()
transform = timm.data.create_transform(**timm.data.resolve_data_config({{}}, model=model))
```

## Recipe

```yaml
{recipe}
```
"""


def render(recipe: dict[str, Any], summary: dict[str, Any], class_names: list[str], plan: Optional[str] = None,
           val_split: Any = None, repo_id: Optional[str] = None, license: Optional[str] = None) -> str:
    """The whole card. `repo_id` names the pushed repo in the loading instructions (else RUN_DIR);
    `license` is a Hub license id (None: `license: other`, and the body says none was given)."""
    model, dataset = recipe["model"], recipe["data"]["dataset"]
    hub = hub_id(dataset)
    top5 = summary.get("val_top5")
    body = BODY.format(
        title=repo_id or f"{model['name']} adapted with partial_ft", name=model["name"], dataset=dataset,
        dataset_link=f"[{hub}](https://huggingface.co/datasets/{hub})" if hub else f"`{dataset}`",
        weights=_weights(model, recipe["train"]["seed"]), num_classes=len(class_names),
        classes=", ".join(class_names[:20]) + (f", ... ({len(class_names)} in all)" if len(class_names) > 20 else ""),
        split=_split_words(val_split), preprocessing=_preprocessing(summary.get("data_config")),
        license=_license(license), strategy=summary["strategy"], learned=summary["learned_params"],
        total=summary["total_params"], percent=100 * summary["learned_fraction"],
        plan=f"\n<details><summary>Per-layer plan</summary>\n\n```\n{plan.rstrip()}\n```\n</details>\n" if plan else "",
        top1=summary["val_top1"], top5="" if top5 is None else f", top-5 {top5:.4f}",
        loss=summary.get("val_loss") if summary.get("val_loss") is not None else float("nan"),
        epochs=summary.get("epochs"), steps=summary.get("steps"), ref=repo_id or "RUN_DIR",
        recipe=yaml.safe_dump(recipe, sort_keys=False).rstrip())
    check_license(license)
    meta = front_matter(recipe, summary, repo_id or model["name"], val_split, license)
    return f"---\n{meta}\n---\n{body}"
