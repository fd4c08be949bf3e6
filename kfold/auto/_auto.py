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
from kfold.core.errors import ConfigError, RuntimeLost, ToolkitError, TrainingError
from kfold.core.metrics import has_directions, metric_fn, metric_name
from kfold.core.store import REFIT, RunDir
from kfold.core.textio import read_json, write_json_atomic
from kfold.data import load_data
from kfold.training import Speed

from ._track import auto_trackers, kept, track_auto
from ._plan import (FILL, MIN_EPOCHS, Candidate, Plan, Size, candidates, choose_shape, fillers, fold_seconds,
                    make_plan, makespan, refit_seconds, run_parts, versions)

#: Where auto keeps the shape it chose (folds, epochs), so a rerun with a larger budget adds runs of the same shape.
SHAPE_FILE = "auto-shape.json"


class BudgetReached(ToolkitError):
    """Raised before a part is submitted when it would not finish inside the budget (completed parts stay)."""


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
    #: the backbone was chosen (flag, preset or config key): kept; else auto takes the packaged backbone that reads
    #: the training text best where the chosen one reads it badly (Korean on MiniLM)
    backbone_chosen: bool = True
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
    metric: str = ""
    honest: float = float("nan")  # the chosen blend's honest OOF score


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
    """Share of a run's parts complete in the store: 1.0 only once its OOF is assembled (and its refit written,
    where planned), so only such a run is a blend member; a run stopped by the budget or Ctrl-C has the share of
    its completed folds (every fold written but not assembled counts one step short) and resumes from there."""
    from kfold.training import run_name

    run = RunDir(workdir / "runs" / run_name(cfg))
    if not run.root.is_dir():
        return 0.0
    if run.oof_path.exists() and (not cfg.refit or run.fold_record(REFIT) is not None):
        return 1.0
    steps = cfg.folds + 1 + (1 if cfg.refit else 0)  # the folds, the assembly, the refit
    done = sum(run.fold_record(f) is not None for f in range(cfg.folds)) + (1 if run.oof_path.exists() else 0)
    return done / steps


def _shape(base: Config, size: Size, speed: Speed, budget: float, workdir: Path, fixed_folds: bool, slots: int,
           log) -> Config:
    """The base config with the folds and epochs of this workdir's earlier auto runs, or chosen for the budget
    on ``slots`` slots (with ``fixed_folds``, the base's own k)."""
    path = workdir / SHAPE_FILE
    if path.exists():
        shape = read_json(path)
        log(f"shape of the earlier auto runs in {workdir}: {shape['folds']} folds, {shape['epochs']} epochs")
        return base.replace(**shape)
    cfg = choose_shape(base, size, speed, budget, base.folds if fixed_folds else None, slots)
    if cfg is None:
        smallest = base.replace(folds=2, epochs=MIN_EPOCHS, average_epochs=1 if base.average_epochs else 0, refit=False)
        need = makespan([run_parts(smallest, size, speed)], slots)
        raise ConfigError(f"--budget {budget / 60:.1f} min: the smallest plan (2 folds x {MIN_EPOCHS} epoch of {base.variant}"
                          f"{', no refit' if base.refit else ''}) needs about {need / 60:.1f} "
                          f"min on this machine ({slots} slot(s)); raise --budget")
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
             probe: Callable | None = None, log: Callable[[str], None] = print, executor=None) -> AutoResult:
    """Check the data, measure the machine, plan, train run after run (re-planning from measured times), blend
    the finished runs by the best honest method and write and check the leaderboard file.

    Where parts train (``--cluster``; see ``kfold.training.choose_executor``): on a CPU machine ``--cluster auto``
    times one part on every core against parts side by side and takes the faster; with several slots the parts
    of several runs train side by side, the probe measures every slot at once, the plan is the makespan of the
    runs' parts over the slots, and each step trains the next runs of the plan (as many as there are slots) in
    one queue. A cluster's nodes are checked before the probe. Every part, the refit included, starts only when
    its estimate says it can finish inside the budget; a budget that stops the queue still blends and writes the
    file from the runs that completed.

    ``clock``, ``train`` (``run_kfold``'s signature), ``probe`` (returns a Speed) and ``executor`` are replaceable
    for tests. Returns what was done. Raises DataProblems, ConfigError (budget too small, nothing finished),
    StoreError.
    """
    t0 = clock()
    trackers = auto_trackers(settings, log)  # a missing tracker package is refused before anything else
    lines: list[str] = []
    if trackers:
        log = kept(log, lines)
    result = None
    try:
        result = _auto(settings, clock, train, probe, log, executor, trackers, t0)
    finally:
        if trackers:
            track_auto(trackers, settings, result, lines)
    return result


