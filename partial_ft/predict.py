"""`predict`: class predictions of one or several deltas on image files, as JSON lines.

Images are read and preprocessed exactly as `eval` reads a split (loaders.read_image, the run's eval
transform), in batches, on the GPU when there is one. Several sources over one base are the paper's
"one fixed backbone, many small tasks" (and, with the same classes, its cheap ensemble): when their
fixed prefixes are one computation (cuts.common_cut: head, late-block or late-layer strategies), the
prefix runs once per batch and only each source's learned rest runs per source.
"""
from __future__ import annotations

import csv
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Optional

import torch
from torch import nn

from . import cuts, delta, hub, jsonsafe, loaders, outputs, transforms, walk
from .atomic import check_file_target, write_atomic
from .data_columns import IMAGE_SUFFIXES
from .errors import UserError

# One batch of 16,384 images at 224 px is 9.9 GB of floats: more fits no device better, it only runs out of
# memory (or, on the CPU, swaps) after every image has been listed and the model loaded.
MAX_BATCH = 16_384


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Image files from files (taken as given), folders (walked recursively, sorted, files with an image
    suffix) and glob patterns (sorted; `**` recurses; matched folders are walked)."""
    files: list[Path] = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.exists():
            matches = [path]
        elif any(ch in pattern for ch in "*?["):
            matches = walk.glob(str(path))  # never loops on linked folders
            if not matches:
                raise UserError(f"no files match {pattern}")
        else:
            raise UserError(f"no such file or folder: {pattern}")
        for match in matches:
            if match.is_dir():
                found = [f for f in walk.files_below(match) if f.suffix.lower() in IMAGE_SUFFIXES]
                if not found and match == path:
                    raise UserError(f"folder {pattern} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
                files += found
            elif match.is_file():
                files.append(match)
    return files


@dataclass
class Source:
    """One delta to predict with: where it came from, its metadata and its model (eval mode)."""

    name: str  # as the user gave it
    info: dict[str, Any]
    model: nn.Module


def load_sources(sources: list[str], paths: Optional[list[Path]] = None) -> list[Source]:
    """Load each SOURCE (run folder, pushed folder, delta file or Hub repo id; `paths`: where they were
    resolved to, when known); several must share the base (model, starting weights) and the
    preprocessing, so one batch serves them all."""
    if len(set(sources)) != len(sources):
        raise UserError("a SOURCE is given twice")
    loaded = []
    for name, path in zip(sources, paths or [hub.resolve(name) for name in sources]):
        loaded.append(Source(name, delta.read_info(path), delta.rebuild(path)))
    first = loaded[0].info
    for other in loaded[1:]:
        for key, what in (("model", "base model"), ("weights", "starting weights"),
                          ("data_config", "preprocessing")):
            if other.info[key] != first[key]:
                raise UserError(f"{other.name} and {loaded[0].name} differ in {what} ({other.info[key]} vs "
                                f"{first[key]}): predict with several sources needs one base; run them separately")
    return loaded


@dataclass
class Runner:
    """Runs a batch through every source: through the shared prefix once when there is one."""

    sources: list[Source]
    device: torch.device
    cuts: Optional[list[cuts.Cut]] = None
    note: str = ""
    seconds: dict[str, float] = field(default_factory=lambda: {"prefix": 0.0, "rest": 0.0})

    @classmethod
    def build(cls, sources: list[Source], device: torch.device) -> "Runner":
        """Move the models to `device` and, for several sources, look for their common fixed prefix."""
        models = [s.model.to(device).eval() for s in sources]
        if len(models) == 1:
            return cls(sources, device)
        input_size = tuple(sources[0].info["data_config"]["input_size"])
        sample = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0)).to(device)
        found, why = cuts.common_cut(models, sample)
        return cls(sources, device, found, f"shared fixed prefix: {found[0].name}" if found else f"no shared prefix: {why}")

    def _timed(self, key: str, fn: Any) -> Any:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        out = fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[key] += time.perf_counter() - start
        return out

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each source's logits (float32) for the batch x."""
        x = x.to(self.device)
        if self.cuts is None:
            return self._timed("rest", lambda: [s.model(x).float() for s in self.sources])
        features = self._timed("prefix", lambda: self.cuts[0].prefix(x))
        return self._timed("rest", lambda: [c.suffix(features).float() for c in self.cuts])

    def saving(self) -> str:
        """What sharing the prefix saved, measured: the prefix ran once instead of once per source."""
        if self.cuts is None:
            return self.note
        n, prefix, rest = len(self.cuts), self.seconds["prefix"], self.seconds["rest"]
        alone = n * prefix + rest
        return (f"{self.note}, run once per batch for {n} sources: {prefix:.2f} s instead of {n * prefix:.2f} s, "
                f"saving {(n - 1) * prefix:.2f} s of {alone:.2f} s ({100 * (n - 1) * prefix / max(alone, 1e-9):.0f}%)")


