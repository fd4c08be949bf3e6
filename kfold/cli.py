"""The ``kfold`` command: run, auto, report, predict, variants, presets, check-data, pretrain, demo-data."""

from __future__ import annotations

import argparse
from pathlib import Path

from kfold.core.errors import ConfigError, run_command


def _log(msg: str) -> None:
    print(msg, flush=True)


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: found '{text}', expected comma-separated integers like 0,2") from None


#: The run settings `kfold pretrain` takes: how the files are read, the backbone and marker, and the speed settings.
PRETRAIN_KEYS = ("data", "labels", "format", "columns", "offsets", "repair_window", "too_far", "overlap", "bad_rows",
                 "backbone", "marker", "max_len", "precision", "attn_implementation", "length_grouping", "threads", "device")
#: The settings `kfold check-data` takes: how the file is read and how it would be tokenised.
CHECK_KEYS = ("labels", "format", "columns", "offsets", "repair_window", "no_relation", "too_far", "overlap", "bad_rows",
              "backbone", "marker", "max_len")


def _parser() -> argparse.ArgumentParser:
    from kfold.core.config import CHOICES, add_config_flags
    from kfold.core.metrics import METRICS
    from submissions import FORMATS as SUBMISSION_FORMATS

    ap = argparse.ArgumentParser(prog="kfold", description="Stratified k-fold training of relation-extraction variants "
                                 "with out-of-fold logits for every run.")
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train variants x backbones x seeds over one fold map (resumable)",
                         description="Without --data, runs on generated demo data with the packaged MiniLM.")
    run.add_argument("--variants", default=None, help="comma-separated variant names (see `kfold variants`)")
    run.add_argument("--backbones", default=None, help="comma-separated model ids or local paths; 'minilm' is packaged")
    run.add_argument("--seeds", default=None, help="training seeds, e.g. 1,2,3 (the fold map uses --fold-seed)")
    run.add_argument("--fold", default=None, help="only these folds, e.g. 0,2 (spread folds over processes)")
    run.add_argument("--workdir", default="runs", help="run store root (default: runs)")
    run.add_argument("--config", default=None, help="JSON or TOML config file; flags override it")
    run.add_argument("--preset", default=None, help="a shipped preset (see `kfold presets`); --config and flags override it")
    run.add_argument("--tag", default="", help="suffix for the run names (instead of the settings that differ)")
    add_config_flags(run, skip=())

    auto = sub.add_parser("auto", help="the best leaderboard file within a time budget: check, probe, plan, train, "
                          "blend, write, check (resumable)",
                          description="Checks the data, measures this machine on it, plans the runs that fit --budget "
                          "(strongest first, then diverse members), trains them re-planning after each, blends the "
                          "finished runs by the best honest (nested-CV) method and writes and checks the file. "
                          "Without --data: the generated demo data. The same command again resumes; a larger "
                          "--budget adds runs.")
    auto.add_argument("--budget", required=True, help="wall time for the whole command, e.g. 10m, 1.5h, 600s")
    auto.add_argument("--format", default="auto", choices=("auto",) + SUBMISSION_FORMATS,
                      help="leaderboard file format (auto: semeval for SemEval data, klue for KLUE, else pstage2)")
    auto.add_argument("--out", default=None, help="the leaderboard file (default: WORKDIR/submissions/auto.csv/.txt)")
    auto.add_argument("--workdir", default="runs", help="run store root (default: runs)")
    auto.add_argument("--preset", default=None, help="a shipped preset for the runs (see `kfold presets`)")
    auto.add_argument("--config", default=None, help="JSON or TOML config file; flags override it")
    auto.add_argument("--data-format", dest="format_in", default=None, choices=CHOICES["format"],
                      help="input format of --data/--test (default: auto)")
    auto.add_argument("--blend-metric", default="auto", choices=("auto",) + METRICS,
                      help="metric the blend method is chosen on (auto: semeval for directed labels, else accuracy)")
    auto.add_argument("--test-source", default=None, choices=("folds", "refit", "both"),
                      help="test logits of each run: its fold models, its refit (needs --refit), or both")
    auto.add_argument("--max-runs", type=int, default=12, help="consider at most this many runs (default 12)")
    auto.add_argument("--dry-run", action="store_true", help="probe and print the plan; train nothing")
    add_config_flags(auto, skip=("format",))

    rep = sub.add_parser("report", help="OOF results table with bootstrap intervals, fold and seed spread")
    rep.add_argument("--workdir", default="runs")
    rep.add_argument("--runs", default="*", help="glob over run names (default: all)")
    rep.add_argument("--metric", default="accuracy", help="metric to sort and compare by")
    rep.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    rep.add_argument("--no-relation", default=None, help="label left out of micro-F1 (default: detected)")
    rep.add_argument("--out", default=None, help="folder for report.md, report.csv, report.html and suspect_labels.csv "
                     "(default: WORKDIR/report)")
    rep.add_argument("--open", action="store_true", help="open report.html in the default browser, when there is one")
    rep.add_argument("--curves", default="12", help="training curves drawn per fold map: the N best runs' (default 12), "
                     "or 'all'")
    rep.add_argument("--to", default="", help="also send the runs to these trackers afterwards (mlflow, tensorboard, "
                     "wandb; comma-separated): each run's config, its parts' epochs, OOF scores, summary.json and this "
                     "report.html, reattaching to the tracker run a --report-to run made (its points are sent again)")
    rep.add_argument("--mlflow-uri", default="", help="with --to mlflow: the tracking URI (default: "
                     "MLFLOW_TRACKING_URI, else MLflow's local default)")
    rep.add_argument("--wandb-project", default="rekfold", help="with --to wandb: the W&B project")

    pred = sub.add_parser("predict", help="predict a new test file with a run's saved fold models (--save-models)")
    pred.add_argument("run", help="run folder, e.g. runs/runs/split-minilm-s1")
    pred.add_argument("--test", required=True, help="the new test file")
    pred.add_argument("--out", default=None, help="output .npz (default: RUN/predict-<test stem>.npz)")

    sub.add_parser("variants", help="list the registered variants")
    sub.add_parser("presets", help="list the shipped presets (measured settings per backbone and machine)")

    chk = sub.add_parser("check-data", help="list every problem of a data file; labels and token lengths",
                         description="Lists every problem (exit 2 when any remains), the offsets repaired, the label "
                         "distribution and the token lengths for a backbone and marker. Writes nothing but the "
                         "repairs list (WORKDIR/data/repairs-*.csv).")
    chk.add_argument("data", help="the data file")
    chk.add_argument("--role", default="train", choices=("train", "test", "blind"),
                     help="train: every row labelled; test: all blind or all labelled; blind: no labels")
    chk.add_argument("--workdir", default="runs", help="where the repairs list goes (default: runs)")
    chk.add_argument("--config", default=None, help="JSON or TOML config file (the settings of the run to check for)")
    chk.add_argument("--preset", default=None, help="a shipped preset (see `kfold presets`)")
    chk.add_argument("--all", action="store_true", help="every problem, repair and two-window row, not the first 50")
    chk.add_argument("--no-tokens", dest="tokens", action="store_false",
                     help="skip the token lengths (no tokenizer is loaded)")
    add_config_flags(chk, only=CHECK_KEYS)

    pre = sub.add_parser("pretrain", help="masked-LM training of a backbone on the task's marked sentences (TAPT); "
                         "writes a backbone folder for --backbone PATH (resumable by epoch)",
                         description="Continues the backbone's masked-language-model training on the training file's "
                         "sentences (and with --test the test file's), marked and cropped exactly as `kfold run` "
                         "encodes them, markers included in what is masked; labels are not used. Writes OUT (weights, "
                         "config, the tokenizer with the marker tokens, and a record: files and hashes, steps, loss per "
                         "epoch); the same command resumes after the last complete epoch. Without --data: the "
                         "generated demo data.")
    pre.add_argument("--out", required=True, help="the backbone folder to write (refused when it holds anything else)")
    pre.add_argument("--config", default=None, help="JSON or TOML config file: its data, backbone, marker, max length, "
                     "speed and cluster keys are used; its fine-tuning keys (epochs, lr, test, ...) are not (the flags "
                     "here set this command's)")
    pre.add_argument("--preset", default=None, help="a shipped preset (its backbone, marker and max length)")
    pre.add_argument("--test", default=None,
                     help="also train on this file's sentences (its labels are not used; the record says so)")
    pre.add_argument("--epochs", type=int, default=3, help="passes over the sentences (default: 3)")
    pre.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (linear warmup, then decay; default: 1e-4)")
    pre.add_argument("--batch-size", type=int, default=32, help="rows per optimizer step (default: 32)")
    pre.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (less memory, same update)")
    pre.add_argument("--mask-prob", type=float, default=0.15, help="share of each row's words masked (default: 0.15)")
    pre.add_argument("--no-whole-word", dest="whole_word", action="store_false",
                     help="mask tokens independently (default: whole words where the vocabulary marks word pieces)")
    pre.add_argument("--warmup-ratio", type=float, default=0.06, help="share of steps warming up (default: 0.06)")
    pre.add_argument("--seed", type=int, default=1, help="seed of the masks, order and dropout (default: 1)")
    pre.add_argument("--cluster", default=None, metavar="STR",
                     help="where the epochs train: none = in this process; local = a Ray runtime of its own on this "
                     "machine; HOST:PORT = that Ray cluster: each epoch a part on one slot (a GPU where the cluster "
                     "has them, else a whole node's cores unless a config file sets cpus_per_fold) whose state comes "
                     "back here and is saved here, so it resumes with or without the cluster; an epoch whose worker "
                     "dies is submitted again (retries); auto = the cluster in RAY_ADDRESS if set, else none "
                     "(default: a config file's cluster, else auto)")
    add_config_flags(pre, only=PRETRAIN_KEYS)

    demo = sub.add_parser("demo-data", help="write the generated demo data set")
    demo.add_argument("--out", default="demo-data")
    demo.add_argument("--n-train", type=int, default=600)
    demo.add_argument("--n-test", type=int, default=200)
    demo.add_argument("--seed", type=int, default=2021)
    return ap


