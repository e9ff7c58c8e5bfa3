"""--resume resumes what it says (issue 21.5): a checkpoint is restored only when every file matches the
manifest written with it, `checkpoints/latest` names a checkpoint folder inside the run, its position lies
inside the recipe's run, and the data rows are the ones the run started on. Each refusal is one `error:`
line, exit 2, with the run folder byte-for-byte unchanged."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from partial_ft import data, runfiles
from partial_ft.errors import UserError
from partial_ft.sections import DataCfg
from test_rundir import _fails, _tree, stopped  # noqa: F401 - stopped is a fixture


def _latest(run: Path) -> Path:
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()


def _point(name: str):
    def damage(run: Path) -> None:
        (run / "checkpoints" / "latest").write_text(name)
    return damage


def _truncate(name: str):
    def damage(run: Path) -> None:
        f = _latest(run) / name
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return damage


def _flip_last_byte(run: Path) -> None:
    f = _latest(run) / "model.safetensors"
    data_ = bytearray(f.read_bytes())
    data_[-1] ^= 0xFF
    f.write_bytes(bytes(data_))


def _add_file(run: Path) -> None:
    (_latest(run) / "model_1.safetensors").write_bytes(b"x")


def _drop_manifest(run: Path) -> None:
    (_latest(run) / "manifest.json").unlink()


def _state(change):
    """Edit train_state.json and its manifest entry alike (a checkpoint of another recipe's run)."""
    def damage(run: Path) -> None:
        folder = _latest(run)
        state = json.loads((folder / "train_state.json").read_text())
        change(state)
        text = json.dumps(state).encode()
        (folder / "train_state.json").write_bytes(text)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["train_state.json"] = {"size": len(text), "sha256": hashlib.sha256(text).hexdigest()}
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return damage


# id: (damage, what the error line must say). The stopped run: 2 epochs of 2 batches (64 images, batch 32),
# its checkpoint taken after epoch 1
CASES = {
    "latest-empty": (_point(""), "checkpoints/latest is empty"),
    "latest-blank-line": (_point("\n"), "checkpoints/latest is empty"),
    "latest-outside": (_point("../../elsewhere"), "names '../../elsewhere', not a checkpoint folder of"),
    "latest-absolute": (_point("/tmp"), "names '/tmp', not a checkpoint folder of"),
    "latest-dangling": (_point("step-00000099-epoch-9-batch-0"), "names step-00000099-epoch-9-batch-0, which is missing"),
    "rng-state-truncated": (_truncate("random_states_0.pkl"), "random_states_0.pkl has"),
    "model-truncated": (_truncate("model.safetensors"), "model.safetensors has"),
    "model-byte-flipped": (_flip_last_byte, "model.safetensors has other bytes than were saved"),
    "file-added": (_add_file, "model_1.safetensors was not written by the checkpoint"),
    "manifest-missing": (_drop_manifest, "has no readable manifest.json"),
    "step-past-the-end": (_state(lambda s: s.update(step=1_000_000)),
                          "is at epoch 1, batch 0, step 1000000: past the end of the recipe's run (2 epochs of 2 "
                          "batches, 4 steps)"),
    "epoch-past-the-end": (_state(lambda s: s.update(epoch=2)), "is at epoch 2, batch 0, step 2: past the end"),
    "negative-batch": (_state(lambda s: s.update(batches=-1)), "batch -1, step 2: past the end"),
    "huge-train-state": (_state(lambda s: s.update(losses=[[1, 0.5]] * 2_000_000)),  # over 16 MiB
                         "train_state.json is damaged (20,00"),  # 2M x 10 bytes + the rest
    "unknown-field": (_state(lambda s: s.update(colour=1)), "does not hold a training position (fields colour)"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_resume_that_cannot_continue_the_run_is_refused(tmp_path, capsys, stopped, case):  # noqa: F811
    damage, message = CASES[case]
    recipe, run_dir = stopped
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    damage(copy)
    before = _tree(copy)
    err = _fails(["--recipe", str(recipe), f"output.dir={copy}", "--resume"], capsys)
    assert message in err and "Traceback" not in err, err
    assert _tree(copy) == before  # nothing written, nothing restarted


def test_the_checkpoint_manifest_lists_every_file_with_its_size_and_sha256(stopped):  # noqa: F811
    folder = _latest(stopped[1])
    manifest = json.loads((folder / "manifest.json").read_text())
    files = {f.relative_to(folder).as_posix(): f for f in folder.rglob("*") if f.is_file() and f.name != "manifest.json"}
    assert set(manifest) == set(files) and {"train_state.json", "model.safetensors"} <= set(files)
    for name, f in files.items():
        assert manifest[name] == {"size": f.stat().st_size, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}


def _image_folder(root: Path) -> None:
    for label, shade in (("cat", 0), ("dog", 1)):
        (root / label).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (60 * i, 200 * shade, 0)).save(root / label / f"{i}.png")


def test_swapped_class_folders_are_changed_data(tmp_path):
    """Same file names, counts and class names: only which image is in which folder differs."""
    folder = tmp_path / "images"
    _image_folder(folder)
    cfg = DataCfg(dataset=str(folder), val_fraction=0.25)
    before = data.load(cfg).info
    run = tmp_path / "run"
    run.mkdir()
    (run / "data.json").write_text(json.dumps(before))
    runfiles.check_same_data(run, data.load(cfg).info)  # unchanged: accepted
    (folder / "cat").rename(folder / "tmp")
    (folder / "dog").rename(folder / "cat")
    (folder / "tmp").rename(folder / "dog")
    after = data.load(cfg).info
    assert {k: after[k] for k in ("train_samples", "val_samples", "class_names")} == \
        {k: before[k] for k in ("train_samples", "val_samples", "class_names")}
    with pytest.raises(UserError, match=r"the dataset changed since the run started \(rows_sha256"):
        runfiles.check_same_data(run, after)
