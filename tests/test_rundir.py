"""The run folder under hostile input (issue 17): nothing that is not ours is ever deleted, one process per
folder, damaged files are one `error:` line naming the file, and training survives awkward data shapes."""
from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY, run_cli, write_recipe
from datasets import Dataset, Image

from partial_ft import cache, loaders, signals, train
from partial_ft.__main__ import main
from partial_ft.rundir import LOCK

SMALL = {**TINY, "data": {**TINY["data"], "max_train_samples": 64, "max_val_samples": 32},
         "train": {**TINY["train"], "max_steps": None, "epochs": 2, "batch_size": 32, "checkpoint_every": None}}


def _tree(folder: Path) -> dict[str, str]:
    """Every file below `folder` with the sha256 of its bytes."""
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


def _recipe(tmp_path: Path, name: str, **sections) -> Path:
    recipe = {k: dict(v) if isinstance(v, dict) else v for k, v in SMALL.items()}
    for section, value in sections.items():
        recipe[section] = {**recipe.get(section, {}), **value}
    recipe.setdefault("output", {}).setdefault("dir", str(tmp_path / "runs" / name))
    return write_recipe(tmp_path / f"{name}.yaml", recipe)


def _fails(argv: list[str], capsys) -> str:
    """Run the CLI in-process; it must fail with one `error:` line and exit 2. Returns that line."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err[-2000:]
    return err


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One finished tiny run, copied by the tests that need one."""
    tmp = tmp_path_factory.mktemp("finished")
    assert main(["--recipe", str(_recipe(tmp, "done"))]) == 0
    return tmp / "runs" / "done"


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> tuple[Path, Path]:
    """A run that died in its second epoch, after its first epoch's checkpoint: (recipe, run folder)."""
    tmp = tmp_path_factory.mktemp("stopped")
    recipe = _recipe(tmp, "stopped")
    mp = pytest.MonkeyPatch()
    real = train.end_of_epoch

    def die_in_epoch_2(loop, p):
        if p.epoch == 1:
            raise RuntimeError("power cut")
        real(loop, p)

    mp.setattr(train, "end_of_epoch", die_in_epoch_2)
    with pytest.raises(RuntimeError, match="power cut"):
        main(["--recipe", str(recipe)])
    mp.undo()
    run_dir = tmp / "runs" / "stopped"
    assert (run_dir / "checkpoints" / "latest").is_file() and not (run_dir / LOCK).exists()
    return recipe, run_dir


# --------------------------------------------------------------------------------------------
# never delete what is not ours


@pytest.mark.parametrize("how", [[], ["--overwrite"], ["--resume"]])
def test_a_folder_of_other_files_is_never_touched(tmp_path, capsys, how):
    """output.dir pointing at a folder of the user's (today: the repository with output.dir=.)."""
    home = tmp_path / "project"
    (home / "src").mkdir(parents=True)
    (home / "src" / "main.py").write_text("print('mine')\n")
    (home / "summary.json").write_text("{}\n")  # even a file with one of our names
    before = _tree(home)
    err = _fails(["--recipe", str(_recipe(tmp_path, "r", output={"dir": str(home)})), *how], capsys)
    assert "is not a partial_ft run folder" in err
    assert _tree(home) == before


def test_overwrite_removes_only_the_runs_own_files(tmp_path, finished):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    (run_dir / "my_notes.txt").write_text("keep me\n")
    assert main(["--recipe", str(_recipe(tmp_path, "again", output={"dir": str(run_dir)})), "--overwrite"]) == 0
    assert (run_dir / "my_notes.txt").read_text() == "keep me\n"
    assert (run_dir / "delta.safetensors").is_file() and not (run_dir / LOCK).exists()


