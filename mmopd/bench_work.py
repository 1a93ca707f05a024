"""The work `mmopd bench opd` measures: the saved tiny Qwen2 pair, the step's FLOPs, the machine's matmul rate.

The student and teacher are random-init Qwen2 models on the real Qwen2 vocabulary, saved once per
shape and loaded by both sides. The FLOP estimate counts what one OPD step must compute at least
(each output-head matmul once, the decoder bodies at 2·params per token); the matmul rate is timed
on the step's own head-matmul shapes, so "fraction of the machine" compares like with like.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch


def _spec(hidden: int, layers: int, seed: int):
    from mmopd.config import ModelConfig

    heads = max(1, hidden // 32)
    return ModelConfig(
        family="qwen2",
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=max(1, heads // 2),
        intermediate_size=4 * hidden,
        seed=seed,
    )


def build_models(root: Path, student_hidden: int, student_layers: int, teacher_hidden: int, teacher_layers: int):
    """Directories of the saved student and teacher (built once, then reused) and the vocabulary size."""
    from transformers import AutoConfig

    student = root / f"qwen2-student-{student_hidden}x{student_layers}"
    teacher = root / f"qwen2-teacher-{teacher_hidden}x{teacher_layers}"
    missing = [(path, spec) for path, spec in ((student, _spec(student_hidden, student_layers, 0)),
                                               (teacher, _spec(teacher_hidden, teacher_layers, 1)))
               if not (path / "model.safetensors").exists()]  # fmt: skip
    if missing:
        from mmopd.models import build_tiny, qwen_tokenizer

        tokenizer = qwen_tokenizer()
        for path, spec in missing:
            build_tiny(spec, tokenizer).save(path)
    return student, teacher, AutoConfig.from_pretrained(student).vocab_size


def _body_params(hidden: int, layers: int) -> int:
    heads = max(1, hidden // 32)
    head_dim = hidden // heads
    kv = max(1, heads // 2) * head_dim
    attention = hidden * hidden * 2 + hidden * kv * 2
    return layers * (attention + 3 * hidden * 4 * hidden)


def step_flops(student_hidden, student_layers, teacher_hidden, teacher_layers, vocab, batch, new_tokens) -> dict:
    """FLOPs of one step: output heads (sampling: one head row per drawn token; loss: student head
    forward + gradients of hidden and weight, teacher head forward) and decoder bodies (2·params per
    token; the student's training pass ×3). Prompt tokens are not counted (they are short here)."""
    tokens = batch * new_tokens
    head_student = 2 * tokens * student_hidden * vocab
    head_teacher = 2 * tokens * teacher_hidden * vocab
    body = (
        2 * tokens * (_body_params(student_hidden, student_layers) * 4 + _body_params(teacher_hidden, teacher_layers))
    )
    heads = {student_hidden: 4 * head_student}  # sampling, forward, 2 backward
    heads[teacher_hidden] = heads.get(teacher_hidden, 0) + head_teacher
    return {"total": sum(heads.values()) + body, "head_by_hidden": heads, "body": body}


def matmul_rate(tokens: int, hiddens: list[int], vocab: int, threads: int, repeats: int = 5) -> dict[int, float]:
    """FLOP/s of (tokens × H) @ (H × V) for each H, fp32, in vocabulary chunks of 32,768 (median of repeats)."""
    torch.set_num_threads(threads)
    rates = {}
    for hidden in sorted(set(hiddens)):
        x = torch.randn(tokens, hidden)
        weight = torch.randn(vocab, hidden)
        out = torch.empty(tokens, min(vocab, 32768))
        times = []
        for _ in range(repeats + 1):
            began = time.perf_counter()
            for start in range(0, vocab, 32768):
                chunk = weight[start : start + 32768]
                torch.mm(x, chunk.T, out=out[:, : chunk.shape[0]])
            times.append(time.perf_counter() - began)
        rates[hidden] = 2 * tokens * hidden * vocab / statistics.median(times[1:])
    return rates
