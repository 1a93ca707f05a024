"""The loop end to end on tiny models: a short run, exact resume, accumulation, bad samples, variants."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmopd.build import build_parts
from mmopd.checkpoint import list_checkpoints
from mmopd.cli import main
from mmopd.config import load_config
from mmopd.metrics import read_metrics
from mmopd.sample import MediaError
from mmopd.trainer import render_batch, student_loss, train

ROOT = Path(__file__).resolve().parents[1]
DEBUG = ROOT / "configs" / "debug.yaml"


def debug_config(*overrides: str):
    return load_config(DEBUG, ["eval.num_samples=8", *overrides])


def test_two_step_run_writes_metrics_and_loadable_checkpoints(tmp_path):
    run = tmp_path / "run"
    summary = train(debug_config("train.steps=2", "train.checkpoint_every=1"), run)
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2]
    for record in records[1:]:
        for key in ("loss", "kl", "lr", "tokens_per_second", "grad_norm"):
            assert math.isfinite(record[key])
        assert record["kl"] >= 0
    assert "accuracy" in records[0] and "accuracy" in records[-1]
    assert summary["steps"] == 2 and (run / "config.yaml").exists()
    assert load_config(run / "config.yaml") == debug_config("train.steps=2", "train.checkpoint_every=1")
    checkpoint = list_checkpoints(run / "checkpoints")[-1]
    model = AutoModelForImageTextToText.from_pretrained(checkpoint)
    processor = AutoProcessor.from_pretrained(checkpoint)
    assert model.config.text_config.vocab_size == len(processor.tokenizer)
    assert not list((run / "checkpoints").glob(".tmp*"))


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    config = debug_config("train.steps=6", "train.checkpoint_every=3", "train.eval_every=3")
    train(config, tmp_path / "straight")
    interrupted = tmp_path / "interrupted"
    train(config, interrupted, stop_after=4)
    # A crash after step 4 was logged but before its checkpoint landed: resume from step 3.
    for checkpoint in list_checkpoints(interrupted / "checkpoints"):
        if checkpoint.name.endswith("4"):
            for file in checkpoint.iterdir():
                file.unlink()
            checkpoint.rmdir()
    train(config, interrupted, resume=True)
    straight = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    resumed = read_metrics(interrupted / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [r["step"] for r in straight] == list(range(7))
    for a, b in zip(straight, resumed):
        for key in ("loss", "kl", "lr", "accuracy", "grad_norm"):
            assert a.get(key) == b.get(key), (a["step"], key)


def test_gradient_accumulation_equals_the_full_batch(tmp_path):
    config = debug_config("train.batch_size=6", "train.micro_batch_size=6")
    parts = build_parts(config, tmp_path)
    samples = [parts.task.train_samples()[i] for i in range(6)]
    rendered, _ = render_batch(parts, samples, "raise")
    from mmopd.views import collate

    torch.manual_seed(0)
    prompt = collate([r.student for r in rendered], parts.student)
    rollouts = parts.engine.generate(prompt, samples)
    total = sum(len(r.completion_ids) for r in rollouts)

    def gradients(groups):
        parts.student.model.zero_grad()
        loss_sum = 0.0
        for group in groups:
            group_prompt = collate([rendered[i].student for i in group], parts.student)
            group_rollouts = [rollouts[i] for i in group]
            signal = parts.teacher.score(
                [rendered[i].teacher for i in group], [r.completion_ids for r in group_rollouts]
            )
            loss, _ = student_loss(parts.student, group_prompt, group_rollouts, signal, total, config)
            loss.backward()
            loss_sum += float(loss.detach())
        return loss_sum, [p.grad.clone() for p in parts.student.model.parameters() if p.grad is not None]

    whole_loss, whole = gradients([range(6)])
    split_loss, split = gradients([range(0, 2), range(2, 5), range(5, 6)])
    assert split_loss == pytest.approx(whole_loss, rel=1e-5)
    for a, b in zip(whole, split):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize(
    "overrides",
    [
        ["loss.kind=policy_gradient", "teacher.signal=sampled"],
        ["loss.kind=policy_gradient"],
        ["loss.divergence=jsd", "loss.beta=0.3"],
        ["teacher.kind=self", "teacher.self_weights=frozen"],
        ["teacher.kind=self", "loss.divergence=forward_kl"],
        ["student.family=qwen2_5_vl", "teacher.model.family=qwen3"],
        ["train.autocast=bfloat16"],
    ],
)
def test_variants_train(tmp_path, overrides):
    summary = train(debug_config("train.steps=2", "train.eval_every=0", *overrides), tmp_path / "run")
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert summary["steps"] == 2 and all(math.isfinite(r["loss"]) for r in records[1:])


def _jsonl_dataset(root: Path) -> Path:
    Image.new("RGB", (56, 56), (255, 0, 0)).save(root / "good.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    question = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    rows = [
        {"id": "good-1", "messages": question, "images": ["good.png"], "privileged": "A red square.", "answer": "red"},
        {"id": "missing-1", "messages": question, "images": ["nowhere.png"], "privileged": "x", "answer": "red"},
        {"id": "corrupt-1", "messages": question, "images": ["corrupt.png"], "privileged": "x", "answer": "red"},
        {"id": "good-2", "messages": question, "images": ["good.png"], "privileged": "A red square.", "answer": "red"},
    ]
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_bad_samples_are_skipped_and_reported(tmp_path):
    data = _jsonl_dataset(tmp_path)
    overrides = ["data.task=jsonl", f"data.task_args={{train_path: {data}, eval_path: {data}}}", "train.batch_size=4"]
    overrides += ["train.micro_batch_size=4", "train.steps=2", "train.eval_every=0", "tokenizer.vocab_size=300"]
    summary = train(debug_config(*overrides), tmp_path / "run")
    assert summary["skipped_samples"] == 4  # two bad samples in each of the two steps
    reasons = (tmp_path / "run" / "skipped.txt").read_text()
    assert "missing-1" in reasons and "nowhere.png" in reasons
    assert "corrupt-1" in reasons and "corrupt.png" in reasons
    with pytest.raises(MediaError, match="missing-1|corrupt-1"):
        train(debug_config(*overrides, "data.on_error=raise"), tmp_path / "strict")


def test_demo_command_writes_the_run_directory(tmp_path, capsys):
    run = tmp_path / "demo"
    overrides = ["sft.steps=2", "train.steps=2", "eval.num_samples=8", "train.progress=false"]
    assert main(["demo", "--run-dir", str(run), *overrides]) == 0
    summary = json.loads((run / "summary.json").read_text())
    for key in ("accuracy_before", "accuracy_after", "wall_seconds", "teacher_accuracy"):
        assert key in summary
    assert (run / "plot.png").stat().st_size > 0 and (run / "teacher_sft" / "final" / "config.json").exists()
    assert main(["demo", "--run-dir", str(run), *overrides]) == 2  # an existing run needs --resume
    assert main(["demo", "--run-dir", str(run), "--resume", *overrides]) == 0


def test_train_help_lists_config_docstrings(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "train.micro_batch_size" in out and "gradient accumulation" in out
    assert "teacher.model.path" in out


def test_over_long_prompt_is_skipped_with_its_name(tmp_path):
    summary = train(debug_config("train.steps=1", "data.max_prompt_tokens=5"), tmp_path / "run")
    assert summary["skipped_samples"] == 8
    assert "exceeds data.max_prompt_tokens=5" in (tmp_path / "run" / "skipped.txt").read_text()


def test_eval_command_reports_accuracy_of_a_checkpoint(tmp_path, capsys):
    train(debug_config("train.steps=1"), tmp_path / "run")
    capsys.readouterr()
    assert main(["eval", str(DEBUG), "eval.num_samples=4", "--model", str(tmp_path / "run" / "final")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0.0 <= result["accuracy"] <= 1.0 and result["eval_skipped"] == 0
