"""`predict`: the same numbers as `eval` on the same images; several sources over one base share their
fixed prefix and predict exactly as each alone; inputs expand as documented; unreadable images are one
line naming the file, or skipped and counted."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import TINY, write_recipe
from partial_ft import recipe as recipes
from partial_ft import train
from partial_ft.data_sources import digits
from partial_ft.errors import UserError
from partial_ft.evaluation import evaluate_run
from partial_ft.predict import Runner, expand_inputs, load_sources, predict

# members over one base (test_resnet at its seed-0 random init, BatchNorm statistics frozen so the
# fixed layers keep their values): the first three can share a prefix, the last learns its first layer
MEMBERS = {
    "head": {"name": "head", "norm_stats": "freeze"},
    "last": {"name": "block", "index": "last", "norm_stats": "freeze"},
    "last2": {"name": "block", "index": "last", "coarse": False, "norm_stats": "freeze"},
    "filters": {"name": "filters", "fraction": 0.25, "norm_stats": "freeze"},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Tiny runs of each member on digits (a few steps each)."""
    root = tmp_path_factory.mktemp("members")
    out = {}
    for name, strategy in MEMBERS.items():
        recipe = {**TINY, "strategy": strategy, "output": {"dir": str(root / name)},
                  "train": {**TINY["train"], "seed": 0, "lr": 0.01}}
        train.run(recipes.load(write_recipe(root / f"{name}.yaml", recipe)))
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """An imagefolder dataset of digits PNG files (class = folder name): train/ holds one image per class
    (eval needs a train split to read the classes), test/ 40 validation images. Returns test/."""
    root = tmp_path_factory.mktemp("images")
    ds = digits()
    rows = [("train", ds["train"][i]) for i in range(60)] + [("test", ds["validation"][i]) for i in range(40)]
    seen = set()
    for i, (split, row) in enumerate(rows):
        if split == "train" and row["label"] in seen:
            continue
        seen.add(row["label"])
        folder = root / split / str(row["label"])
        folder.mkdir(parents=True, exist_ok=True)
        row["image"].save(folder / f"img{i:03d}.png")
    assert len(seen) == 10
    return root / "test"


def test_predict_on_a_folder_equals_eval_on_the_same_images(runs, image_folder):
    run = runs["head"]
    result = evaluate_run(run, dataset=str(image_folder.parent), split="test")
    records = list(predict(Runner.build(load_sources([str(run)]), torch.device("cpu")),
                           expand_inputs([str(image_folder)]), top_k=10, batch_size=7))
    assert len(records) == result["val_samples"] == 40
    truth = [Path(r["input"]).parent.name for r in records]
    hits = [r["labels"][0] == t for r, t in zip(records, truth)]
    loss = sum(-math.log(r["scores"][r["labels"].index(t)]) for r, t in zip(records, truth)) / len(records)
    assert sum(hits) / len(hits) == result["val_top1"]
    assert loss == pytest.approx(result["val_loss"], rel=1e-5, abs=1e-6)
    for cls, acc in result["per_class_top1"].items():
        mine = [h for h, t in zip(hits, truth) if t == cls]
        assert (sum(mine) / len(mine) if mine else 0.0) == pytest.approx(acc, abs=1e-6), cls  # eval: float32
    assert all(r["scores"] == sorted(r["scores"], reverse=True) for r in records)


@pytest.mark.parametrize("members, shared", [
    (["head", "last", "last2"], True),  # head-only and last-block deltas: one prefix, below the last block
    (["head", "filters"], False),  # filters learns the first conv: nothing to share, still exact
])
def test_several_sources_predict_as_each_alone(runs, image_folder, members, shared):
    files = expand_inputs([str(image_folder)])[:20]
    runner = Runner.build(load_sources([str(runs[m]) for m in members]), torch.device("cpu"))
    together = list(predict(runner, files, top_k=3, batch_size=8))
    assert (runner.cuts is not None) == shared, runner.note
    if shared:
        assert runner.cuts[0].name.startswith("layer4") and "saving" in runner.saving()
    for m in members:
        alone = list(predict(Runner.build(load_sources([str(runs[m])]), torch.device("cpu")), files, top_k=3))
        for a, t in zip(alone, together, strict=True):
            assert t["predictions"][str(runs[m])]["labels"] == a["labels"]
            assert t["predictions"][str(runs[m])]["scores"] == pytest.approx(a["scores"], abs=1e-6)


def test_ensemble_averages_the_sources_probabilities(runs, image_folder):
    files = expand_inputs([str(image_folder)])[:6]
    sources = [str(runs["head"]), str(runs["last"])]
    both = list(predict(Runner.build(load_sources(sources), torch.device("cpu")), files, top_k=10, ensemble=True))
    for record in both:
        probs = [dict(zip(p["labels"], p["scores"])) for p in record["predictions"].values()]
        expected = {c: (probs[0][c] + probs[1][c]) / 2 for c in probs[0]}
        got = dict(zip(record["ensemble"]["labels"], record["ensemble"]["scores"]))
        assert got == pytest.approx(expected, abs=1e-6)


