"""Pseudo-label teachers (``kfold run --pseudo-from RUN|BLEND_FILE``): their probabilities of the test rows, per
fold from models that never saw that fold's validation rows, and for the refit from all of them. Torch-free.

- A run: fold k's probabilities are its fold-k model's test logits (``test.npz``'s ``fold_logits``); the refit's
  are its refit's test logits when it has a complete refit, else the mean of its fold models' logits.
- A blend (its leaderboard file or ``.manifest.json``): fold k's are its method applied to the members' fold-k test
  logits with the fit that never saw fold k (:func:`ensemble.blend_fits`); the refit's, its fit on all OOF rows
  applied to the members' test logits as the blend predicted them (its ``test_source``).
- Several teachers: the mean of their probabilities. They must share the test ids, label names and fold map.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kfold.core.errors import ConfigError
from kfold.core.metrics import softmax
from kfold.core.store import REFIT, Predictions, RunDir, load_predictions
from kfold.core.teachers import Teachers, positions
from kfold.core.textio import read_json

from ._members import load_members
from ._write import blend_fits


#: Blend methods whose output is not a probability (rank averages, vote shares): refused as teachers.
NOT_PROBABILITIES = {"rank": "normalised mean ranks", "hard": "vote shares"}


def _test_of(run: RunDir, flag: str) -> Predictions:
    """A teacher run's test predictions, with its fold models' own logits; refuses a run whose fold models saw
    every fold's validation rows through naive pseudo-labels (its fold-k models are no fold-k teachers)."""
    config = run.read_config() if run.config_path.exists() else {}
    if (config.get("pseudo") or {}).get("folds") == "naive":
        raise ConfigError(f"{run.config_path}: field 'pseudo.folds': run '{run.name}' was trained with naive "
                          "pseudo-labels, so its fold models saw every fold's validation rows; it cannot teach")
    if not run.test_path.exists():
        raise ConfigError(f"{flag}: run '{run.name}' was trained without a test file ({run.test_path} not found), so "
                          "it has no test predictions to label with; train it with --test")
    pred = load_predictions(run.test_path)
    if pred.fold_logits is None:
        raise ConfigError(f"{run.test_path}: field 'fold_logits': missing, so its fold models' own test logits are "
                          "not kept; train the run again with --test")
    return pred


def _run_teacher(workdir: Path, name: str, flag: str) -> Teachers:
    run = RunDir(workdir / "runs" / name)
    if not run.oof_path.exists():
        raise ConfigError(f"{flag}: no complete run '{name}' in {workdir / 'runs'} (and no blend file of that name)")
    test = _test_of(run, flag)
    full = test.logits
    if run.fold_record(REFIT) is not None:
        refit = load_predictions(run.fold_dir(REFIT) / "test.npz")
        if tuple(refit.label_names) != tuple(test.label_names):
            raise ConfigError(f"{refit.path}: field 'label_names': other label names than {test.path}")
        full = refit.logits[positions(refit.ids, test.ids, f"{refit.path}: field 'ids'")]
    return Teachers([name], test.ids, test.label_names, test.fold_map_hash,
                    {k: softmax(z) for k, z in enumerate(test.fold_logits)}, softmax(full), _test_hash([run], flag))


def _test_hash(runs: list[RunDir], flag: str) -> str:
    """The content hash of the test file the runs predicted (their config.json's ``test_hash``; "" when not
    recorded); refuses runs of different test files."""
    hashes = {run.name: run.read_config().get("test_hash", "") if run.config_path.exists() else "" for run in runs}
    known = {h for h in hashes.values() if h}
    if len(known) > 1:
        raise ConfigError(f"{flag}: members {sorted(hashes)} predicted different test files (field 'test_hash')")
    return known.pop() if known else ""


