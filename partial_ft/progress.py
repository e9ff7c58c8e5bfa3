"""Where the training loop is (saved with every checkpoint, so a resumed run continues exactly), its
throughput meter, and the optimizer's and the device's memory the summary reports."""
from __future__ import annotations

import dataclasses
import resource
import sys
import time
from dataclasses import dataclass, field

import torch


@dataclass
class Progress:
    """The loop's position and counters; every field is saved in checkpoints (train_state.json)."""

    epoch: int = 0  # the epoch in progress (0-based)
    batches: int = 0  # batches of that epoch already consumed
    step: int = 0  # optimizer updates so far
    images: int = 0
    skipped: int = 0  # unreadable images skipped (data.skip_bad_images)
    nan_skipped: int = 0  # batches skipped for a non-finite loss (train.nan_policy: skip_batch)
    dropped_images: int = 0  # images of one-image batches dropped (BatchNorm cannot train on them)
    train_seconds: float = 0.0
    epoch_images: int = 0
    epoch_seconds: float = 0.0
    loss_sum: float = 0.0  # this epoch's running loss (its train_loss is the mean)
    loss_count: int = 0
    window_sum: float = 0.0  # loss since the last logged step: the training curve's and the trackers' loss
    window_count: int = 0
    losses: list = field(default_factory=list)  # this epoch's logged [step, loss] points (metrics' loss_curve)
    metrics: dict = field(default_factory=dict)  # the last epoch's metrics
    metrics_lines: int = 0  # lines of metrics.jsonl written (one per finished epoch)
    steady_images: int = 0  # images of steps timed for the steady throughput (see Meter)
    steady_seconds: float = 0.0
    solver: dict = field(default_factory=lambda: {"solver": "loop"})  # or the exact solver's record (probe.py)

    def __post_init__(self) -> None:
        self.meter = Meter(self)  # not a field: not saved

    def record_batch(self, images: int, loss: float) -> None:
        """A batch went forward and backward: count its images (all processes') and its loss."""
        self.epoch_images += images
        self.loss_sum, self.loss_count = self.loss_sum + loss, self.loss_count + 1
        self.window_sum, self.window_count = self.window_sum + loss, self.window_count + 1
        self.meter.add(images)

    def log_point(self) -> float:
        """The mean loss since the previous logged step, recorded as a point of the training curve."""
        loss = self.window_sum / max(self.window_count, 1)
        self.losses.append([self.step, loss])
        self.window_sum, self.window_count = 0.0, 0
        return loss

    def close_epoch(self) -> None:
        """The epoch's batches are done: add its time and images to the run's."""
        self.train_seconds += self.meter.elapsed()
        self.images += self.epoch_images

    def next_epoch(self) -> "Progress":
        """The position at the start of the next epoch: per-epoch counters reset, run counters kept."""
        return dataclasses.replace(self, epoch=self.epoch + 1, batches=0, epoch_images=0, epoch_seconds=0.0,
                                   loss_sum=0.0, loss_count=0, losses=[], metrics_lines=self.metrics_lines + 1)


class Meter:
    """Throughput bookkeeping. The steady rate leaves out the first step of each epoch (worker start-up,
    first batch) and checkpoint writes; the epoch rate is what the progress bar shows."""

    def __init__(self, progress: Progress):
        self.p, self.epoch_start, self.mark, self.pending = progress, time.perf_counter(), None, 0

    def start_epoch(self) -> None:
        self.epoch_start = time.perf_counter() - self.p.epoch_seconds  # a resumed epoch keeps its time
        self.mark, self.pending = None, 0

    def add(self, images: int) -> None:
        self.pending += images

    def step(self) -> None:
        """An optimizer step ended: time the images since the previous one."""
        now = time.perf_counter()
        if self.mark is not None:
            self.p.steady_images += self.pending
            self.p.steady_seconds += now - self.mark
        self.mark, self.pending = now, 0

    def pause(self) -> None:
        """Before a checkpoint: record the epoch's time so far (it is saved)."""
        self.p.epoch_seconds = self.elapsed()

    def resume(self) -> None:
        self.mark = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.epoch_start

    def epoch_rate(self) -> float:
        return self.p.epoch_images / max(self.elapsed(), 1e-9)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in the optimizer's per-parameter state (momentum, Adam moments, ...)."""
    return sum(v.numel() * v.element_size() for state in optimizer.state.values()
               for v in state.values() if torch.is_tensor(v) and v.dim() > 0)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak accelerator memory on GPU; peak resident set size of this process on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is KiB on Linux, bytes on macOS
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale)
