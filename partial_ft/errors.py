"""The exception type for user mistakes: the CLI prints it as `error: ...` and exits 2."""
from __future__ import annotations

import difflib
import re
import math
from collections.abc import Iterable


class UserError(Exception):
    """A mistake the user can fix (bad recipe, bad path, bad option); never a bug in partial_ft.

    `collective`: every process of a multi-process run raises it the same way (so one of them says it);
    False for what only one process can see (an unreadable image in its shard)."""

    collective = True


class NonFiniteLoss(UserError):
    """A NaN or infinite loss under train.nan_policy: stop (the weights were not stepped with it); `last`
    is the run's last checkpoint, or None."""

    def __init__(self, value: float, step: int, epoch: int, last: object):
        kept = f"last good checkpoint: {last}" if last else "no checkpoint was saved yet"
        what = value if not math.isfinite(value) else "not finite on another process"
        super().__init__(f"loss is {what} at step {step} (epoch {epoch}); stopped, {kept}; lower train.lr, set "
                         "train.clip_grad, or set train.nan_policy=skip_batch (and --resume)")


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean X?)' for the closest choice, or '' when nothing is close."""
    if len(str(word)) > 100:  # nothing sensible is that long, and difflib would be slow on it
        return ""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def shorten(value: object, limit: int = 80) -> str:
    """repr(value) cut to `limit` characters, saying how long it was: what an error line may quote (a
    5 MB value must not become a 5 MB `error:` line)."""
    if isinstance(value, str) and len(value) > limit:
        return f"{repr(value[:limit])[:-1]}...' ({len(value):,} characters)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


MAX_LINE = 1000  # the most an `error:` line says; a longer one has a huge value inside


def one_line(message: str) -> str:
    """The last line of a message, cut to MAX_LINE characters (a value quoted whole can be megabytes)."""
    line = message.strip().splitlines()[-1] if message.strip() else message
    return line if len(line) <= MAX_LINE else f"{line[:MAX_LINE]}... (cut: {len(line):,} characters)"


def first_line(e: BaseException) -> str:
    """An exception's first message line (or its type name): what a one-line `error:` can quote."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_reason(e: BaseException) -> str:
    """Why a file could not be loaded, in one line. torch (and libraries wrapping torch.load) answer a
    refused unpickle with advice to retry with weights_only=False, which partial_ft never does and never
    repeats."""
    whole = " ".join(str(e).split()).lower()
    if any(sign in whole for sign in ("weights only load failed", "weights_only=true blocked", "unsupported global")):
        return "the file holds more than plain tensors (objects that would have to be unpickled, which partial_ft never does)"
    kept = [part for part in re.split(r"(?<=[.!?])\s+", first_line(e)) if "weights_only" not in part]
    return " ".join(kept) or "not a readable tensor file"
