"""``report/report.html``: one self-contained page (images embedded, no JavaScript, no network) assembled from
the run store. Numbers come from ``kfold.report._compute``, pictures from ``kfold.report._draw``; this module only
lays them out. Every section is always there: with its content, or with one line saying why it is empty."""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path
from typing import Callable

import numpy as np

from kfold.core.metrics import metric_name
from kfold.core.store import RunDir, load_predictions
from kfold.core.textio import write_text_atomic

from . import _draw as draw
from ._compute import (BlendInfo, DataInfo, LabelScore, blends, confusions, data_info, likely_label_errors, per_label,
                       same_fold_map, suspects_csv, training_curves)

#: (id, title, reading guide) of every section, in page order.
SECTIONS = (
    ("runs", "Runs", "Each run's out-of-fold score with its 95% interval; a run whose interval overlaps the shaded "
                     "best interval is not clearly worse."),
    ("labels", "Per label", "Precision, recall and F1 per label on the OOF predictions, worst F1 first: where the "
                            "runs fail."),
    ("confusions", "Confusions", "Row i shows where the rows of gold label i went (rows sum to 100%); the list "
                                 "names the largest mix-ups."),
    ("curves", "Training curves", "Loss and validation score per epoch for every fold: still rising at the last "
                                  "epoch means more epochs may help."),
    ("suspects", "Likely label errors", "Training rows whose OOF prediction confidently contradicts their label "
                                        "(confident learning): check and relabel them."),
    ("blends", "Blends", "Each leaderboard file of this workdir: its members and weights, its honest OOF score, "
                         "and its predicted labels against the training labels."),
    ("data", "Data", "What the runs were trained on: labels, token lengths against --max-len, cropped and "
                     "repaired rows, the fold map."),
    ("studies", "Studies", "Optuna studies in this workdir (tuning.db): history, parameter importance, best "
                           "trial."),
)
_CSS = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:1rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;font-size:.8rem;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.15rem .4rem;
text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%;display:block;margin:.5rem 0}
.guide{color:#555;font-style:italic}.absent{color:#a33}nav a{margin-right:.8rem}section{break-inside:avoid-page}
@media print{nav{display:none}body{max-width:none}}"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(head: list[str], rows: list[list]) -> str:
    cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _absent(reason: str) -> str:
    return f'<p class="absent">Not shown: {html.escape(reason)}</p>'


def _label_rows(rows: list[LabelScore]) -> list[list]:
    return [[r.label, f"{r.precision:.2f}", f"{r.recall:.2f}", f"{r.f1:.2f}", r.support] for r in rows]


def build_html(workdir: str | Path, tables, metric: str, out_dir: str | Path, *, curves: int | None = 12,
               log: Callable[[str], None] = print) -> tuple[Path, Path | None]:
    """Write ``report.html`` (and ``suspect_labels.csv`` when there are OOF predictions) under ``out_dir``.

    ``tables`` are ``build_report``'s rows per fold map (best run first); ``curves`` is how many of each
    map's best runs get training curves (None: all; each chart costs a few tenths of a second to draw).
    Returns the two paths.
    """
    workdir, out_dir = Path(workdir), Path(out_dir)
    body: dict[str, str] = {}
    best_row = tables[0][0] if tables else None
    best = RunDir(workdir / "runs" / best_row.run) if best_row else None
    oof = load_predictions(best.oof_path) if best else None
    names = oof.label_names if oof is not None else ()
    body["runs"] = _runs(tables, metric) if tables else _absent("no complete run in this workdir")
    blend_list = blends(workdir, names) if oof is not None else []
    same_map = same_fold_map(blend_list, oof) if oof is not None else []
    body["labels"] = _labels(best_row.run, oof, same_map) if oof is not None else _absent("no OOF predictions")
    if oof is not None:
        c = confusions(oof.y, oof.logits.argmax(1), names)
        body["confusions"] = (f"<p>Best run {html.escape(best_row.run)}.</p>" + _img(draw.confusion_heatmap(c), "confusion matrix")
                              + _table(["gold label", "predicted as", "rows", "% of the gold label"],
                                       [[g, p, n, f"{s:.0f}%"] for g, p, n, s in c.top]))
    else:
        body["confusions"] = _absent("no OOF predictions")
    body["curves"] = _curves(workdir, tables, metric, curves)
    suspects_path = None
    if oof is not None:
        body["suspects"], csv_text = _suspects(best, oof, same_map)
        suspects_path = write_text_atomic(out_dir / "suspect_labels.csv", csv_text)
    else:
        body["suspects"] = _absent("no OOF predictions")
    body["blends"] = _blends(blend_list, names, oof) if blend_list else _absent(
        f"no leaderboard file with a manifest in {workdir / 'submissions'} (write one with `ensemble blend`)")
    info = data_info(best) if best else None
    body["data"] = _data(info) if info else _absent("the best run has no data record (runs made before this version "
                                                    "did not keep one)" if best else "no complete run")
    body["studies"] = _studies(workdir)
    if any(not n.isascii() for n in names) and draw.cjk_font() is None:
        body["labels"] = ('<p class="absent">Charts draw these label names as empty boxes: no font with their '
                          "glyphs is installed (e.g. Debian's fonts-nanum or fonts-noto-cjk); the tables are "
                          "unaffected.</p>") + body["labels"]
    nav = "".join(f'<a href="#{sid}">{title}</a>' for sid, title, _ in SECTIONS)
    sections = "".join(f'<section id="{sid}"><h2>{title}</h2><p class="guide">{html.escape(guide)}</p>{body[sid]}</section>'
                       for sid, title, guide in SECTIONS)
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>rekfold report: {html.escape(str(workdir))}'
            f"</title><style>{_CSS}</style></head><body><h1>Report: {html.escape(str(workdir))}</h1>"
            f"<p>Built {time.strftime('%Y-%m-%d %H:%M')} from the run store; metric {html.escape(metric)}.</p>"
            f"<nav>{nav}</nav>{sections}</body></html>\n")
    return write_text_atomic(out_dir / "report.html", page), suspects_path


