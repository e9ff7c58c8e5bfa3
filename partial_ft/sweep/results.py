"""A sweep's results: runs aggregated over seeds into results.csv and results.md.

results.csv: one row per (dataset, model, strategy setting), with

    dataset, model, strategy, options, control_for, learned_params, learned_pct, <each tuned key>, tune_top1,
    tune_trials, tune_pruned, tune_seconds, tune_steps, val_top1_mean, val_top1_std, seeds, delta_bytes, train_seconds, peak_memory_mib, images_per_second

`control_for` names the strategy setting a random control matches in learned parameters (empty
otherwise); the tuned-key columns hold the chosen values; tune_top1 the carve-out accuracy they reached;
tune_trials, tune_pruned, tune_seconds and tune_steps the configuration's tuning runs (pruned ones
included), how many of them were pruned, and their training seconds and optimizer steps in all.
results.md: per model, strategies as rows; one dataset: accuracy and every cost column; several:
one column per dataset (mean ± std over seeds, and the tuned values chosen there) and their mean.
"""
from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path
from typing import Optional

from ..atomic import write_atomic, write_text

HEAD = ["dataset", "model", "strategy", "options", "control_for", "learned_params", "learned_pct"]
TUNE_COST = ["tune_trials", "tune_pruned", "tune_seconds", "tune_steps"]
TAIL = ["tune_top1", *TUNE_COST, "val_top1_mean", "val_top1_std", "seeds", "delta_bytes", "train_seconds", "peak_memory_mib",
        "images_per_second"]
COST = ["learned_params", "delta_bytes", "train_seconds", "peak_memory_mib"]  # what plot.py can put on x


def columns(tuned: list[str]) -> list[str]:
    return [*HEAD, *tuned, *TAIL]


def _row(runs: list[dict], tuned: list[str]) -> dict:
    first = runs[0]
    config = first["config"]
    accs = [r["val_top1"] for r in runs]
    return {
        "dataset": config.dataset.name if config.dataset else first.get("dataset", ""),
        "model": config.model.name if config.model else first["model"],
        "strategy": config.spec["name"],
        "options": config.label,
        "control_for": config.control_for or "",
        "learned_params": first["learned_params"],
        "learned_pct": 100 * first["learned_fraction"],
        **{key: first["chosen"].get(key, "") for key in tuned},
        "tune_top1": "" if first["tune_top1"] is None else first["tune_top1"],
        **{key: first.get(key, "") for key in TUNE_COST},
        "val_top1_mean": statistics.fmean(accs),
        "val_top1_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "seeds": len(accs),
        "delta_bytes": first.get("delta_bytes", 0),
        "train_seconds": statistics.fmean(r["train_seconds"] for r in runs),
        "peak_memory_mib": max(r["peak_memory_bytes"] for r in runs) / 2**20,
        "images_per_second": statistics.fmean(r["train_images_per_second"] for r in runs),
    }


def aggregate(runs: list[dict], tuned: list[str]) -> list[dict]:
    """One row per (dataset, model, strategy setting, control): mean and std of val top-1 over seeds.
    Each run is its summary.json plus 'config' (grid.Config), 'chosen' (tuned values), 'tune_top1' (and
    the tuning cost columns)."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        c = r["config"]
        key = (c.dataset.name if c.dataset else "", c.model.name if c.model else "", c.label, c.control_for or "")
        groups.setdefault(key, []).append(r)
    rows = [_row(g, tuned) for g in groups.values()]
    return order(rows)


def order(rows: list[dict]) -> list[dict]:
    """By dataset, model, strategy and size; each random control right after the setting it matches."""
    def key(r: dict) -> tuple:
        return (r["dataset"], r["model"], r["strategy"], r["learned_params"], r["options"])

    plain = sorted((r for r in rows if not r["control_for"]), key=key)
    out = []
    for r in plain:
        out.append(r)
        out += [c for c in rows if c["control_for"] == r["options"] and
                (c["dataset"], c["model"]) == (r["dataset"], r["model"])]
    return out + [c for c in rows if c not in out]


def write_tables(rows: list[dict], out: Path, tuned: list[str]) -> None:
    """results.csv and results.md in `out` (each replaced whole: several workers may write them)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns(tuned))
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out / "results.csv", lambda tmp: tmp.write_text(text.getvalue(), newline=""))
    write_text(out / "results.md", markdown(rows, tuned))


