"""The run folder's single owner: everything partial_ft writes into a run folder goes through here.

A run folder holds recipe.yaml, plan.txt, data.json, metrics.jsonl, summary.json, delta.safetensors,
README.md (the model card), training_curve.png, logs/ (trackers), eval.json and checkpoints/ (see the
README's outputs section), a marker file saying partial_ft made it,
and while a process uses it, a lock file naming that process. Every file that is read back later is
written atomically (temporary file + rename). Only folders that partial_ft made are ever replaced, and
then only partial_ft's own files.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Optional

from . import checkpoints, curves, delta, jsonsafe, modelcard, yamlsafe
from .atomic import check_writable, write_atomic, write_text
from .errors import UserError, first_line
from .recipe import Recipe, from_dict

MARKER = ".partial_ft-run"
LOCK = ".partial_ft.lock"
RECIPE, PLAN, DATA, METRICS, SUMMARY, EVAL = "recipe.yaml", "plan.txt", "data.json", "metrics.jsonl", "summary.json", "eval.json"
CARD, CURVE, LOGS = "README.md", "training_curve.png", "logs"  # the model card; loss and val top-1 vs step; trackers
CONFUSION = "confusion_matrix.png"  # written by `eval`, beside eval.json
STRATEGY = "strategy.json"  # the strategy with data-driven choices resolved (what --resume rebuilds)
# what a run writes, and so what --overwrite may remove (anything else in the folder is left alone)
OWN = {MARKER, RECIPE, PLAN, DATA, METRICS, SUMMARY, EVAL, STRATEGY, delta.DELTA_NAME, checkpoints.CHECKPOINTS,
       CARD, LOGS, CURVE, CONFUSION}
# keys that may change between a run and its resumption: they do not change the numbers
RESUME_MAY_DIFFER = {"train.progress", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                     "train.nan_policy", "train.log_with"}


def is_ours(path: Path) -> bool:
    """Whether partial_ft made this folder (its marker)."""
    return (path / MARKER).is_file()


def check_folder(recipe: Recipe, overwrite: bool = False, resume: bool = False) -> Optional[Path]:
    """Decide, without writing anything, whether the run folder can be used: refuses an output path that is
    a file or not writable, a folder partial_ft did not make, a folder another process is using, and a
    folder holding a run unless --overwrite (start again) or --resume (continue it). Returns the
    checkpoint to resume from, if any. Cheap: runs before any data or model."""
    run_dir = recipe.run_dir
    if overwrite and resume:
        raise UserError("pass --resume or --overwrite, not both")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"output.dir {run_dir} is a file, not a folder")
    check_writable(run_dir, "output.dir")
    if not (run_dir.is_dir() and any(run_dir.iterdir())):
        return None
    if not is_ours(run_dir):
        sample = ", ".join(sorted(p.name for p in run_dir.iterdir())[:3])
        raise UserError(f"output.dir {run_dir} is not empty and is not a partial_ft run folder (it holds {sample}, "
                        "...); partial_ft never replaces what it did not write: choose another output.dir")
    _refuse_if_locked(run_dir)
    finished = (run_dir / SUMMARY).is_file()
    if overwrite:
        return None
    last = checkpoints.latest(run_dir)  # a damaged `latest` pointer is an error here, never a restart
    if not resume:
        if finished:
            raise UserError(f"run folder {run_dir} already holds a run that finished; pass --overwrite to replace "
                            "it or set output.dir")
        state = f"stopped at step {checkpoints.step_of(last)}" if last else "that stopped before its first checkpoint"
        raise UserError(f"run folder {run_dir} already holds a run {state}; pass --resume to continue it from "
                        "its last checkpoint, --overwrite to replace it, or set output.dir")
    if finished:
        raise UserError(f"the run in {run_dir} already finished: nothing to resume (--overwrite runs it again)")
    _check_same_recipe(recipe, run_dir)
    if last is not None:
        checkpoints.verify(last)  # a damaged checkpoint is refused before any data or model is loaded
    return last  # None: stopped before its first checkpoint, so it starts from the beginning


# --------------------------------------------------------------------------------------------
# one process per run folder


def _lock_owner(run_dir: Path) -> Optional[dict[str, Any]]:
    """The lock's owner, or None when there is no lock or it is stale (its process is gone)."""
    try:
        owner = json.loads((run_dir / LOCK).read_text())
        pid, host = int(owner["pid"]), str(owner["host"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable: written by no live partial_ft (the lock is created whole, by rename)
    if host == socket.gethostname() and not _alive(pid):
        return None
    return owner


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _refuse_if_locked(run_dir: Path) -> None:
    owner = _lock_owner(run_dir)
    if owner and not (owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()):
        raise UserError(f"run folder {run_dir} is in use by process {owner['pid']} on {owner['host']} (since "
                        f"{owner.get('started', '?')}); wait for it to finish, or delete {run_dir / LOCK} if that "
                        "process is gone")


def _acquire(run_dir: Path) -> None:
    """Take the folder's lock: created whole by a hard link, which fails when another holds it."""
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    tmp = run_dir / f".{LOCK}.{os.getpid()}"
    tmp.write_text(json.dumps(me) + "\n")
    try:
        for _ in range(2):
            try:
                os.link(tmp, run_dir / LOCK)
                return
            except FileExistsError:
                _refuse_if_locked(run_dir)
                (run_dir / LOCK).unlink(missing_ok=True)  # stale: its process is gone
        _refuse_if_locked(run_dir)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# the folder while a run uses it


class RunFolder:
    """The run folder of one training run. Only the main process writes; the others only read."""

    def __init__(self, path: Path, main: bool = True):
        self.path, self.main, self.locked = Path(path), main, False

    def start(self, recipe: Recipe, overwrite: bool = False, resume: bool = False,
              data_info: Optional[dict[str, Any]] = None) -> Optional[Path]:
        """Lock the folder (main process), make it ready (check's decisions; --overwrite removes the old
        run's own files; --resume refuses data that data.json no longer describes); returns the checkpoint
        to resume from, if any."""
        last = check_folder(recipe, overwrite, resume)
        if resume and data_info is not None:
            _check_same_data(self.path, data_info)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create run folder {self.path}: {e.strerror}") from None
        _acquire(self.path)
        self.locked = True
        if overwrite:
            for name in OWN:
                target = self.path / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        write_text(self.path / MARKER, "a partial_ft run folder\n")
        return last

    def release(self) -> None:
        """Give the lock back (a crash leaves it stale: the next run sees its process is gone)."""
        if self.locked:
            (self.path / LOCK).unlink(missing_ok=True)
            self.locked = False

    def write_start(self, recipe: Recipe, plan_table: str, data_info: dict[str, Any], strategy: Any = None,
                    scoring_seconds: float = 0.0) -> None:
        """A fresh start (or a resume with nothing saved yet): recipe, plan, data description, and the
        resolved strategy (what a strategy chose from data, so --resume rebuilds it without scoring)."""
        write_text(self.path / RECIPE, recipe.to_yaml())
        write_text(self.path / PLAN, plan_table + "\n")
        self.write_json(DATA, data_info)
        self.write_json(STRATEGY, {"strategy": strategy if strategy is not None else recipe.strategy,
                                   "scoring_seconds": round(scoring_seconds, 3)})
        (self.path / METRICS).unlink(missing_ok=True)

    def read_recipe(self) -> Recipe:
        """The recipe the folder records; a missing, empty or damaged one is one clear error."""
        path = self.path / RECIPE
        if not path.is_file():
            raise UserError(f"{self.path} is not a run folder (no {RECIPE})")
        try:
            raw = yamlsafe.load_file(path, "recipe")
            if not isinstance(raw, dict):
                raise ValueError("not a mapping of recipe sections")
            return from_dict(raw, name=self.path.name)
        except (ValueError, UserError) as e:
            raise UserError(f"{path} is damaged ({first_line(e)}); restore it, or --overwrite to start again") from None

    def read_summary(self) -> dict[str, Any]:
        """The finished run's summary.json; a missing or damaged one is one clear error."""
        path = self.path / SUMMARY
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: no finished run's summary ({first_line(e)})") from None

    def write_json(self, name: str, obj: Any) -> Path:
        return write_text(self.path / name, jsonsafe.dumps(obj, indent=2) + "\n")

    def write_confusion(self, result: dict[str, Any]) -> Path:
        """`eval`'s confusion matrix as a picture (the numbers are in eval.json)."""
        title = f"{result['dataset']}, split {result['split']}: top-1 {result['val_top1']:.4f}"
        m = result["confusion_matrix"]
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

    def finish(self, summary: dict[str, Any], title: str = "") -> None:
        """The run is done: its summary, model card and training curve, and no more whole-model checkpoints
        (the delta is what it keeps)."""
        self.write_json(SUMMARY, summary)
        write_text(self.path / CARD, card(self.path))
        evals = [json.loads(line) for line in self.metrics_lines()]
        losses = [(step, loss) for e in evals for step, loss in e.get("loss_curve", [])]
        if summary.get("solver", {}).get("solver") == "exact":  # no steps: the cross-validation is the curve
            write_atomic(self.path / CURVE, lambda tmp: curves.plot_solver(summary["solver"], summary["val_top1"],
                                                                           tmp, title))
        else:
            write_atomic(self.path / CURVE, lambda tmp: curves.plot(losses, evals, tmp, title))
        checkpoints.remove(self.path)


def card(folder: Path, repo_id: Optional[str] = None, license: Optional[str] = None) -> str:
    """The model card of the finished run in `folder` (a run folder, or a pushed one: plan.txt and the
    validation split are optional there); `repo_id` names the Hub repo in its loading instructions,
    `license` is its Hub license id (None: none given)."""
    folder = Path(folder)
    try:
        summary = json.loads((folder / SUMMARY).read_text())
        data = json.loads((folder / DATA).read_text())
        plan = (folder / PLAN).read_text() if (folder / PLAN).is_file() else None
        return modelcard.render(RunFolder(folder).read_recipe().to_dict(), summary, data["class_names"], plan,
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


def _check_same_recipe(recipe: Recipe, run_dir: Path) -> None:
    """Resuming with another recipe would silently mix two runs: refuse, naming what differs."""
    old, new = _flat(RunFolder(run_dir).read_recipe().to_dict()), _flat(recipe.to_dict())
    differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and k not in RESUME_MAY_DIFFER)
    if differ:
        raise UserError(f"cannot resume {run_dir} with a different recipe: {', '.join(differ)} differ "
                        f"from its recipe.yaml (--overwrite starts afresh)")


# what data.json records that must hold for a resumed run to continue the same one
SAME_DATA = ("train_samples", "val_samples", "num_classes", "class_names", "rows_sha256")


def _check_same_data(run_dir: Path, info: dict[str, Any]) -> None:
    """Resuming on changed data would continue a run that data.json no longer describes: refuse."""
    path = run_dir / DATA
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is damaged ({first_line(e)}); --overwrite to start again") from None
    differ = [k for k in SAME_DATA if k in saved and saved.get(k) != info.get(k)]
    if differ:
        k = differ[0]
        raise UserError(f"cannot resume {run_dir}: the dataset changed since the run started ({k}: "
                        f"{_short(saved.get(k))} then, {_short(info.get(k))} now); --overwrite to start again")


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _flat(resolved: dict) -> dict[str, Any]:
    """{'train.lr': 0.001, ..., 'strategy': {...}}; the output section names the folder, not the run."""
    out: dict[str, Any] = {}
    for section, node in resolved.items():
        if section == "strategy" or not isinstance(node, dict):
            out[section] = node
        elif section != "output":
            out.update({f"{section}.{key}": value for key, value in node.items()})
    return out
