"""Recipes: one command runs a config's warm-ups, then its training, and writes `summary.json`.

A recipe is an ordinary config (`configs/recipes/*.yaml`, or the demo's): `warmup` says what is fine-tuned
first (each separate tiny teacher on its own view; the student on the reference answers), and the training run
starts from those models. Each stage is a run directory of its own, so `--resume` skips finished stages.
"""

from __future__ import annotations

import dataclasses
import json
import time
from functools import partial
from importlib.resources import files
from pathlib import Path
from typing import Any

from mmopd.build import build_processors, build_task, build_teacher_model, evaluate_on_task
from mmopd.config import Config, TeacherConfig, from_dict, load_config
from mmopd.metrics import plot_metrics, read_metrics
from mmopd.sft import sft
from mmopd.trainer import train_on_runtime
from mmopd.views import student_messages, text_view_messages


def demo_config_path() -> Path:
    return Path(str(files("mmopd.configs") / "demo.yaml"))


def demo(overrides: list[str], run_dir: Path, resume: bool = False, config_path: Path | None = None) -> dict[str, Any]:
    """The demo is the recipe of `configs/demo.yaml` (or of `config_path`, e.g. configs/demo_video.yaml)."""
    return run_recipe(config_path or demo_config_path(), overrides, run_dir, resume)


def run_recipe(config_path: Path | None, overrides: list[str], run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Warm up the teachers and the student as `warmup` asks, then train; the merged summary of every stage."""
    began = time.perf_counter()
    warmed, stages = warm_up(load_config(config_path, overrides), run_dir, resume)
    config = load_config(config_path, [*overrides, *warmed])
    summary = train_on_runtime(config, run_dir, resume=resume)
    plot_metrics(run_dir / "metrics.jsonl", run_dir / "plot.png")
    summary = {**summary, **eval_lengths(run_dir / "metrics.jsonl"), **stage_summaries(stages, summary)}
    summary["session_seconds"] = time.perf_counter() - began
    write_summary(run_dir, summary)
    return summary


def warm_up(config: Config, run_dir: Path, resume: bool) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Run the warm-ups `config.warmup` asks for, each in `run_dir/<stage>_sft`; the overrides that point a
    training config at the warmed-up models, and each stage's summary."""
    stages: dict[str, dict[str, Any]] = {}
    warmed = []
    for name, teacher_config, key in teachers_to_warm_up(config):
        stages[f"{name}_sft"] = run_stage(
            run_dir / f"{name}_sft", resume, partial(warm_up_teacher, config, teacher_config)
        )
        warmed.append(f"{key}.model.path={run_dir / f'{name}_sft' / 'final'}")
    if config.warmup.student_steps:
        student_config = student_warmup_config(config)
        stages["student_sft"] = run_stage(
            run_dir / "student_sft", resume, lambda d, r: sft(student_config, d, resume=r)
        )
        warmed.append(f"student.path={run_dir / 'student_sft' / 'final'}")
    return warmed, stages


def teachers_to_warm_up(config: Config) -> list[tuple[str, Config, str]]:
    """(stage name, SFT config, override key) of every separate tiny teacher: `teacher`, or each of `teachers`."""
    if not config.warmup.teacher_sft:
        return []
    named = (
        {"teacher": ("teacher", config.teacher)}
        if not config.teachers
        else {
            f"teacher_{name}": (f"teachers.{name}", from_dict(TeacherConfig, section or {}, f"teachers.{name}"))
            for name, section in config.teachers.items()
        }
    )
    stages = []
    for stage, (key, teacher) in named.items():
        if teacher.kind != "model" or teacher.model.path:
            continue
        data = dataclasses.replace(config.data, task_args={**config.data.task_args, **teacher.sft_task_args})
        sft_config = in_process(
            config, teacher=teacher, data=data, sft=dataclasses.replace(config.sft, target="teacher")
        )
        stages.append((stage, sft_config, key))
    return stages


def warm_up_teacher(config: Config, teacher_config: Config, stage_dir: Path, resume: bool) -> dict[str, Any]:
    """One teacher's SFT; a specialist (its own task arguments) is also evaluated on every domain of the run's task."""
    summary = sft(teacher_config, stage_dir, resume=resume)
    if teacher_config.data != config.data:
        summary["eval_all_domains"] = evaluate_teacher(config, teacher_config.teacher, stage_dir / "final")
    return summary


def evaluate_teacher(config: Config, teacher: TeacherConfig, model_dir: Path) -> dict[str, float]:
    """A warmed-up teacher's held-out accuracy on the run's own task (`eval.group_by` splits it by domain)."""
    task = build_task(config.data)
    bundle = build_teacher_model(dataclasses.replace(teacher.model, path=str(model_dir)), None, config)
    messages_for = text_view_messages if teacher.view == "text" else student_messages
    processors = build_processors(config.data, teacher.processor_args)
    return evaluate_on_task(config, task, processors, bundle, messages_for)


def student_warmup_config(config: Config) -> Config:
    """The student's SFT on reference answers: `warmup.student_steps` steps, the rest of `sft`, in this process."""
    return in_process(config, sft=dataclasses.replace(config.sft, target="student", steps=config.warmup.student_steps))


def in_process(config: Config, **changes: Any) -> Config:
    """`config` for a warm-up SFT in this process: one model, one learner; routing and Ray belong to training."""
    teacher = dataclasses.replace(changes.pop("teacher", config.teacher), head_sharding="none")
    learner = dataclasses.replace(config.learner, world_size=1)
    return dataclasses.replace(config, teacher=teacher, teachers={}, runtime="local", learner=learner, **changes)


def run_stage(stage_dir: Path, resume: bool, run) -> dict[str, Any]:
    """A warm-up stage in its own run directory; on resume, a finished stage (its summary.json) is not rerun."""
    summary_path = stage_dir / "summary.json"
    if resume and summary_path.exists():
        return json.loads(summary_path.read_text())
    summary = run(stage_dir, resume)
    write_summary(stage_dir, summary)
    return summary


def eval_lengths(metrics_path: Path) -> dict[str, float]:
    """Mean greedy completion length (tokens) at the first and the last evaluation of a run."""
    evals = [record for record in read_metrics(metrics_path) if "eval_completion_tokens" in record]
    if not evals:
        return {}
    return {
        "completion_tokens_before": evals[0]["eval_completion_tokens"],
        "completion_tokens_after": evals[-1]["eval_completion_tokens"],
    }


def stage_summaries(stages: dict[str, dict[str, Any]], train_summary: dict[str, Any]) -> dict[str, Any]:
    """Each warm-up's accuracy and time (`teacher_accuracy`, `student_sft_accuracy`, ...), and the total time."""
    merged: dict[str, Any] = {"train_seconds": train_summary["wall_seconds"]}
    for stage, summary in stages.items():
        name = stage.removesuffix("_sft")
        merged[f"{name}_accuracy" if name != "student" else "student_sft_accuracy"] = summary["accuracy_after"]
        if "eval_all_domains" in summary:
            merged[f"{name}_eval_all_domains"] = summary["eval_all_domains"]
        merged[f"{stage}_seconds"] = summary["wall_seconds"]
    merged["wall_seconds"] = train_summary["wall_seconds"] + sum(s["wall_seconds"] for s in stages.values())
    return merged


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    tmp = run_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(run_dir / "summary.json")
