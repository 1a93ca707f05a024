"""`mmopd bench opd`: each side runs the same steps on the same saved models; docs sections are replaced in place."""

from __future__ import annotations

import pytest

from mmopd.bench import write_section
from mmopd.bench_work import step_flops
from mmopd.config import ModelConfig
from mmopd.models import build_tiny

TINY = dict(num_heads=2, num_kv_heads=1, intermediate_size=64)


@pytest.fixture(scope="module")
def saved_pair(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("bench")
    for name, hidden, seed in (("student", 32, 0), ("teacher", 48, 1)):
        build_tiny(ModelConfig(family="qwen2", hidden_size=hidden, num_layers=1, seed=seed, **TINY), tokenizer).save(
            root / name
        )
    return root


def _spec(root, steps):
    prompts = ["What colour is the circle?", "Name a shape.", "Is the square red?"]
    return dict(
        student=str(root / "student"),
        teacher=str(root / "teacher"),
        batch=2,
        new_tokens=4,
        lr=1e-4,
        steps=steps,
        seed=0,
        threads=1,
        prompts=prompts,
    )


def test_mmopd_side_runs_opd_steps_and_reports_memory(saved_pair):
    from mmopd.bench_worker import run_mmopd

    result = run_mmopd(_spec(saved_pair, steps=2))
    assert len(result["seconds"]) == 2 and all(s > 0 for s in result["seconds"])
    assert all(1 <= t <= 2 * 4 for t in result["tokens"])
    assert result["peak_rss_mb"] >= result["setup_rss_mb"] > 0
    phases = [row[0] for row in result["phases"]]
    for phase in ("import torch", "teacher loaded", "step 1: generation", "step 1: clip and AdamW step"):
        assert phase in phases
    peaks = [row[2] for row in result["phases"]]
    assert peaks == sorted(peaks) and all(rss <= peak for _, rss, peak in result["phases"])
    tensors = result["tensors_mb"]
    # AdamW keeps two moments per trained weight; every student weight is trained.
    assert tensors["adamw_moments"] == pytest.approx(2 * tensors["student_weights"])
    assert (
        tensors["student_gradients"] == tensors["student_weights"]
        and tensors["teacher_head"] < tensors["teacher_weights"]
    )
    assert tensors["student_head"] == tensors["student_input_embedding"] < tensors["student_weights"]  # untied


def test_trl_side_runs_the_same_steps(saved_pair):
    pytest.importorskip("trl")
    from mmopd.bench_worker import run_trl

    result = run_trl(_spec(saved_pair, steps=2))
    assert len(result["seconds"]) == 2 and len(result["tokens"]) == 2
    assert all(1 <= t <= 2 * 4 for t in result["tokens"])
    phases = [row[0] for row in result["phases"]]
    assert "step 1: generation, teacher, loss and backward" in phases and "step 1: clip and AdamW step" in phases


def test_step_flops_count_each_head_matmul_once():
    flops = step_flops(64, 2, 128, 4, vocab=1000, batch=8, new_tokens=32)
    tokens = 8 * 32
    assert flops["head_by_hidden"] == {64: 4 * 2 * tokens * 64 * 1000, 128: 2 * tokens * 128 * 1000}
    assert flops["total"] == sum(flops["head_by_hidden"].values()) + flops["body"]


def test_docs_section_is_replaced_and_prose_kept(tmp_path):
    path = tmp_path / "benchmarks.md"
    path.write_text("# Benchmarks\n\nProse.\n")
    write_section(path, "opd-x", "first")
    write_section(path, "other", "second")
    write_section(path, "opd-x", "third")
    text = path.read_text()
    assert "Prose." in text and "third" in text and "second" in text and "first" not in text
    assert text.count("<!-- bench:opd-x -->") == 1
