"""The model card of a run (RUN_DIR/README.md, and the README.md of a pushed repo), in the Hub's format:
YAML front matter (library_name, base_model, datasets, tags, metrics, model-index) and a body saying
what the base is, what learned, how well, how to load it, and the recipe that made it."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml

from .data_sources import hub_id

TAGS = ["partial_ft", "timm", "image-classification", "parameter-efficient-fine-tuning"]


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
    if isinstance(val_split, dict):
        return f"{val_split.get('fraction')} of '{val_split.get('carved_from')}', carved out (seeded)"
    return f"'{val_split}'" if val_split else "the validation split"


def front_matter(recipe: dict[str, Any], summary: dict[str, Any], name: str, val_split: Any) -> str:
    """The card's YAML metadata (huggingface_hub's ModelCardData: the keys the Hub indexes)."""
    from huggingface_hub import EvalResult, ModelCardData

    dataset = recipe["data"]["dataset"]
    results = [EvalResult(task_type="image-classification", dataset_type=hub_id(dataset) or dataset,
                          dataset_name=Path(dataset).name or dataset, dataset_split=_split(val_split),
                          metric_type=metric, metric_value=summary[key], metric_name=label)
               for key, metric, label in (("val_top1", "accuracy", "top-1 accuracy"),
                                          ("val_top5", "top_5_accuracy", "top-5 accuracy"))
               if summary.get(key) is not None]
    data = ModelCardData(library_name="partial_ft", base_model=base_model(recipe["model"]),
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
- **What learned:** {learned:,} of {total:,} parameters ({percent:.3g}%); everything else stayed fixed.
{plan}
## Validation

top-1 {top1:.4f}{top5}, loss {loss:.4f}, after {epochs} epochs ({steps} steps).

## How to load it

With partial_ft, which rebuilds the base and adds the delta (checking that the base is the one it was
trained on):

```python
from partial_ft import load_delta
model = load_delta("{ref}")  # a timm model, eval mode
```

```bash
python -m partial_ft predict {ref} images/ --top-k 5
```

With plain timm, after exporting the full weights once:

```bash
python -m partial_ft export {ref} --out model.safetensors
```

```python
import timm
model = timm.create_model("{name}", pretrained=True, pretrained_cfg_overlay=dict(
    file="model.safetensors", num_classes={num_classes}){kwargs})
```

## Recipe

```yaml
{recipe}
```
"""


def render(recipe: dict[str, Any], summary: dict[str, Any], class_names: list[str], plan: Optional[str] = None,
           val_split: Any = None, repo_id: Optional[str] = None) -> str:
    """The whole card. `repo_id` names the pushed repo in the loading instructions (else RUN_DIR)."""
    model, dataset = recipe["model"], recipe["data"]["dataset"]
    hub = hub_id(dataset)
    top5 = summary.get("val_top5")
    body = BODY.format(
        title=repo_id or f"{model['name']} adapted with partial_ft", name=model["name"], dataset=dataset,
        dataset_link=f"[{hub}](https://huggingface.co/datasets/{hub})" if hub else f"`{dataset}`",
        weights=_weights(model, recipe["train"]["seed"]), num_classes=len(class_names),
        classes=", ".join(class_names[:20]) + (f", ... ({len(class_names)} in all)" if len(class_names) > 20 else ""),
        split=_split(val_split), strategy=summary["strategy"], learned=summary["learned_params"],
        total=summary["total_params"], percent=100 * summary["learned_fraction"],
        plan=f"\n<details><summary>Per-layer plan</summary>\n\n```\n{plan.rstrip()}\n```\n</details>\n" if plan else "",
        top1=summary["val_top1"], top5="" if top5 is None else f", top-5 {top5:.4f}",
        loss=summary.get("val_loss") if summary.get("val_loss") is not None else float("nan"),
        epochs=summary.get("epochs"), steps=summary.get("steps"), ref=repo_id or "RUN_DIR",
        kwargs="".join(f", {k}={v!r}" for k, v in (model.get("kwargs") or {}).items()),
        recipe=yaml.safe_dump(recipe, sort_keys=False).rstrip())
    return f"---\n{front_matter(recipe, summary, repo_id or model['name'], val_split)}\n---\n{body}"
