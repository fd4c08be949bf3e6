"""``kfold pretrain``: task-adaptive pretraining (TAPT, Gururangan et al. 2020): masked-language-model training of a
backbone on the competition's own sentences, marked as fine-tuning marks them, written as a backbone folder that
``--backbone PATH`` takes like any other.

- The rows are the fine-tuning rows: the training file's (and, with ``--test``, the test file's) sentences with the
  entity markers of ``--marker`` inserted and cropped to ``--max-len`` exactly as ``kfold run`` encodes them. Labels
  are not used.
- Masking is the toolkit's own, not a collator's: MLM collators never mask special tokens, and the bracket and typed
  markers are special tokens of the tokenizer, so the markers would never be trained. Here every token but the
  tokenizer's frame ([CLS], [SEP], padding) may be masked, markers included. Whole words are masked together where
  the vocabulary marks word pieces (WordPiece ``##``, SentencePiece ``▁``, byte-level ``Ġ``); a marker is a word.
  Of the chosen tokens 80% become the mask token, 10% a random token, 10% stay (BERT's rule).
- Resumable by epoch: after every epoch the model, optimizer and schedule are saved (atomically) beside the output
  folder; the same command resumes after the last complete epoch, with the same masks and order (each epoch is
  seeded from ``--seed`` and its number). A finished folder is not trained again.
- The backbone's weights MLM does not train (BERT's pooler) are copied unchanged into the written checkpoint. A
  backbone saved without an MLM head gets a new one, and the log says so.
- The folder's record (``rekfold-build.json``) holds the settings, the input files and their hashes, whether test
  text was used, steps and the loss per epoch, and the folder's content hash, which runs record and check
  (``backbone_hash``), so a re-pretrained folder is another backbone.
"""

from __future__ import annotations

import copy
import math
import os
import pickle
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from kfold.core.config import Config
from kfold.core.errors import ConfigError, StoreError, TrainingError
from kfold.core.store import file_sha256
from kfold.core.textio import read_json, write_json_atomic
from kfold.data import load_data
from kfold.encoding import (BUILD_RECORD, Features, check_marker, concat_features, encode, entity_types, folder_content,
                            length_grouped_batches, load_tokenizer, marker_tokens, resolve_backbone, shuffled_batches,
                            split_micro)
from kfold.model import linear_schedule, quiet_loading

from ._device import autocast, pick_attention, pick_device, pick_precision, seed_everything

#: Written beside the output folder while training: the last complete epoch's state.
STATE_SUFFIX = ".pretrain-state"
#: The run settings that change what a pretraining computes (with the MLM settings, the source and the files'
#: hashes they are its identity: a finished folder or a saved epoch of other ones is refused, not reused).
IDENTITY_KEYS = ("marker", "max_len", "precision", "length_grouping", "format", "columns", "labels", "offsets",
                 "repair_window", "too_far", "overlap", "bad_rows")


@dataclass(frozen=True)
class PretrainSettings:
    """The MLM settings of ``kfold pretrain`` (the data, backbone, marker, ``max_len``, precision, length grouping,
    threads, device and attention kernel come from the run's :class:`Config`)."""

    epochs: int = 3
    lr: float = 1e-4
    batch_size: int = 32
    grad_accum: int = 1
    mask_prob: float = 0.15
    whole_word: bool = True
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 1

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError(f"epochs = {self.epochs}, batch_size = {self.batch_size}, grad_accum = {self.grad_accum}: "
                              "expected positive integers")
        if not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"mask_prob = {self.mask_prob}: expected 0 < x < 1 (BERT: 0.15)")
        if self.lr <= 0 or not 0.0 <= self.warmup_ratio <= 1.0:
            raise ConfigError(f"lr = {self.lr}, warmup_ratio = {self.warmup_ratio}: expected lr > 0, 0 <= warmup <= 1")


