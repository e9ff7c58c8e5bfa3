"""`auto` and `block index: auto`: what the gradient signal selects, the budget arithmetic, the recorded
selection, and the scoring pass (summed across processes, the model left as it was)."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import timm
import torch
from torch import nn

from partial_ft import apply_strategy
from partial_ft.errors import UserError
from partial_ft.partial import learned_masks
from partial_ft.strategies import Gradients
from partial_ft.layers import blocks


class Tiny(nn.Module):
    """100 parameters, counted by hand: conv1 2->4 3x3 (72, filters of 18, channels of 36, kernel positions
    of 8), bn 4 (8), conv2 4->3 1x1 (12, filters of 4, channels of 3), classifier fc 3->2 (6 + 2 bias)."""

    def __init__(self, kernel: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 3, 1, bias=False)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(torch.relu(self.bn(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def _hand_grads() -> dict[str, torch.Tensor]:
    """conv1 filters: all 3 | all 0 | all 0.8 | all 0.5 -> fisher per parameter 9, 0, .64, .25; grad 3, 0, .8, .5.
    conv2 filters: all 2 | [2, 0, 0, 0] | all 0.1 -> fisher 4, 1, .01; grad 2, .5, .1."""
    c1 = torch.tensor([3.0, 0.0, 0.8, 0.5]).reshape(4, 1, 1, 1).expand(4, 2, 3, 3).clone()
    c2 = torch.tensor([[2.0, 2, 2, 2], [2, 0, 0, 0], [0.1, 0.1, 0.1, 0.1]]).reshape(3, 4, 1, 1)
    return {"conv1.weight": c1, "conv2.weight": c2}


def _set_grads(grads: dict[str, torch.Tensor], batches: int = 2) -> Gradients:
    """A fake gradient source: every batch leaves the same hand-written gradients (zero elsewhere)."""
    def draw(model: nn.Module, n: int):
        for i in range(n):
            for name, p in model.named_parameters():
                p.grad = grads[name].clone() if name in grads else torch.zeros_like(p)
            yield i
    return Gradients(draw, available=batches)


def _plan(spec: dict, model: nn.Module | None = None, gradients: Gradients | None = None):
    torch.manual_seed(0)
    model = model or Tiny()
    plan = apply_strategy(model, spec, gradients=gradients or _set_grads(_hand_grads()))
    return model, plan


# (options, learned count and selection, worked out by hand from _hand_grads and Tiny's sizes)
BUDGETS = [
    # 40 - classifier 8 - norm 8 = 24: conv1 f0 (18), conv2 f0 (4); 2 left < any unit
    ({"budget": 40}, 38, {"conv1": [0], "conv2": [0]}),
    # 60 - 16 = 44: c1f0 18, c2f0 4, c2f1 4 (fisher 1 > c1f2's .64), c1f2 18: spent exactly
    ({"budget": 60}, 60, {"conv1": [0, 2], "conv2": [0, 1]}),
    # 56 - 16 = 40, fisher: c1f0, c2f0, c2f1, (c1f2, c1f3 do not fit), c2f2: conv2 learns whole
    ({"budget": 56}, 46, {"conv1": [0], "conv2": [0, 1, 2]}),
    # the same by grad: c1f0, c2f0, c1f2 (.8 > c2f1's .5): 0 left
    ({"budget": 56, "score": "grad"}, 56, {"conv1": [0, 2], "conv2": [0]}),
    # a fraction of all 100 parameters, without norm layers: 30 - 8 = 22: c1f0, c2f0
    ({"budget": 0.3, "norm": False}, 30, {"conv1": [0], "conv2": [0]}),
    # channels: conv1's two (36 each) score alike, 2.4725; conv2 ch0 (3) 8.01 / 3, ch1-3 4.01 / 3.
    # 55 - 16 = 39: c2ch0 3, c1ch0 36
    ({"budget": 55, "unit": "channel"}, 55, {"conv1": [0], "conv2": [0]}),
    # kernel positions (conv1 only: conv2 is 1x1), 8 each, all alike: lowest index first. 37 - 16 = 21: two
    ({"budget": 37, "unit": "kernel"}, 32, {"conv1": [0, 1]}),
]


@pytest.mark.parametrize("options, learned, selected", BUDGETS)
def test_budget_is_met_exactly_counting_head_and_norm(options, learned, selected):
    model, plan = _plan({"name": "auto", **options})
    assert plan.total == 100
    assert plan.learned == learned
    assert sum(int(m.sum()) for m in learned_masks(model).values()) == learned
    assert plan.spec["selected"] == selected
    budget = options["budget"] if isinstance(options["budget"], int) else int(options["budget"] * 100)
    assert f"auto: budget {budget}" in plan.table()


def test_the_plan_shows_each_layers_share_of_the_score():
    _, plan = _plan({"name": "auto", "budget": 40})
    rows = {r.name: r for r in plan.rows}
    # Σ g² per layer: conv1 18 x (9 + 0 + .64 + .25) = 178.02, conv2 4 x 4 + 4 + 4 x .01 = 20.04
    assert rows["conv1"].how == "1/4 out (90% of score)" and rows["conv2"].how == "1/3 out (10% of score)"
    assert "4 filters" not in plan.table() and "2 filters by fisher score 22" in plan.table()


@pytest.mark.parametrize("spec, message", [
    ({"budget": 0}, "budget must be > 0"),
    ({"budget": -0.5}, "must be in (0, 1)"),
    ({"budget": 1.0}, "must be in (0, 1)"),
    ({"budget": 2.5}, "must be in (0, 1)"),
    ({"budget": 15}, "below what the classifier and norm layers alone need: 16 (16% of 100)"),
    ({"budget": 0.07, "norm": False}, "below what the classifier alone need: 8"),
    ({"budget": 40, "batches": 3}, "batches is 3, but the training data has only 2 batches"),
    ({"budget": 40, "batches": 0}, "batches must be >= 1"),
    ({"budget": 40, "unit": "voxel"}, "must be one of ['filter', 'channel', 'kernel']"),
    ({"budget": 40, "selected": {"conv9": [0]}}, "no layer 'conv9'"),
    ({"budget": 40, "selected": {"conv1": [4]}}, "distinct indices in 0..3"),
    ({"budget": 40, "selected": {"conv1": "0"}}, "map layer names to lists"),
])
def test_bad_input_is_one_user_error(spec, message):
    with pytest.raises(UserError) as e:
        _plan({"name": "auto", **spec})
    assert message in str(e.value)


def test_a_unit_the_model_has_no_layers_for():
    with pytest.raises(UserError, match="no conv or linear layer with more than one kernel"):
        _plan({"name": "auto", "budget": 40, "unit": "kernel"}, model=Tiny(kernel=1))


def test_no_gradients_no_scoring():
    with pytest.raises(UserError, match="chooses from training gradients, but none were given"):
        apply_strategy(Tiny(), {"name": "auto", "budget": 40})


def test_the_recorded_selection_rebuilds_without_scoring():
    model, plan = _plan({"name": "auto", "budget": 56, "score": "grad"})
    spec = json.loads(json.dumps(plan.spec))  # as the delta's metadata stores it
    again = Tiny()
    again.load_state_dict({k: v for k, v in model.state_dict().items()})
    replay = apply_strategy(again, spec)  # no gradients: scoring again would raise
    assert replay.learned == plan.learned and replay.learned_names == plan.learned_names
    first, second = learned_masks(model), learned_masks(again)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert replay.spec == spec


def test_the_scoring_pass_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cpu_rng = torch.get_rng_state()
    apply_strategy(model, {"name": "auto", "budget": 0.05}, gradients=_images(model_classes=3))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running statistics included
    assert torch.equal(torch.get_rng_state(), cpu_rng)
    assert all(p.grad is None for p in model.parameters())


def _images(model_classes: int, batches: int = 4, rank: int = 0, world: int = 1, reduce=None) -> Gradients:
    """Real forward/backward over fixed random batches; process `rank` of `world` draws its share."""
    def draw(model: nn.Module, n: int):
        for i in range(rank, n, world):
            g = torch.Generator().manual_seed(100 + i)
            x = torch.randn(4, 3, 32, 32, generator=g)
            y = torch.randint(0, model_classes, (4,), generator=g)
            nn.functional.cross_entropy(model(x), y).backward()
            yield i
    return Gradients(draw, available=batches, **({"reduce": reduce} if reduce else {}))


SPEC = {"name": "auto", "budget": 0.03, "score": "fisher"}


def _ranked_selection(rank: int, world: int, port: int, out: dict) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        def reduce(t: torch.Tensor) -> torch.Tensor:
            dist.all_reduce(t)
            return t

        torch.manual_seed(0)
        model = timm.create_model("test_resnet", num_classes=3)
        plan = apply_strategy(model, SPEC, gradients=_images(3, rank=rank, world=world, reduce=reduce))
        out[rank] = plan.spec["selected"]
    finally:
        dist.destroy_process_group()


def test_two_processes_select_what_one_process_selects():
    """Each of 2 gloo processes scores its share of the batches; the summed scores choose what 1 process
    scoring every batch chooses, on both ranks."""
    import socket

    import torch.multiprocessing as mp

    torch.manual_seed(0)
    single = apply_strategy(timm.create_model("test_resnet", num_classes=3), SPEC, gradients=_images(3)).spec
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    out = manager.dict()
    # spawn, not fork: a fork after this process used its OpenMP thread pool can deadlock
    mp.start_processes(_ranked_selection, args=(2, port, out), nprocs=2, start_method="spawn")
    assert out[0] == out[1] == single["selected"]
    assert sum(len(v) for v in single["selected"].values()) > 0


def test_random_score_is_uniform_over_units():
    """16 filters of 4 parameters each (4 in one layer, 12 in the other), a budget for 4 of them: over many
    seeds every filter is chosen about 1 time in 4, so the bigger layer gets 3/4 of the picks (uniform
    per unit, not per layer)."""
    class Equal(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(4, 4, 1, bias=False)
            self.b = nn.Conv2d(4, 12, 1, bias=False)
            self.fc = nn.Linear(12, 2)

        def forward(self, x):
            return self.fc(self.b(self.a(x)).mean(dim=(2, 3)))

    seeds = 500
    counts: Counter = Counter()
    for seed in range(seeds):
        plan = apply_strategy(Equal(), {"name": "auto", "budget": 26 + 16, "score": "random"}, seed=seed)
        assert plan.learned == 26 + 16  # classifier 26 + 4 filters of 4
        counts.update((layer, i) for layer, idx in plan.spec["selected"].items() for i in idx)
    assert len(counts) == 16
    for unit, c in counts.items():  # binomial(500, 1/4): mean 125, sd 9.7
        assert 90 < c < 160, (unit, c)
    share_b = sum(c for (layer, _), c in counts.items() if layer == "b") / (4 * seeds)
    assert 0.70 < share_b < 0.80
    again = [apply_strategy(Equal(), {"name": "auto", "budget": 42, "score": "random"}, seed=7).spec for _ in range(2)]
    assert again[0] == again[1]


def test_block_auto_picks_the_largest_relative_gradient_norm():
    """Gradients set to s x w per block (s = 1, but 5 for block 2): ‖g‖/‖w‖ = s, so block 2 wins, 5x."""
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3)
    groups = blocks(model)
    scale = {n: (5.0 if i == 2 else 1.0) for i, names in enumerate(groups) for n in names}
    weights = dict(model.named_parameters())
    grads = {n: scale[n] * weights[n].detach().clone() for n in scale}
    plan = apply_strategy(model, {"name": "block", "index": "auto"}, gradients=_set_grads(grads, batches=1))
    assert plan.spec["index"] == "auto" and plan.spec["chosen"] == 2 and plan.label == "block(index=auto)"
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(groups[2]) | {"fc.weight", "fc.bias"}
    assert "block index auto: block 2" in plan.table() and "5.00x the next" in plan.table()
    again = timm.create_model("test_resnet", num_classes=3)
    assert apply_strategy(again, plan.spec).learned_names == plan.learned_names  # no gradients needed


def test_the_plan_says_when_layers_get_no_gradient():
    grads = {"conv1.weight": _hand_grads()["conv1.weight"]}  # conv2 silent, as behind a zero norm scale
    _, plan = _plan({"name": "auto", "budget": 40}, gradients=_set_grads(grads))
    assert "auto: 1 of 2 layers got no gradient at all (e.g. conv2)" in plan.table()
    _, plan = _plan({"name": "auto", "budget": 40})
    assert "got no gradient" not in plan.table()


def test_random_score_is_uniform_over_units_of_different_sizes():
    """Layer a: 4 filters of 4 parameters; layer b: 4 filters of 36. With room for one b filter (36), a b
    filter comes first in half of the random orders (then nothing else fits), an a filter in the other half
    (then only a filters fit): b learns in about half of the seeds. Scored per parameter, b never would."""
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(4, 4, 1, bias=False)
            self.b = nn.Conv2d(4, 4, 3, bias=False, padding=1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.b(self.a(x)).mean(dim=(2, 3)))

    seeds, with_b = 300, 0
    for seed in range(seeds):
        plan = apply_strategy(Mixed(), {"name": "auto", "budget": 10 + 36, "score": "random"}, seed=seed)
        with_b += "b" in plan.spec["selected"]
    assert 0.38 < with_b / seeds < 0.62, with_b