class ImageFiles(torch.utils.data.Dataset):
    """Image files as (index, tensor, error): read and transformed as `eval` reads a split."""

    def __init__(self, files: list[Path], transform: Any):
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, Optional[torch.Tensor], str]:
        try:
            image = loaders.read_image({"path": str(self.files[i]), "bytes": None})
        except Exception as e:
            return i, None, loaders.reason(e)
        return i, self.transform(image), ""


def _collate(batch: list) -> list:
    return batch  # stacked by predict(), after unreadable images are set aside


def _top(probs: torch.Tensor, class_names: list[str], k: int, ids: bool = False) -> dict[str, list]:
    scores, index = probs.topk(min(k, len(class_names)))
    labels = index.tolist() if ids else [class_names[i] for i in index.tolist()]
    return {"labels": labels, "scores": scores.tolist()}


def columns(record: dict[str, Any]) -> dict[str, Any]:
    """A record as one flat CSV row (as timm's inference.py writes them): input, label_1..k, score_1..k;
    with several sources, those columns per source (and the ensemble), prefixed `SOURCE:`."""
    def flat(top: dict[str, list], prefix: str = "") -> dict[str, Any]:
        row = {f"{prefix}label_{i + 1}": label for i, label in enumerate(top["labels"])}
        return {**row, **{f"{prefix}score_{i + 1}": round(score, 6) for i, score in enumerate(top["scores"])}}

    if "predictions" not in record:
        return {"input": record["input"], **flat(record)}
    row = {"input": record["input"]}
    for name, top in [*record["predictions"].items(), *([("ensemble", record["ensemble"])] if "ensemble" in record
                                                        else [])]:
        row.update(flat(top, f"{name}:"))
    return row


class Writer:
    """Records out as JSON lines or CSV (the header from the first record: every record has the same columns)."""

    def __init__(self, stream: IO[str], fmt: str = "jsonl", flush: bool = False):
        self.stream, self.fmt, self.flush, self.csv = stream, fmt, flush, None

    def write(self, record: dict[str, Any]) -> None:
        if self.fmt == "jsonl":
            self.stream.write(jsonsafe.dumps(record) + "\n")
        else:
            row = columns(record)
            if self.csv is None:
                self.csv = csv.DictWriter(self.stream, fieldnames=list(row), lineterminator="\n")
                self.csv.writeheader()
            self.csv.writerow(row)
        if self.flush:
            self.stream.flush()


@dataclass
class Counts:
    """What a prediction did: images predicted and skipped (unreadable, with --skip-bad)."""

    predicted: int = 0
    skipped: list[str] = field(default_factory=list)


