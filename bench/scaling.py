"""Throughput of the distributed strategies on CPU (run by hand, not in CI).

    python bench/scaling.py [--steps 12] [--hidden 128] [--layers 4] [--seq 64] [--batch 16]

A random GPT-Neo (trainables.tiny; hidden 128 x 4 layers by default) on a forget set of
64 short records padded to --seq tokens, global batch --batch (micro-batch 4), full
fine-tuning, fp32. For each strategy (ddp, fsdp, deepspeed ZeRO-2, ZeRO-3):
  - UnDIAL with 1 and 2 workers (torchrun, one process per worker, 1 thread each, so
    2 workers use 2 cores): tokens/s = global batch x seq / median step time;
  - plain NLL fine-tuning (method.name=finetune) with 2 workers: the UnDIAL / NLL
    step-time ratio (UnDIAL adds the teacher's forward and the soft-target loss).
All configurations of one worker count run in one torchrun launch (imports paid once);
the first 2 steps of each run are warm-up and not timed. With 1 worker, ddp and fsdp have
nothing to shard over and run the plain model; deepspeed still runs its engine.
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
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STRATEGIES = {"ddp": {"strategy": "ddp"}, "fsdp": {"strategy": "fsdp"},
              "zero2": {"strategy": "deepspeed", "zero_stage": 2},
              "zero3": {"strategy": "deepspeed", "zero_stage": 3}}
WARMUP = 2


def _worker(spec_path: str) -> None:
    """Inside torchrun: every run of the spec, one after another, in this process group."""
    import torch

    from trainables.config import UnlearnConfig, from_dict
    from trainables.distributed import WorkerContext
    from trainables.train_loop import run_unlearning

    torch.set_num_threads(1)
    spec = json.loads(Path(spec_path).read_text())
    ctx = WorkerContext.setup(False)
    out = {}
    for name, cfg_dict in spec["runs"].items():
        result = run_unlearning(from_dict(UnlearnConfig, cfg_dict), ctx, None, log=lambda *a, **k: None)
        times = [c["time_s"] for c in result["curve"]]
        steps = [b - a for a, b in zip(times[WARMUP - 1:], times[WARMUP:])]
        out[name] = {"median_step_s": statistics.median(steps), "steps_timed": len(steps)}
        ctx.barrier()
    if ctx.is_main:
        Path(spec["result"]).write_text(json.dumps(out))


def _launch(runs: dict, nproc: int, work: Path) -> dict:
    spec = work / f"spec{nproc}.json"
    result = work / f"result{nproc}.json"
    spec.write_text(json.dumps({"runs": runs, "result": str(result)}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           str(Path(__file__).resolve()), "--worker", str(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"torchrun with {nproc} workers failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return _worker(args.worker)

    from trainables.tiny import build_tiny, tiny_config

    work = Path(tempfile.mkdtemp(prefix="undial-scaling-"))
    try:
        paths = build_tiny(work / "assets", n_forget=64, hidden=args.hidden, layers=args.layers,
                           heads=max(1, args.hidden // 32), context=max(64, args.seq))
        zero3_json = work / "zero3.json"  # partition every parameter, however small
        zero3_json.write_text(json.dumps({"zero_optimization": {"stage3_param_persistence_threshold": 0}}))

        def config(strategy: str, workers: int, method: str) -> dict:
            scaling = {"num_workers": workers, **STRATEGIES[strategy]}
            if strategy == "zero3":
                scaling["deepspeed_config"] = str(zero3_json)
            return tiny_config(paths, method={"name": method},
                               data={"max_length": args.seq, "min_length": 2},
                               train={"max_steps": args.steps + WARMUP, "batch_size": args.batch,
                                      "micro_batch_size": 4, "lr": 1e-4, "eval_every": 10**6},
                               scaling=scaling, run={"checkpoint_every": 10**6})

        from transformers import AutoConfig

        from trainables.models import count_parameters, load_causal_lm

        mc = AutoConfig.from_pretrained(paths["model"])
        n_params = count_parameters(load_causal_lm(paths["model"]))[0]

        one = _launch({s: config(s, 1, "undial") for s in STRATEGIES}, 1, work)
        runs2 = {s: config(s, 2, "undial") for s in STRATEGIES}
        runs2.update({f"{s}/nll": config(s, 2, "finetune") for s in STRATEGIES})
        two = _launch(runs2, 2, work)

        tokens_per_step = args.batch * args.seq
        table = {}
        for s in STRATEGIES:
            t1, t2 = one[s]["median_step_s"], two[s]["median_step_s"]
            table[s] = {"tokens_per_s_1w": tokens_per_step / t1, "tokens_per_s_2w": tokens_per_step / t2,
                        "speedup_2w": t1 / t2, "undial_over_nll_2w": t2 / two[f"{s}/nll"]["median_step_s"]}
        print(f"model: GPT-Neo hidden {mc.hidden_size} x {mc.num_layers} layers, vocab {mc.vocab_size}, "
              f"{n_params / 1e6:.2f}M parameters; global batch {args.batch} x {args.seq} tokens; "
              f"{args.steps} timed steps (median); 1 thread per worker")
        print(f"{'strategy':<8} {'tok/s 1w':>10} {'tok/s 2w':>10} {'speedup':>8} {'UnDIAL/NLL':>11}")
        for s, row in table.items():
            print(f"{s:<8} {row['tokens_per_s_1w']:>10.0f} {row['tokens_per_s_2w']:>10.0f} "
                  f"{row['speedup_2w']:>8.2f} {row['undial_over_nll_2w']:>11.2f}")
        summary = {"device": "cpu", "params": n_params, "hidden": mc.hidden_size, "layers": mc.num_layers,
                   "vocab": mc.vocab_size, "seq": args.seq, "global_batch": args.batch, "timed_steps": args.steps,
                   **{f"{s}_{k}": round(v, 3) for s, row in table.items() for k, v in row.items()}}
        print(json.dumps(summary))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
