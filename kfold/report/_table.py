"""``kfold report``: the results table, made trustworthy. Torch-free.

For each complete run: OOF scores with 95% bootstrap intervals, the spread over folds and over training
seeds, and a paired bootstrap against the best run (the share of resamples on which the run beats it).
Runs on different fold maps are reported in separate tables, never compared with each other.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kfold.core.errors import ConfigError, StoreError
from kfold.core.metrics import (METRICS, auprc_labels, confusion, majority_accuracy, metric_fn, metric_name, metrics_for,
                                sign, softmax)
from kfold.core.store import Predictions, RunDir, list_runs, load_predictions
from kfold.core.textio import read_json, write_text_atomic

from ._intervals import INTERVAL_METHOD, bc_interval, plain_weights, scheme_for, stratified_weights


@dataclass
class RunRow:
    """One line of the report."""

    run: str
    fold_map_hash: str
    n: int
    scores: dict[str, float]
    ci: dict[str, tuple[float, float]]
    fold_mean: float
    fold_std: float
    win_rate: float | None = None
    seed_group: str = ""
    seed_std: float | None = None
    seeds: int = 1
    fold_minutes: float | None = None
    trained_on: str = "-"  # where the folds trained (devices, nodes, retries), from the completion records
    extra: dict = field(default_factory=dict)
    pseudo: str = ""  # trained with pseudo-labelled test rows (kfold run --pseudo-from): "honest" or "naive"


def seed_group(run_name: str) -> str:
    """The run name with its training seed taken out: runs that differ only in seed share it."""
    return re.sub(r"-s\d+(?=$|[-+])", "-s*", run_name, count=1)


def build_report(workdir: str | Path, pattern: str = "*", metric: str = "accuracy", n_boot: int = 1000,
                 seed: int = 0, no_relation: str | None = None) -> list[list[RunRow]]:
    """Rows for every complete run matching ``pattern``, one table per fold map, best run first.

    Raises StoreError when a run's files are corrupt or foreign (never a silently wrong table).

    Example
    -------
    >>> tables = build_report("runs", metric="accuracy")  # doctest: +SKIP
    """
    runs = [r for r in list_runs(workdir, pattern) if r.oof_path.exists()]
    loaded: dict[str, list[tuple[RunDir, Predictions]]] = defaultdict(list)
    for run in runs:
        oof = load_predictions(run.oof_path)
        cfg = run.read_config()
        if oof.fold_map_hash != cfg.get("fold_map_hash"):
            raise StoreError(f"{run.oof_path}: field 'fold_map_hash': found {oof.fold_map_hash[:12]}, "
                             f"expected {str(cfg.get('fold_map_hash'))[:12]} from {run.config_path}")
        if oof.y is None or oof.folds is None or (oof.y < 0).any():
            raise StoreError(f"{run.oof_path}: field 'y': missing or incomplete gold labels, expected an OOF file")
        loaded[oof.fold_map_hash].append((run, oof))
    tables = []
    for fm_hash, members in loaded.items():
        base = members[0][1]
        for run, oof in members[1:]:
            if not np.array_equal(np.sort(oof.ids), np.sort(base.ids)) or oof.label_names != base.label_names:
                raise StoreError(f"{run.oof_path}: fold map {fm_hash[:12]} but other ids or label names than "
                                 f"{members[0][0].oof_path}")
        tables.append(_table(members, metric, n_boot, seed, no_relation))
    return tables


def incomplete_runs(workdir: str | Path, pattern: str = "*") -> list[str]:
    """'NAME (d/k folds)' for every matching run that has no assembled OOF file yet (not in the table)."""
    out = []
    for run in list_runs(workdir, pattern):
        if run.oof_path.exists():
            continue
        k = int(run.read_config()["config"].get("folds", 0))
        done = sum(run.fold_record(f) is not None for f in range(k))
        out.append(f"{run.name} ({done}/{k} folds)")
    return out


def _aligned(oof: Predictions, ids: np.ndarray) -> Predictions:
    """Rows reordered to ``ids`` (members are joined on ids, never on row order)."""
    if np.array_equal(oof.ids, ids):
        return oof
    pos = {i: n for n, i in enumerate(oof.ids)}
    idx = np.array([pos[i] for i in ids])
    return Predictions(ids, oof.label_names, oof.logits[idx], oof.fold_map_hash, oof.y[idx], oof.folds[idx], None, oof.path)


def _table(members, metric: str, n_boot: int, seed: int, no_relation) -> list[RunRow]:
    ids = members[0][1].ids
    names = members[0][1].label_names
    y = members[0][1].y
    metrics = metrics_for(names, no_relation)
    if metric not in metrics:  # compared by a metric these labels do not define: refused, never replaced
        metric_fn(metric, names, no_relation)  # micro_f1 without a no-relation label: its own message
        raise ConfigError(f"--metric {metric}: defined for labels with directions like 'Cause-Effect(e1,e2)'; "
                          f"these {len(names)} labels have none (choose another --metric)")
    # resampled rows for every metric but AUPRC, resampled within each gold label for AUPRC (every resample keeps
    # every label): the schemes whose intervals cover as they say (kfold.report._intervals)
    weights = {"plain": plain_weights(len(y), n_boot, seed), "stratified": stratified_weights(y, n_boot, seed)}
    fns = {m: metric_fn(m, names, no_relation) for m in metrics}
    extra = {"metric": metric, "majority": majority_accuracy(y), "auprc_over": auprc_labels(y, len(names)),
             "left_out": [] if "micro_f1" in metrics else
             ["micro_f1 (no no-relation label among the labels; name one with --no-relation NAME)"]}

    def scored(member):
        run, oof = member
        oof = _aligned(oof, ids)
        probs = softmax(oof.logits)
        pred = probs.argmax(1)
        # shared by the 4 metrics of a confusion matrix (all resampled by rows)
        cms = confusion(oof.y, pred, len(names)), confusion(oof.y, pred, len(names), weights["plain"])
        scores, ci, dist_of_metric = {}, {}, None
        for m in metrics:
            if fns[m].from_cm is not None:
                scores[m], dist = float(fns[m].from_cm(cms[0])), fns[m].from_cm(cms[1])
            else:
                # AUPRC sums the weights per class per resample (~2.5 ms per 100 resamples and class at 9000 rows):
                # 200 resamples when it is the metric compared by, 100 for its interval column alone
                w = weights[scheme_for(m)]
                w = w if m != "auprc" else w[: min(200 if metric == "auprc" else 100, n_boot)]
                scores[m], dist = fns[m](oof.y, probs), fns[m](oof.y, probs, w)
            ci[m] = bc_interval(scores[m], dist)
            if m == metric:
                dist_of_metric = dist
        per_fold = [fns[metric](oof.y[oof.folds == f], probs[oof.folds == f]) for f in np.unique(oof.folds)]
        minutes, where = _fold_minutes(run)
        row = RunRow(run.name, oof.fold_map_hash, len(ids), scores, ci, float(np.mean(per_fold)),
                     float(np.std(per_fold, ddof=1)) if len(per_fold) > 1 else 0.0, seed_group=seed_group(run.name),
                     fold_minutes=minutes, trained_on=where, extra=extra, pseudo=_pseudo_mode(run))
        return row, dist_of_metric

    # runs scored side by side: only numpy's larger sorts, gathers and sums release the GIL, so on 2 cores this
    # gains little (benchmarks/report_speed.py, 50 runs: 28.0 s against 29.3 s with one worker)
    with ThreadPoolExecutor(max_workers=max(1, min(len(members), os.cpu_count() or 1))) as pool:
        done = list(pool.map(scored, members))
    rows = [row for row, _ in done]
    boots = {row.run: dist for row, dist in done}
    rows.sort(key=lambda r: -sign(metric) * r.scores[metric])
    best = rows[0]
    for r in rows:
        # paired: the same resamples for both runs; ties count half
        diff = sign(metric) * (boots[r.run] - boots[best.run])
        r.win_rate = None if r is best else float(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))
    groups = defaultdict(list)
    for r in rows:
        groups[r.seed_group].append(r)
    for group in groups.values():
        if len(group) > 1:
            spread = float(np.std([g.scores[metric] for g in group], ddof=1))
            for g in group:
                g.seed_std, g.seeds = spread, len(group)
    return rows


def _pseudo_mode(run: RunDir) -> str:
    """``honest`` or ``naive`` for a run trained with pseudo-labels (its config.json's record), else ``""``."""
    record = run.read_config().get("pseudo") if run.config_path.exists() else None
    return str(record.get("folds", "honest")) if isinstance(record, dict) else ""


def _fold_minutes(run: RunDir) -> tuple[float | None, str]:
    """Mean wall minutes per fold, and where the folds trained (``cpu``, ``gpu 0, gpu 1 on 2 nodes, 1 retried``),
    from the completion records the summary holds."""
    summary = run.summary_path
    if not summary.exists():
        return None, "-"
    folds = read_json(summary).get("folds", [])
    walls = [f.get("wall_seconds") for f in folds if f.get("wall_seconds") is not None]
    devices = sorted({f["device"] for f in folds if f.get("device")})
    nodes = {f["node"] for f in folds if f.get("node")}
    retried = sum(1 for f in folds if (f.get("attempt") or 1) > 1)
    where = ", ".join(devices) + (f" on {len(nodes)} nodes" if len(nodes) > 1 else "") if devices else "-"
    where += f", {retried} retried" if retried else ""
    return (float(np.mean(walls) / 60.0) if walls else None), where


def _cells(r: RunRow, metrics: list[str], metric: str) -> list[str]:
    out = [r.run + (f" (pseudo, {r.pseudo})" if r.pseudo else "")]
    for m in metrics:
        lo, hi = r.ci[m]
        out.append(f"{r.scores[m]:.2f} [{lo:.2f}, {hi:.2f}]")
    out.append(f"{r.fold_mean:.2f} ± {r.fold_std:.2f}")
    out.append(f"± {r.seed_std:.2f} ({r.seeds})" if r.seed_std is not None else "-")
    out.append("best" if r.win_rate is None else f"{r.win_rate * 100:.0f}%")
    out.append(f"{r.fold_minutes:.1f}" if r.fold_minutes is not None else "-")
    out.append(r.trained_on)
    return out


def _header(metrics: list[str], metric: str, auprc_over: tuple[int, int] | None = None) -> list[str]:
    return (["run"] + [f"{metric_name(m, auprc_over)} [95% CI]" for m in metrics]
            + [f"{metric} per fold", f"{metric} seed sd", "P(beats best)", "min/fold", "trained on"])


def table_notes(rows: list[RunRow]) -> list[str]:
    """What a table's numbers are: the interval method, over how many labels AUPRC is taken (and why that can
    differ from the official KLUE code), and the metric columns left out."""
    present, total = rows[0].extra["auprc_over"]
    out = [f"95% intervals: {INTERVAL_METHOD}.",
           f"AUPRC: the mean over the {present} of {total} labels present in the gold labels"
           + ("." if present == total else "; the official KLUE code averages over all labels, where a label without "
              "rows has no precision-recall curve, so it would differ here.")]
    out += [f"Not shown: {what}." for what in rows[0].extra["left_out"]]
    modes = {r.pseudo for r in rows} - {""}
    if modes:
        out.append("(pseudo, ...): trained with pseudo-labelled test rows (kfold run --pseudo-from); honest: each fold's "
                   "from teachers that never saw its validation rows"
                   + ("; naive: from the teachers' full-data predictions, which saw them, so its OOF scores are "
                      "optimistic" if "naive" in modes else "") + ".")
    return out


def render(tables: list[list[RunRow]], metric: str) -> tuple[str, str, str]:
    """(terminal text, Markdown, CSV) of the report tables."""
    term, md = [], []
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["fold_map", "run", "n"] + [f"{m}{s}" for m in METRICS for s in ("", "_lo", "_hi")]
                    + ["fold_mean", "fold_std", "seed_std", "seeds", "win_rate", "minutes_per_fold", "auprc_labels",
                       "trained_on", "pseudo"])
    for rows in tables:
        metrics = [m for m in METRICS if m in rows[0].scores]
        chosen = rows[0].extra["metric"]
        head = _header(metrics, chosen, rows[0].extra["auprc_over"])
        body = [_cells(r, metrics, chosen) for r in rows]
        title = (f"fold map {rows[0].fold_map_hash[:12]} ({rows[0].n} OOF rows, majority-class accuracy "
                 f"{rows[0].extra['majority']:.2f}); sorted by {chosen}; P(beats best) = share of paired bootstrap "
                 f"resamples on which the run beats the best")
        widths = [max(len(x) for x in col) for col in zip(head, *body)]
        term.append(title)
        term.append("  ".join(h.ljust(w) for h, w in zip(head, widths)))
        term.extend("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in body)
        term.extend(table_notes(rows) + [""])
        md.append(f"**{title}**\n")
        md.append("| " + " | ".join(head) + " |")
        md.append("|" + "|".join("---" for _ in head) + "|")
        md.extend("| " + " | ".join(row) + " |" for row in body)
        md.extend([""] + table_notes(rows) + [""])
        for r in rows:
            cells = []
            for m in METRICS:
                cells += [f"{r.scores[m]:.4f}", f"{r.ci[m][0]:.4f}", f"{r.ci[m][1]:.4f}"] if m in r.scores else ["", "", ""]
            writer.writerow([r.fold_map_hash, r.run, r.n] + cells
                            + [f"{r.fold_mean:.4f}", f"{r.fold_std:.4f}", "" if r.seed_std is None else f"{r.seed_std:.4f}",
                               r.seeds, "" if r.win_rate is None else f"{r.win_rate:.4f}",
                               "" if r.fold_minutes is None else f"{r.fold_minutes:.2f}",
                               "{}/{}".format(*r.extra["auprc_over"]), r.trained_on, r.pseudo])
    if len(tables) > 1:
        note = f"note: {len(tables)} fold maps in this workdir; runs are only compared within one fold map."
        term.append(note)
        md.append(note)
    return "\n".join(term), "\n".join(md) + "\n", buf.getvalue()


def write_report(tables: list[list[RunRow]], metric: str, out_dir: str | Path) -> tuple[Path, Path, str]:
    """Write report.md and report.csv under ``out_dir``; returns their paths and the terminal text."""
    text, md, table_csv = render(tables, metric)
    out_dir = Path(out_dir)
    md_path = write_text_atomic(out_dir / "report.md", md)
    csv_path = write_text_atomic(out_dir / "report.csv", table_csv)
    return md_path, csv_path, text
