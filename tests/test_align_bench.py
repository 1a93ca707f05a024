"""`mmopd bench align` does the same work as TRL GOLD's alignment and merging, and reports figures."""

from __future__ import annotations

import json

import torch

from mmopd.align_bench import PAIRS, TEXTS, make_batches, mmopd_prepare, trl_prepare
from mmopd.cli import main
from mmopd.tokenizers import load_tokenizer


def test_mmopd_and_trl_produce_the_same_chunk_distributions():
    for student_name, teacher_name in PAIRS[:2]:
        student, teacher = load_tokenizer(student_name), load_tokenizer(teacher_name)
        for batch in make_batches(student, teacher, TEXTS, batch_size=1, width=97):
            ours = mmopd_prepare(student, teacher, batch)
            theirs = trl_prepare(student, teacher, batch)
            # TRL skips the end-of-turn chunk that mmopd aligns explicitly; all other chunks agree.
            assert torch.allclose(ours[2][:-1].exp(), theirs[0], rtol=1e-5, atol=1e-12)
            assert torch.allclose(ours[5][:-1].exp(), theirs[1], rtol=1e-5, atol=1e-12)


def test_bench_prints_the_three_figures(capsys):
    assert main(["bench", "align", "--width", "64", "--seconds", "0.01", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"mmopd_tokens_per_s", "trl_tokens_per_s", "speedup"}
    assert result["mmopd_tokens_per_s"] > 0 and result["trl_tokens_per_s"] > 0
    assert abs(result["speedup"] - result["mmopd_tokens_per_s"] / result["trl_tokens_per_s"]) < 1e-9
