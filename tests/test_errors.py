"""Every user mistake, through the CLI entry point: one `error:` line on stderr, exit code 2, no traceback,
and no run folder created (or, for one that exists, changed). One table covers them all; most rows call
`partial_ft.__main__.main(argv)` in-process (the same entry point `python -m partial_ft` runs, without the
~6 s of imports per subprocess); the rows marked `subprocess` run the real command line."""
from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import pytest
import timm
from filelock import FileLock
from safetensors.torch import save_file

from conftest import bomb, run_cli
from partial_ft.__main__ import main
from partial_ft.rundir import LOCK
from partial_ft.runfiles import new_marker, register

STRATEGIES = "known: auto, bias, block, filters, full, head, lora, norm"

# id: (how the recipe is set up, argv after the recipe, what the error line must contain, via subprocess)
CASES = {
    # the recipe file itself
    "missing-file": ("missing", [], "recipe file not found", False),
    "yaml-syntax": ("bad-yaml", [], "invalid YAML at line 4", True),
    "yaml-is-code": ("code-yaml", [], "invalid YAML", False),
    # sections, keys, types and ranges (in the file, or as overrides)
    "unknown-section": ("tiny", ["trainn.epochs=3"], "unknown section 'trainn' (did you mean 'train'?)", False),
    "unknown-section-in-file": ("typo-section", [], "unknown recipe section 'trian' (did you mean 'train'?)", False),
    "unknown-key": ("tiny", ["train.epochz=3"], "unknown key 'train.epochz' (did you mean 'epochs'?)", False),
    "unknown-model-key": ("tiny", ["model.nmae=resnet18"], "unknown key 'model.nmae' (did you mean 'name'?)", False),
    "not-a-bool": ("tiny", ["model.pretrained=maybe"], "model.pretrained: expected true/false", False),
    "val-fraction-above-1": ("tiny", ["data.val_fraction=1.5"], "data.val_fraction must be in (0, 1)", False),
    "renamed-strategy-keeps-options": ("tiny", ["strategy.name=norm"], "the recipe's strategy options fraction, "
                                       "fixed belong to strategy 'filters', not to 'norm'", False),
    "renamed-list-item-keeps-options": ("block-bias", ["strategy.0.name=norm"], "strategy.0 options index belong to "
                                        "strategy 'block', not to 'norm'", False),
    "wrong-type": ("tiny", ["train.epochs=ten"], "train.epochs: expected an integer, got 'ten'", False),
    "wrong-literal": ("tiny", ["train.nan_policy=ignore"], "must be one of ['stop', 'skip_batch']", False),
    "fraction-above-1": ("tiny", ["strategy.fraction=1.5"], "strategy.fraction must be in (0, 1]", False),
    "fraction-0": ("tiny", ["strategy.fraction=0"], "strategy.fraction must be in (0, 1]", False),
    "count-0": ("tiny", ["strategy.fraction=null", "strategy.count=0"], "strategy.count must be >= 1", False),
    "lr-0": ("tiny", ["train.lr=0"], "train.lr must be > 0", False),
    "lr-negative": ("tiny", ["train.lr=-1e-3"], "train.lr must be > 0", False),
    "batch-size-0": ("tiny", ["train.batch_size=0"], "train.batch_size must be >= 1", False),
    "epochs-0": ("tiny", ["train.epochs=0"], "train.epochs must be >= 1", False),
    "unknown-optimizer": ("tiny", ["train.opt=adamz"], "train.opt 'adamz': Optimizer adamz not found", False),
    "unknown-scheduler": ("tiny", ["train.sched=cosin"], "train.sched 'cosin': Unknown scheduler", False),
    "keep-checkpoints-0": ("tiny", ["train.keep_checkpoints=0"], "train.keep_checkpoints must be >= 1", False),
    "unknown-tracker": ("tiny", ["train.log_with=[tensorbord]"], "unknown tracker 'tensorbord' (did you mean", False),
    "tracker-not-a-list": ("tiny", ["train.log_with=tensorboard"], "train.log_with: expected a list", False),
    "override-without-equals": ("tiny", ["train.lr"], "must look like section.key=value", False),
    "override-without-section": ("tiny", ["epochs=3"], "must name section.key", False),
    # strategies
    "unknown-strategy": ("tiny", ["strategy.name=filterz"], f"unknown strategy 'filterz' (did you mean 'filters'?); "
                         f"{STRATEGIES}", False),
    "foreign-option": ("tiny", ["strategy.index=3"], "unknown option 'strategy.index' for strategy 'filters'", False),
    "block-index-outside": ("block-99", [],
                            "block index 99 is outside test_resnet's", True),
    # models
    "unknown-model": ("tiny", ["model.name=resnet181"], "unknown timm model 'resnet181' (did you mean", False),
    "missing-model-checkpoint": ("tiny", ["model.checkpoint=/no/such/weights.safetensors"],
                                 "checkpoint file not found", False),
    "checkpoint-does-not-fit": ("bad-checkpoint", [], "does not fit model 'test_resnet': missing keys conv1.0.weight",
                                False),
    # offline, with an empty Hugging Face cache (a subprocess: the hub reads its cache folder at import)
    "pretrained-offline-uncached": ("tiny", ["model.pretrained=true"], "cannot load pretrained weights for "
                                    "'test_resnet': not in the local Hugging Face cache",
                                    {"HF_HOME": "{t}/hf", "HF_HUB_CACHE": "{t}/hf/hub"}),
    # data
    "dataset-path-missing": ("tiny", ["data.dataset=/no/such/folder"], "dataset path does not exist", False),
    "dataset-not-on-hub": ("tiny", ["data.dataset=nobody-xyz/no-such-dataset"], "cannot load dataset", False),
    # (every data.load mistake, in-process: test_data.py's table; here, that one reaches the CLI as a line)
    "unknown-split": ("tiny", ["data.train_split=trian"], "split 'trian' not found", False),
    "unknown-column": ("tiny", ["data.image_column=pixels"], "data.image_column 'pixels' not found", False),
    # the output path
    "output-is-a-file": ("output-file", [], "is a file, not a folder", False),
    "output-not-writable": ("output-unwritable", [], "is not writable", False),
    # a folder that holds a run: refused, and a mistake found later never touches it, even with --overwrite
    "existing-run-refused": ("existing", [], "already holds a run that finished; pass --overwrite", False),
    "existing-run-kept-on-mistake": ("existing", ["--overwrite", "data.train_split=trian"], "split 'trian' not found",
                                     False),
    "resume-with-another-recipe": ("stopped", ["--resume", "train.lr=0.1"], "cannot resume", False),
    # never replace what partial_ft did not write (issue 17): a folder of other files, with or without --overwrite
    "foreign-folder-refused": ("foreign", [], "is not a partial_ft run folder", False),
    "foreign-folder-overwrite-refused": ("foreign", ["--overwrite"], "is not a partial_ft run folder", False),
    "busy-folder-refused": ("busy", [], "is in use by process", False),
    "busy-folder-overwrite-refused": ("busy", ["--overwrite"], "is in use by process", False),
    # recipe values timm / torchvision would reject only once images flow: refused before any writing
    "input-size-0": ("tiny", ["data.input_size=0"], "data.input_size must be a positive integer", False),
    "input-size-negative": ("tiny", ["data.input_size=[-4,32]"], "data.input_size must be a positive integer", False),
    "input-size-length-4": ("tiny", ["data.input_size=[3,3,32,32]"], "data.input_size must be a positive integer", False),
    "input-size-channels": ("tiny", ["data.input_size=[1,32,32]"], "data.input_size has 1 channels, the model takes 3",
                            False),
    "std-zero": ("tiny", ["data.std=[0.5,0,0.5]"], "data.std must be > 0", False),
    "mean-two-values": ("tiny", ["data.mean=[0.5,0.5]"], "data.mean must have 1 or 3 values", False),
    "interpolation-unknown": ("tiny", ["data.interpolation=cubic"], "the image transforms cannot be built", False),
    "auto-augment-unknown": ("tiny", ["data.augment=true", "data.auto_augment=nonsense"],
                             "the image transforms cannot be built", False),
    "crop-pct-negative": ("tiny", ["data.crop_pct=-0.5"], "data.crop_pct must be in (0, 1]", False),
    "crop-pct-0": ("tiny", ["data.crop_pct=0"], "data.crop_pct must be in (0, 1]", False),
    "color-jitter-negative": ("tiny", ["data.color_jitter=-0.1"], "data.color_jitter must be >= 0", False),
    "ratio-degenerate": ("tiny", ["data.ratio=[2.0,0.5]"], "data.ratio must be [min, max] with 0 < min <= max", False),
    "scale-above-1": ("tiny", ["data.scale=[0.5,2.0]"], "data.scale must be [min, max] with 0 < min <= max <= 1",
                      False),
    "seed-negative": ("tiny", ["train.seed=-1"], "train.seed must be in [0, 2**32)", False),
    "seed-too-large": ("tiny", ["train.seed=4294967296"], "train.seed must be in [0, 2**32)", False),
    "model-kwargs-unknown": ("tiny", ["model.kwargs={no_such_arg: 1}"], "model.kwargs not accepted by test_resnet",
                             False),
    "pretrained-tag-unknown": ("tiny", ["model.name=test_resnet.no_such_tag"], "Invalid pretrained tag", False),
    "vit-cannot-patch": ("head", ["model.name=test_vit", "data.input_size=30"],
                         "model 'test_vit' cannot run on data.input_size [3, 30, 30]", False),
    "recipe-not-utf8": ("latin1", [], "not UTF-8 text", False),
    # silent surprises that are errors now
    "strategies-disagree-on-fixed": ("disagree", [], "the composed strategies disagree on 'fixed'", False),
    "block-index-empty": ("block-empty", [], "an empty list selects no block", False),
    "override-after-overwrite-still-read": ("existing", ["--overwrite", "train.trian=1"],
                                            "unknown key 'train.trian'", False),
    # issue 21.9: bombs, duplicate keys, huge values (the error line is cut: see the length assertion)
    "yaml-bomb-in-file": ("bomb-yaml", [], "refused as a YAML bomb", False),
    "yaml-bomb-override": ("tiny", ["train.log_with=" + bomb(9, flow=True)],
                           "override 'train.log_with': anchors and aliases expand to 490,329,055 values", False),
    "yaml-duplicate-key": ("dup-yaml", [], "duplicate key 'lr' (first at line 3) at line 4", False),
    "huge-value-cut": ("tiny", ["train.epochs=" + "x" * 5_000_000],
                       "train.epochs: expected an integer, got 'xxxxxxxxxx", False),
    "huge-name-cut": ("tiny", ["train.opt=" + "x" * 5_000_000], "train.opt 'xxxxxxxxxx", False),
    # issue 21.8: no float key takes NaN or infinity
    "lr-inf": ("tiny", ["train.lr=.inf"], "train.lr: must be a finite number, got inf", False),
    "lr-1e999": ("tiny", ["train.lr=1e999"], "train.lr: must be a finite number, got '1e999'", False),
    "std-inf": ("tiny", ["data.std=[.inf,.inf,.inf]"], "data.std: must be a finite number, got inf", False),
    "min-lr-nan": ("tiny", ["train.min_lr=.nan"], "train.min_lr: must be a finite number, got nan", False),
    "mean-nan": ("tiny", ["data.mean=[.nan,0.5,0.5]"], "data.mean: must be a finite number, got nan", False),
    "fraction-nan": ("tiny", ["strategy.fraction=.nan"], "strategy.fraction: must be a finite number", False),
    "num-workers-beyond-the-machine": ("tiny", ["data.num_workers=100000"],
                                       "data.num_workers 100,000 is more than this machine can use: at most", False),
    # test_resnet's first conv is 3 -> 16 channels (3x3): its updates have rank at most min(16, 27) = 16
    "lora-rank-above-a-layer": ("lora-17", [], "strategy.rank 17 is above the size of layer 'conv1.0' (its weight "
                                "updates have rank at most 16)", False),
    "clip-grad-inf": ("tiny", ["train.clip_grad=.inf"], "train.clip_grad: must be a finite number", False),
}


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else "dir"
            for f in sorted(folder.rglob("*"))}


