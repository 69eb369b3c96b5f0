"""UnDIAL throughput on one GPU: FSDP2, bf16 compute, GPT-Neo-125M- and 1.3B-shaped models.

    python bench/gpu_check.py                       # both sizes on GPU 0
    python bench/gpu_check.py --sizes 1.3b --micro 8 --seq 512
    python bench/gpu_check.py --smoke               # CPU, tiny shapes: checks the script runs

Per size: a GPT-Neo with random weights (the real shape: vocabulary 50257, global/local
attention, window 256) is written to a scratch folder with a byte-level tokenizer, and a
forget set of random token ids (.npy, the Training Data Extraction Challenge format) of
--seq tokens per record. The project's training recipe (trainables.train_loop.run_unlearning)
then runs under `torchrun --nproc-per-node 1` with scaling.strategy=fsdp: fully_shard per
block and root, float32 master weights and AdamW, bfloat16 compute (MixedPrecisionPolicy),
UnDIAL (gamma 10, every position), full fine-tuning with the frozen teacher sharded the same
way. Nothing of ray, deepspeed, optuna or mlflow is needed.

Printed per size: tokens/s (global batch x seq / median step time after --warmup steps),
peak GPU memory (max allocated / reserved), and MFU = 8 N tokens/s / peak, where N is the
parameter count (tied embeddings once) and 8N = 6N for the student's forward and backward +
2N for the teacher's forward. Attention FLOPs are not counted (at seq 512 they add ~5% at
1.3B). Peak: --peak-tflops, default 989 (H100/H200 SXM dense bf16, no sparsity).
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {  # GPT-Neo family shapes (EleutherAI configs)
    "125m": {"hidden_size": 768, "num_layers": 12, "num_heads": 12},
    "1.3b": {"hidden_size": 2048, "num_layers": 24, "num_heads": 16},
    "smoke": {"hidden_size": 64, "num_layers": 2, "num_heads": 2},
}
DEFAULT_BATCH = {"125m": (32, 16), "1.3b": (16, 8), "smoke": (4, 2)}  # (global batch, micro-batch)


def build_assets(root: Path, size: str, vocab: int, seq: int, n_records: int, device: str) -> int:
    """Random GPT-Neo of `size` + tokenizer in root/model, random ids in root/forget.npy.
    Returns the parameter count N."""
    import numpy as np
    import torch

    from trainables.tiny import gpt_neo_config, random_model, tiny_records, train_tokenizer

    shape = SHAPES[size]
    tokenizer = train_tokenizer([r["text"] for r in tiny_records(64)] * 4, 320, seq)
    config = gpt_neo_config(vocab, hidden=shape["hidden_size"], layers=shape["num_layers"], heads=shape["num_heads"],
                            context=max(2048, seq), local_attention=True, window=256, eos_id=tokenizer.eos_token_id)
    model = random_model(config, seed=0, device=device)
    n_params = sum(p.numel() for p in model.parameters())
    model.to(torch.bfloat16).save_pretrained(root / "model", safe_serialization=True)  # loaded as fp32
    tokenizer.save_pretrained(root / "model")
    del model
    # Token ids below the tokenizer's size (the data loader checks them against it); the
    # model still computes all `vocab` logits, which is what costs.
    rng = np.random.default_rng(0)
    np.save(root / "forget.npy", rng.integers(1, len(tokenizer), size=(n_records, seq), dtype=np.int64))
    return n_params


def run_config(root: Path, args, size: str, use_gpu: bool) -> dict:
    batch, micro = DEFAULT_BATCH[size]
    batch, micro = args.batch or batch, args.micro or micro
    return {
        "model": {"name_or_path": str(root / "model"), "dtype": "fp32"},
        "lora": {"enabled": False},
        "method": {"name": "undial", "gamma": 10.0, "teacher": "live", "subset": {"policy": "all"}},
        "data": {"forget": str(root / "forget.npy"), "retain": None, "heldout": None, "unseen": None,
                 "prompts": None, "max_length": args.seq, "min_length": 2},
        "train": {"lr": 1e-5, "max_steps": args.warmup + args.steps, "batch_size": batch,
                  "micro_batch_size": micro, "eval_every": 10**9, "select": "last", "log_every": 5,
                  "max_grad_norm": 1.0},
        "eval": {"batch_size": micro, "mauve": {"enabled": False}, "mia": False},
        "scaling": {"num_workers": 1, "strategy": "fsdp", "use_gpu": use_gpu},
        "run": {"name": f"gpu-check-{size}", "checkpoint_every": 10**9},
    }


def worker(spec_path: str) -> None:
    """Under torchrun: the recipe on one model, then the timing and memory figures."""
    import torch

    from trainables.config import UnlearnConfig, from_dict
    from trainables.distributed import WorkerContext
    from trainables.train_loop import run_unlearning

    spec = json.loads(Path(spec_path).read_text())
    cfg = from_dict(UnlearnConfig, spec["config"])
    if torch.cuda.is_available() and cfg.scaling.use_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True  # GPT-Neo's eager attention scores run in fp32
        torch.backends.cudnn.allow_tf32 = True
    ctx = WorkerContext.setup(cfg.scaling.use_gpu)
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    t0 = time.perf_counter()
    result = run_unlearning(cfg, ctx, None)
    times = [c["time_s"] for c in result["curve"]]
    warm = spec["warmup"]
    steps = [b - a for a, b in zip(times[warm - 1:], times[warm:])]  # after the warm-up steps
    out = {"median_step_s": statistics.median(steps), "mean_step_s": statistics.fmean(steps),
           "timed_steps": len(steps), "wall_s": time.perf_counter() - t0,
           "final_loss": result["curve"][-1]["loss"]}
    if ctx.device.type == "cuda":
        out["peak_allocated_gib"] = torch.cuda.max_memory_allocated(ctx.device) / 2**30
        out["peak_reserved_gib"] = torch.cuda.max_memory_reserved(ctx.device) / 2**30
        out["gpu"] = torch.cuda.get_device_name(ctx.device)
    if ctx.is_main:
        Path(spec["result"]).write_text(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="125m,1.3b", help="comma-separated: 125m, 1.3b")
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=None, help="global batch (default per size)")
    parser.add_argument("--micro", type=int, default=None, help="micro-batch (default per size)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="dense bf16 peak of the GPU (H100/H200 SXM: 989)")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, a few steps")
    parser.add_argument("--scratch", default=None, help="folder for the models (default: a temp folder)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker)
    if args.warmup < 1 or args.steps < 1:
        sys.exit("--warmup and --steps must be >= 1")

    import torch

    use_gpu = not args.smoke
    if use_gpu and not torch.cuda.is_available():
        sys.exit("no CUDA device visible (use --smoke to check the script on CPU)")
    if args.smoke:
        sizes, vocab = ["smoke"], 1000
        args.seq, args.steps, args.warmup = min(args.seq, 32), min(args.steps, 3), 1
    else:
        sizes, vocab = [s.strip().lower() for s in args.sizes.split(",")], 50257
        unknown = [s for s in sizes if s not in ("125m", "1.3b")]
        if unknown:
            sys.exit(f"--sizes: unknown size(s) {unknown}; choose from 125m, 1.3b")

    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="undial-gpu-check-"))
    summary = {"device": "cuda" if use_gpu else "cpu (smoke)", "peak_tflops": args.peak_tflops,
               "seq": args.seq, "strategy": "fsdp2", "precision": "bf16 compute, fp32 master" if use_gpu else "fp32",
               "flops_per_token": "8N (6N student + 2N teacher)", "torch": torch.__version__, "sizes": {}}
    try:
        for size in sizes:
            root = scratch / size
            root.mkdir(parents=True, exist_ok=True)
            batch, micro = DEFAULT_BATCH[size]
            batch, micro = args.batch or batch, args.micro or micro
            t0 = time.perf_counter()
            n_params = build_assets(root, size, vocab, args.seq, n_records=max(4 * batch, 16),
                                    device="cuda" if use_gpu else "cpu")
            print(f"[{size}] {n_params / 1e6:.1f}M parameters; assets in {time.perf_counter() - t0:.0f}s", flush=True)
            spec = root / "spec.json"
            result_file = root / "result.json"
            spec.write_text(json.dumps({"config": run_config(root, args, size, use_gpu), "warmup": args.warmup,
                                        "result": str(result_file)}))
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                   str(Path(__file__).resolve()), "--worker", str(spec)]
            proc = subprocess.run(cmd, text=True, capture_output=True)
            sys.stdout.write(proc.stdout[-4000:])
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr[-8000:])
                summary["sizes"][size] = {"error": f"torchrun exited {proc.returncode}"}
                continue
            res = json.loads(result_file.read_text())
            tokens_per_s = batch * args.seq / res["median_step_s"]
            mfu = 8 * n_params * tokens_per_s / (args.peak_tflops * 1e12)
            row = {"params": n_params, "global_batch": batch, "micro_batch": micro,
                   "tokens_per_s": round(tokens_per_s, 1), "median_step_s": round(res["median_step_s"], 4), "mfu": round(mfu, 4),
                   **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items()
                      if k in ("peak_allocated_gib", "peak_reserved_gib", "gpu", "final_loss", "timed_steps")}}
            summary["sizes"][size] = row
            mem = (f"peak memory {row['peak_allocated_gib']:.1f} GiB allocated / {row['peak_reserved_gib']:.1f} GiB "
                   "reserved" if "peak_allocated_gib" in row else "peak memory: n/a on CPU")
            print(f"[{size}] {tokens_per_s:,.0f} tokens/s, step {res['median_step_s'] * 1e3:.0f} ms, MFU "
                  f"{mfu:.1%} (8N FLOPs/token, peak {args.peak_tflops:g} TFLOP/s), {mem}", flush=True)
            if args.scratch is None:
                shutil.rmtree(root, ignore_errors=True)
    finally:
        if args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