def test_inputs_expand_sorted_recursive_and_by_glob(tmp_path):
    for name in ("b/2.png", "b/1.JPG", "a/z.png", "a/deep/x.webp", "a/notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    rel = lambda paths: [str(p.relative_to(tmp_path)) for p in paths]  # noqa: E731
    assert rel(expand_inputs([str(tmp_path)])) == ["a/deep/x.webp", "a/z.png", "b/1.JPG", "b/2.png"]
    assert rel(expand_inputs([str(tmp_path / "b" / "*.png"), str(tmp_path / "a" / "notes.txt")])) == \
        ["b/2.png", "a/notes.txt"]  # a file named explicitly is taken whatever its suffix
    assert rel(expand_inputs([str(tmp_path / "**" / "x.*")])) == ["a/deep/x.webp"]
    for bad, message in ((str(tmp_path / "nope.png"), "no such file"), (str(tmp_path / "*.gif"), "no files match")):
        with pytest.raises(UserError, match=message):
            expand_inputs([bad])


def test_an_unreadable_image_is_named_or_skipped_and_counted(runs, image_folder, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    files = expand_inputs([str(image_folder)])[:3] + [bad]
    runner = Runner.build(load_sources([str(runs["head"])]), torch.device("cpu"))
    with pytest.raises(UserError, match=r"cannot read image .*broken.png: not a readable image.*--skip-bad"):
        list(predict(runner, files))
    from partial_ft.predict import Counts
    counts = Counts()
    assert len(list(predict(runner, files, skip_bad=True, counts=counts))) == 3
    assert counts.predicted == 3 and len(counts.skipped) == 1 and "broken.png" in counts.skipped[0]


def test_sources_over_different_bases_are_refused(runs, tmp_path):
    recipe = {**TINY, "output": {"dir": str(tmp_path / "other")}, "train": {**TINY["train"], "seed": 1}}
    train.run(recipes.load(write_recipe(tmp_path / "other.yaml", recipe)))
    with pytest.raises(UserError, match="differ in starting weights"):
        load_sources([str(runs["head"]), str(tmp_path / "other")])
    with pytest.raises(UserError, match="given twice"):
        load_sources([str(runs["head"])] * 2)
    with pytest.raises(UserError, match="--ensemble averages"):
        runner = Runner.build(load_sources([str(runs["head"]), str(runs["last"])]), torch.device("cpu"))
        runner.sources[1].info = {**runner.sources[1].info, "class_names": list("abcdefghij")}
        list(predict(runner, [], ensemble=True))


@pytest.mark.parametrize("members, fmt, labels", [
    (["head"], "csv", "names"),
    (["head"], "csv", "ids"),
    (["head"], "jsonl", "ids"),
    (["head", "last"], "csv", "ids"),  # columns per source, and the ensemble
])
def test_predict_writes_csv_or_json_lines_with_names_or_ids(runs, image_folder, tmp_path, members, fmt, labels):
    """`--format csv` holds the JSON lines' numbers as timm's inference.py lays them out; `--labels ids`
    the class ids (here the digit names are their ids too: class i is named 'i')."""
    import csv
    import json

    from partial_ft.__main__ import main

    sources = [str(runs[m]) for m in members]
    more = ["--with", *sources[1:], "--ensemble"] if len(sources) > 1 else []
    base, out = tmp_path / "base.jsonl", tmp_path / f"out.{fmt}"
    assert main(["predict", sources[0], str(image_folder), *more, "--top-k", "3", "--out", str(base)]) == 0
    assert main(["predict", sources[0], str(image_folder), *more, "--top-k", "3", "--out", str(out),
                 "--format", fmt, "--labels", labels]) == 0
    expected = [json.loads(line) for line in base.read_text().splitlines()]
    if fmt == "jsonl":
        got = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["labels"] for r in got] == [[int(x) for x in r["labels"]] for r in expected]
        return
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(expected) == 40
    tops = (lambda r: [("", r)]) if len(sources) == 1 else \
        (lambda r: [(f"{s}:", r["predictions"][s]) for s in sources] + [("ensemble:", r["ensemble"])])
    for row, record in zip(rows, expected, strict=True):
        assert row["input"] == record["input"]
        for prefix, top in tops(record):
            assert [row[f"{prefix}label_{i}"] for i in (1, 2, 3)] == top["labels"]
            assert [float(row[f"{prefix}score_{i}"]) for i in (1, 2, 3)] == pytest.approx(top["scores"], abs=1e-6)
    assert list(rows[0])[:4] == ["input", f"{tops(expected[0])[0][0]}label_1", f"{tops(expected[0])[0][0]}label_2",
                                 f"{tops(expected[0])[0][0]}label_3"]
