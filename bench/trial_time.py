"""Where a sweep's trial slots go: per trial, the worker group's start (the slot minus what the
workers measured), setup and loading, training steps, in-loop evaluation and the final
evaluation, from the timings the workers record (DIR/trials/*/metrics.json).

    python bench/trial_time.py runs/demo-sweep

Prints a table and, last, one JSON line: the share of each trial slot spent in training steps
(median and minimum over trials; over the sum of the slots) and the sweep's wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

PIECES = ("start_s", "setup_s", "steps_s", "watch_eval_s", "checkpoint_s", "final_eval_s", "other_s")


def trial_pieces(timings: dict) -> dict:
    """The slot (the trial's wall time) cut into: the worker group's start and the result's
    transfer (slot - what the workers measured), setup and loading, training steps, in-loop
    evaluation, checkpoints, final evaluation, and the rest (reports, selection, saving).
    Where the trial recorded them, start_s is split into Ray Train's run around the workers
    (`ray_s`: controller and worker group start, polls, the result's transfer) and the trial's
    own work (`own_s`: its MLflow run, the config)."""
    total = timings.get("total_s", 0.0)
    measured = {k: timings.get(k, 0.0) for k in ("setup_s", "steps_s", "watch_eval_s", "checkpoint_s",
                                                  "final_eval_s")}
    measured["other_s"] = max(0.0, total - sum(measured.values()) - timings.get("original_eval_s", 0.0))
    slot = timings.get("trial_s", total)
    out = {"slot_s": slot, "start_s": max(0.0, slot - total), **measured}
    if "train_call_s" in timings:
        out["ray_s"] = max(0.0, timings["train_call_s"] - total)
        out["own_s"] = max(0.0, out["start_s"] - out["ray_s"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    rows = []
    for path in sorted((args.sweep_dir / "trials").glob("*/metrics.json")):
        timings = json.loads(path.read_text()).get("training", {}).get("timings")
        if timings:
            rows.append({"trial": path.parent.name, **trial_pieces(timings)})
    if not rows:
        print(f"error: no trial timings under {args.sweep_dir}/trials", file=sys.stderr)
        return 2
    print(f"{'trial':<14}{'slot':>8}" + "".join(f"{p[:-2]:>12}" for p in PIECES) + f"{'steps %':>9}")
    for r in rows:
        print(f"{r['trial']:<14}{r['slot_s']:>8.1f}" + "".join(f"{r[p]:>12.1f}" for p in PIECES)
              + f"{100 * r['steps_s'] / r['slot_s']:>8.1f}%")
    if all("ray_s" in r for r in rows):
        print("start = Ray Train's run (controller, worker group, polls, result) + the trial's own work: "
              + ", ".join(f"{r['trial']} {r['ray_s']:.1f} + {r['own_s']:.1f}" for r in rows))
    shares = [r["steps_s"] / r["slot_s"] for r in rows]
    found = args.sweep_dir / "summary.json"
    summary = json.loads(found.read_text()) if found.is_file() else {}
    print(json.dumps({"trials": len(rows), "steps_share_median": round(statistics.median(shares), 3),
                      "steps_share_min": round(min(shares), 3),
                      "steps_share_sweep": round(sum(r["steps_s"] for r in rows) / sum(r["slot_s"] for r in rows), 3),
                      "wall_s": round(summary.get("wall_seconds", float("nan")), 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
