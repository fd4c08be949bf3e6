"""The refit on every training row (stored, resumed, used per --test-source) and the shipped presets."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from ensemble.cli import main as ensemble_main
from kfold.core.config import PRESET_DIR, Config, list_presets, load_config_file, make_config
from kfold.core.errors import ConfigError
from kfold.core.metrics import softmax
from kfold.core.store import REFIT, load_predictions
from kfold.training._runner import run_kfold

QUIET = {"log": lambda m: None}


def _cfg(demo_dir, backbone, **kw):
    base = dict(data=str(demo_dir / "train.tsv"), test=str(demo_dir / "test_gold.tsv"), backbone=backbone, folds=2,
                epochs=2, average_epochs=1, batch_size=8, lr=1e-3, refit=True)
    base.update(kw)
    return Config(**base)


def _probs(path):
    rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    return np.array([[float(x) for x in r[2:]] for r in rows[1:]])


def test_refit_is_stored_resumed_and_used_per_test_source(tmp_path, demo_dir, tiny_bert, capsys):
    work = tmp_path / "w"
    out = run_kfold(_cfg(demo_dir, tiny_bert), work, **QUIET)
    assert out.complete and out.trained == [0, 1, REFIT]
    record = out.run.fold_record(REFIT)
    assert record["n_train"] == 120 and record["n_valid"] == 0 and set(record["files"]) == {"test.npz"}
    refit = load_predictions(out.run.fold_dir(REFIT) / "test.npz")
    folds = load_predictions(out.run.test_path)
    assert np.array_equal(refit.ids, folds.ids) and not np.allclose(refit.logits, folds.logits)
    stamp = (out.run.fold_dir(REFIT) / "done.json").stat().st_mtime_ns
    again = run_kfold(_cfg(demo_dir, tiny_bert), work, **QUIET)  # resumed: nothing trained
    assert again.trained == [] and again.skipped == [0, 1, REFIT]
    assert (out.run.fold_dir(REFIT) / "done.json").stat().st_mtime_ns == stamp
    # a refit killed before its completion record is trained again, the folds are not
    (out.run.fold_dir(REFIT) / "done.json").unlink()
    assert run_kfold(_cfg(demo_dir, tiny_bert), work, **QUIET).trained == [REFIT]
    refit = load_predictions(out.run.fold_dir(REFIT) / "test.npz")
    expected = {"folds": softmax(folds.logits), "refit": softmax(refit.logits),
                "both": softmax((folds.logits.astype(np.float64) + refit.logits) / 2)}
    for source, want in expected.items():
        path = tmp_path / f"{source}.csv"
        assert ensemble_main(["blend", "--workdir", str(work), "--format", "generic", "--out", str(path),
                              "--test-source", source]) == 0
        np.testing.assert_allclose(_probs(path), want, atol=2e-6)
        assert json.loads(path.with_name(path.name + ".manifest.json").read_text())["test_source"] == source
    capsys.readouterr()


def test_refit_needs_a_test_file_and_a_blend_of_refits_needs_them(tmp_path, demo_dir, tiny_bert, capsys):
    with pytest.raises(ConfigError, match="--refit trains one more model .* pass --test"):
        run_kfold(_cfg(demo_dir, tiny_bert, test=""), tmp_path / "a", **QUIET)
    run_kfold(_cfg(demo_dir, tiny_bert, refit=False), tmp_path / "b", **QUIET)
    status = ensemble_main(["blend", "--workdir", str(tmp_path / "b"), "--test-source", "refit",
                            "--out", str(tmp_path / "x.csv")])
    assert status == 2 and "train it with `kfold run --refit`" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_refit_without_validation_rows_keeps_the_epoch_given(tmp_path, tiny_bert):
    from kfold.data._demo import write_demo_data
    from kfold.data._readers import read_dataset
    from kfold.encoding._encode import encode
    from kfold.encoding._tokenizer import load_tokenizer
    from kfold.training._train import FoldData, train_fold

    ds = read_dataset(write_demo_data(tmp_path, n_train=40, n_test=5, seed=3))
    tok = load_tokenizer(tiny_bert, [])
    feats, _ = encode(ds, tok, "entity_marker_punct", 64)
    empty = feats.take(np.zeros(0, dtype=np.int64))
    cfg = Config(backbone=tiny_bert, epochs=3, average_epochs=0, batch_size=8)
    res = train_fold(cfg, ds.label_names, FoldData(feats, ds.y, empty, ds.y[:0], feats.take([0, 1])),
                     pad_id=tok.pad_token_id, vocab_size=len(tok), log=lambda m: None, keep_epoch=2)
    assert res.best_epoch == 2 and res.valid_logits.shape == (0, len(ds.label_names)) and res.metrics == {}
    assert [h["epoch"] for h in res.history] == [1, 2, 3] and res.test_logits.shape == (2, len(ds.label_names))


def test_presets_load_through_config_checks_and_say_where_each_value_was_measured():
    names = list_presets()
    assert set(names) == {"minilm-cpu", "me5-cpu", "base-gpu", "large-gpu"} and all(len(line) > 30 for line in names.values())
    for name in names:
        path = PRESET_DIR / f"{name}.toml"
        values = load_config_file(path)  # unknown keys or wrong types would raise here
        assert values and make_config(preset=name).backbone == values["backbone"]
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                assert re.search(r"\S\s+#\s+\S", line), f"{name}: a value without a comment: {line}"
    assert make_config(preset="minilm-cpu") == Config()  # the defaults are the measured CPU preset
    large = make_config(preset="large-gpu")
    assert (large.backbone, large.batch_size, large.lr, large.average_epochs) == ("xlm-roberta-large", 16, 1e-5, 0)
    assert "NOT measured here" in names["large-gpu"] and "NOT measured here" in names["base-gpu"]
    # the measured multilingual CPU preset: the packaged me5-small, the rest as the KLUE comparison had it
    me5 = make_config(preset="me5-cpu")
    assert (me5.backbone, me5.variant, me5.lr, me5.max_len) == ("me5-small", "split", 1e-4, 256)


def test_preset_is_overridden_by_config_file_then_flags(tmp_path, capsys):
    from kfold.cli import main

    (tmp_path / "c.toml").write_text("batch_size = 8\nlr = 3e-5\n")
    cfg = make_config(tmp_path / "c.toml", {"lr": 2e-5}, "large-gpu")
    assert (cfg.backbone, cfg.batch_size, cfg.lr) == ("xlm-roberta-large", 8, 2e-5)
    with pytest.raises(ConfigError, match=r"unknown preset 'large'; expected one of \[base-gpu, large-gpu, me5-cpu, minilm-cpu\]"):
        make_config(preset="large")
    assert main(["presets"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[:4]] == ["base-gpu", "large-gpu", "me5-cpu", "minilm-cpu"]


def test_retired_config_key_names_its_replacement(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"repair_offsets": True}))
    with pytest.raises(ConfigError, match="key 'repair_offsets': retired, use offsets"):
        load_config_file(tmp_path / "c.json")
    # a run's own config.json from an earlier version still loads (the retired key is left out)
    (tmp_path / "config.json").write_text(json.dumps({"config": {"repair_offsets": False, "lr": 1e-4}}))
    assert load_config_file(tmp_path / "config.json") == {"lr": 1e-4}
