"""Checkpoints: a crash mid-checkpoint leaves the previous one in charge, nothing is unpickled; a run
writes a delta and no checkpoints; eval equals the run's summary; exports load into bare timm; runs
resume exactly after SIGKILL and SIGTERM. (Deltas without training: test_delta.py.)"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from conftest import TINY, write_recipe
from partial_ft import load_delta, merged_state_dict
from partial_ft import recipe as recipes
from partial_ft import train
from partial_ft.__main__ import main
from partial_ft.checkpoints import latest
from partial_ft.checkpoints import load as load_checkpoint
from partial_ft.checkpoints import save as save_checkpoint
from partial_ft.rundir import MARKER, PREVIOUS, RunFolder
from partial_ft.runfiles import register
from partial_ft.errors import UserError

TIMING_KEYS = {"train_seconds", "feature_extract_seconds", "train_images_per_second", "peak_memory_bytes",
               "delta_bytes"}


# --------------------------------------------------------------------------------------------
# checkpoints without training (deltas: test_delta.py)


class _FakeAccelerator:
    """Just what save_checkpoint uses; save_state writes a model file, or dies half-way."""

    is_main_process = True
    crash = False

    def wait_for_everyone(self):
        pass

    def save_state(self, folder):
        (Path(folder) / "model.safetensors").write_bytes(b"partial" if self.crash else b"complete")
        if self.crash:
            raise self.crash


@pytest.mark.parametrize("crash, raised, message", [
    (OSError("disk full"), OSError, "disk full"),  # an unknown failure: as it came
    (OSError(errno.ENOSPC, "No space left on device"), UserError,  # a full disk: one line naming both
     r"cannot write checkpoint .*step-00000006.*: No space left on device; the last one, .*step-00000003.*, is kept"),
    (OSError(errno.EROFS, "Read-only file system"), UserError, "Read-only file system; the last one"),
], ids=["unknown", "no-space", "read-only"])
def test_a_crash_mid_checkpoint_leaves_the_previous_one_in_charge(tmp_path, crash, raised, message):
    acc = _FakeAccelerator()
    first = save_checkpoint(acc, tmp_path, {"step": 3, "epoch": 0, "batches": 3}, keep=1)
    assert latest(tmp_path) == first
    acc.crash = crash
    with pytest.raises(raised, match=message):
        save_checkpoint(acc, tmp_path, {"step": 6, "epoch": 0, "batches": 6})
    assert latest(tmp_path) == first and (first / "model.safetensors").read_bytes() == b"complete"
    assert json.loads((first / "train_state.json").read_text())["step"] == 3
    acc.crash = False
    second = save_checkpoint(acc, tmp_path, {"step": 6, "epoch": 0, "batches": 6}, keep=1)
    assert latest(tmp_path) == second
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", second.name]  # no leftovers


def test_checkpoints_never_unpickle(tmp_path):
    """The scheduler's state is plain JSON in train_state.json; a folder holding a pickle that Accelerate
    would load with weights_only=False (older partial_ft) is refused, not loaded."""
    (tmp_path / "custom_checkpoint_0.pkl").write_bytes(b"not loaded")
    with pytest.raises(UserError, match="older partial_ft"):
        load_checkpoint(None, tmp_path)


def test_run_folder_decisions(tmp_path):
    recipe = recipes.from_dict({**TINY, "output": {"dir": str(tmp_path / "run")}})

    def start_run_dir(recipe, **how):
        folder = RunFolder(recipe.run_dir)
        try:
            return folder.start(recipe, **how)
        finally:
            folder.release()

    assert start_run_dir(recipe, resume=True) is None and recipe.run_dir.is_dir()  # nothing to resume: start
    register(recipe.run_dir, ["recipe.yaml", "checkpoints"])  # what RunFolder does before writing them
    (recipe.run_dir / "recipe.yaml").write_text(recipe.to_yaml())
    with pytest.raises(UserError, match="already holds a run that stopped before its first checkpoint; pass --resume"):
        start_run_dir(recipe)
    assert start_run_dir(recipe, resume=True) is None  # killed before its first checkpoint: from the start
    folder = save_checkpoint(_FakeAccelerator(), recipe.run_dir, {"step": 5, "epoch": 0, "batches": 5})
    with pytest.raises(UserError, match="already holds a run stopped at step 5; pass --resume"):
        start_run_dir(recipe)
    assert start_run_dir(recipe, resume=True) == folder
    old = _tree(recipe.run_dir)
    replacing = RunFolder(recipe.run_dir)
    assert replacing.start(recipe, overwrite=True) is None
    # the old run (its listed files and marker) waits aside until the new one has finished; no lock is left
    assert sorted(p.name for p in recipe.run_dir.iterdir()) == sorted([MARKER, PREVIOUS, ".partial_ft.lock"])
    replacing.release()
    assert sorted(p.name for p in recipe.run_dir.iterdir()) == sorted([MARKER, PREVIOUS])
    assert _tree(recipe.run_dir / PREVIOUS) == old
    replacing.abandon()  # the new run failed: the old one is back, byte for byte
    assert _tree(recipe.run_dir) == old


def _tree(folder: Path) -> dict[str, str]:
    return {str(f.relative_to(folder)): f.read_bytes().hex() for f in sorted(folder.rglob("*")) if f.is_file()}


# --------------------------------------------------------------------------------------------
# whole runs: one straight run (in-process) is the reference for eval, export, and both resumes

# random augmentation on: a resumed run must draw the same augmentations as the straight one
RUN = {"train": {"epochs": 2, "max_steps": None, "checkpoint_every": 3},  # 8 batches per epoch
       "data": {"max_train_samples": 256, "max_val_samples": 60, "augment": True, "scale": [0.5, 1.0]}}
STRIP = lambda rows: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]  # noqa: E731


def _recipe(folder: Path, name: str, train: dict | None = None, **data) -> Path:
    recipe = {k: dict(v) for k, v in TINY.items()}
    for section, values in RUN.items():
        recipe[section] = {**recipe[section], **values}
    recipe["data"].update(data)
    recipe["train"].update(train or {})
    recipe["output"] = {"dir": str(folder / "runs" / name)}
    return write_recipe(folder / f"{name}.yaml", recipe)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    folder = tmp_path_factory.mktemp("straight")
    recipe = recipes.load(_recipe(folder, "straight"))
    summary = train.run(recipe)
    return recipe.run_dir, summary


def test_run_writes_a_delta_and_no_checkpoints(straight):
    run_dir, summary = straight
    assert (run_dir / "delta.safetensors").is_file() and not (run_dir / "checkpoints").exists()
    assert summary["delta_bytes"] == (run_dir / "delta.safetensors").stat().st_size
    assert summary["delta_bytes"] < summary["learned_params"] * 4 + 20_000
    assert [m["step"] for m in _metrics(run_dir)] == [8, 16]


def test_eval_equals_summary_and_export_loads_into_bare_timm(straight, tmp_path, capsys):
    run_dir, summary = straight
    assert main(["eval", str(run_dir)]) == 0
    result = json.loads((run_dir / "eval.json").read_text())
    for key in ("val_top1", "val_top5", "val_loss"):
        assert result[key] == summary[key], key  # exact: same values, same batches, same device
    assert list(result["per_class_top1"]) == [str(i) for i in range(10)] and result["val_samples"] == 60
    out = capsys.readouterr().out
    assert f"top1 {summary['val_top1']:.4f}" in out and "worst classes" in out

    assert main(["eval", str(run_dir), "--split", "validation", "--max-samples", "20"]) == 0
    assert json.loads((run_dir / "eval.json").read_text())["val_samples"] == 20

    exported = tmp_path / "export" / "model.safetensors"
    assert main(["export", str(run_dir), "--out", str(exported)]) == 0
    assert "local-dir:" in capsys.readouterr().out  # model.safetensors: timm loads its folder (config.json)
    bare = timm.create_model("test_resnet", pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(exported), num_classes=10)).eval()
    rebuilt = load_delta(run_dir)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = rebuilt(x), bare(x)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5) and torch.equal(got.argmax(1), expected.argmax(1))


def _class_folder(root: Path, per_class: int) -> Path:
    """A plain folder of class folders (root/<digit>/*.png), as a user would hand to `eval --dataset`."""
    from partial_ft.data_sources import digits

    seen: dict[int, int] = {}
    for i, row in enumerate(digits()["validation"]):
        if seen.get(row["label"], 0) < per_class:
            seen[row["label"]] = seen.get(row["label"], 0) + 1
            (root / str(row["label"])).mkdir(parents=True, exist_ok=True)
            row["image"].save(root / str(row["label"]) / f"{i:04d}.png")
    return root


@pytest.mark.parametrize("args, split, samples", [
    (["--split", "train", "--max-samples", "50"], "train", 50),  # training accuracy is a normal question
    (["--dataset", "FOLDER"], "train", 30),  # a plain folder of class folders: its one split, all of it
    (["--dataset", "FOLDER", "--split", "train"], "train", 30),
])
def test_eval_on_other_splits_writes_a_confusion_matrix(straight, tmp_path, capsys, args, split, samples):
    run_dir, _ = straight
    folder = str(_class_folder(tmp_path / "digits_folder", per_class=3))
    assert main(["eval", str(run_dir), *[folder if a == "FOLDER" else a for a in args]]) == 0
    result = json.loads((run_dir / "eval.json").read_text())
    assert (result["split"], result["val_samples"]) == (split, samples)
    matrix = result["confusion_matrix"]["matrix"]
    assert result["confusion_matrix"]["labels"] == [str(i) for i in range(10)]
    assert sum(map(sum, matrix)) == samples
    assert sum(matrix[i][i] for i in range(10)) / samples == pytest.approx(result["val_top1"])
    for i, name in enumerate(result["confusion_matrix"]["labels"]):
        if sum(matrix[i]):
            assert result["per_class_top1"][name] == pytest.approx(matrix[i][i] / sum(matrix[i]))
        else:  # no image of that class: no accuracy, rather than 0
            assert name not in result["per_class_top1"]
    assert (run_dir / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    worst = out.split("worst classes: ")[1].splitlines()[0] if "worst classes: " in out else ""
    assert all(float(item.split()[1]) < 1.0 for item in worst.split(", ") if item), worst
    assert f"wrote {run_dir / 'confusion_matrix.png'}" in out


@pytest.mark.parametrize("args, message", [
    (["--split", "nosuch"], "error: split 'nosuch' not found in digits; its splits: train, validation (--split)"),
    (["--dataset", "FOLDER", "--split", "validation"], "its splits: train (--split)"),
    (["--dataset", "/nonexistent/folder"], "error: --dataset /nonexistent/folder: dataset path does not exist"),
])
def test_eval_mistakes_name_the_flags_typed(straight, tmp_path, capsys, args, message):
    run_dir, _ = straight
    folder = str(_class_folder(tmp_path / "digits_folder", per_class=1))
    with pytest.raises(SystemExit) as e:
        main(["eval", str(run_dir), *[folder if a == "FOLDER" else a for a in args]])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_lora_run_delta_round_trips_and_exports_into_bare_timm(tiny_recipe, tmp_path, monkeypatch, capsys):
    """A trained `lora` run (PEFT adapters injected into timm) keeps only its adapters, the new head and
    the BatchNorm statistics; load_delta rebuilds the very model training ended with, eval reproduces the
    summary exactly, and the export (adapters merged into plain timm weights) predicts the same."""
    held = {}
    train_loop = train.train

    def keep_model(*args, **kwargs):  # the model the run ends with, as save_delta sees it
        summary, model = train_loop(*args, **kwargs)
        held["model"] = model
        return summary, model

    monkeypatch.setattr(train, "train", keep_model)
    recipe = recipes.load(tiny_recipe("lora", strategy={"name": "lora"}, train={"max_steps": 3, "lr": 0.01}))
    summary = train.run(recipe)
    run_dir, trained = recipe.run_dir, held["model"].eval()

    rebuilt = load_delta(run_dir)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), trained(x))
    adapters = {n: p for n, p in rebuilt.named_parameters() if ".lora_" in n}
    assert adapters and all(not p.requires_grad or ".lora_" in n or n.startswith("fc.")
                            for n, p in rebuilt.named_parameters())
    # lora_B starts at zero: the adapters did train, so the equality above depends on loading them
    assert any(p.abs().sum() > 0 for n, p in adapters.items() if ".lora_B." in n)

    # the delta: adapters + head (learned_params x 4 bytes) + BatchNorm statistics + a small header
    path = run_dir / "delta.safetensors"
    stored = load_file(str(path))
    learned = {k for k in stored if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert learned == set(adapters) | {"fc.weight", "fc.bias"}
    assert summary["learned_params"] == sum(stored[k].numel() for k in learned)
    stats = sum(v.numel() * v.element_size() for k, v in stored.items() if k not in learned)
    header = int.from_bytes(path.read_bytes()[:8], "little")
    assert path.stat().st_size == summary["delta_bytes"] == 8 + header + summary["learned_params"] * 4 + stats
    assert header < 4096 + 200 * len(stored)
    full_bytes = sum(v.numel() * 4 for v in merged_state_dict(trained).values())
    assert summary["delta_bytes"] < 0.2 * full_bytes

    assert main(["eval", str(run_dir)]) == 0
    result = json.loads((run_dir / "eval.json").read_text())
    for key in ("val_top1", "val_top5", "val_loss"):
        assert result[key] == summary[key], key

    exported = tmp_path / "lora.safetensors"
    assert main(["export", str(run_dir), "--out", str(exported)]) == 0
    assert not any(".lora_" in k or "base_layer" in k for k in load_file(str(exported)))
    bare = timm.create_model("test_resnet", pretrained=True,
                             pretrained_cfg_overlay={"file": str(exported), "num_classes": 10}).eval()
    with torch.no_grad():
        expected, got = trained(x), bare(x)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5) and torch.equal(got.argmax(1), expected.argmax(1))


def test_refuses_to_clobber_or_resume_a_finished_run(straight, capsys):
    run_dir, _ = straight
    path = str(run_dir.parent.parent / "straight.yaml")
    for extra, message in ([[], "already holds a run that finished; pass --overwrite"],
                           [["--resume"], "already finished: nothing to resume"],
                           [["--resume", "--overwrite"], "not allowed with argument"]):
        with pytest.raises(SystemExit) as e:
            main(["--recipe", path, *extra])
        assert e.value.code == 2 and message in capsys.readouterr().err


# a subprocess CLI run whose batches slow down (after the first checkpoint, or from the start), so a
# signal reliably lands mid-run; the code under test is unchanged. argv: the checkpoint pointer, the delay,
# whether only after a checkpoint, the function that makes batches (module:name), whether CUDA runs
# deterministic algorithms, then the CLI's arguments
SLOW_CLI = """
import importlib, sys, time
from pathlib import Path
latest, delay, after_checkpoint = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "1"
module, name = sys.argv[4].split(":")
module = importlib.import_module(module)
collate = getattr(module, name)
def slow(batch):
    if not after_checkpoint or latest.exists():
        time.sleep(delay)
    return collate(batch)
setattr(module, name, slow)
if sys.argv[5] == "1":
    import torch
    torch.use_deterministic_algorithms(True, warn_only=True)
from partial_ft.__main__ import main
sys.exit(main(sys.argv[6:]))
"""
BATCHES = {"images": "partial_ft.loaders:collate", "preloaded": "partial_ft.preload:collate_preloaded"}


def slow_cli(run_dir: Path, recipe: Path, delay: float, after_checkpoint: bool, *extra: str,
             batches: str = "images", device: str = "cpu") -> subprocess.Popen:
    """The CLI in a subprocess with slowed batches (see SLOW_CLI); on CUDA with deterministic algorithms."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "true" if device == "cpu" else "false",
           "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}  # what cuBLAS needs to be deterministic
    latest = run_dir / "checkpoints" / "latest"
    return subprocess.Popen([sys.executable, "-c", SLOW_CLI, str(latest), str(delay), str(int(after_checkpoint)),
                             BATCHES[batches], str(int(device != "cpu")), "--recipe", str(recipe), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def same_as_straight(run_dir: Path, straight, rel: float = 0.0) -> None:
    """Each epoch logged once, metrics and summary equal to the straight run's: exactly, or with `rel`
    within that relative difference (top-1 within one validation sample)."""
    straight_dir, summary = straight
    assert_same(STRIP(_metrics(run_dir)), STRIP(_metrics(straight_dir)), rel)
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert_same({k: v for k, v in resumed.items() if k not in TIMING_KEYS},
                {k: v for k, v in summary.items() if k not in TIMING_KEYS}, rel)
    assert not (run_dir / "checkpoints").exists()


def assert_same(got, expected, rel: float, where: str = "") -> None:
    """Equal plain data; floats within `rel` (relative; accuracies within one sample in 60)."""
    if not rel or not isinstance(expected, (dict, list, float)):
        assert got == expected, where
    elif isinstance(expected, dict):
        assert got.keys() == expected.keys(), where
        for k in expected:
            assert_same(got[k], expected[k], rel, f"{where}.{k}")
    elif isinstance(expected, list):
        assert len(got) == len(expected), where
        for i, (a, b) in enumerate(zip(got, expected)):
            assert_same(a, b, rel, f"{where}[{i}]")
    else:
        accuracy = "top" in where
        assert got == pytest.approx(expected, rel=rel, abs=1 / 60 + 1e-9 if accuracy else 1e-6), where


def kill_mid_epoch(run_dir: Path, recipe: Path, batches: str = "images", device: str = "cpu") -> None:
    """Run the CLI, SIGKILL it a step or two past its first checkpoint, and check what it left."""
    proc = slow_cli(run_dir, recipe, 0.6, True, batches=batches, device=device)
    wait_for(lambda: (run_dir / "checkpoints" / "latest").exists(), proc)
    time.sleep(0.7)  # a step or two past the checkpoint: that work is lost and redone
    proc.kill()
    proc.wait()
    assert not (run_dir / "summary.json").exists()
    state = json.loads(next((run_dir / "checkpoints").glob("step-*/train_state.json")).read_text())
    # mid-epoch (the workers' prefetched batches are not slowed, so it may be the step-6 checkpoint)
    assert state["epoch"] == 0 and state["step"] == state["batches"] in (3, 6)


def test_sigkill_mid_epoch_then_resume_equals_the_straight_run(straight, tmp_path):
    recipe = _recipe(tmp_path, "killed", num_workers=2)  # augmentation must not depend on the workers
    run_dir = tmp_path / "runs" / "killed"
    kill_mid_epoch(run_dir, recipe)
    with pytest.raises(SystemExit) as e:  # no silent restart over a stopped run
        main(["--recipe", str(recipe)])
    assert e.value.code == 2
    with pytest.raises(UserError, match="cannot resume .* train.lr differ"):
        train.run(recipes.load(recipe, ["train.lr=0.1"]), resume=True)
    train.run(recipes.load(recipe), resume=True)
    same_as_straight(run_dir, straight)


def test_preloaded_run_trains_and_resumes_exactly_after_sigkill(tmp_path):
    """data.preload: true (augmentation batched on the device, here the CPU): a run killed mid-epoch
    and resumed ends exactly where the straight run ends (how well it learns: the quickstart test)."""
    straight_recipe = recipes.load(_recipe(tmp_path, "straight_preloaded", preload=True))
    summary = train.run(straight_recipe)
    assert summary["preload"].startswith("on: ")
    recipe = _recipe(tmp_path, "killed_preloaded", preload=True)
    run_dir = tmp_path / "runs" / "killed_preloaded"
    kill_mid_epoch(run_dir, recipe, batches="preloaded")
    train.run(recipes.load(recipe), resume=True)
    same_as_straight(run_dir, (straight_recipe.run_dir, summary))


def test_sigterm_checkpoints_and_exits_with_how_to_resume(straight, tmp_path):
    recipe = _recipe(tmp_path, "terminated")
    run_dir = tmp_path / "runs" / "terminated"
    proc = slow_cli(run_dir, recipe, delay=0.3, after_checkpoint=False)
    wait_for(lambda: (run_dir / "plan.txt").exists(), proc)
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: interrupted by SIGTERM at step ") and "Traceback" not in err
    assert line.endswith(f"resume with: python -m partial_ft --recipe {recipe} --resume")
    step = int(line.split("at step ")[1].split(";")[0])
    assert 0 < step < 16
    pointer = (run_dir / "checkpoints" / "latest").read_text().strip()
    assert pointer.startswith(f"step-{step:08d}")
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))

    train.run(recipes.load(recipe), resume=True)
    same_as_straight(run_dir, straight)
