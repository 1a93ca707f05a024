"""`mmopd recipe`: warm-ups feed the training run, a resumed recipe skips finished stages, and every recipe in
configs/recipes/ trains for a few steps on its own tiny models."""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path

import pytest

from mmopd.build import build_parts, evaluate_on_task
from mmopd.cli import parse
from mmopd.config import load_config
from mmopd.evaluate import evaluate
from mmopd.metrics import read_metrics
from mmopd.recipe import run_recipe
from mmopd.views import student_messages

ROOT = Path(__file__).resolve().parents[1]
DEBUG = ROOT / "configs" / "debug.yaml"
RECIPES = sorted((ROOT / "configs" / "recipes").glob("*.yaml"))
SHORT = [
    "train.steps=2",
    "sft.steps=2",
    "eval.num_samples=8",
    "eval.batch_size=8",
    "train.eval_every=0",
    "train.checkpoint_every=2",
    "train.progress=false",
]


def test_warmed_up_models_start_the_training_run(tmp_path):
    summary = run_recipe(DEBUG, [*SHORT, "warmup.student_steps=3"], tmp_path)
    config = load_config(tmp_path / "config.yaml")
    assert config.student.path == str(tmp_path / "student_sft" / "final")
    assert config.teacher.model.path == str(tmp_path / "teacher_sft" / "final")
    student_sft = read_metrics(tmp_path / "student_sft" / "metrics.jsonl")
    assert (
        read_metrics(tmp_path / "metrics.jsonl")[0]["eval_completion_tokens"]
        == student_sft[-1]["eval_completion_tokens"]
    )
    assert summary["accuracy_before"] == summary["student_sft_accuracy"]
    for key in ("teacher_accuracy", "teacher_sft_seconds", "student_sft_seconds", "completion_tokens_after"):
        assert key in summary
    assert summary["wall_seconds"] == pytest.approx(
        summary["train_seconds"] + summary["teacher_sft_seconds"] + summary["student_sft_seconds"]
    )


def test_resumed_recipe_skips_finished_warmups(tmp_path):
    run_recipe(DEBUG, SHORT, tmp_path)
    stage = tmp_path / "teacher_sft" / "metrics.jsonl"
    before = stage.read_text()
    summary = run_recipe(DEBUG, [*SHORT, "train.steps=3"], tmp_path, resume=True)
    assert stage.read_text() == before and summary["steps"] == 3


def test_no_teacher_warmup_when_asked(tmp_path):
    run_recipe(DEBUG, [*SHORT, "warmup.teacher_sft=false"], tmp_path)
    assert not (tmp_path / "teacher_sft").exists()
    assert load_config(tmp_path / "config.yaml").teacher.model.path == ""


def test_grouped_accuracy_splits_the_overall_one(tmp_path):
    config = load_config(DEBUG, ["eval.num_samples=16", "eval.group_by=meta.question"])

    parts = build_parts(config, tmp_path, with_teacher=False)
    result = evaluate_on_task(config, parts.task, parts.processors, parts.student, student_messages)
    samples = [parts.task.eval_samples()[i] for i in range(16)]
    counts = {kind: sum(s.meta["question"] == kind for s in samples) for kind in ("colour", "shape")}
    assert set(result) >= {"accuracy/colour", "accuracy/shape"}
    weighted = sum(result[f"accuracy/{kind}"] * count for kind, count in counts.items()) / 16
    assert result["accuracy"] == pytest.approx(weighted)
    # A verifier that accepts only colour questions: their group is all right, the other all wrong.
    only_colour = evaluate(
        parts.student,
        samples,
        student_messages,
        lambda text, s: s.meta["question"] == "colour",
        parts.processors,
        group_by="meta.question",
    )
    assert only_colour["accuracy/colour"] == 1.0 and only_colour["accuracy/shape"] == 0.0


@pytest.mark.parametrize("path", RECIPES, ids=[path.stem for path in RECIPES])
def test_recipe_trains_a_few_steps(path, tmp_path):
    overrides = list(SHORT)
    if load_config(path).warmup.student_steps:
        overrides.append("warmup.student_steps=2")
    if path.stem == "blind_teacher":  # its teacher is blind on purpose; test_blind_check shows the run stopping
        overrides.append("teacher.processor_args.image.blank=false")
    summary = run_recipe(path, overrides, tmp_path)
    steps = [record for record in read_metrics(tmp_path / "metrics.jsonl") if record["step"] > 0]
    assert summary["steps"] == 2 and [r["step"] for r in steps] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in steps)
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 2


DOCS = (ROOT / "docs" / "recipes.md").read_text()


def docs_commands() -> list[list[str]]:
    """Every `mmopd ...` line of docs/recipes.md's shell blocks, as argv without the program name."""
    blocks = re.findall(r"^```bash\n(.*?)^```", DOCS, re.MULTILINE | re.DOTALL)
    return [shlex.split(line)[1:] for block in blocks for line in block.splitlines() if line.startswith("mmopd ")]


@pytest.mark.parametrize("argv", docs_commands(), ids=lambda argv: " ".join(argv)[:60])
def test_docs_command_parses_and_its_config_loads(argv):
    args = parse(argv)
    load_config(ROOT / args.config, args.overrides)


def test_docs_have_a_section_and_a_command_for_every_recipe():
    run = {args[1] for args in docs_commands() if args[0] == "recipe"}
    assert run == {f"configs/recipes/{path.name}" for path in RECIPES}
