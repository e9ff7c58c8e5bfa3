"""Partly learned weights: a trainable slice plus a frozen remainder, never a gradient mask.

`make_partial(module, axis, learned_index)` replaces a module's `weight` Parameter with
  - `weight_learned`: an nn.Parameter holding the learned slice (the only thing an optimizer sees),
  - `weight_fixed`:   a buffer holding the fixed slice (no grad, no weight decay, no momentum),
and swaps the module's class for a subclass of its own class (isinstance checks keep working) whose
`weight` is a property that joins the two. Layers whose forward only calls `self.weight` (any conv,
timm's StdConv2d, ...) just work. Plain nn.Conv2d (groups=1) and nn.Linear sliced along out or in
channels run one convolution (or matmul) with the joined weight and a backward of their own: the input
gradient with the whole weight, the weight gradient for the learned slice only (_SlicedWeightFn).

The module's state dict keeps timm's layout (`<name>.weight` holds the full, joined tensor), so
checkpoints, `load_state_dict` and export round-trip with plain timm models.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

AXES = ("out", "in", "spatial")


def axis_size(weight_shape: torch.Size, axis: str) -> int:
    """How many slices the weight has along `axis` (out filters, in channels, kernel positions)."""
    if axis == "out":
        return weight_shape[0]
    if axis == "in":
        return weight_shape[1] if len(weight_shape) > 1 else 1
    if axis == "spatial":
        size = 1
        for s in weight_shape[2:]:
            size *= s
        return size
    raise ValueError(f"unknown axis {axis!r}")


def _view(weight: torch.Tensor, axis: str) -> tuple[torch.Tensor, int]:
    """The weight viewed so that `axis` is one dimension; returns (view, dim)."""
    if axis == "spatial":
        return weight.reshape(weight.shape[0], weight.shape[1], -1), 2
    return weight, {"out": 0, "in": 1}[axis]


def is_partial(module: nn.Module) -> bool:
    return isinstance(module, _PartialWeight)


def make_partial(module: nn.Module, axis: str, learned_index: torch.Tensor,
                 fixed_source: torch.Tensor | None = None) -> None:
    """Split `module.weight` along `axis`: entries at `learned_index` learn, the rest stay fixed.

    `fixed_source` (same shape as the weight) gives the values of the fixed part; default: the current
    weight. The learned part starts from the current weight.
    """
    weight = module.weight
    if is_partial(module):
        raise ValueError("module is already partial")
    n = axis_size(weight.shape, axis)
    learned_index = torch.as_tensor(learned_index, dtype=torch.long).flatten().sort().values
    if learned_index.numel() == 0 or learned_index.numel() >= n:
        raise ValueError("learned_index must select some, but not all, slices")
    mask = torch.ones(n, dtype=torch.bool)
    mask[learned_index] = False
    fixed_index = mask.nonzero().flatten()
    source = weight if fixed_source is None else fixed_source
    with torch.no_grad():
        view, dim = _view(weight.detach(), axis)
        learned = view.index_select(dim, learned_index).clone()
        fixed = _view(source.detach().to(weight.dtype), axis)[0].index_select(dim, fixed_index).clone()
    order = torch.cat([learned_index, fixed_index])
    contiguous = bool(torch.equal(order, torch.arange(n)))

    del module._parameters["weight"]
    module.register_parameter("weight_learned", nn.Parameter(learned))
    module.register_buffer("weight_fixed", fixed)
    # structure, not state: rebuilt from the strategy (seeded), so not in the state dict
    module.register_buffer("partial_learned_index", learned_index, persistent=False)
    module.register_buffer("partial_fixed_index", fixed_index, persistent=False)
    module.register_buffer("partial_inverse", None if contiguous else torch.argsort(order), persistent=False)
    module.partial_axis = axis
    module.partial_dim = dim
    module.partial_shape = tuple(weight.shape)
    module.__class__ = _partial_class(type(module), axis, module)


# --------------------------------------------------------------------------------------------


class _PartialWeight:
    """Mixin for a module whose weight is weight_learned (+) weight_fixed."""

    partial_axis: str
    partial_dim: int
    partial_shape: tuple

    @property
    def weight(self) -> torch.Tensor:
        """The full weight (differentiable w.r.t. the learned slice)."""
        full = torch.cat([self.weight_learned, self.weight_fixed.to(self.weight_learned.dtype)], self.partial_dim)
        if self.partial_inverse is not None:
            full = full.index_select(self.partial_dim, self.partial_inverse)
        return full.reshape(self.partial_shape)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # timm layout: the joined weight under `weight`, then everything else but the two parts
        destination[prefix + "weight"] = self.weight if keep_vars else self.weight.detach()
        for name, p in self._parameters.items():
            if p is not None and name != "weight_learned":
                destination[prefix + name] = p if keep_vars else p.detach()
        for name, b in self._buffers.items():
            if b is not None and name != "weight_fixed" and name not in self._non_persistent_buffers_set:
                destination[prefix + name] = b if keep_vars else b.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        own = {k: v for k, v in state_dict.items() if k.startswith(prefix) and k != prefix + "weight"}
        if prefix + "weight" in state_dict:
            full = state_dict[prefix + "weight"]
            if tuple(full.shape) != self.partial_shape:
                error_msgs.append(f"size mismatch for {prefix}weight: copying a param with shape "
                                  f"{tuple(full.shape)}, the shape in current model is {self.partial_shape}.")
                return
            view, dim = _view(full, self.partial_axis)
            own[prefix + "weight_learned"] = view.index_select(dim, self.partial_learned_index.to(full.device))
            own[prefix + "weight_fixed"] = view.index_select(dim, self.partial_fixed_index.to(full.device))
        super()._load_from_state_dict(own, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        for part in ("weight_learned", "weight_fixed"):  # report the timm key, not our internal ones
            if prefix + part in missing_keys:
                missing_keys.remove(prefix + part)
                if prefix + "weight" not in missing_keys:
                    missing_keys.append(prefix + "weight")

    def _take(self, t: torch.Tensor, which: str, dim: int) -> torch.Tensor:
        """The learned or fixed slices of an activation/bias along `dim` (a view when contiguous)."""
        k = self.weight_learned.shape[self.partial_dim]
        if self.partial_inverse is None:
            return t.narrow(dim, 0, k) if which == "learned" else t.narrow(dim, k, t.shape[dim] - k)
        index = self.partial_learned_index if which == "learned" else self.partial_fixed_index
        return t.index_select(dim, index)


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast would compute in on x's device, or None when autocast is off there."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None


class _SlicedWeightFn(torch.autograd.Function):
    """y = layer(x) with the joined weight, computed once; backward computes the input gradient with the
    whole weight (one op, as full training does) and a weight gradient for the learned slice only: the
    learned output channels of the output gradient (out), or the learned input channels of x (in). The
    fixed slice costs no weight-gradient work at all. Autocast is applied here by hand, so the backward
    runs in the dtype the forward ran in."""

    @staticmethod
    def forward(ctx, x, learned, fixed, bias, module):
        dtype = _autocast_dtype(x)
        weight = module.weight
        if dtype is not None:
            x, weight, bias = x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)
        ctx.module, ctx.dtypes = module, (learned.dtype, None if bias is None else bias.dtype)
        ctx.save_for_backward(x, weight)
        with torch.autocast(x.device.type, enabled=False):
            return module._dense_forward(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        m = ctx.module
        grad_out = grad_out.to(weight.dtype)
        grad_x, grad_learned, grad_bias = m._dense_backward(
            grad_out, x, weight, ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[3])
        if grad_learned is not None:
            grad_learned = grad_learned.to(ctx.dtypes[0])
        if grad_bias is not None:
            grad_bias = grad_bias.to(ctx.dtypes[1])
        return grad_x, grad_learned, None, grad_bias, None


class _SplitConv2d(_PartialWeight):
    """nn.Conv2d (groups=1, zero padding) sliced along out or in: see _SlicedWeightFn."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SlicedWeightFn.apply(x, self.weight_learned, self.weight_fixed, self.bias, self)

    def _dense_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, 1)

    def _dense_backward(self, grad_out, x, weight, want_x: bool, want_learned: bool, want_bias: bool):
        def conv_backward(g: torch.Tensor, inp: torch.Tensor, w: torch.Tensor, mask: list[bool]):
            return torch.ops.aten.convolution_backward(g, inp, w, None, self.stride, self.padding, self.dilation,
                                                       False, [0, 0], 1, mask)

        grad_x = conv_backward(grad_out, x, weight, [True, False, False])[0] if want_x else None
        grad_learned = None
        if want_learned:
            if self.partial_axis == "out":
                g = self._take(grad_out, "learned", 1).contiguous(memory_format=_format(grad_out))
                grad_learned = conv_backward(g, x, self._take(weight, "learned", 0), [False, True, False])[1]
            else:
                inp = self._take(x, "learned", 1).contiguous(memory_format=_format(x))
                grad_learned = conv_backward(grad_out, inp, self._take(weight, "learned", 1), [False, True, False])[1]
        grad_bias = grad_out.sum(dim=(0, 2, 3)) if want_bias else None
        return grad_x, grad_learned, grad_bias


