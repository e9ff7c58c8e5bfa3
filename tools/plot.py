"""Accuracy against learned parameters (log x) per strategy family, with the paper's logarithmic fit.

    python tools/plot.py sweeps/digits/results.csv            # writes accuracy_vs_params.{png,svg}, fits.json

The paper observes that accuracy grows about logarithmically with the number of learned parameters:
acc = a + b * ln(params). Each family with at least two distinct sizes gets its own least-squares fit,
drawn as a line and written (a, b, r2) to fits.json.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import re
from pathlib import Path


def log_fit(params: list[float], accs: list[float]) -> dict[str, float]:
    """Least-squares fit of acc = a + b * ln(params); returns a, b and r2."""
    xs = [math.log(p) for p in params]
    n = len(xs)
    mx, my = sum(xs) / n, sum(accs) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if n < 2 or sxx == 0:
        raise ValueError("a log fit needs at least two distinct parameter counts")
    b = sum((x - mx) * (y - my) for x, y in zip(xs, accs)) / sxx
    a = my - b * mx
    ss_res = sum((y - (a + b * x)) ** 2 for x, y in zip(xs, accs))
    ss_tot = sum((y - my) ** 2 for y in accs)
    return {"a": a, "b": b, "r2": 1 - ss_res / ss_tot if ss_tot else 1.0}


def family(label: str) -> str:
    """A setting's family: its label without the size options, e.g. 'filters(fraction=0.1, fixed=zero)'
    -> 'filters(fixed=zero)', so that one family's points differ only in how much learns."""
    inner = re.sub(r"(fraction|count)=[^,)]*(, )?", "", label).replace(", )", ")").replace("()", "")
    return inner.replace(", )", ")")


def read_results(path: Path) -> dict[str, list[tuple[float, float, float]]]:
    """results.csv -> {family: [(learned_params, mean top-1, std), ...]}; see family()."""
    families: dict[str, list[tuple[float, float, float]]] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            families.setdefault(family(row.get("options") or row["strategy"]), []).append(
                (float(row["learned_params"]), float(row["val_top1_mean"]), float(row.get("val_top1_std") or 0)))
    return families


# tab10's colours; past every 10 families the marker and the fit's line style change too, so that no two
# families look alike, neither their points nor their fits (up to 80 families; the first 10: circles
# and solid fits)
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
LINESTYLES = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2, 2, 2))]


def styles(names: list[str]) -> dict[str, dict]:
    """A distinct look per family, in the given order: colour, marker (its points) and line style (its fit)."""
    out = {}
    for i, name in enumerate(names):
        rest = i // len(COLORS)
        out[name] = {"color": COLORS[i % len(COLORS)], "marker": MARKERS[rest % len(MARKERS)],
                     "linestyle": LINESTYLES[rest % len(LINESTYLES)]}
    return out


def figure(families: dict[str, list[tuple[float, float, float]]], title: str = ""):
    """The plot (a matplotlib Figure, not yet saved) and the per-family fits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fits = {}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    look = styles(sorted(families))
    handles = []  # in the legend each family's fit follows its points
    for family, points in sorted(families.items()):
        points.sort()
        xs, ys, es = zip(*points)
        style = look[family]
        handles.append(ax.errorbar(xs, ys, yerr=es, marker=style["marker"], color=style["color"], linestyle="none",
                                   capsize=3, label=family))
        if len({round(x) for x in xs}) >= 2:
            fit = log_fit(list(xs), list(ys))
            fits[family] = fit
            grid = [min(xs) * (max(xs) / min(xs)) ** (i / 50) for i in range(51)]
            handles += ax.plot(grid, [fit["a"] + fit["b"] * math.log(g) for g in grid], color=style["color"],
                               linestyle=style["linestyle"], linewidth=1,
                               label=f"{family}: {fit['a']:.3f} + {fit['b']:.3f}·ln(p)")
    ax.set_xscale("log")
    ax.set_xlabel("learned parameters (log scale)")
    ax.set_ylabel("validation top-1")
    ax.set_title(title or "accuracy per learned parameter")
    ax.grid(True, which="both", alpha=0.3)
    top = max(y + e for points in families.values() for _, y, e in points)
    ax.set_ylim(top=max(1.02, top + 0.02) if top <= 1 else None)  # a steep fit must not stretch the axis
    entries = len(handles)
    if entries <= 8:
        ax.legend(handles=handles, fontsize=8)
    else:  # beside the axes, in columns, rather than over the points
        columns = math.ceil(entries / 24)
        fig.set_size_inches(7 + 3.5 * columns, 4.5 + 0.1 * min(entries, 24))
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
                  ncol=columns)
    fig.tight_layout()
    return fig, fits


def plot(families: dict[str, list[tuple[float, float, float]]], out: Path, title: str = "") -> dict:
    fig, fits = figure(families, title)
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "svg"):
        fig.savefig(out / f"accuracy_vs_params.{ext}", dpi=120, bbox_inches="tight")  # all of an outside legend
    plt.close(fig)
    (out / "fits.json").write_text(json.dumps(fits, indent=2) + "\n")
    return fits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", help="results.csv written by tools/sweep.py")
    p.add_argument("--out", help="output folder (default: next to results.csv)")
    p.add_argument("--title", default="")
    args = p.parse_args()
    results = Path(args.results)
    fits = plot(read_results(results), Path(args.out) if args.out else results.parent, args.title)
    for family, fit in fits.items():
        print(f"{family}: acc = {fit['a']:.4f} + {fit['b']:.4f} ln(params)  (r2 {fit['r2']:.3f})")


if __name__ == "__main__":
    main()
