"""Runs, test-time swap and ``kfold predict`` on rows whose subject and object overlap (nested, crossing, identical)."""

from __future__ import annotations

import numpy as np
import torch

from kfold.core.store import load_predictions
from kfold.data import inverse_labels, read_dataset, swap_entities, unswap_logits
from kfold.encoding import encode, load_tokenizer_dir
from kfold.training import build_model, predict, predict_run, run_kfold
from tests.kfold.data.test_swap import SEMEVAL_LABELS, _cfg, _semeval_lines

OVERLAPPING = ("Cause-Effect(e1,e2)\tThe <e1>big <e2>fire</e2></e1> caused it .\n"  # object inside the subject
               "Cause-Effect(e2,e1)\tIt came from <e2>the <e1>old</e1> storm</e2> .\n"  # subject inside the object
               "Other\tThe <e1>red <e2>fire</e1> truck</e2> was seen .\n"  # crossing
               "Other\tThe <e1><e2>rain</e2></e1> fell .\n")  # identical


def test_tta_and_predict_on_overlapping_rows(tmp_path, tiny_bert):
    data = tmp_path / "data"
    data.mkdir()
    (data / "label.txt").write_text("\n".join(SEMEVAL_LABELS), encoding="utf-8")
    (data / "train.tsv").write_text(_semeval_lines(40, 1) + OVERLAPPING * 2, encoding="utf-8")
    (data / "test.tsv").write_text(_semeval_lines(8, 2) + OVERLAPPING, encoding="utf-8")
    test = read_dataset(data / "test.tsv")
    assert [o.kind for o in test.overlaps] == ["nested", "nested", "crossing", "identical"]
    logs = []
    cfg = _cfg(data, tiny_bert, tta="swap", save_models=True, precision="fp32")
    out = run_kfold(cfg, tmp_path / "w", log=logs.append)
    assert out.complete
    assert any(line.startswith("note: 8 rows of train.tsv have overlapping subject and object spans") for line in logs)
    stored = load_predictions(out.run.test_path)
    folder = out.run.fold_dir(0) / "model"
    tok = load_tokenizer_dir(folder)
    model = build_model(cfg, len(SEMEVAL_LABELS), len(tok))
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    cpu = torch.device("cpu")
    one = predict(model, encode(test, tok, cfg.marker, cfg.max_len)[0], 64, cpu, tok.pad_token_id)
    other = predict(model, encode(swap_entities(test), tok, cfg.marker, cfg.max_len)[0], 64, cpu, tok.pad_token_id)
    expected = (one + unswap_logits(other, inverse_labels(SEMEVAL_LABELS))) / 2
    np.testing.assert_allclose(stored.fold_logits[0], expected, rtol=1e-5, atol=1e-5)
    # the overlapping rows' two readings differ (the markers of the swapped reading follow the rule anew)
    assert not np.allclose(one[-4:], unswap_logits(other, inverse_labels(SEMEVAL_LABELS))[-4:], atol=1e-4)
    again = load_predictions(predict_run(out.run.root, data / "test.tsv", log=lambda m: None))
    np.testing.assert_allclose(again.logits, stored.logits, rtol=1e-5, atol=1e-5)
    assert again.logits.shape == (12, len(SEMEVAL_LABELS))