def predict(runner: Runner, files: list[Path], top_k: int = 5, batch_size: int = 64, skip_bad: bool = False,
            ensemble: bool = False, num_workers: int = 0, counts: Optional[Counts] = None,
            progress: bool = True, label_ids: bool = False) -> Iterator[dict[str, Any]]:
    """One record per readable image, in input order: {"input", "labels", "scores"} for one source;
    {"input", "predictions": {source: {"labels", "scores"}}} for several, plus "ensemble" (the mean of
    their probabilities) with `ensemble`. An unreadable image is a UserError naming it, or is skipped
    and counted in `counts` with `skip_bad`. Labels are class names, or class ids with `label_ids`."""
    from tqdm.auto import tqdm

    sources = runner.sources
    names = sources[0].info["class_names"]
    if ensemble and any(s.info["class_names"] != names for s in sources):
        raise UserError("--ensemble averages predictions over the same classes, but the sources' classes differ")
    counts = counts if counts is not None else Counts()
    transform = transforms.eval_transform(sources[0].info["data_config"])
    dl = torch.utils.data.DataLoader(ImageFiles(files, transform), batch_size=batch_size, num_workers=num_workers,
                                     collate_fn=_collate)
    for batch in tqdm(dl, desc="predict", unit="batch", disable=True if not progress or len(dl) < 2 else None):
        good = []
        for i, x, why in batch:
            if x is not None:
                good.append((i, x))
            elif skip_bad:
                counts.skipped.append(f"{files[i]}: {why}")
            else:
                raise UserError(f"cannot read image {files[i]}: {why} (--skip-bad skips unreadable images)")
        if not good:
            continue
        probs = [logits.softmax(dim=1).cpu() for logits in runner(torch.stack([x for _, x in good]))]
        for row, (i, _) in enumerate(good):
            counts.predicted += 1
            if len(sources) == 1:
                yield {"input": str(files[i]), **_top(probs[0][row], names, top_k, label_ids)}
                continue
            record: dict[str, Any] = {"input": str(files[i]), "predictions": {
                s.name: _top(p[row], s.info["class_names"], top_k, label_ids) for s, p in zip(sources, probs)}}
            if ensemble:
                record["ensemble"] = _top(torch.stack([p[row] for p in probs]).mean(0), names, top_k, label_ids)
            yield record


def _check_out(target: Path, files: list[Path], paths: list[Path]) -> Path:
    """--out: a file in an existing, writable folder, never one of the images or sources being read, nor
    a file of a run folder (or a link to one)."""
    if not target.parent.is_dir():
        raise UserError(f"--out {target}: folder {target.parent} does not exist")
    check_file_target(target, "predict --out")
    return outputs.check_output(target, "predict --out", [*files, *map(delta.delta_path, paths)],
                                 [p for p in paths if p.is_dir()])


def run(sources: list[str], inputs: list[str], out: Optional[str] = None, top_k: int = 5, batch_size: int = 64,
        skip_bad: bool = False, ensemble: bool = False, stream: IO[str] = sys.stdout, fmt: str = "jsonl",
        label_ids: bool = False) -> tuple[Counts, Runner]:
    """The `predict` command: JSON lines (or CSV, `fmt`) to `out` (written whole or not at all) or to
    `stream`. Cheap checks (arguments, inputs, output path) come before any model is loaded."""
    if top_k < 1 or not 1 <= batch_size <= MAX_BATCH:
        raise UserError(f"--top-k and --batch-size must be at least 1, and --batch-size at most {MAX_BATCH:,} "
                        f"(got {top_k:,} and {batch_size:,})")
    if ensemble and len(sources) < 2:
        raise UserError("--ensemble averages several SOURCEs; give at least two")
    files = expand_inputs(inputs)
    paths = [hub.resolve(name) for name in sources]
    target = None if out is None else _check_out(Path(out), files, paths)
    runner = Runner.build(load_sources(sources, paths), torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    counts = Counts()
    workers = min(4, os.cpu_count() or 1) if len(files) > batch_size else 0  # worker start-up costs seconds
    records = predict(runner, files, top_k, batch_size, skip_bad, ensemble, workers, counts, label_ids=label_ids)
    if target is None:
        writer = Writer(stream, fmt, flush=True)
        for record in records:
            writer.write(record)
        return counts, runner

    def write_records(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = Writer(f, fmt)
            for record in records:
                writer.write(record)

    write_atomic(target, write_records)  # whole or not at all; a second predict to the same file has its own
    return counts, runner
