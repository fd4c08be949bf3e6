"""The k-fold runner: one run = one (variant, backbone, training seed) over a shared fold map."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from kfold.core.config import Config, environment
from kfold.core.errors import ConfigError, StoreError
from kfold.core.metrics import all_scores, auprc_labels, majority_accuracy, metric_fn, no_relation_index, softmax
from kfold.core.store import REFIT, Predictions, RunDir, save_predictions
from kfold.core.textio import write_json_atomic
from kfold.data import LoadedData, inverse_labels, list_path, load_data, swap_entities
from kfold.encoding import (Features, backbone_slug, check_marker, concat_features, crop_note, encode_cached,
                            entity_types, load_tokenizer, marker_tokens)

from ._folds import FoldMap, fold_map_for
from ._train import FoldData, compute_line, train_fold

#: Settings that do not change a run's numbers; they may differ between invocations of one run.
#: (How the data is read, offsets and too-far rows, shows in the data hash and the token features: a file read
#: another way is other data, refused by the data hash, or is refused when read.)
RUNTIME_KEYS = ("data", "test", "labels", "threads", "save_models", "eval_batch_size", "device", "auto_micro_batch",
                "attn_implementation", "offsets", "repair_window", "too_far", "overlap", "bad_rows", "refit",
                "epoch_scores")
#: Settings that name the run themselves, or belong to the data and fold map.
NAMING_KEYS = ("variant", "backbone", "seed", "format", "columns", "folds", "fold_seed", "group", "no_relation")
_SHORT = {"label_smoothing": "ls", "batch_size": "bs", "max_len": "len", "epochs": "ep", "grad_accum": "acc",
          "warmup_ratio": "wu", "weight_decay": "wd", "activation": "act", "class_weights": "cw",
          "average_epochs": "avg", "layer_lr_decay": "lld", "backbone_dropout": "bdrop", "attention_dropout": "adrop"}


def run_name(cfg: Config, tag: str = "") -> str:
    """``split-minilm-s1``, plus the tag or the settings that differ from the defaults (``+ls=0.05,bs=8``)."""
    base = f"{cfg.variant}-{backbone_slug(cfg.backbone)}-s{cfg.seed}"
    if tag:
        return f"{base}-{tag}"
    default = Config()
    diff = [f"{_SHORT.get(k, k)}={v}" for k, v in cfg.to_dict().items()
            if k not in RUNTIME_KEYS + NAMING_KEYS and v != getattr(default, k)]
    return base + ("+" + ",".join(diff) if diff else "")


@dataclass
class RunOutcome:
    """What one ``run_kfold`` call did."""

    run: RunDir
    trained: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    busy: list[int] = field(default_factory=list)
    complete: bool = False
    oof_scores: dict[str, float] = field(default_factory=dict)
    majority_accuracy: float = 0.0
    auprc_over: tuple[int, int] | None = None  # labels present in the OOF gold labels / all labels


def skipped_rows(ds) -> int:
    """How many training rows ``--bad-rows skip`` left out of a dataset (recorded with every run)."""
    return len({s.row for s in ds.skipped})


def _check_identity(run: RunDir, cfg: Config, data: LoadedData, fm: FoldMap) -> None:
    """Refuse to mix a run folder's completed folds with other settings, data or folds."""
    if not run.config_path.exists():
        return
    old = run.read_config()
    defaults = Config().to_dict()
    for key, value in cfg.to_dict().items():
        if key in RUNTIME_KEYS:
            continue
        before = old["config"].get(key, defaults[key])  # a key added in a later version had its default
        if before != value:
            raise StoreError(f"{run.config_path}: field '{key}': found {before!r}, now {value!r}; "
                             "use --tag NAME (or another --workdir) for a run with other settings")
    skipped_now, skipped_then = skipped_rows(data.train), old.get("skipped_rows", 0)
    # rows left out by --bad-rows skip change the data (and so the fold map): say so, it is the likely reason
    why = (f" ({skipped_now} training rows left out by --bad-rows skip now, {skipped_then} when the run was made)"
           if skipped_now != skipped_then else "")
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


@dataclass
class Swapped:
    """Token features of the training and test rows with the entities swapped (``--augment/--tta swap``)."""

    perm: np.ndarray
    train: Features
    test: Features | None


def swapped_features(cfg: Config, train, test, tokenizer, cache: str | Path | None) -> Swapped | None:
    """The swapped readings a config needs (None without ``--augment swap`` / ``--tta swap``).

    Raises ConfigError, before any encoding, when the labels carry no direction to invert."""
    if cfg.augment != "swap" and cfg.tta != "swap":
        return None
    perm = inverse_labels(train.label_names, f"{train.path} (--augment/--tta swap)")
    encoded = [encode_cached(swap_entities(ds, perm), tokenizer, cfg.marker, cfg.max_len, cache, cfg.too_far)[0]
               if ds is not None else None for ds in (train, test)]
    return Swapped(perm, *encoded)


