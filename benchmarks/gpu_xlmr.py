"""GPU training throughput of XLM-RoBERTa-large (random weights, no hub access) with the split head.

Batch 16, sequence lengths drawn from the KLUE RE subset (XLM-R token counts estimated from character
counts, see --chars-per-token), dynamic padding with length-grouped batches, as the toolkit trains.
For each of fp32 (TF32 matmuls) / bf16 autocast x gradient checkpointing off / on it prints examples per
second, peak GPU memory and model FLOP utilisation (MFU). Runs in about 2-3 minutes on one H100/H200.

    python benchmarks/gpu_xlmr.py                      # on a CUDA machine
    python benchmarks/gpu_xlmr.py --tiny --device cpu  # a seconds-long smoke run of the script itself
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
KLUE = ROOT.parent / "shared" / "data" / "klue_re_subset" / "train_subset.jsonl"
#: Dense bf16 peak TFLOP/s by device name fragment (fp32 runs use TF32 tensor cores: half of it).
PEAK_BF16 = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40": 181.0, "A10": 125.0, "4090": 165.0}


def klue_lengths(n: int, chars_per_token: float, seed: int = 0) -> np.ndarray:
    """Token lengths for ``n`` examples: KLUE sentences' characters / chars_per_token + specials + markers."""
    if KLUE.exists():
        chars = [len(json.loads(line)["sentence"]) for line in KLUE.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:  # the KLUE subset's character-length quartiles, for machines without ../shared
        chars = list(np.random.default_rng(seed).gamma(4.0, 24.0, 3000).clip(20, 390).astype(int))
    rng = np.random.default_rng(seed)
    picked = rng.choice(np.asarray(chars), n)
    return np.minimum(np.ceil(picked / chars_per_token).astype(int) + 2 + 8, 512)


def flops_per_example(cfg, seq: float) -> float:
    """Training FLOPs of one example: 6 x non-embedding parameters x tokens + attention (QK^T and AV)."""
    d, layers, ff = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size
    per_token_params = layers * (4 * d * d + 2 * d * ff)
    attention = layers * 2 * 2 * seq * seq * d  # forward: two seq x seq x d matmuls, 2 FLOPs per MAC
    return 6 * per_token_params * seq + 3 * attention


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=30, help="timed optimizer steps per setting")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--chars-per-token", type=float, default=1.7, help="Korean characters per XLM-R token")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="bf16 dense peak (default: from the device name)")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model (smoke test of this script)")
    args = ap.parse_args(argv)

    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from kfold.core.variants import get_variant
    from kfold.encoding._batching import length_grouped_batches
    from kfold.model._losses import RelationLoss
    from kfold.model._models import RelationModel, enable_checkpointing

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16.items() if k in name), 0.0)
    if args.tiny:
        cfg = XLMRobertaConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=128, max_position_embeddings=514)
    else:  # xlm-roberta-large
        cfg = XLMRobertaConfig(vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                               intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1)
    n_batches = args.steps + args.warmup
    lengths = klue_lengths(n_batches * args.batch_size, args.chars_per_token)
    batches = length_grouped_batches(lengths, args.batch_size, seed=0)[:n_batches]
    print(f"device {name}; {'tiny' if args.tiny else 'XLM-R large'}; batch {args.batch_size}; KLUE-like lengths "
          f"mean {lengths.mean():.0f}, max {lengths.max()} tokens; peak bf16 {peak or '?'} TFLOP/s")
    print(f"{'precision':<9} {'checkpointing':<13} {'examples/s':>10} {'peak GB':>8} {'MFU':>6}")
    for precision in ("fp32", "bf16"):
        for ckpt in (False, True):
            torch.manual_seed(0)
            backbone = XLMRobertaModel(cfg, add_pooling_layer=False)
            model = RelationModel(backbone, get_variant("split"), 30, 0.1, use_pooler=False).to(device)
            model.loss_fn = RelationLoss()
            if ckpt:
                enable_checkpointing(model.backbone)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            rng = np.random.default_rng(0)
            seen, flops, t0 = 0, 0.0, None
            for i, b in enumerate(batches):
                if i == args.warmup:
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    t0 = time.perf_counter()
                width = int(lengths[b].max())
                ids = torch.randint(5, cfg.vocab_size, (len(b), width), device=device)
                mask = (torch.arange(width, device=device)[None] < torch.as_tensor(lengths[b], device=device)[:, None]).long()
                ent = torch.tensor([[2, 5, 1, 8, 11, 7]] * len(b), device=device)
                labels = torch.as_tensor(rng.integers(0, 30, len(b)), device=device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    loss = model(ids, mask, ent, labels)["loss"]
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                if i >= args.warmup:
                    seen += len(b)
                    flops += sum(flops_per_example(cfg, int(lengths[j])) for j in b) * (4 / 3 if ckpt else 1)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            secs = time.perf_counter() - t0
            peak_gb = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            # MFU counts the model's useful FLOPs only (recomputation excluded) against the bf16 peak;
            # fp32 runs use TF32 tensor cores (half the bf16 peak)
            useful = flops / (4 / 3 if ckpt else 1)
            mfu = useful / secs / 1e12 / (peak if precision == "bf16" else peak / 2) if peak else float("nan")
            print(f"{precision:<9} {str(ckpt):<13} {seen / secs:>10.1f} {peak_gb:>8.2f} {mfu * 100:>5.1f}%", flush=True)
            del model, opt, backbone
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
