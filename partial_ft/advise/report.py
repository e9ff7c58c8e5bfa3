"""What `advise` writes: advice.md (the table and the recommendation, also printed), the plot, and
advised.yaml (the user's recipe with the recommended strategy and learning rate).

matplotlib draws with the Agg backend (files only), as curves.py does.
"""
from __future__ import annotations

import copy
import shlex
from pathlib import Path
from typing import Any, Optional

import yaml

from ..atomic import write_atomic, write_text
from ..recipe import apply_overrides
from .table import CUT, SKIPPED, apply_settings, Recommendation, Row, count, recommend, sentence

PLOT = "advice.png"
ADVISED = "advised.yaml"


def markdown(rows: list[Row], header: dict[str, Any], rec: Optional[Recommendation], probe: Optional[Row],
             command: Optional[str], notes: list[str]) -> str:
    """advice.md: what was asked, the table, the plot, the recommendation, what was cut, the command."""
    lines = [f"# Advice: {header['recipe']}", "",
             f"Budget {count(header['budget'])} parameters ({100 * header['budget'] / header['total']:.3g}% of "
             f"{count(header['total'])}), time {header['time']} ({header['used']:.0f} s used), carve-out of train: "
             f"{header['n_eval']} images "
             f"({header['fraction']:.0%}, stratified, seed {header['seed']}; the validation split is never used).",
             "", "| candidate | carve-out top-1 | learned | % | delta bytes | s/epoch | peak memory | lr | trials "
             "(run / pruned) | note |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = f"{r.top1:.3f} ± {r.se:.3f}" if r.top1 is not None else "–"
        cells = [f"`{r.name}`", acc, f"{r.learned:,}" if r.learned else "–",
                 f"{100 * r.fraction:.3g}" if r.learned else "–", _num(r.delta_bytes, "{:,}"),
                 _num(r.epoch_seconds, "{:.3g}"),
                 _num(r.peak_memory_bytes and r.peak_memory_bytes / 2**20, "{:.0f} MiB"),
                 _num(r.lr, "{:.3g}") if r.tunes_lr else "exact", f"{r.trials} / {r.pruned}", _note(r)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"![accuracy against learned parameters and time]({PLOT})", "",
              "**Recommendation.** " + sentence(rec, probe), ""]
    if command:
        lines += [f"Train it (on all of train, validated on the validation split): `{command}`", ""]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines).rstrip() + "\n"


def _num(value: Any, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def _note(r: Row) -> str:
    parts = [] if r.in_budget else ["reference, outside the budget"]
    if r.status in (SKIPPED, CUT) or r.note:
        parts.append(r.note or r.status)
    return "; ".join(parts)


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats: as accurate or more for no more cost, sorted by cost.
    (tools/plot.py has the same few lines; the package may not import tools.)"""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def plot(rows: list[Row], path: Path, budget: Optional[int] = None) -> Path:
    """Carve-out top-1 (± 1 SE) against learned parameters and against seconds per epoch, one panel each,
    the Pareto front of each panel drawn as a dashed step line through ringed points, the budget dotted."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never a window
    import matplotlib.pyplot as plt

    done = [r for r in rows if r.top1 is not None]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (key, label) in zip(axes, [("learned", "learned parameters"), ("epoch_seconds", "seconds per epoch")]):
        pts = [(getattr(r, key), r) for r in done if getattr(r, key)]
        for x, r in pts:
            ax.errorbar(x, r.top1, yerr=r.se, fmt="o" if r.in_budget else "s", capsize=3,
                        label=r.name if r.in_budget else f"{r.name} (outside the budget)")
        front = pareto([(x, r.top1) for x, r in pts])
        if front:
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", ls="--", c="k", lw=1)
            ax.scatter([p[0] for p in front], [p[1] for p in front], s=160, facecolors="none", edgecolors="k",
                       label="Pareto front")
        if key == "learned" and budget:
            ax.axvline(budget, ls=":", c="gray", label="the budget")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("carve-out top-1")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def advised_recipe(user_raw: dict, overrides: list[str], row: Row, out: Path) -> dict:
    """The user's recipe (with their overrides) plus the choice: its strategy, its lr, its own overrides;
    the run folder inside the advise folder."""
    raw = apply_settings(apply_overrides(copy.deepcopy(user_raw), overrides), row.settings)
    raw["strategy"] = copy.deepcopy(row.spec)
    if row.lr is not None:
        raw.setdefault("train", {})["lr"] = float(row.lr)
    for key in ("tune_fraction", "tune_seed"):
        (raw.get("data") or {}).pop(key, None)  # the advised run learns from all of train
    raw.setdefault("output", {})["dir"] = str(out / "trained")
    return raw


def write(out: Path, rows: list[Row], header: dict[str, Any], user_raw: dict, overrides: list[str],
          notes: list[str], probe: Optional[Row]) -> tuple[str, Optional[Recommendation]]:
    """Write advice.md, the plot and (when there is a recommendation) advised.yaml; returns the markdown."""
    rec = recommend(rows)
    command = None
    if rec is not None:
        raw = advised_recipe(user_raw, overrides, rec.choice, out)
        path = write_text(out / ADVISED, f"# advised by `python -m partial_ft advise` for {header['recipe']}\n"
                          + yaml.safe_dump(raw, sort_keys=False))
        command = shlex.join(["python", "-m", "partial_ft", "--recipe", str(path)])
    plot(rows, out / PLOT, header["budget"])
    text = markdown(rows, header, rec, probe, command, notes)
    write_text(out / "advice.md", text)
    return text, rec



def append(out: Path, line: str) -> None:
    """Add a paragraph at the end of advice.md."""
    path = out / "advice.md"
    write_text(path, path.read_text().rstrip() + "\n\n" + line + "\n")