def fold_data(cfg: Config, tr: np.ndarray, va: np.ndarray, y: np.ndarray, train_feats: Features,
              test_feats: Features | None, swapped: Swapped | None) -> FoldData:
    """One fold's FoldData. ``--augment swap`` adds the swapped copy of every training-part row (the
    validation part is never augmented, so OOF stays one row per id); ``--tta swap`` adds the swapped
    validation and test rows."""
    train, y_train = train_feats.take(tr), y[tr]
    if cfg.augment == "swap":
        train, y_train = concat_features(train, swapped.train.take(tr)), np.concatenate([y_train, swapped.perm[y[tr]]])
    data = FoldData(train, y_train, train_feats.take(va), y[va], test_feats)
    if cfg.tta == "swap":
        data.valid_swapped, data.test_swapped, data.swap_perm = swapped.train.take(va), swapped.test, swapped.perm
    return data


def run_kfold(cfg: Config, workdir: str | Path, *, folds: Sequence[int] | None = None, tag: str = "",
              log: Callable[[str], None] = print, model_factory=None,
              on_fold: Callable[[int, dict], None] | None = None) -> RunOutcome:
    """Train the folds of one run that are not complete yet, then assemble OOF and test logits.

    Parameters
    ----------
    cfg: the run's settings. workdir: the run store root. folds: only these folds (None = all), so
    folds can be spread over processes or machines sharing ``workdir``. tag: a suffix for the run name.
    on_fold: called as ``on_fold(fold, completion_record)`` after each fold is complete (tuning reports
    fold scores to its pruner this way; an exception raised there stops the run, completed folds stay).

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
    data, fm, tokenizer, train_feats, test_feats, _, swapped = prepare(cfg, workdir, log)
    run = RunDir(Path(workdir) / "runs" / run_name(cfg, tag))
    _check_identity(run, cfg, data, fm)
    log(f"{run.name}: {compute_line(cfg)}")
    y = data.train.y
    if not (run.root / "data.json").exists():
        write_json_atomic(run.root / "data.json", data_record(cfg, data, train_feats, workdir))
    if not run.config_path.exists():
        write_json_atomic(run.config_path, {
            "run": run.name, "config": cfg.to_dict(), "versions": environment(), "label_names": list(data.train.label_names),
            "data_hash": data.train.content_hash(), "test_hash": data.test.content_hash() if data.test else "",
            "skipped_rows": skipped_rows(data.train),
            "fold_map": {"path": fm.path, "hash": fm.hash, "k": fm.k, "seed": fm.seed, "group": fm.group},
            "fold_map_hash": fm.hash, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })
    outcome = RunOutcome(run, majority_accuracy=majority_accuracy(y), auprc_over=auprc_labels(y, len(data.train.label_names)))
    wanted = list(range(cfg.folds)) if folds is None else list(folds)

    def train_part(part: int | str) -> dict:
        return _train_one(cfg, run, part, fm, data, train_feats, test_feats, swapped, y, tokenizer, log, model_factory)

    for fold in wanted:
        if not 0 <= fold < cfg.folds:
            raise StoreError(f"--fold {fold}: expected a fold number 0..{cfg.folds - 1}")
        record = _claim(run, fold, train_part, outcome, log)
        if on_fold is not None and record is not None:
            on_fold(fold, record)
    if all(run.fold_record(f) is not None for f in range(cfg.folds)):
        outcome.oof_scores = assemble(run, fm, data.train.label_names, y, data.test.ids if data.test else None,
                                      data.test.y if data.test else None, cfg.no_relation or None)
        outcome.complete = True
        if cfg.refit:
            if data.test is None:
                raise ConfigError("--refit trains one more model on every row to predict the test file; pass --test")
            _claim(run, REFIT, train_part, outcome, log)
    return outcome


def _claim(run: RunDir, part: int | str, train: Callable[[int | str], dict], outcome: RunOutcome, log) -> dict | None:
    """A part's completion record: already there (skipped), or trained under its lock; None when another process
    holds the lock (busy)."""
    record = run.fold_record(part)
    if record is not None:
        outcome.skipped.append(part)
        return record
    with run.fold_lock(part) as mine:
        if not mine:
            log(f"{run.name} {_part_name(part)}: another process is training it; skipping")
            outcome.busy.append(part)
            return None
        record = run.fold_record(part)  # finished by another process while we looked?
        if record is not None:
            outcome.skipped.append(part)
            return record
        record = train(part)
        outcome.trained.append(part)
        return record


def _part_name(part: int | str) -> str:
    return "refit" if part == REFIT else f"fold {part}"


def _train_one(cfg, run: RunDir, part: int | str, fm: FoldMap, data: LoadedData, train_feats: Features,
               test_feats: Features | None, swapped: Swapped | None, y: np.ndarray, tokenizer, log, model_factory) -> dict:
    """Train fold ``part`` (its validation rows predicted) or the refit (every row trained on, only the test
    rows predicted, kept at the weights the folds chose: their averaged epochs, their EMA, or their median
    best epoch, since no row is left to choose on)."""
    refit = part == REFIT
    if refit:
        tr, va = np.arange(len(y)), np.zeros(0, dtype=np.int64)
        keep = int(np.median([run.fold_record(f)["best_epoch"] for f in range(cfg.folds)]))
    else:
        tr, va, keep = fm.train_index(part), fm.valid_index(part), None
    fdata = fold_data(cfg, tr, va, y, train_feats, test_feats, swapped)
    t0 = time.perf_counter()
    res = train_fold(cfg, data.train.label_names, fdata, pad_id=tokenizer.pad_token_id, vocab_size=len(tokenizer),
                     fold=cfg.folds if refit else part, desc=run.name, where=f"{run.name} {_part_name(part)}", log=log,
                     keep_epoch=keep,
                     model_factory=(lambda: model_factory(cfg, len(data.train.label_names), len(tokenizer))) if model_factory else None)
    wall = time.perf_counter() - t0
    names = data.train.label_names
    valid = None if refit else Predictions(np.asarray(fm.ids)[va], names, res.valid_logits, fm.hash, y[va], np.full(len(va), part))
    # the test file's labels (-1 for blind rows) travel with the logits, so a blend of refits can be scored too
    test = Predictions(data.test.ids, names, res.test_logits, fm.hash, data.test.y) if data.test is not None else None
    if res.state_dict is not None:
        _save_model(run.fold_dir(part) / "model", res.state_dict, tokenizer)
    record = {
        "best_epoch": res.best_epoch, "metrics": res.metrics, "history": res.history, "n_train": len(tr),
        "n_valid": len(va), "train_seconds": round(res.train_seconds, 2), "wall_seconds": round(wall, 2),
        "train_examples_per_s": round(res.train_examples_per_s, 2), "padding_share": round(res.padding_share, 4),
        "micro_batch": res.micro_batch, "accum_steps": res.accum_steps, "fold_map_hash": fm.hash,
        "pid": os.getpid(), "host": socket.gethostname(),
    }
    run.write_fold(part, valid, test, record)
    span = cfg.averaged_epochs()
    chosen = f"weights averaged over epochs {span[0]}-{span[-1]}" if span else f"at epoch {res.best_epoch}/{cfg.epochs}"
    score = "" if refit else f"{cfg.metric} {res.metrics.get(cfg.metric, float('nan')):.2f} "
    log(f"{run.name} {_part_name(part)}: {score}{chosen}, {len(tr)} train / {len(va)} valid, {wall:.0f}s "
        f"({res.train_examples_per_s:.1f} train ex/s, {res.padding_share * 100:.1f}% padding)")
    return record


def _save_model(folder: Path, state: dict, tokenizer) -> None:
    """Checkpoint (``--save-models``): state dict and tokenizer, written to a temporary folder then renamed."""
    import shutil

    import torch

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(state, tmp / "model.pt")
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def assemble(run: RunDir, fm: FoldMap, label_names: tuple[str, ...], y: np.ndarray, test_ids, test_y,
             no_relation: str | None) -> dict[str, float]:
    """Join the folds' validation logits into OOF logits (each training id exactly once, in data order),
    average the fold models' test logits, write both and the summary; returns OOF scores."""
    ids = np.asarray(fm.ids)
    position = {i: n for n, i in enumerate(ids)}
    oof = np.full((len(ids), len(label_names)), np.nan, dtype=np.float32)
    seen = np.zeros(len(ids), dtype=np.int64)
    test_folds, records = [], []
    from kfold.core.store import load_predictions

    for fold in range(fm.k):
        records.append(run.fold_record(fold))
        valid = load_predictions(run.fold_dir(fold) / "valid.npz")
        expected = set(ids[fm.valid_index(fold)])
        if set(valid.ids) != expected or len(valid.ids) != len(expected):
            raise StoreError(f"{valid.path}: field 'ids': found ids that are not fold {fold}'s validation part")
        if valid.label_names != label_names:
            raise StoreError(f"{valid.path}: field 'label_names': found other label names than the run's")
        rows = np.array([position[i] for i in valid.ids])
        oof[rows] = valid.logits
        seen[rows] += 1
        if test_ids is not None:
            test = load_predictions(run.fold_dir(fold) / "test.npz")
            if not np.array_equal(test.ids, test_ids):
                raise StoreError(f"{test.path}: field 'ids': found other test ids than the run's test file")
            test_folds.append(test.logits)
    if not (seen == 1).all():
        raise StoreError(f"{run.root}: OOF rows covered {seen.min()}..{seen.max()} times, expected exactly once")
    save_predictions(run.oof_path, Predictions(ids, label_names, oof, fm.hash, y, fm.folds.copy()))
    if test_folds:
        stack = np.stack(test_folds).astype(np.float32)
        save_predictions(run.test_path, Predictions(np.asarray(test_ids), label_names, stack.mean(0), fm.hash,
                                                    None if test_y is None else test_y, None, stack))
    scores = all_scores(y, softmax(oof), label_names, no_relation)
    write_json_atomic(run.summary_path, {
        "run": run.name, "oof": scores, "fold_map_hash": fm.hash,
        "folds": [{"fold": f, "best_epoch": r["best_epoch"], **r["metrics"], "train_seconds": r["train_seconds"],
                   "wall_seconds": r.get("wall_seconds")} for f, r in enumerate(records)],
    })
    return scores