@dataclass(frozen=True)
class PretrainSpec:
    """One epoch of a pretraining: the unit an executor runs (this process, or one slot of a Ray cluster). It has
    the fields executors read from a part's spec: ``cfg``, ``run``, ``name``, ``gpu_share``."""

    cfg: Config
    settings: PretrainSettings
    source: str  # the backbone's folder or model id, loaded where the epoch runs
    epoch: int  # 0-based
    vocab_size: int
    mask_id: int
    pad_id: int
    run: str = "pretrain"
    gpu_share: float = 0.0

    @property
    def name(self) -> str:
        """``epoch 2/3``."""
        return f"epoch {self.epoch + 1}/{self.settings.epochs}"


@dataclass
class PretrainPayload:
    """What an epoch needs as values: the rows' tokens, their words (:func:`word_ids`) and the state the epoch
    before left (model, optimizer, schedule, scaler; None before the first epoch)."""

    feats: Features
    words: np.ndarray
    state: dict | None = None


#: The parts of a pretraining's state an epoch takes and returns (the saved state adds identity and history).
STATE_KEYS = ("model", "optimizer", "scheduler", "scaler")


def word_start_rule(tokenizer) -> tuple[str, Callable[[str], bool]] | None:
    """How this vocabulary marks word pieces: (name, is-a-word-start) or None when it does not tell words apart."""
    vocab = tokenizer.get_vocab()
    share = {mark: sum(t.startswith(mark) for t in vocab) / max(1, len(vocab)) for mark in ("##", "\u2581", "\u0120")}
    if share["##"] > 0.01:
        return "WordPiece ##", lambda t: not t.startswith("##")
    if share["\u2581"] > 0.01:
        return "SentencePiece \u2581", lambda t: t.startswith("\u2581")
    if share["\u0120"] > 0.01:
        return "byte-level \u0120", lambda t: t.startswith("\u0120")
    return None


def frame_ids(tokenizer) -> set[int]:
    """The token ids that are never masked: the tokenizer's frame (CLS, SEP, BOS, EOS, padding, the mask itself).
    Marker tokens are not among them."""
    names = ("cls_token_id", "sep_token_id", "bos_token_id", "eos_token_id", "pad_token_id", "mask_token_id")
    return {getattr(tokenizer, n) for n in names if getattr(tokenizer, n, None) is not None}


def word_ids(feats: Features, tokenizer, whole_word: bool) -> np.ndarray:
    """For every token of ``feats.ids``: its word's number within its row (tokens of one word share it), -1 for
    frame tokens. Without whole-word masking (or a vocabulary that does not mark pieces) every token is a word."""
    frame = frame_ids(tokenizer)
    markers = set(tokenizer.convert_tokens_to_ids(list(tokenizer.get_added_vocab())))
    rule = word_start_rule(tokenizer) if whole_word else None
    tokens = tokenizer.convert_ids_to_tokens(feats.ids.tolist())
    out = np.full(len(feats.ids), -1, dtype=np.int64)
    for i in range(len(feats)):
        word = -1
        for pos in range(feats.offsets[i], feats.offsets[i + 1]):
            tid = int(feats.ids[pos])
            if tid in frame:
                continue
            if rule is None or tid in markers or rule[1](tokens[pos]) or word < 0:
                word += 1
            out[pos] = word
    return out


