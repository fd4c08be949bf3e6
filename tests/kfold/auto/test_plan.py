"""The planner of `kfold auto`: pure functions driven with made-up speeds and budgets."""

from __future__ import annotations

import pytest

from kfold.auto._auto import parse_budget
from kfold.auto._plan import (FILL, SAFETY, Size, averaged_for, candidates, choose_shape, fillers, make_plan,
                              makespan, reserve_seconds, run_parts, run_seconds, versions)
from kfold.core.config import Config
from kfold.core.errors import ConfigError
from kfold.training._probe import Speed

SIZE = Size(n_train=8000, n_test=2717)
SPEED = Speed(train_rows_per_s=40.0, predict_rows_per_s=120.0, load_seconds=2.0)


def test_run_seconds_counts_folds_epochs_scoring_and_refit():
    cfg = Config(folds=4, epochs=2, average_epochs=1, epoch_scores=False)
    per_fold = 2.0 + 2 * 6000 / 40 + (1 * 2000 + 2717) / 120
    assert run_seconds(cfg, SIZE, SPEED) == pytest.approx(4 * per_fold)
    curves = cfg.replace(epoch_scores=True)  # the validation rows scored after both epochs too
    assert run_seconds(curves, SIZE, SPEED) == pytest.approx(4 * (per_fold + 2 * 2000 / 120))
    swap = cfg.replace(augment="swap", tta="swap")  # twice the training rows, both readings predicted
    assert run_seconds(swap, SIZE, SPEED) == pytest.approx(4 * (2.0 + 2 * 12000 / 40 + 2 * (2000 + 2717) / 120))
    refit = cfg.replace(refit=True)
    assert run_seconds(refit, SIZE, SPEED) == pytest.approx(4 * per_fold + 2.0 + 2 * 8000 / 40 + 2717 / 120)


def test_shape_prefers_five_folds_then_three_then_fewer_epochs():
    base = Config(epoch_scores=False)
    five = 3 * run_seconds(base.replace(folds=5), SIZE, SPEED)
    assert choose_shape(base, SIZE, SPEED, budget=five * 1.2).folds == 5
    three = run_seconds(base.replace(folds=3), SIZE, SPEED)
    shaped = choose_shape(base, SIZE, SPEED, budget=three * 1.2)
    assert (shaped.folds, shaped.epochs) == (3, 5)
    shaped = choose_shape(base, SIZE, SPEED, budget=run_seconds(base.replace(folds=2), SIZE, SPEED) * 1.2)
    assert (shaped.folds, shaped.epochs) == (2, 5)
    # no full run fits: the most epochs that fit (a 3-fold run first, then 2 folds)
    small = choose_shape(base, SIZE, SPEED, budget=run_seconds(base.replace(folds=2), SIZE, SPEED) * 0.95)
    assert (small.folds, small.epochs, small.average_epochs) == (2, 4, 2)  # 5 epochs average 3: 4 average 2
    three = choose_shape(base, SIZE, SPEED, budget=run_seconds(base.replace(folds=3, epochs=2), SIZE, SPEED) * 1.1,
                         fixed_folds=3)
    assert (three.folds, three.epochs, three.average_epochs) == (3, 2, 1)
    assert choose_shape(base, SIZE, SPEED, budget=60) is None
    fixed = choose_shape(base, SIZE, SPEED, budget=five * 1.2, fixed_folds=3)  # the workdir's fold map decides
    assert fixed.folds == 3
    assert [averaged_for(e, base) for e in (1, 2, 3, 4, 5)] == [1, 1, 2, 2, 3]


def test_choose_shape_drops_the_refit_before_refusing():
    base = Config(epoch_scores=False, refit=True)
    smallest = base.replace(folds=2, epochs=1, average_epochs=1)
    usable = (run_seconds(smallest.replace(refit=False), SIZE, SPEED) + reserve_seconds(3, SIZE)) / (1 - SAFETY)
    assert run_seconds(smallest, SIZE, SPEED) > usable  # with its refit the smallest run does not fit
    shaped = choose_shape(base, SIZE, SPEED, budget=usable * 1.01)
    assert (shaped.folds, shaped.epochs, shaped.refit) == (2, 1, False)
    with_refit = choose_shape(base, SIZE, SPEED, budget=(run_seconds(smallest, SIZE, SPEED) + reserve_seconds(3, SIZE))
                              / (1 - SAFETY) * 1.01)
    assert with_refit.refit and with_refit.epochs == 1
    assert choose_shape(base, SIZE, SPEED, budget=usable * 0.99) is None


