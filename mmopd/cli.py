"""`mmopd train | sft | eval | demo | recipe | compare | data check | align | bench | offline collect`: thin
wrappers that load a config (or read their arguments) and call one function."""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

from mmopd.actor_pool import ActorFailure
from mmopd.bench import add_parsers as add_bench_parsers
from mmopd.config import ConfigError, field_docs, load_config
from mmopd.guard import NonFiniteError


def _config_help() -> str:
    lines = ["config fields (set in the YAML file or as a.b=value overrides):"]
    for name, kind, default, doc in field_docs():
        lines.append(f"  {name} ({kind}, default {default!r})\n      {doc}")
    return "\n".join(lines)


def _new_run_dir(command: str) -> Path:
    return Path("runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmopd", description="On-policy distillation of multimodal students.")
    commands = parser.add_subparsers(dest="command", required=True)
    formatter = argparse.RawDescriptionHelpFormatter
    for name, about in (
        ("train", "on-policy distillation of the student from the teacher"),
        ("sft", "supervised fine-tuning (teacher warm-up or student cold start)"),
        ("eval", "held-out accuracy of the student (or of a model directory)"),
        ("demo", "SFT a tiny text teacher, then distil it into a tiny VLM student"),
        ("recipe", "run a recipe: its warm-ups (teacher, student SFT), then its training (configs/recipes/)"),
    ):
        sub = commands.add_parser(name, help=about, description=about, epilog=_config_help(), formatter_class=formatter)
        if name != "demo":
            sub.add_argument("config", help="YAML config file")
        else:
            sub.add_argument(
                "--config",
                type=Path,
                help="demo config (default: the shapes demo, configs/demo.yaml; e.g. configs/demo_video.yaml)",
            )
        sub.add_argument("overrides", nargs="*", help="a.b=value overrides")
        if name == "eval":
            sub.add_argument("--model", help="evaluate this model directory instead of the configured student")
        else:
            sub.add_argument("--run-dir", type=Path, help="run directory (default: a new one under runs/)")
            sub.add_argument("--resume", action="store_true", help="continue the run found in --run-dir")
    _add_compare_parser(commands)
    _add_data_parser(commands)
    _add_offline_parser(commands)
    _add_align_parser(commands.add_parser("align", help="align a student's and a teacher's tokens of a text"))
    bench_kinds = commands.add_parser("bench", help="benchmarks that print measured figures").add_subparsers(
        dest="kind", required=True
    )
    _add_bench_align_parser(bench_kinds.add_parser("align", help="alignment throughput, mmopd against TRL GOLD"))
    add_bench_parsers(bench_kinds)  # opd (mmopd against TRL's DistillationTrainer), transport
    return parser


def _add_compare_parser(commands: argparse._SubParsersAction) -> None:
    about = "train one student by several methods (OPD, SFT on teacher samples, RL) over seeds; table and plot"
    compare = commands.add_parser("compare", help=about, description=about)
    compare.add_argument("config", help="YAML config: task, models, schedule and warm-ups shared by every method")
    compare.add_argument("overrides", nargs="*", help="a.b=value overrides for every method")
    compare.add_argument("--seeds", default="0,1,2", help="comma-separated train.seed values (default 0,1,2)")
    compare.add_argument(
        "--method",
        action="append",
        default=[],
        help="NAME (opd | sft_teacher_samples | rl_verifier) or 'NAME: a.b=v ...'; repeat it (default: the three)",
    )
    compare.add_argument("--run-dir", type=Path, help="run directory (default: a new one under runs/)")
    compare.add_argument("--resume", action="store_true", help="continue; finished (method, seed) runs are kept")


def _add_data_parser(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="dataset tools", description="dataset tools")
    about = "decode every sample's media with the configured processors; list bad ones (exit 1 if any)"
    check = data.add_subparsers(dest="data_command", required=True).add_parser("check", help=about, description=about)
    check.add_argument("config", nargs="?", help="YAML config file: its task and processors")
    check.add_argument("overrides", nargs="*", help="a.b=value overrides")
    check.add_argument("--jsonl", type=Path, help="check this JSONL file (jsonl task format) with default processors")
    check.add_argument("--json", action="store_true", help='print {"checked": n, "bad": [...]} as JSON')
    check.add_argument("--max-samples", type=int, default=0, help="check at most N samples per split (0: all)")


def _add_offline_parser(commands: argparse._SubParsersAction) -> None:
    offline = commands.add_parser("offline", help="offline OPD (Lightning OPD)", description="offline OPD")
    about = "sample rollouts with the initial student and score them once with the teacher into offline.store"
    collect = offline.add_subparsers(dest="offline_command", required=True).add_parser(
        "collect", help=about, description=about
    )
    collect.add_argument("config", help="YAML config file")
    collect.add_argument("overrides", nargs="*", help="a.b=value overrides")
    collect.add_argument("--run-dir", type=Path, default=Path("."), help="where a relative offline.store lies")