def mask_rows(feats: Features, words: np.ndarray, idx: np.ndarray, prob: float, rng: np.random.Generator,
              mask_id: int, vocab_size: int, pad_id: int) -> dict[str, torch.Tensor]:
    """One MLM batch of rows ``idx``: ``prob`` of each row's words (at least one) chosen, their tokens 80% masked,
    10% replaced by a random token, 10% kept; ``labels`` the original ids there and -100 elsewhere."""
    rows = [feats.row(i) for i in idx]
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    labels = np.full((len(rows), width), -100, dtype=np.int64)
    attention = np.zeros((len(rows), width), dtype=np.int64)
    for j, i in enumerate(idx):
        row, w = feats.row(i).astype(np.int64), words[feats.offsets[i]:feats.offsets[i + 1]]
        ids[j, :len(row)], attention[j, :len(row)] = row, 1
        n_words = int(w.max()) + 1 if len(w) else 0
        if n_words == 0:
            continue
        chosen = rng.choice(n_words, size=max(1, round(prob * n_words)), replace=False)
        pos = np.flatnonzero(np.isin(w, chosen))
        labels[j, pos] = row[pos]
        draw = rng.random(len(pos))
        ids[j, pos[draw < 0.8]] = mask_id
        swap = pos[(draw >= 0.8) & (draw < 0.9)]
        ids[j, swap] = rng.integers(0, vocab_size, size=len(swap))
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(attention),
            "labels": torch.from_numpy(labels)}


def pretrain(cfg: Config, out: str | Path, settings: PretrainSettings = PretrainSettings(), *, use_test: bool = False,
             log: Callable[[str], None] = print,
             run_epoch: Callable[[PretrainSpec, PretrainPayload], tuple[dict, dict]] | None = None) -> Path:
    """Masked-LM training of ``cfg.backbone`` on the marked sentences of ``cfg.data`` (and ``cfg.test`` with
    ``use_test``); writes the backbone folder ``out`` and returns it.

    Parameters
    ----------
    cfg: data reading, backbone, marker, max_len, precision, length grouping, threads, device, attention kernel.
    out: the backbone folder to write (refused when it holds something else). settings: the MLM settings.
    use_test: also train on the test file's sentences (its labels, if any, are not used; the record says so).
    run_epoch: computes one epoch from its spec and payload, returning (record, state): default
    :func:`pretrain_epoch` in this process; ``kfold.training.run_pretrain`` passes one that runs it on a cluster's
    slot. The state after every epoch is saved here, by the caller, wherever the epoch ran.

    Raises
    ------
    ConfigError for settings that cannot work (no mask token); StoreError when ``out`` holds another folder or
    another pretraining; TrainingError on a non-finite loss; DataError for bad input files.

    Example
    -------
    >>> pretrain(Config(data="train.tsv", backbone="minilm"), "tapt-minilm", PretrainSettings(epochs=3))  # doctest: +SKIP
    """
    out = Path(out)
    # the data lists (offsets repaired, overlaps; the demo data without --data) go beside the folder, kept
    data = load_data(cfg, out.parent / f"{out.name}-data", log)
    datasets = [data.train] + ([data.test] if use_test and data.test is not None else [])
    if use_test and data.test is None:
        raise ConfigError("--test: no test file given to take sentences from")
    check_marker(cfg.marker, all(ds.has_types for ds in datasets), data.train.path)
    source = resolve_backbone(cfg.backbone)
    identity = {"backbone": cfg.backbone, "source": _source_identity(source),
                **{k: getattr(cfg, k) for k in IDENTITY_KEYS}, **asdict(settings),
                "files": [{"path": ds.path, "sha256": file_sha256(ds.path), "data_hash": ds.content_hash(),
                           "rows": len(ds)} for ds in datasets],
                "test_text_used": len(datasets) > 1}
    if _finished(out, identity, log):
        return out
    tokenizer = load_tokenizer(cfg.backbone, marker_tokens(cfg.marker, entity_types(datasets)))
    if tokenizer.mask_token_id is None:
        raise ConfigError(f"backbone '{cfg.backbone}': its tokenizer has no mask token, so it cannot be pretrained by MLM")
    feats = concat_features(*(encode(ds, tokenizer, cfg.marker, cfg.max_len, cfg.too_far)[0] for ds in datasets))
    rule = word_start_rule(tokenizer) if settings.whole_word else None
    words = word_ids(feats, tokenizer, settings.whole_word)
    log(f"pretrain: {len(feats)} rows ({' + '.join(Path(ds.path).name for ds in datasets)}; labels not used), "
        f"marker {cfg.marker}, masking {settings.mask_prob:.0%} of "
        + (f"whole words ({rule[0]} pieces)" if rule else "tokens (this vocabulary does not mark word pieces)"))
    run_epoch = run_epoch or (lambda spec, payload: pretrain_epoch(spec, payload, log))
    state_path = out.parent / f"{out.name}{STATE_SUFFIX}" / "state.pt"
    state = _load_state(state_path, identity, log)
    history = list(state["history"]) if state else []
    t_start, start = time.perf_counter(), len(history)
    for epoch in range(start, settings.epochs):
        spec = PretrainSpec(cfg, settings, source, epoch, len(tokenizer), tokenizer.mask_token_id,
                            tokenizer.pad_token_id, run=f"pretrain {out.name}")
        record, new = run_epoch(spec, PretrainPayload(feats, words, state and {k: state[k] for k in STATE_KEYS}))
        history.append(record)
        state = {**new, "identity": identity, "history": history}
        _save_state(state_path, state)
        left = (time.perf_counter() - t_start) / (epoch + 1 - start) * (settings.epochs - epoch - 1)
        log(f"pretrain epoch {epoch + 1}/{settings.epochs}: MLM loss {record['loss']:.4f} ({record['seconds']:.0f}s"
            + (f" on {record['node']}" if record.get("node") else "")
            + (f"; about {left / 60:.1f} min left)" if epoch + 1 < settings.epochs else ")"))
    model, _ = _model_at(source, len(tokenizer), None, settings.seed, state["model"])
    _write_folder(model, tokenizer, source, out, identity, history, len(feats), settings)
    per_epoch = ", ".join(f"{h['loss']:.3f}" for h in history)
    log(f"pretrain: wrote {out} (MLM loss per epoch {per_epoch}); "
        f"use it with --backbone {out}")
    return out