def _setup(kind: str, tiny_recipe, tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """Returns (recipe file, the run folder it would use, extra overrides)."""
    run_dir = tmp_path / "runs" / "mistake"
    if kind == "missing":
        return tmp_path / "nope.yaml", run_dir, []
    if kind == "latin1":
        path = tmp_path / "latin1.yaml"
        path.write_bytes("model: {name: test_resnet}\n# caf\xe9\n".encode("latin-1"))
        return path, run_dir, []
    if kind in ("bad-yaml", "code-yaml", "typo-section", "bomb-yaml", "dup-yaml"):
        text = {"bomb-yaml": f"output: {{dir: {run_dir}}}\n" + bomb(9),
                "dup-yaml": f"output: {{dir: {run_dir}}}\ntrain:\n  lr: 0.1\n  lr: 0.2\n","bad-yaml": f"output: {{dir: {run_dir}}}\ntrain:\n  epochs: 3\n   lr: 0.1\n",
                "code-yaml": "model: !!python/object/apply:os.system ['echo owned > /tmp/owned']\n",
                "typo-section": f"trian: {{epochs: 3}}\noutput: {{dir: {run_dir}}}\n"}[kind]
        path = tmp_path / "mistake.yaml"
        path.write_text(text)
        return path, run_dir, []
    data = {}
    strategy = {"block-bias": [{"name": "block", "index": "last"}, {"name": "bias"}],"block-99": {"name": "block", "index": 99}, "lora-17": {"name": "lora", "rank": 17},
                "block-empty": {"name": "block", "index": []},
                "head": {"name": "head"},
                "disagree": [{"name": "filters", "fraction": 0.25, "fixed": "zero"},
                             {"name": "filters", "fraction": 0.25, "dim": "in", "fixed": "random"}]}.get(kind)
    recipe, extra = tiny_recipe("mistake", data=data, **({"strategy": strategy} if strategy else {})), []
    if kind == "bad-checkpoint":  # another architecture's weights
        weights = tmp_path / "effnet.safetensors"
        save_file(timm.create_model("test_efficientnet").state_dict(), str(weights))
        extra = [f"model.checkpoint={weights}"]
    if kind == "output-file":
        run_dir = tmp_path / "a-file"
        run_dir.write_text("not a folder\n")
        extra = [f"output.dir={run_dir}"]
    elif kind == "output-unwritable":  # /proc refuses new files even to root (chmod would not stop root)
        run_dir = Path("/proc/partial_ft-test/run")
        extra = [f"output.dir={run_dir}"]
    if kind in ("foreign", "busy"):
        run_dir.mkdir(parents=True)
        (run_dir / "notes.txt").write_text("the user's own notes\n")
    if kind == "busy":  # a live holder (another open file description, as another process has) holds the folder
        new_marker(run_dir)
        (run_dir / LOCK).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": "now"}))
        HELD.append(FileLock(run_dir / LOCK, timeout=0))
        HELD[-1].acquire()
    if kind in ("existing", "stopped"):
        run_dir.mkdir(parents=True)
        new_marker(run_dir)
        register(run_dir, ["recipe.yaml", "metrics.jsonl", "summary.json"])
        (run_dir / "recipe.yaml").write_text(recipe.read_text())
        (run_dir / "metrics.jsonl").write_text('{"epoch": 1}\n')
        if kind == "existing":
            (run_dir / "summary.json").write_text('{"val_top1": 0.5}\n')
    return recipe, run_dir, extra


HELD: list[FileLock] = []  # locks a row holds while it runs


@pytest.fixture(autouse=True)
def _release_held():
    yield
    while HELD:
        HELD.pop().release()


@pytest.mark.parametrize("case", CASES)
def test_every_user_mistake_is_one_error_line_exit_2_and_no_run_folder(case, tiny_recipe, tmp_path, capsys):
    kind, args, message, via_subprocess = CASES[case]
    recipe, run_dir, extra = _setup(kind, tiny_recipe, tmp_path)
    before = _snapshot(run_dir) if run_dir.is_dir() else None
    file_before = run_dir.read_bytes() if run_dir.is_file() else None
    argv = ["--recipe", str(recipe), *extra, *args]
    if via_subprocess:  # True, or the environment to run it in ({t}: this test's tmp_path)
        env = {k: v.format(t=tmp_path) for k, v in via_subprocess.items()} if isinstance(via_subprocess, dict) else {}
        p = run_cli(*argv, env=env)
        code, err = p.returncode, p.stderr
    else:
        with pytest.raises(SystemExit) as e:
            main(argv)
        code, err = e.value.code, capsys.readouterr().err
    assert code == 2, err[-3000:]
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err[-3000:]
    assert len(err) < 1100, err[:3000]  # readable: a huge value is cut
    assert message in err and "Traceback" not in err
    if before is not None:
        assert _snapshot(run_dir) == before  # not one file added, removed or changed
    elif file_before is not None:
        assert run_dir.read_bytes() == file_before
    else:
        assert not run_dir.exists() and not (tmp_path / "runs").exists()
    assert not list(tmp_path.glob(".partial_ft-probe-*"))
