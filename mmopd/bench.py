"""`mmopd bench opd --vs trl` and `mmopd bench transport`: measured, side by side, on this machine.

`opd` runs the same on-policy reverse-KL work (same saved models, prompts, batch, new tokens, lr,
steps, fp32 on CPU, thread count) through mmopd and through TRL's `DistillationTrainer`, each side in
its own process (mmopd, trl, mmopd, trl, ...), and reports seconds per step, tokens per second and
peak RSS, with the step's FLOP estimate and the matmul rate measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = [
    "Write one sentence about rivers.",
    "Name three colours you can see in the evening sky.",
    "Describe a cat in five words.",
    "What is two plus two? Explain briefly.",
    "Tell me a fact about the moon.",
    "Give a short, friendly greeting to a new colleague.",
    "Summarise the idea of gravity for a child.",
    "List four fruits that are red.",
    "Why do leaves change colour in autumn?",
    "Suggest a name for a small bakery.",
    "Translate 'good morning' into French and Spanish.",
    "What does a thermometer measure?",
    "Write a haiku about snow.",
    "How many legs does a spider have?",
    "Give one tip for learning to swim.",
    "What is the capital of Japan?",
]


def add_parsers(kinds: argparse._SubParsersAction) -> None:
    """The `opd` and `transport` kinds of `mmopd bench`."""
    opd = kinds.add_parser("opd", help="one OPD step: mmopd side by side with TRL's DistillationTrainer")
    opd.add_argument("--vs", choices=["trl", "none"], default="trl", help="the peer to run alongside")
    opd.add_argument("--student-hidden", type=int, default=64)
    opd.add_argument("--student-layers", type=int, default=2)
    opd.add_argument("--teacher-hidden", type=int, default=128)
    opd.add_argument("--teacher-layers", type=int, default=4)
    opd.add_argument("--batch", type=int, default=8)
    opd.add_argument("--new-tokens", type=int, default=32)
    opd.add_argument("--steps", type=int, default=4, help="timed steps per process (after the warm-up)")
    opd.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of every process")
    opd.add_argument("--rounds", type=int, default=2, help="processes per side, alternating mmopd and TRL")
    opd.add_argument("--lr", type=float, default=1e-5)
    opd.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of both sides")
    opd.add_argument("--models-dir", type=Path, help="where the saved student and teacher live (reused)")
    _add_output_flags(opd)
    transport = kinds.add_parser("transport", help="bytes per supervised token of each teacher signal kind")
    transport.add_argument("--vocab", type=int, default=151_646, help="teacher vocabulary (the real Qwen2 one)")
    transport.add_argument("--hidden", type=int, default=896, help="teacher hidden size (Qwen2.5-0.5B: 896, 7B: 3584)")
    transport.add_argument("--batch", type=int, default=4)
    transport.add_argument("--tokens", type=int, default=64, help="supervised tokens per sequence")
    transport.add_argument("--top-k", type=int, default=20)
    _add_output_flags(transport)


def _add_output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument("--docs", type=Path, help="write the results as a section of this markdown file")


def run(args: argparse.Namespace, command: str) -> int:
    """Run `mmopd bench opd|transport` as parsed by `add_parsers`; `command` is the line that launched it."""
    if args.kind == "transport":
        from mmopd.transport import measure_transport, transport_markdown

        result = measure_transport(args.vocab, args.hidden, args.batch, args.tokens, args.top_k)
        markdown = transport_markdown(result, command)
    else:
        result = bench_opd(args, log=sys.stderr if args.json else sys.stdout)
        markdown = opd_markdown(result, command, args.docs)
    if args.docs:
        write_section(args.docs, result["key"], markdown)
    print(json.dumps(result, indent=2) if args.json else markdown)
    return 0


def bench_opd(args: argparse.Namespace, log=sys.stdout) -> dict:
    import importlib.util

    from mmopd.bench_work import build_models, matmul_rate, step_flops

    if args.vs == "trl" and importlib.util.find_spec("trl") is None:
        raise SystemExit("mmopd bench opd --vs trl needs TRL: pip install -e '.[dev]' (or pass --vs none)")

    shape = dict(
        student_hidden=args.student_hidden,
        student_layers=args.student_layers,
        teacher_hidden=args.teacher_hidden,
        teacher_layers=args.teacher_layers,
    )
    models_dir = args.models_dir or Path(tempfile.gettempdir()) / "mmopd-bench"
    student, teacher, vocab = build_models(models_dir, **shape)
    spec = dict(
        student=str(student),
        teacher=str(teacher),
        batch=args.batch,
        new_tokens=args.new_tokens,
        lr=args.lr,
        steps=args.warmup + args.steps,
        seed=0,
        threads=args.threads,
        prompts=PROMPTS,
    )
    sides = ["mmopd"] + (["trl"] if args.vs == "trl" else [])
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for round_index in range(args.rounds):
        for side in sides:
            print(f"round {round_index + 1}/{args.rounds}: {side} ...", file=log, flush=True)
            runs[side].append(_run_side(side, spec, args.threads))
    result = {side: _summarise(runs[side], args.warmup, args.batch * args.new_tokens) for side in sides}
    flops = step_flops(vocab=vocab, batch=args.batch, new_tokens=args.new_tokens, **shape)
    rate = matmul_rate(args.batch * args.new_tokens, [args.student_hidden, args.teacher_hidden], vocab, args.threads)
    seconds_at_rate = sum(count / rate[hidden] for hidden, count in flops["head_by_hidden"].items())
    seconds_at_rate += flops["body"] / min(rate.values())
    result["flops"] = {
        "step_gflop": flops["total"] / 1e9,
        "matmul_gflops_per_s": {str(h): r / 1e9 for h, r in rate.items()},
        "seconds_at_matmul_rate": seconds_at_rate,
        "mmopd_fraction_of_matmul_rate": seconds_at_rate / result["mmopd"]["s_per_step"],
    }
    if "trl" in result:
        result["flops"]["trl_fraction_of_matmul_rate"] = seconds_at_rate / result["trl"]["s_per_step"]
        result["speedup"] = result["trl"]["s_per_step"] / result["mmopd"]["s_per_step"]
        # Each round's TRL process against the mmopd process just before it: robust to load that drifts.
        result["speedup_by_round"] = [
            statistics.median(trl["seconds"][args.warmup :]) / statistics.median(ours["seconds"][args.warmup :])
            for ours, trl in zip(runs["mmopd"], runs["trl"])
        ]
        result["memory_ratio"] = result["mmopd"]["peak_rss_mb"] / result["trl"]["peak_rss_mb"]
        result["memory_floor"] = memory_floor(runs["mmopd"][0], result["trl"]["peak_rss_mb"])
        result["step_memory_ratio"] = result["mmopd"]["step_rss_mb"] / max(result["trl"]["step_rss_mb"], 1e-9)
    result["work"] = {**shape, "batch": args.batch, "new_tokens": args.new_tokens, "vocab": vocab}
    result["work"].update(lr=args.lr, threads=args.threads, warmup=args.warmup, steps=args.steps, rounds=args.rounds)
    result["machine"] = _machine()
    result["key"] = "opd-s{student_hidden}x{student_layers}-t{teacher_hidden}x{teacher_layers}".format(**shape)
    result["key"] += f"-b{args.batch}-n{args.new_tokens}"
    return result


def _run_side(side: str, spec: dict, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    command = [sys.executable, "-m", "mmopd.bench_worker", side, json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the {side} side failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len("BENCH_RESULT ") :])


def _summarise(runs: list[dict], warmup: int, planned_tokens: int) -> dict:
    seconds = [s for run in runs for s in run["seconds"][warmup:]]
    tokens = [t for run in runs for t in run["tokens"][warmup:]]
    s_per_step = statistics.median(seconds)
    peak = max(run["peak_rss_mb"] for run in runs)
    setup = max(run["setup_rss_mb"] for run in runs)
    return {
        "s_per_step": s_per_step,
        "tokens_per_s": statistics.mean(tokens) / s_per_step,
        "peak_rss_mb": peak,
        "setup_rss_mb": setup,
        "step_rss_mb": max(run["peak_rss_mb"] - run["setup_rss_mb"] for run in runs),
        "phases": max(runs, key=lambda run: run["peak_rss_mb"])["phases"],
        "completion_tokens_per_step": statistics.mean(tokens),
        "planned_tokens_per_step": planned_tokens,
        "step_seconds": seconds,
    }


def memory_floor(mmopd_run: dict, trl_peak_mb: float) -> dict:
    """A lower bound on the peak RSS of any OPD step on this work: the RSS after importing torch and
    transformers' Qwen2 model code (measured in the mmopd process) plus the tensors the step must hold
    whatever the code: the student's weights but its input embedding (whose unused rows a sparse update
    need never touch), its output head's gradient and two AdamW moments (every head row gets a gradient
    from a full-vocabulary loss, and clipping needs all gradients before any update), and the teacher's
    output head (read whole by that loss). The tokenizer, activations and loss buffers come on top."""
    from mmopd.bench_worker import QWEN2_CODE

    imports = next(rss for phase, rss, _ in mmopd_run["phases"] if phase == QWEN2_CODE)
    tensors = mmopd_run["tensors_mb"]
    held = tensors["student_weights"] - tensors["student_input_embedding"]
    held += 3 * tensors["student_head"] + tensors["teacher_head"]
    return {
        "imports_mb": imports,
        "tensors_mb": held,
        "floor_mb": imports + held,
        "floor_ratio": (imports + held) / trl_peak_mb,
    }


def _machine() -> dict:
    import platform

    import torch

    model = ""
    if Path("/proc/cpuinfo").exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ]
        model = names[0] if names else ""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "load_average_1min_at_end": load,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }


def opd_markdown(result: dict, command: str, docs: Path | None) -> str:
    work, machine, flops = result["work"], result["machine"], result["flops"]
    lines = [
        f"### OPD step: student {work['student_hidden']}×{work['student_layers']}, teacher "
        f"{work['teacher_hidden']}×{work['teacher_layers']}, batch {work['batch']}, {work['new_tokens']} new tokens",
        "",
        f"`{command}` — {machine['cpu']}, {machine['cores']} cores, {work['threads']} torch threads, "
        f"load average {machine['load_average_1min_at_end']:.1f} at the end, torch {machine['torch']}, "
        f"{machine['date_utc']} UTC; vocabulary {work['vocab']:,}; medians of {work['rounds']} processes per side "
        f"× {work['steps']} steps after {work['warmup']} warm-up steps each.",
        "",
        "| | s / step | completion tokens / s | peak RSS (MB) | RSS once loaded (MB) | peak − loaded (MB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for side in ("mmopd", "trl"):
        if side in result:
            r = result[side]
            lines.append(
                f"| {side} | {r['s_per_step']:.3f} | {r['tokens_per_s']:.0f} | {r['peak_rss_mb']:.0f} | "
                f"{r['setup_rss_mb']:.0f} | {r['step_rss_mb']:.0f} |"
            )
    lines.append("")
    if "speedup" in result:
        lines.append(
            f"**Speed-up (TRL s/step ÷ mmopd s/step): {result['speedup']:.2f}×**; peak RSS mmopd/TRL: "
            f"{result['memory_ratio']:.2f}; peak − loaded mmopd/TRL: {result['step_memory_ratio']:.2f}. "
            "Speed-up of each round (TRL process ÷ the mmopd process before it): "
            + ", ".join(f"{ratio:.2f}×" for ratio in result["speedup_by_round"])
            + "."
        )
    if "memory_floor" in result:
        lines += ["", *memory_lines(result), ""]
    rates = ", ".join(f"H={h}: {r:.1f}" for h, r in flops["matmul_gflops_per_s"].items())
    lines.append(
        f"Step estimate {flops['step_gflop']:.1f} GFLOP; measured head-matmul rate (GFLOP/s) {rates}; "
        f"{flops['seconds_at_matmul_rate']:.3f} s at that rate, so mmopd reaches "
        f"{100 * flops['mmopd_fraction_of_matmul_rate']:.0f}% of it"
        + (
            f" and TRL {100 * flops['trl_fraction_of_matmul_rate']:.0f}%."
            if "trl_fraction_of_matmul_rate" in flops
            else "."
        )
    )
    if docs is not None:
        plot = docs.parent / f"{result['key']}.png"
        plot_opd(result, plot)
        lines += ["", f"![{result['key']}]({plot.name})"]
    return "\n".join(lines)


def memory_lines(result: dict) -> list[str]:
    """Each side's RSS after each phase (and its peak so far), then the floor no implementation goes below."""
    lines = ["| phase | RSS after (MB) | peak so far (MB) |", "|---|---:|---:|"]
    for side in ("mmopd", "trl"):
        lines += [f"| {side}: {phase} | {rss:.0f} | {peak:.0f} |" for phase, rss, peak in result[side]["phases"]]
    floor = result["memory_floor"]
    lines += [
        "",
        f"Memory floor: {floor['imports_mb']:.0f} MB resident after importing torch and transformers' Qwen2 model "
        f"code, plus {floor['tensors_mb']:.0f} MB of tensors any OPD step with AdamW and gradient clipping holds "
        "(the student's weights but its input embedding; its output head's gradient and two AdamW moments; the "
        f"teacher's output head) = {floor['floor_mb']:.0f} MB, {floor['floor_ratio']:.2f}× TRL's peak: a lower "
        "bound for any implementation on transformers' models, before its tokenizer, activations and loss buffers.",
    ]
    return lines