def _source_identity(source: str) -> dict:
    """The source backbone: a folder's content hash (its record's, for a folder the toolkit built or pretrained,
    else the SHA-256 of its files), or a model id as given."""
    from kfold.encoding import build_hash

    folder = Path(source)
    if not folder.is_dir():
        return {"id": source}
    return {"folder": str(folder), "content_hash": build_hash(folder) or folder_content(folder)[1]}


def _finished(out: Path, identity: dict, log: Callable[[str], None]) -> bool:
    """True when ``out`` is this pretraining, finished; StoreError when it is another one or not a backbone of ours."""
    if not out.exists():
        return False
    try:
        record = read_json(out / BUILD_RECORD)
    except StoreError:
        record = None
    if not isinstance(record, dict) or record.get("kind") != "pretrain":
        if any(out.iterdir()):
            raise StoreError(f"{out}: exists and is not a folder kfold pretrain wrote; choose another --out")
        return False
    recorded = record.get("identity") if isinstance(record.get("identity"), dict) else {}
    for key, value in identity.items():
        if recorded.get(key) != value:
            found = recorded.get(key)
            raise StoreError(f"{out / BUILD_RECORD}: field '{key}': this folder was pretrained with {found!r}, "
                             f"now {value!r}; choose another --out")
    log(f"pretrain: {out} is already pretrained with these settings (nothing to do)")
    return True


def _mlm_head(model) -> torch.nn.Module | None:
    """The module that maps the encoder's hidden states to vocabulary logits token by token: BERT's ``cls``,
    RoBERTa's and XLM-R's ``lm_head``, ELECTRA's generator head; None for an architecture not known here."""
    for name in ("cls", "lm_head"):
        if isinstance(getattr(model, name, None), torch.nn.Module):
            return getattr(model, name)
    if hasattr(model, "generator_predictions") and hasattr(model, "generator_lm_head"):
        return torch.nn.Sequential(model.generator_predictions, model.generator_lm_head)
    return None


