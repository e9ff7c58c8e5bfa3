"""The run folder under hostile input (issue 17): nothing that is not ours is ever deleted, one process per
folder, damaged files are one `error:` line naming the file, and training survives awkward data shapes."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
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
from filelock import FileLock

from partial_ft import cache, loaders, signals, train
from partial_ft.errors import UserError
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


def _other_files(home: Path) -> None:
    (home / "src").mkdir(parents=True)
    (home / "src" / "main.py").write_text("print('mine')\n")
    (home / "summary.json").write_text("{}\n")  # even a file with one of our names


def _pre_marker(home: Path) -> None:
    """What an older partial_ft counted as a run (recipe.yaml + plan.txt), beside the user's own logs/."""
    (home / "logs").mkdir(parents=True)
    (home / "logs" / "notes.txt").write_text("mine\n")
    for name in ("recipe.yaml", "plan.txt", "README.md"):
        (home / name).write_text(f"my {name}\n")


def _marker(text: str):
    def make(home: Path) -> None:
        _pre_marker(home)
        (home / ".partial_ft-run").write_text(text)
    return make


FOREIGN = {"other-files": _other_files, "pre-marker-recipe-and-plan": _pre_marker, "empty-marker": _marker(""),
           "foreign-marker": _marker("a partial_ft run folder\n"),
           "marker-naming-other-files": _marker(json.dumps({"partial_ft": "0.1.0", "run_id": "x", "created": "now",
                                                            "files": ["logs", "../elsewhere"]}))}


@pytest.mark.parametrize("how", [[], ["--overwrite"], ["--resume"]])
@pytest.mark.parametrize("folder", FOREIGN)
def test_a_folder_of_other_files_is_never_touched(tmp_path, capsys, how, folder):
    """output.dir pointing at a folder of the user's (today: the repository with output.dir=.); only a valid
    marker partial_ft wrote makes a run folder."""
    home = tmp_path / "project"
    FOREIGN[folder](home)
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


def _link_checkpoints(run: Path, user: Path) -> None:
    shutil.rmtree(run / "checkpoints", ignore_errors=True)
    (run / "checkpoints").symlink_to(user, target_is_directory=True)


def _link_delta(run: Path, user: Path) -> None:
    (run / "delta.safetensors").unlink(missing_ok=True)
    (run / "delta.safetensors").symlink_to(user / "step-00000001-epoch-0-batch-1" / "weights.bin")


def _unlisted_logs(run: Path, user: Path) -> None:
    (run / "logs").mkdir()  # the run had no trackers: logs/ is the user's
    (run / "logs" / "mine.txt").write_text("mine\n")


@pytest.mark.parametrize("change, which, how, message", [
    (_link_checkpoints, "finished", "--overwrite", "checkpoints is a symbolic link"),
    (_link_checkpoints, "stopped", "--overwrite", "checkpoints is a symbolic link"),
    (_link_checkpoints, "stopped", "--resume", "checkpoints is a symbolic link"),
    (_link_delta, "finished", "--overwrite", "delta.safetensors is a symbolic link"),
    (_unlisted_logs, "finished", "--overwrite", "holds logs, which its run did not write"),
    (_unlisted_logs, "stopped", "--overwrite", "holds logs, which its run did not write"),
], ids=["checkpoints-link-finished", "checkpoints-link-stopped", "checkpoints-link-resume", "delta-link",
        "unlisted-logs-finished", "unlisted-logs-stopped"])
def test_overwrite_and_resume_never_reach_through_links_or_into_unlisted_files(tmp_path, capsys, finished, stopped,
                                                                               change, message, which, how):
    """A run path that is a link is refused (today pruning deleted the link target's folders, and --overwrite
    was a traceback); a run name the run never wrote is the user's."""
    user = tmp_path / "user"
    (user / "step-00000001-epoch-0-batch-1").mkdir(parents=True)
    (user / "step-00000001-epoch-0-batch-1" / "weights.bin").write_bytes(b"the user's")
    (user / "notes").mkdir()
    run, recipe = tmp_path / "run", stopped[0]
    shutil.copytree(finished if which == "finished" else stopped[1], run)
    change(run, user)
    before, mine = _tree(run), _tree(user)
    err = _fails(["--recipe", str(recipe), f"output.dir={run}", how], capsys)
    assert message in err
    assert _tree(run) == before and _tree(user) == mine