def test_candidates_start_with_the_strongest_then_diverse_then_seeds():
    base = Config(folds=3)
    plain = candidates(base, directed=False, typed=False, max_runs=8)
    assert [c.config.variant for c in plain[:4]] == ["split", "share", "absdiff", "split"]
    assert plain[3].config.marker == "entity_marker" and plain[0].config == base
    assert [c.config.seed for c in plain] == [1, 1, 1, 1, 2, 2, 2, 2]
    directed = candidates(base, directed=True, typed=True, max_runs=5)
    assert directed[3].config.marker == "typed_entity_marker_punct"
    swap = directed[4].config
    assert (swap.augment, swap.tta, swap.epochs, swap.average_epochs) == ("swap", "swap", 3, 2)
    assert all(c.config.augment == "none" for c in plain)


def _cands(n=6):
    return candidates(Config(folds=3, epoch_scores=False), directed=False, typed=False, max_runs=n)


def _state(table=None):
    """progress(config) from a dict config -> share complete (Config is frozen, so it is a dict key)."""
    table = table or {}
    return lambda cfg: table.get(cfg, 0.0)


def test_plan_fits_the_budget_in_candidate_order():
    cands = _cands()
    one = run_seconds(cands[0].config, SIZE, SPEED)
    remaining = 2.85 * one
    plan = make_plan(cands, SIZE, SPEED, remaining, _state())
    # two full runs fit; the third fits with 3 of its 5 epochs (the shortest version allowed is half the epochs)
    assert [r.status for r in plan.runs] == ["run", "run", "run", "skip", "skip", "skip"]
    assert [r.candidate.config.epochs for r in plan.to_run] == [5, 5, 3]
    assert "3 of 5 epochs to fit the budget" in plan.to_run[2].candidate.why
    assert plan.planned_seconds + plan.reserve <= remaining * (1 - SAFETY)
    # complete runs cost nothing (a complete shorter version counts too); a half-done run costs half
    short = versions(cands[2])[1].config
    plan = make_plan(cands, SIZE, SPEED, remaining, _state({cands[0].config: 1.0, cands[1].config: 0.5, short: 1.0}))
    assert [r.status for r in plan.runs[:4]] == ["done", "run", "done", "run"]
    assert plan.runs[1].seconds == pytest.approx(one / 2) and plan.runs[2].candidate.config == short


def test_replanning_after_a_slow_run_plans_less_and_a_run_that_cannot_finish_is_not_planned():
    cands = _cands()
    one = run_seconds(cands[0].config, SIZE, SPEED)
    remaining = 2.2 * one + 100
    assert [r.candidate.config.epochs for r in make_plan(cands, SIZE, SPEED, remaining, _state()).to_run] == [5, 5]
    slow = make_plan(cands, SIZE, SPEED, remaining, _state(), correction=1.5)
    # one full run fits; no version of the next down to half its epochs does, but more than 10% of the budget would
    # stay idle, so a filler: the next candidate with the most epochs that still fit, named as a filler
    assert [r.candidate.config.epochs for r in slow.to_run] == [5, 1] and slow.runs[0].seconds == pytest.approx(1.5 * one)
    assert slow.to_run[1].candidate.why.startswith("filler: another head") and "1 of 5 epochs" in slow.to_run[1].candidate.why
    # less left than the shortest version of a run needs (a filler of MIN_EPOCHS): nothing is started
    shortest = run_seconds(fillers(cands[0])[-1].config, SIZE, SPEED)
    assert fillers(cands[0])[-1].config.epochs == 1
    assert make_plan(cands, SIZE, SPEED, shortest * 0.99, _state()).to_run == []


