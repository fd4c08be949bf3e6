"""``kfold auto``: the best leaderboard file within a time budget.

A thin loop over the same functions the public commands call: the data check and fold map of ``kfold run``
(``load_data``, ``run_kfold``), the planner (``kfold.auto._plan``, pure), and the blender, writer and checker of
``ensemble blend --method best`` / ``ensemble check``. So ``auto`` and the manual path cannot drift apart.
"""

from __future__ import annotations

import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from kfold.core.config import Config
from kfold.core.errors import ConfigError, ToolkitError
from kfold.core.metrics import has_directions, metric_fn, metric_name
from kfold.core.store import REFIT, RunDir
from kfold.core.textio import read_json, write_json_atomic
from kfold.data import load_data
from kfold.training import Speed

from ._plan import (FILL, MIN_EPOCHS, Plan, Size, candidates, choose_shape, make_plan, makespan, run_parts,
                    run_seconds)

#: Where auto keeps the shape it chose (folds, epochs), so a rerun with a larger budget adds runs of the same shape.
SHAPE_FILE = "auto-shape.json"


class BudgetReached(ToolkitError):
    """Raised between folds when the next fold would not finish inside the budget (completed folds stay)."""


@dataclass
class AutoSettings:
    """What ``kfold auto`` was asked for."""

    base: Config
    budget: float
    fmt: str
    out: str = ""
    workdir: str = "runs"
    blend_metric: str = "auto"
    test_source: str = "folds"
    max_runs: int = 12
    fixed_folds: bool = False  # --folds given: auto does not choose k
    dry_run: bool = False
    command: str = ""


@dataclass
class AutoResult:
    """What a call did: the plan, the runs it trained, the chosen blend and the file."""

    plan: Plan | None = None
    trained: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)
    method: str = ""
    path: Path | None = None
    manifest: dict = field(default_factory=dict)
    seconds: float = 0.0


