"""The exhaustive check of an advice: every candidate advise sized, tuned without pruning on the same
carve-out and trained with several seeds on all of train, scored on the validation split (a sweep,
`check.yaml`); then whether the recommended candidate is within 0.01 of the best one at or below the
budget there (`check.md`). docs/advise.md, "Checking the advice".

Both read the advise folder's state.json only, so a folder an earlier advise wrote can be checked too:
its candidates' sized strategies are in state.json (older folders: read back from their labels).
"""
from __future__ import annotations

import csv
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from .. import yamlsafe
from ..atomic import write_text
from ..errors import UserError
from ..sweep import grid as grids
from .candidates import CANDIDATES, PROBE
from .state import CARVE_OUT, STATE
from .table import DONE, PENDING, Row, count, recommend
from .tuning import BASE

GRID = "check.yaml"
RESULTS = "check/results.csv"
REPORT = "check.md"
SEEDS = [0, 1, 2]
LRS = [0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3]  # the exhaustive learning rates (advise's range, by ~3x)
TOLERANCE = 0.01  # "within 0.01 of the suite's best" (issue 24)


@dataclass
class Candidate:
    """One candidate of an advise folder: its row (what advise found), sized strategy and own overrides."""

    row: Row
    spec: dict
    own: list[str]

    @property
    def label(self) -> str:
        """Its label in the check sweep's results (results.csv's `options`)."""
        return grids.config_label(self.spec, self.own)


def read_state(folder: str | Path) -> dict:
    """The advise folder's state.json as plain data (UserError when it is not an advise folder)."""
    path = Path(folder) / STATE
    if not path.is_file():
        raise UserError(f"{folder} holds no advice (no {STATE})")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path} cannot be read ({e})") from None


def candidates(state: dict) -> list[Candidate]:
    """The candidates advise did not skip, in its order, each with its row and sized strategy."""
    known = {name: (node, settings, inside) for name, node, settings, inside in CANDIDATES}
    out = []
    for name, saved in state.get("rows", {}).items():
        kind = saved.get("candidate") or name.split("(", 1)[0]
        if kind not in known:
            raise UserError(f"{STATE}: unknown candidate {name!r}")
        node, settings, inside = known[kind]
        spec = saved.get("spec") or _spec_from_label(name, node)
        row = Row(name, spec, total=state.get("total", 0), in_budget=inside, tunes_lr=kind != PROBE,
                  **{k: saved.get(k) for k in ("learned", "top1", "lr", "epoch_seconds")})
        row.n_eval = saved.get("n_eval") or 0
        row.learned = row.learned or 0
        row.status = DONE if row.top1 is not None else PENDING
        out.append(Candidate(row, spec, grids.candidate_overrides(settings)))
    return out


def _spec_from_label(name: str, node: dict) -> dict:
    """A state.json written before it held the strategies: the sized options are in the row's label,
    e.g. `filters(fraction=0.0179)` (strategies.types.describe wrote it)."""
    found = re.fullmatch(r"[A-Za-z_]\w*(?:\((.*)\))?", name)
    if name == PROBE or found is None or not found.group(1):
        return dict(node)
    spec = dict(node)
    for part in found.group(1).split(", "):
        key, _, value = part.partition("=")
        spec[key] = yamlsafe.load(value, f"{STATE}: {name}")
    return spec


def check_grid(state: dict) -> dict:
    """The check sweep's grid (plain data, validated): the candidates as sized, lr exhaustively, 3 seeds."""
    fraction, seed = state.get("tune_fraction", CARVE_OUT[0]), state.get("tune_seed", CARVE_OUT[1])
    if seed != 0:  # the sweep carves with seed 0
        raise UserError(f"{STATE}: the carve-out seed {seed} is not the sweep's (0): no check grid can match it")
    cands = candidates(state)
    if not cands:
        raise UserError(f"{STATE} holds no candidate: advise skipped them all, so there is nothing to check")
    raw = {"seeds": list(SEEDS), "tune": {"train.lr": list(LRS)}, "search": {"pruner": "none"},
           "tune_fraction": fraction,
           "strategies": [{**c.spec, **({"overrides": c.own} if c.own else {})} for c in cands]}
    grids.from_dict(raw)
    return raw


def write_check_grid(folder: str | Path, path: Optional[str | Path] = None) -> Path:
    """Write the check sweep's grid for the advise `folder` (default: `folder`/check.yaml), with the
    command that runs it; returns its path."""
    folder = Path(folder)
    raw = check_grid(read_state(folder))
    path = Path(path) if path is not None else folder / GRID
    head = [f"# The exhaustive check of the advice in {folder}: every candidate as advise sized it, its learning",
            "# rate chosen from all of these on the same carve-out of train (no pruning), then each seed trained on",
            "# all of train and scored on the validation split. Run it, then compare:",
            f"#   {sweep_command(folder, path)}", f"#   python tools/advise_check.py --advice {folder}"]
    body = yaml.safe_dump(raw, sort_keys=False, width=120, default_flow_style=None)
    return write_text(path, "\n".join(head) + "\n" + body)


def sweep_command(folder: str | Path, grid: str | Path) -> str:
    """The command that runs the check sweep (on advise's base recipe: the user's with their overrides)."""
    folder = Path(folder)
    return shlex.join(["python", "-m", "partial_ft", "sweep", "--recipe", str(folder / BASE), "--grid", str(grid),
                       "--out", str(folder / "check")])


