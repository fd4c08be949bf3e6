"""Entity swap: inverse labels, swapped examples, logits put back in the original label order."""

from __future__ import annotations

import numpy as np
import pytest

from kfold.core.errors import ConfigError
from kfold.data._readers import read_dataset
from kfold.data._swap import inverse_labels, swap_entities, unswap_logits

NAMES = ("Other", "Cause-Effect(e1,e2)", "Cause-Effect(e2,e1)", "Member-Collection(e2,e1)", "Member-Collection(e1,e2)")


def test_inverse_labels_is_an_involution_that_flips_directions():
    perm = inverse_labels(NAMES)
    assert perm.tolist() == [0, 2, 1, 4, 3]
    assert (perm[perm] == np.arange(len(NAMES))).all()


def test_labels_without_directions_or_without_an_inverse_are_refused():
    with pytest.raises(ConfigError, match=r"entity swap needs labels with a direction"):
        inverse_labels(["no_relation", "org:founded_by", "per:parents"])
    with pytest.raises(ConfigError, match=r"label 'Cause-Effect\(e1,e2\)' has no inverse 'Cause-Effect\(e2,e1\)' among"):
        inverse_labels(["Other", "Cause-Effect(e1,e2)"])


def test_swap_exchanges_spans_types_and_labels_and_keeps_ids(tmp_path):
    (tmp_path / "label.txt").write_text("\n".join(NAMES), encoding="utf-8")
    (tmp_path / "t.tsv").write_text("Cause-Effect(e1,e2)\tThe <e1>fire</e1> caused <e2>smoke</e2>.\n"
                                    "Other\tA <e1>cat</e1> and a <e2>dog</e2>.\n", encoding="utf-8")
    ds = read_dataset(tmp_path / "t.tsv")
    sw = swap_entities(ds)
    a, b = sw.examples
    assert (a.subj_text, a.obj_text, a.label) == ("smoke", "fire", "Cause-Effect(e2,e1)")
    assert (b.subj_text, b.obj_text, b.label) == ("dog", "cat", "Other")
    assert sw.ids.tolist() == ds.ids.tolist() and sw.label_names == ds.label_names
    assert swap_entities(sw).content_hash() == ds.content_hash()  # swapping twice is the identity
    assert sw.content_hash() != ds.content_hash()  # so the token cache never mixes the two


def test_unswap_logits_puts_each_column_under_the_inverse_label():
    perm = inverse_labels(NAMES)
    swapped = np.array([[0.0, 1.0, 2.0, 3.0, 4.0]])  # scores for the swapped reading
    # "Cause-Effect(e2,e1)" read swapped is "Cause-Effect(e1,e2)" read as written
    assert unswap_logits(swapped, perm).tolist() == [[0.0, 2.0, 1.0, 4.0, 3.0]]


SEMEVAL_LABELS = ("Other", "Cause-Effect(e1,e2)", "Cause-Effect(e2,e1)")
_WORDS = ("fire", "smoke", "flood", "storm", "virus", "fever", "quake", "crack", "spark", "blast", "rain", "mud")


