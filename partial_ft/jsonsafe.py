"""Strict JSON for everything partial_ft writes (summary.json, metrics.jsonl, eval.json, predict lines, ...).

Python's json writes NaN and Infinity, which are not JSON: jq, JavaScript and most other readers refuse
the whole file. A value that is not a finite number (a diverged loss, an empty class's accuracy) is
written as null instead, the one JSON value that says "no number here"; allow_nan=False then guarantees
that nothing else slips through.
"""
from __future__ import annotations

import json
import math
from typing import Any


def finite(obj: Any) -> Any:
    """`obj` with every float that is NaN or infinite replaced by None (dicts, lists and tuples walked)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """json.dumps of `finite(obj)`, refusing anything that would still not be JSON."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)
