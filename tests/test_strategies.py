"""Every strategy x several architectures: fixed weights never move, counts are exact, optimizer state
matches what learns, state dicts round-trip into plain timm models."""
from __future__ import annotations

import math

import pytest
import timm
import torch
from torch import nn

from partial_ft import apply_strategy, list_strategies, merged_state_dict
from partial_ft.errors import UserError
from partial_ft.partial import learned_masks
from partial_ft.strategies import Gradients
from partial_ft.layers import silent_norms

NUM_CLASSES = 7
ARCHS = {
    # name: (timm kwargs, input size)
    "test_resnet": ({}, 32),  # ResNet
    "densenet121": ({}, 32),  # DenseNet
    "vgg11_bn": ({"mlp_ratio": 0.0625}, 32),  # VGG with BN (a slim pre-logits MLP keeps it fast)
    "test_vit": ({"img_size": 32}, 32),  # ViT: LayerNorm, Linear layers, no BatchNorm
    "test_convnext": ({}, 32),  # ConvNeXt: depthwise convs, LayerNorm2d
    "test_efficientnet": ({}, 32),  # EfficientNet: depthwise + pointwise convs, BatchNormAct2d
}


# written down from each architecture's timm source: the module of its classifier (a new one of NUM_CLASSES)
HEADS = {"test_resnet": "fc", "densenet121": "classifier", "vgg11_bn": "head.fc", "test_vit": "head",
         "test_convnext": "head.fc", "test_efficientnet": "classifier", "regnetx_002": "head.fc",
         "mobilenetv3_small_050": "classifier", "efficientnet_b0": "classifier", "resnet18": "fc"}
# written down: parameter counts of each architecture (with a NUM_CLASSES classifier) from its state dict
# shapes: the classifier; the normalisation layers' affine parameters; every bias but the classifier's
COUNTS = {
    "test_resnet": dict(head=679, norm=2080, bias=1040),  # head: fc 96 x 7 + 7
    "densenet121": dict(head=7175, norm=83648, bias=41824),  # head: classifier 1024 x 7 + 7
    "vgg11_bn": dict(head=28679, norm=5504, bias=9856),  # head: head.fc 4096 x 7 + 7
    "test_vit": dict(head=455, norm=1664, bias=3968),  # head: 64 x 7 + 7
    "test_convnext": dict(head=455, norm=1200, bias=3216),  # head: head.fc 64 x 7 + 7
    "test_efficientnet": dict(head=1799, norm=2528, bias=1604),  # head: classifier 256 x 7 + 7
}


def _arch(model: nn.Module) -> str:
    return model.pretrained_cfg["architecture"]


def _head(model: nn.Module) -> set[str]:
    """The classifier's parameter names, from the written-down module (not the code under test)."""
    prefix = HEADS[_arch(model)] + "."
    return {n for n, _ in model.named_parameters() if n.startswith(prefix)}


def _biases(model: nn.Module) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.endswith(".bias")}


def _count(*parts: str):
    """An expectation: the sum of written-down counts of `parts` (head, norm, bias) of the model's arch."""
    return lambda m: sum(COUNTS[_arch(m)][part] for part in parts)


def _create(arch: str) -> nn.Module:
    kwargs, _ = ARCHS[arch]
    torch.manual_seed(0)
    return timm.create_model(arch, num_classes=NUM_CLASSES, **kwargs)


def _numel(model: nn.Module, names: set[str]) -> int:
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in names)


