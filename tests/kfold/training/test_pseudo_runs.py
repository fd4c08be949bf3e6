"""`kfold run --pseudo-from`: every part's pseudo rows from the right teachers, only in training parts, soft targets
through swap augmentation, the loss and class weights; the run's name, record and resume check; and the leak the
per-fold teachers close, with memorising teachers and students on near-duplicate test rows."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from kfold.core.config import Config, make_config
from kfold.core.errors import ConfigError, StoreError
from kfold.core.store import REFIT, load_predictions
from kfold.core.teachers import Teachers
from kfold.data._demo import _tsv
from kfold.encoding import Features
from kfold.encoding._batching import collate
from kfold.model import RelationLoss, class_weight_vector
from kfold.training import pseudo_labels
from kfold.training._parts import Swapped, fold_data
from kfold.training._runner import run_kfold, run_name

QUIET = dict(log=lambda m: None)
LABELS = ("none", "a", "b", "c")


# ---------------------------------------------------------------- choosing rows per part


def _teachers(fold_probs, full, ids=None, fold_map_hash="h" * 64, names=LABELS):
    ids = np.array([f"t{i}" for i in range(len(full))]) if ids is None else ids
    return Teachers(["T"], ids, names, fold_map_hash, dict(enumerate(fold_probs)), full)


def _confident(rng, n, labels=4):
    """Probabilities with a top probability of 0.95 on a random label per row."""
    p = np.full((n, labels), 0.05 / (labels - 1))
    p[np.arange(n), rng.integers(0, labels, n)] = 0.95
    return p


def test_fold_k_takes_rows_from_fold_k_teachers_and_the_refit_from_the_full_data_ones():
    rng = np.random.default_rng(0)
    folds = np.repeat([0, 1, 2], 20)
    # fold k's teachers are confident on rows k*10..k*10+9 only; the full-data ones on rows 30..39
    fold_probs = [np.full((40, 4), 0.25) for _ in range(3)]
    for k in range(3):
        fold_probs[k][k * 10:(k + 1) * 10] = _confident(rng, 10)
    full = np.full((40, 4), 0.25)
    full[30:] = _confident(rng, 10)
    cfg = Config(pseudo_from=("T",), test="x", pseudo_max_share=5.0, refit=True)
    out = pseudo_labels(cfg, _teachers(fold_probs, full), "h" * 64, folds, LABELS, [f"t{i}" for i in range(40)])
    for k in range(3):
        assert out.rows[k].tolist() == list(range(k * 10, (k + 1) * 10))
        assert np.allclose(out.probs[k], fold_probs[k][k * 10:(k + 1) * 10])
    assert out.rows[REFIT].tolist() == list(range(30, 40))
    naive = pseudo_labels(cfg.replace(pseudo_folds="naive"), _teachers(fold_probs, full), "h" * 64, folds, LABELS,
                          [f"t{i}" for i in range(40)])
    assert all(naive.rows[k].tolist() == list(range(30, 40)) for k in range(3))
    assert out.record["parts"]["0"]["rows"] == 10 and out.record["parts"]["refit"]["real_rows"] == 60


def test_rows_are_joined_on_test_ids_and_capped_by_the_parts_real_rows():
    rng = np.random.default_rng(1)
    folds = np.repeat([0, 1], 10)  # 10 real training rows per fold, 20 for the refit
    probs = _confident(rng, 30)
    ids = np.array([f"t{i}" for i in range(30)])
    reversed_ids = ids[::-1]
    cfg = Config(pseudo_from=("T",), test="x", pseudo_max_share=0.5, pseudo_threshold=0.9, refit=True)
    out = pseudo_labels(cfg, _teachers([probs, probs], probs, ids), "h" * 64, folds, LABELS, reversed_ids,
                        test_y=probs[::-1].argmax(1))
    assert len(out.rows[0]) == 5 and len(out.rows[REFIT]) == 10
    # the student's row j is the teachers' row 29 - j
    assert np.allclose(out.probs[0], probs[::-1][out.rows[0]])
    assert out.record["parts"]["0"]["accuracy_on_test_labels"] == 1.0


@pytest.mark.parametrize("broken, message", [
    (dict(fold_map_hash="g" * 64), "fold map gggggggggggg"),
    (dict(names=("none", "a", "b", "d")), "label names"),
    (dict(ids=np.array([f"u{i}" for i in range(6)])), "another test file"),
])
def test_teachers_of_other_folds_labels_or_test_files_are_refused(broken, message):
    p = np.full((6, 4), 0.25)
    with pytest.raises(ConfigError, match=message) as exc:
        pseudo_labels(Config(pseudo_from=("T",), test="x"), _teachers([p, p], p, **broken), "h" * 64,
                      np.array([0, 1] * 3), LABELS, [f"t{i}" for i in range(6)])
    assert "\n" not in str(exc.value)


def test_teachers_of_a_test_file_with_the_same_ids_but_other_content_are_refused():
    p = np.full((6, 4), 0.25)
    teachers = _teachers([p, p], p)
    teachers.test_hash = "a" * 64
    args = (Config(pseudo_from=("T",), test="x"), teachers, "h" * 64, np.array([0, 1] * 3), LABELS,
            [f"t{i}" for i in range(6)], None)
    assert len(pseudo_labels(*args, "a" * 64).rows) == 2  # the same file: the two folds (no refit asked for)
    with pytest.raises(ConfigError, match="another test file"):
        pseudo_labels(*args, "b" * 64)


def test_teachers_missing_a_folds_probabilities_are_refused():
    p = np.full((6, 4), 0.25)
    with pytest.raises(ConfigError, match=r"fold\(s\) \[2\]"):
        pseudo_labels(Config(pseudo_from=("T",), test="x"), _teachers([p, p], p), "h" * 64, np.array([0, 1, 2] * 2),
                      LABELS, [f"t{i}" for i in range(6)])


# ---------------------------------------------------------------- a fold's training rows


def _feats(n, offset):
    ids = np.arange(n * 3, dtype=np.int32) + offset
    return Features(ids=ids, offsets=np.arange(0, 3 * n + 1, 3), ent=np.zeros((n, 14), np.int32),
                    full=np.full(n, 3), crop=np.zeros(n, np.int8))


def test_pseudo_rows_join_the_training_part_only_with_soft_targets_weights_and_swapped_columns():
    train, test = _feats(6, 0), _feats(4, 1000)
    perm = np.array([0, 2, 1, 3])  # labels a and b are each other's reverse
    swapped = Swapped(perm, _feats(6, 5000), _feats(4, 9000))
    y = np.array([0, 1, 2, 3, 1, 2])
    tr, va = np.array([0, 1, 2, 3]), np.array([4, 5])
    q = np.array([[0.05, 0.9, 0.03, 0.02], [0.0, 0.1, 0.0, 0.9]], np.float32)
    cfg = Config(pseudo_from=("T",), test="x", augment="swap", pseudo_weight=0.5)
    data = fold_data(cfg, tr, va, y, train, test, swapped, (np.array([3, 0]), q))
    assert len(data.train) == 2 * (4 + 2) and len(data.valid) == 2 and data.y_valid.tolist() == [1, 2]
    assert data.train.row(4).tolist() == test.row(3).tolist() and data.train.row(11).tolist() == swapped.test.row(0).tolist()
    assert np.array_equal(data.y_train[:4], np.eye(4)[y[tr]]) and np.allclose(data.y_train[4:6], q)
    assert np.array_equal(data.y_train[6:10], np.eye(4)[perm[y[tr]]])
    assert np.allclose(data.y_train[10], [0.05, 0.03, 0.9, 0.02])  # a's probability moved to b
    assert data.w_train.tolist() == [1, 1, 1, 1, 0.5, 0.5] * 2
    hard = fold_data(cfg.replace(pseudo_targets="hard"), tr, va, y, train, test, swapped, (np.array([3, 0]), q))
    assert hard.y_train.tolist() == [0, 1, 2, 3, 1, 3, 0, 2, 1, 3, 2, 3]
    batch = collate(data.train, np.array([4, 0]), 0, data.y_train, data.w_train)
    assert batch["labels"].dtype == torch.float32 and batch["weights"].tolist() == [0.5, 1.0]


def test_soft_targets_follow_the_documented_rules_for_smoothing_class_weights_and_focal_loss():
    torch.manual_seed(1)
    logits = torch.randn(3, 4, dtype=torch.float64)
    q = torch.tensor([[0.7, 0.2, 0.1, 0.0], [0.0, 0.5, 0.5, 0.0], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    w = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64)
    e, gamma = 0.1, 2.0
    p = logits.softmax(-1).numpy()
    smoothed = (1 - e) * q.numpy() + e / 4
    ce = -(w.numpy() * smoothed * np.log(p)).sum(1)  # -sum_c w_c q'_c log p_c
    focal = (1 - (q.numpy() * p).sum(1)) ** gamma * ce  # p_t = sum_c q_c p_c (unsmoothed)
    rows = np.array([1.0, 0.5, 2.0])
    got_ce = RelationLoss("ce", e, weight=w)(logits, q, torch.tensor(rows))
    got_focal = RelationLoss("focal", e, gamma, weight=w)(logits, q, torch.tensor(rows))
    assert np.isclose(float(got_ce), (ce * rows).mean()) and np.isclose(float(got_focal), (focal * rows).mean())


def test_row_weights_scale_each_rows_loss_and_soft_one_hot_targets_give_the_index_loss():
    torch.manual_seed(0)
    logits, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 1])
    w = torch.tensor([1.0, 0.5, 1.0, 2.0, 0.0])
    for kind in ("ce", "focal"):
        loss = RelationLoss(kind, label_smoothing=0.1, weight=torch.tensor([1.0, 2.0, 1.0, 0.5]))
        per_row = torch.stack([loss(logits[i:i + 1], y[i:i + 1]) for i in range(5)])
        assert torch.allclose(loss(logits, y, w), (per_row * w).mean(), atol=1e-6)
        assert torch.allclose(loss(logits, torch.eye(4)[y], w), loss(logits, y, w), atol=1e-6)


def test_balanced_class_weights_count_soft_targets_by_their_probability_and_row_weight():
    y = np.array([0, 0, 1, 2])
    assert np.allclose(class_weight_vector(np.eye(3)[y], 3, "balanced"), class_weight_vector(y, 3, "balanced"))
    soft = np.array([[1, 0, 0], [0, 1, 0], [0.5, 0.5, 0]], np.float32)
    # counts: label 0 1 + 0.5 x 2 = 2, label 1 1 + 0.5 x 2 = 2, label 2 none (floored at 1); n = 1 + 1 + 2 = 4
    got = class_weight_vector(soft, 3, "balanced", np.array([1, 1, 2], np.float32))
    assert np.allclose(got, [4 / 6, 4 / 6, 4 / 3])


# ---------------------------------------------------------------- configs and names


def test_pseudo_from_is_a_list_in_config_files_and_a_runtime_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('pseudo_from = ["teacher,with,commas", "blend.csv"]\npseudo_threshold = 0.95\n')
    cfg = make_config(path)
    assert cfg.pseudo_from == ("teacher,with,commas", "blend.csv")
    assert run_name(cfg, pseudo="0123456789abcdef") == "split-minilm-s1+pseudo=01234567,pthr=0.95"
    # a run's config.json gives the list back: the same config
    from kfold.core.config import config_from_run

    assert config_from_run(json.loads(json.dumps({"config": cfg.to_dict()}))) == cfg
    assert Config(pseudo_from=None).pseudo_from == ()
    with pytest.raises(ConfigError, match="teachers' digest"):
        run_name(cfg)
    # without teachers the pseudo-label settings do nothing, and do not name the run
    assert run_name(Config(pseudo_threshold=0.95)) == "split-minilm-s1"
    with pytest.raises(ConfigError, match="pseudo_from"):
        Config(pseudo_from=("",))
    with pytest.raises(ConfigError, match="pseudo_threshold"):
        Config(pseudo_threshold=0.0)


def test_the_cli_refuses_pseudo_labels_without_a_test_file_in_one_line(tmp_path, demo_dir, capsys):
    from kfold.cli import main

    rc = main(["run", "--data", str(demo_dir / "train.tsv"), "--workdir", str(tmp_path), "--pseudo-from", "x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "--pseudo-from" in err[0] and "--test" in err[0]
    rc = main(["auto", "--data", str(demo_dir / "train.tsv"), "--test", str(demo_dir / "test.tsv"), "--workdir",
               str(tmp_path), "--budget", "5m", "--pseudo-from", "x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "kfold auto does not plan pseudo-label students" in err[0]
    assert not (tmp_path / "runs").exists()


def test_the_python_api_asks_for_a_teacher_loader(tmp_path, demo_dir):
    cfg = Config(data=str(demo_dir / "train.tsv"), test=str(demo_dir / "test.tsv"), pseudo_from=("x",), cluster="none")
    with pytest.raises(ConfigError, match="teachers=ensemble.load_teachers"):
        run_kfold(cfg, tmp_path, **QUIET)


def test_tuning_fixes_the_teachers_and_compares_stored_lists_with_tuples(tmp_path):
    from tuning._space import load_space
    from tuning._study import _identity

    assert _identity({"pseudo_from": ("a", "b")}) == _identity(json.loads(json.dumps({"pseudo_from": ("a", "b")})))
    for key, spec in (("pseudo_from", '{"type": "categorical", "choices": ["a"]}'),
                      ("pseudo_folds", '{"type": "categorical", "choices": ["honest", "naive"]}')):
        path = tmp_path / f"{key}.json"
        path.write_text(f'{{"{key}": {spec}}}')
        with pytest.raises(ConfigError, match="cannot be tuned"):
            load_space(path)
    path = tmp_path / "ok.json"
    path.write_text('{"pseudo_threshold": {"type": "float", "low": 0.6, "high": 0.95}}')
    assert "pseudo_threshold" in load_space(path)


# ---------------------------------------------------------------- the leak, end to end


class Memoriser(torch.nn.Module):
    """A nearest-neighbour "model": training remembers every row's tokens and (top) label; prediction returns the
    label of the most similar remembered row (Jaccard similarity of token sets, ties to the first). It carries labels
    to near-duplicates, as a large model that memorises does."""

    def __init__(self, num_labels: int, scale: float = 12.0):
        super().__init__()
        self.scale = scale
        self.backbone = torch.nn.Module()
        self.backbone.config = type("C", (), {"num_hidden_layers": 0})()
        self.classifier = torch.nn.Sequential(torch.nn.Linear(1, num_labels))
        self.loss_fn = None
        self.memory: list[tuple[frozenset, int]] = []

    def head_parameters(self):
        return list(self.classifier.parameters())

    def forward(self, input_ids, attention_mask, ent, labels=None, weights=None) -> dict:
        rows = [frozenset(i[m > 0].tolist()) for i, m in zip(input_ids, attention_mask)]
        zero = self.classifier[0].weight.sum() * 0.0
        if self.training and labels is not None:
            top = labels.argmax(1) if labels.is_floating_point() else labels
            self.memory += list(zip(rows, top.tolist()))
            return {"logits": torch.zeros(len(rows), self.classifier[0].out_features) + zero, "loss": zero}
        logits = torch.zeros(len(rows), self.classifier[0].out_features)
        for j, r in enumerate(rows):
            best = max(range(len(self.memory)), key=lambda m: (len(r & self.memory[m][0]) / len(r | self.memory[m][0]), -m))
            logits[j, self.memory[best][1]] = self.scale
        return {"logits": logits + zero}


def _words(n: int) -> list[str]:
    from kfold.encoding import load_tokenizer

    vocab = load_tokenizer("minilm", []).get_vocab()
    plain = sorted(w for w in vocab if w.isalpha() and w.isascii() and 4 <= len(w) <= 7)
    return [plain[i] for i in np.random.default_rng(0).choice(len(plain), n, replace=False)]


def _row(words: list[str], label: str) -> dict:
    sentence = " ".join(words) + " ."
    second = len(words[0]) + 1
    return {"sentence": sentence, "subj": (words[0], 0, len(words[0]) - 1, "X"),
            "obj": (words[1], second, second + len(words[1]) - 1, "X"), "label": label}


@pytest.fixture(scope="module")
def near_duplicates(tmp_path_factory):
    """Training rows of 10 random words with random labels (nothing to learn), and a test file of their
    near-duplicates (one word changed, the same label): only memorised labels predict them."""
    out = tmp_path_factory.mktemp("near-duplicates")
    n = 240
    rng = np.random.default_rng(1)
    words = _words(3000)
    rows = [[words[i] for i in rng.choice(len(words), 10, replace=False)] for _ in range(n)]
    labels = [LABELS[i] for i in rng.integers(0, len(LABELS), n)]
    test = [r[:-1] + [words[i]] for r, i in zip(rows, rng.choice(len(words), n))]
    (out / "train.tsv").write_text(_tsv([_row(r, y) for r, y in zip(rows, labels)], [f"r{i}" for i in range(n)], False))
    (out / "test.tsv").write_text(_tsv([_row(r, y) for r, y in zip(test, labels)], [f"t{i}" for i in range(n)], False))
    (out / "label_type.pkl").write_bytes(pickle.dumps({name: i for i, name in enumerate(LABELS)}))
    return out


def _memorising_run(data, workdir, tag, **over):
    cfg = Config(data=str(data / "train.tsv"), test=str(data / "test.tsv"), folds=3, epochs=1, average_epochs=0,
                 batch_size=64, cluster="none", no_relation="none", **over)
    from ensemble import load_teachers

    return run_kfold(cfg, workdir, tag=tag, model_factory=lambda c, k, v: Memoriser(k, 10.0 + c.seed), teachers=load_teachers, **QUIET)


def test_fold_honest_teachers_keep_the_oof_estimate_where_naive_ones_inflate_it(near_duplicates, tmp_path):
    teacher = _memorising_run(near_duplicates, tmp_path, "teacher", refit=True)
    none = _memorising_run(near_duplicates, tmp_path, "none")
    shared = dict(pseudo_from=(teacher.run.name,), pseudo_max_share=2.0)
    honest = _memorising_run(near_duplicates, tmp_path, "honest", refit=True, **shared)
    naive = _memorising_run(near_duplicates, tmp_path, "naive", pseudo_folds="naive", **shared)
    acc = {name: out.oof_scores["accuracy"] for name, out in
           (("teacher", teacher), ("none", none), ("honest", honest), ("naive", naive))}
    # the labels are random: nothing generalises, the memorisers score chance (25%) out of fold ...
    assert all(15 < acc[k] < 35 for k in ("teacher", "none")), acc
    # ... unless the validation rows' own labels come back through the teachers' near-duplicate test rows
    assert acc["naive"] > 90, acc
    assert abs(acc["honest"] - acc["none"]) < 12, acc
    config = json.loads(honest.run.config_path.read_text())
    assert config["pseudo"]["teachers"] == [teacher.run.name] and config["pseudo"]["parts"]["0"]["rows"] == 240
    # the fold-k teachers label the near-duplicates of fold k's own validation rows by chance, the others exactly
    assert config["pseudo"]["parts"]["refit"]["accuracy_on_test_labels"] == 1.0
    assert 0.4 < config["pseudo"]["parts"]["0"]["accuracy_on_test_labels"] < 0.85
    done = json.loads((honest.run.root / "fold0" / "done.json").read_text())
    assert done["pseudo_rows"] == 240 and done["n_valid"] == 80
    refit = json.loads((honest.run.root / "refit" / "done.json").read_text())
    assert refit["pseudo_rows"] == 240 and refit["n_train"] == 240
    assert "refit" not in json.loads(naive.run.config_path.read_text())["pseudo"]["parts"]  # no --refit, no rows
    # a naive student's fold models saw every fold's validation rows: it cannot teach
    with pytest.raises(ConfigError, match="naive pseudo-labels"):
        _memorising_run(near_duplicates, tmp_path, "grandchild", pseudo_from=(naive.run.name,))
    # the report marks pseudo-labelled runs (and says what naive means)
    from kfold.report import build_report, render

    text, _, table_csv = render(build_report(tmp_path, n_boot=50), "accuracy")
    assert f"{naive.run.name} (pseudo, naive)" in text and f"{honest.run.name} (pseudo, honest)" in text
    assert "naive: from the teachers' full-data predictions" in text and f"{none.run.name} " in text
    assert table_csv.splitlines()[0].endswith(",pseudo") and ",naive" in table_csv
    # one row per training id: validation parts never took pseudo rows
    oof = load_predictions(honest.run.oof_path)
    assert len(oof.ids) == 240 and set(oof.ids) == {f"r{i}" for i in range(240)}

    # blending a student with its teacher stays honest: each fold's chain never saw that fold's validation rows
    from ensemble import load_members, make_blender, score_blend
    from kfold.core.store import RunDir

    def blended(student):
        members = load_members([RunDir(teacher.run.root), RunDir(student.run.root)], need_test=False)
        _, scores, _ = score_blend(make_blender("weighted", metric="accuracy", label_names=LABELS), members.names,
                                   members.oof, members.y, members.folds, "accuracy", LABELS)
        return scores.honest

    assert blended(honest) < 40 and blended(naive) > 85


def test_a_student_is_named_by_its_teachers_digest_and_refuses_other_teachers_on_resume(near_duplicates, tmp_path):
    first = _memorising_run(near_duplicates, tmp_path, "t1", refit=True)
    second = _memorising_run(near_duplicates, tmp_path, "t2", refit=True, seed=2)
    cfg = dict(pseudo_from=(first.run.name,))
    student = _memorising_run(near_duplicates, tmp_path, "", **cfg)
    digest = json.loads(student.run.config_path.read_text())["pseudo"]["digest"]
    assert student.run.name == f"split-minilm-s1+pseudo={digest[:8]},ep=1,bs=64,avg=0"
    # the same teachers again: the same run, resumed (nothing trained)
    again = _memorising_run(near_duplicates, tmp_path, "", **cfg)
    assert again.run.name == student.run.name and not again.trained
    # other teachers under the same --tag: refused, the completed folds kept
    _memorising_run(near_duplicates, tmp_path, "student", **cfg)
    with pytest.raises(StoreError, match="pseudo.digest"):
        _memorising_run(near_duplicates, tmp_path, "student", pseudo_from=(second.run.name,))
    assert (tmp_path / "runs" / "split-minilm-s1-student" / "oof.npz").exists()
