"""The run config: file, then command-line overrides, type checks, unknown keys, the example files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from kfold.core.config import Config, add_config_flags, make_config, overrides_from_args
from kfold.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]


def _args(argv):
    ap = argparse.ArgumentParser()
    add_config_flags(ap)
    return overrides_from_args(ap.parse_args(argv))


def test_file_then_flags(tmp_path):
    (tmp_path / "c.toml").write_text('lr = 3e-5\nepochs = 4\nmarker = "entity_marker"\ngrad_checkpointing = true\n')
    cfg = make_config(tmp_path / "c.toml", _args(["--epochs", "2", "--no-grad-checkpointing", "--label-smoothing", "0.05"]))
    assert (cfg.lr, cfg.epochs, cfg.marker, cfg.grad_checkpointing, cfg.label_smoothing) == (3e-5, 2, "entity_marker", False, 0.05)
    assert make_config(None, {}) == Config()


def test_ints_are_accepted_for_floats_but_not_the_reverse(tmp_path):
    assert make_config(None, {"lr": 1}).lr == 1.0
    with pytest.raises(ConfigError, match="key 'epochs': found 2.5 \\(float\\), expected int"):
        make_config(None, {"epochs": 2.5})
    with pytest.raises(ConfigError, match="key 'epochs': found True \\(bool\\), expected int"):
        make_config(None, {"epochs": True})


@pytest.mark.parametrize("values,pattern", [
    ({"marker": "typed"}, "unknown marker 'typed'"),
    ({"variant": "spilt"}, "unknown variant 'spilt'"),
    ({"folds": 1}, "folds = 1: expected at least 2"),
    ({"label_smoothing": 1.5}, "label_smoothing = 1.5"),
    ({"metric": "f1"}, "unknown metric 'f1'"),
    ({"backbone_dropout": 1.0}, "backbone_dropout = 1.0: expected -1 \\(the checkpoint's value\\) or 0 <= x < 1"),
    ({"attention_dropout": -0.5}, "attention_dropout = -0.5: expected -1"),
    ({"attn_implementation": "flash"}, "unknown attn-implementation 'flash'"),
])
def test_invalid_values(values, pattern):
    with pytest.raises(ConfigError, match=pattern):
        make_config(None, values)


def test_written_run_config_is_accepted_back(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"run": "x", "config": Config(lr=2e-5).to_dict(), "versions": {}}))
    assert make_config(tmp_path / "config.json").lr == 2e-5


def test_example_files_load():
    from tuning import load_space

    cfg = make_config(ROOT / "examples" / "klue_split.toml")
    assert cfg.marker == "typed_entity_marker_punct" and cfg.group == "duplicates"
    assert "activation" in load_space(ROOT / "examples" / "space_wide.json")


def test_a_percent_sign_in_a_settings_help_text_prints_as_written(capsys):
    # argparse %-formats help texts: "~30% slower" printed the action's whole dict into `kfold run --help`
    import pytest

    from kfold.cli import main

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "memory, ~30% slower) (default: False)" in out and "option_strings" not in out