def _runs(tables, metric: str) -> str:
    from ._table import _cells, _header, table_notes

    parts = []
    for rows in tables:
        m = rows[0].extra["metric"]
        metrics = [k for k in rows[0].scores]
        parts.append(f"<h3>Fold map {html.escape(rows[0].fold_map_hash[:12])} ({rows[0].n} OOF rows, majority class "
                     f"{rows[0].extra['majority']:.2f})</h3>")
        parts.append(_table(_header(metrics, m, rows[0].extra["auprc_over"]), [_cells(r, metrics, m) for r in rows]))
        parts.append("".join(f"<p>{html.escape(note)}</p>" for note in table_notes(rows)))
        parts.append(_img(draw.forest([r.run for r in rows], [r.scores[m] for r in rows], [r.ci[m][0] for r in rows],
                                      [r.ci[m][1] for r in rows], metric_name(m, rows[0].extra["auprc_over"])),
                          f"forest plot of {m}"))
    return "".join(parts)


def _labels(best: str, oof, same_map: list[BlendInfo]) -> str:
    head = ["label", "precision", "recall", "F1", "support"]
    rows = per_label(oof.y, oof.logits.argmax(1), oof.label_names)
    parts = [f"<h3>Best run: {html.escape(best)}</h3>", _table(head, _label_rows(rows)),
             _img(draw.label_bars(rows, f"F1 per label, {best}"), "F1 per label")]
    base = {r.label: r.f1 for r in rows}
    for b in same_map:
        brows = per_label(b.oof.y, b.oof.logits.argmax(1), b.oof.label_names)
        change = sorted(brows, key=lambda r: -abs(r.f1 - base[r.label]))[:5]
        parts += [f"<h3>Blend {html.escape(b.file)} ({html.escape(b.method)}, honest OOF)</h3>",
                  _table(head, _label_rows(brows)), _img(draw.label_bars(brows, f"F1 per label, {b.file}"), "F1 per label"),
                  "<p>Labels whose F1 the blend changes most: " + ", ".join(
                      html.escape(f"{r.label} {r.f1 - base[r.label]:+.2f}") for r in change) + "</p>"]
    return "".join(parts)


def _curves(workdir: Path, tables, metric: str, limit: int | None) -> str:
    parts, left = [], []
    for rows in tables:
        for n, r in enumerate(rows):
            if limit is not None and n >= limit:
                left.append(r.run)
                continue
            folds = training_curves(RunDir(workdir / "runs" / r.run), metric)
            if folds and any(c.epochs for c in folds):
                scored = any(m is not None for c in folds for m in c.metric)
                parts.append(_img(draw.curves(r.run, folds, metric, scored), f"training curves of {r.run}"))
                if not scored:  # no chart of nothing: the reason instead
                    parts.append(f"<p>{html.escape(r.run)}: validation {html.escape(metric)} not drawn: the folds "
                                 "were scored once, after the weight average, not after each epoch "
                                 "(--no-epoch-scores).</p>")
    if not parts:
        return _absent("no fold recorded its epochs")
    if left:
        parts.append(f"<p>Drawn for the {limit} best runs of each fold map; not drawn for {len(left)} more "
                     f"(`kfold report --curves all` draws every run's): {html.escape(', '.join(left))}.</p>")
    return "".join(parts)


def _suspects(best: RunDir, oof, same_map: list[BlendInfo]) -> tuple[str, str]:
    found, what = likely_label_errors(best.name, oof, same_map)
    sentences, why = _sentences(best)
    rows = [[s.id, sentences.get(s.id, ""), s.given, s.predicted, f"{s.p_predicted:.2f}", f"{s.p_given:.2f}"]
            for s in found[:30]]
    note = f"<p>{len(found)} of {len(oof.ids)} training rows flagged, from the {html.escape(what)}; the 30 most " \
           "confident below, every one in suspect_labels.csv.</p>" + (f"<p>{html.escape(why)}</p>" if why else "")
    table = _table(["id", "sentence ([E1] subject, [E2] object)", "given label", "predicted", "p(predicted)", "p(given)"],
                   rows) if rows else "<p>No row is flagged.</p>"
    return note + table, suspects_csv(found, sentences)