class MaskedLoss:
    """The MLM loss from the vocabulary logits of the masked positions only: the head runs on the ~15% of tokens
    that carry a label instead of on every token (a 250k-token vocabulary makes the head most of a step's cost;
    the loss is the same mean over the masked tokens). Used where a check on the first batch (eval mode, no
    dropout) gives the model's own logits at those positions; otherwise the model's full forward, and the log says
    so."""

    def __init__(self, model, batch: dict[str, torch.Tensor], log: Callable[[str], None]):
        self.head = _mlm_head(model)
        # two rows with masked tokens: the full logits of a big batch take gigabytes
        rows = torch.nonzero((batch["labels"] != -100).any(1)).flatten()[:2]
        batch = {k: v[rows] for k, v in batch.items()}
        if self.head is not None:
            self.head = self.head if len(rows) and self._agrees(model, batch) else None
        if self.head is None:
            log(f"pretrain: {type(model).__name__}: the MLM head runs on every token (its masked-only use is not "
                "known for this architecture)")

    def _agrees(self, model, batch: dict[str, torch.Tensor]) -> bool:
        """Whether the head on the masked positions gives the model's own logits there (eval mode, no dropout)."""
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                full = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
                where = batch["labels"] != -100
                return torch.allclose(self._logits(model, batch, where), full[where].float(), rtol=1e-3, atol=1e-3)
        except (TypeError, ValueError, RuntimeError) as exc:  # a head that needs more than the hidden states
            if "out of memory" in str(exc):
                raise
            return False
        finally:
            model.train(was)

    def _logits(self, model, batch: dict[str, torch.Tensor], where: torch.Tensor) -> torch.Tensor:
        hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
        return self.head(hidden[where]).float()

    def __call__(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.head is None:
            return model(**batch).loss
        where = batch["labels"] != -100
        return torch.nn.functional.cross_entropy(self._logits(model, batch, where), batch["labels"][where])


def _no_load_report(record) -> bool:
    """Logging filter: transformers' load report would list the new head's tensors and the unused pooler each time
    the model is built; :func:`_mlm_model`'s notes say what matters (a new head; missing encoder weights refused)."""
    return not any(w in record.getMessage() for w in ("LOAD REPORT", "tied weights mapping"))


def _model_at(source: str, vocab_size: int, attention: str | None, seed: int, state: dict | None):
    """The MLM model as a pretraining left it: built from ``source`` (a new head from the draw of ``seed``), then
    ``state``'s weights when given. Returns (model, notes)."""
    seed_everything(seed)  # a new MLM head and new marker embeddings start from the same random draw
    model, notes = _mlm_model(source, vocab_size, attention)
    if state is not None:
        model.load_state_dict(state)
    return model, notes


def _on_cpu(tree: dict, memo: dict | None = None) -> dict:
    """A state dict (nested) with its tensors on the CPU, detached; a tensor shared by two keys (tied embeddings)
    stays one tensor."""
    memo = {} if memo is None else memo
    out = {}
    for k, v in tree.items():
        if torch.is_tensor(v):
            out[k] = memo.setdefault(id(v), v.detach().cpu())
        else:
            out[k] = _on_cpu(v, memo) if isinstance(v, dict) else v
    return out


def _mlm_model(source: str, vocab_size: int, attention: str | None):
    """The backbone with its MLM head (a new one when the checkpoint has none) and the log lines saying so."""
    from transformers import AutoModelForMaskedLM

    try:
        with quiet_loading(_no_load_report):
            model, info = AutoModelForMaskedLM.from_pretrained(source, output_loading_info=True,
                                                               attn_implementation=attention)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"backbone '{source}': cannot load it with an MLM head ({str(exc).splitlines()[0]})") from None
    prefix = model.base_model_prefix
    missing = [k for k in info.get("missing_keys", []) if "position_ids" not in k]
    encoder_missing = [k for k in missing if k.startswith(prefix + ".")]
    if encoder_missing:
        raise ConfigError(f"backbone '{source}': the checkpoint lacks {len(encoder_missing)} encoder weights "
                          f"({encoder_missing[:3]}); they would be initialised at random")
    notes = [f"pretrain: the checkpoint has no MLM head; a new one is trained ({len(missing)} tensors: "
             f"{', '.join(sorted(missing)[:3])}{', ...' if len(missing) > 3 else ''})"] if missing else []
    if vocab_size != model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(vocab_size, mean_resizing=False)  # as fine-tuning does for the marker tokens
    return model, notes


