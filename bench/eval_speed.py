"""Speed of the memorisation measures against their slow references (run by hand, not in CI).

    python bench/eval_speed.py [--n 3] [--ref-sequences 4] [--threads 1]

Model and data: the demo's forget set and model when a demo is built
(trainables.demo.default_demo_dir(); records truncated/padded to 64 tokens),
else a random GPT-Neo of the demo's shape (4 layers, hidden 256, vocab 4096)
with 32 random sequences of 64 tokens.

Timed: exact EL_n (prefix_stride=1) and MA, fast (trainables.metrics) vs the
one-prefix-at-a-time references (trainables.metrics_reference) on the same
sequences (the EL reference is slow: it runs on the first --ref-sequences
sequences). The last line printed is one JSON object with el_speedup,
ma_speedup and values_equal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from trainables import metrics as M  # noqa: E402
from trainables import metrics_reference as R  # noqa: E402

MAX_LEN = 64


def _demo():
    """(model, ids, mask, description) from a built demo, or None."""
    try:
        from trainables.demo import default_demo_dir
    except ImportError:
        return None
    root = Path(default_demo_dir())
    forget, model_dir = root / "data" / "forget.jsonl", root / "model"
    if not (forget.is_file() and model_dir.is_dir()):
        return None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    texts = [json.loads(line)["text"] for line in forget.read_text().splitlines() if line.strip()]
    enc = tok(texts, add_special_tokens=False, truncation=True, max_length=MAX_LEN)
    seqs = enc["input_ids"]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.full((len(seqs), max(len(s) for s in seqs)), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, s in enumerate(seqs):
        ids[b, :len(s)] = torch.tensor(s)
        mask[b, :len(s)] = 1
    return model, ids, mask, f"demo {root} ({len(seqs)} forget records)"


def _random(n_seq: int = 32, seed: int = 0):
    from trainables.tiny import gpt_neo_config, random_model

    cfg = gpt_neo_config(4096, hidden=256, layers=4, heads=4, context=128, local_attention=True, window=64)
    model = random_model(cfg, seed).eval()
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(1, 4096, (n_seq, MAX_LEN), generator=g)
    return model, ids, torch.ones_like(ids), f"random GPT-Neo (4x256, vocab 4096), {n_seq} x {MAX_LEN} random tokens"


def _memorise(model, ids, mask, steps: int, lr: float = 1e-3):
    labels = ids.masked_fill(mask == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def _timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3, help="n-gram size of EL_n (default 3)")
    ap.add_argument("--ref-sequences", type=int, default=4,
                    help="sequences the slow EL reference runs on (default 4)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--random", action="store_true", help="use the random model even if a demo is built")
    ap.add_argument("--memorise", type=int, default=0, metavar="STEPS",
                    help="first train the model STEPS full-batch steps on the sequences (memorised text: "
                         "EL reuses the greedy hits)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    got = None if args.random else _demo()
    model, ids, mask, what = got if got is not None else _random()
    if args.memorise:
        _memorise(model, ids, mask, args.memorise)
    seqs = R.sequences_from_batch(ids, mask)
    sub = min(args.ref_sequences, len(seqs))
    s_ids, s_mask, s_seqs = ids[:sub], mask[:sub], seqs[:sub]
    print(f"data: {what}; threads {args.threads}" + (f"; memorised {args.memorise} steps" if args.memorise else ""))

    # MA: all sequences, both ways
    # The fast path is timed before and after the (long) reference, best of both: a slow
    # spell of this shared machine during one short window would otherwise set the ratio.
    fast_ma = lambda: M.memorization_accuracy_per_sequence(model, ids, mask)  # noqa: E731
    t_ma_fast, ma_fast = _timed(fast_ma, repeat=3)
    t_ma_ref, ma_ref = _timed(lambda: R.reference_ma_per_sequence(model, seqs))
    t_ma_fast = min(t_ma_fast, _timed(fast_ma, repeat=3)[0])
    ma_equal = all(abs(a - b) <= 1e-6 for a, b in zip(ma_fast.tolist(), ma_ref))

    # EL_n exact: the reference on `sub` sequences, the fast path on the same and on all
    need = {b: list(range(1, len(x) - args.n + 1)) for b, x in enumerate(s_seqs)}

    def ref_el():
        gens = R.reference_generations(model, s_seqs, need)
        return gens, R.reference_extraction_likelihood(model, s_seqs, args.n, generations=gens)

    t_el_fast, el_fast_sub = _timed(lambda: M.extraction_likelihood(model, s_ids, args.n, s_mask), repeat=2)
    t_el_ref, (gens_ref, el_ref_sub) = _timed(ref_el)
    gens_fast = M.greedy_suffix_generations(model, s_ids, s_mask, need)
    t_el_all, el_all = _timed(lambda: M.extraction_likelihood(model, ids, args.n, mask))
    el_equal = gens_fast == gens_ref and abs(el_fast_sub - el_ref_sub) <= 1e-12

    rows = [
        ("MA", f"{len(seqs)} seq", t_ma_ref, t_ma_fast, float(ma_fast.mean()), sum(ma_ref) / len(ma_ref)),
        (f"EL{args.n} exact", f"{sub} seq", t_el_ref, t_el_fast, el_fast_sub, el_ref_sub),
        (f"EL{args.n} exact", f"{len(seqs)} seq", float("nan"), t_el_all, el_all, float("nan")),
    ]
    print(f"{'measure':<10} {'data':>8} {'reference s':>12} {'fast s':>9} {'speedup':>8} {'fast':>8} {'reference':>10}")
    for name, d, tr, tf, vf, vr in rows:
        sp = tr / tf if tr == tr else float("nan")
        print(f"{name:<10} {d:>8} {tr:>12.2f} {tf:>9.3f} {sp:>8.1f} {vf:>8.4f} {vr:>10.4f}")
    print(json.dumps({"el_speedup": round(t_el_ref / t_el_fast, 1), "ma_speedup": round(t_ma_ref / t_ma_fast, 1),
                      "values_equal": bool(ma_equal and el_equal)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
