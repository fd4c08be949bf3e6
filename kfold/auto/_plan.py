"""Planning ``kfold auto``: measured speeds, the budget and a clock in, a plan out. Pure functions, torch-free.

The loop that trains (``kfold.auto._auto``) calls these before the first run and again after every run, with the
speeds corrected by what the finished runs really took; tests drive them with made-up speeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from kfold.core.config import Config
from kfold.training import Speed

#: Fold counts auto chooses between (a workdir's existing fold map fixes it).
FOLD_CHOICES = (5, 3, 2)
#: k = 5 only when this many runs of the base configuration fit (a blend needs members more than folds).
RUNS_FOR_FIVE_FOLDS = 3
#: The fewest epochs auto trains a run for.
MIN_EPOCHS = 1
#: Share of the budget left unplanned: estimates are estimates.
SAFETY = 0.05
#: Fillers (shorter members) are planned while more than this share of the budget would stay idle.
FILL = 0.10


@dataclass(frozen=True)
class Size:
    """Rows to train on and to predict."""

    n_train: int
    n_test: int


@dataclass(frozen=True)
class Candidate:
    """A run auto may make: its config and why it is in the list."""

    config: Config
    why: str


@dataclass
class PlannedRun:
    """A candidate with its estimated seconds and what the plan does with it (done, run, does not fit)."""

    candidate: Candidate
    seconds: float
    status: str  # "done", "run", "skip"


@dataclass
class Plan:
    """The runs in order, the wall seconds they need on the slots, the reserve kept for blending and what is left
    over. ``PlannedRun.seconds`` is a run's slot-seconds (its parts' sum); ``makespan`` is the wall time of all the
    runs to train, their parts side by side on ``slots`` slots (the sum on one slot)."""

    runs: list[PlannedRun] = field(default_factory=list)
    reserve: float = 0.0
    available: float = 0.0
    slots: int = 1
    makespan: float = 0.0
    #: the shortest work that did not fit: (its candidate, the wall seconds the plan would need with it, reserve
    #: included): why the budget's rest stays idle
    shortest: tuple[Candidate, float] | None = None

    @property
    def to_run(self) -> list[PlannedRun]:
        return [r for r in self.runs if r.status == "run"]

    @property
    def planned_seconds(self) -> float:
        """Wall seconds the runs to train take (their makespan on the slots)."""
        return self.makespan

    @property
    def usable(self) -> float:
        """Seconds of what is left that the plan may fill (SAFETY kept back)."""
        return self.available * (1 - SAFETY)

    @property
    def idle(self) -> float:
        """Usable seconds the plan leaves unused (the runs' makespan and the reserve taken off)."""
        return self.usable - self.makespan - self.reserve


def fold_seconds(cfg: Config, size: Size, speed: Speed) -> float:
    """Estimated seconds of one fold: load, train every epoch, score the validation rows after each epoch (and
    the weight average), predict the test rows."""
    train_mult = cfg.step_cost()
    predict_mult = 2 if cfg.tta == "swap" else 1
    n_train = size.n_train * (cfg.folds - 1) / cfg.folds
    n_valid = size.n_train / cfg.folds
    evals = (cfg.epochs if cfg.epoch_scores else 0) + (1 if cfg.average_epochs else 0)
    return (speed.load_seconds + cfg.epochs * n_train * train_mult / speed.train_rows_per_s
            + (evals * n_valid + size.n_test) * predict_mult / speed.predict_rows_per_s)


def refit_seconds(cfg: Config, size: Size, speed: Speed) -> float:
    """Estimated seconds of the refit on every training row (0 without ``cfg.refit``). It is a run's last part and
    trains alone, on every core of a CPU machine (``speed.alone``)."""
    if not cfg.refit:
        return 0.0
    train_mult = cfg.step_cost()
    return (speed.load_seconds + cfg.epochs * size.n_train * train_mult / speed.alone
            + size.n_test * (2 if cfg.tta == "swap" else 1) / speed.predict_rows_per_s)


def run_seconds(cfg: Config, size: Size, speed: Speed) -> float:
    """Estimated seconds of a whole k-fold run (plus its refit on every row with ``cfg.refit``), on one slot."""
    return cfg.folds * fold_seconds(cfg, size, speed) + refit_seconds(cfg, size, speed)


def run_parts(cfg: Config, size: Size, speed: Speed, share_done: float = 0.0, scale: float = 1.0
              ) -> tuple[list[float], float]:
    """A run's parts: (seconds of each fold, seconds of the refit or 0), times ``scale`` and the share of the run
    still to train (``1 - share_done``: a run stopped halfway costs half)."""
    left = scale * (1 - share_done)
    return [fold_seconds(cfg, size, speed) * left] * cfg.folds, refit_seconds(cfg, size, speed) * left


def makespan(runs: list[tuple[list[float], float]], slots: int) -> float:
    """Wall seconds of runs' parts on ``slots`` slots, scheduled as the driver does: every fold in queue order on
    the first free slot; a run's refit joins the queue when its last fold ends. One slot: the sum.

    >>> makespan([([10.0, 10.0], 5.0), ([10.0, 10.0], 5.0)], 2)  # both runs' folds, then both refits
    25.0
    """
    free = [0.0] * max(1, slots)
    # (ready at, queue order, seconds, run; a refit's run is -1 - run)
    folds_in_order = [(r, seconds) for r, (folds, _) in enumerate(runs) for seconds in folds]
    queue = [(0.0, i, seconds, r) for i, (r, seconds) in enumerate(folds_in_order)]
    left = [len(folds) for folds, _ in runs]
    for r, (folds, refit) in enumerate(runs):
        if not folds and refit:
            queue.append((0.0, len(queue), refit, -1 - r))
    end = 0.0
    order = len(queue)
    while queue:
        slot = min(range(len(free)), key=free.__getitem__)
        ready = [q for q in queue if q[0] <= free[slot]]
        item = min(ready, key=lambda q: q[1]) if ready else min(queue, key=lambda q: (q[0], q[1]))
        queue.remove(item)
        start = max(free[slot], item[0])
        free[slot] = start + item[2]
        end = max(end, free[slot])
        r = item[3]
        if r >= 0:
            left[r] -= 1
            if left[r] == 0 and runs[r][1]:  # the run's refit, after its last fold
                order += 1
                queue.append((free[slot], order, runs[r][1], -1 - r))
    return end


def reserve_seconds(n_members: int, size: Size) -> float:
    """Time kept for blending (every method scored by nested CV), writing and checking the file."""
    return 20.0 + 2.0 * n_members * max(1.0, size.n_train / 5000)


def averaged_for(epochs: int, base: Config) -> int:
    """The preset's weight-average span scaled to fewer epochs (5 epochs average 3: 2 average 1, 3 average 2)."""
    if not base.average_epochs:
        return 0
    return max(1, min(base.average_epochs, round(epochs * base.average_epochs / base.epochs)))


def choose_shape(base: Config, size: Size, speed: Speed, budget: float, fixed_folds: int | None = None,
                 slots: int = 1) -> Config | None:
    """Folds and epochs for the runs of a budget, each shape timed by the same :func:`makespan` the plan uses on
    ``slots`` slots (folds side by side, the refit after them): k = 5 when RUNS_FOR_FIVE_FOLDS runs of the base
    fit, else 3, else 2 when one full run fits; else the most epochs (down to MIN_EPOCHS) with which a 3-fold, else
    a 2-fold run fits; else the same without the full-data refit (the fold models then predict the test file);
    None when nothing fits. Among the fold counts of one step, a count that fills the slots in fewer rounds is tried
    first when it fits (2 folds on 2 slots finish in one round, 3 need two).

    ``fixed_folds``: the workdir already has a fold map with this k (runs share one fold map).

    >>> b = Config()
    >>> choose_shape(b, Size(8000, 2717), Speed(40.0, 150.0, 2.0), 5400).folds
    3
    """
    usable = budget * (1 - SAFETY) - reserve_seconds(3, size)
    folds = [fixed_folds] if fixed_folds else list(FOLD_CHOICES)

    def need(cfg: Config, runs: int = 1) -> float:
        return makespan([run_parts(cfg, size, speed)] * runs, slots)

    for k in folds:
        cfg = base.replace(folds=k)
        if need(cfg, RUNS_FOR_FIVE_FOLDS if k == 5 and not fixed_folds else 1) <= usable:
            return cfg
    for epochs in range(base.epochs - 1, MIN_EPOCHS - 1, -1):  # epochs matter more than a third fold
        shapes = [base.replace(folds=k, epochs=epochs, average_epochs=averaged_for(epochs, base))
                  for k in (folds if fixed_folds else [3, 2])]
        fitting = [cfg for cfg in shapes if need(cfg) <= usable]
        if fitting:  # the most folds that fit, unless fewer folds fill the slots in fewer rounds
            return min(fitting, key=lambda cfg: (math.ceil(cfg.folds / slots) if slots > 1 else 0, -cfg.folds))
    if base.refit:
        return choose_shape(base.replace(refit=False), size, speed, budget, fixed_folds, slots)
    return None


def candidates(base: Config, directed: bool, typed: bool, max_runs: int = 12) -> list[Candidate]:
    """The runs auto considers, in the order of their expected value: the base configuration (the preset's
    strongest single model) first, then members chosen for diversity (other heads, another marker, entity swap
    where labels have directions), then the same with other training seeds."""
    other_marker = ("typed_entity_marker_punct" if typed and base.marker != "typed_entity_marker_punct" else
                    "entity_marker" if base.marker == "entity_marker_punct" else "entity_marker_punct")
    swap_epochs = max(MIN_EPOCHS, math.ceil(base.epochs / 2))  # twice the rows per epoch: about the same time
    diverse = [
        (base, f"the strongest single configuration ({base.variant})"),
        (base.replace(variant="share" if base.variant != "share" else "split"), "another head (R-BERT's shared entity layer)"
         if base.variant != "share" else "another head (separate entity layers)"),
        (base.replace(variant="absdiff"), "another head (adds |e1-e2|)"),
        (base.replace(marker=other_marker), f"another entity marker ({other_marker})"),
    ]
    if directed:
        diverse.append((base.replace(augment="swap", tta="swap", epochs=swap_epochs,
                                     average_epochs=averaged_for(swap_epochs, base)),
                        "entity swap: trained and predicted in both entity orders (labels have directions)"))
    out = [Candidate(c, why) for c, why in diverse]
    seed = base.seed
    while len(out) < max_runs:
        seed += 1
        for c, why in diverse:
            out.append(Candidate(c.replace(seed=seed), f"{why.split(' (')[0]}, training seed {seed}"))
    return out[:max_runs]


def versions(cand: Candidate) -> list[Candidate]:
    """The candidate, then the same with fewer epochs (down to half of them) to fill what is left of a budget."""
    cfg = cand.config
    out = [cand]
    for epochs in range(cfg.epochs - 1, max(MIN_EPOCHS, math.ceil(cfg.epochs / 2)) - 1, -1):
        out.append(Candidate(cfg.replace(epochs=epochs, average_epochs=averaged_for(epochs, cfg)),
                             f"{cand.why}; {epochs} of {cfg.epochs} epochs to fit the budget"))
    return out


def make_plan(cands: list[Candidate], size: Size, speed: Speed, remaining: float, progress: Callable[[Config], float],
              correction: float = 1.0, slots: int = 1) -> Plan:
    """Which candidates to run in the ``remaining`` seconds, in order: each when the wall time of its parts and the
    runs' before it on ``slots`` slots (:func:`makespan`; ``speed`` is one slot's while all are busy, times
    ``correction``, what finished runs took against their estimate) fits with the reserve for blending, else its
    longest shorter version (fewer epochs, see :func:`versions`) that fits.

    Then, when more than FILL of the budget would stay idle, fillers: a candidate that did not fit, with fewer
    epochs still (down to MIN_EPOCHS), the longest that fits; each is named as a filler in its ``why``.

    ``progress(config)`` is the share of that run's parts already complete: a complete version of a candidate
    (1.0) costs nothing and makes it "done"; a partial one costs the rest. Returns the plan; a candidate with no
    version that fits is kept in it as "skip" (a later, cheaper one may still fit).
    """
    plan = Plan(slots=max(1, slots), available=remaining)
    budget = plan.usable
    # each version's share complete, read from the store once per plan
    shares = [[(v, progress(v.config)) for v in versions(cand) + fillers(cand)] for cand in cands]
    n_main = [len(versions(cand)) for cand in cands]
    chosen: list[PlannedRun | None] = []
    for vs in shares:
        done = next((v for v, share in vs if share >= 1.0), None)
        chosen.append(PlannedRun(done, 0.0, "done") if done else None)
    members = sum(1 for c in chosen if c is not None)
    parts: list[tuple[list[float], float]] = []

    def fit(i: int, options) -> bool:
        nonlocal members
        room = budget - reserve_seconds(members + 1, size)
        for v, share in options:
            mine = run_parts(v.config, size, speed, share, correction)
            if makespan(parts + [mine], plan.slots) <= room:
                parts.append(mine)
                chosen[i] = PlannedRun(v, sum(mine[0]) + mine[1], "run")
                members += 1
                return True
        return False

    for i in range(len(cands)):
        if chosen[i] is None:
            fit(i, shares[i][: n_main[i]])
    for i in range(len(cands)):  # fillers: the budget's idle rest (its reserve for blending kept), over FILL of it
        if chosen[i] is None and budget - makespan(parts, plan.slots) - reserve_seconds(members, size) > FILL * remaining:
            fit(i, shares[i][n_main[i]:])
    needs = [(makespan(parts + [run_parts(v.config, size, speed, share, correction)], plan.slots), v)
             for i, vs in enumerate(shares) if chosen[i] is None for v, share in vs[-1:]]
    if needs:
        need, v = min(needs, key=lambda n: n[0])
        plan.shortest = (v, need + reserve_seconds(members + 1, size))
    for i, cand in enumerate(cands):
        if chosen[i] is None:
            chosen[i] = PlannedRun(cand, run_seconds(cand.config, size, speed) * correction, "skip")
    plan.runs = [c for c in chosen if c is not None]
    plan.reserve = reserve_seconds(members, size)
    plan.makespan = makespan(parts, plan.slots)
    return plan


def fillers(cand: Candidate) -> list[Candidate]:
    """The candidate with fewer epochs than :func:`versions` offers (below half, down to MIN_EPOCHS): the longest
    first. Used only to fill a budget's idle rest, and named so in the plan."""
    cfg = cand.config
    out = []
    for epochs in range(max(MIN_EPOCHS, math.ceil(cfg.epochs / 2)) - 1, MIN_EPOCHS - 1, -1):
        out.append(Candidate(cfg.replace(epochs=epochs, average_epochs=averaged_for(epochs, cfg)),
                             f"filler: {cand.why}; {epochs} of {cfg.epochs} epochs, the most that fit what is left"))
    return out
