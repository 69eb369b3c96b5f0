"""bench/trial_time.py: a trial slot cut into its pieces from the timings a sweep records."""

from __future__ import annotations

import json

import pytest

from bench.trial_time import main, trial_pieces

TIMINGS = {"setup_s": 5.0, "steps_s": 140.0, "watch_eval_s": 4.0, "checkpoint_s": 0.5, "final_eval_s": 25.0,
           "total_s": 176.0, "before_train_s": 2.0, "train_call_s": 188.0, "trial_s": 192.0}


def test_the_slot_is_cut_into_pieces_that_add_up():
    p = trial_pieces(TIMINGS)
    assert p["slot_s"] == 192.0 and p["start_s"] == 16.0  # slot - what the workers measured
    assert p["ray_s"] == 12.0 and p["own_s"] == 4.0      # Train's run around the workers; the trial's own
    assert p["other_s"] == pytest.approx(1.5)
    parts = ("start_s", "setup_s", "steps_s", "watch_eval_s", "checkpoint_s", "final_eval_s", "other_s")
    assert sum(p[k] for k in parts) == pytest.approx(p["slot_s"])
    older = trial_pieces({k: v for k, v in TIMINGS.items() if k not in ("before_train_s", "train_call_s")})
    assert "ray_s" not in older and older["start_s"] == 16.0


def test_the_summary_line_gives_each_slots_share(tmp_path, capsys):
    for name, steps in (("a", 140.0), ("b", 70.0)):
        (tmp_path / "trials" / name).mkdir(parents=True)
        timings = {**TIMINGS, "steps_s": steps}
        (tmp_path / "trials" / name / "metrics.json").write_text(json.dumps({"training": {"timings": timings}}))
    (tmp_path / "summary.json").write_text(json.dumps({"wall_seconds": 400.0}))
    assert main([str(tmp_path)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary == {"trials": 2, "steps_share_median": round((140 + 70) / 2 / 192, 3),
                       "steps_share_min": round(70 / 192, 3), "steps_share_sweep": round(210 / 384, 3),
                       "wall_s": 400.0}
    assert main([str(tmp_path / "nothing")]) == 2
