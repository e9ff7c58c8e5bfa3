"""The run folder's single owner: everything partial_ft writes into a run folder goes through here.

A run folder holds recipe.yaml, plan.txt, data.json, metrics.jsonl, summary.json, delta.safetensors,
README.md (the model card), training_curve.png, logs/ (trackers), eval.json and checkpoints/ (see
docs/run-folder.md), a marker naming the run and the files it wrote (runfiles.py), and while a process
uses it, a lock (runlock.py). Every file that is read back later is written atomically (temporary file
+ rename). Only folders that partial_ft marked are ever replaced, and then only the files their run wrote.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from . import checkpoints, curves, delta, jsonsafe, modelcard, runfiles
from .atomic import check_writable, staged, write_atomic, write_json, write_text
from .errors import UserError, first_line
from .recipe import Recipe
from .runfiles import (CARD, CONFUSION, CURVE, DATA, EVAL, LOGS, MARKER, METRICS, OWN, PLAN, PREVIOUS,  # noqa: F401
                       RECIPE, STRATEGY, SUMMARY)
from .runlock import LOCK, RunLock  # noqa: F401


def is_ours(path: Path) -> bool:
    """Whether partial_ft made this folder (its marker)."""
    return (path / MARKER).is_file()


def check_folder(recipe: Recipe, overwrite: bool = False, resume: bool = False) -> Optional[Path]:
    """Decide, without writing anything, whether the run folder can be used: refuses an output path that is
    a file, whatever runfiles.check refuses (a folder partial_ft did not make, links, a run there without
    --overwrite / --resume, a resume of another recipe or damaged files) unless another process is using
    the folder (that refusal wins), and an output path that is not writable. Returns the checkpoint to
    resume from, if any. Cheap: runs before any data or model; RunFolder.start takes the same decision
    again under the lock."""
    run_dir = recipe.run_dir
    if overwrite and resume:
        raise UserError("pass --resume or --overwrite, not both")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"output.dir {run_dir} is a file, not a folder")
    refused: Optional[UserError] = None
    try:
        last = runfiles.check(run_dir, recipe, overwrite, resume)
    except UserError as e:
        refused = e
    if run_dir.is_dir() and is_ours(run_dir):  # a folder another process is using: what it holds may be
        RunLock(run_dir).check_free()          # half-written, so that refusal comes first
    if refused is not None:
        raise refused
    check_writable(run_dir, "output.dir")
    return last


# --------------------------------------------------------------------------------------------
# the folder while a run uses it


class RunFolder:
    """The run folder of one training run. Only the main process writes; the others only read. Every
    name is added to the run's manifest (the marker) before it is first written."""

    def __init__(self, path: Path, main: bool = True):
        self.path, self.main = Path(path), main
        self.lock, self.replacing = RunLock(self.path), False

    def start(self, recipe: Recipe, overwrite: bool = False, resume: bool = False,
              data_info: Optional[dict[str, Any]] = None, plan: Any = None) -> Optional[Path]:
        """Lock the folder (main process) and make it ready: check_folder's decision taken again under the
        lock (with `data_info`, --resume also refuses data that data.json no longer describes); --overwrite
        moves the old run aside until the new one has finished. A fresh start (or a resume with nothing saved
        yet) with the strategy `plan` writes the run's first files: recipe, the plan's table, data
        description, and the resolved strategy (what a strategy chose from data, so --resume rebuilds it
        without scoring); every name the run will write is in its manifest from then on. Returns the
        checkpoint to resume from, if any."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create run folder {self.path}: {e.strerror}") from None
        self.lock.acquire()
        last = runfiles.check(self.path, recipe, overwrite, resume, data_info)
        if overwrite and is_ours(self.path):
            runfiles.move_aside(self.path)
            self.replacing = True
        if not is_ours(self.path):
            runfiles.new_marker(self.path)
        if recipe.train.log_with:  # trackers write there (log_with may be set on a resume too)
            runfiles.register(self.path, [LOGS])
        if last is not None or plan is None:
            return last
        runfiles.register(self.path, [RECIPE, PLAN, DATA, STRATEGY, METRICS, checkpoints.CHECKPOINTS,
                                      delta.DELTA_NAME, CURVE, CARD, SUMMARY])
        strategy = {"strategy": plan.spec if plan.spec is not None else recipe.strategy,
                    "scoring_seconds": round(plan.scoring_seconds, 3)}
        write_text(self.path / RECIPE, recipe.to_yaml())
        write_text(self.path / PLAN, plan.table() + "\n")
        write_json(self.path / DATA, data_info or {})
        write_json(self.path / STRATEGY, strategy)
        (self.path / METRICS).unlink(missing_ok=True)
        return None

    def release(self) -> None:
        """Give the lock back (a crash leaves the kernel to free it)."""
        self.lock.release()

    def abandon(self) -> None:
        """The run failed (not a signal's checkpointed stop): an --overwrite brings the old run back."""
        if self.replacing:
            runfiles.restore_previous(self.path)
            self.replacing = False

    def read_recipe(self) -> Recipe:
        """The recipe the folder records; a missing, empty or damaged one is one clear error."""
        return runfiles.read_recipe(self.path)

    def read_summary(self) -> dict[str, Any]:
        """The finished run's summary.json; a missing or damaged one is one clear error."""
        path = self.path / SUMMARY
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: no finished run's summary ({first_line(e)})") from None

    def write_json(self, name: str, obj: Any) -> Path:
        runfiles.register(self.path, [name])
        return write_json(self.path / name, obj)

    def write_confusion(self, result: dict[str, Any]) -> Path:
        """`eval`'s confusion matrix as a picture (the numbers are in eval.json)."""
        title = f"{result['dataset']}, split {result['split']}: top-1 {result['val_top1']:.4f}"
        m = result["confusion_matrix"]
        runfiles.register(self.path, [CONFUSION])
        return write_atomic(self.path / CONFUSION, lambda tmp: curves.plot_confusion(m["matrix"], m["labels"], tmp,
                                                                                     title))

    def metrics_lines(self) -> list[str]:
        path = self.path / METRICS
        return path.read_text().splitlines(keepends=True) if path.is_file() else []

    def append_metrics(self, metrics: dict[str, Any]) -> None:
        """One line per finished epoch; the whole file is replaced, so a crash never leaves half a line."""
        write_text(self.path / METRICS, "".join(self.metrics_lines()) + jsonsafe.dumps(metrics) + "\n")

    def keep_metrics(self, lines: int) -> None:
        """On resume: epochs logged after the checkpoint are run again, so their lines go."""
        write_text(self.path / METRICS, "".join(self.metrics_lines()[:lines]))

    def finish(self, summary: dict[str, Any], model: Any, recipe: Recipe, plan: Any, class_names: list[str],
               data_config: dict, fingerprint: dict[str, str]) -> None:
        """The run is done, as one step: model card, training curve, the delta (what learned, with
        `fingerprint`, the fixed values' hashes taken before training; its size goes into `summary`), no more
        whole-model checkpoints (the delta is what it keeps), and last the finished mark, summary.json
        (written beside its name first, so a full disk stops the run before its checkpoints are gone). An
        --overwrite's old run goes then."""
        runfiles.register(self.path, [CURVE, CARD, SUMMARY])
        title = f"{recipe.model.name}, {plan.label}"
        text = card(self.path, summary=summary)
        evals = runfiles.read_metrics(self.path)
        losses = [(step, loss) for e in evals for step, loss in e.get("loss_curve", [])]
        write_text(self.path / CARD, text)
        if summary.get("solver", {}).get("solver") == "exact":  # no steps: the cross-validation is the curve
            write_atomic(self.path / CURVE, lambda tmp: curves.plot_solver(summary["solver"], summary["val_top1"],
                                                                           tmp, title))
        else:
            write_atomic(self.path / CURVE, lambda tmp: curves.plot(losses, evals, tmp, title))
        path = delta.save_delta(self.path / delta.DELTA_NAME, model, recipe, class_names, data_config, fingerprint,
                                {"strategy": plan.spec})  # data-driven choices resolved: no data to load
        summary["delta_bytes"] = path.stat().st_size
        with staged(self.path / SUMMARY, lambda tmp: tmp.write_text(jsonsafe.dumps(summary, indent=2) + "\n")):
            checkpoints.remove(self.path)
        runfiles.drop_previous(self.path)
        self.replacing = False


def card(folder: Path, repo_id: Optional[str] = None, license: Optional[str] = None,
         summary: Optional[dict[str, Any]] = None) -> str:
    """The model card of the finished run in `folder` (a run folder, or a pushed one: plan.txt and the
    validation split are optional there); `repo_id` names the Hub repo in its loading instructions,
    `license` is its Hub license id (None: none given); `summary`, when given, is the one the run is
    about to write."""
    folder = Path(folder)
    try:
        summary = summary if summary is not None else json.loads((folder / SUMMARY).read_text())
        data = json.loads((folder / DATA).read_text())
        plan = (folder / PLAN).read_text() if (folder / PLAN).is_file() else None
        return modelcard.render(runfiles.read_recipe(folder).to_dict(), summary, data["class_names"], plan,
                                data.get("val_split"), repo_id, license)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot describe the run in {folder}: {first_line(e)}") from None


def read_strategy(run_dir: Path) -> dict[str, Any]:
    """The resolved strategy a run folder recorded ({"strategy": ..., "scoring_seconds": ...})."""
    path = Path(run_dir) / STRATEGY
    try:
        recorded = json.loads(path.read_text())
        return {"strategy": recorded["strategy"], "scoring_seconds": float(recorded["scoring_seconds"])}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is damaged ({first_line(e)}); restore it, or --overwrite to start again") from None


