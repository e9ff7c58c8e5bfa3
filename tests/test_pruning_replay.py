"""tools/pruning_replay.py: recorded curves through Optuna's successive halving give the choices and epochs
worked out by hand below, and a sweep's journal is read in trial order (reports, or metrics.jsonl)."""
from __future__ import annotations

import json
import sys

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import pruning_replay  # noqa: E402  (a script of tools/, not a module of the package)


def _curves(at_rung, epochs=6, rung=2, end=None):
    """Curves that pass through `at_rung` at epoch `rung` (0.01 lower the epoch before, 0.01 higher after,
    so the rung's order holds at every epoch) and end at `end` (default: at_rung + 0.1)."""
    end = end or [v + 0.1 for v in at_rung]
    return [[v - 0.01 * (rung - e) if e <= rung else (f if e == epochs else v + 0.01 * (e - rung))
             for e in range(1, epochs + 1)] for v, f in zip(at_rung, end)]


# (curves, min_epochs, chosen, epochs trained): with fewer than 8 candidates at a rung, Optuna's halving
# (reduction factor 4) promotes a candidate only when it is at least the best so far there; the next rung
# (epoch 8) is past the sixth epoch, so a promoted candidate trains to its end
CASES = [
    (_curves([0.5, 0.4, 0.6, 0.3, 0.7]), 2, 4, [6, 2, 6, 2, 6]),
    # the last-trained candidate is the best at the end, but behind at the rung: pruned, never chosen
    (_curves([0.5, 0.4, 0.6, 0.3, 0.55], end=[0.6, 0.5, 0.7, 0.4, 0.9]), 2, 2, [6, 2, 6, 2, 2]),
    # the same curves judged at epoch 1: the order there is the same, so the same candidates stop, earlier
    (_curves([0.5, 0.4, 0.6, 0.3, 0.55], end=[0.6, 0.5, 0.7, 0.4, 0.9]), 1, 2, [6, 1, 6, 1, 1]),
    # a tie with the best so far is promoted; equal ends: the first is chosen
    (_curves([0.5, 0.5], end=[0.8, 0.8]), 2, 0, [6, 6]),
    # eight candidates: at the eighth the bar is the second best of eight (0.75, itself), not the best (0.8)
    (_curves([0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.75]), 2, 0, [6, 2, 2, 2, 2, 2, 2, 6]),
    # a first rung at the last epoch prunes nothing: a run that has ended is complete
    (_curves([0.5, 0.4, 0.6]), 6, 2, [6, 6, 6]),
]


@pytest.mark.parametrize("curves,min_epochs,chosen,epochs", CASES)
def test_replay_gives_the_choice_and_epochs_worked_out_by_hand(curves, min_epochs, chosen, epochs):
    result = pruning_replay.replay(curves, min_epochs)
    assert (result.chosen, result.epochs) == (chosen, epochs)


def _study(storage, name, configuration, trials):
    """A tuning study as a sweep leaves it: trials in order, each with its lr, reports and run folder."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr("configuration", configuration)
    lrs = [t[0] for t in trials]
    for lr, reports, run_dir, final in trials:
        study.enqueue_trial({"train.lr": lr})
        trial = study.ask()
        trial.suggest_categorical("train.lr", lrs)
        trial.set_user_attr("run_dir", run_dir)
        for epoch, top1 in reports.items():
            trial.report(top1, epoch)
        study.tell(trial, final)


def test_a_sweep_journal_is_read_in_trial_order_with_run_folders_where_reports_are_partial(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    storage = JournalStorage(JournalFileBackend(str(sweep / "study.journal")))
    # a run resumed from its checkpoint reported epochs 3-4 only; its folder has all four
    (tmp_path / "runs" / "b").mkdir(parents=True)
    (tmp_path / "runs" / "b" / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"epoch": e, "val_top1": v}) for e, v in [(2, 0.3), (1, 0.2), (3, 0.8), (4, 0.9)]))
    _study(storage, "sweep/tune/1", "filters", [
        (0.01, {1: 0.5, 2: 0.6, 3: 0.7, 4: 0.7}, "runs/a", 0.7),
        (0.1, {3: 0.8, 4: 0.9}, "runs/b", 0.9)])
    _study(storage, "sweep/tune/0", "head [exact]", [(0.001, {1: 0.9}, "runs/p", 0.9)])  # one epoch: left out
    optuna.create_study(study_name="sweep/final", storage=storage)
    found = pruning_replay.configurations(sweep, tmp_path)
    assert {k: [(c.label, c.curve) for c in v] for k, v in found.items()} == {
        "filters": [("lr 0.01", [0.5, 0.6, 0.7, 0.7]), ("lr 0.1", [0.2, 0.3, 0.8, 0.9])]}
    assert pruning_replay.main([str(sweep), "--root", str(tmp_path), "--min-epochs", "2"]) == 0
    # unpruned: lr 0.1 (0.9); judged at epoch 2, 0.3 < 0.6: pruned there, lr 0.01 kept: 4 + 2 of 8 epochs
    assert "| filters | lr 0.1 (0.9000) | **lr 0.01 (0.7000), 6/8** |" in capsys.readouterr().out


def _pruned_sweep(folder):
    folder.mkdir()
    storage = JournalStorage(JournalFileBackend(str(folder / "study.journal")))
    study = optuna.create_study(study_name="sweep/tune/0", storage=storage, direction="maximize")
    trial = study.ask()
    trial.report(0.1, 1)
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)


BAD = [  # (arguments after the folder, whether the folder is a pruned sweep, the error line)
    (["--min-epochs", "0"], False, "error: --min-epochs: each must be at least 1; --orders: at least 0"),
    (["--orders", "-1"], False, "error: --min-epochs: each must be at least 1; --orders: at least 0"),
    ([], False, "error: {f}: no study.journal (a sweep folder with its default storage)"),
    ([], True, "error: {f}: sweep/tune/0 pruned candidates; replay a sweep with pruner: none"),
]


@pytest.mark.parametrize("args,pruned,line", BAD)
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, capsys, args, pruned, line):
    folder = tmp_path / "sweep"
    if pruned:
        _pruned_sweep(folder)
    assert pruning_replay.main([str(folder), *args]) == 2
    out = capsys.readouterr()
    assert out.err == line.format(f=folder) + "\n" and out.out == ""


def test_random_orders_cost_what_each_order_costs():
    """Two candidates: B is behind A at the epoch-2 rung but ends 0.2 above it. After A (order AB), B is
    pruned at epoch 2 (8 of 12 epochs, A chosen: 0.2 lost); first (BA), both train to the end (12 of 12, B
    chosen). Whatever the drawn orders, the three numbers must fit that."""
    curves = _curves([0.6, 0.4], end=[0.7, 0.9])  # A, B
    share, worse, lost = pruning_replay.shuffled(curves, 2, orders=50)
    assert 0 < worse < 1  # both orders were drawn
    assert share == pytest.approx((8 * worse + 12 * (1 - worse)) / 12)
    assert lost == pytest.approx(0.2 * worse)
    # one candidate ahead at every epoch: never a worse choice, whatever the order
    assert pruning_replay.shuffled(_curves([0.6, 0.4]), 2, orders=20)[1:] == (0.0, 0.0)