def _semeval_lines(n: int, seed: int) -> str:
    """Tiny SemEval-format data whose direction is readable from the wording."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        a, b = rng.choice(_WORDS, 2, replace=False)
        kind = i % 3
        if kind == 0:
            lines.append(f"Other\tThe <e1>{a}</e1> and the <e2>{b}</e2> were both seen .")
        elif kind == 1:
            lines.append(f"Cause-Effect(e1,e2)\tThe <e1>{a}</e1> caused the <e2>{b}</e2> .")
        else:
            lines.append(f"Cause-Effect(e2,e1)\tThe <e1>{a}</e1> came from the <e2>{b}</e2> .")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def semeval_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("semeval")
    (out / "label.txt").write_text("\n".join(SEMEVAL_LABELS), encoding="utf-8")
    (out / "train.tsv").write_text(_semeval_lines(48, 1), encoding="utf-8")
    (out / "test.tsv").write_text(_semeval_lines(12, 2), encoding="utf-8")
    return out


def _cfg(semeval_dir, backbone, **over):
    from kfold.core.config import Config

    base = dict(backbone=backbone, data=str(semeval_dir / "train.tsv"), test=str(semeval_dir / "test.tsv"), folds=2,
                epochs=1, batch_size=8, lr=1e-3, marker="entity_marker_punct")
    base.update(over)
    return Config(**base)


def test_fold_data_adds_swapped_training_rows_and_swapped_views(tmp_path, semeval_dir, tiny_bert):
    from kfold.training import fold_data, prepare

    cfg = _cfg(semeval_dir, tiny_bert, augment="swap", tta="swap")
    data, fm, _, train_feats, test_feats, _, swapped = prepare(cfg, tmp_path, lambda m: None)
    tr, va = fm.train_index(0), fm.valid_index(0)
    y = data.train.y
    fd = fold_data(cfg, tr, va, y, train_feats, test_feats, swapped)
    assert len(fd.train) == 2 * len(tr) and len(fd.valid) == len(va)  # validation rows are never augmented
    assert fd.y_train[: len(tr)].tolist() == y[tr].tolist()
    assert fd.y_train[len(tr):].tolist() == swapped.perm[y[tr]].tolist()
    # "@ s @" and "# o #" have the same length, so the swapped rows hold the same entity token ranges, exchanged
    second = fd.train.take(np.arange(len(tr), 2 * len(tr)))
    assert np.array_equal(second.ent[:, 0:2], train_feats.take(tr).ent[:, 3:5])
    assert np.array_equal(second.ent[:, 3:5], train_feats.take(tr).ent[:, 0:2])
    assert len(fd.valid_swapped) == len(va) and len(fd.test_swapped) == len(data.test)
    plain = fold_data(_cfg(semeval_dir, tiny_bert), tr, va, y, train_feats, test_feats, None)
    assert len(plain.train) == len(tr) and plain.valid_swapped is None and plain.swap_perm is None


def test_tta_logits_are_the_mean_of_both_readings_and_predict_repeats_them(tmp_path, semeval_dir, tiny_bert):
    import torch

    from kfold.core.store import load_predictions
    from kfold.encoding._encode import encode
    from kfold.encoding._tokenizer import load_tokenizer_dir
    from kfold.training._predict import predict_run
    from kfold.training._runner import run_kfold
    from kfold.training import build_model, predict

    # fp32: the hand computation below repeats the run's numbers only in fp32 (auto is bf16 on a CPU with bf16 hardware)
    cfg = _cfg(semeval_dir, tiny_bert, tta="swap", save_models=True, precision="fp32")
    out = run_kfold(cfg, tmp_path, log=lambda m: None)
    assert out.complete and out.run.name.endswith(",tta=swap,precision=fp32")
    stored = load_predictions(out.run.test_path)
    # recompute fold 0's test logits by hand from its saved model
    folder = out.run.fold_dir(0) / "model"
    tok = load_tokenizer_dir(folder)
    test = read_dataset(semeval_dir / "test.tsv")
    model = build_model(cfg, len(SEMEVAL_LABELS), len(tok))
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    one = predict(model, encode(test, tok, cfg.marker, cfg.max_len)[0], 64, torch.device("cpu"), tok.pad_token_id)
    other = predict(model, encode(swap_entities(test), tok, cfg.marker, cfg.max_len)[0], 64, torch.device("cpu"),
                    tok.pad_token_id)
    np.testing.assert_allclose(stored.fold_logits[0], (one + unswap_logits(other, inverse_labels(SEMEVAL_LABELS))) / 2,
                               rtol=1e-5, atol=1e-5)
    assert not np.allclose(stored.fold_logits[0], one, atol=1e-4)
    again = load_predictions(predict_run(out.run.root, semeval_dir / "test.tsv", log=lambda m: None))
    np.testing.assert_allclose(again.logits, stored.logits, rtol=1e-5, atol=1e-5)


def test_swap_options_refuse_labels_without_directions(tmp_path, demo_dir, tiny_bert):
    from kfold.core.config import Config
    from kfold.training._runner import run_kfold

    cfg = Config(backbone=tiny_bert, data=str(demo_dir / "train.tsv"), folds=2, epochs=1, augment="swap")
    with pytest.raises(ConfigError, match=r"train.tsv \(--augment/--tta swap\): entity swap needs labels with a direction"):
        run_kfold(cfg, tmp_path, log=lambda m: None)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
