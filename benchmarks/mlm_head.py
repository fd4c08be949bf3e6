"""What ``kfold pretrain`` gains by running the MLM head on the masked positions only (``MaskedLoss``) instead of on
every token: seconds per training step (forward and backward) of both, interleaved step by step so that other load
on the machine falls on both alike, on the packaged backbones and the generated demo sentences.

    python benchmarks/mlm_head.py --backbones minilm,me5-small --steps 6 --batch-size 16 --max-len 128

Prints the CPU and, per backbone, the median seconds per step of each and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cluster_cpu import machine  # noqa: E402  (the CPU named with every figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="minilm,me5-small")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-len", type=int, default=128)
    args = parser.parse_args()

    from kfold.data._demo import write_demo_data
    from kfold.data._readers import read_dataset
    from kfold.encoding import encode, load_tokenizer, marker_tokens, resolve_backbone
    from kfold.training import _pretrain

    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        write_demo_data(Path(tmp), n_train=args.batch_size * 4, n_test=4, seed=0)
        ds = read_dataset(Path(tmp) / "train.tsv")
    for backbone in args.backbones.split(","):
        tok = load_tokenizer(backbone, marker_tokens("entity_marker_punct", []))
        feats, _ = encode(ds, tok, "entity_marker_punct", args.max_len)
        words = _pretrain.word_ids(feats, tok, True)
        rng = np.random.default_rng(0)
        batches = [_pretrain.mask_rows(feats, words, np.arange(k, k + args.batch_size) % len(feats), 0.15, rng,
                                       tok.mask_token_id, len(tok), tok.pad_token_id) for k in range(args.steps)]
        model, _ = _pretrain._mlm_model(resolve_backbone(backbone), len(tok), "sdpa")
        masked = _pretrain.MaskedLoss(model, batches[0], print)
        times: dict[str, list[float]] = {"every token": [], "masked only": []}
        for k, batch in enumerate(batches):
            for name, fn in (("every token", lambda b: model(**b).loss), ("masked only", lambda b: masked(model, b))):
                t0 = time.perf_counter()
                fn(batch).backward()
                model.zero_grad(set_to_none=True)
                if k:  # the first step of each warms up
                    times[name].append(time.perf_counter() - t0)
        full, fast = (statistics.median(times[n]) for n in ("every token", "masked only"))
        tokens = int(sum(int(b["attention_mask"].sum()) for b in batches) / len(batches))
        print(f"{backbone}: vocabulary {len(tok)}, {args.batch_size} rows (~{tokens} tokens) per step: head on every "
              f"token {full:.2f} s/step, on the masked tokens only {fast:.2f} s/step ({full / fast:.2f}x faster)")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
