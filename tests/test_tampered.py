"""Tampered deltas are refused, never obeyed (issue 21.7): learned tensors of another dtype or shape, NaN or
infinite weights, class names that cannot name the classifier's outputs, sizes that would allocate
gigabytes, fingerprints that do not add up. Each is one UserError (and through the CLI one `error:` line,
exit 2) naming what is wrong; the deltas are made without training (a perturbed model, as in
test_checkpoint.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from partial_ft import load_delta
from partial_ft import recipe as recipes
from partial_ft.__main__ import main
from partial_ft.delta import fingerprint_parts, save_delta
from partial_ft.errors import UserError
from partial_ft.models import build
from partial_ft.strategies import apply_strategy

HEAD = {"name": "filters", "fraction": 0.25, "fixed": "random"}  # the classifier (fc) learns and is stored
SLICE = "conv1.0.weight_learned"  # the learned 4 of the first conv's 16 filters (filters, fraction 0.25)
NO_HEAD = {"name": "filters", "fraction": 0.25, "fixed": "random", "head": False}  # fc stays fixed (seeded)


def _delta(tmp_path: Path, strategy: dict) -> Path:
    recipe = recipes.from_dict({"model": {"name": "test_resnet"}, "strategy": strategy, "train": {"seed": 3}})
    model, init_model = build(recipe.model, 5, seed=3)
    apply_strategy(model, recipe.strategy, seed=3, init_model=init_model)
    base = fingerprint_parts(model)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01)
    names = [f"c{i}" for i in range(5)]
    return save_delta(tmp_path / "delta.safetensors", model, recipe, names, {"input_size": [3, 32, 32]}, base)


def _rewrite(path: Path, tensors=None, meta=None) -> None:
    """Rewrite the delta with changed tensors and / or metadata (a function of the old ones)."""
    with safe_open(str(path), framework="pt") as f:
        old_meta, old = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    new = tensors(old) if tensors else old
    new_meta = meta({k: json.loads(v) for k, v in old_meta.items()}) if meta else None
    save_file(new, str(path), metadata={k: json.dumps(v) for k, v in new_meta.items()} if new_meta else old_meta)


def _set(key: str, value):
    return lambda m: {**m, key: value}


def _nan_at_first(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


def _parts_changed(m: dict) -> dict:
    import hashlib

    parts = {**m["fingerprint_parts"], "fc": "0" * 64}
    m["fingerprint_parts"] = parts
    m["fingerprint"] = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return m


# id: (strategy, change the tensors, change the metadata, what the error must say)
CASES = {
    "int64-slice": (HEAD, lambda t: {**t, SLICE: t[SLICE].long()}, None,
                    f"{SLICE} is int64 (4, 3, 3, 3), the model's is float32 (4, 3, 3, 3)"),
    "float64-slice": (HEAD, lambda t: {**t, "fc.bias": t["fc.bias"].double()}, None,
                      "fc.bias is float64 (5,), the model's is float32 (5,)"),
    "flattened-slice": (HEAD, lambda t: {**t, SLICE: t[SLICE].reshape(-1)}, None,
                        f"{SLICE} is float32 (108,), the model's is float32 (4, 3, 3, 3)"),
    "flattened-classifier": (HEAD, lambda t: {**t, "fc.weight": t["fc.weight"].reshape(-1)}, None,
                             "fc.weight has shape (480,), the model's is (5, 96)"),
    "nan-weight": (HEAD, lambda t: {**t, "fc.weight": _nan_at_first(t["fc.weight"])}, None,
                   "fc.weight holds 1 NaN or infinite values"),
    "inf-running-var": (HEAD, lambda t: {**t, "bn1.running_var": torch.full_like(t["bn1.running_var"], float("inf"))},
                        None, "bn1.running_var holds 32 NaN or infinite values"),
    "duplicate-class": (HEAD, None, _set("class_names", ["a", "b", "a", "c", "d"]), "class name 'a' appears twice"),
    "empty-class": (HEAD, None, _set("class_names", ["a", "", "b", "c", "d"]), "class name 1 is ''"),
    "blank-class": (HEAD, None, _set("class_names", ["a", "b", " ", "c", "d"]), "class name 2 is ' '"),
    "line-break-class": (HEAD, None, _set("class_names", ["a", "b\nerror: fake", "c", "d", "e"]),
                         "class name 1 is 'b\\nerror: fake'"),
    "separator-class": (HEAD, None, _set("class_names", ["a", "b\u2028c", "c", "d", "e"]), "class name 1 is"),
    "number-class": (HEAD, None, _set("class_names", ["a", 7, "c", "d", "e"]), "class name 1 is 7"),
    "no-classes": (HEAD, None, _set("class_names", []), "metadata 'class_names' is empty"),
    "one-class-too-many": (HEAD, None, _set("class_names", [f"c{i}" for i in range(6)]),
                           "6 class names, but its classifier fc.bias has 5 outputs"),
    "200k-classes": (HEAD, None, _set("class_names", [str(i) for i in range(200_000)]),
                     "200,000 class names, but its classifier fc.bias has 5 outputs"),
    "200k-classes-head-not-stored": (NO_HEAD, None, _set("class_names", [str(i) for i in range(200_000)]),
                                     "200,000 class names, more than 100,000 for a classifier the delta does not store"),
    # (the 5 M names; 1.5 M of ~17 bytes each in the header already pass its 16 MiB bound)
    "1.5M-classes": (HEAD, None, _set("class_names", [f"class{i}" for i in range(1_500_000)]),
                   "more than 16,777,216 (the file was altered"),
    "input-size-huge": (HEAD, None, _set("data_config", {"input_size": [3, 100_000, 100_000]}),
                        "data_config input_size [3, 100000, 100000] is not [channels, height, width] with sides of "
                        "1..8,192 pixels"),
    "input-size-missing": (HEAD, None, _set("data_config", {}), "data_config input_size None is not"),
    "std-zero": (HEAD, None, _set("data_config", {"input_size": [3, 32, 32], "std": [0.2, 0.0, 0.2]}),
                 "data_config std [0.2, 0.0, 0.2] is not 3 finite numbers above 0"),
    "mean-nan": (HEAD, None, _set("data_config", {"input_size": [3, 32, 32], "mean": [0.5, float("nan"), 0.5]}),
                 "data_config mean [0.5, nan, 0.5] is not 3 finite numbers"),
    "fingerprint-edited": (HEAD, None, _set("fingerprint", "0" * 64),
                           "its metadata 'fingerprint' is not the hash of its own 'fingerprint_parts'"),
    "fingerprint-part-edited": (HEAD, None, _parts_changed, "(differing parts: fc)"),
    "fingerprint-parts-not-a-mapping": (HEAD, None, _set("fingerprint_parts", ["fc"]),
                                        "metadata 'fingerprint_parts' is not a mapping of names to hashes"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_tampered_delta_is_refused(tmp_path, case):
    strategy, tensors, meta, message = CASES[case]
    path = _delta(tmp_path, strategy)
    load_delta(path)  # untampered, it loads
    _rewrite(path, tensors, meta)
    with pytest.raises(UserError) as e:
        load_delta(path)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)[:2000]


def test_a_header_length_beyond_the_bound_is_refused_before_it_is_read(tmp_path):
    path = _delta(tmp_path, HEAD)
    data = bytearray(path.read_bytes())
    data[:8] = (2**40).to_bytes(8, "little")  # a terabyte of header: safetensors would try to read it
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="its header says 1,099,511,627,776 bytes, more than 16,777,216"):
        load_delta(path)


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_the_cli_says_it_in_one_line(tmp_path, capsys, command):
    path = _delta(tmp_path, HEAD)
    _rewrite(path, lambda t: {**t, SLICE: t[SLICE].long()})
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    out = tmp_path / "out.safetensors"
    argv = {"eval": ["eval", str(path.parent)], "predict": ["predict", str(path), str(image)],
            "export": ["export", str(path), "--out", str(out)]}[command]
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert f"{SLICE} is int64" in err or (command == "eval" and "recipe.yaml" in err)
    assert not out.exists()