@dataclass
class Result:
    """A candidate's final runs in the check sweep: validation top-1 over seeds (None: not in results.csv)."""

    candidate: Candidate
    mean: Optional[float] = None
    std: Optional[float] = None
    seeds: int = 0
    lr: str = ""
    learned: Optional[int] = None

    def accuracy(self) -> str:
        return "–" if self.mean is None else f"{self.mean:.4f} ± {self.std:.4f} ({self.seeds} seeds)"


@dataclass
class Verdict:
    """The recommended candidate against the best one at or below the budget, on the validation split."""

    results: list[Result]
    recommended: Result
    best: Optional[Result]  # the best at or below the budget among those in results.csv
    full: Optional[Result]  # the reference, outside the budget
    missing: list[str]  # candidates at or below the budget that results.csv lacks

    @property
    def difference(self) -> Optional[float]:
        if self.best is None or self.recommended.mean is None:
            return None
        return self.best.mean - self.recommended.mean

    @property
    def within(self) -> Optional[bool]:
        """Within TOLERANCE of the best (None: the check sweep has not finished every candidate)."""
        if self.missing or self.difference is None:
            return None
        return self.difference <= TOLERANCE + 1e-12


def read_results(path: str | Path) -> dict[str, dict]:
    """results.csv of the check sweep: its rows by label (`options`), random controls aside."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no check results at {path}: run the check sweep first (the command is in check.yaml)")
    with open(path, newline="") as f:
        return {r["options"]: r for r in csv.DictReader(f) if not r.get("control_for")}


def compare(folder: str | Path, results: Optional[str | Path] = None) -> Verdict:
    """Advise's recommendation (its rule, on state.json) against the check sweep's results
    (default: `folder`/check/results.csv)."""
    state = read_state(folder)
    found = read_results(results if results is not None else Path(folder) / RESULTS)
    cands = candidates(state)
    rec = recommend([c.row for c in cands])
    if rec is None:
        raise UserError(f"{folder}: advise has no recommendation yet (no candidate within the budget finished a trial)")
    out = [_result(c, found.get(c.label)) for c in cands]
    recommended = next(r for r in out if r.candidate.row is rec.choice)
    inside = [r for r in out if r.candidate.row.in_budget]
    scored = [r for r in inside if r.mean is not None]
    best = max(scored, key=lambda r: r.mean) if scored else None  # max keeps the first of equals
    full = next((r for r in out if not r.candidate.row.in_budget), None)
    return Verdict(out, recommended, best, full, [r.candidate.row.name for r in inside if r.mean is None])


def _result(c: Candidate, row: Optional[dict]) -> Result:
    if row is None:
        return Result(c)
    return Result(c, float(row["val_top1_mean"]), float(row["val_top1_std"]), int(row["seeds"]),
                  row.get("train.lr", ""), int(float(row["learned_params"])))


def markdown(verdict: Verdict, folder: Path) -> str:
    """check.md: each candidate's validation top-1, then the recommended against the best within the budget."""
    lines = [f"# Checking the advice in {folder}", "",
             "Every candidate as advise sized it, its learning rate chosen from "
             f"{', '.join(f'{v:g}' for v in LRS)} on the same carve-out of train (no pruning), then {len(SEEDS)} "
             "seeds trained on all of train: top-1 on the validation split (mean ± std over seeds).", "",
             "| candidate | learned | validation top-1 | lr | note |", "|---|---|---|---|---|"]
    for r in verdict.results:
        notes = ["recommended" if r is verdict.recommended else "",
                 "the best at or below the budget" if r is verdict.best else "",
                 "" if r.candidate.row.in_budget else "reference, outside the budget",
                 "not in results.csv" if r.mean is None else ""]
        learned = count(r.learned) if r.learned is not None else "–"
        lines.append(f"| `{r.candidate.row.name}` | {learned} | {r.accuracy()} | {r.lr or '–'} | "
                     f"{'; '.join(n for n in notes if n)} |")
    lines += ["", f"- Recommended: `{verdict.recommended.candidate.row.name}`: {verdict.recommended.accuracy()}"]
    if verdict.best is not None:
        best = verdict.best
        lines.append(f"- The best at or below the budget: `{best.candidate.row.name}`: {best.accuracy()}")
    if verdict.full is not None:
        lines.append(f"- `{verdict.full.candidate.row.name}` (outside the budget): {verdict.full.accuracy()}")
    if verdict.difference is not None:
        lines.append(f"- Difference (best − recommended): {verdict.difference:.4f}")
    answer = {True: "yes", False: "no", None: "unknown"}[verdict.within]
    why = f" (the check sweep lacks {', '.join(f'`{m}`' for m in verdict.missing)})" if verdict.missing else ""
    lines.append(f"- Within {TOLERANCE:g}: **{answer}**{why}")
    return "\n".join(lines) + "\n"


def check_advice(folder: str | Path, results: Optional[str | Path] = None) -> tuple[str, Verdict]:
    """Compare (see `compare`), write `folder`/check.md; returns its text and the verdict."""
    verdict = compare(folder, results)
    text = markdown(verdict, Path(folder))
    write_text(Path(folder) / REPORT, text)
    return text, verdict