def _add_align_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--student", required=True, help="a named tokenizer (qwen2, cl100k, ...) or a directory")
    parser.add_argument("--teacher", required=True, help="a named tokenizer or a directory")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="the completion text")
    source.add_argument("--file", type=Path, help="a UTF-8 file holding the completion text")
    parser.add_argument("--student-ids", help="the student's sampled ids, comma-separated, instead of its tokenisation")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _add_bench_align_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--width", type=int, default=0, help="distribution columns (default: full vocabularies)")
    parser.add_argument("--merge", action="store_true", help="mmopd also builds TRL's (chunks × V) output")
    parser.add_argument("--device", default="cpu", help="where the distributions live: cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for both (1: steadier when shared)")
    parser.add_argument("--batch-size", type=int, default=8, help="completions per micro-batch")
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum timed seconds per pair and framework")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


# Errors a user can act on: printed in one line with an exit code, no traceback.
EXIT_CODES = {
    ConfigError: ("config error", 2),
    FileExistsError: ("error", 2),
    NonFiniteError: ("error", 3),
    ActorFailure: ("error", 4),
}


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse the command line; `a.b=value` overrides may come anywhere after the command, also after options."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    stray = [token for token in extra if "=" not in token or token.startswith("-")]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    args.argv = argv
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # one progress bar: the training loop's
    try:
        return _run(args)
    except tuple(EXIT_CODES) as error:
        kind = next(kind for kind in EXIT_CODES if isinstance(error, kind))
        prefix, code = EXIT_CODES[kind]
        print(f"{prefix}: {error}", file=sys.stderr)
        return code


def _run(args: argparse.Namespace) -> int:
    if args.command == "eval":
        return _eval(args)
    if args.command == "data":
        return _data_check(args)
    if args.command == "offline":
        return _offline_collect(args)
    if args.command == "align":
        from mmopd.align_report import run as run_align

        return run_align(args)
    if args.command == "bench" and args.kind == "align":
        from mmopd.align_bench import run as run_bench

        return run_bench(args)
    if args.command == "bench":
        from mmopd.bench import run as run_bench

        return run_bench(args, "mmopd " + " ".join(args.argv))
    if args.resume and args.run_dir is None:
        raise ConfigError("--resume needs --run-dir")
    run_dir = args.run_dir or _new_run_dir(args.command)
    if args.command == "compare":
        from mmopd.compare import compare, parse_methods

        seeds = [int(seed) for seed in args.seeds.split(",")]
        result = compare(Path(args.config), args.overrides, run_dir, parse_methods(args.method), seeds, args.resume)
        print((run_dir / "compare.md").read_text(), end="")
        print(f"table, plot and curves: {run_dir / 'compare.md'}, compare.png, compare.json")
        return 0 if result["methods"] else 1
    if args.command == "demo":
        from mmopd.recipe import demo

        summary = demo(args.overrides, run_dir, args.resume, args.config)
    elif args.command == "recipe":
        from mmopd.recipe import run_recipe

        summary = run_recipe(Path(args.config), args.overrides, run_dir, args.resume)
    else:
        config = load_config(args.config, args.overrides)
        from mmopd.metrics import plot_metrics
        from mmopd.recipe import write_summary

        if args.command == "train":
            from mmopd.trainer import train_on_runtime as run
        else:
            from mmopd.sft import sft as run
        summary = run(config, run_dir, resume=args.resume)
        plot_metrics(run_dir / "metrics.jsonl", run_dir / "plot.png")
        write_summary(run_dir, summary)
    print(json.dumps({"run_dir": str(run_dir), **summary}, indent=2))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from mmopd.build import (
        build_network_policy,
        build_processors,
        build_student_and_tokenizer,
        build_task,
        evaluate_on_task,
    )
    from mmopd.views import opsd_messages, student_messages

    overrides = [*args.overrides, f"student.path={args.model}"] if args.model else args.overrides
    config = load_config(args.config, overrides)
    build_network_policy(config)
    task = build_task(config.data)
    student, _ = build_student_and_tokenizer(config, task)
    messages_for = student_messages
    if config.eval.with_context:
        messages_for = partial(opsd_messages, template=config.teacher.privileged_template)
    result = evaluate_on_task(config, task, build_processors(config.data), student, messages_for)
    print(json.dumps(result, indent=2))
    return 0


def _offline_collect(args: argparse.Namespace) -> int:
    from mmopd.offline import collect_store, store_location

    config = load_config(args.config, args.overrides)
    if not config.offline.store:
        raise ConfigError("offline collect needs a store directory: offline.store=PATH")
    store = store_location(config, args.run_dir)
    summary = collect_store(config, store)
    print(json.dumps({"store": str(store), **summary}, indent=2))
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from mmopd.datacheck import check_config, check_jsonl
    from mmopd.tasks.jsonl import JsonlError

    if (args.config is None) == (args.jsonl is None):
        raise ConfigError("data check takes a CONFIG or --jsonl FILE (one of them)")
    if args.jsonl is not None and args.overrides:
        raise ConfigError("a.b=value overrides need a CONFIG, not --jsonl")
    if args.max_samples < 0:
        raise ConfigError(f"--max-samples must be 0 (all) or more, got {args.max_samples}")
    try:
        if args.jsonl is not None:
            report = check_jsonl(args.jsonl, args.max_samples)
        else:
            report = check_config(load_config(args.config, args.overrides), args.max_samples)
    except (JsonlError, FileNotFoundError) as error:  # the dataset itself cannot be read
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        for item in report.bad:
            print(item)
        print(f"checked {report.checked} samples ({report.media} media items): {len(report.bad)} bad")
    return 1 if report.bad else 0


if __name__ == "__main__":
    sys.exit(main())
