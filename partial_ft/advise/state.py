"""state.json in the advise folder: what each candidate measured and found so far, so that a second advise
on the folder continues (the trials themselves are kept in the tuning study). Written atomically after
every step."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

from .. import yamlsafe
from ..atomic import write_text
from ..errors import UserError
from .table import Row

STATE = "state.json"
CARVE_OUT = (0.2, 0)  # the carve-out of train every candidate is tuned on: its fraction and seed
FIELDS = ("epoch_seconds", "setup_seconds", "trial_epochs", "peak_memory_bytes", "delta_bytes", "learned", "top1",
          "n_eval", "lr", "trials", "pruned")
# recipe keys that do not change what a candidate learns or how fast
NEUTRAL = {"output": None, "train": ("progress", "log_every", "checkpoint_every", "keep_checkpoints", "log_with")}


def fingerprint(base: dict, budget: int) -> str:
    """What decides the advice: the recipe as trained (output and logging aside) and the budget."""
    parts = {k: ({kk: vv for kk, vv in v.items() if kk not in (NEUTRAL.get(k) or ())} if isinstance(v, dict) else v)
             for k, v in base.items() if k != "output"}
    return hashlib.sha256(json.dumps([parts, budget], sort_keys=True, default=str).encode()).hexdigest()[:16]


def restore(out: Path, digest: str, rows: list[Row]) -> None:
    """Fill `rows` from the folder's state.json, if there is one; a folder advised for another recipe or
    budget is refused (UserError)."""
    path = out / STATE
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path} cannot be read ({e}); remove it or choose another --out") from None
    if saved.get("fingerprint") != digest:
        raise UserError(f"--out {out} holds advice for another recipe or budget (fingerprint "
                        f"{saved.get('fingerprint')}, this one {digest}); choose another --out")
    found = saved.get("rows", {})
    for row in rows:
        for key, value in found.get(row.name, {}).items():
            if key in FIELDS and row.status != "skipped":
                setattr(row, key, value)


def save(out: Path, digest: str, rows: list[Row], meta: Optional[dict[str, Any]] = None) -> None:
    """Write state.json (atomically): per candidate not skipped, what it measured and found, its sized
    strategy and candidate kind (what the exhaustive check, check.py, rebuilds it from); `meta` (the
    budget, the model's size, the carve-out) at the top level."""
    rows_out = {r.name: {**{k: getattr(r, k) for k in FIELDS}, "candidate": r.candidate, "spec": r.spec}
                for r in rows if r.status != "skipped"}
    write_text(out / STATE, json.dumps({"fingerprint": digest, **(meta or {}), "rows": rows_out}, indent=1))


def user_raw(path: str) -> dict:
    """The user's recipe file as plain data (advised.yaml starts from it, so it reads like theirs)."""
    return yamlsafe.load_file(path, "recipe") or {}
