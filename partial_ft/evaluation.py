"""Measuring a model on a validation split: top-1 / top-5 / loss / per-class accuracy, each sample counted
once across processes; and `evaluate_run`, which measures a finished run's delta again (the `eval`
command)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration
from torch import nn

from . import data, delta, hub, loaders, rundir, transforms
from .errors import UserError


@torch.no_grad()
def evaluate(model: nn.Module, loader: torch.utils.data.DataLoader, acc: Accelerator,
             num_classes: int, confusion: bool = False) -> dict[str, Any]:
    """Top-1 (and top-5 with >= 5 classes) over the whole split, each sample counted exactly once
    across processes (gather_for_metrics drops the padding of uneven shards); with `confusion`, also the
    confusion matrix (rows: true class, columns: predicted class)."""
    model.eval()
    correct1 = correct5 = total = 0
    loss_sum = 0.0
    per_class_correct = torch.zeros(num_classes, dtype=torch.long)
    per_class_total = torch.zeros(num_classes, dtype=torch.long)
    matrix = torch.zeros(num_classes * num_classes, dtype=torch.long)
    for x, y, _ in loader:
        if x is None:
            continue
        logits = model(x)
        logits, y = acc.gather_for_metrics((logits, y))
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        # (not timm.utils.accuracy: it returns per-batch float percentages; exact counts, per class too,
        # come from one top-k here)
        top = logits.topk(min(5, num_classes), dim=1).indices
        hit1 = top[:, 0] == y
        correct1 += hit1.sum().item()
        correct5 += (top == y[:, None]).any(dim=1).sum().item()
        total += y.numel()
        per_class_total += torch.bincount(y.cpu(), minlength=num_classes)
        per_class_correct += torch.bincount(y.cpu()[hit1.cpu()], minlength=num_classes)
        if confusion:
            matrix += torch.bincount((y * num_classes + top[:, 0]).cpu(), minlength=num_classes * num_classes)
    out = {
        "val_top1": correct1 / max(total, 1),
        "val_top5": correct5 / max(total, 1) if num_classes >= 5 else None,
        "val_loss": loss_sum / max(total, 1),
        "val_samples": total,
        "per_class_top1": (per_class_correct / per_class_total.clamp(min=1)).tolist(),
    }
    if confusion:
        out["per_class_samples"] = per_class_total.tolist()
        out["confusion_matrix"] = matrix.view(num_classes, num_classes).tolist()
    return out


def evaluate_run(run_dir: str | Path, dataset: Optional[str] = None, split: Optional[str] = None,
                 max_samples: Optional[int] = None) -> dict[str, Any]:
    """Evaluate a finished run's delta (the `eval` command; `run_dir` is any SOURCE: a run folder, a pushed
    folder or a Hub repo id) and write eval.json into a local folder (its path is `written`). By default on the
    run's own validation split with its own settings, so the numbers equal summary.json's; with another
    dataset or split, on all of it (or max_samples)."""
    if max_samples is not None and max_samples < 1:
        raise UserError(f"--max-samples must be >= 1, got {max_samples}")
    local = Path(run_dir).exists()  # a Hub repo id: its files live in huggingface_hub's cache, not written to
    run_dir = hub.resolve(run_dir)
    recipe = rundir.RunFolder(run_dir).read_recipe()
    info = delta.read_info(run_dir)
    model = delta.rebuild(run_dir)
    cfg, t = recipe.data, recipe.train
    if dataset or split or max_samples:
        other = {"config": None, "image_column": None, "label_column": None} if dataset else {}  # detected anew
        cfg = replace(cfg, dataset=dataset or cfg.dataset, max_val_samples=max_samples, **other)
    # batches come pinned on a GPU, so their copies to it need not block
    acc = Accelerator(mixed_precision=t.mixed_precision, dataloader_config=DataLoaderConfiguration(non_blocking=True))
    with acc.main_process_first():
        # the run's own validation split as it made it (carved or not), else one whole split asked for
        try:
            bundle = data.load(cfg, seed=t.seed) if not (dataset or split) else data.load_split(cfg, split, t.seed)
        except UserError as e:  # say which option brought the data in: the user typed --dataset, not data.dataset
            if dataset and not str(e).startswith("--"):
                raise UserError(f"--dataset {dataset}: {e}") from None
            raise
    if bundle.class_names != info["class_names"]:
        raise UserError(f"{'--dataset ' if dataset else 'dataset '}{cfg.dataset} has classes "
                        f"{bundle.class_names[:10]}, but the run learned {info['class_names'][:10]}: the "
                        "classifier cannot be evaluated on it")
    loader = loaders.eval_loader(bundle, cfg, transforms.eval_transform(info["data_config"]),
                                 loaders.eval_batch_size(t.eval_batch_size, t.batch_size, acc.device), t.seed,
                                 acc.device.type == "cuda")
    model, loader = acc.prepare(model, loader)
    metrics = evaluate(model, loader, acc, len(bundle.class_names), confusion=True)
    val_split = bundle.info["val_split"]
    names, counts = bundle.class_names, metrics.pop("per_class_samples")
    result = {"dataset": cfg.dataset, "split": val_split if isinstance(val_split, str) else
              f"{val_split['carved_from']} (carved, fraction {val_split['fraction']})", **metrics,
              # classes the split has no image of have no accuracy (not 0)
              "per_class_top1": {n: a for n, a, c in zip(names, metrics["per_class_top1"], counts) if c},
              "per_class_samples": dict(zip(names, counts)),
              "confusion_matrix": {"labels": names, "rows": "true class", "columns": "predicted class",
                                   "matrix": metrics["confusion_matrix"]}}
    if acc.is_main_process and local:
        folder = rundir.RunFolder(run_dir)
        result["written"] = [str(folder.write_json(rundir.EVAL, result)), str(folder.write_confusion(result))]
    return result
