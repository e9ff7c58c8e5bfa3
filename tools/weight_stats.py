"""The paper's weight analysis: per layer, mean |w| and variance of the learned versus the fixed weights.

    python tools/weight_stats.py runs/quickstart            # writes weight_stats.{csv,md,png} in the run folder

The trained model is rebuilt from the run's delta (partial_ft.load_delta); learned_masks() tells, entry
by entry, what learned. Only conv and linear weights are analysed (the paper's "layers").
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

from torch import nn

FIELDS = ["layer", "kind", "entries", "learned", "learned_mean_abs", "learned_var", "fixed_mean_abs", "fixed_var"]


def layer_kind(module: nn.Module) -> str:
    """What sort of layer: `conv 3x3`, `conv 1x1`, `conv 3x3 depthwise`, `linear`. Statistics of layers of
    different kinds are not one trend (a 1x1 downsample conv between two 3x3 convs)."""
    if isinstance(module, nn.Linear):
        return "linear"
    kernel = "x".join(str(k) for k in module.kernel_size)
    depthwise = module.groups > 1 and module.groups == module.in_channels
    return f"conv {kernel}" + (" depthwise" if depthwise else " grouped" if module.groups > 1 else "")


def series(rows: list[dict]) -> dict[str, list[int]]:
    """Row positions of each kind, in network order: one plotted series per kind."""
    out: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        out.setdefault(row["kind"], []).append(i)
    return out


def layer_stats(model: nn.Module) -> list[dict]:
    """One row per conv/linear weight: counts, mean |w| and variance of learned and of fixed entries."""
    from partial_ft import learned_masks

    state = model.state_dict()
    rows = []
    for name, mask in learned_masks(model).items():
        module = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        if not name.endswith("weight") or not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            continue
        w = state[name].float()
        row = {"layer": name.removesuffix(".weight"), "kind": layer_kind(module), "entries": w.numel(),
               "learned": int(mask.sum())}
        for part, values in (("learned", w[mask]), ("fixed", w[~mask])):
            row[f"{part}_mean_abs"] = values.abs().mean().item() if values.numel() else None
            row[f"{part}_var"] = values.var().item() if values.numel() > 1 else None
        rows.append(row)
    return rows


def _fmt(v) -> str:
    if v is None:
        return "–"
    return f"{v:.4g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)


def write(rows: list[dict], out: Path, title: str) -> None:
    with (out / "weight_stats.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| layer | kind | entries | learned | learned mean abs | learned var | fixed mean abs | fixed var |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(_fmt(r[k]) for k in FIELDS) + " |" for r in rows]
    (out / "weight_stats.md").write_text("\n".join(lines) + "\n")

    plot(rows, out / "weight_stats.png", title)


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Mean |w| and variance per layer, layer names on the x axis; one series per kind of layer (its own
    colour), learned entries as dots on solid lines, fixed ones as crosses on dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(max(7, len(rows) * 0.22), 7.5), sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, stat, label in ((axes[0], "mean_abs", "mean |w|"), (axes[1], "var", "variance")):
        for k, (kind, index) in enumerate(series(rows).items()):
            for part, marker, style in (("learned", "o", "-"), ("fixed", "x", "--")):
                ys = [rows[i][f"{part}_{stat}"] for i in index]
                ys = [float("nan") if y is None else y for y in ys]
                ax.plot(index, ys, marker=marker, linestyle=style, linewidth=0.8, markersize=4,
                        color=colors[k % len(colors)], label=f"{kind}, {part}")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over a point
    axes[1].set_xticks(range(len(rows)), [r["layer"] for r in rows], rotation=90, fontsize=7)
    axes[1].set_xlabel("layer (input to output)")
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a run folder (with delta.safetensors)")
    p.add_argument("--out", help="output folder (default: the run folder)")
    args = p.parse_args()
    from partial_ft import load_delta

    run_dir = Path(args.run_dir)
    model = load_delta(run_dir)
    rows = layer_stats(model)
    out = Path(args.out) if args.out else run_dir
    out.mkdir(parents=True, exist_ok=True)
    write(rows, out, f"weights of {run_dir.name}: learned vs fixed")
    print((out / "weight_stats.md").read_text())
    print(f"wrote {out / 'weight_stats.csv'}, {out / 'weight_stats.md'}, {out / 'weight_stats.png'}")


if __name__ == "__main__":
    main()
