"""`undial study`: the study command of the CLI.

    undial study CONFIG.yaml | --demo [key=value ...] [--methods a,b] [--lrs x,y,z]
                 [--output DIR] [--max-concurrent N] [--overwrite]

The methods, learning rates, config and output folder are checked before Ray, MLflow or a
model is touched (orchestrator.study imports Ray only inside run_study).
"""

from __future__ import annotations

from pathlib import Path


def cmd_study(args) -> int:
    from orchestrator.cli import _split_config
    from orchestrator.study import load_study_base, parse_lrs, parse_methods

    methods = parse_methods(args.methods)
    config_path, overrides = _split_config(args)
    base = load_study_base(config_path, overrides, args.demo)
    lrs = parse_lrs(args.lrs, base["train"]["lr"])
    output = args.output or str(Path("runs") / ("demo-study" if args.demo else "study"))
    from orchestrator.study import run_study

    study = run_study(base, methods, lrs, output, overwrite=args.overwrite, max_concurrent=args.max_concurrent)
    return 0 if any(t["status"] == "ok" for t in study["trials"]) else 1


def add_study_command(sub) -> None:
    study = sub.add_parser("study", help="every method x a learning-rate grid: dynamics, report, plots, MLflow",
                           description="One trial per method and learning rate (Ray Tune + Ray Train, as a "
                                       "sweep): forget EL3, MA, MIA AUC, MAUVE and held-out perplexity along "
                                       "training; study.md, study.json and plots/dynamics.png; MLflow parent "
                                       "run with one child run per trial.")
    study.add_argument("args", nargs="*", metavar="CONFIG.yaml | key=value",
                       help="a run config, then overrides like train.max_steps=100")
    study.add_argument("--demo", action="store_true", help="the built-in offline demo's config (200 steps, evaluated every 50)")
    study.add_argument("--methods", help="comma-separated (default: undial,gradient_ascent,graddiff,npo,simnpo,rmu)")
    study.add_argument("--lrs", help="comma-separated learning rates (default: train.lr / sqrt(10), train.lr, "
                                     "train.lr x sqrt(10))")
    study.add_argument("--output", help="the study folder (default: runs/study, runs/demo-study with --demo)")
    study.add_argument("--max-concurrent", type=int, default=1, help="trials at a time (default 1)")
    study.add_argument("--overwrite", action="store_true", help="replace a non-empty --output folder")
    study.set_defaults(func=cmd_study)
