"""The demo: warm up a tiny text teacher by SFT on the privileged descriptions, then distil it
on-policy into a tiny VLM student that sees only the images. Writes metrics, a plot, checkpoints
and `summary.json` into the run directory."""

from __future__ import annotations

import json
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

from mmopd.config import load_config
from mmopd.metrics import plot_metrics
from mmopd.sft import sft
from mmopd.trainer import train_on_runtime


def demo_config_path() -> Path:
    return Path(str(files("mmopd.configs") / "demo.yaml"))


def demo(overrides: list[str], run_dir: Path, resume: bool = False, config_path: Path | None = None) -> dict[str, Any]:
    """`config_path` (default: the shapes demo) picks the task and models, e.g. configs/demo_video.yaml."""
    began = time.perf_counter()
    config_path = config_path or demo_config_path()
    teacher_dir = run_dir / "teacher_sft"
    teacher_summary_path = teacher_dir / "summary.json"
    if resume and teacher_summary_path.exists():
        teacher_summary = json.loads(teacher_summary_path.read_text())
    else:
        config = load_config(config_path, [*overrides, "sft.target=teacher"])
        teacher_summary = sft(config, teacher_dir, resume=resume)
        write_summary(teacher_dir, teacher_summary)
    teacher_path = f"teacher.model.path={teacher_dir / 'final'}"
    config = load_config(config_path, [*overrides, teacher_path])
    summary = train_on_runtime(config, run_dir, resume=resume)
    plot_metrics(run_dir / "metrics.jsonl", run_dir / "plot.png")
    summary["teacher_accuracy"] = teacher_summary["accuracy_after"]
    summary["teacher_sft_seconds"] = teacher_summary["wall_seconds"]
    summary["opd_seconds"] = summary["wall_seconds"]
    summary["wall_seconds"] = teacher_summary["wall_seconds"] + summary["wall_seconds"]
    summary["session_seconds"] = time.perf_counter() - began
    write_summary(run_dir, summary)
    return summary


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    tmp = run_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(run_dir / "summary.json")