def _cmd_run(args) -> int:
    from kfold.core.config import make_config, overrides_from_args
    from kfold.core.variants import parse_variants
    from kfold.training import run_many

    overrides = overrides_from_args(args)
    base = make_config(args.config, overrides, args.preset)
    variants = parse_variants(args.variants) if args.variants else [base.variant]
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()] if args.backbones else [base.backbone]
    seeds = _int_list(args.seeds, "--seeds") if args.seeds else [base.seed]
    folds = _int_list(args.fold, "--fold") if args.fold else None
    from kfold.training import pick_device, precision_note

    note = precision_note(base.precision, pick_device(base.device))  # once: precision/device are not per variant
    if note:
        _log(note)
    # every run's parts in one queue: with --cluster, every slot stays busy across run boundaries
    cfgs = [base.replace(variant=variant, backbone=backbone, seed=seed)
            for backbone in backbones for variant in variants for seed in seeds]
    from ensemble import load_teachers

    results = list(zip(cfgs, run_many(cfgs, args.workdir, folds=folds, tag=args.tag, log=_log, teachers=load_teachers)))
    from kfold.core.metrics import format_scores

    _log("")
    for cfg, out in results:
        if out.complete:
            _log(f"{out.run.name}: OOF {format_scores(out.oof_scores, out.auprc_over)}  ->  {out.run.root}")
        else:
            missing = sorted(set(range(cfg.folds)) - set(out.trained) - set(out.skipped))
            _log(f"{out.run.name}: folds {missing} not complete yet (another process, or not in --fold); "
                 "OOF is assembled when the last fold finishes")
    _log(f"majority-class accuracy on this data: {results[-1][1].majority_accuracy:.2f}")
    return 0


