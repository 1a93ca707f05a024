"""`mmopd compare`: the same student trained by several methods at equal numbers of samples, over several seeds.

The issue's question, from the OPD literature (Thinking Machines' "On-Policy Distillation", 2025; Agarwal et al.,
GKD, 2024): does on-policy distillation reach the teacher's accuracy with fewer samples than RL with a verifier,
and how does it compare with SFT on the teacher's own samples? Every method starts from the same warmed-up
student and teacher (one `mmopd recipe` warm-up) and trains `train.steps` × `train.batch_size` completions.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from mmopd.config import ConfigError, load_config
from mmopd.metrics import read_metrics
from mmopd.recipe import warm_up, write_summary
from mmopd.trainer import train_on_runtime

METHODS: dict[str, list[str]] = {
    # On-policy distillation: the student samples, the teacher scores every token, full-vocabulary reverse KL.
    "opd": ["loss.kind=divergence", "loss.divergence=reverse_kl"],
    # SFT on the teacher's sampled answers (sequence-level KD): the teacher samples, the student imitates.
    "sft_teacher_samples": [
        "rollout.on_policy_fraction=0",
        "rollout.off_policy_source=teacher",
        "loss.kind=cross_entropy",
    ],
    # RL with the task's verifier as the reward, group-relative advantages (GRPO-style), no teacher. Its own lr:
    # at the others' 2e-3 policy-gradient runs lost the warm start within 50 steps (configs/recipes/grpo.yaml).
    "rl_verifier": [
        "train.lr=5e-4",
        "teacher.kind=none",
        "loss.kind=policy_gradient",
        "loss.teacher_weight=0",
        "loss.reward_weight=1",
        "rollout.group_size=8",
    ],
}
REACH = (0.5, 0.75, 0.9)
"""A run reaches level L at its first evaluation whose accuracy is at least L × the teacher's."""


