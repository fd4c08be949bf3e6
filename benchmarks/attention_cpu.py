"""Training-step speed on the CPU: attention kernel (PyTorch SDPA against transformers' "eager" attention)
and the encoder's dropout (the checkpoint's 0.1, none on attention probabilities, none at all).

All arms are built with ``build_model`` (the toolkit's path) and trained in one process on the same SemEval
batches, in turn (the order reversed every other batch), so a machine that speeds up or slows down during the
run affects every arm alike. Prints training rows/second per arm and each arm's speed relative to the first,
then prediction rows/second for both kernels.

    python benchmarks/attention_cpu.py                  # bf16 autocast (what --precision bf16 runs)
    python benchmarks/attention_cpu.py --precision fp32
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from kfold.core.config import Config  # noqa: E402
from kfold.data._readers import read_dataset  # noqa: E402
from kfold.encoding._batching import collate, length_grouped_batches  # noqa: E402
from kfold.encoding._encode import encode_cached  # noqa: E402
from kfold.encoding._markers import marker_tokens  # noqa: E402
from kfold.encoding._tokenizer import load_tokenizer  # noqa: E402
from kfold.model._losses import RelationLoss  # noqa: E402
from kfold.model._optim import param_groups  # noqa: E402
from kfold.training._device import autocast, build_model  # noqa: E402
from kfold.training._train import predict  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "semeval2010_task8"
#: arm name -> Config settings
ARMS = {
    "sdpa": {"attn_implementation": "sdpa"},
    "eager": {"attn_implementation": "eager"},
    "sdpa, attention dropout 0": {"attn_implementation": "sdpa", "attention_dropout": 0.0},
    "eager, attention dropout 0": {"attn_implementation": "eager", "attention_dropout": 0.0},
    "eager, no encoder dropout": {"attn_implementation": "eager", "attention_dropout": 0.0, "backbone_dropout": 0.0},
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA), help="folder with train.tsv and label.txt")
    ap.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    ap.add_argument("--batches", type=int, default=60, help="training batches per arm (the first 3 are warm-up)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    device = torch.device("cpu")
    folder = Path(args.data)
    train = read_dataset(folder / "train.tsv", folder / "label.txt", format="semeval")
    tok = load_tokenizer("minilm", marker_tokens("entity_marker_punct", []))
    feats, _, _ = encode_cached(train, tok, "entity_marker_punct", 128, None)
    base = Config(variant="split", backbone="minilm", lr=1e-4, label_smoothing=0.1)
    arms = {}
    for name, settings in ARMS.items():
        cfg = base.replace(**settings)
        model = build_model(cfg, len(train.label_names), len(tok))
        model.loss_fn = RelationLoss("ce", cfg.label_smoothing, cfg.focal_gamma, None)
        arms[name] = (model.train(), torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, fused=True))

    batches = length_grouped_batches(feats.lengths, args.batch_size, 0)[: args.batches]
    seconds = dict.fromkeys(arms, 0.0)
    rows = 0
    for i, idx in enumerate(batches):
        batch = collate(feats, idx, tok.pad_token_id, train.y)
        for name in list(arms) if i % 2 == 0 else list(arms)[::-1]:
            model, optimizer = arms[name]
            t0 = time.perf_counter()
            with autocast(device, dtype):
                loss = model(**batch)["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i >= 3:
                seconds[name] += time.perf_counter() - t0
        rows += len(idx) if i >= 3 else 0
    first = next(iter(arms))
    print(f"training, {args.precision}, batch {args.batch_size}, {rows} rows per arm")
    for name, s in seconds.items():
        print(f"  {name:<28} {rows / s:7.1f} rows/s  {seconds[first] / s:5.2f}x of {first}")

    sample = feats.take(list(range(min(960, len(feats)))))
    infer = dict.fromkeys(("sdpa", "eager"), 0.0)
    for _ in range(3):
        for name in infer:
            model = arms[name][0].eval()
            t0 = time.perf_counter()
            predict(model, sample, 128, device, tok.pad_token_id, dtype)
            infer[name] += time.perf_counter() - t0
    print(f"prediction, {args.precision}, batch 128, {len(sample)} rows x 3")
    for name, s in infer.items():
        print(f"  {name:<28} {3 * len(sample) / s:7.1f} rows/s  {infer['sdpa'] / s:5.2f}x of sdpa")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
