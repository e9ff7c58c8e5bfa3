"""What `pruner: halving` would have chosen, and cost, at each `min_epochs`: a finished sweep tuned with
`pruner: none` replayed through Optuna's own SuccessiveHalvingPruner, without training anything again.

    python tools/pruning_replay.py advice/transfer/check advice/digits/check --min-epochs 1 2 3

In such a sweep every candidate trained to its end, so its carve-out top-1 after every epoch is known (the
study's reports, or the run folder's metrics.jsonl where a resumed run reported only its later epochs).
Each configuration's candidates are replayed in trial order, as one process (`--jobs 1`) runs them: a
candidate reports its recorded curve epoch by epoch to a fresh in-memory study with the pruner, and stops
where the pruner says so. The choice is the best finished candidate, the first on a tie, as the sweep
chooses. Candidates that report no epoch (the exact probe) cannot be pruned and are left out.
Prints, per folder, a markdown table: each configuration's choice at every `min_epochs` against the
unpruned choice, the carve-out top-1 the choice ends at, and the share of the tuning epochs trained.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from partial_ft import UserError

TUNE_STUDY = re.compile(r"^(.+)/tune/(\d+)$")  # how a sweep names a configuration's tuning study


@dataclass
class Candidate:
    """One tuning candidate of an unpruned sweep: its values and its carve-out top-1 after each epoch."""

    label: str
    curve: list[float]


@dataclass
class Replay:
    """A configuration replayed at one min_epochs: the chosen candidate's index, the epochs each trained."""

    chosen: int
    epochs: list[int]


def replay(curves: list[list[float]], min_epochs: int, reduction_factor: int = 4) -> Replay:
    """Run the candidates' recorded curves (carve-out top-1 after epochs 1, 2, ...) one after another
    through Optuna's SuccessiveHalvingPruner; which one is chosen and how many epochs each trained."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=min_epochs, reduction_factor=reduction_factor)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    epochs, finished = [], {}
    for i, curve in enumerate(curves):
        trial = study.ask()
        ran = len(curve)
        for epoch, top1 in enumerate(curve, start=1):
            trial.report(top1, epoch)
            if epoch < len(curve) and trial.should_prune():
                ran = epoch
                break
        if ran < len(curve):
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, curve[-1])
            finished[i] = curve[-1]
        epochs.append(ran)
    return Replay(first_best(finished), epochs)


def first_best(finals: dict[int, float]) -> int:
    """The candidate with the highest final top-1, the first of equals, as the sweep chooses."""
    return max(finals, key=lambda i: (finals[i], -i))


def _curve(trial: optuna.trial.FrozenTrial, root: Path) -> list[float]:
    """The trial's carve-out top-1 per epoch: its reports when complete, else its run folder's record."""
    reports = trial.intermediate_values
    if reports and sorted(reports) == list(range(1, max(reports) + 1)):
        return [reports[e] for e in sorted(reports)]
    metrics = root / trial.user_attrs.get("run_dir", "") / "metrics.jsonl"
    if not metrics.is_file():
        return []
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [r["val_top1"] for r in sorted(rows, key=lambda r: r["epoch"]) if "val_top1" in r]


def configurations(folder: Path, root: Path) -> dict[str, list[Candidate]]:
    """Every tuning study of the sweep in `folder` (its study.journal): configuration -> candidates in
    trial order. A study with a pruned candidate is refused: its curves stop early."""
    storage = JournalStorage(JournalFileBackend(str(folder / "study.journal")))
    found: dict[str, list[Candidate]] = {}
    summaries = [s for s in optuna.get_all_study_summaries(storage) if TUNE_STUDY.match(s.study_name)]
    for summary in sorted(summaries, key=lambda s: int(TUNE_STUDY.match(s.study_name).group(2))):
        trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(deepcopy=False)
        if any(t.state == TrialState.PRUNED for t in trials):
            raise UserError(f"{folder}: {summary.study_name} pruned candidates; replay a sweep with pruner: none")
        done = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.number)
        candidates = [Candidate(_label(t.params), _curve(t, root)) for t in done]
        if candidates and all(len(c.curve) > 1 for c in candidates):
            found[summary.user_attrs.get("configuration", summary.study_name)] = candidates
    return found


def shuffled(curves: list[list[float]], min_epochs: int, orders: int, seed: int = 0) -> tuple[float, float, float]:
    """The candidates replayed in `orders` random orders (seeded): the mean share of the tuning epochs
    trained, the share of orders whose choice ends below the best candidate, and the mean carve-out top-1
    lost against the best candidate's."""
    rng = np.random.default_rng(seed)
    best, whole = max(c[-1] for c in curves), sum(len(c) for c in curves)
    shares, losses = [], []
    for _ in range(orders):
        order = [curves[i] for i in rng.permutation(len(curves))]
        r = replay(order, min_epochs)
        shares.append(sum(r.epochs) / whole)
        losses.append(best - order[r.chosen][-1])
    return float(np.mean(shares)), float(np.mean([loss > 0 for loss in losses])), float(np.mean(losses))