def pretrain_epoch(spec: PretrainSpec, payload: PretrainPayload, log: Callable[[str], None]) -> tuple[dict, dict]:
    """One MLM epoch, from the state the epoch before left (``payload.state``; None: a fresh model); returns the
    epoch's record (loss, seconds, steps) and the state after it (CPU tensors). Values in, values out: it runs here
    or on any slot of a cluster alike. The masks, order and dropout of an epoch depend on ``--seed`` and its number
    only, so an epoch gives the same state wherever it runs and after any resume."""
    s, cfg = spec.settings, spec.cfg
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    dtype = pick_precision(cfg.precision, device)
    first = payload.state is None
    model, notes = _model_at(spec.source, spec.vocab_size, pick_attention(cfg.attn_implementation, device, dtype),
                             s.seed, None if first else payload.state["model"])
    for note in notes if first else []:  # said once, by the first epoch
        log(note)
    model.to(device)
    # no weight decay on biases and LayerNorm weights (every 1-D tensor), as in fine-tuning (kfold.model.param_groups)
    groups = [{"params": [p for p in model.parameters() if p.ndim >= 2], "weight_decay": s.weight_decay},
              {"params": [p for p in model.parameters() if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=s.lr, fused=device.type in ("cuda", "cpu"))
    total = math.ceil(len(payload.feats) / s.batch_size) * s.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(total, round(s.warmup_ratio * total)))
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    if not first:
        # a copy: torch's optimizer keeps (and then updates in place) the tensors it is given on the same device,
        # and an epoch must leave its input as it was (a retried epoch is given the same state again)
        optimizer.load_state_dict(copy.deepcopy(payload.state["optimizer"]))
        scheduler.load_state_dict(payload.state["scheduler"])
        # the fp16 scaler's state, when the epoch before trained in fp16 too (--precision auto may resolve to another
        # dtype on another machine of a cluster, or after a resume elsewhere: the scaler then starts afresh)
        if scaler.is_enabled() and payload.state["scaler"]:
            scaler.load_state_dict(payload.state["scaler"])
    loss = _epoch_steps(model, optimizer, scheduler, scaler, spec, payload, device, dtype, log if first else _quiet)
    state = {"model": _on_cpu(model.state_dict()), "optimizer": _on_cpu(optimizer.state_dict()),
             "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict()}
    precision = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))
    return {"epoch": spec.epoch + 1, **loss, "precision": precision}, state


def _quiet(line: str) -> None:
    """A log for what the first epoch said already (the MLM head's use)."""


