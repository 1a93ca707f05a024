"""The non-finite guard on real NaNs: a teacher checkpoint whose embedding of one token is NaN makes
the loss NaN exactly on the steps that draw the sample containing that token. Those updates are
skipped (weights and AdamW state untouched) with a reason and a counter, the run goes on and resumes
exactly; a NaN on every step stops the run with a clear message."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from bad_corpus import POISON, write_poisoned_teacher

from mmopd.build import build_task
from mmopd.cli import main
from mmopd.config import ModelConfig, load_config
from mmopd.guard import NonFiniteError
from mmopd.metrics import read_metrics
from mmopd.models import build_tiny
from mmopd.trainer import batch_of, optimizer_step, train

ROOT = Path(__file__).resolve().parents[1]
QUESTION = [{"role": "user", "content": "What colour is the shape?"}]


def write_data(root: Path, privileged: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = [
        {"id": f"s{i}", "messages": QUESTION, "privileged": text, "answer": "red"} for i, text in enumerate(privileged)
    ]
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def poisoned_config(root: Path, privileged: list[str], *overrides: str):
    """A text-only run whose teacher (a saved tiny Qwen2) has a NaN embedding row for `POISON`."""
    data = write_data(root / "data", privileged)
    overrides = (
        "student.family=qwen2",
        "data.task=jsonl",
        f"data.task_args={{train_path: {data}}}",
        "train.batch_size=2",
        "train.micro_batch_size=2",
        "train.eval_every=0",
        "train.checkpoint_every=100",
        *overrides,
    )
    write_poisoned_teacher(load_config(ROOT / "configs" / "debug.yaml", list(overrides)), root / "teacher")
    return load_config(ROOT / "configs" / "debug.yaml", [*overrides, f"teacher.model.path={root / 'teacher'}"])


def test_nan_steps_are_skipped_counted_and_resume_exactly(tmp_path):
    privileged = ["A red square.", f"A red {POISON} circle.", "A blue square.", "A green circle."]
    config = poisoned_config(tmp_path, privileged, "train.steps=6")
    summary = train(config, tmp_path / "straight")
    records = read_metrics(tmp_path / "straight" / "metrics.jsonl")[1:]

    samples = build_task(config.data).train_samples()
    poisoned = [step for step in range(1, 7) if any(s.id == "s1" for s in batch_of(samples, step, 2, 0))]
    assert [r["step"] for r in records if r.get("skipped_update")] == poisoned and len(poisoned) == 3
    for record in records:
        assert ("nonfinite_reason" in record) == (record["step"] in poisoned)
        assert math.isfinite(record["loss"]) == (record["step"] not in poisoned)
    assert records[-1]["skipped_updates"] == summary["skipped_updates"] == 3

    train(config, tmp_path / "resumed", stop_after=3)
    train(config, tmp_path / "resumed", resume=True)
    resumed = read_metrics(tmp_path / "resumed" / "metrics.jsonl")[1:]
    for a, b in zip(records, resumed, strict=True):
        for key in ("loss", "grad_norm", "skipped_updates", "nonfinite_reason"):
            assert str(a.get(key)) == str(b.get(key)), (a["step"], key)  # str: nan == nan


def test_a_skipped_update_leaves_weights_and_optimizer_untouched(tokenizer):
    model = build_tiny(
        ModelConfig(family="qwen2", hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1), tokenizer
    )
    model = model.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    config = load_config(ROOT / "configs" / "debug.yaml").train
    ids = torch.tensor([[5, 6, 7, 8]])  # (1, 4)

    def accumulate(scale: float):
        loss = model(input_ids=ids, labels=ids).loss * scale
        loss.backward()
        return {"loss": float(loss.detach())}

    optimizer_step(model, optimizer, lambda: accumulate(1.0), 1e-2, config)  # AdamW now has moments
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    moments = {k: v.clone() for k, v in optimizer.state[next(model.parameters())].items()}
    record = optimizer_step(model, optimizer, lambda: accumulate(float("nan")), 1e-2, config)
    assert record["skipped_update"] == 1 and record["nonfinite_reason"] == "loss is nan"
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    for key, value in optimizer.state[next(model.parameters())].items():
        assert torch.equal(value, moments[key]), key
    assert all(p.grad is None for p in model.parameters())  # no NaN gradient left for the next step


def test_nan_on_every_step_stops_the_run_with_a_clear_message(tmp_path, capsys):
    config = poisoned_config(tmp_path, [f"A red {POISON} square."] * 2, "train.steps=10", "train.max_nonfinite_steps=3")
    with pytest.raises(NonFiniteError, match="stopped at step 3: 3 consecutive steps .* loss is nan"):
        train(config, tmp_path / "run")
    assert [r.get("skipped_updates") for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [None, 1, 2, 3]
    argv = ["train", str(tmp_path / "run" / "config.yaml"), "--run-dir", str(tmp_path / "cli")]
    assert main(argv) == 3
    assert "3 consecutive steps had a non-finite loss" in capsys.readouterr().err
