"""`advise`: the recommendation rule on hand-made tables, the time plan, the report, bad input, and a real
advise on a tiny task (within its time, continued after an interruption, its recipe trains)."""
from __future__ import annotations

import pytest
import yaml

from partial_ft.advise.table import CUT, DONE, SKIPPED, Row, binomial_se, recommend, sentence
from partial_ft.advise.timeplan import cuts, next_step
from partial_ft.advise.tuning import judged_from

N = 1000  # carve-out images of the hand-made tables


def _row(name, learned, top1, epoch=1.0, inside=True, status=DONE, n=N, **kw):
    return Row(name, {"name": name}, learned=learned, total=373658, in_budget=inside, status=status, top1=top1,
               n_eval=n, epoch_seconds=epoch, **kw)


# Hand-computed: se(p) = sqrt(p (1 - p) / 1000): se(0.970) = 0.005394, se(0.955) = 0.006556,
# se(0.950) = 0.006892, se(0.965) = 0.005812, se(0.900) = 0.009487, se(0.990) = 0.003146.
# within two of the best's standard errors: 0.970 - 2 * 0.005394 = 0.9592, so 0.962 is within, 0.955 is not;
# 0.965 - 2 * 0.005812 = 0.9534; 0.99 - 2 * 0.003146 = 0.9837; se(0.94) = 0.007510: 0.94 - 0.01502 = 0.9250.
RULES = [  # (table, the recommended row, the best row, within noise)
    ([_row("probe", 970, 0.90), _row("bias", 2010, 0.955), _row("filters", 37000, 0.962),
      _row("lora", 37228, 0.965), _row("full", 373658, 0.970, inside=False)], "filters", "full", True),
    ([_row("probe", 970, 0.90), _row("bias", 2010, 0.950), _row("filters", 37000, 0.962),
      _row("full", 373658, 0.970, inside=False)], "filters", "full", True),
    # ties in learned parameters: the faster; ties in both: the more accurate; then the first listed
    ([_row("norm", 2010, 0.960, epoch=2.0), _row("bias", 2010, 0.958, epoch=1.0), _row("lora", 9000, 0.965)],
     "bias", "lora", True),
    ([_row("norm", 2010, 0.958), _row("bias", 2010, 0.960), _row("lora", 9000, 0.965)], "bias", "lora", True),
    ([_row("norm", 2010, 0.960), _row("bias", 2010, 0.960), _row("lora", 9000, 0.965)], "norm", "lora", True),
    # the probe within noise of the best: nothing needs fine-tuning
    ([_row("probe", 970, 0.965), _row("lora", 37228, 0.970), _row("full", 373658, 0.968, inside=False)],
     "probe", "lora", True),
    # nothing within the budget near full fine-tuning: the best within the budget, said so
    ([_row("probe", 970, 0.80), _row("lora", 37228, 0.90), _row("full", 373658, 0.99, inside=False)],
     "lora", "full", False),
    # skipped rows and rows without a result never count; a cut row (fewer trials) does
    ([_row("probe", 970, None, status=SKIPPED), _row("bias", 2010, 0.93, status=CUT), _row("lora", 37228, 0.94)],
     "bias", "lora", True),
]


@pytest.mark.parametrize("rows,choice,best,within", RULES)
def test_recommendation_is_the_cheapest_within_two_standard_errors_of_the_best(rows, choice, best, within):
    rec = recommend(rows)
    assert (rec.choice.name, rec.best.name, rec.within) == (choice, best, within)


def test_standard_error_is_binomial_on_the_carve_out():
    assert binomial_se(0.97, 1000) == pytest.approx(0.005394, abs=1e-6)
    assert binomial_se(1.0, 50) == 0.0
    assert _row("x", 1, 0.9, n=400).se == pytest.approx(0.015)


# (trial epochs, warm-up epochs, the first epoch the pruner judges): the second half, after the warm-up
JUDGED = [(4, 0, 3), (6, 1, 4), (1, 0, 1), (2, 0, 2), (3, 0, 2), (10, 0, 6), (10, 7, 8)]


@pytest.mark.parametrize("epochs,warmup,first", JUDGED)
def test_trials_are_judged_in_the_second_half_of_their_schedule_after_the_warm_up(epochs, warmup, first):
    assert judged_from(epochs, warmup) == first


