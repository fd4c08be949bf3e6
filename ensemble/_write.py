"""Writing a blend as a leaderboard file with its manifest (shared by `ensemble blend` and `kfold auto`). Torch-free."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
from sklearn.base import clone

from kfold.core.metrics import all_scores, metric_fn, softmax
from kfold.core.store import Predictions, save_predictions
from kfold.core.errors import ConfigError
from kfold.core.textio import read_json, write_json_atomic
from submissions import write_submission

from ._blenders import METHODS, Blender
from ._honest import MethodResult, fold_fits
from ._members import Members


def members_digest(members: Members) -> str:
    """SHA-256 of the members' OOF and test logits (float32) and their names: a blend's manifest keeps it, so a
    member retrained since under the same name is told apart."""
    h = hashlib.sha256("\n".join(members.names).encode())
    for array in (members.oof, members.test):
        if array is not None:
            h.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return h.hexdigest()


def write_blend(members: Members, result: MethodResult, fmt: str, out: str | Path, *, metric: str, command: str,
                test_source: str = "folds", no_relation: str | None = None, force: bool = False,
                extra: dict | None = None, test_name: str = "test.npz") -> tuple[Path, dict]:
    """Predict the test rows with a fitted blend, write the leaderboard file (checked before it replaces
    anything), ``<file>.oof.npz`` (the blend's honest OOF predictions) and ``<file>.manifest.json`` beside it
    (written last); returns (path, manifest).

    The manifest records the method, its parameters and weights, the fitted parameters (on all OOF rows, and per
    fold without that fold), the honest and in-sample OOF scores, the members, the fold map, the test source and
    the command, so the file can be traced to what made it and its blend used fold by fold (:func:`blend_fits`).
    """
    probs = result.fitted.predict_proba(members.test)
    path = write_submission(out, fmt, [str(i) for i in members.test_ids], members.label_names, probs, force=force)
    s = result.scores
    manifest = {
        "file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "format": fmt,
        "method": result.method, "params": result.fitted.get_params(), "metric": metric,
        "honest_oof_score": s.honest, "in_sample_oof_score": s.in_sample, "member_oof_scores": s.members,
        "best_member": s.best_member[0], "gain_over_best_member": s.gain, "weights": s.weights,
        "members": members.names, "fold_map_hash": members.fold_map_hash, "test_rows": len(members.test_ids),
        "test_source": test_source, "test_name": test_name, "no_relation": no_relation,
        "members_sha256": members_digest(members),
        "command": command, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "seconds": round(result.seconds, 2),
        # what the fits learned: on all OOF rows (the file's), and per fold without that fold (nested; a per-fold
        # use of the blend, such as pseudo-labels for fold k, takes the fit that never saw fold k)
        "fitted_params": result.fitted.fitted_params(),
        "fold_params": {str(f): fit.fitted_params() for f, fit in sorted(result.fold_fits.items())},
        **(extra or {}),
    }
    if members.test_y is not None and (members.test_y >= 0).all():
        manifest["test_scores_from_labelled_test_file"] = all_scores(members.test_y, probs, members.label_names, no_relation)
    # the blend's honest OOF predictions, in the one prediction schema (log-probabilities as logits), for the report
    logp = np.log(np.clip(result.honest_probs, 1e-12, None)).astype(np.float32)
    save_predictions(path.with_name(path.name + ".oof.npz"),
                     Predictions(members.ids, members.label_names, logp, members.fold_map_hash, members.y, members.folds))
    write_json_atomic(path.with_name(path.name + ".manifest.json"), manifest)
    return path, manifest


def blend_fits(manifest_path: str | Path, members: Members) -> tuple[Blender, dict[int, Blender]]:
    """The blend a manifest describes, on all OOF rows and per fold (each fit without its fold), ready to predict
    ``members``' logits. From the manifest's fitted parameters; for a manifest written before they were kept,
    recomputed from its members, method and settings (the fits are deterministic). ``members``: the manifest's
    members, loaded (:func:`load_members`).

    The members must be the ones the blend was made of: the same runs and fold map, and the same logits: compared
    with the manifest's ``members_sha256``, or, in a manifest written before it was kept, with each member's recorded
    OOF score and the recorded weights. Raises ConfigError (one line naming the file and field) otherwise, or for a
    manifest that lacks what is needed."""
    path = Path(manifest_path)
    manifest = read_json(path)
    where = lambda field: f"{path}: field '{field}'"  # noqa: E731
    if not isinstance(manifest, dict) or not manifest.get("members"):
        raise ConfigError(f"{where('members')}: missing or empty; expected the manifest `ensemble blend` writes")
    if list(members.names) != list(manifest["members"]):
        raise ConfigError(f"{where('members')}: the blend's members are {manifest.get('members')}, the runs given "
                          f"are {list(members.names)}")
    if members.fold_map_hash != manifest.get("fold_map_hash"):
        raise ConfigError(f"{where('fold_map_hash')}: the blend was fit over fold map "
                          f"{str(manifest.get('fold_map_hash'))[:12]}, its members now have {members.fold_map_hash[:12]}")
    if manifest.get("method") not in METHODS:
        raise ConfigError(f"{where('method')}: {manifest.get('method')!r} is not a blend method "
                          f"({', '.join(METHODS)})")
    if not isinstance(manifest.get("params"), dict):
        raise ConfigError(f"{where('params')}: missing; expected the blend method's settings")
    try:
        blender = METHODS[manifest["method"]](**manifest["params"])
    except TypeError as exc:
        raise ConfigError(f"{where('params')}: not the settings of {manifest['method']} ({exc})") from None
    changed = "a member's predictions changed since the blend was made; blend again with `ensemble blend`"
    if "members_sha256" in manifest:
        if manifest["members_sha256"] != members_digest(members):
            raise ConfigError(f"{where('members_sha256')}: {changed}")
    else:
        fn = metric_fn(manifest.get("metric", "accuracy"), members.label_names, manifest.get("no_relation"))
        recorded = manifest.get("member_oof_scores", {})
        now = {n: fn(members.y, softmax(z)) for n, z in zip(members.names, members.oof)}
        if any(n not in recorded or abs(recorded[n] - now[n]) > 1e-6 for n in members.names):
            raise ConfigError(f"{where('member_oof_scores')}: {changed}")
    if "fold_params" in manifest and "fitted_params" in manifest:
        try:
            return (blender.with_fitted(manifest["fitted_params"]),
                    {int(f): blender.with_fitted(p) for f, p in manifest["fold_params"].items()})
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where('fold_params')}: not the fitted parameters of {manifest['method']} "
                              f"({type(exc).__name__}: {exc})") from None
    fitted = clone(blender).fit(members.oof, members.y)
    recorded = np.array([manifest.get("weights", {}).get(n, np.nan) for n in members.names], dtype=np.float64)
    if not np.allclose(fitted.member_weights(), recorded, atol=1e-6):
        raise ConfigError(f"{where('weights')}: this blend, recomputed from its members (it was written before "
                          f"blends kept their per-fold fits), gives other weights than recorded: {changed}")
    return fitted, fold_fits(blender, members.oof, members.y, members.folds)