def _format(t: torch.Tensor) -> torch.memory_format:
    """channels_last stays channels_last (slices of it must not fall back to NCHW)."""
    return torch.channels_last if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) \
        and not t.is_contiguous() else torch.contiguous_format


class _SplitLinear(_PartialWeight):
    """nn.Linear sliced along out or in: see _SlicedWeightFn."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SlicedWeightFn.apply(x, self.weight_learned, self.weight_fixed, self.bias, self)

    def _dense_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, weight, bias)

    def _dense_backward(self, grad_out, x, weight, want_x: bool, want_learned: bool, want_bias: bool):
        grad_x = grad_out @ weight if want_x else None
        g2, x2 = grad_out.reshape(-1, grad_out.shape[-1]), x.reshape(-1, x.shape[-1])
        grad_learned = None
        if want_learned:
            if self.partial_axis == "out":
                grad_learned = self._take(g2, "learned", 1).t() @ x2
            else:
                grad_learned = g2.t() @ self._take(x2, "learned", 1)
        grad_bias = g2.sum(0) if want_bias else None
        return grad_x, grad_learned, grad_bias


_CLASSES: dict[tuple[type, type], type] = {}


def _partial_class(cls: type, axis: str, module: nn.Module) -> type:
    mixin: type = _PartialWeight
    if axis in ("out", "in"):
        if (cls is nn.Conv2d and module.groups == 1 and module.padding_mode == "zeros"
                and not isinstance(module.padding, str)):
            mixin = _SplitConv2d
        elif cls is nn.Linear:
            mixin = _SplitLinear
    key = (cls, mixin)
    if key not in _CLASSES:
        _CLASSES[key] = type(f"Partial{cls.__name__}", (mixin, cls), {"__module__": __name__})
    return _CLASSES[key]


def learned_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """For every parameter, in timm's state-dict layout (`<module>.weight`, ...), a bool mask of the
    entries that learn. Partly learned weights get their slice; whole tensors all-True or all-False."""
    masks: dict[str, torch.Tensor] = {}
    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        for name, p in module.named_parameters(recurse=False):
            if name == "weight_learned" and is_partial(module):
                mask = torch.zeros(module.partial_shape, dtype=torch.bool)
                view, dim = _view(mask, module.partial_axis)
                view.index_fill_(dim, module.partial_learned_index.cpu(), True)
                masks[dot + "weight"] = view.reshape(module.partial_shape)
            else:
                masks[dot + name] = torch.full(p.shape, p.requires_grad, dtype=torch.bool)
    return masks


def partial_buffer_names(model: nn.Module) -> list[str]:
    """Names of the buffers partial weights add (fixed slices, index maps): identical on every process
    by construction, so DDP need not broadcast them."""
    return [f"{prefix}.{name}" if prefix else name for prefix, m in model.named_modules() if is_partial(m)
            for name in ("weight_fixed", "partial_learned_index", "partial_fixed_index", "partial_inverse")
            if getattr(m, name) is not None]
