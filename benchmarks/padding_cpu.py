"""Dynamic padding with length-grouped batches against a fixed-padding baseline, on CPU.

Baseline (written here, as the R-BERT reference implementation does it): every batch padded to max_len
384, batches in random order. Ours: the toolkit's length-grouped training batches and length-sorted
inference batches, padded to the longest row of each batch. Same model (MiniLM + split head), same data
(SemEval-2010 Task 8 train), same batch sizes (16 for training, 64 for inference), same examples. Each arm runs in its own process so
its peak resident memory is its own.

    python benchmarks/padding_cpu.py              # prints examples/second, padding share, peak RSS, ratios
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = ROOT.parent / "shared" / "data" / "semeval2010_task8"


def _features(n: int, max_len: int):
    from kfold.data._readers import read_dataset
    from kfold.encoding._encode import encode
    from kfold.encoding._markers import marker_tokens
    from kfold.encoding._tokenizer import load_tokenizer

    ds = read_dataset(DATA / "train.tsv", DATA / "label.txt", format="semeval")
    ds = ds.subset(np.random.default_rng(0).permutation(len(ds))[:n])
    tok = load_tokenizer("minilm", marker_tokens("entity_marker_punct", []))
    feats, _ = encode(ds, tok, "entity_marker_punct", max_len)
    return ds, tok, feats


def _fixed_batch(feats, idx, pad_id, max_len, y=None):
    """The baseline's collate: every row padded to max_len."""
    import torch

    ids = np.full((len(idx), max_len), pad_id, dtype=np.int64)
    mask = np.zeros((len(idx), max_len), dtype=np.int64)
    for j, i in enumerate(idx):
        row = feats.row(i)
        ids[j, : len(row)] = row
        mask[j, : len(row)] = 1
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
             "ent": torch.from_numpy(feats.ent[idx].astype(np.int64))}
    if y is not None:
        batch["labels"] = torch.from_numpy(y[idx])
    return batch


def run_arm(arm: str, n_train: int, n_infer: int, batch_size: int, eval_batch_size: int, max_len: int) -> dict:
    import torch

    from kfold.core.config import Config
    from kfold.encoding._batching import collate, length_grouped_batches, padding_share, sorted_batches
    from kfold.model._losses import RelationLoss
    from kfold.training import build_model

    torch.manual_seed(0)
    ds, tok, feats = _features(max(n_train, n_infer), max_len)
    y = ds.y
    model = build_model(Config(variant="split"), len(ds.label_names), len(tok))
    model.loss_fn = RelationLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
    train_idx = np.arange(n_train)
    if arm == "ours":
        batches = [train_idx[b] for b in length_grouped_batches(feats.lengths[train_idx], batch_size, seed=0)]
        make = lambda b: collate(feats, b, tok.pad_token_id, y)  # noqa: E731
        pad = padding_share(feats, batches)
    else:
        order = np.random.default_rng(0).permutation(train_idx)
        batches = [order[i : i + batch_size] for i in range(0, n_train, batch_size)]
        make = lambda b: _fixed_batch(feats, b, tok.pad_token_id, max_len, y)  # noqa: E731
        real = int(feats.lengths[train_idx].sum())
        pad = 1.0 - real / (len(train_idx) * max_len)
    model.train()
    step = make(batches[0])  # warm-up step (allocator, thread pool), not timed
    model(**step)["loss"].backward()
    opt.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    for b in batches:
        loss = model(**make(b))["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    train_s = time.perf_counter() - t0
    infer_idx = np.arange(n_infer)
    model.eval()
    t0 = time.perf_counter()
    with torch.inference_mode():
        if arm == "ours":
            for b in sorted_batches(feats.lengths[infer_idx], eval_batch_size):
                model(**collate(feats, infer_idx[b], tok.pad_token_id))
        else:
            for i in range(0, n_infer, eval_batch_size):
                model(**_fixed_batch(feats, infer_idx[i : i + eval_batch_size], tok.pad_token_id, max_len))
    infer_s = time.perf_counter() - t0
    return {"arm": arm, "train_ex_per_s": n_train / train_s, "infer_ex_per_s": n_infer / infer_s,
            "padding_share": pad, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "train_seconds": train_s, "infer_seconds": infer_s, "mean_tokens": float(feats.lengths.mean())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=480, help="training examples per arm (default 480)")
    ap.add_argument("--n-infer", type=int, default=960)
    ap.add_argument("--batch-size", type=int, default=16, help="training batch size of both arms (R-BERT: 16)")
    ap.add_argument("--eval-batch-size", type=int, default=64, help="inference batch size of both arms")
    ap.add_argument("--max-len", type=int, default=384)
    ap.add_argument("--arm", choices=("ours", "baseline"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.arm:
        print(json.dumps(run_arm(args.arm, args.n_train, args.n_infer, args.batch_size, args.eval_batch_size, args.max_len)))
        return 0
    results = {}
    for arm in ("baseline", "ours"):
        cmd = [sys.executable, __file__, "--arm", arm] + [a for a in (argv if argv is not None else sys.argv[1:])]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[arm] = json.loads(proc.stdout.strip().splitlines()[-1])
    b, o = results["baseline"], results["ours"]
    print(f"SemEval train, MiniLM + split head, CPU threads {os.cpu_count()}, batch {args.batch_size}, "
          f"{args.n_train} training / {args.n_infer} inference examples; mean {o['mean_tokens']:.1f} tokens per example")
    print(f"{'':<28} {'baseline (pad to 384)':>22} {'ours (length-grouped)':>22} {'ours/baseline':>14}")
    for key, label in (("train_ex_per_s", "training examples/s"), ("infer_ex_per_s", "inference examples/s"),
                       ("padding_share", "padded-token share"), ("peak_rss_mb", "peak resident memory MB")):
        ratio = o[key] / b[key] if b[key] else float("nan")
        fmt = (lambda v: f"{v * 100:.1f}%") if key == "padding_share" else (lambda v: f"{v:.1f}")
        print(f"{label:<28} {fmt(b[key]):>22} {fmt(o[key]):>22} {ratio:>13.2f}x")
    ok = (o["train_ex_per_s"] >= 3 * b["train_ex_per_s"] and o["infer_ex_per_s"] >= 3 * b["infer_ex_per_s"]
          and o["padding_share"] < 0.10)
    print("targets (training >= 3x, inference >= 3x, padding < 10%):", "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
