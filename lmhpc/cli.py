"""``lmhpc``: run a pipeline, run one stage, show a run's status, sync its W&B runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lmhpc.config import ConfigError, load_config


def _run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides, executor=args.executor)
    from lmhpc.pipeline import launch, plan

    only = _names(args.stages)
    restart = _names(args.restart)
    stages = plan(cfg, only, restart)
    return launch(cfg, args.config, args.overrides, stages, dry_run=args.dry_run, restart=restart,
                  cancel=args.cancel)


def _names(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


def _plan(args: argparse.Namespace) -> int:
    """One line per stage of the run, in order: ``name kind tasks --sbatch-option=value ...`` (what
    slurm/pipeline.sh submits, with the stage's resources as sbatch options)."""
    cfg = load_config(args.config, args.overrides)
    from lmhpc.launch.slurm import sbatch_options
    from lmhpc.pipeline import plan
    from lmhpc.stages import STAGES

    for stage in plan(cfg, _names(args.stages)):
        options = " ".join(sbatch_options(cfg, stage))
        print(f"{stage} {STAGES[stage].kind} {cfg.resources_for(stage).tasks} {options}".rstrip())
    return 0


def _stage(args: argparse.Namespace) -> int:
    from lmhpc.runner import run_stage
    from lmhpc.stages import STAGES

    if args.name not in STAGES:
        print(f"lmhpc: unknown stage '{args.name}'; known: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    cfg = load_config(args.config, args.overrides)
    if args.num_tasks is not None and args.task is None:
        print("lmhpc: --num-tasks needs --task", file=sys.stderr)
        return 2
    if args.task is not None and args.num_tasks is None:
        # the config's task count, not the array's: a resubmission may hold only some indices
        args.num_tasks = cfg.resources_for(args.name).tasks
    if args.task is not None and not 0 <= args.task < args.num_tasks:
        print(f"lmhpc: --task must be in [0, {args.num_tasks})", file=sys.stderr)
        return 2
    return run_stage(cfg, args.name, task=args.task, num_tasks=args.num_tasks, finalize=args.finalize)


def _status(args: argparse.Namespace) -> int:
    from lmhpc.pipeline import status

    try:
        rows = status(Path(args.run_dir))
    except FileNotFoundError as e:
        print(f"lmhpc: {e}", file=sys.stderr)
        return 2
    if args.timing:
        from lmhpc.timing import format_timing, timing_rows

        timing = timing_rows(Path(args.run_dir), [r["stage"] for r in rows])
        print(json.dumps(timing, indent=2) if args.json else format_timing(timing))
        return 0
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'stage':<12} {'state':<10} {'jobs':<24} sacct")
    for r in rows:
        sacct = " ".join(f"{k}={v}" for k, v in sorted(r["sacct"].items()))
        print(f"{r['stage']:<12} {r['state']:<10} {' '.join(r['job_ids']):<24} {sacct}")
    return 0


def _sync(args: argparse.Namespace) -> int:
    from lmhpc.track import sync

    return 1 if sync(Path(args.run_dir), args.project, args.entity, dry_run=args.dry_run) else 0


CURATE_TOOLS = {
    "rethreshold": "lmhpc.curate.rethreshold",
    "classifier": "lmhpc.curate.classifier",
    "ngram-lm": "lmhpc.curate.ngram_lm",
}

# ``lmhpc NAME ...`` commands with arguments of their own: module whose ``main(argv) -> int`` runs it, and help
TOOLS: dict[str, tuple[str, str]] = {}
TOOLS["export"] = ("lmhpc.exchange.export_cli", "write a model as a consolidated folder, Hugging Face folder or GGUF")
TOOLS["import"] = ("lmhpc.exchange.import_cli", "a GGUF file or Hugging Face folder as a consolidated folder")
TOOLS["report"] = ("lmhpc.report.cli", "write a run's HTML report: runs/<run>/report/index.html")
TOOLS["generate"] = ("lmhpc.infer.cli", "generate text with a model")
TOOLS["evaluate"] = ("lmhpc.evaluate.cli", "perplexity and benchmark scores of model files or folders")
TOOLS["size"] = ("lmhpc.sizing", "memory per rank, checkpoint cadence, throughput and data-stage sizing on a cluster")


def _curate_tool(argv: list[str]) -> int:
    """``lmhpc curate TOOL ...``: the curate stage's tools, each with its own arguments."""
    import importlib

    if not argv or argv[0] not in CURATE_TOOLS:
        print(f"usage: lmhpc curate {{{','.join(CURATE_TOOLS)}}} ... (--help for each)", file=sys.stderr)
        return 2
    return importlib.import_module(CURATE_TOOLS[argv[0]]).main(argv[1:])


def _tool(name: str, argv: list[str]) -> int:
    import importlib

    return importlib.import_module(TOOLS[name][0]).main(argv)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmhpc", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run (local) or submit (slurm) the stage chain of a config")
    r.add_argument("config")
    r.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    r.add_argument("--executor", choices=["local", "slurm"], default=None)
    r.add_argument("--stages", default=None, help="comma-separated subset of stages")
    r.add_argument("--dry-run", action="store_true", help="print what would run or be submitted")
    r.add_argument("--restart", default=None, metavar="STAGES",
                   help="comma-separated stages to start over: their outputs (and those of the stages that read "
                        "them) are removed first")
    r.add_argument("--cancel", action="store_true",
                   help="cancel this run's jobs that are still queued or running, then launch")
    r.set_defaults(func=_run)

    pl = sub.add_parser("plan", help="the stages a run would chain: one 'name kind tasks sbatch-options' line each")
    pl.add_argument("config")
    pl.add_argument("overrides", nargs="*")
    pl.add_argument("--stages", default=None, help="comma-separated subset of stages")
    pl.set_defaults(func=_plan)

    s = sub.add_parser("stage", help="run one stage here (what every job runs)")
    s.add_argument("name")
    s.add_argument("config")
    s.add_argument("overrides", nargs="*")
    s.add_argument("--task", type=int, default=None, help="array stages: this task's index")
    s.add_argument("--num-tasks", type=int, default=None,
                   help="array stages: number of tasks (default: resources.<stage>.tasks)")
    s.add_argument("--finalize", action="store_true", help="array stages: merge the tasks' results")
    s.set_defaults(func=_stage)

    st = sub.add_parser("status", help="state of each stage of a run folder")
    st.add_argument("run_dir")
    st.add_argument("--json", action="store_true")
    st.add_argument("--timing", action="store_true",
                    help="orchestration overhead per stage: dependency end → start → first unit, run time, and "
                         "save / requeue / restore time of each preemption")
    st.set_defaults(func=_status)

    sy = sub.add_parser("sync", help="upload a run folder's offline W&B runs, attempts in order")
    sy.add_argument("run_dir")
    sy.add_argument("--project", default=None)
    sy.add_argument("--entity", default=None)
    sy.add_argument("--dry-run", action="store_true")
    sy.set_defaults(func=_sync)

    sub.add_parser("curate", help=f"curate tools: {', '.join(CURATE_TOOLS)} (e.g. lmhpc curate rethreshold --help)",
                   add_help=False)
    for name, (_, help_text) in TOOLS.items():
        sub.add_parser(name, help=f"{help_text} (lmhpc {name} --help)", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["stage"]:  # a batch job's process: keep a preemption signal that comes while it imports
        from lmhpc.launch.preempt import early_flag

        early_flag().install()
    if argv[:1] == ["curate"]:
        return _curate_tool(argv[1:])
    if argv[:1] and argv[0] in TOOLS:
        try:
            return _tool(argv[0], argv[1:])
        except ConfigError as e:
            print(f"lmhpc: {e}", file=sys.stderr)
            return 2
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # overrides may come after options too: `lmhpc run c.yaml --executor slurm a.b=1`
    stray = [x for x in extra if x.startswith("-") or "=" not in x or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"lmhpc: {e}", file=sys.stderr)
        return 2
