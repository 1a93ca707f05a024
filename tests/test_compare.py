"""`mmopd compare`: curves are read from the runs' metrics, "reach" is the first evaluation at the threshold, and
a small comparison trains every (method, seed) from one shared warm-up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmopd.cli import main
from mmopd.compare import METHODS, REACH, curve, first_reach, method_row, parse_methods
from mmopd.config import ConfigError, load_config
from mmopd.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
DEBUG = ROOT / "configs" / "debug.yaml"


def test_curve_counts_samples_and_generated_tokens():
    records = [
        {"step": 0, "accuracy": 0.1},
        {"step": 1, "skipped": 1, "completion_tokens": 3.0},
        {"step": 2, "skipped": 0, "student_generated_tokens": 10, "teacher_generated_tokens": 5, "accuracy": 0.5},
    ]
    points = curve(records, batch_size=4)
    assert points == {"step": [0, 2], "samples": [0, 7], "tokens": [0, 3 * 3 + 15], "accuracy": [0.1, 0.5]}


def test_reach_is_the_first_evaluation_at_the_threshold():
    run = {"samples": [0, 10, 20, 30], "tokens": [0, 1, 2, 3], "accuracy": [0.0, 0.5, 0.95, 0.8]}
    assert first_reach(run, 0.9) == {"samples": 20, "tokens": 2}
    assert first_reach(run, 0.5) == {"samples": 10, "tokens": 1}
    assert first_reach({**run, "accuracy": [0.0] * 4}, 0.9) is None
    row = method_row([run, {**run, "accuracy": [0.0, 0.0, 0.0, 0.2]}], teacher_accuracy=1.0)
    assert set(row["reach"]) == {f"{level:g}" for level in REACH}
    assert row["reach"]["0.9"] == {"seeds": 1, "samples": 20, "tokens": 2}
    assert row["reach"]["0.5"] == {"seeds": 1, "samples": 10, "tokens": 1}
    assert row["accuracy_mean"] == pytest.approx(0.5) and (row["accuracy_min"], row["accuracy_max"]) == (0.2, 0.8)


def test_methods_parse_and_load():
    assert parse_methods([]) == METHODS
    assert parse_methods(["opd", "mine: loss.divergence=jsd loss.beta=0.3"]) == {
        "opd": METHODS["opd"],
        "mine": ["loss.divergence=jsd", "loss.beta=0.3"],
    }
    with pytest.raises(ConfigError, match="not built in"):
        parse_methods(["nonesuch"])
    for overrides in METHODS.values():  # every built-in method is a valid config over the compare config
        load_config(ROOT / "configs" / "compare.yaml", overrides)


def test_compare_trains_every_method_and_seed_from_one_warmup(tmp_path, capsys):
    run = tmp_path / "cmp"
    overrides = ["train.steps=2", "train.eval_every=1", "sft.steps=2", "eval.num_samples=8", "train.progress=false"]
    args = ["compare", str(DEBUG), "--seeds", "0,1", "--method", "opd", "--method", "fkl: loss.divergence=forward_kl"]
    assert main([*args, "--run-dir", str(run), *overrides]) == 0
    assert "| opd |" in capsys.readouterr().out
    result = json.loads((run / "compare.json").read_text())
    assert set(result["methods"]) == {"opd", "fkl"} and (run / "compare.png").stat().st_size > 0
    teacher = str(run / "teacher_sft" / "final")
    losses = {}
    for method in ("opd", "fkl"):
        for seed in (0, 1):
            seed_dir = run / method / f"seed_{seed}"
            config = load_config(seed_dir / "config.yaml")
            assert config.teacher.model.path == teacher and config.train.seed == seed
            records = read_metrics(seed_dir / "metrics.jsonl")
            assert result["curves"][method][seed]["accuracy"] == [r["accuracy"] for r in records if "accuracy" in r]
            losses[method, seed] = records[1]["loss"]
    assert losses["opd", 0] != losses["fkl", 0] and losses["opd", 0] != losses["opd", 1]
    # Resuming keeps finished runs.
    before = (run / "opd" / "seed_0" / "metrics.jsonl").read_text()
    assert main([*args, "--run-dir", str(run), "--resume", *overrides]) == 0
    assert (run / "opd" / "seed_0" / "metrics.jsonl").read_text() == before
