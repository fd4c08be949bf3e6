"""SemEval-2010 Task 8 with the packaged MiniLM on CPU: official test score and training speed per variant.

Trains each variant on the SemEval training set (a small held-out slice of it picks the epoch; the
test set is only predicted at the end), then prints the official (9+1)-way macro-F1 on the test set,
training examples/second and training minutes.

    python benchmarks/semeval_minilm.py --variants cls,share,split

The best configuration measured (README, SemEval section; about 6 training minutes on 2 cores with AMX):

    python benchmarks/semeval_minilm.py --variants split --epochs 7 --lr 1e-4 --holdout 300 \
        --set label_smoothing=0.1 --set precision=bf16 --set average_epochs=5 \
        --set backbone_dropout=0 --set attention_dropout=0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kfold.core.config import Config  # noqa: E402
from kfold.core.metrics import all_scores, softmax  # noqa: E402
from kfold.data._readers import read_dataset  # noqa: E402
from kfold.encoding._encode import encode_cached  # noqa: E402
from kfold.encoding._markers import marker_tokens  # noqa: E402
from kfold.encoding._tokenizer import load_tokenizer  # noqa: E402
from kfold.training._runner import fold_data, swapped_features  # noqa: E402
from kfold.training._train import train_fold  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "semeval2010_task8"


def _setting(text: str):
    """``key=value`` with the value parsed as JSON when it can be (numbers, booleans), else a string."""
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _blend_row(method: str, members, y_valid, y_test, label_names) -> dict:
    """The toolkit's soft vote of the members, fitted on the held-out slice, scored on the test set."""
    from ensemble._blenders import SoftVote

    blender = SoftVote(temperature=method == "soft-temperature").fit(np.stack([m.valid_logits for m in members]), y_valid)
    probs = blender.predict_proba(np.stack([m.test_logits for m in members]))
    scores = all_scores(y_test, probs, label_names)
    seconds = sum(m.train_seconds for m in members)
    examples = sum(m.train_seconds * m.train_examples_per_s for m in members)
    return {"variant": f"{method} vote", "semeval_official": round(scores["semeval"], 2),
            "accuracy": round(scores["accuracy"], 2), "train_minutes": round(seconds / 60, 2),
            "train_examples_per_s": round(examples / seconds, 1), "best_epoch": None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA), help="folder with train.tsv, test.tsv, label.txt")
    ap.add_argument("--variants", default="cls,share,split")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--marker", default="entity_marker_punct")
    ap.add_argument("--pool", default="", help="override the variants' entity pooling (mean/start)")
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--holdout", type=int, default=400, help="training rows held out to pick the epoch")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N training rows (smoke runs)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="any other Config setting, e.g. --set label_smoothing=0.1 (repeatable)")
    ap.add_argument("--blend", default="", choices=["", "soft", "soft-temperature"],
                    help="also score the soft vote of all variants (fitted on the held-out slice); "
                         "its training time is the members' sum")
    ap.add_argument("--out", default="", help="write the figures as JSON here")
    args = ap.parse_args(argv)

    folder = Path(args.data)
    train = read_dataset(folder / "train.tsv", folder / "label.txt", format="semeval")
    test = read_dataset(folder / "test.tsv", train.label_names, format="semeval", role="test", id_start=8001)
    if args.limit:
        train = train.subset(range(args.limit))
    tok = load_tokenizer("minilm", marker_tokens(args.marker, []))
    feats, _, _ = encode_cached(train, tok, args.marker, args.max_len, None)
    test_feats, _, _ = encode_cached(test, tok, args.marker, args.max_len, None)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(train))
    va, tr = np.sort(order[: args.holdout]), np.sort(order[args.holdout :])
    y = train.y
    results, members = [], []
    for variant in args.variants.split(","):
        cfg = Config(variant=variant, backbone="minilm", marker=args.marker, max_len=args.max_len, epochs=args.epochs,
                     lr=args.lr, batch_size=args.batch_size, pool=args.pool, seed=args.seed, eval_batch_size=128)
        cfg = cfg.replace(**dict(_setting(kv) for kv in args.set))
        if cfg.tta == "swap":
            cfg = cfg.replace(save_models=True)  # to score the written reading alone too
        data = fold_data(cfg, tr, va, y, feats, test_feats, swapped_features(cfg, train, test, tok, None))
        t0 = time.perf_counter()
        res = train_fold(cfg, train.label_names, data, pad_id=tok.pad_token_id, vocab_size=len(tok), desc=variant)
        wall = time.perf_counter() - t0
        scores = all_scores(test.y, softmax(res.test_logits), train.label_names)
        if cfg.tta == "swap":  # what the same model scores on the written reading alone
            import torch

            from kfold.training import build_model, predict

            model = build_model(cfg, len(train.label_names), len(tok))
            model.load_state_dict(res.state_dict)
            one = predict(model, test_feats, 128, torch.device("cpu"), tok.pad_token_id)
            print(f"{variant}: official F1 {all_scores(test.y, softmax(one), train.label_names)['semeval']:.2f} "
                  f"on the written reading alone, {scores['semeval']:.2f} with --tta swap", flush=True)
        row = {"variant": variant, "semeval_official": round(scores["semeval"], 2), "accuracy": round(scores["accuracy"], 2),
               "train_minutes": round(res.train_seconds / 60, 2), "train_examples_per_s": round(res.train_examples_per_s, 1),
               "best_epoch": res.best_epoch, "padding_share": round(res.padding_share, 4), "wall_minutes": round(wall / 60, 2),
               "settings": {k: v for k, v in cfg.to_dict().items() if v != getattr(Config(), k)}}
        results.append(row)
        members.append(res)
        print(json.dumps(row), flush=True)
    if args.blend and len(members) > 1:
        results.append(_blend_row(args.blend, members, y[va], test.y, train.label_names))
        print(json.dumps(results[-1]), flush=True)
    print(f"\n{'variant':<10} {'official F1':>11} {'accuracy':>9} {'train min':>9} {'train ex/s':>10}")
    for r in results:
        print(f"{r['variant']:<10} {r['semeval_official']:>11.2f} {r['accuracy']:>9.2f} {r['train_minutes']:>9.2f} "
              f"{r['train_examples_per_s']:>10.1f}")
    best = max(results, key=lambda r: r["semeval_official"])
    print(f"best: {best['variant']} {best['semeval_official']:.2f} official macro-F1 in {best['train_minutes']:.1f} "
          f"training minutes (target: >= 86.0 within 10)")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
        # the logits too, for post-hoc analysis: <out>.npz with y_valid, y_test and each variant's logits
        arrays = {"y_valid": y[va], "y_test": test.y}
        for row, res in zip(results, members):
            arrays[f"{row['variant']}_valid"], arrays[f"{row['variant']}_test"] = res.valid_logits, res.test_logits
        np.savez_compressed(Path(args.out).with_suffix(".npz"), **arrays)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
