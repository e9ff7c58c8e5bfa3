"""Where a network can be cut into a fixed prefix and a learned suffix, found by looking, not by name.

A `Cut` is a function `prefix(x) -> features` and a module `suffix` with `suffix(prefix(x)) == model(x)`,
the suffix sharing the model's parameters and holding every learned one. Three kinds, deepest first:

  - pre-logits: the prefix is timm's `forward_head(forward_features(x), pre_logits=True)`, the suffix the
    classifier (when only the classifier learns);
  - a module boundary: the suffix is a shallow copy of the model whose modules that ran before module M
    are replaced by nn.Identity, fed with M's input (works wherever the forward is a chain at that point:
    a ResNet's stages and blocks, any nn.Sequential);
  - features: the prefix is `forward_features`, the suffix `forward_head`.

Every candidate is checked by running it against the whole model on a sample batch (in eval mode), so a
forward that is not a chain where it looks like one (a skip connection, a positional embedding added in
code) is simply not a cut.
"""
from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn


PRE_LOGITS = "pre-logits"  # the cut before the classifier (only it learns)


@dataclass
class Cut:
    """A fixed prefix (a function) and the learned rest (a module sharing the model's parameters)."""

    name: str  # e.g. 'pre-logits', 'layer4.1', 'forward_features'
    prefix: Callable[[torch.Tensor], torch.Tensor]
    suffix: nn.Module
    prefix_modules: list[str] = field(default_factory=list)  # modules the prefix runs (names in the model)


class _Stop(Exception):
    """Raised by a pre-hook to end a forward once the cut's input is known."""


def learned_modules(model: nn.Module) -> set[str]:
    """Names of the modules that own a learned (requires_grad) parameter ('' is the model itself)."""
    return {n for n, m in model.named_modules() if any(p.requires_grad for p in m.parameters(recurse=False))}


class eval_mode:
    """Context: the whole model in eval mode, each module's own mode restored afterwards."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self) -> nn.Module:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc) -> None:
        for m, mode in self.modes:
            m.training = mode


@dataclass
class _Trace:
    """One forward, recorded: each module's first start and last end (a shared event counter), how often
    it ran, and its input when that was a single tensor."""

    start: dict[str, int] = field(default_factory=dict)
    end: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    inputs: dict[str, Optional[torch.Tensor]] = field(default_factory=dict)
    output: Optional[torch.Tensor] = None


def _trace(model: nn.Module, run: Callable[[], torch.Tensor]) -> _Trace:
    t, counter, handles = _Trace(), itertools.count(), []

    def pre(name: str):
        def hook(module, args, kwargs):
            t.calls[name] = t.calls.get(name, 0) + 1
            if name not in t.start:
                t.start[name] = next(counter)
                single = len(args) == 1 and not kwargs and torch.is_tensor(args[0])
                t.inputs[name] = args[0] if single else None
        return hook

    def post(name: str):
        def hook(module, args, kwargs, output):
            t.end[name] = next(counter)
        return hook

    for name, m in model.named_modules():
        if name:
            handles.append(m.register_forward_pre_hook(pre(name), with_kwargs=True))
            handles.append(m.register_forward_hook(post(name), with_kwargs=True))
    try:
        t.output = run()
    finally:
        for h in handles:
            h.remove()
    return t


def _shallow(module: nn.Module) -> nn.Module:
    """A new module object sharing `module`'s parameters, buffers and children, with its own child table."""
    new = copy.copy(module)
    new._modules = module._modules.copy()
    return new