def _filters_expected(model: nn.Module, fraction=None, count=None, dim="out", layers="conv", norm=True) -> int:
    """Independent count: per sliced layer, k slices of size numel / n."""
    head = _head(model)
    total = 0
    for name, m in model.named_modules():
        if not isinstance(getattr(m, "weight", None), nn.Parameter) or f"{name}.weight" in head:
            continue
        is_conv, is_linear = isinstance(m, nn.modules.conv._ConvNd), isinstance(m, nn.Linear)
        if not ((is_conv and layers in ("conv", "all")) or (is_linear and layers in ("linear", "all"))):
            continue
        shape = m.weight.shape
        n = {"out": shape[0], "in": shape[1], "spatial": math.prod(shape[2:])}[dim]
        k = min(n, count) if count else max(1, round(fraction * n))
        total += k * (m.weight.numel() // n)
    return total + COUNTS[_arch(model)]["head"] + (COUNTS[_arch(model)]["norm"] if norm else 0)


# timm's coarse grouping (group_matcher) of each architecture, written down from its source: the module
# prefixes of the first, middle (n // 2) and last block, the classifier left out
BLOCKS = {
    "test_resnet": {"first": ["conv1", "bn1"], "middle": ["layer2"], "last": ["layer4"]},
    "densenet121": {"first": ["features.conv0", "features.norm0"],
                    "middle": ["features.denseblock3", "features.transition3"], "last": ["features.norm5"]},
    "vgg11_bn": {"first": ["features.0"], "middle": ["features.15"], "last": ["pre_logits"]},
    "test_vit": {"first": ["cls_token", "pos_embed", "patch_embed"], "middle": ["blocks.2"],
                 "last": ["blocks.5", "norm"]},
    "test_convnext": {"first": ["stem"], "middle": ["stages.2"], "last": ["head.norm"]},
    "test_efficientnet": {"first": ["conv_stem", "bn1"], "middle": ["blocks.2"],
                          "last": ["blocks.4", "conv_head", "bn2"]},
    # further families (test_one_block_recipe_fits_more_families): the middle block only
    "regnetx_002": {"middle": ["s2"]},
    "mobilenetv3_small_050": {"middle": ["blocks.3"]},
    "efficientnet_b0": {"middle": ["blocks.3"]},
    "resnet18": {"middle": ["layer2"]},
}


def _block_params(model: nn.Module, which: str) -> set[str]:
    """Names of the parameters under the written-down prefixes of block `which` (first | middle | last)."""
    arch = model.pretrained_cfg["architecture"]
    prefixes = BLOCKS[arch][which]
    return {n for n, _ in model.named_parameters() if any(n == p or n.startswith(f"{p}.") for p in prefixes)}


def _block_expected(model, index="middle"):
    return _numel(model, _block_params(model, index) | _head(model))


def _lora_expected(model, rank):
    """Independent count: r x (in + out) per adapted linear layer, r x (in x kh x kw + out) per plain
    conv (groups 1); the classifier excluded."""
    head = _head(model)
    total = 0
    for name, m in model.named_modules():
        if f"{name}.weight" in head:
            continue
        if type(m) is nn.Linear:
            total += rank * (m.in_features + m.out_features)
        elif type(m) is nn.Conv2d and m.groups == 1:
            total += rank * (m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels)
    return total


def _auto_expected(model, budget: float, unit: str):
    """Independent bounds: the budget (a fraction of every parameter) is never exceeded, and what is left
    over is less than one unit of the largest kind (else the greedy fill would have taken one more)."""
    head = _head(model)
    largest = 0
    for name, m in model.named_modules():
        if not isinstance(getattr(m, "weight", None), nn.Parameter) or f"{name}.weight" in head:
            continue
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            shape = m.weight.shape
            n = {"filter": shape[0], "channel": shape[1], "kernel": math.prod(shape[2:])}[unit]
            largest = max(largest, m.weight.numel() // n if n > 1 else 0)
    total = int(budget * sum(p.numel() for p in model.parameters()))
    return total - largest, total


# strategy spec -> expected learned count, or (lowest, highest)
CASES = {
    "full": ({"name": "full"}, lambda m: sum(p.numel() for p in m.parameters())),
    "head": ({"name": "head"}, _count("head")),
    "block": ({"name": "block", "index": "middle"}, _block_expected),
    "block_last": ({"name": "block", "index": "last", "head": False},
                   lambda m: _numel(m, _block_params(m, "last"))),
    "filters_out_random": ({"name": "filters", "fraction": 0.1, "fixed": "random", "select": "random"},
                           lambda m: _filters_expected(m, fraction=0.1)),
    "filters_in_zero": ({"name": "filters", "fraction": 0.25, "dim": "in", "fixed": "zero"},
                        lambda m: _filters_expected(m, fraction=0.25, dim="in")),
    "filters_spatial": ({"name": "filters", "fraction": 0.3, "dim": "spatial", "layers": "all"},
                        lambda m: _filters_expected(m, fraction=0.3, dim="spatial", layers="all")),
    "filters_one": ({"name": "filters", "count": 1, "norm": False, "layers": "all"},
                    lambda m: _filters_expected(m, count=1, layers="all", norm=False)),
    "norm": ({"name": "norm", "norm_stats": "freeze"}, _count("norm", "head")),
    "bn_alias": ({"name": "bn"}, _count("norm", "head")),
    "bias": ({"name": "bias"}, _count("bias", "head")),
    "lora": ({"name": "lora", "rank": 2},
             lambda m: _lora_expected(m, 2) + _count("head")(m)),
    **{f"auto_{unit}": ({"name": "auto", "budget": 0.08, "unit": unit, "score": score},
                        lambda m, unit=unit: _auto_expected(m, 0.08, unit))
       for unit, score in (("filter", "fisher"), ("channel", "grad"), ("kernel", "random"))},
    "union": ([{"name": "block", "index": "first", "head": False}, {"name": "bias"}],
              lambda m: _numel(m, _block_params(m, "first") | _biases(m) | _head(m))),
}


def test_every_registered_strategy_is_in_the_table():
    covered = {spec["name"] if isinstance(spec, dict) else spec[0]["name"] for spec, _ in CASES.values()}
    covered |= {s.name for s in list_strategies() if set(s.aliases) & covered}
    assert {s.name for s in list_strategies()} <= covered


def _gradients(size: int, batches: int = 1) -> Gradients:
    """A stand-in for the training data: forward/backward over fixed random batches (of 2 images: a
    train-mode BatchNorm needs more than one value per channel)."""
    def draw(model: nn.Module, n: int):
        g = torch.Generator().manual_seed(2)
        for i in range(n):
            x = torch.randn(2, 3, size, size, generator=g)
            nn.functional.cross_entropy(model(x), torch.randint(0, NUM_CLASSES, (2,), generator=g)).backward()
            yield i
    return Gradients(draw, available=batches)


def train_steps(model: nn.Module, size: int, steps: int = 3, device: str = "cpu") -> torch.optim.Optimizer:
    """AdamW with weight decay, bf16 autocast and gradient clipping: everything that could move a
    fixed entry if fixed entries were merely masked."""
    learned = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(learned, lr=1e-2, weight_decay=0.5, betas=(0.9, 0.99))
    g = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(steps):
        x = torch.randn(4, 3, size, size, generator=g).to(device)
        y = torch.randint(0, NUM_CLASSES, (4,), generator=g).to(device)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(learned, 0.5)
        opt.step()
        opt.zero_grad()
    return opt


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("arch", list(ARCHS))
def test_fixed_never_move_and_counts_exact(arch, case):
    check_fixed_never_move(arch, case)


def check_fixed_never_move(arch: str, case: str, device: str = "cpu", steps: int = 3) -> None:
    """Counts exact (plan, requires_grad, independent expectation); after `steps` of training on `device`
    fixed entries bit-identical, learned ones moved; optimizer state = 2 x learned (AdamW)."""
    spec, expected = CASES[case]
    model = _create(arch)
    expected_learned = expected(model)
    total = sum(p.numel() for p in model.parameters())
    plan = apply_strategy(model, spec, seed=3, gradients=_gradients(ARCHS[arch][1]))

    # counts: the plan, requires_grad, and the independent expectation agree
    assert plan.total == total
    assert plan.learned == sum(p.numel() for p in model.parameters() if p.requires_grad)
    if isinstance(expected_learned, tuple):
        assert expected_learned[0] < plan.learned <= expected_learned[1]
    else:
        assert plan.learned == expected_learned
    masks = learned_masks(model)

    before = {k: v.clone() for k, v in model.state_dict().items()}
    buffers_before = {k: v.clone() for k, v in model.named_buffers() if "running" in k}
    opt = train_steps(model.to(device), ARCHS[arch][1], steps, device)
    after = {k: v.cpu() for k, v in model.state_dict().items()}
    assert before.keys() == after.keys()

    moved = total_learned = 0
    for key, mask in masks.items():
        b, a = before[key], after[key]
        assert torch.equal(b[~mask], a[~mask]), f"fixed entries of {key} moved"
        moved += int((b[mask] != a[mask]).sum())
        total_learned += int(mask.sum())
    assert moved >= 0.5 * total_learned, f"only {moved}/{total_learned} learned entries moved"

    # optimizer state is proportional to what learns: AdamW keeps two moments per learned scalar
    state = sum(s["exp_avg"].numel() + s["exp_avg_sq"].numel() for s in opt.state.values())
    assert state == 2 * plan.learned

    if (spec.get("norm_stats") if isinstance(spec, dict) else None) == "freeze":
        for k, v in model.named_buffers():
            if k in buffers_before:
                assert torch.equal(buffers_before[k], v.cpu()), f"frozen statistics {k} moved"


@pytest.mark.parametrize("arch", ["test_resnet", "test_vit", "test_efficientnet"])
@pytest.mark.parametrize("case", ["filters_out_random", "filters_in_zero", "filters_spatial", "lora"])
def test_merged_state_dict_loads_into_plain_timm(arch, case):
    spec, _ = CASES[case]
    model = _create(arch)
    apply_strategy(model, spec, seed=5)
    train_steps(model, ARCHS[arch][1], steps=2)
    model.eval()
    plain = timm.create_model(arch, num_classes=NUM_CLASSES, **ARCHS[arch][0]).eval()
    plain.load_state_dict(merged_state_dict(model), strict=True)
    x = torch.randn(2, 3, ARCHS[arch][1], ARCHS[arch][1])
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), rtol=1e-4, atol=1e-5)
    if case == "lora":
        return  # merging adapters is one-way: B·A cannot be recovered from the merged weight
    # and back: a freshly planned model loads the merged dict and predicts the same
    again = _create(arch)
    apply_strategy(again, spec, seed=5)
    again.load_state_dict(merged_state_dict(model), strict=True)
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=1e-4, atol=1e-5)