def _leaderboard_format(cfg) -> str:
    """The leaderboard format of the data's own benchmark: semeval, klue, generic, else the competition's."""
    from kfold.core.textio import read_text
    from kfold.data import detect_format

    if not cfg.data:
        return "pstage2"  # the demo data is written in the source competition's format
    kind = cfg.format if cfg.format != "auto" else detect_format(Path(cfg.data), read_text(cfg.data))
    return {"semeval": "semeval", "klue": "klue", "generic": "generic"}.get(kind, "pstage2")


def _cmd_auto(args) -> int:
    from ensemble import DEFAULT_TEST_SOURCE
    from kfold.auto import AutoSettings, command_line, parse_budget, run_auto
    from kfold.core.config import chosen_keys, load_config_file, make_config, overrides_from_args

    budget = parse_budget(args.budget)
    overrides = overrides_from_args(args, skip=("format",))
    if args.format_in:
        overrides["format"] = args.format_in
    # auto scores each fold once, after the weight average (no epoch is chosen), unless asked for curves; and
    # refits every run on all rows for the test file (README: measured on SemEval), unless --no-refit
    overrides.setdefault("epoch_scores", False)
    overrides.setdefault("refit", True)
    base = make_config(args.config, overrides, args.preset)
    if base.epoch_scores is False and not base.average_epochs:
        base = base.replace(epoch_scores=True)  # an epoch is chosen on per-epoch scores
    fmt = args.format if args.format != "auto" else _leaderboard_format(base)
    # without refits only the fold models predict the test rows
    source = args.test_source or (DEFAULT_TEST_SOURCE if base.refit else "folds")
    if source != "folds" and not base.refit:
        raise ConfigError(f"--test-source {source} needs --refit (a model refit on every row per run)")
    if args.max_runs < 1:
        raise ConfigError(f"--max-runs {args.max_runs}: expected 1 or more")
    settings = AutoSettings(base=base, budget=budget, fmt=fmt, out=args.out or "", workdir=args.workdir,
                            blend_metric=args.blend_metric, test_source=source, max_runs=args.max_runs,
                            fixed_folds=args.folds is not None or "folds" in (load_config_file(args.config) if args.config else {}),
                            dry_run=args.dry_run, command=command_line(),
                            backbone_chosen="backbone" in chosen_keys(args.config, overrides, args.preset))
    result = run_auto(settings, log=_log)
    if not args.dry_run:
        _log(f"done in {result.seconds / 60:.1f} min of the {budget / 60:.1f} min budget: {len(result.trained)} run(s) "
             f"trained now, {len(result.members)} blended by {result.method}" + (f" -> {result.path}" if result.path else ""))
    return 0


