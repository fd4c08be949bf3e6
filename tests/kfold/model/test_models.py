"""Every registered variant on every tiny encoder family; pooler choice; losses; the registry."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from kfold.core.config import Config
from kfold.core.errors import ConfigError
from kfold.core.variants import Variant, get_variant, list_variants, parse_variants, register
from kfold.data._schema import Dataset, Example, Span
from kfold.encoding._batching import collate
from kfold.encoding._encode import encode
from kfold.encoding._markers import marker_tokens
from kfold.encoding._tokenizer import load_tokenizer
from kfold.model._losses import RelationLoss, class_weight_vector, rdrop_kl
from kfold.model._models import _set_dropout, load_backbone
from kfold.training import build_model, pick_attention
from tests.tiny import KINDS, tiny_backbone

SENTENCES = [
    ("Kim works at Samsung.", (0, 3), (13, 20), 1),
    ("Lee was born in Seoul.", (0, 3), (16, 21), 2),
    ("Samsung was founded by Lee.", (0, 7), (23, 26), 3),
    ("Kim and Lee met in Seoul.", (0, 3), (8, 11), 0),
]


def _batch(path: str, marker: str = "entity_marker_punct"):
    tok = load_tokenizer(path, marker_tokens(marker, []))
    examples = [Example(str(i), s, Span(*a), Span(*b), "x") for i, (s, a, b, _) in enumerate(SENTENCES)]
    feats, _ = encode(Dataset("mem", examples, ("x",)), tok, marker, 48)
    y = np.array([lab for *_, lab in SENTENCES])
    return tok, collate(feats, np.arange(len(examples)), tok.pad_token_id, y)


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    return {kind: tiny_backbone(kind, folder) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", [v.name for v in list_variants()])
def test_every_variant_gives_logits_and_learns_a_fixed_batch(backbones, kind, variant):
    path = backbones[kind]
    tok, batch = _batch(path)
    cfg = Config(variant=variant, backbone=path, dropout=0.0)
    torch.manual_seed(0)
    model = build_model(cfg, 4, len(tok))
    model.loss_fn = RelationLoss()
    out = model(**{k: v for k, v in batch.items() if k != "labels"})
    assert set(out) == {"logits"} and out["logits"].shape == (4, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        loss = model(**batch)["loss"]
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert losses[-1] < losses[0] * 0.85, losses


def test_split_has_two_entity_layers_share_has_one(backbones):
    tok, _ = _batch(backbones["bert"])
    split = build_model(Config(variant="split", backbone=backbones["bert"]), 4, len(tok))
    share = build_model(Config(variant="share", backbone=backbones["bert"]), 4, len(tok))
    assert split.e1_fc is not split.e2_fc and share.e1_fc is share.e2_fc
    hidden = split.backbone.config.hidden_size
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(split) - n(share) == hidden * hidden + hidden


@pytest.mark.parametrize("kind,expect_pooler", [("bert", True), ("roberta", False), ("xlmr", False), ("electra", False)])
def test_cls_vector_comes_from_pooler_only_when_trained(backbones, kind, expect_pooler, caplog):
    with caplog.at_level(logging.WARNING):
        model, has_pooler = load_backbone(backbones[kind], want_pooler=True)
    assert has_pooler is expect_pooler
    assert (getattr(model, "pooler", None) is not None) is expect_pooler
    text = caplog.text.lower()
    assert "newly initialized" not in text and "not initialized" not in text


def test_skipping_a_trained_pooler_prints_no_load_report(backbones, caplog):
    from transformers import AutoModel

    with caplog.at_level(logging.WARNING):
        AutoModel.from_pretrained(backbones["bert"], add_pooling_layer=False)
    assert "LOAD REPORT" in caplog.text and "pooler" in caplog.text  # what transformers says on its own
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        model, has_pooler = load_backbone(backbones["bert"], want_pooler=False)
    assert not has_pooler and getattr(model, "pooler", None) is None
    assert "LOAD REPORT" not in caplog.text


def test_cls_head_uses_first_token_without_pooler(backbones):
    tok, batch = _batch(backbones["roberta"])
    model = build_model(Config(variant="cls", backbone=backbones["roberta"], dropout=0.0), 4, len(tok)).eval()
    hidden = model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    expected = model.classifier(hidden[:, 0])
    got = model(batch["input_ids"], batch["attention_mask"], batch["ent"])["logits"]
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_cls_vector_setting_picks_pooler_first_token_or_token_mean(backbones, kind):
    tok, batch = _batch(backbones[kind])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert (mask == 0).any()  # padded rows: the mean must leave padding out

    def logits_and_hidden(cls_vector):
        cfg = Config(variant="cls", backbone=backbones[kind], dropout=0.0, cls_vector=cls_vector)
        model = build_model(cfg, 4, len(tok)).eval()
        out = model.backbone(input_ids=ids, attention_mask=mask)
        return model, out, model(ids, mask, batch["ent"])["logits"]

    model, out, got = logits_and_hidden("mean")
    m = mask.unsqueeze(-1).float()
    torch.testing.assert_close(got, model.classifier((out.last_hidden_state * m).sum(1) / m.sum(1)))
    model, out, got = logits_and_hidden("first")
    assert getattr(model.backbone, "pooler", None) is None  # not even built
    torch.testing.assert_close(got, model.classifier(out.last_hidden_state[:, 0]))
    model, out, got = logits_and_hidden("auto")
    if kind == "bert":  # a trained pooler is used
        torch.testing.assert_close(got, model.classifier(out.pooler_output))
    else:
        torch.testing.assert_close(got, model.classifier(out.last_hidden_state[:, 0]))


@pytest.mark.parametrize("kind", KINDS)
def test_encoder_dropout_settings_reach_every_dropout_of_the_encoder(backbones, kind):
    def encoder_dropouts(**settings):
        model = build_model(Config(variant="split", backbone=backbones[kind], **settings), 4, None)
        found = {"attention": set(), "hidden": set()}
        for name, module in model.backbone.named_modules():
            if isinstance(module, torch.nn.Dropout):
                found["attention" if name.endswith("attention.self.dropout") else "hidden"].add(module.p)
        return model, found

    _, found = encoder_dropouts(backbone_dropout=-1.0, attention_dropout=-1.0)  # -1: the checkpoint's own 0.1
    assert found == {"attention": {0.1}, "hidden": {0.1}}
    assert encoder_dropouts()[1] == {"attention": {0.0}, "hidden": {0.0}}  # the default: no encoder dropout
    model, found = encoder_dropouts(backbone_dropout=0.3, attention_dropout=0.0)
    assert found == {"attention": {0.0}, "hidden": {0.3}}
    assert model.backbone.config.hidden_dropout_prob == 0.3 and model.backbone.config.attention_probs_dropout_prob == 0.0
    # with every dropout off, training mode is deterministic; with the checkpoint's dropout it is not
    tok, batch = _batch(backbones[kind])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    for settings, same in (({}, True), ({"backbone_dropout": -1.0, "attention_dropout": -1.0}, False)):
        torch.manual_seed(0)
        model = build_model(Config(variant="split", backbone=backbones[kind], dropout=0.0, **settings), 4, len(tok)).train()
        assert torch.equal(model(**inputs)["logits"], model(**inputs)["logits"]) is same, settings


def test_dropout_setting_on_a_config_without_it_names_the_backbone_and_the_keys():
    from transformers import PretrainedConfig

    config = PretrainedConfig()  # the base class: no dropout attributes (named PreTrainedConfig in transformers 5)
    with pytest.raises(ConfigError, match=f"backbone 'x/y': its config \\({type(config).__name__}\\) has none of "
                                          "attention_probs_dropout_prob, attention_dropout, so attention_dropout cannot be set"):
        _set_dropout(config, "x/y", "attention_dropout", 0.0)


def test_attention_kernels_compute_the_same_logits_and_auto_picks_eager_for_cpu_bf16(backbones):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert pick_attention("auto", cpu, torch.bfloat16) == "eager"
    assert pick_attention("auto", cpu, None) is None and pick_attention("auto", cuda, torch.bfloat16) is None
    assert pick_attention("sdpa", cpu, torch.bfloat16) == "sdpa" and pick_attention("eager", cuda, None) == "eager"
    tok, batch = _batch(backbones["bert"])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = {}
    for kernel in ("eager", "sdpa"):
        torch.manual_seed(0)
        model = build_model(Config(variant="split", backbone=backbones["bert"], attn_implementation=kernel), 4, len(tok))
        assert model.backbone.config._attn_implementation == kernel
        logits[kernel] = model.eval()(**inputs)["logits"]
    torch.testing.assert_close(logits["eager"], logits["sdpa"], atol=1e-5, rtol=1e-5)


def test_marker_tokens_resize_embeddings(backbones):
    tok = load_tokenizer(backbones["bert"], marker_tokens("entity_marker", []))
    model = build_model(Config(variant="split", backbone=backbones["bert"], marker="entity_marker"), 3, len(tok))
    assert model.backbone.get_input_embeddings().num_embeddings == len(tok)


def test_focal_and_class_weighted_losses():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.5, 0.0]])
    y = torch.tensor([0, 0, 0])
    ce = RelationLoss("ce")(logits, y)
    focal = RelationLoss("focal", gamma=2.0)(logits, y)
    assert float(focal) < float(ce)  # easy examples are down-weighted
    p = torch.softmax(logits, 1)[:, 0]
    manual = (-(1 - p) ** 2 * torch.log(p)).mean()
    assert torch.allclose(focal, manual, atol=1e-6)
    smooth = RelationLoss("ce", label_smoothing=0.1)(logits, y)
    assert not torch.allclose(smooth, ce)
    w = class_weight_vector(np.array([0, 0, 0, 1]), 2, "balanced")
    assert torch.allclose(w, torch.tensor([4 / (2 * 3), 4 / (2 * 1)]))
    assert class_weight_vector(np.array([0, 1]), 2, "none") is None


@pytest.mark.parametrize("kind", ["ce", "focal"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_soft_targets_generalise_label_indices(kind, smoothing, weighted):
    torch.manual_seed(0)
    logits, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 1, 0])
    weight = class_weight_vector(np.array([0, 0, 1, 2, 3, 3, 3]), 4, "balanced") if weighted else None
    loss = RelationLoss(kind, label_smoothing=smoothing, weight=weight)
    # a one-hot target is its index's loss, exactly (up to float rounding)
    torch.testing.assert_close(loss(logits, torch.nn.functional.one_hot(y, 4).float()), loss(logits, y))
    # a soft target: the rule the docstring states, by hand
    q = torch.softmax(torch.randn(6, 4), 1)
    w = weight if weighted else torch.ones(4)
    smoothed = (1 - smoothing) * q + smoothing / 4
    per_row = -(w * smoothed * torch.log_softmax(logits, 1)).sum(1)
    if kind == "focal":
        per_row = (1 - (torch.softmax(logits, 1) * q).sum(1)) ** 2 * per_row
    torch.testing.assert_close(loss(logits, q), per_row.mean())


def test_rdrop_kl_is_the_symmetric_kl_between_the_two_halves():
    a = torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]])
    p, q = torch.softmax(a, 1), torch.softmax(b, 1)
    kl = lambda x, y: (x * (x / y).log()).sum(1)  # noqa: E731
    manual = (0.5 * (kl(p, q) + kl(q, p))).mean()
    torch.testing.assert_close(rdrop_kl(torch.cat([a, b])), manual)
    assert float(rdrop_kl(torch.cat([a, a]))) == 0.0


def test_registry_rejects_duplicates_and_lists_valid_names():
    with pytest.raises(ConfigError, match="registered twice"):
        register(Variant("split", "again"))
    with pytest.raises(ConfigError, match=r"unknown variant 'spilt'; expected one of \[.*\] \(did you mean 'split'\?\)"):
        get_variant("spilt")
    assert parse_variants("split, absdiff") == ["split", "absdiff"]
    with pytest.raises(ConfigError, match="unknown variant"):
        parse_variants("split,abs")


def test_source_table_rows_are_variants_or_flags():
    table = {"split": "80.4", "absdiff": "79.0", "mul": "76.5", "clsmul": "76.2", "clsmul_mul": "76.2",
             "split_gelu": "77.0", "share": "77.8"}
    for name, acc in table.items():
        assert get_variant(name).source == acc
    assert get_variant("split_gelu").activation == "gelu" and not get_variant("split").share
    cfg = Config(label_smoothing=0.05, marker="typed_entity_marker_punct", batch_size=8, max_len=250)
    assert (cfg.label_smoothing, cfg.batch_size, cfg.max_len) == (0.05, 8, 250)


def test_soft_targets_of_another_float_type_are_taken_in_the_logits_type():
    logits, q = torch.randn(3, 4), torch.softmax(torch.randn(3, 4, dtype=torch.float64), 1)
    torch.testing.assert_close(RelationLoss("ce")(logits, q), RelationLoss("ce")(logits, q.float()))