@pytest.mark.parametrize("target, message", [
    (lambda run: run / "delta.safetensors", "is the run's own delta"),
    (lambda run: run, "is a folder"),
    (lambda run: run / "plan.txt" / "x.safetensors", "is a file, not a folder"),
    (lambda run: Path("/proc/partial_ft-test/x.safetensors"), "is not writable"),
], ids=["own-delta", "folder", "below-a-file", "read-only"])
def test_export_refuses_bad_targets_and_replaces_nothing(tmp_path, capsys, finished, target, message):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    before = _tree(run_dir)
    err = _fails(["export", str(run_dir), "--out", str(target(run_dir))], capsys)
    assert message in err and "Traceback" not in err
    assert _tree(run_dir) == before  # the delta byte for byte, and no temporary file left behind


# --------------------------------------------------------------------------------------------
# one process per run folder


# the real CLI, whose first batch waits until the test creates a file: the run holds its folder until then
HELD_CLI = """
import sys, time
from pathlib import Path
import partial_ft.loaders as loaders
release, collate = Path(sys.argv[1]), loaders.collate
def held(batch):
    while not release.exists():
        time.sleep(0.05)
    return collate(batch)
loaders.collate = held
from partial_ft.__main__ import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_second_process_is_refused_while_the_first_trains(tmp_path):
    """Two real processes on one folder: the second (start, overwrite or resume) is refused naming the
    first; the first finishes with one metrics line per epoch (none duplicated) and its delta."""
    recipe = _recipe(tmp_path, "shared", train={"epochs": 3})
    run_dir, release = tmp_path / "runs" / "shared", tmp_path / "release"
    first = subprocess.Popen([sys.executable, "-c", HELD_CLI, str(release), "--recipe", str(recipe)],
                             env={**os.environ, "ACCELERATE_USE_CPU": "true"}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not (run_dir / LOCK).is_file():
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.1)
        owner = json.loads((run_dir / LOCK).read_text())
        for how in ([], ["--overwrite"], ["--resume"]):
            second = run_cli("--recipe", str(recipe), *how)
            assert second.returncode == 2 and f"in use by process {owner['pid']}" in second.stderr, second.stderr
    finally:
        release.touch()
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3] and not (run_dir / LOCK).exists()


def test_a_stale_lock_is_taken_over(tmp_path, stopped):
    """A lock whose process is gone (killed outright) does not block a resume."""
    recipe, run_dir = stopped
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (copy / LOCK).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    assert main(["--recipe", str(recipe), f"output.dir={copy}", "--resume"]) == 0
    assert (copy / "summary.json").is_file() and not (copy / LOCK).exists()


# --------------------------------------------------------------------------------------------
# damaged or tampered files: one error line naming the file


def _damage_recipe_empty(run: Path) -> str:
    (run / "recipe.yaml").write_text("")
    return "recipe.yaml is damaged"


def _damage_recipe_invalid(run: Path) -> str:
    (run / "recipe.yaml").write_text("model: [unclosed\n")
    return "recipe.yaml is damaged"


def _agree(folder: Path, name: str) -> None:
    """Make the checkpoint's manifest describe `name` as it is now: the damage gets past the manifest check
    (test_resume_checks.py covers that one) to the checks behind it."""
    manifest = json.loads((folder / "manifest.json").read_text())
    data = (folder / name).read_bytes()
    manifest[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _damage_train_state(run: Path) -> str:
    folder = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    (folder / "train_state.json").write_text("{not json")
    _agree(folder, "train_state.json")
    return "train_state.json is damaged"


def _damage_tensors(run: Path) -> str:
    folder = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    model = folder / "model.safetensors"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    _agree(folder, "model.safetensors")
    return "cannot be restored"


def _damage_optimizer(run: Path) -> str:
    folder = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    torch.save({"state": {}, "param_groups": [], "extra": Path("x")}, folder / "optimizer.bin")
    _agree(folder, "optimizer.bin")
    return "cannot be restored"


@pytest.mark.parametrize("damage", [_damage_recipe_empty, _damage_recipe_invalid, _damage_train_state,
                                    _damage_tensors, _damage_optimizer],
                         ids=["recipe-empty", "recipe-invalid", "train-state", "truncated-tensors", "optimizer-pickle"])
def test_resuming_a_damaged_run_is_one_error_line(tmp_path, capsys, stopped, damage):
    recipe, run_dir = stopped
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    message = damage(copy)
    err = _fails(["--recipe", str(recipe), f"output.dir={copy}", "--resume"], capsys)
    assert message in err and "weights_only=False" not in err and "Traceback" not in err


def _delta_meta(run: Path, change) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = run / "delta.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    change(meta)
    save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop("seed"), "metadata 'seed' is missing"),
    (lambda m: m.update(class_names='"ten"'), "metadata 'class_names' is missing or not a list"),
    (lambda m: m.update(model='{"name": "test_resnet", "colour": 1}'), "metadata 'model' is not a model section"),
], ids=["missing-field", "ill-typed-field", "unknown-model-key"])
@pytest.mark.parametrize("command", ["eval", "export"])
def test_tampered_delta_metadata_is_one_error_line(tmp_path, capsys, finished, change, message, command):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    _delta_meta(run_dir, change)
    argv = [command, str(run_dir)] + (["--out", str(tmp_path / "x.safetensors")] if command == "export" else [])
    assert message in _fails(argv, capsys)


def test_eval_of_a_run_with_a_damaged_recipe_names_the_file(tmp_path, capsys, finished):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    (run_dir / "recipe.yaml").write_text("- just\n- a list\n")
    assert "recipe.yaml is damaged" in _fails(["eval", str(run_dir)], capsys)


# --------------------------------------------------------------------------------------------
# the shape of the data


@pytest.mark.parametrize("images, batch, dropped", [(65, 32, 1), (33, 4, 1), (64, 32, 0)])
def test_a_last_batch_of_one_image_is_dropped_and_counted(tmp_path, images, batch, dropped):
    """BatchNorm cannot train on one image: 1437 digits at batch 4 (= 359 * 4 + 1) crashed after an epoch."""
    recipe = _recipe(tmp_path, "odd", data={"max_train_samples": images},
                     train={"batch_size": batch, "epochs": 1, "max_steps": None})
    assert main(["--recipe", str(recipe)]) == 0
    summary = json.loads((tmp_path / "runs" / "odd" / "summary.json").read_text())
    assert summary["dropped_images"] == dropped


def test_resuming_on_changed_data_is_refused(tmp_path, capsys, stopped):
    recipe, run_dir = stopped
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    info = json.loads((copy / "data.json").read_text())
    info["train_samples"] += 5  # as if rows were added to the dataset since
    (copy / "data.json").write_text(json.dumps(info))
    err = _fails(["--recipe", str(recipe), f"output.dir={copy}", "--resume"], capsys)
    assert "the dataset changed since the run started (train_samples" in err


def test_sigterm_during_feature_extraction_stops_within_a_batch(monkeypatch):
    """A stop request during the one-off extraction pass raises at the next batch, not at the pass's end."""
    seen = []

    class Prefix:
        def prefix(self, x):
            seen.append(len(x))
            if len(seen) == 2:
                signals._active.signum = 15  # SIGTERM arrives while the second batch runs
            return x.flatten(1)

    data = [(torch.zeros(3, 4, 4), 0) for _ in range(40)]
    with signals.stop_on_signals():
        with pytest.raises(signals.Stopped, match="during feature extraction"):
            cache.extract(Prefix(), torch.nn.Identity(), data, 4, 0, torch.device("cpu"),
                          contextlib.nullcontext, (3, 4, 4))
    assert seen == [1, 4]  # the shape probe, then one batch of the ten: the second never starts



def test_an_unreadable_image_file_is_named_by_its_path(tmp_path):
    bad = tmp_path / "cat" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"not a png at all")
    hf = Dataset.from_dict({"image": [str(bad)], "label": [0]}).cast_column("image", Image())
    ds = loaders.ImageDataset(hf, "image", "label", lambda im: im, "train")
    with pytest.raises(loaders.BadImageError, match=f"cannot read image {bad} at index 0 of split"):
        ds[0]
