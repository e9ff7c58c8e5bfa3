"""Preloaded data (`data.preload`): the stored images give the eval transform's exact values, batched
augmentation draws come from (seed, epoch, index) alone and sample like timm's random resized crop, and
the auto / true / false policy (memory, device, unsupported augmentations)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from partial_ft import augment, data, loaders, models, preload, transforms
from partial_ft import recipe as recipes
from partial_ft.errors import UserError

QUICK = {"model": {"name": "test_resnet"},
         "data": {"dataset": "digits", "input_size": 32, "crop_pct": 1.0, "num_workers": 0, "augment": True,
                  "scale": [0.5, 1.0], "ratio": [0.8, 1.25], "hflip": 0.5, "preload": True,
                  "max_train_samples": 96, "max_val_samples": 40}}


@pytest.fixture(scope="module")
def built():
    """(recipe, bundle, data_config, train loader, val loader) of a small preloaded digits setup."""
    r = recipes.from_dict(QUICK)
    bundle = data.load(r.data, seed=0)
    model, _ = models.build(r.model, bundle.num_classes, seed=0)
    dc = models.data_config(model, r.data)
    made = preload.make_loaders(bundle, r.data, dc, transforms.build(r.data, dc), (16, 32), 0, torch.device("cpu"))
    assert made.note.startswith("on: ") and made.seconds > 0
    return r, bundle, dc, made.train, made.val


def _batches(loader) -> list:
    return [(x, y) for x, y, _ in loader]


@pytest.mark.parametrize("split", ["val", "train_without_augment"])
def test_preloaded_batches_equal_the_per_image_eval_transform_exactly(built, split):
    r, bundle, dc, train, val = built
    cfg = r.data if split == "val" else recipes.from_dict({**QUICK, "data": {**QUICK["data"], "augment": False}}).data
    _, eval_tf, _ = transforms.build(cfg, dc)
    part = bundle.val if split == "val" else bundle.train
    if split == "val":
        got = val
    else:
        got = preload.make_loaders(bundle, cfg, dc, transforms.build(cfg, dc), (32, 32), 0, torch.device("cpu")).train
        got = loaders.loader(got.dataset, 32, False, 0, 0, collate_fn=preload.collate_preloaded)
    ref = loaders.loader(loaders.ImageDataset(part, bundle.image_column, bundle.label_column, eval_tf, split), 32,
                         False, 0, 0)
    pairs = list(zip(_batches(got), _batches(ref)))
    assert len(pairs) == len(ref)
    for (x, y), (x_ref, y_ref) in pairs:
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    item, label = got.dataset[3]  # one item alone (the feature cache's pass): the same values
    assert torch.equal(item, pairs[0][1][0][3]) and label == int(pairs[0][1][1][3])


def test_augmentation_depends_on_seed_epoch_and_index_only(built):
    ds = built[3].dataset
    ds.set_epoch(0)
    a, b = ds.__getitems__([5, 3, 9])[0], ds.__getitems__([9, 7, 7, 5])[0]
    assert torch.equal(a[0], b[3]) and torch.equal(a[2], b[0]) and torch.equal(b[1], b[2])
    assert not torch.equal(a[0], a[1])
    ds.set_epoch(1)
    assert not torch.equal(ds.__getitems__([5])[0][0], a[0])  # another epoch, other draws
    ds.set_epoch(0)
    assert torch.equal(ds.__getitems__([5])[0][0], a[0])
    u = augment.uniforms(0, 0, np.arange(1000))
    assert u.shape == (1000, augment.DRAWS) and 0 <= u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01 and not np.array_equal(u, augment.uniforms(1, 0, np.arange(1000)))


@pytest.mark.parametrize("hflip,flipped", [(0.0, False), (1.0, True)])
def test_whole_image_crop_is_the_image_and_flip_mirrors_it(hflip, flipped):
    x = torch.randint(0, 256, (4, 3, 8, 10), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    u = augment.uniforms(0, 0, np.arange(4))
    boxes = augment.crop_boxes(u, 8, 10, (1.0, 1.0), (1.25, 1.25))  # 10 x 8 has aspect 1.25: the whole image
    assert boxes.tolist() == [[0, 0, 10, 8]] * 4
    out = augment.augment_batch(x, torch.from_numpy(boxes).float(), torch.full((4,), flipped))
    expected = x.float().flip(-1) if flipped else x.float()
    assert (out - expected).abs().max() < 1e-3
    assert bool((torch.from_numpy(u[:, -1]) < hflip).all()) == flipped


@pytest.mark.parametrize("scale,ratio", [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.5, 1.0), (0.8, 1.25)),
                                         ((0.5, 0.7), (1.0, 1.0))])
def test_crop_boxes_sample_within_timm_ranges(scale, ratio):
    """Boxes lie inside the image; area fraction and aspect stay in the ranges (up to rounding to whole
    pixels); positions spread over the image."""
    h, w = 64, 48
    boxes = augment.crop_boxes(augment.uniforms(3, 0, np.arange(4000)), h, w, scale, ratio)
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    area, aspect = bw * bh / (h * w), bw / bh
    slack = 2 / min(bw.min(), bh.min())  # rounding to whole pixels
    assert scale[0] * (1 - 2 * slack) <= area.min() and area.max() <= scale[1] * (1 + 2 * slack)
    assert ratio[0] * (1 - slack) <= aspect.min() and aspect.max() <= ratio[1] * (1 + slack)
    if scale[0] < 0.9:
        assert boxes[:, 0].std() > 1 and boxes[:, 1].std() > 1


def test_fallback_is_the_center_crop_at_the_nearest_allowed_ratio():
    u = augment.uniforms(0, 0, np.arange(3))
    # scale > 1 never fits: timm falls back to a center crop of the whole image clipped to the ratio range
    assert augment.crop_boxes(u, 20, 40, (2.0, 2.0), (1.0, 1.5)).tolist() == [[5, 0, 35, 20]] * 3


GIB = 2**30
DECIDE = [
    # mode, device, need, unsupported, cache, free -> (preload, note part) or error part
    ("false", "cuda", GIB, [], False, 100 * GIB, (False, "off")),
    ("auto", "cuda", GIB, [], False, 100 * GIB, (True, "on: 1.00 GiB")),
    ("auto", "cpu", GIB, [], False, 100 * GIB, (False, "training on CPU")),
    ("auto", "cuda", 30 * GIB, [], False, 100 * GIB, (False, "over 25%")),
    ("auto", "cuda", GIB, ["RandomErasing"], False, 100 * GIB, (False, "RandomErasing")),
    ("auto", "cuda", GIB, [], True, 100 * GIB, (False, "feature cache")),
    ("true", "cpu", 30 * GIB, [], False, 100 * GIB, (True, "on: 30.00 GiB")),
    ("true", "cpu", 90 * GIB, [], False, 100 * GIB, "need 90.00 GiB, more than 80% of the 100.0 GiB"),
    ("true", "cuda", GIB, ["data.color_jitter"], False, 100 * GIB, "cannot run data.color_jitter"),
]


@pytest.mark.parametrize("mode,device,need,unsupported,cache,free,expected", DECIDE)
def test_decide_policy(monkeypatch, mode, device, need, unsupported, cache, free, expected):
    monkeypatch.setattr(preload, "available_bytes", lambda: free)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    args = (mode, torch.device(device), need, unsupported, cache)
    if isinstance(expected, str):
        with pytest.raises(UserError, match=expected.replace("(", r"\(")):
            preload.decide(*args)
        return
    use, note = preload.decide(*args)
    assert use == expected[0] and expected[1] in note


def test_each_local_process_counts_its_copy(monkeypatch):
    monkeypatch.setattr(preload, "available_bytes", lambda: 10 * GIB)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(UserError, match=r"need 12.00 GiB \(4 processes\)"):
        preload.decide("true", torch.device("cpu"), 3 * GIB, [], False)


def test_color_jitter_is_refused_with_preload_true(built):
    r, bundle, dc, _, _ = built
    cfg = recipes.from_dict({**QUICK, "data": {**QUICK["data"], "color_jitter": 0.4}}).data
    with pytest.raises(UserError, match="cannot run data.color_jitter"):
        preload.make_loaders(bundle, cfg, dc, transforms.build(cfg, dc), (16, 32), 0, torch.device("cpu"))


@pytest.mark.parametrize("value,expected", [(True, "true"), (False, "false"), ("auto", "auto"), ("sometimes", None)])
def test_preload_key_takes_yaml_booleans_and_refuses_other_values(value, expected):
    if expected is None:
        with pytest.raises(UserError, match=r"data.preload: must be one of \['auto', 'true', 'false'\]"):
            recipes.from_dict({"data": {"preload": value}})
        return
    assert recipes.from_dict({"data": {"preload": value}}).data.preload == expected
