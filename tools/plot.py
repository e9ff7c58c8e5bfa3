"""Accuracy against a cost (learned parameters by default; log x) per strategy series, one panel per dataset
plus their mean, with the Pareto front marked and the paper's logarithmic fit per series.

    python tools/plot.py sweeps/digits/results.csv                  # accuracy_vs_learned_params.{png,svg}, fits.json
    python tools/plot.py sweeps/digits/results.csv --x delta_bytes  # or train_seconds, peak_memory_mib

A series is one strategy setting at its different sizes (e.g. filters(fraction=…, fixed=zero)); a setting
with one size keeps its full label (filters(count=1)). Every series in a figure has its own colour (up to
20; then marker and line style change as well). The paper observes acc ≈ a + b·ln(params): each series
with three or more distinct x values gets a least-squares fit, drawn only over its points' range and
labelled with r², and written to fits.json. The Pareto front (no other point is as accurate for less
cost) is drawn as a dashed black step line through ringed points.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import re
from pathlib import Path

from partial_ft import sweep

results = sweep.results  # the columns and means results.csv is written with

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354",
          "#756bb1", "#636363"]  # tab10, then tab20b/c's dark shades: no colour repeats within 20 series
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
LINESTYLES = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2, 2, 2))]
SIZE_OPTION = re.compile(r"(fraction|count|budget)=[^,)]*")  # a strategy's size: fraction, count or auto's budget
MIN_FIT_POINTS = 3  # distinct sizes a series needs for a fit: through two points any fit is exact (r² 1)
AXIS_NAMES = {"learned_params": "learned parameters", "delta_bytes": "delta on disk (bytes)",
              "train_seconds": "train seconds", "peak_memory_mib": "peak memory (MiB)"}


def log_fit(xs: list[float], accs: list[float]) -> dict[str, float]:
    """Least-squares fit of acc = a + b * ln(x); returns a, b, r2 and the x range it holds over."""
    lx = [math.log(x) for x in xs]
    n = len(lx)
    mx, my = sum(lx) / n, sum(accs) / n
    sxx = sum((x - mx) ** 2 for x in lx)
    if n < 2 or sxx == 0:
        raise ValueError("a log fit needs at least two distinct x values")
    b = sum((x - mx) * (y - my) for x, y in zip(lx, accs)) / sxx
    a = my - b * mx
    ss_res = sum((y - (a + b * x)) ** 2 for x, y in zip(lx, accs))
    ss_tot = sum((y - my) ** 2 for y in accs)
    return {"a": a, "b": b, "r2": 1 - ss_res / ss_tot if ss_tot else 1.0, "x_min": min(xs), "x_max": max(xs)}


def read_rows(path: Path) -> list[dict]:
    """results.csv rows (files from before suites: no dataset / model columns, read as empty)."""
    with path.open() as f:
        return [{"dataset": "", "model": "", "control_for": "", **row} for row in csv.DictReader(f)]


def series_names(rows: list[dict]) -> dict[tuple[str, str], str]:
    """(model, options) -> series name: the label with its size option as '…' when the setting has
    several sizes (else the full label), prefixed by the model when there are several models."""
    several = len({r["model"] for r in rows}) > 1

    def base(r: dict) -> str:
        return (f"{r['model']}: " if several else "") + SIZE_OPTION.sub(lambda m: f"{m[1]}=…", r["options"])

    sizes: dict[str, set[str]] = {}
    for r in rows:
        sizes.setdefault(base(r), set()).add(r["options"])
    return {(r["model"], r["options"]): base(r) if len(sizes[base(r)]) > 1 else
            (f"{r['model']}: " if several else "") + r["options"] for r in rows}


def styles(names: list[str]) -> dict[str, dict]:
    """A distinct look per series, in the given order: colour, marker (its points), line style (its fit)."""
    out = {}
    for i, name in enumerate(names):
        rest = i // len(COLORS)
        out[name] = {"color": COLORS[i % len(COLORS)], "marker": MARKERS[rest % len(MARKERS)],
                     "linestyle": LINESTYLES[rest % len(LINESTYLES)]}
    return out


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats: as accurate or more for no more cost (ascending cost)."""
    front, best = [], -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def panel(ax, rows: list[dict], names: dict[tuple[str, str], str], look: dict[str, dict], x: str) -> dict[str, dict]:
    """One dataset's points, fits and Pareto front on `ax`; returns the fits by series."""
    groups: dict[str, list[tuple[float, float, float]]] = {}
    for r in rows:
        groups.setdefault(names[r["model"], r["options"]], []).append((float(r[x]), float(r["val_top1_mean"]), float(r["val_top1_std"] or 0)))
    fits = {}
    for name, points in sorted(groups.items()):
        points.sort()
        xs, ys, es = zip(*points)
        style = look[name]
        ax.errorbar(xs, ys, yerr=es, marker=style["marker"], color=style["color"], linestyle="none", capsize=3,
                    label=name)
        if len({round(v, 9) for v in xs}) >= MIN_FIT_POINTS and min(xs) > 0:
            fit = fits[name] = log_fit(list(xs), list(ys))
            grid = [min(xs) * (max(xs) / min(xs)) ** (k / 50) for k in range(51)]  # its points' range only
            ax.plot(grid, [fit["a"] + fit["b"] * math.log(g) for g in grid], color=style["color"],
                    linestyle=style["linestyle"], linewidth=1,
                    label=f"{name}: {fit['a']:.3f} + {fit['b']:.3f}·ln(x), r² {fit['r2']:.2f}")
    front = pareto([(float(r[x]), float(r["val_top1_mean"])) for r in rows if float(r[x]) > 0])
    if front:
        fx, fy = zip(*front)
        ax.step(fx, fy, where="post", color="black", linestyle="--", linewidth=0.8, label="Pareto front")
        ax.scatter(fx, fy, s=140, facecolors="none", edgecolors="black", linewidths=0.8)
    ax.set_xscale("log")
    ax.grid(True, which="both", alpha=0.3)
    top = max(float(r["val_top1_mean"]) + float(r["val_top1_std"] or 0) for r in rows)
    ax.set_ylim(top=max(1.02, top + 0.02) if top <= 1 else None)  # a steep fit must not stretch the axis
    return fits