def plot_opd(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = [side for side in ("mmopd", "trl") if side in result]
    figure, (speed, memory) = plt.subplots(1, 2, figsize=(9, 3))
    speed.bar(sides, [result[s]["s_per_step"] for s in sides], color=["tab:blue", "tab:gray"][: len(sides)])
    speed.axhline(result["flops"]["seconds_at_matmul_rate"], color="tab:red", linestyle="--", label="at matmul rate")
    speed.set_ylabel("seconds per step (median)")
    speed.legend()
    loaded = [result[s]["setup_rss_mb"] for s in sides]
    extra = [result[s]["peak_rss_mb"] - result[s]["setup_rss_mb"] for s in sides]
    memory.bar(sides, loaded, color="lightgray", label="once loaded")
    memory.bar(sides, extra, bottom=loaded, color=["tab:blue", "tab:gray"][: len(sides)], label="peak above that")
    if "memory_floor" in result:
        memory.axhline(result["memory_floor"]["floor_mb"], color="black", linestyle=":", label="floor")
        memory.axhline(result["trl"]["peak_rss_mb"] / 2, color="tab:red", linestyle="--", label="0.5 × TRL")
    memory.set_ylabel("RSS (MB)")
    memory.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
    figure.suptitle(result["key"])
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_section(path: Path, key: str, markdown: str) -> None:
    """Replace (or append) the section between `<!-- bench:KEY -->` markers; the prose around it stays."""
    begin, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{markdown}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