def test_fixed_zero_and_random_set_the_fixed_part():
    model = _create("test_resnet")
    reference = _create("test_resnet")
    apply_strategy(model, {"name": "filters", "fraction": 0.5, "fixed": "zero"})
    masks = learned_masks(model)
    state = merged_state_dict(model)
    conv = "stem.conv1.weight" if "stem.conv1.weight" in state else next(k for k in state if "conv" in k)
    assert torch.count_nonzero(state[conv][~masks[conv]]) == 0
    assert torch.equal(state[conv][masks[conv]], reference.state_dict()[conv][masks[conv]])

    fresh = lambda: timm.create_model("test_resnet", num_classes=NUM_CLASSES)  # noqa: E731
    a, b = _create("test_resnet"), _create("test_resnet")
    apply_strategy(a, {"name": "filters", "fraction": 0.5, "fixed": "random"}, seed=1, init_model=fresh)
    apply_strategy(b, {"name": "filters", "fraction": 0.5, "fixed": "random"}, seed=2, init_model=fresh)
    sa, sb = merged_state_dict(a), merged_state_dict(b)
    assert not torch.equal(sa[conv][~masks[conv]], sb[conv][~masks[conv]])  # re-drawn, per seed
    assert torch.equal(sa[conv][masks[conv]], sb[conv][masks[conv]])  # learned part starts from the model

    # ensemble members differ by the selection seed only: their fixed random parts are one backbone
    c, d = _create("test_resnet"), _create("test_resnet")
    spec = {"name": "filters", "fraction": 0.25, "fixed": "random", "select": "random"}
    apply_strategy(c, {**spec, "seed": 5}, seed=1, init_model=fresh)
    apply_strategy(d, {**spec, "seed": 6}, seed=1, init_model=fresh)
    mc, md = learned_masks(c)[conv], learned_masks(d)[conv]
    both_fixed = ~mc & ~md
    assert not torch.equal(mc, md) and both_fixed.any()
    assert torch.equal(merged_state_dict(c)[conv][both_fixed], merged_state_dict(d)[conv][both_fixed])