def _epoch_steps(model, optimizer, scheduler, scaler, spec: PretrainSpec, payload: PretrainPayload, device, dtype,
                 log) -> dict:
    """The optimizer steps of one epoch; the mean MLM loss, seconds and steps."""
    s, cfg, epoch, feats = spec.settings, spec.cfg, spec.epoch, payload.feats
    micro = math.ceil(s.batch_size / s.grad_accum)
    seed_everything(s.seed * 100 + epoch)  # masks, order and dropout of an epoch do not depend on a resume
    rng = np.random.default_rng(s.seed * 100 + epoch)
    batches = (length_grouped_batches(feats.lengths, s.batch_size, s.seed * 100 + epoch) if cfg.length_grouping
               else shuffled_batches(len(feats), s.batch_size, s.seed * 100 + epoch))
    model.train()
    bar = tqdm(batches, desc=f"pretrain {spec.name}", leave=False, file=sys.stderr, disable=None, dynamic_ncols=True)
    losses, t0, streak, mlm_loss = [], time.perf_counter(), 0, None
    for batch_idx in bar:
        parts = [{k: v.to(device) for k, v in
                  mask_rows(feats, payload.words, idx, s.mask_prob, rng, spec.mask_id, spec.vocab_size,
                            spec.pad_id).items()} for idx in split_micro(batch_idx, micro)]
        if mlm_loss is None:
            mlm_loss = MaskedLoss(model, parts[0], log)
        masked = sum(int((p["labels"] != -100).sum()) for p in parts)
        step_loss = 0.0
        for part in parts:  # each micro-batch's mean over its masked tokens, weighted by its share of them
            share = int((part["labels"] != -100).sum()) / masked
            with autocast(device, dtype):
                loss = mlm_loss(model, part)
            scaler.scale(loss * share).backward()
            step_loss += float(loss.detach()) * share
        # in fp16 an overflow is the scaler's to handle (it skips the step); anywhere else, or again and again,
        # the pretraining is broken
        streak = streak + 1 if not math.isfinite(step_loss) else 0
        if streak and (dtype != torch.float16 or streak > 8):
            raise TrainingError(f"pretrain epoch {epoch + 1}: MLM loss is {step_loss} (lower --lr, or use "
                                "--precision bf16/fp32)")
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        losses.append(step_loss)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    bar.close()
    return {"loss": float(np.mean(losses)), "seconds": round(time.perf_counter() - t0, 1), "steps": len(batches)}


def _load_state(state_path: Path, identity: dict, log) -> dict | None:
    """The state after the last complete epoch of this pretraining (None: a fresh start)."""
    if not state_path.exists():
        return None
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise StoreError(f"{state_path}: cannot read the saved epoch ({str(exc).splitlines()[0]}); delete it to "
                         "start over") from None
    if not isinstance(state, dict) or state.get("identity") != identity:
        raise StoreError(f"{state_path}: saved by a pretraining with other settings or data; delete "
                         f"{state_path.parent} or choose another --out")
    log(f"pretrain: resuming after epoch {len(state['history'])} ({state_path.parent})")
    return state


def _save_state(state_path: Path, state: dict) -> None:
    """The state after a complete epoch, written atomically (a temporary file, then a rename)."""
    state_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = state_path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, state_path)


def _write_folder(model, tokenizer, source: str, out: Path, identity: dict, history: list[dict], rows: int,
                  s: PretrainSettings) -> None:
    """Weights (the MLM model's, plus the source's pooler unchanged), config, tokenizer and the record, into a
    temporary folder renamed to ``out`` (a reader never sees half a folder); then the epoch state goes."""
    from transformers import AutoModel

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    prefix = model.base_model_prefix
    with quiet_loading(_no_load_report):  # the source's own weights, as saved
        base, info = AutoModel.from_pretrained(source, output_loading_info=True)
    not_in_checkpoint = set(info.get("missing_keys", []))
    original = base.state_dict()
    carried = [k for k in original if f"{prefix}.{k}" not in state and k not in not_in_checkpoint]
    for k in carried:  # the pooler: MLM does not train it, fine-tuning may use it
        state[f"{prefix}.{k}"] = original[k].detach().clone()
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, state_dict=state)
        tokenizer.save_pretrained(tmp)
        files, content = folder_content(tmp)
        write_json_atomic(tmp / BUILD_RECORD, {
            "kind": "pretrain", "identity": identity, "rows": rows, "steps": sum(h["steps"] for h in history),
            "epochs": history, "minutes": round(sum(h["seconds"] for h in history) / 60, 2),
            "carried_unchanged": [f"{prefix}.{k}" for k in carried], "files": files, "content_hash": content})
        if out.exists():
            shutil.rmtree(out)  # empty, or this pretraining's (checked by _finished)
        os.replace(tmp, out)
    except OSError as exc:
        raise StoreError(f"{out}: cannot write: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(out.parent / f"{out.name}{STATE_SUFFIX}", ignore_errors=True)
