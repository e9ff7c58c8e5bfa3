"""On a CUDA GPU: what the CPU tests check, where CUDA kernels, autocast and memory layouts differ.

Marked `gpu` and skipped without CUDA (CI has none); tools/gpu_check.sh runs them on a lent GPU. They
reuse the CPU tests' helpers, so both check the same things:
  - sliced conv / linear against dense autograd: fp32 (TF32 off, so it is a true fp32 comparison),
    bf16 and fp16 autocast, NCHW and channels_last;
  - 30 steps per strategy family: fixed entries bit-identical, optimizer state = 2 x learned;
  - cached == uncached, compile, eval on CUDA == eval on the CPU, resume after SIGKILL == a straight run,
    preloaded batches augmented on the GPU == on the CPU, a bf16 + channels_last + preload run.
Tolerances, where CUDA and the CPU (or two CUDA runs) may differ, are relative and say why at each use.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from test_cache import CACHED, check_cached_equals_uncached
from test_checkpoint import _recipe, assert_same, kill_mid_epoch, same_as_straight, slow_cli
from test_strategies import ARCHS, CASES, SLICED, check_fixed_never_move, check_sliced_layer
from test_preload import QUICK

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CUDA = {"ACCELERATE_USE_CPU": "false"}


@pytest.fixture
def no_tf32():
    """fp32 convolutions and matmuls in full fp32 (CUDA defaults to TF32 for convolutions)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("layer,axis,index", SLICED, ids=[f"{a}-{b}-{c[0]}" for a, b, c in SLICED])
def test_sliced_layers_match_dense_autograd_on_cuda(no_tf32, layer, axis, index, dtype, channels_last):
    if channels_last and layer == "linear":
        pytest.skip("channels_last is a layout of 4-d tensors")
    check_sliced_layer(layer, axis, index, device="cuda", dtype=dtype, channels_last=channels_last)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("arch", ["test_resnet", "test_vit", "test_efficientnet"])
def test_thirty_steps_on_cuda_keep_fixed_entries_bit_identical(arch, case):
    assert arch in ARCHS
    check_fixed_never_move(arch, case, device="cuda", steps=30)


@pytest.mark.parametrize("strategy", CACHED, ids=["head", "last_block"])
def test_cached_equals_uncached_on_cuda(tiny_recipe, strategy):
    # the cache runs the prefix once over batches of another size: cuDNN may pick other kernels, so
    # losses agree to 1e-3 relative (on the CPU to 1e-4), top-1 to one sample
    check_cached_equals_uncached(tiny_recipe, strategy, rel=1e-3)


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_compile_on_cuda_trains_like_eager(tiny_recipe):
    from torch._dynamo.utils import counters

    from partial_ft import recipe as recipes
    from partial_ft import train

    strategy = {"name": "filters", "fraction": 0.25, "fixed": "random"}
    counters.clear()
    compiled = train.run(recipes.load(tiny_recipe("compiled", strategy=strategy, train={"compile": True})))
    assert counters["stats"]["unique_graphs"] >= 1  # torch.compile really ran
    eager = train.run(recipes.load(tiny_recipe("eager", strategy=strategy)))
    # inductor fuses and reorders float operations: 4 steps later the losses agree to 1e-2 relative
    assert compiled["steps"] == eager["steps"] == 4
    assert compiled["val_loss"] == pytest.approx(eager["val_loss"], rel=1e-2)


def test_eval_on_cuda_equals_eval_on_the_cpu(tiny_recipe):
    from partial_ft import recipe as recipes
    from partial_ft import train
    from partial_ft.evaluation import evaluate_run

    recipe = recipes.load(tiny_recipe("evaluated"))
    summary = train.run(recipe)
    on_cuda = evaluate_run(recipe.run_dir)
    for key in ("val_top1", "val_top5", "val_loss"):  # the same device, values and batches: exact
        assert on_cuda[key] == summary[key], key
    p = run_cli("eval", str(recipe.run_dir))  # ACCELERATE_USE_CPU=true
    assert p.returncode == 0, p.stderr[-3000:]
    on_cpu = json.loads((recipe.run_dir / "eval.json").read_text())
    # CUDA convolutions (TF32 by default) against the CPU's fp32: 1e-3 relative, top-1 within a sample
    assert_same({k: on_cpu[k] for k in ("val_top1", "val_top5", "val_loss", "val_samples")},
                {k: on_cuda[k] for k in ("val_top1", "val_top5", "val_loss", "val_samples")}, rel=1e-3)


def test_resume_on_cuda_after_sigkill_equals_a_straight_run(tmp_path):
    """On a GPU data.preload: auto preloads (augmentation on the GPU), so that is what is killed and
    resumed. Both runs use torch.use_deterministic_algorithms (warn_only) and deterministic cuBLAS, so
    they can be compared closely; an op without a deterministic CUDA kernel only warns, hence 1e-3."""
    straight_recipe = _recipe(tmp_path, "straight")
    proc = slow_cli(tmp_path / "runs" / "straight", straight_recipe, 0.0, False, device="cuda")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    straight = (tmp_path / "runs" / "straight", _summary(tmp_path / "runs" / "straight"))
    assert straight[1]["preload"].startswith("on: ")
    recipe = _recipe(tmp_path, "killed", num_workers=2)
    run_dir = tmp_path / "runs" / "killed"
    kill_mid_epoch(run_dir, recipe, batches="preloaded", device="cuda")
    proc = slow_cli(run_dir, recipe, 0.0, False, "--resume", batches="preloaded", device="cuda")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    same_as_straight(run_dir, straight, rel=1e-3)


def test_preloaded_batches_on_cuda_equal_the_cpu_ones():
    from partial_ft import data, models, preload, transforms
    from partial_ft import recipe as recipes

    r = recipes.from_dict(QUICK)
    bundle = data.load(r.data, seed=0)
    model, _ = models.build(r.model, bundle.num_classes, seed=0)
    dc = models.data_config(model, r.data)
    made = {d: preload.make_loaders(bundle, r.data, dc, transforms.build(r.data, dc), (16, 32), 0,
                                        torch.device(d)) for d in ("cpu", "cuda")}
    assert made["cuda"].train.dataset.images.is_cuda  # small data: kept on the GPU
    for kind in ("train", "val"):  # augmented on the device, and not
        for (x, y, _), (x_cuda, y_cuda, _) in zip(getattr(made["cpu"], kind), getattr(made["cuda"], kind)):
            assert x_cuda.is_cuda and torch.equal(y, y_cuda.cpu())
            # validation: the same float operations, exact; training: grid_sample's bilinear weights in
            # CUDA's float arithmetic, a few units in the last place of 0..255 values, then normalized
            assert (x - x_cuda.cpu()).abs().max() <= (1e-3 if kind == "train" else 0)


def test_bf16_channels_last_preloaded_run(tiny_recipe):
    recipe = tiny_recipe("bf16", data={"preload": True, "augment": True, "num_workers": 2},
                         train={"mixed_precision": "bf16", "channels_last": True, "epochs": 2, "max_steps": None})
    p = run_cli("--recipe", str(recipe), env=CUDA)  # bf16: its own process (Accelerate's state is global)
    assert p.returncode == 0, p.stderr[-3000:]
    s = _summary(recipe.parent / "runs" / "bf16")
    assert s["preload"].startswith("on: ") and s["steps"] == 16 and s["peak_memory_bytes"] > 0