def test_reserve_grows_with_members_and_data():
    assert reserve_seconds(1, SIZE) < reserve_seconds(5, SIZE) < reserve_seconds(5, Size(40000, 100))


@pytest.mark.parametrize("text,seconds", [("90m", 5400), ("1.5h", 5400), ("600s", 600), ("45", 45), (" 2m ", 120)])
def test_parse_budget(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "-5m", "0", "5d"])
def test_parse_budget_refuses_what_is_not_a_duration(text):
    with pytest.raises(ConfigError, match="expected a duration like 10m"):
        parse_budget(text)


def test_makespan_schedules_parts_on_slots_as_the_driver_does():
    # one slot: the sum; two slots: folds side by side, a run's refit after its last fold, queued behind folds
    runs = [([10.0, 10.0, 10.0], 6.0), ([10.0, 10.0, 10.0], 6.0)]
    assert makespan(runs, 1) == pytest.approx(72.0)
    assert makespan(runs, 2) == pytest.approx(36.0)  # 3 waves of folds, then the two refits side by side
    assert makespan([([10.0], 0.0)] * 3, 2) == pytest.approx(20.0)
    assert makespan([([], 6.0)], 4) == pytest.approx(6.0) and makespan([], 3) == 0.0
    cfg = Config(folds=3, refit=True, epoch_scores=False)
    folds, refit = run_parts(cfg, SIZE, SPEED)
    assert sum(folds) + refit == pytest.approx(run_seconds(cfg, SIZE, SPEED))


def test_plan_on_two_slots_fits_about_twice_the_runs_and_never_exceeds_the_budget():
    cands = _cands(8)
    one = run_seconds(cands[0].config, SIZE, SPEED)
    remaining = 2.3 * one
    single = make_plan(cands, SIZE, SPEED, remaining, _state(), slots=1)
    double = make_plan(cands, SIZE, SPEED, remaining, _state(), slots=2)
    assert double.slots == 2 and len(double.to_run) >= 2 * len([r for r in single.to_run if r.candidate.config.epochs == 5])
    for plan in (single, double):
        assert plan.makespan + plan.reserve <= remaining * (1 - SAFETY)
        parts = [run_parts(r.candidate.config, SIZE, SPEED) for r in plan.to_run]
        assert plan.makespan == pytest.approx(makespan(parts, plan.slots))


def test_fillers_use_the_idle_rest_and_are_named():
    cands = _cands(2)
    one = run_seconds(cands[0].config, SIZE, SPEED)
    plan = make_plan(cands, SIZE, SPEED, 1.45 * one, _state())  # one full run; the second fits only as a filler
    assert [r.status for r in plan.runs] == ["run", "run"]
    filler = plan.to_run[1].candidate
    assert filler.why.startswith("filler: another head") and filler.config.epochs < 3
    idle = plan.available * (1 - SAFETY) - plan.makespan - plan.reserve
    assert 0 <= idle  # never over the budget
    # with the filler, less than FILL of the budget stays idle, or no shorter member would have fitted
    assert idle <= FILL * plan.available or filler.config.epochs == 1


def test_an_idle_rest_says_which_shortest_work_did_not_fit_and_what_it_needs():
    from kfold.auto._auto import _plan_lines

    cands = _cands(2)
    one = run_seconds(cands[0].config, SIZE, SPEED)
    shortest = fillers(cands[1])[-1].config
    # the first run fits; the rest (over FILL of the budget) is just too short for the next one's shortest filler
    remaining = (one + run_seconds(shortest, SIZE, SPEED) * 0.9 + reserve_seconds(2, SIZE)) / (1 - SAFETY)
    plan = make_plan(cands, SIZE, SPEED, remaining, _state())
    assert [r.status for r in plan.runs] == ["run", "skip"]
    cand, need = plan.shortest
    usable = plan.usable
    assert cand.config == shortest and usable == pytest.approx(remaining * (1 - SAFETY)) and need > usable
    assert need == pytest.approx(one + run_seconds(shortest, SIZE, SPEED) + reserve_seconds(2, SIZE))
    last = _plan_lines(plan, 0.0, remaining)[-1]
    assert "nothing more fits: the shortest work left, " in last and f"needs ~{need / 60:.1f} min on 1 slot(s)" in last
    # when the rest is under FILL of the budget, no reason is printed
    tight = make_plan(cands, SIZE, SPEED, (one + reserve_seconds(1, SIZE)) * 1.05 / (1 - SAFETY), _state())
    assert [r.status for r in tight.runs] == ["run", "skip"] and tight.shortest is not None
    assert "nothing more fits" not in _plan_lines(tight, 0.0, tight.available)[-1]


