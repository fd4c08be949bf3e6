"""The k-fold runner: one run = one (variant, backbone, training seed) over a shared fold map."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Sequence


from kfold.core.config import Config, environment
from kfold.core.errors import ConfigError, StoreError
from kfold.core.metrics import auprc_labels, majority_accuracy, metric_fn, no_relation_index
from kfold.core.store import RunDir
from kfold.core.teachers import Teachers
from kfold.core.textio import write_json_atomic
from kfold.data import LoadedData, inverse_labels, list_path, load_data, swap_entities
from kfold.core.store import REFIT
from kfold.tracking import run_tags, trackers_for
from kfold.encoding import (Features, backbone_slug, built_backbone_hash, check_marker, crop_note, encode_cached,
                            entity_types, load_tokenizer, marker_tokens)

from ._choose import Work, choose_executor, part_row_epochs
from ._folds import FoldMap, fold_map_for
from ._parts import RunPayload, Swapped
from ._probe import probe_sample
from ._pseudo import PseudoLabels, pseudo_labels
from ._schedule import Job, RunOutcome, run_jobs
from ._device import compute_line

#: Settings that do not change a run's numbers; they may differ between invocations of one run.
#: (How the data is read, offsets and too-far rows, shows in the data hash and the token features: a file read
#: another way is other data, refused by the data hash, or is refused when read.)
RUNTIME_KEYS = ("data", "test", "labels", "threads", "save_models", "eval_batch_size", "device", "auto_micro_batch",
                "attn_implementation", "offsets", "repair_window", "too_far", "overlap", "bad_rows", "refit",
                "epoch_scores", "cluster", "gpus_per_fold", "cpus_per_fold", "max_parallel", "retries",
                "report_to", "mlflow_uri", "wandb_project", "pseudo_from")
#: The runtime keys that only say where and how fast parts train, or where they are reported (another worker of one study may differ in them).
PLACEMENT_KEYS = ("threads", "save_models", "eval_batch_size", "device", "auto_micro_batch", "attn_implementation",
                  "cluster", "gpus_per_fold", "cpus_per_fold", "max_parallel", "retries", "report_to", "mlflow_uri",
                  "wandb_project")
#: Settings that name the run themselves, or belong to the data and fold map.
NAMING_KEYS = ("variant", "backbone", "seed", "format", "columns", "folds", "fold_seed", "group", "no_relation")
_SHORT = {"label_smoothing": "ls", "batch_size": "bs", "max_len": "len", "epochs": "ep", "grad_accum": "acc",
          "warmup_ratio": "wu", "weight_decay": "wd", "activation": "act", "class_weights": "cw",
          "average_epochs": "avg", "layer_lr_decay": "lld", "backbone_dropout": "bdrop", "attention_dropout": "adrop",
          "adversarial": "adv", "adv_start_epoch": "adv_from", "pseudo_threshold": "pthr",
          "pseudo_max_share": "pshare", "pseudo_weight": "pw", "pseudo_targets": "ptargets", "pseudo_folds": "pfolds"}
#: Characters of the teachers' digest in a student's name (``+pseudo=1a2b3c4d``).
PSEUDO_DIGEST_CHARS = 8


def _settings(cfg: Config) -> dict:
    """The settings that make a run's numbers: not runtime or naming keys, nor pseudo-label settings without
    teachers (they do nothing then)."""
    return {k: v for k, v in cfg.to_dict().items() if k not in RUNTIME_KEYS + NAMING_KEYS
            and (cfg.pseudo_from or not k.startswith("pseudo_"))}


def run_name(cfg: Config, tag: str = "", pseudo: str = "") -> str:
    """``split-minilm-s1``, plus the tag or the settings that differ from the defaults (``+ls=0.05,bs=8``); a
    pseudo-labelled run's name starts them with its teachers' digest ``pseudo`` (``+pseudo=1a2b3c4d``), not their
    names (the digest of their probabilities: the same teachers retrained name another run); a tag replaces all of
    them (the resume check still compares the digest). Raises ConfigError for a config with ``pseudo_from`` and
    neither a tag nor a digest (the teachers must be loaded to name the run)."""
    base = f"{cfg.variant}-{backbone_slug(cfg.backbone)}-s{cfg.seed}"
    if cfg.pseudo_from and not pseudo and not tag:
        raise ConfigError("a run with --pseudo-from is named by its teachers' digest: load them first "
                          "(ensemble.load_teachers)")
    if tag:
        return f"{base}-{tag}"
    default = Config()
    diff = [f"pseudo={pseudo[:PSEUDO_DIGEST_CHARS]}"] if cfg.pseudo_from else []
    diff += [f"{_SHORT.get(k, k)}={v}" for k, v in _settings(cfg).items() if v != getattr(default, k)]
    return base + ("+" + ",".join(diff) if diff else "")


def skipped_rows(ds) -> int:
    """How many training rows ``--bad-rows skip`` left out of a dataset (recorded with every run)."""
    return len({s.row for s in ds.skipped})


def _check_identity(run: RunDir, cfg: Config, data: LoadedData, fm: FoldMap, backbone_hash: str,
                    pseudo: PseudoLabels | None = None) -> None:
    """Refuse to mix a run folder's completed folds with other settings, data, folds, built backbone weights or
    pseudo-label teachers."""
    if not run.config_path.exists():
        return
    old = run.read_config()
    defaults = Config().to_dict()
    for key, value in cfg.to_dict().items():
        if key in RUNTIME_KEYS or (key.startswith("pseudo_") and not cfg.pseudo_from):
            continue
        before = old["config"].get(key, defaults[key])  # a key added in a later version had its default
        if before != value:
            raise StoreError(f"{run.config_path}: field '{key}': found {before!r}, now {value!r}; "
                             "use --tag NAME (or another --workdir) for a run with other settings")
    skipped_now, skipped_then = skipped_rows(data.train), old.get("skipped_rows", 0)
    # rows left out by --bad-rows skip change the data (and so the fold map): say so, it is the likely reason
    why = (f" ({skipped_now} training rows left out by --bad-rows skip now, {skipped_then} when the run was made)"
           if skipped_now != skipped_then else "")
    if old.get("backbone_hash", "") != backbone_hash:  # a folder the toolkit built (me5-small) or pretrained, redone since
        raise StoreError(f"{run.config_path}: field 'backbone_hash': the run was made with other weights of backbone "
                         f"'{cfg.backbone}' (found {old.get('backbone_hash') or 'none'!r}, now {backbone_hash!r}); "
                         "use another --workdir or --tag")
    digest_then, digest_now = old.get("pseudo", {}).get("digest", ""), pseudo.record["digest"] if pseudo else ""
    if digest_then != digest_now:
        raise StoreError(f"{run.config_path}: field 'pseudo.digest': the run was trained with other pseudo-label "
                         f"teachers' probabilities (found {digest_then[:12] or 'none'!r}, now {digest_now[:12] or 'none'!r}); "
                         "use another --tag or --workdir")
    for key, now in (("data_hash", data.train.content_hash()), ("fold_map_hash", fm.hash),
                     ("test_hash", data.test.content_hash() if data.test else "")):
        if old.get(key) != now:
            raise StoreError(f"{run.config_path}: field '{key}': the run was made with other "
                             f"{'folds' if key == 'fold_map_hash' else 'data'}{why if key != 'test_hash' else ''}; "
                             "use another --workdir or --tag")


def prepare(cfg: Config, workdir: str | Path, log: Callable[[str], None] = print):
    """Load data, the fold map, the tokenizer and the (cached) token features of a config."""
    data = load_data(cfg, workdir, log)
    # the metric must be defined on these labels (micro_f1 needs a no-relation label): refused now, not after training
    metric_fn(cfg.metric, data.train.label_names, cfg.no_relation or None)
    if cfg.no_relation:
        no_relation_index(data.train.label_names, cfg.no_relation)
    datasets = [data.train] + ([data.test] if data.test else [])
    check_marker(cfg.marker, all(ds.has_types for ds in datasets), data.train.path)
    fm = fold_map_for(workdir, data.train, cfg.folds, cfg.fold_seed, cfg.group, log)
    tokenizer = load_tokenizer(cfg.backbone, marker_tokens(cfg.marker, entity_types(datasets)))
    cache = Path(workdir) / "cache"
    swapped = swapped_features(cfg, data.train, data.test, tokenizer, cache)
    train_feats, _, hit = encode_cached(data.train, tokenizer, cfg.marker, cfg.max_len, cache, cfg.too_far)
    test_feats = None
    if data.test is not None:
        test_feats = encode_cached(data.test, tokenizer, cfg.marker, cfg.max_len, cache, cfg.too_far)[0]
    for ds, feats in ((data.train, train_feats), (data.test, test_feats)):
        note = crop_note(feats, cfg.max_len) if feats is not None else None
        if note:
            log(f"{Path(ds.path).name}: {note}")
    return data, fm, tokenizer, train_feats, test_feats, hit, swapped


def data_record(cfg: Config, data: LoadedData, feats: Features, workdir: str | Path) -> dict:
    """What a run was trained on, for reports: the file, its rows and labels, token lengths before cropping,
    the rows cropped to one window or split into two, the offsets repaired, the rows with overlapping spans and
    the rows left out by ``--bad-rows skip`` (with the lists of each)."""
    from collections import Counter

    from kfold.encoding import ONE_WINDOW, TWO_WINDOWS

    train = data.train
    listed = {kind: list_path(train, workdir, kind) for kind in ("repairs", "overlaps", "skipped")}
    return {"path": train.path, "rows": len(train), "data_hash": train.content_hash(),
            "label_counts": dict(Counter(ex.label for ex in train.examples)), "backbone": cfg.backbone,
            "marker": cfg.marker, "max_len": cfg.max_len, "token_lengths": feats.full.tolist(),
            "one_window": int((feats.crop == ONE_WINDOW).sum()), "two_windows": int((feats.crop == TWO_WINDOWS).sum()),
            "repairs": len(train.repairs), "overlaps": len(train.overlaps),
            "skipped_rows": skipped_rows(train),
            **{f"{kind}_csv": str(path) if path.exists() else "" for kind, path in listed.items()}}


def swapped_features(cfg: Config, train, test, tokenizer, cache: str | Path | None) -> Swapped | None:
    """The swapped readings a config needs (None without ``--augment swap`` / ``--tta swap``).

    Raises ConfigError, before any encoding, when the labels carry no direction to invert."""
    if cfg.augment != "swap" and cfg.tta != "swap":
        return None
    perm = inverse_labels(train.label_names, f"{train.path} (--augment/--tta swap)")
    encoded = [encode_cached(swap_entities(ds, perm), tokenizer, cfg.marker, cfg.max_len, cache, cfg.too_far)[0]
               if ds is not None else None for ds in (train, test)]
    return Swapped(perm, *encoded)


#: One driver thread at a time prepares a run (``tuning search`` runs one trial per slot in threads): the first
#: import of transformers is not thread-safe (two trials starting at once on a fresh process failed with "cannot
#: import name 'AutoTokenizer'"), nor is a tokenizer, and the token cache and fold map are shared files.
_PREPARE_LOCK = threading.Lock()


#: Loads pseudo-label teachers: ``(sources, workdir) -> Teachers`` (``ensemble.load_teachers``).
TeacherLoader = Callable[[Sequence[str], Path], Teachers]


def load_pseudo(cfg: Config, workdir: str | Path, teachers: TeacherLoader | None) -> Teachers | None:
    """The teachers of a config with ``pseudo_from`` (None without); ConfigError in one line when no loader is
    given or the config has no test file (the pseudo rows are its rows)."""
    if not cfg.pseudo_from:
        return None
    if not cfg.test:
        raise ConfigError("--pseudo-from labels the test file's rows for training; pass --test (the file the "
                          "teachers predicted)")
    if teachers is None:
        raise ConfigError("--pseudo-from: no teacher loader given (the Python API: pass teachers=ensemble.load_teachers)")
    return teachers(cfg.pseudo_from, Path(workdir))


def prepare_job(cfg: Config, workdir: str | Path, *, folds: Sequence[int] | None = None, tag: str = "",
                log: Callable[[str], None] = print, on_fold: Callable[[int, dict], None] | None = None,
                teachers: TeacherLoader | None = None) -> Job:
    """Everything the driver needs to train a run's missing parts: data, fold map and token features (read and
    encoded once), the pseudo-labelled test rows of every part (``teachers`` loads ``cfg.pseudo_from``), the run
    folder with its config and data records (checked against what it was made with), and the payload every part of
    the run shares. Driver threads take turns here (see ``_PREPARE_LOCK``)."""
    with _PREPARE_LOCK:
        return _prepare_job(cfg, workdir, folds, tag, log, on_fold, teachers)


def _prepare_job(cfg: Config, workdir: str | Path, folds: Sequence[int] | None, tag: str, log: Callable[[str], None],
                 on_fold: Callable[[int, dict], None] | None, teachers: TeacherLoader | None) -> Job:
    loaded = load_pseudo(cfg, workdir, teachers)  # refused before the data is encoded
    data, fm, tokenizer, train_feats, test_feats, _, swapped = prepare(cfg, workdir, log)
    if cfg.refit and data.test is None:  # refused before anything trains (it would fail after every fold)
        raise ConfigError("--refit trains one more model on every row to predict the test file; pass --test")
    pseudo = None
    if loaded is not None:
        pseudo = pseudo_labels(cfg, loaded, fm.hash, fm.folds, data.train.label_names, data.test.ids,
                               data.test.y if data.test.labelled else None, data.test.content_hash())
    run = RunDir(Path(workdir) / "runs" / run_name(cfg, tag, loaded.digest if loaded else ""))
    backbone_hash = built_backbone_hash(cfg.backbone) or ""  # built (once) by load_tokenizer above, so only read
    _check_identity(run, cfg, data, fm, backbone_hash, pseudo)
    wanted = list(range(cfg.folds)) if folds is None else list(folds)
    for fold in wanted:
        if not 0 <= fold < cfg.folds:
            raise StoreError(f"--fold {fold}: expected a fold number 0..{cfg.folds - 1}")
    log(f"{run.name}: {compute_line(cfg)}")
    if pseudo is not None:
        log(f"{run.name}: {pseudo_line(pseudo.record)}")
    y = data.train.y
    if not (run.root / "data.json").exists():
        write_json_atomic(run.root / "data.json", data_record(cfg, data, train_feats, workdir))
    if not run.config_path.exists():
        write_json_atomic(run.config_path, {
            "run": run.name, "config": cfg.to_dict(), "versions": environment(), "label_names": list(data.train.label_names),
            "data_hash": data.train.content_hash(), "test_hash": data.test.content_hash() if data.test else "",
            "skipped_rows": skipped_rows(data.train), "backbone_hash": backbone_hash,
            "fold_map": {"path": fm.path, "hash": fm.hash, "k": fm.k, "seed": fm.seed, "group": fm.group},
            "fold_map_hash": fm.hash, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **({"pseudo": pseudo.record} if pseudo else {}),
        })
    outcome = RunOutcome(run, majority_accuracy=majority_accuracy(y), auprc_over=auprc_labels(y, len(data.train.label_names)))
    return Job(cfg, run, fm, data, tokenizer, RunPayload(train_feats, test_feats, swapped, y, fm.folds, pseudo),
               outcome, wanted, on_fold)


def pseudo_line(record: dict) -> str:
    """``pseudo-labels from RUN (honest, soft targets, top probability >= 0.9): 812-1024 test rows per fold, 1530
    for the refit`` (the refit's only with ``--refit``)."""
    parts = record["parts"]
    per_fold = [p["rows"] for name, p in parts.items() if name != "refit"]
    span = f"{min(per_fold)}-{max(per_fold)}" if min(per_fold) != max(per_fold) else str(per_fold[0])
    acc = [p["accuracy_on_test_labels"] for p in parts.values() if p.get("accuracy_on_test_labels") is not None]
    shown = f"; their labels' accuracy on the test file's own labels {min(acc):.1%}-{max(acc):.1%}" if acc else ""
    refit = f", {parts['refit']['rows']} for the refit" if "refit" in parts else ""
    return (f"pseudo-labels from {', '.join(record['teachers'])} ({record['folds']}, {record['targets']} targets, "
            f"top probability >= {record['threshold']}): {span} test rows per fold{refit}{shown}")


def run_many(cfgs: Sequence[Config], workdir: str | Path, *, folds: Sequence[int] | None = None, tag: str = "",
             log: Callable[[str], None] = print, model_factory=None, on_fold: Callable[[int, dict], None] | None = None,
             executor=None, before_part: Callable | None = None, trackers=None,
             tracker_tags: dict[str, str] | None = None, teachers: TeacherLoader | None = None) -> list[RunOutcome]:
    """Train the missing parts of several runs (variants x backbones x seeds) in one queue: every slot of the
    executor stays busy across run boundaries, results are written as they arrive.

    ``executor``: where parts train (default: from the first config's ``cluster`` settings, see
    ``kfold.training._choose.choose_executor``: ``--cluster auto`` on a CPU machine times both arrangements on this
    data); closed here when made here. ``before_part(config, run name, part)``: called before each part is
    submitted (what it raises stops the queue). ``trackers`` (:class:`kfold.tracking.Trackers`): where the runs
    are reported (default: opened from the first config's ``report_to`` and closed here); ``tracker_tags``: extra
    tags of their tracker runs (a tuning trial's number). ``teachers``: loads the pseudo-label teachers of configs
    with ``pseudo_from`` (``ensemble.load_teachers``). Other parameters as :func:`run_kfold`.
    """
    first = cfgs[0]
    own_trackers = trackers is None and first.report_to  # a missing tracker package is refused before anything else
    if own_trackers:
        trackers = trackers_for(first, workdir, log)
    jobs: list[Job] = []
    raised = True
    try:
        jobs = [prepare_job(cfg, workdir, folds=folds, tag=tag, log=log, on_fold=on_fold, teachers=teachers)
                for cfg in cfgs]
        if trackers:
            for job in jobs:
                trackers.open_run(job.run.root, job.run.name, job.cfg.to_dict(), run_tags(job.run, workdir, tracker_tags))
        _run_jobs(jobs, workdir, log, model_factory, executor, before_part, trackers)
        raised = False
    finally:
        if trackers:
            for job in jobs:  # a run that failed, or was stopped (a budget, a pruned trial, Ctrl-C), closes as failed
                trackers.close_run(job.run.root, failed=raised and not job.outcome.complete or bool(job.outcome.failed))
        if own_trackers and trackers:
            trackers.close()
    return [job.outcome for job in jobs]


def _run_jobs(jobs: list[Job], workdir: str | Path, log: Callable[[str], None], model_factory, executor,
              before_part: Callable | None, trackers) -> None:
    own = executor is None
    if own:
        executor = job_executor(jobs, workdir, log=log, model_factory=model_factory).executor
        if executor.slots > 1:
            log(f"parts: {executor.description}")
    try:
        executor.check([job.cfg.backbone for job in jobs])  # a cluster's nodes: same versions, backbones there
        run_jobs(jobs, executor, log, before_part=before_part, trackers=trackers)
    finally:
        if own:
            executor.close()


def job_executor(jobs: list[Job], workdir: str | Path, *, log: Callable[[str], None] = print, model_factory=None):
    """The Placement for these jobs' parts (see ``choose_executor``): the probe sample is drawn from the first
    job's token features, the work is the parts still missing."""
    first = jobs[0]
    row_epochs, parts, folds = 0.0, 0, 0
    for job in jobs:
        n = len(job.payload.y)
        for part in job.folds + ([REFIT] if job.cfg.refit else []):
            if job.run.fold_record(part) is None:
                row_epochs += part_row_epochs(job.cfg, n, part == REFIT)
                parts += 1
                folds += part != REFIT  # a refit runs after its folds, never beside them

    def sample():
        return probe_sample(first.cfg, first.payload.train, first.payload.y, first.data.train.label_names,
                            first.tokenizer.pad_token_id, len(first.tokenizer))

    return choose_executor(first.cfg, workdir=workdir, sample=sample if parts else None,
                           work=lambda speed: Work(row_epochs, parts), data_hash=first.data.train.content_hash(),
                           side_by_side=max(folds, 1), log=log, model_factory=model_factory)


def run_kfold(cfg: Config, workdir: str | Path, *, folds: Sequence[int] | None = None, tag: str = "",
              log: Callable[[str], None] = print, model_factory=None,
              on_fold: Callable[[int, dict], None] | None = None, executor=None,
              before_part: Callable | None = None, trackers=None, tracker_tags: dict[str, str] | None = None,
              teachers: TeacherLoader | None = None) -> RunOutcome:
    """Train the folds of one run that are not complete yet, then assemble OOF and test logits.

    Parameters
    ----------
    cfg: the run's settings (``cluster`` and its companions say where the folds train: in this process, or side
    by side on Ray). workdir: the run store root. folds: only these folds (None = all), so
    folds can be spread over processes or machines sharing ``workdir``. tag: a suffix for the run name.
    on_fold: called as ``on_fold(fold, completion_record)`` after each fold is complete (tuning reports
    fold scores to its pruner this way; an exception raised there stops the run, completed folds stay).
    executor: where the parts train (default: made from ``cfg``, see :func:`run_many`; one given is not closed).
    before_part: called as ``before_part(config, run name, part)`` before each part is submitted (``kfold auto``'s budget guard;
    what it raises stops the run, completed folds stay). trackers, tracker_tags: where the run is reported
    (default: ``cfg.report_to``), see :func:`run_many`. teachers: loads ``cfg.pseudo_from``'s pseudo-label
    teachers (``ensemble.load_teachers``; a config with ``pseudo_from`` needs it).

    Returns
    -------
    RunOutcome: folds trained, skipped (already complete) and busy (locked by another process); when
    every fold is complete, the assembled OOF scores.

    Raises
    ------
    DataError, ConfigError, StoreError, TrainingError. A failure never touches completed folds.

    Example
    -------
    >>> run_kfold(Config(variant="split", data="train.tsv"), "runs")  # doctest: +SKIP
    """
    return run_many([cfg], workdir, folds=folds, tag=tag, log=log, model_factory=model_factory, on_fold=on_fold,
                    executor=executor, before_part=before_part, trackers=trackers, tracker_tags=tracker_tags,
                    teachers=teachers)[0]