def _blend_teacher(workdir: Path, path: Path, flag: str) -> Teachers:
    manifest_path = path if path.name.endswith(".manifest.json") else path.with_name(path.name + ".manifest.json")
    manifest = read_json(manifest_path)
    if not isinstance(manifest, dict) or not manifest.get("members"):
        raise ConfigError(f"{manifest_path}: field 'members': missing or empty; expected the manifest `ensemble blend` "
                          "writes")
    if manifest.get("method") in NOT_PROBABILITIES:
        raise ConfigError(f"{manifest_path}: field 'method': {manifest['method']} blends give "
                          f"{NOT_PROBABILITIES[manifest['method']]}, not probabilities, so they cannot label rows by "
                          "confidence; teach with a soft, weighted, caruana or stack blend")
    if manifest.get("test_name", "test.npz") != "test.npz":
        raise ConfigError(f"{manifest_path}: field 'test_name': the blend predicts {manifest['test_name']}, not the "
                          "test file its members trained with (test.npz), whose fold models' logits a teacher needs")
    runs = []
    for name in manifest.get("members", []):
        run = RunDir(workdir / "runs" / name)
        if not run.oof_path.exists():
            raise ConfigError(f"{manifest_path}: field 'members': member '{name}' is not a complete run in "
                              f"{workdir / 'runs'}")
        runs.append(run)
    members = load_members(runs, need_test=True, test_source=manifest.get("test_source", "folds"))
    full_fit, fold_fits = blend_fits(manifest_path, members)
    tests = [_test_of(run, flag) for run in runs]
    k = {len(t.fold_logits) for t in tests}
    if k != {len(fold_fits)}:
        raise ConfigError(f"{manifest_path}: its members keep {sorted(k)} fold models' test logits, its fold map has "
                          f"{len(fold_fits)} folds")
    order = [positions(t.ids, members.test_ids, f"{flag}: member '{r.name}'") for t, r in zip(tests, runs)]
    fold_probs = {f: fit.predict_proba(np.stack([t.fold_logits[f][o] for t, o in zip(tests, order)]))
                  for f, fit in fold_fits.items()}
    return Teachers([str(path)], members.test_ids, members.label_names, members.fold_map_hash, fold_probs,
                    full_fit.predict_proba(members.test), _test_hash(runs, flag))


def load_teachers(sources: list[str], workdir: str | Path) -> Teachers:
    """The teachers ``sources`` name (run names in ``workdir``, or blend files), combined (the mean of their
    probabilities). Raises ConfigError in one line for a teacher without test predictions or without its fold
    models' test logits, a run trained with naive pseudo-labels (or a blend with one), a blend of rank or vote method
    or of another test file, teachers of different fold maps, label names or test files (ids, or the recorded
    content hash); StoreError for a store file that cannot be read. (Whether the teachers' fold map and
    test file are the student's is checked where the student is set up.)"""
    workdir = Path(workdir)
    if not sources:
        raise ConfigError("--pseudo-from: no teacher given")
    out: Teachers | None = None
    for source in sources:
        flag = f"--pseudo-from {source}"
        path = Path(source)
        blend = path.suffix and (path.is_file() or path.with_name(path.name + ".manifest.json").is_file())
        t = _blend_teacher(workdir, path, flag) if blend else _run_teacher(workdir, source, flag)
        if out is None:
            out = t
            continue
        if t.fold_map_hash != out.fold_map_hash:
            raise ConfigError(f"{flag}: fold map {t.fold_map_hash[:12]}, not {out.fold_map_hash[:12]} of "
                              f"'{out.sources[0]}'; teachers must share the student's fold map")
        if tuple(t.label_names) != tuple(out.label_names):
            raise ConfigError(f"{flag}: other label names than '{out.sources[0]}'")
        if t.test_hash and out.test_hash and t.test_hash != out.test_hash:
            raise ConfigError(f"{flag}: predicted another test file than '{out.sources[0]}' (field 'test_hash')")
        out.test_hash = out.test_hash or t.test_hash
        order = positions(t.test_ids, out.test_ids, f"{flag}: than '{out.sources[0]}'")
        n = len(out.sources)
        out.fold_probs = {f: (p * n + t.fold_probs[f][order]) / (n + 1) for f, p in out.fold_probs.items()}
        out.full_probs = (out.full_probs * n + t.full_probs[order]) / (n + 1)
        out.sources.append(source)
    return out