def test_the_shape_is_chosen_by_the_makespan_the_plan_uses_on_the_slots():
    # item 12, seen on the source competition's own data: 8000 training rows, 1000 test rows, 2 slots at the
    # probe's 9.8 training and 25.6 prediction rows/s each, 28.2 min left after the probe
    size, speed, budget = Size(8000, 1000), Speed(9.8, 25.6, 10.0), 28.2 * 60
    base = Config(epoch_scores=False, refit=True)
    usable = budget * (1 - SAFETY) - reserve_seconds(3, size)
    # the slot-time rule took 3 folds x 1 epoch + refit: it fits in two slots' summed time, not on the slots
    old = base.replace(folds=3, epochs=1, average_epochs=1)
    assert run_seconds(old, size, speed) <= 2 * usable and makespan([run_parts(old, size, speed)], 2) > usable
    shaped = choose_shape(base, size, speed, budget, slots=2)
    assert shaped is not None and makespan([run_parts(shaped, size, speed)], 2) <= usable
    assert (shaped.folds, shaped.epochs, shaped.refit) == (2, 1, True)
    # and the plan of that shape trains it (it does not find the run too long for the budget)
    plan = make_plan(candidates(shaped, False, False, 2), size, speed, budget, _state(), slots=2)
    assert plan.to_run and plan.to_run[0].candidate.config == shaped


def test_a_refit_alone_on_every_core_is_planned_at_that_speed():
    cfg = Config(folds=2, epochs=1, average_epochs=1, epoch_scores=False, refit=True)
    slot, alone = Speed(9.8, 25.6, 10.0), Speed(9.8, 25.6, 10.0, alone_train_rows_per_s=19.6)
    folds, refit = run_parts(cfg, Size(8000, 1000), slot)
    folds_alone, refit_alone = run_parts(cfg, Size(8000, 1000), alone)
    assert folds == folds_alone and refit - refit_alone == pytest.approx(8000 / 9.8 - 8000 / 19.6)


def test_fillers_are_planned_only_when_the_idle_rest_with_the_blending_reserve_is_over_fill():
    # item 10: the filler threshold counts the reserve kept for blending, as Plan.idle does. Swept over budgets up to
    # six runs long, some budgets leave an idle rest over FILL only when the reserve is forgotten, with a filler
    # that would fit: no filler may be planned there.
    cands, speed = _cands(6), Speed(train_rows_per_s=400.0, predict_rows_per_s=1200.0, load_seconds=2.0)
    one = run_seconds(cands[0].config, SIZE, speed)
    window = with_fillers = 0
    for step in range(600):
        remaining = one * (1.0 + step * 0.01)
        plan = make_plan(cands, SIZE, speed, remaining, _state())
        main = [r for r in plan.to_run if not r.candidate.why.startswith("filler")]
        main_parts = [run_parts(r.candidate.config, SIZE, speed) for r in main]
        idle_no_reserve = plan.usable - makespan(main_parts, 1)
        idle = idle_no_reserve - reserve_seconds(len(main), SIZE)
        if len(plan.to_run) > len(main):
            with_fillers += 1
            assert idle > FILL * remaining, (remaining, idle)
        elif idle_no_reserve > FILL * remaining >= idle:
            room = plan.usable - reserve_seconds(len(main) + 1, SIZE)
            window += any(makespan(main_parts + [run_parts(f.config, SIZE, speed)], 1) <= room
                          for c in cands if all(r.candidate.config != c.config for r in main) for f in fillers(c))
    assert with_fillers and window  # the sweep reaches budgets with fillers, and the window the reserve decides