def _cmd_report(args) -> int:
    from kfold.report import build_report, incomplete_runs, write_report
    from kfold.tracking import check_trackers

    check_trackers(args.to)  # a missing tracker package is refused before the report is built

    tables = build_report(args.workdir, args.runs, args.metric, args.bootstrap, no_relation=args.no_relation)
    unfinished = incomplete_runs(args.workdir, args.runs)
    if unfinished:
        _log(f"not in the table, folds still missing (rerun their command to finish): {', '.join(unfinished)}")
    if not tables:
        raise ConfigError(f"{args.workdir}: no complete runs match '{args.runs}' (run `kfold run` first)")
    out = Path(args.out or Path(args.workdir) / "report")
    md, table_csv, text = write_report(tables, args.metric, out)
    _log(text)
    from kfold.report import build_html

    page, suspects = build_html(args.workdir, tables, args.metric, out, curves=_curves_limit(args.curves), log=_log)
    _log(f"wrote {md}, {table_csv}" + (f", {suspects}" if suspects else "") + f" and {page}")
    if args.to:
        _send_report(args, page)
    if args.open:
        import webbrowser

        if not webbrowser.open(page.resolve().as_uri()):
            _log("no browser found; open the file above by hand")
    return 0


def _send_report(args, page: Path) -> None:
    """``kfold report --to``: the workdir's runs and the report page to the trackers."""
    from kfold.core.store import list_runs
    from kfold.tracking import open_trackers, upload_workdir

    trackers = open_trackers(args.to, args.workdir, log=_log, mlflow_uri=args.mlflow_uri,
                             wandb_project=args.wandb_project)  # flags of this command, not a run's config
    if trackers is None:
        return
    try:
        sent = upload_workdir(trackers, args.workdir, list_runs(args.workdir, args.runs), [page], log=_log)
    finally:
        trackers.close()
    working = [b.name for b in trackers.backends if b.name not in trackers.failed]
    if working:
        _log(f"sent {sent} run(s) and {page.name} to {', '.join(working)}")


