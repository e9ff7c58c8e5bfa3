"""partial_ft.size_to_budget: a strategy's size option (a fraction or an integer such as lora's rank) set
so that its plan learns the most that fits a budget, or the closest to it."""
from __future__ import annotations

import pytest

from partial_ft import learned_count, size_to_budget
from partial_ft.errors import UserError
from partial_ft.models import build
from partial_ft.sections import ModelCfg


@pytest.fixture(scope="module")
def model():
    return build(ModelCfg(name="test_resnet"), 10, seed=0)


# test_resnet has 373,658 parameters; its classifier 970 (96 x 10 + 10)
SIZED = [  # (spec, budget, option)
    ({"name": "lora"}, 0.1, "rank"),
    ({"name": "filters", "fixed": "random"}, 0.1, "fraction"),
]


@pytest.mark.parametrize("spec,budget,option", SIZED)
def test_at_most_is_the_largest_size_that_fits(model, spec, budget, option):
    net, init = model
    goal = int(budget * 373658) if budget < 1 else budget
    sized, learned = size_to_budget(net, spec, budget, init_model=init, at_most=True)
    assert learned <= goal
    assert learned == learned_count(net, sized, init_model=init)[0]  # the count of the spec it returns
    assert "count" not in sized or option == "count"
    bigger = sized[option] + 1 if isinstance(sized[option], int) else min(1.0, sized[option] * 1.05)
    assert learned_count(net, {**sized, option: bigger}, init_model=init)[0] > goal  # one step more: too much


def test_lora_rank_grows_by_one_rank_of_every_adapted_layer(model):
    """Counted by hand: each rank adds in + out (x kernel area for convs) of every adapted layer: 6,043 on
    test_resnet; rank 1 learns 970 (classifier) + 6,043."""
    net, _ = model
    assert [learned_count(net, {"name": "lora", "rank": r})[0] for r in (1, 2, 6)] == [7013, 13056, 37228]
    assert size_to_budget(net, {"name": "lora"}, 37228, at_most=True) == ({"name": "lora", "rank": 6}, 37228)
    assert size_to_budget(net, {"name": "lora"}, 37227, at_most=True) == ({"name": "lora", "rank": 5}, 31185)
    assert size_to_budget(net, {"name": "lora"}, 35000) == ({"name": "lora", "rank": 6}, 37228)  # closest


def test_integer_size_stops_below_what_the_strategy_refuses(model):
    """lora refuses a rank above a layer's full rank: a budget beyond that gets the largest rank allowed."""
    net, _ = model
    sized, learned = size_to_budget(net, {"name": "lora"}, 0.9, at_most=True)
    assert learned == learned_count(net, sized)[0] < 0.9 * 373658
    with pytest.raises(UserError, match="above the size of layer"):
        learned_count(net, {**sized, "rank": sized["rank"] + 1})


@pytest.mark.parametrize("spec,budget,expected", [
    ({"name": "auto", "score": "fisher"}, 0.02, ({"name": "auto", "score": "fisher", "budget": 7473}, 7473)),
    ({"name": "bias"}, 0.02, ({"name": "bias"}, 2010)),  # fixed size: counted as it is
    ({"name": "lora"}, 100, ({"name": "lora", "rank": 1}, 7013)),  # cannot fit: the smallest, over budget
])
def test_budget_options_and_fixed_sizes(model, spec, budget, expected):
    assert size_to_budget(model[0], spec, budget, at_most=True) == expected