def _module_cut(model: nn.Module, name: str, trace: _Trace) -> Cut:
    """The cut at module `name`'s input: modules that finished before it started become nn.Identity in a
    shallow copy of the model (the original is untouched)."""
    start, path = trace.start[name], name.split(".")
    root = parent = _shallow(model)
    removed = []
    for depth, step in enumerate(path):
        for child in list(parent._modules):
            full = ".".join(path[:depth] + [child])
            if child != step and trace.end.get(full, start) < start:
                parent._modules[child] = nn.Identity()
                removed.append(full)
        if depth < len(path) - 1:
            parent._modules[step] = _shallow(parent._modules[step])
            parent = parent._modules[step]
    target = model.get_submodule(name)

    def prefix(x: torch.Tensor) -> torch.Tensor:
        captured = []

        def hook(module, args):
            captured.append(args[0])
            raise _Stop

        handle = target.register_forward_pre_hook(hook)
        try:
            model(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        return captured[0]

    prefix_modules = [n for n in trace.end if trace.end[n] < start]
    return Cut(name, prefix, root, prefix_modules)


class _Head(nn.Module):
    """The suffix of a features cut: timm's forward_head."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(x)


def _candidates(model: nn.Module, sample: torch.Tensor, learned: set[str]) -> tuple[list[Cut], _Trace]:
    """Every place the model might be cut before its first learned layer, deepest first, not yet verified;
    and the trace of a forward of `sample` (call in eval mode, without gradients)."""
    names = {m: n for n, m in model.named_modules()}
    trace = _trace(model, lambda: model(sample))
    found: list[Cut] = []
    timm_like = all(hasattr(model, a) for a in ("forward_features", "forward_head", "get_classifier"))
    classifier = model.get_classifier() if timm_like else None
    if isinstance(classifier, nn.Module) and classifier in names:
        head = names[classifier]
        if all(n == head or n.startswith(head + ".") for n in learned):
            def pre_logits(x: torch.Tensor) -> torch.Tensor:
                return model.forward_head(model.forward_features(x), pre_logits=True)
            inside = [n for n in trace.end if not (n == head or n.startswith(head + "."))]
            found.append(Cut(PRE_LOGITS, pre_logits, classifier, inside))
    if timm_like:
        features = _trace(model, lambda: model.forward_features(sample))
        if not learned & set(features.start):
            found.append(Cut("forward_features", model.forward_features, _Head(model), list(features.end)))
    first_learned = min((trace.start[n] for n in learned if n in trace.start), default=None)
    if first_learned is not None:
        found += [_module_cut(model, n, trace) for n in trace.start if trace.start[n] <= first_learned
                  and trace.calls[n] == 1 and trace.inputs[n] is not None]
    # deepest first: the most modules left in the prefix
    return sorted((c for c in found if c.prefix_modules), key=lambda c: len(c.prefix_modules), reverse=True), trace


def _why_not(model: nn.Module, learned: set[str]) -> str:
    """Why a model has no cut at all before looking, or '' when it may have one."""
    if "" in learned:
        return "parameters of the model itself (e.g. a position embedding) learn"
    if not learned:
        return "nothing learns"
    return ""


NO_CUT = "no fixed part of the network comes before every learned layer and can be cut off"


def find_cut(model: nn.Module, sample: torch.Tensor) -> tuple[Optional[Cut], str]:
    """The deepest valid cut of `model` (whose learned parameters are already marked), verified on
    `sample`; or None and the reason."""
    learned = learned_modules(model)
    if _why_not(model, learned):
        return None, _why_not(model, learned)
    with eval_mode(model), torch.no_grad():
        found, trace = _candidates(model, sample, learned)
        if not found and min((trace.start[n] for n in learned if n in trace.start), default=None) == 0:
            return None, "the first layer learns (nothing fixed comes before it)"
        for cut in found:  # the first that agrees with the model wins
            if _agrees(cut, sample, trace.output):
                return cut, ""
    return None, NO_CUT


def common_cut(models: list[nn.Module], sample: torch.Tensor) -> tuple[Optional[list[Cut]], str]:
    """The deepest cut where every model's prefix is the same computation (models over one base whose
    fixed layers before it hold the same values: several deltas of one backbone), one Cut per model,
    each verified on `sample`; or None and the reason. Running models[0]'s prefix once then serves every
    model's suffix."""
    per_model, traces = [], []
    for i, model in enumerate(models):
        learned = learned_modules(model)
        if _why_not(model, learned):
            return None, f"source {i + 1}: {_why_not(model, learned)}"
        with eval_mode(model), torch.no_grad():
            found, trace = _candidates(model, sample, learned)
        per_model.append({c.name: c for c in found})
        traces.append(trace)
    shared = [c for c in per_model[0].values() if all(c.name in other for other in per_model[1:])]
    with torch.no_grad():
        for cut in shared:  # deepest first
            cuts = [found[cut.name] for found in per_model]
            if all(_agrees(c, sample, t.output) for c, t in zip(cuts, traces, strict=True)) and \
                    _same_prefix(models, cuts, sample):
                return cuts, ""
    return None, "the sources share no fixed prefix: " + (NO_CUT if not shared else
                                                           "their fixed layers differ (other weights or statistics)")


def _same_prefix(models: list[nn.Module], cuts: list[Cut], sample: torch.Tensor) -> bool:
    """Whether every prefix is models[0]'s: the same modules holding the same values (and the model's own
    tensors, e.g. a position embedding), and the same features on the sample."""
    def values(model: nn.Module, cut: Cut) -> list[torch.Tensor]:
        owners = [model, *(model.get_submodule(n) for n in cut.prefix_modules)]
        return [t for m in owners for t in (*m.parameters(recurse=False), *m.buffers(recurse=False))]

    first = values(models[0], cuts[0])
    for model, cut in zip(models[1:], cuts[1:]):
        other = values(model, cut)
        if cut.prefix_modules != cuts[0].prefix_modules or len(other) != len(first) or \
                not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, other)):
            return False
    with eval_mode(models[0]):
        reference = cuts[0].prefix(sample)
    for model, cut in zip(models[1:], cuts[1:]):
        with eval_mode(model):
            if not torch.equal(cut.prefix(sample), reference):
                return False
    return True


def _agrees(cut: Cut, sample: torch.Tensor, expected: torch.Tensor) -> bool:
    """Whether suffix(prefix(sample)) is the model's output (any exception: not a valid cut)."""
    try:
        got = cut.suffix(cut.prefix(sample))
    except Exception:
        return False
    return torch.is_tensor(got) and got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4,
                                                                                     atol=1e-5)


def same_in_training(model: nn.Module, cut: Cut, sample: torch.Tensor) -> bool:
    """Whether the prefix gives the same features in train mode as in eval mode (buffers and the global
    random generators are restored: this check must not change the run)."""
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    modes = [(m, m.training) for m in model.modules()]
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            with eval_mode(model):
                expected = cut.prefix(sample)
            model.train()
            got = cut.prefix(sample)
    finally:
        for m, mode in modes:
            m.training = mode
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
    return torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