def _auto(settings: AutoSettings, clock, train, probe, log, executor, trackers, t0: float) -> AutoResult:
    """:func:`run_auto` once its trackers are open."""
    from kfold.training import run_kfold, run_many, run_name

    workdir = Path(settings.workdir)
    base = settings.base
    if base.pseudo_from:  # refused before the data is read
        raise ConfigError("kfold auto does not plan pseudo-label students yet (pseudo_from); train them with "
                          "kfold run --pseudo-from RUN|BLEND_FILE")
    data = load_data(base, workdir, log)
    said = set(data.lines)
    log = _once(log, said)  # each run reads the files again: what was said about them is said once per command
    base = _backbone_for(settings, base, data, log)
    for metric in (base.metric, _blend_metric(settings, data)):  # defined on these labels? refused before training
        metric_fn(metric, data.train.label_names, base.no_relation or None)
    if data.test is None and base.refit:  # a refit only predicts the test file
        base = base.replace(refit=False)
        settings.test_source = "folds"
    size = Size(len(data.train), len(data.test) if data.test else 0)
    # where the parts train: real runs go through one executor (in this process, or a cluster's slots); a
    # stand-in trainer (tests) trains one run at a time
    placement = None
    own = executor is None and train is None
    if own:
        placement = _placement(settings, base, data, log, measure=probe is None)
        executor = placement.executor
    try:
        if executor is not None:
            executor.check([base.backbone])  # a cluster's nodes (versions, backbone) before the probe runs on them
        return _loop(settings, base, data, size, executor, placement, clock, t0,
                     train or (lambda cfg, wd, log, before_part: run_kfold(cfg, wd, log=log, before_part=before_part,
                                                                           executor=executor, trackers=trackers)),
                     lambda cfgs, wd, log, before_part: run_many(cfgs, wd, log=log, before_part=before_part,
                                                                 executor=executor, trackers=trackers),
                     probe, log, run_name)
    finally:
        if own and executor is not None:
            executor.close()


def _placement(settings: AutoSettings, base: Config, data, log, measure: bool = True):
    """The executor for auto's runs; with ``--cluster auto`` on a CPU machine, the arrangement measured on this
    data for work that fills the budget (several runs' parts). ``measure=False`` (a stand-in probe: tests): in
    this process unless a cluster is named."""
    from kfold.training import Work, choose_executor, probe_sample_of_data

    workdir = Path(settings.workdir)

    def work(here: Speed) -> Work:
        row_epochs = settings.budget * here.train_rows_per_s
        per_part = max(1.0, len(data.train) * (base.folds - 1) / base.folds * base.epochs)
        return Work(row_epochs, max(2, int(row_epochs / per_part)))

    return choose_executor(base, workdir=workdir, sample=(lambda: probe_sample_of_data(base, data, workdir)) if measure
                           else None, work=work, data_hash=data.train.content_hash(), log=log)


def _loop(settings: AutoSettings, base: Config, data, size: Size, executor, placement, clock, t0: float,
          train: Callable, train_many: Callable, probe: Callable | None, log, run_name) -> AutoResult:
    """Probe, shape, plan, train step after step (re-planning after each), blend (see :func:`run_auto`)."""
    workdir = Path(settings.workdir)
    slots = executor.slots if executor is not None else 1
    where = executor.description if executor is not None and slots > 1 else ""
    if probe is None:
        probe = _measured_probe(data, workdir, executor, placement)
    speed = probe(base)
    log(f"probe: {speed.train_rows_per_s:.1f} training rows/s, {speed.predict_rows_per_s:.1f} predicted rows/s, "
        f"{speed.load_seconds:.1f} s to build the model" + (f" (per slot, all {slots} busy)" if slots > 1 else "")
        + (f"; a part alone on every core {speed.alone:.1f} training rows/s" if speed.alone != speed.train_rows_per_s
           else "") + f" ({clock() - t0:.0f} s so far)")
    # the shape is chosen with the makespan the plan uses (folds side by side, the refit after them)
    shaped = _shape(base, size, speed, settings.budget - (clock() - t0), workdir, settings.fixed_folds, slots, log)
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
        guard = _budget_guard(settings, size, speed, plan, correction, clock, t0)
        try:
            if len(batch) == 1:
                train(batch[0].candidate.config, workdir, log=log, before_part=guard)
            else:
                train_many([r.candidate.config for r in batch], workdir, log=log, before_part=guard)
        except BudgetReached as exc:
            log(f"stopped: {exc}")
            break
        except RuntimeLost:
            raise
        except TrainingError as exc:  # a run of the batch failed (the others went on): blend what completed
            log(f"stopped: a run failed ({str(exc).splitlines()[0]}); the runs that completed are blended")
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
        members = _without_refits(workdir, cands, run_name, settings, log)
    if not members:
        raise ConfigError(f"no run finished inside --budget {settings.budget / 60:.1f} min; raise it (completed folds "
                          "are kept, the same command resumes)")
    result.members = members
    _blend(settings, data, members, result, log)
    result.seconds = clock() - t0
    return result


