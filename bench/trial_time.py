"""Where a sweep's trial slots go: per trial, the worker group's start (the slot minus what the
workers measured), setup and loading, training steps, in-loop evaluation and the final
evaluation, from the timings the workers record (DIR/trials/*/metrics.json).

    python bench/trial_time.py runs/demo-sweep

Prints a table and, last, one JSON line: the share of each trial slot spent in training steps
(median and minimum over trials) and the sweep's wall time.
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
    evaluation, checkpoints, final evaluation, and the rest (reports, selection, saving)."""
    total = timings.get("total_s", 0.0)
    measured = {k: timings.get(k, 0.0) for k in ("setup_s", "steps_s", "watch_eval_s", "checkpoint_s",
                                                  "final_eval_s")}
    measured["other_s"] = max(0.0, total - sum(measured.values()) - timings.get("original_eval_s", 0.0))
    slot = timings.get("trial_s", total)
    return {"slot_s": slot, "start_s": max(0.0, slot - total), **measured}


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
    shares = [r["steps_s"] / r["slot_s"] for r in rows]
    summary = json.loads((args.sweep_dir / "summary.json").read_text()) if (args.sweep_dir / "summary.json").is_file() else {}
    print(json.dumps({"trials": len(rows), "steps_share_median": round(statistics.median(shares), 3),
                      "steps_share_min": round(min(shares), 3),
                      "wall_s": round(summary.get("wall_seconds", float("nan")), 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