def test_random_selection_is_seeded():
    picks = []
    for seed in (0, 0, 1):
        model = _create("test_resnet")
        apply_strategy(model, {"name": "filters", "fraction": 0.25, "select": "random"}, seed=seed)
        picks.append(torch.cat([m.flatten() for m in learned_masks(model).values()]))
    assert torch.equal(picks[0], picks[1]) and not torch.equal(picks[0], picks[2])


def test_split_forward_computes_no_weight_grad_for_the_fixed_slice():
    conv = nn.Conv2d(8, 16, 3, padding=1)
    from partial_ft.partial import make_partial

    make_partial(conv, "out", torch.arange(2))
    conv.weight_learned.requires_grad_(True)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    conv(x).sum().backward()
    assert conv.weight_learned.grad.shape == (2, 8, 3, 3)
    assert conv.weight_fixed.grad is None and x.grad is not None


# (arch, modules regex, layers) -> exactly the layers adapted, and the learned count at rank 2 with the
# head (resnet18 head 512 x 7 + 7 = 3,591; test_vit head 64 x 7 + 7 = 455), both written down by hand
LORA_TARGETS = [
    ("resnet18", r"^conv1$", "all", ["conv1"], 2 * (3 * 7 * 7 + 64) + 3591),
    ("resnet18", r"^layer1\.0\.conv1$", "conv", ["layer1.0.conv1"], 2 * (64 * 3 * 3 + 64) + 3591),
    ("resnet18", r"downsample\.0$", "all", ["layer2.0.downsample.0", "layer3.0.downsample.0",
                                            "layer4.0.downsample.0"], 2 * (192 + 384 + 768) + 3591),
    ("test_vit", r"^blocks\.0\.attn\.qkv$", "linear", ["blocks.0.attn.qkv"], 2 * (64 + 192) + 455),
    ("test_vit", r"^blocks\.1\.mlp\.fc\d$", "all", ["blocks.1.mlp.fc1", "blocks.1.mlp.fc2"],
     2 * (64 + 192) * 2 + 455),
]