def test_sentences_say_the_numbers_and_the_probe_case():
    rows = RULES[0][0]
    rows[2].lr = 0.003
    text = sentence(recommend(rows), rows[0])
    assert text == ("`filters` reaches 0.962 ± 0.006 on the carve-out with 37 K parameters (9.9%), 1 s/epoch at lr "
                    "0.003; the best, `full`, reaches 0.970 ± 0.005 with 374 K (+0.008).")
    probe_rows = RULES[5][0]
    assert sentence(recommend(probe_rows), probe_rows[0]).startswith(
        "The linear probe is already within noise of the best, so nothing needs to be fine-tuned: it reaches 0.965")
    far = RULES[6][0]
    assert sentence(recommend(far), far[0]).startswith(
        "No candidate within the budget comes within two standard errors of `full` (0.990 ± 0.003 with 374 K)")
    assert recommend([_row("probe", 970, None, status=SKIPPED)]) is None


def _plan_rows():
    return [Row("probe", {}, learned=970, tunes_lr=False), Row("bias", {}, learned=2010),
            Row("lora", {}, learned=37228), Row("skip", {}, learned=10**6, status=SKIPPED),
            Row("full", {}, learned=373658, in_budget=False)]


def test_time_plan_measures_cheapest_first_then_first_trials_then_the_reference_if_it_pays():
    rows = _plan_rows()
    probe, bias, lora, _, full = rows
    assert (next_step(rows, 100, 6).kind, next_step(rows, 100, 6).row) == ("measure", probe)
    probe.epoch_seconds, probe.trials, probe.top1, probe.n_eval = 1.0, 1, 0.5, N
    assert next_step(rows, 100, 6).row is bias
    for r, seconds in ((bias, 2.0), (lora, 5.0)):
        r.epoch_seconds, r.trial_epochs, r.setup_seconds = seconds, 3, 1.0
    # first trials, cheapest first: bias costs 1 + 3 x 2 = 7 s, lora 16 s
    assert next_step(rows, 10, 6).row is bias
    bias.trials, bias.top1, bias.n_eval = 2, 0.9, N
    assert next_step(rows, 10, 6).row is bias  # lora's 16 s do not fit in 10: bias, the best so far, goes on
    step = next_step(rows, 20, 6)
    assert (step.kind, step.row, step.n) == ("trial", lora, 1)  # one of its two first trials fits
    assert next_step(rows, 40, 6).n == 2
    lora.trials, lora.top1, lora.n_eval = 2, 0.95, N
    # full is measured only when 2 x the slowest trial (16 s) fits; until then lora, the best, goes on
    assert (next_step(rows, 31, 6).kind, next_step(rows, 31, 6).row) == ("trial", lora)
    assert (next_step(rows, 32, 6).kind, next_step(rows, 32, 6).row) == ("measure", full)
    full.epoch_seconds, full.trial_epochs = 100.0, 3
    # full's trials do not fit: the time goes to the candidates near the top (lora; bias is far below)
    assert (next_step(rows, 100, 6).row, next_step(rows, 100, 6).n) == (lora, 2)  # a round: 2 more
    lines = cuts(rows, 6)
    assert lines == ["`bias`: 2 of 6 trials: more than two standard errors below the best, so the time went to the "
                     "candidates near the top", "`lora`: 2 of 6 trials (cut for time)",
                     "`full`: not tuned: a trial (100 s/epoch) did not fit the time left"]
    assert next_step(rows, 0, 6) is None
    lora.trials = 6  # the top is done: time left goes to those far below, cheapest first, a round at a time
    assert (next_step(rows, 100, 6).row, next_step(rows, 100, 6).n) == (bias, 2)
    assert (next_step(rows, 10, 6).row, next_step(rows, 10, 6).n) == (bias, 1)  # 7 s each: one fits in 10
    bias.trials = 6
    assert next_step(rows, 100, 6) is None  # everything tried that fits (full's 301 s trials do not)


# ---------------------------------------------------------------------------------------------------------
# the command on a tiny task (test_resnet, 373,658 parameters, classifier 970, on digits)

TASK = {"data": {"max_train_samples": 160, "max_val_samples": 64},  # 128 to train on, 32 in the carve-out
        "train": {"epochs": 3, "max_steps": None, "batch_size": 32}}