def _sentences(run: RunDir) -> tuple[dict[str, str], str]:
    """Marked sentences of the run's training file by id, or ({}, why not)."""
    from kfold.core.config import config_from_run
    from kfold.core.errors import ToolkitError
    from kfold.data import read_dataset, read_settings
    from kfold.encoding import mark

    try:
        cfg = config_from_run(run.read_config())
        data = cfg.data or str(run.root.parent.parent / "demo-data" / "train.tsv")  # no --data: the demo data
        ds = read_dataset(data, cfg.labels or None, role="train", **read_settings(cfg))
    except (ToolkitError, TypeError) as exc:  # a config this version cannot read, a data file moved away
        return {}, f"sentences not shown: {exc}"
    return {ex.id: mark(ex, "entity_marker").text for ex in ds.examples}, ""


def _blends(blend_list: list[BlendInfo], names, oof) -> str:
    train = np.bincount(oof.y, minlength=len(names)) / len(oof.y) * 100
    parts = []
    for b in blend_list:
        parts.append(f"<h3>{html.escape(b.file)}</h3><p>{html.escape(b.method)} blend of {len(b.weights)} runs "
                     f"(test logits from {html.escape(b.test_source)}); honest OOF {html.escape(b.metric)} "
                     f"{b.honest:.2f} against the best member {html.escape(b.best_member)} {b.best_member_score:.2f} "
                     f"({b.honest - b.best_member_score:+.2f}).</p>")
        parts.append(_img(draw.weights(b), "blend weights"))
        if b.predicted_counts is not None:
            total = sum(b.predicted_counts.values())
            pred = [b.predicted_counts.get(n, 0) / total * 100 for n in names]
            parts.append(_img(draw.distribution(list(names), pred, list(train), ("predicted in the file", "training"),
                                                "% of rows"), "predicted against training label distribution"))
        else:
            parts.append(_absent(f"{b.file} itself is missing, so its predicted labels cannot be counted"))
    return "".join(parts)


def _data(info: DataInfo) -> str:
    counts = sorted(info.label_counts.items(), key=lambda kv: -kv[1])
    fm = info.fold_map
    parts = [f"<p>{html.escape(info.path)}: {info.rows} rows, {len(counts)} labels. Fold map "
             f"{html.escape(str(fm.get('path', '?')))} (k={fm.get('k', '?')}, seed {fm.get('seed', '?')}, hash "
             f"{html.escape(str(fm.get('hash', ''))[:12])}).</p>",
             _img(draw.distribution([k for k, _ in counts], [v for _, v in counts], None, ("rows", ""), "rows"),
                  "label counts")]
    if info.token_lengths is not None:
        q = np.percentile(info.token_lengths, [50, 95])
        parts.append(f"<p>Tokens per row: median {q[0]:.0f}, 95th percentile {q[1]:.0f}, max "
                     f"{info.token_lengths.max()}; {info.one_window} rows cropped to one window and {info.two_windows} "
                     f"split into two windows at --max-len {info.max_len}; {info.repairs} entity offsets repaired"
                     + (f" (listed in {html.escape(info.repairs_csv)})" if info.repairs_csv else "")
                     + f"; {info.overlaps} rows with overlapping subject and object spans, marked at their positions"
                     + (f" (listed in {html.escape(info.lists['overlaps'])})" if "overlaps" in info.lists else "")
                     + f"; {info.skipped_rows} training rows left out by --bad-rows skip"
                     + (f" (listed in {html.escape(info.lists['skipped'])})" if "skipped" in info.lists else "") + ".</p>")
        parts.append(_img(draw.histogram(info.token_lengths, info.max_len, "tokens per row (before cropping)"),
                          "token length histogram"))
    return "".join(parts)


def _studies(workdir: Path) -> str:
    db = workdir / "tuning.db"
    if not db.exists():
        return _absent(f"no {db.name} in this workdir (made by `tuning search`)")
    try:
        import optuna

        from tuning import study_figures
    except ImportError:
        return _absent("optuna is not installed (pip install 'rekfold[tune]')")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{db.resolve()}"
    parts = []
    for name in optuna.study.get_all_study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage)
        try:
            best = study.best_trial
            line = f"best trial {best.number}: {best.value:.3f} " + " ".join(f"{k}={v:.4g}" if isinstance(v, float)
                                                                            else f"{k}={v}" for k, v in best.params.items())
        except ValueError:
            line = "no complete trial yet"
        parts.append(f"<h3>{html.escape(name)}</h3><p>{html.escape(line)}</p>")
        parts += [_img(draw.figure_png(fig), f"{name} {kind}") for kind, fig in study_figures(study, ("history", "importance"))]
    return "".join(parts) or _absent(f"{db.name} holds no study")