def parse_budget(text: str) -> float:
    """Seconds in ``90m``, ``1.5h``, ``600s`` or ``600``; ConfigError otherwise.

    >>> parse_budget("90m"), parse_budget("1.5h"), parse_budget("45")
    (5400.0, 5400.0, 45.0)
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"--budget: found '{text}', expected a duration like 10m, 1.5h or 600s")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def _progress(workdir: Path, cfg: Config) -> float:
    """Share of a run's folds complete in the store: 1.0 once assembled (and refit, with --refit); a run stopped
    by the budget or Ctrl-C has the share of its completed folds and resumes from there."""
    from kfold.training import run_name

    run = RunDir(workdir / "runs" / run_name(cfg))
    if not run.root.is_dir():
        return 0.0
    if run.oof_path.exists() and (not cfg.refit or run.fold_record(REFIT) is not None):
        return 1.0
    return sum(run.fold_record(f) is not None for f in range(cfg.folds)) / (cfg.folds + (1 if cfg.refit else 0))


def _shape(base: Config, size: Size, speed: Speed, budget: float, workdir: Path, fixed_folds: bool, log) -> Config:
    """The base config with the folds and epochs of this workdir's earlier auto runs, or chosen for the budget
    (with ``fixed_folds``, the base's own k)."""
    path = workdir / SHAPE_FILE
    if path.exists():
        shape = read_json(path)
        log(f"shape of the earlier auto runs in {workdir}: {shape['folds']} folds, {shape['epochs']} epochs")
        return base.replace(**shape)
    cfg = choose_shape(base, size, speed, budget, base.folds if fixed_folds else None)
    if cfg is None:
        smallest = base.replace(folds=2, epochs=MIN_EPOCHS, average_epochs=1 if base.average_epochs else 0, refit=False)
        raise ConfigError(f"--budget {budget / 60:.1f} min: the smallest plan (2 folds x {MIN_EPOCHS} epoch of {base.variant}"
                          f"{', no refit' if base.refit else ''}) needs about {run_seconds(smallest, size, speed) / 60:.1f} "
                          "min on this machine; raise --budget")
    if base.refit and not cfg.refit:
        log("no time for a full-data refit in this budget: the fold models predict the test file")
    return cfg


def _plan_lines(plan: Plan, elapsed: float, budget: float, slots: str = "") -> list[str]:
    from kfold.training import run_name

    shape = plan.runs[0].candidate.config
    out = [f"plan ({(budget - elapsed) / 60:.1f} min left; {plan.reserve:.0f} s kept for blending and the file; "
           f"each run {shape.folds} folds x {shape.epochs} epochs; {slots or f'{plan.slots} slot(s)'}):"]
    for i, r in enumerate(plan.runs):
        state = {"done": "done", "run": f"~{r.seconds / 60:.1f} slot-min", "skip": "does not fit"}[r.status]
        out.append(f"  {i + 1:>2}. {run_name(r.candidate.config):<48} {state:>16}  {r.candidate.why}")
    out.append(f"  {len(plan.to_run)} run(s) to train, ~{plan.planned_seconds / 60:.1f} min on {plan.slots} slot(s); "
               f"{max(0.0, plan.idle) / 60:.1f} min of the budget left over" + _idle_reason(plan))
    return out


def _idle_reason(plan: Plan) -> str:
    """Why more than FILL of the time left stays idle (the shortest work that did not fit, and what it needs), or ""."""
    if plan.shortest is None or plan.idle <= FILL * plan.available:
        return ""
    from kfold.training import run_name

    cand, need = plan.shortest
    return (f"; nothing more fits: the shortest work left, {run_name(cand.config)} ({cand.config.folds} folds x "
            f"{cand.config.epochs} epoch(s){' + refit' if cand.config.refit else ''}), needs ~{need / 60:.1f} min on "
            f"{plan.slots} slot(s) with the plan and its blending reserve, {plan.usable / 60:.1f} min are usable")


def run_auto(settings: AutoSettings, *, clock: Callable[[], float] = time.monotonic, train: Callable | None = None,
             probe: Callable | None = None, log: Callable[[str], None] = print) -> AutoResult:
    """Check the data, measure the machine, plan, train run after run (re-planning from measured times), blend
    the finished runs by the best honest method and write and check the leaderboard file.

    With a cluster (``--cluster``; see ``kfold.training.make_executor``) the parts of several runs train side by
    side: the probe measures every slot at once, the plan is the makespan of the runs' parts over the slots, and
    each step trains the next runs of the plan (as many as there are slots) in one queue.

    ``clock``, ``train`` (``run_kfold``'s signature) and ``probe`` (returns a Speed) are replaceable for tests.
    Returns what was done. Raises DataProblems, ConfigError (budget too small, nothing finished), StoreError.
    """
    from kfold.training import make_executor, run_kfold, run_many, run_name

    t0 = clock()
    workdir = Path(settings.workdir)
    base = settings.base
    data = load_data(base, workdir, log)
    for metric in (base.metric, _blend_metric(settings, data)):  # defined on these labels? refused before training
        metric_fn(metric, data.train.label_names, base.no_relation or None)
    if data.test is None and base.refit:  # a refit only predicts the test file
        base = base.replace(refit=False)
        settings.test_source = "folds"
    size = Size(len(data.train), len(data.test) if data.test else 0)
    # where the parts train: real runs go through the executor of the base config (in this process, or a cluster's
    # slots); a stand-in trainer (tests) trains one run at a time
    executor = make_executor(base, len(data.train), log=log) if train is None else None
    try:
        return _loop(settings, base, data, size, executor, clock, t0,
                     train or (lambda cfg, wd, log, on_fold: run_kfold(cfg, wd, log=log, on_fold=on_fold,
                                                                       executor=executor)),
                     lambda cfgs, wd, log, on_fold: run_many(cfgs, wd, log=log, on_fold=on_fold, executor=executor),
                     probe, log, run_name)
    finally:
        if executor is not None:
            executor.close()


def _loop(settings: AutoSettings, base: Config, data, size: Size, executor, clock, t0: float, train: Callable,
          train_many: Callable, probe: Callable | None, log, run_name) -> AutoResult:
    """Probe, shape, plan, train step after step (re-planning after each), blend (see :func:`run_auto`)."""
    workdir = Path(settings.workdir)
    slots = executor.slots if executor is not None else 1
    where = executor.description if executor is not None and slots > 1 else ""
    if probe is None:
        from kfold.training import probe_speed

        def probe(cfg: Config) -> Speed:
            return probe_speed(cfg, data, workdir, executor=executor)

    speed = probe(base)
    log(f"probe: {speed.train_rows_per_s:.1f} training rows/s, {speed.predict_rows_per_s:.1f} predicted rows/s, "
        f"{speed.load_seconds:.1f} s to build the model" + (f" (per slot, all {slots} busy)" if slots > 1 else "")
        + f" ({clock() - t0:.0f} s so far)")
    # the shape is chosen for the slot-seconds the budget holds (a run's folds spread over the slots)
    shaped = _shape(base, size, speed, (settings.budget - (clock() - t0)) * slots, workdir, settings.fixed_folds, log)
    cands = candidates(shaped, has_directions(data.train.label_names), data.train.has_types, settings.max_runs)
    result = AutoResult()
    correction, estimated, measured = 1.0, 0.0, 0.0
    first = True

    def progress(cfg: Config) -> float:
        return _progress(workdir, cfg)

    while True:
        elapsed = clock() - t0
        plan = make_plan(cands, size, speed, settings.budget - elapsed, progress, correction, slots)
        result.plan = plan
        if first or settings.dry_run:
            for line in _plan_lines(plan, elapsed, settings.budget, where):
                log(line)
        if settings.dry_run:
            return result
        if not first:
            log(f"re-planned (runs take {correction:.2f}x the estimate): {len(plan.to_run)} more run(s), "
                f"~{plan.planned_seconds / 60:.1f} min, {(settings.budget - elapsed) / 60:.1f} min left"
                + _idle_reason(plan))
        first = False
        if not plan.to_run:
            break
        batch = plan.to_run[:slots]  # the next runs of the plan, their parts in one queue over the slots
        names = [run_name(r.candidate.config) for r in batch]
        if not (workdir / SHAPE_FILE).exists():  # later calls (a larger budget) add runs of this shape
            write_json_atomic(workdir / SHAPE_FILE, {"folds": shaped.folds, "epochs": shaped.epochs,
                                                     "average_epochs": shaped.average_epochs, "refit": shaped.refit})
        parts = [run_parts(r.candidate.config, size, speed, progress(r.candidate.config)) for r in batch]
        expected = makespan(parts, slots) * correction
        eta = time.strftime("%H:%M", time.localtime(time.time() + expected))
        for n, r in enumerate(batch):
            log(f"run {len(result.trained) + n + 1} of {len(result.trained) + len(plan.to_run)}: {names[n]} "
                f"(~{r.seconds / 60:.1f} slot-min; {r.candidate.why})")
        log(f"{'these runs' if len(batch) > 1 else 'it'} should be done about {eta} (~{expected / 60:.1f} min)")
        start = clock()
        per_fold = max(max(folds, default=0.0) for folds, _ in parts) * correction

        reported = [0]  # folds the batch has reported (trained or already complete): every fold reports once

        def guard(fold: int, record: dict) -> None:
            reported[0] += 1
            left = settings.budget - (clock() - t0) - plan.reserve
            folds_left = sum(r.candidate.config.folds for r in batch) - reported[0]
            if folds_left and per_fold > left:
                nxt = f"fold {fold + 1}" if len(batch) == 1 else "the next fold"
                raise BudgetReached(f"{', '.join(names)}: {nxt} would not finish inside the budget "
                                    f"({left / 60:.1f} min left); completed folds are kept for a larger --budget")

        try:
            if len(batch) == 1:
                train(batch[0].candidate.config, workdir, log=log, on_fold=guard)
            else:
                train_many([r.candidate.config for r in batch], workdir, log=log, on_fold=guard)
        except BudgetReached as exc:
            log(f"stopped: {exc}")
            break
        took = clock() - start
        result.trained.extend(names)
        estimated += expected / correction
        measured += took
        correction = measured / estimated
        log(f"{', '.join(names)}: {took / 60:.1f} min (estimated {expected / 60:.1f})")
    final = make_plan(cands, size, speed, 0.0, progress)  # what is complete now, candidate by candidate
    members = [run_name(r.candidate.config) for r in final.runs if r.status == "done"]
    if not members:
        raise ConfigError(f"no run finished inside --budget {settings.budget / 60:.1f} min; raise it (completed folds "
                          "are kept, the same command resumes)")
    result.members = members
    _blend(settings, data, members, result, log)
    result.seconds = clock() - t0
    return result


def _blend(settings: AutoSettings, data, members: list[str], result: AutoResult, log) -> None:
    """Every method scored honestly on the finished runs, the best one written and checked."""
    from ensemble import METHODS, choose_method, compare_methods, load_members, make_blender, write_blend
    from submissions import check_submission

    metric = _blend_metric(settings, data)
    # by folder, not by --runs pattern: run names may hold commas (split-minilm-s1+ep=1,avg=1)
    m = load_members([RunDir(Path(settings.workdir) / "runs" / name) for name in members],
                     need_test=data.test is not None, test_source=settings.test_source)
    methods = list(METHODS) if len(members) > 1 else ["soft"]
    results = compare_methods(lambda name: make_blender(name, label_names=list(m.label_names)), methods, m.names, m.oof,
                              m.y, m.folds, metric, m.label_names)
    chosen = next(r for r in results if r.method == choose_method({r.method: r.scores.honest for r in results}, metric))
    result.method = chosen.method
    width = max(len(x) for x in members)
    log("")
    shown = metric_name(metric, chosen.scores.auprc_over)
    log(f"{'run':<{width}}  OOF {shown} (each run alone)")
    for name, score in sorted(chosen.scores.members.items(), key=lambda kv: -kv[1]):
        log(f"{name:<{width}}  {score:.2f}")
    log(f"{'method':<9} honest OOF {shown} (nested CV over the fold map)")
    for r in results:
        log(f"{r.method:<9} {r.scores.honest:.2f}" + ("  <- chosen" if r is chosen else ""))
    weights = ", ".join(f"{k} {v:.2f}" for k, v in sorted(chosen.scores.weights.items(), key=lambda kv: -kv[1]) if v)
    log(f"chosen blend: {chosen.method}, honest OOF {shown} {chosen.scores.honest:.2f} (best run alone "
        f"{chosen.scores.best_member[1]:.2f}); weights: {weights}")
    if m.test is None:
        log("no --test file: no leaderboard file written (the honest OOF scores above are the result)")
        return
    suffix = ".txt" if settings.fmt == "semeval" else ".csv"
    out = Path(settings.out) if settings.out else Path(settings.workdir) / "submissions" / f"auto{suffix}"
    path, manifest = write_blend(m, chosen, settings.fmt, out, metric=metric, test_source=settings.test_source,
                                 force=True, command=settings.command,
                                 extra={"budget_seconds": settings.budget, "honest_by_method":
                                        {r.method: r.scores.honest for r in results}})
    n = check_submission(path, settings.fmt, [str(i) for i in m.test_ids], m.label_names)
    result.path, result.manifest = path, manifest
    test = manifest.get("test_scores_from_labelled_test_file")
    if test:
        log("test file is labelled; the written file scores: " + " ".join(f"{k} {v:.2f}" for k, v in test.items()))
    log(f"wrote {path} ({n} rows, format {settings.fmt}, checked) and {path.name}.manifest.json")


def _blend_metric(settings: AutoSettings, data) -> str:
    """The metric the blend method is chosen on: --blend-metric, or semeval for directed labels, else accuracy."""
    if settings.blend_metric != "auto":
        return settings.blend_metric
    return "semeval" if has_directions(data.train.label_names) else "accuracy"


def command_line() -> str:
    """The command as typed, for the manifest."""
    return " ".join(shlex.quote(a) for a in ["kfold"] + sys.argv[1:])