BAD = [  # (arguments after the recipe, what the one error line says)
    (["--budget", "500"], "--budget 500 is 500 parameters, below what the classifier alone learns: 970 (0.26% of "
                          "373,658); give at least that"),
    (["--budget", "1.5"], "--budget must be a fraction in (0, 1) or a whole parameter count, got '1.5'"),
    (["--budget", "abc"], "--budget must be a fraction in (0, 1) or a parameter count, got 'abc'"),
    (["--time", "soon"], "--time must be a duration like 90s, 20m, 2h or 1h30m, got 'soon'"),
    (["--worker"], "--worker needs --storage URL"),
    (["data.max_val_samples=5"], "the data is too small for a stratified carve-out (20% of train) with every class: "
                                 "the carve-out has 5 images of"),
    (["--time", "0.01s"], "--time 0.01s is too short: one epoch of the cheapest candidate (the linear probe) was "
                          "measured at"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_input_is_one_error_line_exit_2_and_nothing_written(tiny_recipe, tmp_path, capsys, args, message):
    from partial_ft.__main__ import main

    out = tmp_path / "advice"
    with pytest.raises(SystemExit) as e:
        main(["advise", "--recipe", str(tiny_recipe("task", **TASK)), "--out", str(out), "--budget", "3000", *args])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert e.value.code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()


def _summaries(out):
    return {p: p.stat().st_mtime_ns for p in (out / "tune").rglob("summary.json")}


def test_advise_stops_on_sigterm_continues_without_repeating_trials_keeps_time_and_its_recipe_trains(
        tiny_recipe, tmp_path):
    """A tiny task at a budget of 3,000 parameters: the probe and bias fit; norm (3,050), block, filters, auto
    and lora (7,013 at rank 1) cannot; full is the reference. SIGTERM in the second epoch of bias's second
    trial (its first has finished) writes the report so far; advising again continues (the finished trial
    is not trained again, the stopped one resumes from its checkpoint), ends within its time plus one
    epoch, and its advised recipe trains (--train)."""
    import json
    import os
    import signal
    import threading
    import time

    from partial_ft.advise.run import Request, advise

    recipe, out = str(tiny_recipe("task", **TASK)), tmp_path / "advice"
    done = threading.Event()

    def stop_in_second_trial():
        while not done.wait(0.1):
            runs = [p for p in (out / "tune").glob("bias*") if p.is_dir()] if (out / "tune").is_dir() else []
            if len(runs) == 2 and all((p / "metrics.jsonl").is_file() for p in runs):  # both past epoch 1
                os.kill(os.getpid(), signal.SIGTERM)
                return

    watcher = threading.Thread(target=stop_in_second_trial, daemon=True)
    watcher.start()
    first = advise(Request(recipe, budget=3000, seconds=600, time_text="10m", out=str(out), trials=2))
    done.set()
    assert first.signum == signal.SIGTERM
    text = (out / "advice.md").read_text()
    assert "stopped by a signal" in text and "| `bias` | – | 2,010 |" in text
    assert "`lora` | – | 7,013 |" in text and "learns 7,013 at its smallest (lora(rank=1)), over 3,000" in text
    assert "`norm` | – | 3,050 |" in text and "learns 3,050 at its smallest, over 3,000" in text
    before = _summaries(out)
    assert len(before) == 1

    start = time.time()
    second = advise(Request(recipe, budget=3000, seconds=120, time_text="2m", out=str(out), trials=2, train=True))
    state = json.loads((out / "state.json").read_text())["rows"]
    slowest = max(r["setup_seconds"] + r["epoch_seconds"] for r in state.values() if r["epoch_seconds"])
    reported = (out / "advice.png").stat().st_mtime - start  # the report is written when the plan ends
    assert reported <= 120 + slowest + 5, (reported, slowest)  # (+ drawing the plot)
    after = _summaries(out)
    assert all(after[p] == t for p, t in before.items())  # the finished trial was kept, not trained again
    assert state["bias"]["trials"] == 2 and len([p for p in after if "bias" in str(p)]) == 2
    assert (out / "advice.png").read_bytes()[:4] == b"\x89PNG"
    assert "| `full` |" in second.text and ("reference, outside the budget" in second.text)
    assert second.choice is not None and second.val_top1 is not None
    assert "Trained as advised on all of train: validation top-1" in second.text
    assert (out / "trained" / "summary.json").is_file()
    # the exhaustive check's grid: the candidates not skipped, as sized (docs/advise.md)
    check = yaml.safe_load((out / "check.yaml").read_text())
    assert check["strategies"] == [{"name": "head", "norm_stats": "freeze",
                                    "overrides": ["train.solver=exact", "data.augment=false"]},
                                   {"name": "bias"}, {"name": "full"}]
    assert json.loads((out / "state.json").read_text())["budget"] == 3000
