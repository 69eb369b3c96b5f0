"""`undial`: the command line. Bad input -> one line on stderr, exit code 2."""

from __future__ import annotations

import argparse
import os
import sys

from trainables.errors import InputError, TrainingDiverged


def _split_config(args) -> tuple[str | None, list[str]]:
    """`unlearn CONFIG k=v ...` or `unlearn --demo k=v ...`: the first positional is the
    config unless --demo is given or it looks like an override."""
    positional = list(args.args)
    if getattr(args, "demo", False) or not positional or "=" in positional[0]:
        return None, positional
    return positional[0], positional[1:]


def cmd_demo(args) -> int:
    from trainables.demo import build_demo, default_demo_dir

    path = build_demo(args.dir or default_demo_dir(args.seed, args.size), seed=args.seed, size=args.size,
                      force=args.force)
    print(path)
    return 0


def cmd_unlearn(args) -> int:
    from orchestrator.sequential import check_split, is_sequential, run_sequential
    from orchestrator.unlearn import resolve_config, run_unlearn_job

    split = getattr(args, "split_forget", None)
    if split is not None:
        check_split(split)  # before resolve_config, which may build the demo
    config_path, overrides = _split_config(args)
    cfg = resolve_config(config_path, overrides, args.demo)

    if is_sequential(cfg, split):  # several forget sets: one request after the other (docs/sequential.md)
        run_sequential(cfg, args.output, overwrite=args.overwrite, split=split)  # prints the table at the end
    else:
        run_unlearn_job(cfg, args.output, overwrite=args.overwrite)
    return 0


def cmd_eval(args) -> int:
    from orchestrator.unlearn import format_metrics, resolve_config, run_eval_job

    config_path, overrides = _split_config(args)
    cfg = resolve_config(config_path, overrides, args.demo)
    metrics = run_eval_job(cfg, args.model, args.output, overwrite=args.overwrite)
    print(format_metrics(metrics))
    return 0


def cmd_plan(args) -> int:
    from orchestrator.plan import plan

    print(plan(args.config, args.overrides, gpus_per_node=args.gpus_per_node, gpu_memory_gib=args.gpu_memory,
               headroom=args.headroom, shape_name=args.shape, params=args.params, layers=args.layers,
               hidden=args.hidden, vocab=args.vocab, heads=args.heads, intermediate=args.intermediate,
               workers=args.workers, forget_records=args.forget_records))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="undial", description="UnDIAL unlearning, sweeps and tracking.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="build the offline demo (cached) and print where it is")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--size", choices=["full", "tiny"], default="full")
    demo.add_argument("--dir", help="build here instead of the cache folder")
    demo.add_argument("--force", action="store_true", help="rebuild even if it exists")
    demo.set_defaults(func=cmd_demo)

    unlearn = sub.add_parser("unlearn", help="run one unlearning job and report before/after")
    unlearn.add_argument("args", nargs="*", metavar="CONFIG.yaml | key=value",
                         help="a config file, then overrides like train.lr=1e-4")
    unlearn.add_argument("--demo", action="store_true", help="use the built-in offline demo's config")
    unlearn.add_argument("--output", required=True, help="folder for metrics.json, the model, the config")
    unlearn.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    unlearn.add_argument("--split-forget", type=int, metavar="N",
                         help="cut the forget file into N sequential requests (N >= 2); a list in data.forget "
                              "runs as sequential requests too")
    unlearn.set_defaults(func=cmd_unlearn)

    ev = sub.add_parser("eval", help="evaluate a model or adapter folder with the evaluation suite")
    ev.add_argument("args", nargs="*", metavar="CONFIG.yaml | key=value")
    ev.add_argument("--demo", action="store_true")
    ev.add_argument("--model", help="model or adapter folder (default: the config's model)")
    ev.add_argument("--output", required=True)
    ev.add_argument("--overwrite", action="store_true")
    ev.set_defaults(func=cmd_eval)

    pl = sub.add_parser("plan", help="per-GPU memory per strategy, and the strategy and worker count that fit")
    pl.add_argument("config", metavar="CONFIG_OR_SPACE.yaml", help="a run config or a search space")
    pl.add_argument("overrides", nargs="*", metavar="key=value", help="config (or space) overrides")
    pl.add_argument("--gpus-per-node", type=int, default=8)
    pl.add_argument("--gpu-memory", type=float, default=80.0, metavar="GIB", help="memory per GPU in GiB")
    pl.add_argument("--headroom", type=float, default=0.15, help="fraction of GPU memory kept free")
    pl.add_argument("--workers", type=int, help="workers per trial (default: scaling.num_workers)")
    pl.add_argument("--shape", help="a built-in model shape (gpt-neo-125m, gpt-neo-1.3b, gpt-neo-2.7b, llama-7b, ...)")
    for flag in ("--layers", "--hidden", "--vocab", "--heads", "--intermediate", "--forget-records"):
        pl.add_argument(flag, type=int)
    pl.add_argument("--params", type=float, help="total parameter count, e.g. 1.3e9 (with --layers --hidden --vocab)")
    pl.set_defaults(func=cmd_plan, light=True)

    try:
        from orchestrator.sweep_cli import add_sweep_commands
    except ImportError:
        pass
    else:
        add_sweep_commands(sub)
    from orchestrator.study_cli import add_study_command

    add_study_command(sub)
    return parser


def quiet_libraries() -> None:
    """Library chatter off (weight-loading bars, deprecation notes); our own log stays."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if _has_cuda() else "cpu")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# Where each command collects its trailing positionals (CONFIG.yaml | key=value ...).
_POSITIONALS = ("args", "overrides")


def parse_cli(argv: list[str] | None = None) -> argparse.Namespace:
    """argparse takes a `nargs="*"` positional in one run: `undial eval CONFIG.yaml --model M
    key=value` would leave key=value unrecognised. Overrides after an option join the
    command's positionals, in order; an unknown option is still refused by argparse (exit 2)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    dest = next((d for d in _POSITIONALS if isinstance(getattr(args, d, None), list)), None)
    if extra and (dest is None or any(a.startswith("-") for a in extra)):
        parser.parse_args(argv)  # argparse's own one-line error
    if extra:
        getattr(args, dest).extend(extra)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_cli(argv)
    from orchestrator.launcher import keep_local_ray_on_loopback

    keep_local_ray_on_loopback()  # before anything imports ray
    if not getattr(args, "light", False):  # `pareto` / `export` stay free of torch and transformers
        quiet_libraries()
    try:
        return args.func(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
