"""Cost of an UnDIAL optimiser step vs plain NLL fine-tuning, on the same model and batch.

A GPT-Neo-125M-shaped model with random weights and the 50257-token vocabulary, sequence
128, batch 4 (so the teacher's share of the cost is what real use sees). Variants are
alternated step by step in one run (the machine is noisy); medians are compared:

  ratio_full_live    UnDIAL, full fine-tuning, frozen-copy teacher   / NLL full fine-tuning
  ratio_full_cached  UnDIAL, full fine-tuning, cached teacher        / NLL full fine-tuning
  ratio_lora         UnDIAL, LoRA (teacher = adapters off)           / NLL LoRA
  ratio_lora_cached  UnDIAL, LoRA, cached teacher (base model, once) / NLL LoRA
  mem_ratio_lora     peak RSS of a LoRA-UnDIAL process               / a LoRA-NLL process

Targets: <= 1.40, <= 1.10, <= 1.40, <= 1.10, <= 1.10. Last line: one JSON object.
    python bench/step_cost.py [--reps 5] [--layers 12] [--small]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


def build(args, lora: bool):
    from trainables.config import LoraConfig
    from trainables.models import apply_lora
    from trainables.tiny import gpt_neo_config, random_model

    hidden = 768 if not args.small else 128
    config = gpt_neo_config(50257, hidden=hidden, layers=args.layers, heads=12 if hidden == 768 else 4, context=2048,
                            local_attention=True, eos_id=50256)
    model = random_model(config, seed=0)
    model.config.use_cache = False
    if lora:
        model = apply_lora(model, LoraConfig(enabled=True, rank=8))
    return model


def make_step(model, variant: str, ids, mask, labels):
    """One optimiser step of `variant`, as the training loop does it."""
    from trainables.methods import FineTune, UnDIAL
    from trainables.models import AdapterOffTeacher, CachedTeacher, FrozenCopyTeacher

    undial = variant.startswith("undial")
    method = UnDIAL(gamma=10.0) if undial else FineTune()
    teacher = None
    if variant == "undial_live":
        teacher = FrozenCopyTeacher.copy_of(model)
    elif variant == "undial_cached":
        teacher = CachedTeacher.compute(model, ids, mask, max_gb=4.0, log=lambda *a: None)
    elif variant == "undial_lora":
        teacher = AdapterOffTeacher(model)
    elif variant == "undial_lora_cached":
        with model.disable_adapter():  # the base model is LoRA's teacher (as the loop does it)
            teacher = CachedTeacher.compute(model, ids, mask, max_gb=4.0, log=lambda *a: None)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    index = torch.arange(ids.shape[0])

    def step():
        teacher_logits = teacher(ids, mask, index) if teacher is not None else None
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss = method.loss(logits, teacher_logits, labels, None)
        del teacher_logits, logits
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    return step


def batch(args):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50257, (args.batch, args.seq), generator=g)
    mask = torch.ones_like(ids)
    return ids, mask, ids.clone()


def time_variants(args, lora: bool, variants: list[str]) -> dict[str, float]:
    model = build(args, lora)
    ids, mask, labels = batch(args)
    steps = {v: make_step(model, v, ids, mask, labels) for v in variants}
    for v in variants:  # warm-up
        steps[v]()
    times = {v: [] for v in variants}
    for _ in range(args.reps):
        for v in variants:
            t0 = time.perf_counter()
            steps[v]()
            times[v].append(time.perf_counter() - t0)
    return {v: statistics.median(t) for v, t in times.items()}


def peak_rss_child(args, variant: str) -> int:
    """Peak resident memory (bytes) of a fresh process running `variant` for a few steps."""
    cmd = [sys.executable, __file__, "--child", variant, "--layers", str(args.layers), "--batch", str(args.batch),
           "--seq", str(args.seq)] + (["--small"] if args.small else [])
    # Blocks of 1 MiB and more are mmapped and go back to the OS when freed, so the peak RSS
    # is the peak of live tensors, not of what glibc's heap kept from freed temporaries (its
    # default threshold moves with the sizes freed so far, and the figure with it).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip().splitlines()[-1])


def child(args) -> None:
    lora = "lora" in args.child
    model = build(args, lora)
    ids, mask, labels = batch(args)
    step = make_step(model, args.child, ids, mask, labels)
    # Reset the peak (VmHWM) after setup, so the figure is training's peak: weights + step.
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    for _ in range(3):
        step()
    print(_vm_hwm_bytes())


def _vm_hwm_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--small", action="store_true", help="hidden 128: a quick smoke run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    print(f"model: GPT-Neo {args.layers} layers, hidden {768 if not args.small else 128}, vocab 50257; "
          f"batch {args.batch} x {args.seq} tokens; {args.reps} alternated reps; torch threads {torch.get_num_threads()}")
    full = time_variants(args, lora=False, variants=["nll", "undial_live", "undial_cached"])
    lora = time_variants(args, lora=True, variants=["nll_lora", "undial_lora", "undial_lora_cached"])
    mem = {v: peak_rss_child(args, v) for v in ("nll_lora", "undial_lora")}
    for name, seconds in {**full, **lora}.items():
        print(f"  {name:<18} {seconds * 1000:9.1f} ms/step")
    for name, peak in mem.items():
        print(f"  {name:<18} peak RSS {peak / 2**20:9.1f} MiB")
    result = {"ratio_full_live": round(full["undial_live"] / full["nll"], 3),
              "ratio_full_cached": round(full["undial_cached"] / full["nll"], 3),
              "ratio_lora": round(lora["undial_lora"] / lora["nll_lora"], 3),
              "ratio_lora_cached": round(lora["undial_lora_cached"] / lora["nll_lora"], 3),
              "mem_ratio_lora": round(mem["undial_lora"] / mem["nll_lora"], 3)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