def _label(params: dict) -> str:
    return ", ".join(f"{k.split('.')[-1]} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items())


def table(found: dict[str, list[Candidate]], min_epochs: list[int], orders: int = 0) -> str:
    """The markdown table of one sweep's replay; with `orders`, a last row of each min_epochs replayed in
    that many random orders of the candidates (epochs trained, choices below the best, mean top-1 lost)."""
    head = "| configuration | none | " + " | ".join(f"min_epochs {m}" for m in min_epochs) + " |"
    lines = [head, "|---" * (2 + len(min_epochs)) + "|"]
    trained = {m: 0 for m in min_epochs}
    changed = {m: 0 for m in min_epochs}
    total = 0
    for name, candidates in found.items():
        curves = [c.curve for c in candidates]
        unpruned, whole = first_best({i: c[-1] for i, c in enumerate(curves)}), sum(len(c) for c in curves)
        total += whole
        cells = [f"{candidates[unpruned].label} ({curves[unpruned][-1]:.4f})"]
        for m in min_epochs:
            r = replay(curves, m)
            trained[m] += sum(r.epochs)
            differs = r.chosen != unpruned
            changed[m] += differs
            text = f"{candidates[r.chosen].label} ({curves[r.chosen][-1]:.4f}), {sum(r.epochs)}/{whole}"
            cells.append(f"**{text}**" if differs else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(f"| **all: epochs trained, choices changed** | {total} | "
                 + " | ".join(f"{trained[m]} ({trained[m] / max(total, 1):.0%}), {changed[m]} of {len(found)}"
                              for m in min_epochs) + " |")
    if orders:
        cells = []
        for m in min_epochs:
            runs = [shuffled([c.curve for c in candidates], m, orders) for candidates in found.values()]
            share, worse, lost = (float(np.mean(col)) for col in zip(*runs))
            cells.append(f"{share:.0%}, {worse:.0%} worse, " + (f"−{lost:.4f}" if lost > 0 else "0"))
        lines.append(f"| **{orders} random orders: epochs, choices worse, mean Δ top-1** | 100% | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="sweep folders swept with pruner: none")
    parser.add_argument("--min-epochs", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--orders", type=int, default=0,
                        help="also replay each configuration in this many random orders of its candidates")
    parser.add_argument("--root", type=Path, default=Path("."),
                        help="where the sweeps ran from (run folders are recorded relative to it)")
    args = parser.parse_args(argv)
    try:
        if any(m < 1 for m in args.min_epochs) or args.orders < 0:
            raise UserError("--min-epochs: each must be at least 1; --orders: at least 0")
        for folder in args.folders:
            print(_replay_folder(folder, args))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _replay_folder(folder: Path, args: argparse.Namespace) -> str:
    if not (folder / "study.journal").is_file():
        raise UserError(f"{folder}: no study.journal (a sweep folder with its default storage)")
    found = configurations(folder, args.root)
    return (f"## {folder}\n\nEach cell: the chosen candidate (its carve-out top-1 at the end), epochs trained / "
            f"epochs without pruning. Bold: a choice other than the unpruned one.\n\n"
            f"{table(found, args.min_epochs, args.orders)}\n")


if __name__ == "__main__":
    sys.exit(main())