def compare(
    config_path: Path,
    overrides: list[str],
    run_dir: Path,
    methods: dict[str, list[str]],
    seeds: list[int],
    resume: bool = False,
) -> dict[str, Any]:
    """Warm up once, train every (method, seed) in `run_dir/METHOD/seed_S`, and write the table and the plot."""
    warmed, stages = warm_up(load_config(config_path, overrides), run_dir, resume)
    teacher_accuracy = stages["teacher_sft"]["accuracy_after"] if "teacher_sft" in stages else None
    curves: dict[str, list[dict[str, list[float]]]] = {}
    for method, method_overrides in methods.items():
        for seed in seeds:
            config = load_config(config_path, [*overrides, *warmed, *method_overrides, f"train.seed={seed}"])
            seed_dir = run_dir / method / f"seed_{seed}"
            if not (resume and (seed_dir / "summary.json").exists()):
                write_summary(seed_dir, train_on_runtime(config, seed_dir, resume=resume))
            curves.setdefault(method, []).append(
                curve(read_metrics(seed_dir / "metrics.jsonl"), config.train.batch_size)
            )
    result = {
        "teacher_accuracy": teacher_accuracy,
        "student_start_accuracy": curves[next(iter(curves))][0]["accuracy"][0],
        "seeds": seeds,
        "methods": {name: method_row(runs, teacher_accuracy) for name, runs in curves.items()},
        "overrides": {name: methods[name] for name in curves},
        "curves": curves,
    }
    (run_dir / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
    (run_dir / "compare.md").write_text(table(result))
    plot_curves(curves, teacher_accuracy, run_dir / "compare.png")
    return result


def curve(records: list[dict[str, Any]], batch_size: int) -> dict[str, list[float]]:
    """Accuracy at each evaluation against the samples trained on and the tokens generated (student's and, for
    methods that sample from it, the teacher's) up to that step."""
    points: dict[str, list[float]] = {"step": [], "samples": [], "tokens": [], "accuracy": []}
    samples = tokens = 0.0
    for record in records:
        if record["step"] > 0:
            trained = batch_size - record.get("skipped", 0)
            samples += trained
            generated = record.get("student_generated_tokens", record.get("completion_tokens", 0.0) * trained)
            tokens += generated + record.get("teacher_generated_tokens", 0.0)
        if "accuracy" in record:
            for key, value in (("step", record["step"]), ("samples", samples), ("tokens", tokens)):
                points[key].append(value)
            points["accuracy"].append(record["accuracy"])
    return points


def method_row(runs: list[dict[str, list[float]]], teacher_accuracy: float | None) -> dict[str, Any]:
    """Final accuracy over seeds, and for each REACH level the samples and tokens the seeds that reach it needed."""
    finals = [run["accuracy"][-1] for run in runs]
    row: dict[str, Any] = {
        "accuracy_mean": statistics.mean(finals),
        "accuracy_min": min(finals),
        "accuracy_max": max(finals),
        "samples_total": runs[0]["samples"][-1],
        "tokens_total": statistics.mean(run["tokens"][-1] for run in runs),
        "reach": {},
    }
    for level in REACH if teacher_accuracy else ():
        hits = [point for point in (first_reach(run, level * teacher_accuracy) for run in runs) if point is not None]
        row["reach"][f"{level:g}"] = {
            "seeds": len(hits),
            "samples": statistics.mean(p["samples"] for p in hits) if hits else None,
            "tokens": statistics.mean(p["tokens"] for p in hits) if hits else None,
        }
    return row


def first_reach(run: dict[str, list[float]], accuracy_needed: float) -> dict[str, float] | None:
    """Samples and tokens at the run's first evaluation with at least `accuracy_needed`; None if it never does."""
    for index, accuracy in enumerate(run["accuracy"]):
        if accuracy >= accuracy_needed:
            return {"samples": run["samples"][index], "tokens": run["tokens"][index]}
    return None


def table(result: dict[str, Any]) -> str:
    """The comparison as a Markdown table: final accuracy, then per REACH level the samples (and tokens) to it."""
    teacher, seeds = result["teacher_accuracy"], len(result["seeds"])
    levels = list(next(iter(result["methods"].values()))["reach"])
    lines = [
        f"Teacher accuracy {teacher if teacher is None else f'{teacher:.3f}'}; student at start "
        f'{result["student_start_accuracy"]:.3f}; seeds {result["seeds"]}. "samples (tokens) to L×": samples trained '
        "on (tokens generated) until the first evaluation at L × the teacher's accuracy, mean over the seeds that "
        "reach it, with how many do.",
        "",
        "| method | final accuracy (mean, min–max) | "
        + " | ".join(f"samples (tokens) to {lv}×" for lv in levels)
        + " |",
        "|---|---|" + "---|" * len(levels),
    ]
    for name, row in result["methods"].items():
        cells = []
        for level in levels:
            reach = row["reach"][level]
            cells.append(
                f"{reach['samples']:,.0f} ({reach['tokens']:,.0f}), {reach['seeds']}/{seeds}"
                if reach["seeds"]
                else f"— (0/{seeds})"
            )
        accuracy = f"{row['accuracy_mean']:.3f} ({row['accuracy_min']:.3f}–{row['accuracy_max']:.3f})"
        lines.append(f"| {name} | {accuracy} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(curves: dict[str, list[dict[str, list[float]]]], teacher_accuracy: float | None, out: Path) -> None:
    """Accuracy against samples and against generated tokens: each method's mean over seeds, min–max shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, x in zip(axes, ("samples", "tokens")):
        for name, runs in curves.items():
            width = min(len(run["accuracy"]) for run in runs)
            xs = [statistics.mean(run[x][i] for run in runs) for i in range(width)]
            values = [[run["accuracy"][i] for run in runs] for i in range(width)]
            axis.plot(xs, [statistics.mean(v) for v in values], label=name)
            axis.fill_between(xs, [min(v) for v in values], [max(v) for v in values], alpha=0.2)
        if teacher_accuracy is not None:
            axis.axhline(teacher_accuracy, color="grey", linestyle="--", label="teacher")
        axis.set_xlabel("samples trained on" if x == "samples" else "tokens generated (student + teacher)")
        axis.set_ylabel("held-out accuracy")
        axis.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)


def parse_methods(specs: list[str]) -> dict[str, list[str]]:
    """`--method` values "NAME" (a built-in method) or "NAME: a.b=v c.d=w" (your own overrides)."""
    if not specs:
        return dict(METHODS)
    methods = {}
    for spec in specs:
        name, _, overrides = spec.partition(":")
        name = name.strip()
        if not overrides and name not in METHODS:
            raise ConfigError(f"--method {name!r} is not built in ({', '.join(METHODS)}); give it as 'NAME: a.b=v ...'")
        methods[name] = overrides.split() if overrides else METHODS[name]
    return methods
