"""fp32 against bf16 autocast on the CPU, through the toolkit's own training loop (``train_fold``).

Same data (a fixed sample of SemEval-2010 Task 8 train), model (MiniLM + a head), batch size, seed and epochs;
only ``--precision`` differs. Each arm runs in its own process; the arms alternate over ``--repeats`` rounds
(fp32, bf16, fp32, bf16, ...) so a machine that slows down or speeds up during the run hits both alike.
Prints training and inference examples/second per round, the medians and their ratio, and whether this
CPU computes bf16 in hardware (AMX / AVX512-BF16). Without that hardware bf16 is emulated and slower.
Fidelity: each arm's trained weights also predict the held-out rows in the other precision; the share of
rows that get the same label, and the largest probability difference, are printed.

    python benchmarks/precision_cpu.py                 # 3 rounds of 960 training examples, about 3 minutes
    python benchmarks/precision_cpu.py --n-train 320 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = ROOT.parent / "shared" / "data" / "semeval2010_task8"


def run_arm(precision: str, variant: str, n_train: int, n_infer: int, batch_size: int) -> dict:
    import torch

    from kfold.core.config import Config
    from kfold.core.metrics import softmax
    from kfold.data._readers import read_dataset
    from kfold.encoding._encode import encode
    from kfold.encoding._markers import marker_tokens
    from kfold.encoding._tokenizer import load_tokenizer
    from kfold.training import FoldData, build_model, pick_precision, predict, train_fold

    ds = read_dataset(DATA / "train.tsv", DATA / "label.txt", format="semeval")
    ds = ds.subset(np.random.default_rng(0).permutation(len(ds))[: n_train + n_infer])
    tok = load_tokenizer("minilm", marker_tokens("entity_marker_punct", []))
    feats, _ = encode(ds, tok, "entity_marker_punct", 128)
    tr, va = np.arange(n_train), np.arange(n_train, n_train + n_infer)
    data = FoldData(feats.take(tr), ds.y[tr], feats.take(va), ds.y[va])
    cfg = Config(variant=variant, epochs=1, batch_size=batch_size, lr=2e-4, warmup_ratio=0.0, precision=precision,
                 device="cpu", eval_batch_size=128, save_models=True)
    res = train_fold(cfg, ds.label_names, data, pad_id=tok.pad_token_id, vocab_size=len(tok), log=lambda m: None)
    # inference alone, timed on the trained weights (train_fold's own evaluation is part of its epoch)
    model = build_model(cfg, len(ds.label_names), len(tok))
    model.load_state_dict(res.state_dict)
    dtype = pick_precision(precision, torch.device("cpu"))
    t0 = time.perf_counter()
    logits = predict(model, data.valid, 128, torch.device("cpu"), tok.pad_token_id, dtype)
    infer_s = time.perf_counter() - t0
    # fidelity: the same weights predicted in the other precision (bf16 arm) or in bf16 (fp32 arm)
    other = predict(model, data.valid, 128, torch.device("cpu"), tok.pad_token_id,
                    None if precision == "bf16" else torch.bfloat16)
    p, q = softmax(logits), softmax(other)
    return {"precision": precision, "train_ex_per_s": res.train_examples_per_s, "infer_ex_per_s": n_infer / infer_s,
            "valid_accuracy": res.metrics["accuracy"], "train_seconds": res.train_seconds,
            "same_prediction": 100.0 * float((p.argmax(1) == q.argmax(1)).mean()),
            "max_prob_diff": float(np.abs(p - q).max())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=960, help="training examples per arm (one epoch)")
    ap.add_argument("--n-infer", type=int, default=960, help="examples predicted after training")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--variant", default="split")
    ap.add_argument("--repeats", type=int, default=3, help="rounds; each round runs fp32 then bf16")
    ap.add_argument("--arm", choices=("fp32", "bf16"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.arm:
        print(json.dumps(run_arm(args.arm, args.variant, args.n_train, args.n_infer, args.batch_size)))
        return 0
    from kfold.training import cpu_has_native_bf16

    rows = {"fp32": [], "bf16": []}
    rest = list(argv if argv is not None else sys.argv[1:])
    for r in range(args.repeats):
        for arm in ("fp32", "bf16"):
            proc = subprocess.run([sys.executable, __file__, "--arm", arm] + rest, capture_output=True, text=True)
            if proc.returncode:
                print(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"{arm} arm failed", file=sys.stderr)
                return 1
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows[arm].append(row)
            print(f"round {r + 1} {arm}: training {row['train_ex_per_s']:.1f} ex/s, inference {row['infer_ex_per_s']:.1f} ex/s, "
                  f"held-out accuracy after one epoch {row['valid_accuracy']:.2f}, "
                  f"same label in fp32 and bf16 inference {row['same_prediction']:.1f}% "
                  f"(largest probability difference {row['max_prob_diff']:.3f})", flush=True)
    print(f"\nSemEval train sample, MiniLM + {args.variant}, batch {args.batch_size}, {args.n_train} training / "
          f"{args.n_infer} inference examples, {os.cpu_count()} CPU threads; "
          f"bf16 in hardware (AMX/AVX512-BF16): {'yes' if cpu_has_native_bf16() else 'no'}")
    print(f"{'median over ' + str(args.repeats) + ' rounds':<28} {'fp32':>8} {'bf16':>8} {'bf16/fp32':>10}")
    for key, label in (("train_ex_per_s", "training examples/s"), ("infer_ex_per_s", "inference examples/s"),
                       ("valid_accuracy", "held-out accuracy"), ("same_prediction", "same label fp32/bf16 %")):
        f, b = (float(np.median([row[key] for row in rows[arm]])) for arm in ("fp32", "bf16"))
        print(f"{label:<28} {f:>8.1f} {b:>8.1f} {b / f if f else float('nan'):>9.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