def _name(r: dict) -> str:
    return f"↳ random, same count: {r['options']}" if r["control_for"] else r["options"]


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f}"


def markdown(rows: list[dict], tuned: list[str]) -> str:
    """Per model, a table; one dataset: every column; several: a column per dataset and the mean."""
    lines = []
    models = list(dict.fromkeys(r["model"] for r in rows))
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    for model in models:
        mine = [r for r in rows if r["model"] == model]
        if len(models) > 1:
            lines += [f"### {model}", ""]
        if len(datasets) == 1:
            lines += _single(mine, tuned)
        else:
            lines += _suite(mine, datasets, tuned)
        lines.append("")
    return "\n".join(lines)


def _single(rows: list[dict], tuned: list[str]) -> list[str]:
    tune_cols = [*tuned, "tune top-1"] if tuned else []
    head = ["strategy", "learned params", "% of total", *tune_cols, "val top-1 (mean ± std)", "seeds",
            "delta MiB", "train s", "peak MiB", "images/s"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        tune_cells = [str(r[k]) for k in tuned] + [f"{r['tune_top1']:.4f}"] if tuned else []
        cells = [_name(r), f"{r['learned_params']:,}", f"{r['learned_pct']:.2f}%", *tune_cells,
                 _mean_std(r), str(r["seeds"]), _mib(r["delta_bytes"]),
                 f"{r['train_seconds']:.1f}", f"{r['peak_memory_mib']:.0f}", f"{r['images_per_second']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _mean_std(r: dict) -> str:
    """Mean ± std over seeds; with one seed no spread was measured, which `–` says (not ± 0.0000)."""
    return f"{r['val_top1_mean']:.4f} ± " + (f"{r['val_top1_std']:.4f}" if int(r["seeds"]) > 1 else "–")


def _cell(r: Optional[dict], tuned: list[str]) -> str:
    """A dataset's cell: mean top-1, ± std over seeds when several, and the tuned values chosen there."""
    if r is None:
        return "–"
    text = f"{r['val_top1_mean']:.4f}" + (f" ± {r['val_top1_std']:.4f}" if int(r["seeds"]) > 1 else "")
    chosen = [f"{key.split('.')[-1]} {r[key]}" for key in tuned if r.get(key, "") != ""]
    return text + (f" ({', '.join(chosen)})" if chosen else "")


def _suite(rows: list[dict], datasets: list[str], tuned: list[str]) -> list[str]:
    head = ["strategy", "learned params", *datasets, "mean"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    by_setting: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        by_setting.setdefault((r["options"], r["control_for"]), {})[r["dataset"]] = r
    for (options, control_for), cells in by_setting.items():
        first = next(iter(cells.values()))
        counts = sorted({c["learned_params"] for c in cells.values()})
        accs = [cells[d]["val_top1_mean"] if d in cells else None for d in datasets]
        mean = f"{statistics.fmean(accs):.4f}" if None not in accs else "–"
        lines.append("| " + " | ".join([_name(first), "–".join(f"{c:,}" for c in counts),
                                        *(_cell(cells.get(d), tuned) for d in datasets), mean]) + " |")
    return lines


def mean_rows(rows: list[dict], x: str) -> list[dict]:
    """Per (model, setting) present on every dataset: mean accuracy and mean `x` over the datasets."""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["options"], r["control_for"]), []).append(r)
    out = []
    for group in groups.values():
        if len(group) == len(datasets):
            out.append({**group[0], "dataset": "mean", x: statistics.fmean(float(r[x]) for r in group),
                        "val_top1_mean": statistics.fmean(float(r["val_top1_mean"]) for r in group),
                        "val_top1_std": 0.0})
    return out
