"""data.py, offline: every local dataset form built on the fly from digits (imagefolder with named classes,
save_to_disk with only a train split, parquet with non-standard column names), column and split detection,
the carved validation split, label checks, RGB conversion, unreadable images; a few real CLI runs on each
form; data mistakes, one table (through the CLI: test_errors.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage

from conftest import (empty_class, negative_ints, no_image_parquet, no_label_parquet, out_of_range,
                      parquet_with_labels, png_bytes, run_cli)
from partial_ft import data, data_sources, loaders, transforms
from partial_ft.data_columns import INDEX_COLUMN
from partial_ft.errors import UserError
from partial_ft.sections import DataCfg

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ROWS = 200  # digits rows in each local form
BAD_ROW = 13  # the parquet form's unreadable image (not a PNG) sits at this index


def _mode_variant(image: PILImage.Image, i: int) -> PILImage.Image:
    """Mix grayscale, RGBA and palette images: all must reach the model as RGB."""
    return [image, image.convert("RGBA"), image.convert("P"), image.convert("RGB")][i % 4]


@pytest.fixture(scope="module")
def forms(tmp_path_factory) -> dict[str, Path]:
    """The local forms of one small digits dataset (ROWS rows), written once per module."""
    root = tmp_path_factory.mktemp("forms")
    rows = data_sources.digits()["train"].select(range(ROWS))
    images, labels = list(rows["image"]), list(rows["label"])
    # 1. imagefolder: one subfolder per class, named
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / "imagefolder" / NAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        _mode_variant(image, i).save(folder / f"{i:04d}.png")
    # 2. save_to_disk with only a train split
    DatasetDict(train=rows).save_to_disk(str(root / "saved"))
    # 3. parquet, two files, non-standard names: png bytes in `pix`, class names in `digit`, an id column;
    #    row BAD_ROW holds bytes that are no image
    pix = [png_bytes(im) for im in images]
    pix[BAD_ROW] = b"definitely not a png"
    table = pa.table({"sample_id": list(range(ROWS)), "pix": pix, "digit": [NAMES[x] for x in labels]})
    (root / "parquet").mkdir()
    pq.write_table(table.slice(0, ROWS // 2), root / "parquet" / "part-a.parquet")
    pq.write_table(table.slice(ROWS // 2), root / "parquet" / "part-b.parquet")
    # 4. a Hub-like DatasetDict on disk: train, an unlabelled test split (-1) and a labelled `holdout`
    features = Features({"image": Image(), "label": ClassLabel(names=NAMES)})
    hub = DatasetDict(
        train=Dataset.from_dict({"image": images[:120], "label": labels[:120]}, features=features),
        test=Dataset.from_dict({"image": images[120:160], "label": [-1] * 40}, features=features),
        holdout=Dataset.from_dict({"image": images[160:], "label": labels[160:]}, features=features),
    )
    hub.save_to_disk(str(root / "hublike"))
    return {"imagefolder": root / "imagefolder", "saved": root / "saved", "parquet": root / "parquet",
            "hublike": root / "hublike", "labels": labels}


def _load(source, **kw) -> data.DataBundle:
    return data.load(DataCfg(dataset=str(source), **kw))


def _err(source, **kw) -> str:
    with pytest.raises(UserError) as e:
        data.load(DataCfg(dataset=str(source), **kw))
    text = str(e.value)
    assert "\n" not in text
    return text


# --------------------------------------------------------------------------------------------
# the local forms, in-process


def test_imagefolder_named_classes_and_carved_split(forms):
    b = _load(forms["imagefolder"])
    assert (b.image_column, b.label_column) == ("image", "label")
    assert b.class_names == sorted(NAMES)  # class names from the folder names
    carved = b.info["val_split"]
    assert carved["carved_from"] == "train" and carved["fraction"] == 0.1 and carved["seed"] == 0
    val_idx = carved["indices"]
    assert len(b.train) + len(b.val) == ROWS and len(val_idx) == len(b.val)
    # disjoint, every class represented in validation (stratified), and the recorded rows are the val rows
    assert set(b.val[INDEX_COLUMN]) == set(val_idx)
    assert not set(b.train[INDEX_COLUMN]) & set(val_idx)
    assert set(b.val["label"]) == set(range(10))
    # seeded: same seed same carve, another seed another carve
    assert data.load(DataCfg(dataset=str(forms["imagefolder"])), seed=0).info["val_split"]["indices"] == val_idx
    assert data.load(DataCfg(dataset=str(forms["imagefolder"])), seed=1).info["val_split"]["indices"] != val_idx


def test_save_to_disk_train_only_writes_nothing_into_the_folder(forms):
    before = sorted(p.name for p in forms["saved"].rglob("*"))
    b = _load(forms["saved"], val_fraction=0.25, max_train_samples=50, max_val_samples=20)
    assert b.class_names == [str(i) for i in range(10)] and b.info["labels"] == "ClassLabel"
    assert (len(b.train), len(b.val)) == (50, 20)
    assert b.info["train_samples"] == 50 and b.info["val_samples"] == 20
    assert 45 <= len(b.info["val_split"]["indices"]) <= 55  # 25% of 200, per class rounding
    ds = loaders.ImageDataset(b.train, b.image_column, b.label_column, lambda im: im, "train")
    image, label = ds[0]
    assert image.mode == "RGB" and 0 <= label < 10
    assert sorted(p.name for p in forms["saved"].rglob("*")) == before  # no cache files in the user's data


def test_parquet_nonstandard_columns_string_labels(forms):
    for source in (forms["parquet"], forms["parquet"] / "part-a.parquet", f"{forms['parquet']}/*.parquet"):
        b = _load(source)
        assert (b.image_column, b.label_column) == ("pix", "digit")  # bytes column; the only string column
        assert b.class_names == sorted(NAMES) and b.info["labels"].startswith("strings")
    assert len(_load(forms["parquet"] / "part-a.parquet").train) + len(
        _load(forms["parquet"] / "part-a.parquet").val) == ROWS // 2
    # the mapping: id = position in class_names; each row's id names its digit
    b = _load(forms["parquet"])
    ids = b.val["digit"]
    sources = b.val[INDEX_COLUMN]
    assert all(b.class_names[i] == NAMES[forms["labels"][s]] for i, s in zip(ids, sources))
    assert isinstance(b.train.features["digit"], ClassLabel) and b.train.features["digit"].names == b.class_names
    # explicit overrides
    b = _load(forms["parquet"], image_column="pix", label_column="digit")
    assert (b.image_column, b.label_column) == ("pix", "digit")


def test_arrow_file_and_image_paths(tmp_path, forms):
    arrow = sorted(forms["saved"].rglob("data-*.arrow"))[0]  # an arrow file, given directly
    b = _load(arrow)
    assert (b.image_column, b.label_column, len(b.train) + len(b.val)) == ("image", "label", ROWS)
    # a column of image file paths (detected by suffix) with a non-standard label column of names
    files = sorted(str(p) for p in forms["imagefolder"].rglob("*.png"))
    pq.write_table(pa.table({"file": files, "cls": [Path(f).parent.name for f in files]}), tmp_path / "paths.parquet")
    b = _load(tmp_path / "paths.parquet")
    assert (b.image_column, b.label_column) == ("file", "cls") and b.class_names == sorted(NAMES)
    image, label = loaders.ImageDataset(b.train, "file", "cls", lambda im: im, "train")[0]
    source_row = b.train[0][INDEX_COLUMN]
    assert image.mode == "RGB" and image.size == (8, 8) and b.class_names[label] == Path(files[source_row]).parent.name


def test_hub_like_splits(forms):
    b = _load(forms["hublike"])  # `test` holds only -1 (unlabelled): skipped, validation carved from train
    assert b.info["unlabelled_splits_skipped"] == ["test"] and b.info["val_split"]["carved_from"] == "train"
    b = _load(forms["hublike"], val_split="holdout")
    assert b.info["val_split"] == "holdout" and len(b.val) == ROWS - 160 and b.val.split == "holdout"
    # the small holdout split lacks some of train's classes: trained on it, those classes could never be
    # learned, so swapping the splits is refused rather than silently measured
    with pytest.raises(UserError, match="appear in split 'train' but never in 'holdout'"):
        _load(forms["hublike"], train_split="holdout", val_split="train")


@pytest.mark.parametrize("labels, fraction, val_per_class", [
    ([0] * 90 + [1] * 10, 0.1, {0: 9, 1: 1}),  # each class in proportion
    ([c for c in range(10) for _ in range(5)], 0.05, {c: 1 for c in range(10)}),  # at least one row per class
    ([0, 0, 1, 1], 0.9, {0: 1, 1: 1}),  # never a whole class
    ([0, 0, 0, 0, 1, 1, 1, 1, 2], 0.25, {0: 1, 1: 1}),  # the single row of class 2 stays in train
    ([0, 1, 2], 0.5, {}),  # no class with two rows: nothing to carve (load() says so)
], ids=["proportional", "one-per-class", "pairs", "singleton-stays", "all-singletons"])
def test_carve_is_stratified_and_seeded(labels, fraction, val_per_class):
    labels = np.array(labels)
    train_idx, val_idx = data.carve(labels, fraction, seed=0)
    assert dict(zip(*np.unique(labels[val_idx], return_counts=True))) == val_per_class
    assert sorted([*train_idx, *val_idx]) == list(range(len(labels)))  # disjoint, and every row is used
    assert np.array_equal(data.carve(labels, fraction, seed=0)[1], val_idx)
    if len(labels) > 20:
        assert not np.array_equal(data.carve(labels, fraction, seed=1)[1], val_idx)


def test_digits_builtin_unchanged():
    b = data.load(DataCfg(dataset="digits", max_train_samples=64))
    assert b.info["val_split"] == "validation" and len(b.val) == 360 and len(b.train) == 64
    # max_train_samples draws the same rows as datasets' own seeded shuffle
    full = data_sources.digits()["train"]
    assert list(b.train["label"]) == list(full.shuffle(seed=0).select(range(64))["label"])


# --------------------------------------------------------------------------------------------
# errors, in-process (each a one-line UserError)


@pytest.mark.parametrize("source, kw, expected", [
    (lambda t, f: t / "no" / "such" / "folder", {}, "dataset path does not exist"),
    (lambda t, f: "no-such-user/no-such-dataset", {}, "cannot load dataset 'no-such-user/no-such-dataset'"),
    (lambda t, f: f"{t}/*.parquet", {}, "no files match"),
    (lambda t, f: no_label_parquet(t), {}, "no label column found; columns: pix (binary), score (float64)"),
    (lambda t, f: no_image_parquet(t), {}, "no image column found; columns: name (string), label (int64)"),
    (lambda t, f: f["parquet"], {"label_column": "digits"}, "data.label_column 'digits' not found; columns: "
                                                            "sample_id (int64), pix (binary), digit (string)"),
    (lambda t, f: f["parquet"], {"image_column": "img"}, "data.image_column 'img' not found"),
    (lambda t, f: f["hublike"], {"val_split": "validation"},
     "split 'validation' not found; splits: train, test, holdout"),
    (lambda t, f: f["saved"], {"train_split": "training"}, "split 'training' not found; splits: train"),
    (lambda t, f: f["hublike"], {"val_split": "test"}, "labels outside the class range: split 'test' column "
                                                        "'label' holds -1 (classes are 0..9)"),
    (lambda t, f: out_of_range(t), {}, "labels outside the class range: split 'train' column 'label' "
                                        "holds 5 (classes are 0..1)"),
    (lambda t, f: negative_ints(t), {}, "labels outside the class range: column 'label' holds negative"),
    (lambda t, f: f["parquet"], {"label_column": "sample_id"},  # one row per class: nothing to stratify
     "cannot carve a validation split out of 'train' (200 rows, no class with two samples)"),
    # labels that make no sense: refused before anything is allocated (issue 17)
    (lambda t, f: parquet_with_labels(t, "huge", [0, 1, 2_000_000_000, 1]), {},
     "holds the integer label 2000000000, which would make 2,000,000,001 classes for 4 rows"),
    (lambda t, f: parquet_with_labels(t, "sparse", [0, 100_000] * 3), {},
     "holds the integer label 100000, which would make 100,001 classes for 6 rows"),
    (lambda t, f: parquet_with_labels(t, "single", ["cat"] * 4), {},
     "label column 'label' has 1 class; need at least 2"),
    (lambda t, f: parquet_with_labels(t, "floats", [0.0, 1.0, 0.5, 1.0]), {},
     "holds float64 values; labels must be class ids"),
    (lambda t, f: parquet_with_labels(t, "val-only", [0, 1, 0, 1], [0, 1, 2, 2]), {},
     "1 class(es) appear in split 'validation' but never in 'train' (2)"),
    (lambda t, f: parquet_with_labels(t, "val-only-names", ["cat", "dog"] * 2, ["cat", "emu"]), {},
     "1 class(es) appear in split 'validation' but never in 'train' (emu)"),
    (lambda t, f: empty_class(t), {}, "train/emu is empty (beside folders of images)"),
], ids=["missing-path", "hub-id-offline", "empty-glob", "no-label-column", "no-image-column",
        "bad-label-override", "bad-image-override", "missing-val-split", "missing-train-split",
        "unlabelled-val-split", "label-above-range", "negative-labels", "cannot-carve",
        "label-2e9", "label-1e5", "single-class", "float-labels", "class-only-in-val-ints",
        "class-only-in-val-names", "empty-class-folder"])
def test_load_errors(tmp_path, forms, source, kw, expected):
    assert expected in _err(source(tmp_path, forms), **kw)


# --------------------------------------------------------------------------------------------
# images


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "PA", "I;16", "I", "F", "CMYK", "1", "RGB"])
def test_to_rgb(mode):
    base = PILImage.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8) * 5, mode="L")
    if mode == "I;16":
        image = PILImage.fromarray(np.asarray(base, dtype=np.uint16) * 257)
    elif mode == "F":
        image = PILImage.fromarray(np.asarray(base, dtype=np.float32) / 255.0, mode="F")
    else:
        image = base.convert(mode)
    out = loaders.to_rgb(image)
    assert out.mode == "RGB" and out.size == (8, 6)
    if mode in ("L", "LA", "RGBA", "RGB", "P", "I;16", "I", "F"):  # intensities survive the conversion
        assert np.abs(np.asarray(out, dtype=int)[..., 0] - np.asarray(base, dtype=int)).max() <= 1


def test_unreadable_image_named_by_source_index(forms):
    b = _load(forms["parquet"])
    role, hf = ("validation", b.val) if BAD_ROW in b.info["val_split"]["indices"] else ("train", b.train)
    position = list(hf[INDEX_COLUMN]).index(BAD_ROW)
    ds = loaders.ImageDataset(hf, b.image_column, b.label_column, lambda im: torch.zeros(1), role)
    with pytest.raises(loaders.BadImageError) as e:
        ds[position]
    text = str(e.value)
    assert text.startswith(f"cannot read image at index {BAD_ROW} of split 'train'") and "\n" not in text
    assert "skip_bad_images" in text and (role == "train") == ("used for validation" not in text)
    # through a worker process torch re-raises it with the traceback in the message: still one clean line
    loader = loaders.loader(ds, batch_size=len(ds), shuffle=False, num_workers=1, seed=0)
    with pytest.raises(loaders.BadImageError) as e:
        next(iter(loader))
    assert str(e.value) == text
    # skipped: the item is None, and collate counts it
    ds.skip_bad_images = True
    x, y, skipped = next(iter(loaders.loader(ds, batch_size=len(ds), shuffle=False, num_workers=0, seed=0)))
    assert skipped == 1 and x.shape[0] == len(ds) - 1 == y.shape[0]


def test_transforms_from_timm():
    config = {"input_size": (3, 32, 32), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3,
              "crop_pct": 1.0, "crop_mode": "center"}
    cfg = DataCfg(scale=[0.8, 1.0], ratio=[0.9, 1.1], hflip=0.5)
    train_tf, eval_tf, deterministic = transforms.build(cfg, config)
    image = PILImage.new("RGB", (8, 8), (255, 0, 0))
    assert not deterministic and train_tf(image).shape == eval_tf(image).shape == (3, 32, 32)
    assert "RandomHorizontalFlip" in repr(train_tf) and "scale=(0.8, 1.0)" in repr(train_tf)
    assert "Random" not in repr(eval_tf)
    assert transforms.build(DataCfg(augment=False), config)[2]


# --------------------------------------------------------------------------------------------
# the real CLI on each local form (a few steps), and the CLI error table


def _cli_env(tmp_path: Path) -> dict:
    return {"HF_DATASETS_CACHE": str(tmp_path / "hf-datasets")}  # the run's generated datasets stay in tmp


def _summary(result, run_dir: Path) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert isinstance(summary["val_top1"], float) and 0 <= summary["val_top1"] <= 1
    return summary


def test_cli_imagefolder(tmp_path, forms, tiny_recipe):
    recipe = tiny_recipe("imagefolder", data={"dataset": str(forms["imagefolder"]), "augment": True,
                                              "scale": [0.8, 1.0], "hflip": 0.5, "num_workers": 1})
    result = run_cli("--recipe", str(recipe), env=_cli_env(tmp_path))
    run_dir = tmp_path / "runs" / "imagefolder"
    _summary(result, run_dir)
    info = json.loads((run_dir / "data.json").read_text())
    assert info["class_names"] == sorted(NAMES) and info["val_split"]["carved_from"] == "train"
    assert len(info["val_split"]["indices"]) == info["val_samples"]


def test_cli_save_to_disk_with_checkpoint(tmp_path, forms, tiny_recipe):
    """A train-only save_to_disk folder, starting from a local checkpoint with another class count."""
    import timm
    from safetensors.torch import save_file

    path = tmp_path / "start.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=5).state_dict(), str(path))
    recipe = tiny_recipe("saved", data={"dataset": str(forms["saved"])}, model={"checkpoint": str(path)})
    result = run_cli("--recipe", str(recipe), env=_cli_env(tmp_path))
    summary = _summary(result, tmp_path / "runs" / "saved")
    assert summary["num_classes"] == 10


@pytest.mark.parametrize("preload", [False, True])
def test_cli_parquet_string_labels_skipping_bad_images(tmp_path, forms, tiny_recipe, preload):
    """Non-standard column names, string labels (their mapping saved), one unreadable image skipped and
    counted (workers on, one full epoch so every training image is read); preloaded too."""
    recipe = tiny_recipe("parquet", data={"dataset": str(forms["parquet"]), "skip_bad_images": True,
                                          "num_workers": 1, "preload": preload},
                         train={"batch_size": 60, "max_steps": 3, "epochs": 1})
    result = run_cli("--recipe", str(recipe), env=_cli_env(tmp_path))
    run_dir = tmp_path / "runs" / "parquet"
    summary = _summary(result, run_dir)
    info = json.loads((run_dir / "data.json").read_text())
    assert (info["image_column"], info["label_column"]) == ("pix", "digit")
    assert info["class_names"] == sorted(NAMES) and info["labels"].startswith("strings")
    assert BAD_ROW not in info["val_split"]["indices"]  # with seed 0 the bad row is a training row
    assert summary["skipped_images"] == 1


@pytest.mark.parametrize("preload", [False, True])
def test_cli_unreadable_image_error(tmp_path, forms, tiny_recipe, preload):
    """Without skip_bad_images an unreadable image met in a DataLoader worker stops the run with one line
    naming its index and split. (It is met while training, so the run folder exists by then; preloaded,
    it is met while decoding, before the run folder is written.)"""
    recipe = tiny_recipe("bad", data={"dataset": str(forms["parquet"]), "num_workers": 1, "preload": preload},
                         train={"batch_size": 60, "max_steps": 3, "epochs": 1})
    result = run_cli("--recipe", str(recipe), env=_cli_env(tmp_path))
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and [ln for ln in lines if ln.startswith("error:")] == lines[-1:]
    assert lines[-1].startswith(f"error: cannot read image at index {BAD_ROW} of split 'train'")
    assert (tmp_path / "runs" / "bad").exists() != preload


# (data and model mistakes through the CLI: test_errors.py's table)


# --------------------------------------------------------------------------------------------
# the shipped Hub recipes: their column and split names resolve on a local stand-in of each dataset


@pytest.mark.parametrize("name, columns, splits, num_classes", [
    ("cifar10", {"img": "image", "label": 10}, ("train", "test"), 10),
    ("cifar100", {"img": "image", "fine_label": 100, "coarse_label": 20}, ("train", "test"), 100),
    ("tiny_imagenet", {"image": "image", "label": 200}, ("train", "valid"), 200),
])
def test_hub_recipes_resolve(tmp_path, name, columns, splits, num_classes):
    from partial_ft import recipe

    r = recipe.load(Path(__file__).resolve().parents[1] / "recipes" / f"{name}.yaml")
    assert r.data.dataset.count("/") == 1 and not r.model.pretrained and r.data.num_workers == 8
    assert r.strategy["name"] == "filters" and r.strategy["fraction"] == 0.1 and r.strategy["fixed"] == "random"
    r.model.validate(here=True)  # a name this timm knows
    # a stand-in with the Hub dataset's columns and splits; grayscale images as in Tiny-ImageNet
    features = Features({c: Image() if v == "image" else ClassLabel(num_classes=v) for c, v in columns.items()})
    im = PILImage.new("L", (4, 4))
    rows = {c: [im] * 2 * num_classes if v == "image" else [i % v for i in range(2 * num_classes)]
            for c, v in columns.items()}
    DatasetDict({s: Dataset.from_dict(rows, features=features) for s in splits}).save_to_disk(str(tmp_path / name))
    r.data.dataset = str(tmp_path / name)
    b = data.load(r.data)
    assert b.num_classes == num_classes and b.info["val_split"] == splits[1]
    assert (b.image_column, b.label_column) == (r.data.image_column, r.data.label_column)