def figure(rows: list[dict], x: str = "learned_params", title: str = ""):
    """The plot (a matplotlib Figure, not yet saved) and the fits by panel and series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    panels = [(d, [r for r in rows if r["dataset"] == d]) for d in datasets]
    if len(datasets) > 1:
        panels.append(("mean", results.mean_rows(rows, x)))
    names = series_names(rows)
    look = styles(sorted(set(names.values())))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False, sharey=True)
    fits = {}
    for ax, (name, mine) in zip(axes[0], panels):
        fits[name or "all"] = panel(ax, mine, names, look, x)
        ax.set_title(name if name else title or "accuracy per learned parameter")
        ax.set_xlabel(f"{AXIS_NAMES.get(x, x)} (log scale)")
    axes[0][0].set_ylabel("validation top-1")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:  # every series of the figure once, whichever panel it appears in
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if title and datasets != [""]:
        fig.suptitle(title)  # once above the panels; each panel is titled by its dataset
    columns = max(1, math.ceil(len(handles) / 24))
    fig.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 0.95), ncol=columns)
    fig.tight_layout()
    return fig, fits


def plot(rows: list[dict], out: Path, x: str = "learned_params", title: str = "") -> dict:
    """Write accuracy_vs_<x>.{png,svg} and fits.json into `out`; returns the fits."""
    import matplotlib.pyplot as plt

    fig, fits = figure(rows, x, title)
    out.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "svg"):
        fig.savefig(out / f"accuracy_vs_{x}.{ext}", dpi=120, bbox_inches="tight")  # all of an outside legend
    plt.close(fig)
    (out / "fits.json").write_text(json.dumps(fits, indent=2) + "\n")
    return fits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", help="results.csv written by `python -m partial_ft sweep`")
    p.add_argument("--out", help="output folder (default: next to results.csv)")
    p.add_argument("--x", default="learned_params", choices=results.COST, help="the cost on the x axis")
    p.add_argument("--title", default="")
    args = p.parse_args()
    table = Path(args.results)
    out = Path(args.out) if args.out else table.parent
    fits = plot(read_rows(table), out, args.x, args.title)
    for panel_name, panel_fits in fits.items():
        for name, fit in panel_fits.items():
            print(f"{panel_name}: {name}: acc = {fit['a']:.4f} + {fit['b']:.4f} ln(x)  (r2 {fit['r2']:.3f})")
    print(f"wrote {', '.join(str(out / name) for name in (f'accuracy_vs_{args.x}.png', f'accuracy_vs_{args.x}.svg', 'fits.json'))}")


if __name__ == "__main__":
    main()