@pytest.mark.parametrize("arch, modules, layers, adapted, learned", LORA_TARGETS,
                         ids=[f"{a}-{m}" for a, m, *_ in LORA_TARGETS])
def test_lora_adapts_exactly_the_layers_its_regex_matches(arch, modules, layers, adapted, learned):
    """`^conv1$` adapts the stem conv only, not every `*.conv1` (PEFT matches a list of names by suffix)."""
    from peft.tuners.lora import LoraLayer

    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=NUM_CLASSES, **ARCHS.get(arch, ({}, 0))[0])
    plan = apply_strategy(model, {"name": "lora", "rank": 2, "modules": modules, "layers": layers})
    assert sorted(n for n, m in model.named_modules() if isinstance(m, LoraLayer)) == adapted
    assert plan.learned == learned


@pytest.mark.parametrize("spec, message", [
    ({"name": "filterz"}, "unknown strategy 'filterz' (did you mean 'filters'?)"),
    ({"name": "filters", "fraction": 1.5}, "fraction must be in (0, 1]"),
    ({"name": "filters", "fraction": 0}, "fraction must be in (0, 1]"),
    ({"name": "filters", "count": 0}, "count must be >= 1"),
    ({"name": "filters", "fraction": 0.1, "count": 2}, "fraction or count, not both"),
    ({"name": "filters", "dim": "sideways"}, "must be one of ['out', 'in', 'spatial']"),
    ({"name": "head", "fraction": 0.1}, "unknown option 'strategy.fraction' for strategy 'head'"),
    ({"name": "block", "index": 99}, "block index 99 is outside"),
    ({"name": "head", "head": False}, "learns no parameters"),
    ({"fraction": 0.1}, "strategy needs a 'name'"),
])
def test_bad_options_are_user_errors(spec, message):
    with pytest.raises(UserError) as e:
        apply_strategy(_create("test_resnet"), spec)
    assert message in str(e.value)


@pytest.mark.parametrize("arch", ["regnetx_002", "mobilenetv3_small_050", "efficientnet_b0", "resnet18"])
def test_one_block_recipe_fits_more_families(arch):
    """The same `block: middle` spec on further timm families: one timm group learns, exactly."""
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=NUM_CLASSES)
    middle = _block_params(model, "middle")
    expected = _numel(model, middle | _head(model))
    plan = apply_strategy(model, {"name": "block", "index": "middle"})
    assert plan.learned == expected
    assert {n for n, p in model.named_parameters() if p.requires_grad} == middle | _head(model)