def _measured_probe(data, workdir: Path, executor, placement) -> Callable[[Config], Speed]:
    """The probe: what choosing the executor measured (a slot's speed, and one part's on every core), else a probe
    on the executor's slots (or here)."""
    from kfold.training import probe_speed

    def probe(cfg: Config) -> Speed:
        slots = executor.slots if executor is not None else 1
        if placement is not None and placement.here is not None:
            if slots > 1 and placement.slot is not None:
                return Speed(placement.slot.train_rows_per_s, placement.slot.predict_rows_per_s,
                             placement.slot.load_seconds, placement.here.train_rows_per_s)
            if slots == 1:
                return placement.here
        return probe_speed(cfg, data, workdir, executor=executor)

    return probe


def _budget_guard(settings: AutoSettings, size: Size, speed: Speed, plan: Plan, correction: float, clock,
                  t0: float) -> Callable:
    """The scheduler's pre-submit hook: a part (a fold or the refit) starts only when its estimate (times what the
    runs so far took against theirs) finishes inside the budget, the blending reserve kept."""

    def guard(cfg: Config, run: str, part) -> None:
        left = settings.budget - (clock() - t0) - plan.reserve
        need = (refit_seconds(cfg, size, speed) if part == REFIT else fold_seconds(cfg, size, speed)) * correction
        if need > left:
            what = "refit" if part == REFIT else f"fold {part}"
            raise BudgetReached(f"{run} {what} would not finish inside the budget (needs ~{need / 60:.1f} min, "
                                f"{max(left, 0.0) / 60:.1f} min left); completed parts are kept for a larger --budget")

    return guard


def _backbone_for(settings: AutoSettings, base: Config, data, log) -> Config:
    """The base config with the backbone the runs use: a chosen one is kept (with a note when it reads the text
    badly); an unchosen default that reads it badly gives way to the packaged backbone that reads it best."""
    from kfold.encoding import backbone_reading

    notice, better = backbone_reading([ex.sentence for ex in data.train.examples], base.backbone)
    if notice:
        log(notice)
    if better and not settings.backbone_chosen:
        log(f"no backbone chosen: the runs use {better}, which reads this text best (--backbone to choose)")
        return base.replace(backbone=better)
    return base


def _once(log: Callable[[str], None], said: set[str]) -> Callable[[str], None]:
    """``log`` without the lines in ``said`` (the data files' summaries and notes, said once already)."""
    return lambda line: None if line in said else log(line)


def _without_refits(workdir: Path, cands: list[Candidate], run_name, settings: AutoSettings, log) -> list[str]:
    """When no run completed with its planned refit (the budget stopped them): the runs whose OOF is assembled,
    their fold models predicting the test file, so the budget still ends with a file."""
    names = []
    for cand in cands:
        for version in versions(cand) + fillers(cand):
            cfg = version.config
            if RunDir(workdir / "runs" / run_name(cfg)).oof_path.exists() and run_name(cfg) not in names:
                names.append(run_name(cfg))
                break
    if names and settings.test_source != "folds":
        log(f"no run finished its refit inside the budget: {len(names)} run(s) with all their folds are blended, "
            "their fold models predict the test file")
        settings.test_source = "folds"
    return names


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
    result.method, result.metric, result.honest = chosen.method, metric, chosen.scores.honest
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
