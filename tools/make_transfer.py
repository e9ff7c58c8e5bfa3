"""An offline transfer task: a source backbone trained by plain timm on digits 0-4, and digits 5-9 as an
imagefolder (train/ and validation/ folders), so "pretrained -> new task" runs end to end without the Hub.

    python tools/make_transfer.py --out transfer     # about 21 s on an idle 2-core CPU (docs/development.md)
    python -m partial_ft --recipe recipes/transfer_digits.yaml

writes
    transfer/source.safetensors   the source ResNet-18's weights without its classifier (model.checkpoint)
    transfer/source.json          how it was made and its accuracy on digits 0-4 (validation)
    transfer/digits59/{train,validation}/<digit>/<n>.png   the target task: 5 classes (8x8 RGB, seen at 32x32)

The source trains on 32x32 images normalised with timm's data config for the model (the ImageNet mean
and std), the same config partial_ft resolves for `data.input_size: 32, crop_pct: 1.0`, so the target
recipe's normalisation matches the source's. Both tasks keep the built-in digits' train/validation split.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file
from timm.data import create_transform, resolve_data_config
from torch import nn
from tqdm.auto import tqdm

from partial_ft import digits

SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
SIZE = 32


def tensors(split, classes: tuple[int, ...], transform) -> tuple[torch.Tensor, torch.Tensor]:
    """The split's images of `classes` as a transformed batch, and their labels renumbered 0..k-1."""
    rows = [(image, classes.index(label)) for image, label in zip(split["image"], split["label"]) if label in classes]
    x = torch.stack([transform(image.convert("RGB")) for image, _ in rows])
    return x, torch.tensor([y for _, y in rows])


def train_source(model_name: str, epochs: int, seed: int, progress: bool = True) -> tuple[nn.Module, dict]:
    """A timm model trained from scratch on digits 0-4 with a plain loop (AdamW, cosine); returns it
    and its record (validation accuracy on 0-4, seconds)."""
    torch.manual_seed(seed)
    model = timm.create_model(model_name, num_classes=len(SOURCE_CLASSES))
    config = resolve_data_config({"input_size": (3, SIZE, SIZE), "crop_pct": 1.0}, model=model)
    transform = create_transform(**config, is_training=False)
    splits = digits()
    x, y = tensors(splits["train"], SOURCE_CLASSES, transform)
    vx, vy = tensors(splits["validation"], SOURCE_CLASSES, transform)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    steps = epochs * -(-len(x) // 64)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    model.train()
    with tqdm(total=steps, desc=f"source {model_name} on digits 0-4", unit="step", disable=not progress) as bar:
        for epoch in range(epochs):
            for batch in torch.randperm(len(x), generator=generator).split(64):
                loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                bar.update()
                bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{loss.item():.4f}", refresh=False)
    model.eval()
    with torch.no_grad():
        accuracy = (model(vx).argmax(1) == vy).float().mean().item()
    record = {"model": model_name, "classes": list(SOURCE_CLASSES), "epochs": epochs, "seed": seed,
              "train_images": len(x), "val_top1": round(accuracy, 4), "seconds": round(time.perf_counter() - start, 1),
              "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}}
    return model, record


def write_target(out: Path) -> dict[str, int]:
    """Digits 5-9 as an imagefolder: <out>/<split>/<digit>/<n>.png (RGB at the native 8x8: the recipe's
    transform resizes them to 32x32 exactly as the source's did); returns counts per split."""
    counts = {}
    for split_name, split in digits().items():
        n = 0
        for i, (image, label) in enumerate(zip(split["image"], split["label"])):
            if label not in TARGET_CLASSES:
                continue
            folder = out / split_name / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            image.convert("RGB").save(folder / f"{i}.png")  # native 8x8: resized like the source's
            n += 1
        counts[split_name] = n
    return counts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="transfer", help="output folder (default: transfer)")
    p.add_argument("--model", default="resnet18", help="timm model name for the source backbone")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    counts = write_target(out / "digits59")
    print(f"wrote the target task, digits 5-9: {out / 'digits59'} ({counts}); training the source backbone",
          flush=True)
    model, record = train_source(args.model, args.epochs, args.seed, progress=not args.no_progress)
    classifier = {f"{name}." if name else "" for name, m in model.named_modules() if m is model.get_classifier()}
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not any(k.startswith(c) for c in classifier)}
    save_file(state, str(out / "source.safetensors"))  # a backbone: the target recipe adds its own classifier
    record["target"] = {"classes": list(TARGET_CLASSES), **{f"{k}_images": v for k, v in counts.items()}}
    (out / "source.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"source {args.model} on digits 0-4: val_top1 {record['val_top1']:.4f} ({record['seconds']} s); "
          f"wrote {out / 'source.safetensors'} and {out / 'source.json'}")


if __name__ == "__main__":
    main()
