"""Writing a blend as a leaderboard file with its manifest (shared by `ensemble blend` and `kfold auto`). Torch-free."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

from kfold.core.metrics import all_scores
from kfold.core.store import Predictions, save_predictions
from kfold.core.textio import write_json_atomic
from submissions import write_submission

from ._honest import MethodResult
from ._members import Members


def write_blend(members: Members, result: MethodResult, fmt: str, out: str | Path, *, metric: str, command: str,
                test_source: str = "folds", no_relation: str | None = None, force: bool = False,
                extra: dict | None = None) -> tuple[Path, dict]:
    """Predict the test rows with a fitted blend, write the leaderboard file (checked before it replaces
    anything), ``<file>.oof.npz`` (the blend's honest OOF predictions) and ``<file>.manifest.json`` beside it
    (written last); returns (path, manifest).

    The manifest records the method, its parameters and weights, the honest and in-sample OOF scores, the
    members, the fold map, the test source and the command, so the file can be traced to what made it.
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
        "test_source": test_source, "command": command, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "seconds": round(result.seconds, 2), **(extra or {}),
    }
    if members.test_y is not None and (members.test_y >= 0).all():
        manifest["test_scores_from_labelled_test_file"] = all_scores(members.test_y, probs, members.label_names, no_relation)
    # the blend's honest OOF predictions, in the one prediction schema (log-probabilities as logits), for the report
    logp = np.log(np.clip(result.honest_probs, 1e-12, None)).astype(np.float32)
    save_predictions(path.with_name(path.name + ".oof.npz"),
                     Predictions(members.ids, members.label_names, logp, members.fold_map_hash, members.y, members.folds))
    write_json_atomic(path.with_name(path.name + ".manifest.json"), manifest)
    return path, manifest
