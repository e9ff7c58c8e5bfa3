"""Command line: `python -m partial_ft [train] --recipe R [section.key=value ...] [--resume | --overwrite]`,
`... eval SOURCE`, `... predict SOURCE INPUT...`, `... export SOURCE --out FILE.safetensors`,
`... push RUN_DIR REPO_ID`, `... strategies`, `... sweep --recipe R --grid G --out DIR`,
`... advise --recipe R [--budget B] [--time T] [--out DIR] [--train] [section.key=value ...]`.

Argument parsing and printing only; the work lives in one call per command (train.run, evaluation,
predict, export, hub). A user mistake prints one `error: ...` line and exits with code 2.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from .advise import cli as advise_cli
from .errors import UserError, one_line
from .sweep import cli as sweep_cli

COMMANDS = ("train", "eval", "predict", "export", "push", "strategies", "sweep", "advise")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m partial_ft",
                                description="Learn a small part of a timm backbone's weights on a new task.",
                                epilog="train is the default command: python -m partial_ft --recipe "
                                       "recipes/quickstart.yaml. Each command has its own --help.")
    sub = p.add_subparsers(dest="command")
    t = sub.add_parser("train", help="train as a recipe says (the default command)")
    t.add_argument("--recipe", required=True, help="recipe YAML file")
    t.add_argument("overrides", nargs="*", metavar="section.key=value", help="recipe overrides (values are YAML)")
    how = t.add_mutually_exclusive_group()
    how.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    how.add_argument("--resume", action="store_true", help="continue the run in the folder from its last checkpoint")
    e = sub.add_parser("eval", help="evaluate a finished run's delta; writes RUN_DIR/eval.json")
    e.add_argument("run_dir", metavar="SOURCE", help="a run folder, a pushed folder or a Hub repo id")
    e.add_argument("--dataset", help="another dataset with the same classes (default: the run's)")
    e.add_argument("--split", help="the split to evaluate (default: the run's validation split)")
    e.add_argument("--max-samples", type=int, help="evaluate at most this many (seeded random) images")
    r = sub.add_parser("predict", help="classify images with one or several deltas (JSON lines)")
    r.add_argument("source", metavar="SOURCE", help="a run folder, a pushed folder, a delta file or a Hub repo id")
    r.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive) or glob patterns")
    r.add_argument("--with", dest="more", nargs="+", action="extend", default=[], metavar="SOURCE",
                   help="more sources over the same base: predicted on the same batches, sharing their fixed prefix")
    r.add_argument("--ensemble", action="store_true", help="also write the average of the sources' probabilities")
    r.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    r.add_argument("--out", help="write the predictions to this file (default: stdout)")
    r.add_argument("--format", choices=("jsonl", "csv"), default="jsonl",
                   help="JSON lines (default), or CSV: input, label_1..k, score_1..k (per source with several)")
    r.add_argument("--labels", choices=("names", "ids"), default="names",
                   help="class names (default) or class ids (the classifier's output indices)")
    r.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    r.add_argument("--skip-bad", action="store_true", help="skip unreadable images (named and counted on stderr)")
    x = sub.add_parser("export", help="write a plain timm state dict (full weights) and timm's config.json "
                                      "(preprocessing, classes) from a run's delta")
    x.add_argument("run_dir", metavar="SOURCE", help="a run folder, a pushed folder, a delta file or a Hub repo id")
    x.add_argument("--out", required=True, help="the .safetensors file to write (config.json goes beside it; "
                   "name it model.safetensors to load its folder with timm's local-dir:)")
    h = sub.add_parser("push", help="upload a run's delta, recipe, class names, summary and model card to the Hub")
    h.add_argument("run_dir", metavar="RUN_DIR")
    h.add_argument("repo_id", metavar="REPO_ID", help="owner/name of the Hub model repo (created when missing)")
    h.add_argument("--private", action="store_true", help="create the repo private")
    h.add_argument("--local-dir", help="write exactly the files to this new or empty folder instead of uploading")
    h.add_argument("--license", metavar="ID", help="the model card's license, a Hub license id (e.g. apache-2.0); "
                   "without it the card says `license: other` and that none was given")
    sub.add_parser("strategies", help="list the strategies with their options and defaults")
    sweep_cli.add_parser(sub)
    advise_cli.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # nothing asked: say what can be asked, rather than demand train's --recipe
        _parser().print_help()
        return 0
    if argv[0] not in COMMANDS + ("-h", "--help"):
        argv = ["train", *argv]
    parser = _parser()
    parser.error = lambda message: _fail(message)  # one line, exit 2, like every user mistake
    for action in parser._subparsers._group_actions:
        for sub in action.choices.values():
            sub.error = lambda message: _fail(message)
    # overrides may come before or after --overwrite / --resume / --recipe (argparse takes one run of them)
    args, rest = parser.parse_known_args(argv)
    if args.command in ("train", "sweep", "advise"):
        args.overrides += [a for a in rest if not a.startswith("-")]
        rest = [a for a in rest if a.startswith("-")]
    if rest:
        return _fail(f"unrecognized arguments: {' '.join(rest)}")
    try:
        command = {"strategies": _strategies, "eval": _eval, "predict": _predict, "export": _export, "push": _push,
                   "train": _train, "sweep": sweep_cli.command, "advise": advise_cli.command}[args.command]
        return command(args)
    except UserError as e:
        return _fail(str(e), e.collective)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def _fail(message: str, collective: bool = True) -> int:
    """Print the one `error:` line and exit 2. A collective error (every process of a multi-process run
    fails the same way) is said by the first process only."""
    if not collective or os.environ.get("RANK", "0") == "0":
        print(f"error: {one_line(message)}", file=sys.stderr)
    sys.exit(2)


def _train(args: argparse.Namespace) -> int:
    from . import recipe as recipes

    recipe = recipes.load(args.recipe, args.overrides)  # recipe mistakes fail before the heavy imports
    import datasets

    from .signals import Interrupted, Stopped, stop_with_watched
    from .train import run

    datasets.disable_progress_bars()  # our own progress bar is the one that matters
    stop_with_watched()  # a run a sweep started stops (checkpointing) when the sweep is gone
    try:
        run(recipe, overwrite=args.overwrite, resume=args.resume)
    except (Interrupted, Stopped) as e:
        again = shlex.join(["python", "-m", "partial_ft", "--recipe", args.recipe, *args.overrides, "--resume"])
        how = "resume with" if isinstance(e, Interrupted) else "start it again with"
        if os.environ.get("RANK", "0") == "0":  # one message, not one per process
            print(f"error: {e}; {how}: {again}", file=sys.stderr)
        return 128 + e.signum
    return 0


def _eval(args: argparse.Namespace) -> int:
    import datasets

    from .evaluation import evaluate_run

    datasets.disable_progress_bars()
    r = evaluate_run(args.run_dir, dataset=args.dataset, split=args.split, max_samples=args.max_samples)
    top5 = "" if r["val_top5"] is None else f"  top5 {r['val_top5']:.4f}"
    print(f"{args.run_dir} on {r['dataset']}, split {r['split']}: {r['val_samples']} images")
    print(f"  top1 {r['val_top1']:.4f}{top5}  loss {r['val_loss']:.4f}")
    worst = sorted((kv for kv in r["per_class_top1"].items() if kv[1] < 1.0), key=lambda kv: kv[1])[:5]
    print("  worst classes: " + ", ".join(f"{name} {acc:.3f}" for name, acc in worst) if worst else
          "  every class: 1.000")
    for path in r.get("written", []):
        print(f"wrote {path}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .predict import run

    sources = [args.source, *args.more]
    counts, runner = run(sources, args.inputs, args.out, args.top_k, args.batch_size, args.skip_bad, args.ensemble,
                         fmt=args.format, label_ids=args.labels == "ids")
    for line in counts.skipped:
        print(f"skipped {line}", file=sys.stderr)
    skipped = f", {len(counts.skipped)} unreadable skipped" if counts.skipped else ""
    print(f"predicted {counts.predicted} images with {len(sources)} source{'s' * (len(sources) > 1)}{skipped}"
          f"{f'; wrote {args.out}' if args.out else ''}", file=sys.stderr)
    if len(sources) > 1:
        print(runner.saving(), file=sys.stderr)
    return 0


def _push(args: argparse.Namespace) -> int:
    from .hub import HUB_FILES, push

    where = push(args.run_dir, args.repo_id, private=args.private, local_dir=args.local_dir, license=args.license)
    print(f"{'wrote' if args.local_dir else 'pushed'} {', '.join(HUB_FILES)} to {where}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import export, load_line
    from .hub import resolve

    out, config, info = export(resolve(args.run_dir), args.out)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB), a plain timm state dict, and {config} (its "
          "preprocessing and classes); load it without partial_ft:")
    print(f"  model = {load_line(out, info)}")
    print("  transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))")
    return 0


def _strategies(args: argparse.Namespace) -> int:
    from .strategies import list_strategies

    for s in list_strategies():
        aliases = f" (alias: {', '.join(s.aliases)})" if s.aliases else ""
        print(f"{s.name}{aliases}: {s.summary}")
        helps = s.option_help()
        for key, value in s.option_defaults().items():
            print(f"    {key}: {value}  # {helps[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
