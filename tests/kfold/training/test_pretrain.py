"""kfold pretrain: MLM on the task's marked sentences, markers masked, the written folder as a backbone, the pooler
carried over, resuming an interrupted epoch, whole words on real vocabularies, and refusals."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from kfold.cli import main
from kfold.core.config import Config
from kfold.core.errors import ConfigError, StoreError
from kfold.data._readers import read_dataset
from kfold.encoding import BUILD_RECORD, built_backbone_hash, encode, load_tokenizer, marker_tokens
from kfold.training import FoldData, PretrainSettings, pretrain, train_fold
from kfold.training import _pretrain


def _cfg(demo_dir, backbone, **kw):
    return Config(data=str(demo_dir / "train.tsv"), backbone=backbone, marker="entity_marker", max_len=64,
                  precision="fp32", **kw)


@pytest.fixture(scope="module")
def tapt(demo_dir, tiny_bert, tmp_path_factory):
    """The tiny BERT pretrained for 3 epochs on the demo sentences with bracket markers, and its log."""
    out = tmp_path_factory.mktemp("tapt") / "bert-tapt"
    lines = []
    pretrain(_cfg(demo_dir, tiny_bert), out, PretrainSettings(epochs=3, lr=1e-3, batch_size=16), log=lines.append)
    return out, lines


def test_mlm_loss_falls_and_the_record_says_what_was_done(tapt, demo_dir):
    out, lines = tapt
    record = json.loads((out / BUILD_RECORD).read_text())
    losses = [e["loss"] for e in record["epochs"]]
    assert len(losses) == 3 and losses[-1] < losses[0] - 0.1, losses
    assert record["identity"]["test_text_used"] is False and record["rows"] == 120
    assert record["identity"]["files"][0]["sha256"] and record["steps"] == 3 * 8
    assert record["content_hash"] == built_backbone_hash(str(out))  # what runs record and check
    assert any("whole words (WordPiece ## pieces)" in line for line in lines)
    assert any("no MLM head; a new one is trained" in line for line in lines)  # saved as a bare BertModel


def test_the_folder_loads_keeps_the_pooler_and_the_markers_and_trains_a_fold(tapt, tiny_bert, demo_dir):
    from transformers import AutoModel, AutoTokenizer

    out, _ = tapt
    tok = AutoTokenizer.from_pretrained(out)
    markers = marker_tokens("entity_marker", [])
    assert set(markers) <= set(tok.get_added_vocab())
    tuned, original = AutoModel.from_pretrained(out), AutoModel.from_pretrained(tiny_bert)
    for name, tensor in original.pooler.state_dict().items():
        assert torch.equal(tuned.pooler.state_dict()[name], tensor)  # MLM never trains it: carried over unchanged
    assert not torch.equal(tuned.encoder.layer[0].attention.self.query.weight,
                           original.encoder.layer[0].attention.self.query.weight)
    # fine-tuning reads the rows exactly as it would with the original backbone (same ids, markers included)
    ds = read_dataset(demo_dir / "train.tsv")
    before, _ = encode(ds, load_tokenizer(tiny_bert, markers), "entity_marker", 64)
    after, _ = encode(ds, load_tokenizer(str(out), markers), "entity_marker", 64)
    assert np.array_equal(before.ids, after.ids) and np.array_equal(before.ent, after.ent)
    tok2 = load_tokenizer(str(out), markers)
    tr, va = np.arange(0, 90), np.arange(90, 120)
    res = train_fold(Config(backbone=str(out), epochs=1, batch_size=16, precision="fp32", marker="entity_marker"),
                     ds.label_names, FoldData(after.take(tr), ds.y[tr], after.take(va), ds.y[va]),
                     pad_id=tok2.pad_token_id, vocab_size=len(tok2), log=lambda m: None)
    assert np.isfinite(res.valid_logits).all() and res.valid_logits.shape == (30, len(ds.label_names))


def test_markers_are_masked_and_frame_tokens_never(demo_dir, tiny_bert):
    markers = marker_tokens("entity_marker", [])
    tok = load_tokenizer(tiny_bert, markers)
    feats, _ = encode(read_dataset(demo_dir / "train.tsv"), tok, "entity_marker", 64)
    words = _pretrain.word_ids(feats, tok, whole_word=True)
    batch = _pretrain.mask_rows(feats, words, np.arange(len(feats)), 0.3, np.random.default_rng(0), tok.mask_token_id,
                                len(tok), tok.pad_token_id)
    labels, ids = batch["labels"], batch["input_ids"]
    marker_ids = set(tok.convert_tokens_to_ids(markers))
    chosen = labels[labels != -100]
    assert any(int(t) in marker_ids for t in chosen)  # a collator would never mask these special tokens
    assert not any(int(t) in (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id) for t in chosen)
    share_masked = float((ids[labels != -100] == tok.mask_token_id).float().mean())
    assert 0.7 < share_masked < 0.9  # 80% of the chosen tokens become the mask token


def test_whole_words_on_the_packaged_vocabularies():
    from kfold.encoding import Features

    for backbone, text, scheme in (("minilm", "the unbelievably hydrophobic surface", "WordPiece"),
                                   ("me5-small", "삼성전자는 서울에서 설립되었다", "SentencePiece")):
        tok = load_tokenizer(backbone, [])
        name, _ = _pretrain.word_start_rule(tok)
        assert name.startswith(scheme)
        ids = np.array(tok(text)["input_ids"], dtype=np.int32)
        feats = Features(ids, np.array([0, len(ids)]), np.zeros((1, 10), np.int64), np.zeros(1), np.zeros(1))
        words = _pretrain.word_ids(feats, tok, whole_word=True)
        pieces = tok.convert_ids_to_tokens(ids.tolist())
        n_words = len(text.split())
        assert words.max() + 1 == n_words, (pieces, words)  # pieces of one word share its number
        assert words[0] == -1 and words[-1] == -1  # the frame is never masked
        assert (_pretrain.word_ids(feats, tok, whole_word=False).max() + 1) == len(ids) - 2


def test_the_source_backbone_is_identified_by_its_content(tmp_path, tiny_bert):
    import shutil

    from kfold.encoding import resolve_backbone

    # the packaged MiniLM folder holds sub-folders (sentence-transformers' 1_Pooling): its files are hashed, not those
    packaged = _pretrain._source_identity(resolve_backbone("minilm"))
    assert len(packaged["content_hash"]) == 64
    copy = tmp_path / "bert"
    shutil.copytree(tiny_bert, copy)
    assert _pretrain._source_identity(str(copy))["content_hash"] == _pretrain._source_identity(tiny_bert)["content_hash"]
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # the same size, other weights
    weights.write_bytes(bytes(data))
    assert _pretrain._source_identity(str(copy))["content_hash"] != _pretrain._source_identity(tiny_bert)["content_hash"]
    assert _pretrain._source_identity("xlm-roberta-large") == {"id": "xlm-roberta-large"}


def test_an_interrupted_epoch_resumes_and_ends_where_an_uninterrupted_run_does(demo_dir, tiny_bert, tmp_path,
                                                                            monkeypatch):
    settings = PretrainSettings(epochs=2, lr=1e-3, batch_size=32)
    whole = pretrain(_cfg(demo_dir, tiny_bert), tmp_path / "whole", settings, log=lambda m: None)
    calls = []
    real = _pretrain.mask_rows

    def stop_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:  # 4 batches per epoch: the second batch of epoch 2
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(_pretrain, "mask_rows", stop_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        pretrain(_cfg(demo_dir, tiny_bert), tmp_path / "cut", settings, log=lambda m: None)
    assert not (tmp_path / "cut").exists() and (tmp_path / "cut.pretrain-state" / "state.pt").exists()
    monkeypatch.setattr(_pretrain, "mask_rows", real)
    lines = []
    cut = pretrain(_cfg(demo_dir, tiny_bert), tmp_path / "cut", settings, log=lines.append)
    assert any("resuming after epoch 1" in line for line in lines)
    assert not (tmp_path / "cut.pretrain-state").exists()
    from safetensors.torch import load_file

    a, b = load_file(whole / "model.safetensors"), load_file(cut / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rec_a, rec_b = (json.loads((p / BUILD_RECORD).read_text()) for p in (whole, cut))
    assert [e["loss"] for e in rec_a["epochs"]] == [e["loss"] for e in rec_b["epochs"]]


def test_refusals_and_a_finished_folder(tapt, demo_dir, tiny_bert, tmp_path, capsys):
    out, _ = tapt
    lines = []
    assert pretrain(_cfg(demo_dir, tiny_bert), out, PretrainSettings(epochs=3, lr=1e-3, batch_size=16),
                    log=lines.append) == out
    assert any("already pretrained" in line for line in lines) and not any("epoch" in line for line in lines)
    with pytest.raises(StoreError, match="field 'epochs': this folder was pretrained with 3, now 4"):
        pretrain(_cfg(demo_dir, tiny_bert), out, PretrainSettings(epochs=4, lr=1e-3, batch_size=16), log=lines.append)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    code = main(["pretrain", "--out", str(tmp_path / "other"), "--backbone", tiny_bert, "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "is not a folder kfold pretrain wrote" in err
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_cli_with_test_text_records_it(demo_dir, tiny_bert, tmp_path):
    out = tmp_path / "with-test"
    code = main(["pretrain", "--out", str(out), "--data", str(demo_dir / "train.tsv"), "--test",
                 str(demo_dir / "test.tsv"), "--backbone", tiny_bert, "--epochs", "1", "--max-len", "64",
                 "--precision", "fp32", "--marker", "entity_marker"])
    record = json.loads((out / BUILD_RECORD).read_text())
    assert code == 0 and record["identity"]["test_text_used"] is True and record["rows"] == 150


def test_runs_record_the_folders_hash_and_refuse_other_weights_under_its_path(tapt, demo_dir, tmp_path):
    import shutil

    from kfold.training import run_kfold

    out, _ = tapt
    folder = tmp_path / "tapt"
    shutil.copytree(out, folder)
    cfg = Config(data=str(demo_dir / "train.tsv"), backbone=str(folder), marker="entity_marker", max_len=64, folds=2,
                 epochs=1, batch_size=16, precision="fp32", cluster="none")
    run_kfold(cfg, tmp_path / "w", folds=[0], log=lambda m: None)
    run_dir = next((tmp_path / "w" / "runs").iterdir())
    record = json.loads((folder / BUILD_RECORD).read_text())
    assert json.loads((run_dir / "config.json").read_text())["backbone_hash"] == record["content_hash"]
    record["content_hash"] = "f" * 64  # the folder pretrained again, with other settings
    (folder / BUILD_RECORD).write_text(json.dumps(record))
    with pytest.raises(StoreError, match="field 'backbone_hash': the run was made with other weights"):
        run_kfold(cfg, tmp_path / "w", folds=[1], log=lambda m: None)
    assert not (run_dir / "fold1").exists()


def test_a_saved_epoch_that_cannot_be_read_or_is_another_pretrainings_is_refused_in_one_line(demo_dir, tiny_bert,
                                                                                            tmp_path):
    state = tmp_path / "out.pretrain-state" / "state.pt"
    state.parent.mkdir()
    state.write_bytes(b"not a torch file")
    settings = PretrainSettings(epochs=1, lr=1e-3, batch_size=32)
    with pytest.raises(StoreError, match=r"out.pretrain-state/state.pt: cannot read the saved epoch \(.*\); delete it"):
        pretrain(_cfg(demo_dir, tiny_bert), tmp_path / "out", settings, log=lambda m: None)
    torch.save({"identity": {"epochs": 99}, "history": []}, state)
    with pytest.raises(StoreError, match="saved by a pretraining with other settings or data"):
        pretrain(_cfg(demo_dir, tiny_bert), tmp_path / "out", settings, log=lambda m: None)
    assert state.exists() and not (tmp_path / "out").exists()  # nothing deleted, nothing written


def test_a_config_files_test_key_does_not_add_test_text_without_the_flag(demo_dir, tiny_bert, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(f'test = "{demo_dir / "test.tsv"}"\nepochs = 9\n')
    code = main(["pretrain", "--out", str(tmp_path / "o"), "--config", str(config), "--data",
                 str(demo_dir / "train.tsv"), "--backbone", tiny_bert, "--epochs", "1", "--max-len", "64",
                 "--precision", "fp32", "--marker", "entity_marker"])
    record = json.loads((tmp_path / "o" / BUILD_RECORD).read_text())
    assert code == 0 and record["identity"]["test_text_used"] is False and record["rows"] == 120
    assert record["identity"]["epochs"] == 1  # the command's --epochs, not the run config's


def test_a_partial_copy_of_a_folder_does_not_carry_its_hash(tapt, tmp_path):
    import shutil

    out, _ = tapt
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert built_backbone_hash(str(copy)) == built_backbone_hash(str(out)) is not None
    (copy / "tokenizer.json").unlink()
    assert built_backbone_hash(str(copy)) is None


@pytest.mark.parametrize("kind", ["bert", "roberta", "xlmr", "electra"])
def test_the_head_on_masked_positions_only_gives_the_models_own_loss(kind, tiny_dir, demo_dir):
    from tiny import tiny_backbone

    source = tiny_backbone(kind, tiny_dir)
    tok = load_tokenizer(source, marker_tokens("entity_marker", []))
    feats, _ = encode(read_dataset(demo_dir / "train.tsv"), tok, "entity_marker", 64)
    batch = _pretrain.mask_rows(feats, _pretrain.word_ids(feats, tok, True), np.arange(8), 0.15,
                                np.random.default_rng(0), tok.mask_token_id, len(tok), tok.pad_token_id)
    model, _ = _pretrain._mlm_model(source, len(tok), "eager")
    lines = []
    loss = _pretrain.MaskedLoss(model, batch, lines.append)
    assert loss.head is not None and not lines  # the fast path is taken for every packaged architecture
    model.eval()
    with torch.no_grad():
        assert torch.allclose(loss(model, batch), model(**batch).loss, rtol=1e-5, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as bf16 training computes it
            assert abs(float(loss(model, batch)) - float(model(**batch).loss)) < 0.05
    model.train()
    torch.manual_seed(1)
    loss(model, batch).backward()  # and it trains the head's own layers (the decoder is tied to the embeddings)
    own = [p.grad for n, p in loss.head.named_parameters() if "decoder" not in n and p.ndim == 2]
    assert own and all(g is not None and g.abs().sum() > 0 for g in own)


@pytest.mark.parametrize("how", ["wrong logits", "needs more inputs", "unknown architecture"])
def test_a_head_that_fails_the_check_runs_on_every_token_and_says_so(how, tiny_bert, demo_dir, monkeypatch):
    tok = load_tokenizer(tiny_bert, [])
    feats, _ = encode(read_dataset(demo_dir / "train.tsv"), tok, "entity_marker_punct", 64)
    batch = _pretrain.mask_rows(feats, _pretrain.word_ids(feats, tok, True), np.arange(4), 0.15,
                                np.random.default_rng(0), tok.mask_token_id, len(tok), tok.pad_token_id)
    model, _ = _pretrain._mlm_model(tiny_bert, len(tok), "eager")
    if how == "unknown architecture":
        monkeypatch.setattr(_pretrain, "_mlm_head", lambda m: None)
    else:
        real = model.cls.forward
        model.cls.forward = ((lambda hidden: real(hidden) + (hidden.ndim == 2)) if how == "wrong logits"
                             else (lambda hidden, extra: real(hidden)))
    lines = []
    loss = _pretrain.MaskedLoss(model, batch, lines.append)
    assert loss.head is None and lines == ["pretrain: BertForMaskedLM: the MLM head runs on every token (its "
                                           "masked-only use is not known for this architecture)"]


class _FakeCluster:
    """An executor of pretraining parts that computes them here, and fails as told: ``fail`` maps an epoch (1-based)
    to what its attempts do in turn ("error", "config", "died", "interrupt" = Ctrl-C while waiting, "lost" = the
    runtime gone, "other" = another part's event); attempts past the list compute the epoch."""

    def __init__(self, fail=None, refuse_check=False):
        self.fail, self.refuse_check = dict(fail or {}), refuse_check
        self.calls, self.queue, self.closed = [], [], False

    def check(self, backbones):
        self.calls.append(("check", tuple(backbones)))
        if self.refuse_check:
            raise ConfigError("1 mismatch between the nodes and this machine; nothing was submitted")

    def put(self, payload):
        return payload

    def submit(self, key, spec, payload, *, alone=False):
        self.calls.append(("submit", key, alone))
        self.queue.append((key, spec, payload))

    def wait(self, timeout=None):
        from kfold.core.errors import RuntimeLost
        from kfold.training import pretrain_part
        from kfold.training._resources import Event

        key, spec, payload = self.queue.pop(0)
        todo = self.fail.get(spec.epoch + 1, [])
        kind = todo.pop(0) if todo else "done"
        if kind == "interrupt":
            raise KeyboardInterrupt
        if kind == "lost":
            raise RuntimeLost("the Ray runtime was lost: the cluster's head (10.0.0.1:6379) cannot be reached")
        if kind == "other":
            return [Event("another", "done")]
        if kind == "died":
            return [Event(key, "died", message="NodeDiedError: node 10.0.0.2 stopped")]
        if kind in ("error", "config"):
            error = RuntimeError("CUDA out of memory\nmore") if kind == "error" else ConfigError("no such marker")
            return [Event(key, "error", error=error, traceback="Traceback (most recent call last):\n  boom")]
        return [Event(key, "done", result=pretrain_part(spec, payload, node="node-b"))]

    def close(self):
        self.closed = True


DIED = ["died"] * 4  # the first attempt and --retries 3 more


@pytest.mark.parametrize("fail, error, line", [
    (["error"], "TrainingError", r"^pretrain epoch 2/3 failed on the cluster \(CUDA out of memory\); epoch 1 is saved "
                                 r"and the same command resumes there$"),
    (["config"], "ConfigError", r"^pretrain epoch 2/3 failed on the cluster \(no such marker\); epoch 1 is saved"),
    (DIED, "TrainingError", r"^pretrain epoch 2/3 was lost on the cluster \(NodeDiedError: node 10\.0\.0\.2 "
                            r"stopped\); epoch 1 is saved and the same command resumes there$"),
    (["lost"], "RuntimeLost", r"^pretrain epoch 2/3: the Ray runtime was lost: the cluster's head \(10\.0\.0\.1:6379\) "
                              r"cannot be reached; epoch 1 is saved and the same command resumes there$"),
    (["other"], "TrainingError", r"^pretrain epoch 2/3: the executor answered 1 event\(s\) \(another\), not this "),
    (["interrupt"], "KeyboardInterrupt", None)])
def test_a_cluster_epoch_that_fails_keeps_the_epochs_before_and_the_rerun_ends_where_one_run_does(fail, error, line,
                                                                                                  demo_dir, tiny_bert,
                                                                                                  tmp_path):
    from safetensors.torch import load_file

    from kfold.core import errors
    from kfold.training import run_pretrain

    cfg, settings = _cfg(demo_dir, tiny_bert), PretrainSettings(epochs=3, lr=1e-3, batch_size=32)
    whole = pretrain(cfg, tmp_path / "whole", settings, log=lambda m: None)
    cluster, lines = _FakeCluster(fail={2: list(fail)}), []
    with pytest.raises(getattr(errors, error, KeyboardInterrupt), match=line) as raised:
        run_pretrain(cfg, tmp_path / "cut", settings, log=lines.append, executor=cluster)
    assert type(raised.value).__name__ == error  # the part's own kind of error, not a wrapper's
    assert cluster.closed and not (tmp_path / "cut").exists()
    attempts = len(fail) if fail == DIED else 1
    assert cluster.calls == [("check", (tiny_bert,)), ("submit", 0, True)] + [("submit", 1, True)] * attempts
    if error in ("TrainingError", "ConfigError") and fail != DIED and fail != ["other"]:
        assert "pretrain epoch 2/3 |   boom" in lines  # the part's traceback reaches the log
    saved = torch.load(tmp_path / "cut.pretrain-state" / "state.pt", weights_only=False)
    assert [e["epoch"] for e in saved["history"]] == [1] and saved["history"][0]["node"] == "node-b"
    lines = []
    cut = run_pretrain(cfg, tmp_path / "cut", settings, log=lines.append, executor=_FakeCluster())  # the same command
    assert any("resuming after epoch 1" in x for x in lines)
    a, b = load_file(whole / "model.safetensors"), load_file(cut / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # epochs moved between places: same


def test_an_epoch_whose_worker_died_is_submitted_again_and_a_finished_folder_needs_no_cluster(demo_dir, tiny_bert,
                                                                                             tmp_path):
    from kfold.training import run_pretrain

    cfg, settings = _cfg(demo_dir, tiny_bert), PretrainSettings(epochs=2, lr=1e-3, batch_size=32)
    cluster, lines = _FakeCluster(fail={1: ["died"]}), []
    out = run_pretrain(cfg, tmp_path / "out", settings, log=lines.append, executor=cluster)
    assert ("pretrain epoch 1/2: its worker died (NodeDiedError: node 10.0.0.2 stopped); submitted again (attempt 2 "
            "of 4)") in lines
    assert [c[:2] for c in cluster.calls] == [("check", (tiny_bert,)), ("submit", 0), ("submit", 0), ("submit", 1)]
    again = _FakeCluster()
    assert run_pretrain(cfg, out, settings, log=lambda m: None, executor=again) == out
    assert again.calls == [] and not again.closed  # finished: the cluster was never asked for anything


def test_a_node_without_the_backbone_is_refused_before_any_epoch_and_the_executor_closed(demo_dir, tiny_bert, tmp_path):
    from kfold.training import run_pretrain

    cluster = _FakeCluster(refuse_check=True)
    with pytest.raises(ConfigError, match="nothing was submitted"):
        run_pretrain(_cfg(demo_dir, tiny_bert), tmp_path / "out", PretrainSettings(epochs=1), log=lambda m: None,
                     executor=cluster)
    assert cluster.closed and cluster.calls == [("check", (tiny_bert,))] and not (tmp_path / "out").exists()


def test_the_optimizer_and_schedule_an_epoch_is_given_are_the_ones_it_continues(demo_dir, tiny_bert):
    # pretrain_epoch restores every part of the state it is given: each one changed changes the epoch's result
    tok = load_tokenizer(tiny_bert, marker_tokens("entity_marker", []))
    feats, _ = encode(read_dataset(demo_dir / "train.tsv"), tok, "entity_marker", 64)
    payload = _pretrain.PretrainPayload(feats, _pretrain.word_ids(feats, tok, True))
    spec = _pretrain.PretrainSpec(_cfg(demo_dir, tiny_bert), PretrainSettings(epochs=2, lr=1e-3, batch_size=32),
                                  tiny_bert, 0, len(tok), tok.mask_token_id, tok.pad_token_id)
    _, state = _pretrain.pretrain_epoch(spec, payload, lambda m: None)
    second = dataclasses.replace(spec, epoch=1)

    def after(state_given):
        _, out = _pretrain.pretrain_epoch(second, dataclasses.replace(payload, state=state_given), lambda m: None)
        return out["model"]["bert.encoder.layer.0.attention.self.query.weight"]

    reference = after(state)
    assert torch.equal(after(state), reference)  # deterministic
    fresh_adam = {**state, "optimizer": {**state["optimizer"], "state": {}}}
    restarted = {**state, "scheduler": {**state["scheduler"], "last_epoch": 0, "_step_count": 1}}
    for changed in (fresh_adam, restarted):
        assert not torch.equal(after(changed), reference)