def _curves_limit(value: str) -> int | None:
    """--curves: a count of runs, or None for 'all'."""
    if value == "all":
        return None
    if not value.isdigit():
        raise ConfigError(f"--curves: found '{value}', expected a number of runs or 'all'")
    return int(value)


def _cmd_predict(args) -> int:
    from kfold.training import predict_run

    path = predict_run(args.run, args.test, args.out, log=_log)
    _log(f"wrote {path} (blend it with: ensemble blend --test-name {path.name})")
    return 0


def _cmd_variants(_args) -> int:
    from kfold.core.variants import COMBINES, list_variants

    for v in list_variants():
        src = f"  [source table: {v.source}]" if v.source else ""
        _log(f"{v.name:<13} {v.help}{src}")
        _log(f"{'':<13} head={v.head} combine={COMBINES[v.combine]} share={v.share} act={v.activation} pool={v.pool}")
    _log("\nflags for the other rows of the source table: --label-smoothing 0.05, --marker typed_entity_marker_punct, "
         "--batch-size 8, --max-len 250, --activation gelu, --pool start")
    return 0


def _cmd_presets(_args) -> int:
    from kfold.core.config import PRESET_DIR, list_presets

    for name, line in list_presets().items():
        _log(f"{name:<12} {line}")
    _log(f"\nuse: kfold run --preset NAME (flags and --config override it); files in {PRESET_DIR}")
    return 0


def _cmd_check(args) -> int:
    from kfold.core.config import make_config, overrides_from_args
    from kfold.encoding import check_data

    cfg = make_config(args.config, overrides_from_args(args), args.preset)
    return check_data(args.data, cfg, role=args.role, workdir=args.workdir, show_all=args.all, tokens=args.tokens, log=_log)


def _cmd_pretrain(args) -> int:
    from kfold.core.config import make_config, overrides_from_args
    from kfold.training import PretrainSettings, pick_device, precision_note, run_pretrain

    # test sentences only with --test on the command line (a run's config file may name a test file)
    cfg = make_config(args.config, overrides_from_args(args), args.preset).replace(test=args.test or "")
    settings = PretrainSettings(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum,
                                mask_prob=args.mask_prob, whole_word=args.whole_word, warmup_ratio=args.warmup_ratio,
                                seed=args.seed)
    note = precision_note(cfg.precision, pick_device(cfg.device))
    if note:
        _log(note)
    run_pretrain(cfg, args.out, settings, use_test=args.test is not None, log=_log)
    return 0


def _cmd_demo(args) -> int:
    from kfold.data import write_demo_data

    path = write_demo_data(args.out, args.n_train, args.n_test, args.seed)
    _log(f"wrote demo data to {path.parent}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``kfold``; returns the exit status (2 for bad input, with one line on stderr)."""
    args = _parser().parse_args(argv)
    commands = {"run": _cmd_run, "auto": _cmd_auto, "report": _cmd_report, "predict": _cmd_predict, "variants": _cmd_variants,
                "presets": _cmd_presets, "check-data": _cmd_check, "demo-data": _cmd_demo,
                "pretrain": _cmd_pretrain}
    return run_command("kfold", commands[args.command], args, "completed folds are kept, rerun the same command to resume")


if __name__ == "__main__":
    raise SystemExit(main())