def _no_space(monkeypatch) -> None:
    """The delta's write runs out of space half way (as a full disk does)."""
    from partial_ft import delta

    def half_then_full(state, path, metadata=None):
        Path(path).write_bytes(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(delta, "save_file", half_then_full)


def _crash_in_training(monkeypatch) -> None:
    def crash(loop, p):
        raise UserError("the data went away")

    monkeypatch.setattr(train, "end_of_epoch", crash)


@pytest.mark.parametrize("fault, message", [(_no_space, "cannot write"), (_crash_in_training, "the data went away")],
                         ids=["no-space-for-the-delta", "failure-while-training"])
def test_overwrite_keeps_the_old_run_until_the_new_one_finished(tmp_path, capsys, monkeypatch, finished, fault, message):
    """Today, on a full disk, the new run crashed after the old delta and summary were gone."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "my_notes.txt").write_text("keep me\n")
    before = _tree(run)
    fault(monkeypatch)
    err = _fails(["--recipe", str(_recipe(tmp_path, "again", output={"dir": str(run)})), "--overwrite"], capsys)
    assert message in err and (message != "cannot write" or "delta.safetensors" in err)
    assert _tree(run) == before  # the old run back byte for byte, nothing of the new one, no lock


class _Signalled(Exception):
    pass


def _plot_then(what):
    """Wrap the curve's plot: SIGTERM arrives while it runs, or the disk is full when it writes."""
    from partial_ft import curves
    real = curves.plot

    def plot(*args, **kwargs):
        if what == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
            return real(*args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")
    return curves, "plot", plot


@pytest.mark.parametrize("what", ["sigterm", "no-space"])
def test_a_run_finishes_as_one_step(tmp_path, capsys, monkeypatch, what):
    """SIGTERM while finishing waits until the run is finished (delta, curve, card, no checkpoints, no lock,
    summary.json last); a failure while finishing leaves no finished mark and its checkpoint, so --resume
    finishes it. Today summary.json came first: SIGTERM left no curve, two checkpoints and a stale lock."""
    recipe, run = _recipe(tmp_path, "fin"), tmp_path / "runs" / "fin"
    seen = {}

    def on_sigterm(signum, frame):
        seen["at signal"] = sorted(p.name for p in run.iterdir())
        raise _Signalled()

    monkeypatch.setattr(*_plot_then(what))
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        if what == "sigterm":
            with pytest.raises(_Signalled):
                main(["--recipe", str(recipe)])
            assert seen["at signal"] == sorted(RUN_FILES)
            return
        err = _fails(["--recipe", str(recipe)], capsys)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert "cannot write" in err and "training_curve.png" in err
    assert not (run / "summary.json").exists() and (run / "checkpoints" / "latest").is_file()
    monkeypatch.undo()
    assert main(["--recipe", str(recipe), "--resume"]) == 0
    assert sorted(p.name for p in run.iterdir()) == sorted(RUN_FILES)


RUN_FILES = {".partial_ft-run", "recipe.yaml", "plan.txt", "strategy.json", "data.json", "metrics.jsonl",
             "summary.json", "delta.safetensors", "README.md", "training_curve.png"}


@pytest.mark.parametrize("target, message", [
    (lambda run: run / "delta.safetensors", "is an input being read"),
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


def _lock_folder(lock: Path) -> None:
    lock.mkdir()


def _lock_link(lock: Path) -> None:
    lock.symlink_to(lock.parent / "recipe.yaml")


def _absurd_pid(lock: Path) -> None:
    lock.write_text(json.dumps({"pid": 10**30, "host": socket.gethostname(), "started": "x" * 5000}))


@pytest.mark.parametrize("make, held, message", [
    (_lock_folder, False, "is a folder, not a lock file"),
    (_lock_link, False, "is a symbolic link"),
    (_absurd_pid, True, "is in use by process 1000000000000000000000000000000 on"),
    (_absurd_pid, False, None),  # its content decides nothing: nobody holds it, so the resume runs
], ids=["folder", "link", "absurd-pid-held", "absurd-pid-free"])
def test_a_lock_that_is_not_a_lock_file_is_one_error_line(tmp_path, capsys, stopped, make, held, message):
    recipe, run_dir = stopped
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    make(copy / LOCK)
    holder = FileLock(copy / LOCK, timeout=0) if held else None
    if holder:
        holder.acquire()
    try:
        argv = ["--recipe", str(recipe), f"output.dir={copy}", "--resume"]
        if message is None:
            assert main(argv) == 0 and (copy / "summary.json").is_file() and not (copy / LOCK).exists()
            return
        before = _tree(copy)
        assert message in _fails(argv, capsys)
        assert _tree(copy) == before
    finally:
        if holder:
            holder.release()


def _take(run_dir: str, barrier, results) -> None:
    from partial_ft.runlock import RunLock

    lock = RunLock(Path(run_dir))
    barrier.wait()
    try:
        lock.acquire()
        results.put("took")
    except UserError:
        results.put("refused")
    barrier.wait()  # everyone has tried before the winner lets go
    lock.release()


def test_a_dead_runs_lock_is_taken_by_exactly_one_of_three(tmp_path):
    """Today three processes took one dead lock at once in 15 of 100 tries."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    for attempt in range(10):
        run_dir = tmp_path / str(attempt)
        run_dir.mkdir()
        (run_dir / LOCK).write_text(json.dumps({"pid": 2**22 + 1, "host": socket.gethostname()}))  # dead
        barrier, results = ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=_take, args=(str(run_dir), barrier, results)) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert sorted(results.get(timeout=5) for _ in procs) == ["refused", "refused", "took"]


def test_output_dir_expands_the_home_folder(tmp_path, monkeypatch):
    from partial_ft import recipe as recipes

    monkeypatch.setenv("HOME", str(tmp_path))
    recipe = recipes.load(_recipe(tmp_path, "home"), ["output.dir=~/runs/x"])
    assert recipe.run_dir == tmp_path / "runs" / "x"


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


def _damage_metrics(run: Path) -> str:
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n\x00garbage\n')
    return "metrics.jsonl is damaged (line 2"


@pytest.mark.parametrize("damage", [_damage_recipe_empty, _damage_recipe_invalid, _damage_train_state,
                                    _damage_tensors, _damage_optimizer, _damage_metrics],
                         ids=["recipe-empty", "recipe-invalid", "train-state", "truncated-tensors", "optimizer-pickle",
                              "metrics-garbage"])
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


def test_a_full_disk_at_resume_keeps_the_checkpoint(tmp_path, capsys, monkeypatch, stopped):
    """ENOSPC when the resumed run first writes: one line naming the file, the stopped run as it was."""
    recipe, run_dir = stopped
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    before = _tree(copy)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    err = _fails(["--recipe", str(recipe), f"output.dir={copy}", "--resume"], capsys)
    assert f"cannot write {copy}/" in err and "No space left on device" in err
    assert _tree(copy) == before