SLICED = [(layer, axis, index) for layer in ("conv", "linear") for axis in ("out", "in")
          for index in ([0, 1, 2], [1, 4, 6])]  # contiguous (select: first) and scattered (select: random)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("layer,axis,index", SLICED, ids=[f"{a}-{b}-{c[0]}" for a, b, c in SLICED])
def test_sliced_layers_match_dense_autograd(layer, axis, index, dtype):
    check_sliced_layer(layer, axis, index, dtype=dtype)


# largest difference allowed, relative to the largest value: fp32 differs by summation order only; under
# autocast both compute in half precision but reduce over other shapes (the weight gradient of a slice)
TOLERANCE = {None: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


def check_sliced_layer(layer: str, axis: str, index: list[int], device: str = "cpu",
                       dtype: torch.dtype | None = None, channels_last: bool = False) -> None:
    """The partial Conv2d / Linear (one op forward, own backward) gives the dense layer's output, input
    gradient, bias gradient, and the dense weight gradient restricted to the learned slice, on `device`,
    in fp32 or under autocast to `dtype` (then in that dtype, gradients in the parameters' fp32)."""
    import copy

    from partial_ft.partial import make_partial

    torch.manual_seed(0)
    dense = nn.Conv2d(8, 12, 3, stride=2, padding=1) if layer == "conv" else nn.Linear(10, 12)
    part = copy.deepcopy(dense)
    idx = torch.tensor(index)
    make_partial(part, axis, idx)  # on the CPU, as a run does before moving the model
    assert type(part).__name__ == ("PartialConv2d" if layer == "conv" else "PartialLinear")
    layout = torch.channels_last if channels_last and layer == "conv" else torch.contiguous_format
    dense, part = dense.to(device, memory_format=layout), part.to(device, memory_format=layout)
    x = torch.randn((4, 8, 9, 9) if layer == "conv" else (3, 5, 10)).to(device)
    x = x.contiguous(memory_format=layout) if x.dim() == 4 else x
    xd, xp = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    with torch.autocast(torch.device(device).type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        yd, yp = dense(xd), part(xp)
    g = torch.randn(yd.shape).to(device, yd.dtype)
    yd.backward(g)
    yp.backward(g)
    dim = 0 if axis == "out" else 1
    pairs = {"output": (yp, yd), "input grad": (xp.grad, xd.grad), "bias grad": (part.bias.grad, dense.bias.grad),
             "weight grad": (part.weight_learned.grad, dense.weight.grad.index_select(dim, idx.to(device)))}
    for name, (got, expected) in pairs.items():
        assert got.dtype == expected.dtype, name
        error = (got.float() - expected.float()).abs().max() / expected.float().abs().max()
        assert error <= TOLERANCE[dtype], f"{name}: relative error {error:.2e}"
    assert part.weight_fixed.grad is None
    assert yp.dtype == (dtype or torch.float32) and part.weight_learned.grad.dtype == torch.float32


@pytest.mark.parametrize("spec, kwargs, silent", [
    # timm's resnet18 at random init: each of the 8 BasicBlocks ends in a BatchNorm with scale 0 (zero_init_last)
    ({"name": "bias"}, {}, 8),
    ({"name": "block", "index": "middle"}, {}, 6),  # layer2's two blocks learn their norms
    ({"name": "filters", "fraction": 0.1, "norm": False}, {}, 8),
    ({"name": "filters", "fraction": 0.1}, {}, 0),  # norm: true learns every scale
    ({"name": "norm"}, {}, 0),
    ({"name": "full"}, {}, 0),
    ({"name": "bias"}, {"zero_init_last": False}, 0),
])
def test_silent_residual_branches_are_found(spec, kwargs, silent):
    """The start-of-run warning's count: norm layers with a zero scale that stays fixed."""
    model = timm.create_model("resnet18", num_classes=NUM_CLASSES, **kwargs)
    apply_strategy(model, spec)
    found = silent_norms(model)
    assert len(found) == silent
    assert all(name.endswith(".bn2") for name in found)
