"""`python tests/cross_probe.py RUN_DIR`: what a cross-tokenizer teacher tells a student, per answer word.

Loads a run's latest checkpoint (or --checkpoint) and its SFT teacher, renders held-out questions, and at the
completion's first position (a common byte boundary) measures, per reference answer: the student's and the
teacher's mass on shared ids and in the "other" bucket, the mass on tokens whose first byte is the answer's,
the exact chain-rule log-likelihoods of the answer (+ end of turn) on both sides, and, over sampled rollouts,
what the student wrote, how often the first chunk is 1:1 and how many byte-less tokens it sampled.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

from mmopd.align import byte_table, vocab_map
from mmopd.build import build_parts
from mmopd.checkpoint import latest_checkpoint
from mmopd.config import load_config
from mmopd.models import output_head
from mmopd.sample import Rollout
from mmopd.trainer import render_batch
from mmopd.views import collate, completion_hidden_states


def first_rows(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0)[:-1].tolist()], dtype=torch.long)  # (B,)


def log_softmax(hidden, weight, bias, temperature):
    logits = hidden.float() @ weight.float().T
    return torch.log_softmax((logits if bias is None else logits + bias.float()) / temperature, dim=-1)


@torch.no_grad()
def score(parts, rendered, rollouts, temperature):
    """Student and teacher log-distributions (B, V) at the first completion position, and exact sums of
    the completions' token log-probabilities on each side (B,)."""
    student, teacher = parts.student, parts.teacher
    prompt = collate([r.student for r in rendered], student)
    completions = [r.completion_ids for r in rollouts]
    hidden = completion_hidden_states(student, prompt, completions)  # (N_s, H)
    weight, bias = output_head(student)
    student_all = log_softmax(hidden, weight, bias, temperature)  # (N_s, V_s)
    ids = torch.tensor([t for c in completions for t in c])
    student_token = student_all.gather(1, ids[:, None]).squeeze(1)  # (N_s,)
    signal = teacher.score([r.teacher for r in rendered], completions, rollouts)
    if not all(signal.cross.kept):
        raise RuntimeError(f"dropped: {signal.cross.dropped}")
    teacher_all = log_softmax(signal.hidden, signal.head_weight, signal.head_bias, temperature)  # (N_t, V_t)
    teacher_token = teacher_all.gather(1, signal.cross.teacher_ids[:, None]).squeeze(1)  # (N_t,)
    student_lengths = [len(c) for c in completions]
    teacher_lengths = [len(teacher.teacher_ids(r)) for r in rollouts]
    student_sum = torch.stack([s.sum() for s in student_token.split(student_lengths)])  # (B,)
    teacher_sum = torch.stack([t.sum() for t in teacher_token.split(teacher_lengths)])  # (B,)
    return student_all[first_rows(student_lengths)], teacher_all[first_rows(teacher_lengths)], student_sum, teacher_sum


def mass_where(logprobs: torch.Tensor, table, keep) -> float:
    """Probability (at one row) on the ids whose bytes satisfy `keep`."""
    mask = torch.tensor([keep(p) for p in table.pieces] + [False] * (logprobs.shape[-1] - len(table.pieces)))
    return float(logprobs[mask].exp().sum())


def measure_answers(parts, rendered, stats, temperature) -> None:
    """First-position masses and the reference answers' exact likelihoods (+ end of turn), on both sides."""
    student_tok, teacher_tok = parts.student.tokenizer, parts.teacher.teacher_tokenizer
    student_table, teacher_table = byte_table(student_tok), byte_table(teacher_tok)
    shared = vocab_map(student_tok, teacher_tok)
    answers = []
    for r in rendered:
        ids = [*student_tok(r.student.sample.answer, add_special_tokens=False)["input_ids"], student_tok.eos_token_id]
        data, spans = student_table.spans(ids)
        answers.append(Rollout(r.student.sample, ids, [0.0] * len(ids), spans, data, "stop"))
    student_first, teacher_first, student_sum, teacher_sum = score(parts, rendered, answers, temperature)
    shared_students = set(shared.student_ids.tolist())
    for i, r in enumerate(rendered):
        answer = r.student.sample.answer
        first, row = answer.encode()[:1], stats[answer]
        row["questions"] += 1
        row["student_shared_mass"] += float(student_first[i, shared.student_ids].exp().sum())
        row["teacher_shared_mass"] += float(teacher_first[i, shared.teacher_ids].exp().sum())
        row["student_byteless_mass"] += mass_where(student_first[i], student_table, lambda p: not p)
        row["teacher_byteless_mass"] += mass_where(teacher_first[i], teacher_table, lambda p: not p)
        row["student_first_byte_mass"] += mass_where(student_first[i], student_table, lambda p, b=first: p[:1] == b)
        row["teacher_first_byte_mass"] += mass_where(teacher_first[i], teacher_table, lambda p, b=first: p[:1] == b)
        row["student_answer_logprob"] += float(student_sum[i])
        row["teacher_answer_logprob"] += float(teacher_sum[i])
        row["answer_first_token_shared"] += float(answers[i].completion_ids[0] in shared_students)


def measure_rollouts(parts, rendered, stats, written) -> None:
    """One sampled completion per question: what the student wrote, its first chunk's kind, byte-less tokens."""
    table = byte_table(parts.student.tokenizer)
    prompt = collate([r.student for r in rendered], parts.student)
    rollouts = parts.engine.generate(prompt, [r.student.sample for r in rendered])
    signal = parts.teacher.score([r.teacher for r in rendered], [x.completion_ids for x in rollouts], rollouts)
    kept = [r for r, keep in zip(rollouts, signal.cross.kept) if keep]
    alignment = signal.cross.alignment
    starts = first_rows([len(x.completion_ids) for x in kept]) if kept else []
    first_chunk = {id(r): bool(alignment.one_to_one[alignment.student_chunk[s]]) for r, s in zip(kept, starts)}
    for rollout in rollouts:
        row = stats[rollout.sample.answer]
        written[rollout.sample.answer][parts.student.tokenizer.decode(rollout.completion_ids)] += 1
        row["rollouts"] += 1
        row["dropped"] += float(id(rollout) not in first_chunk)
        row["first_chunk_one_to_one"] += float(first_chunk.get(id(rollout), False))
        stop = 1 if rollout.finish_reason == "stop" else 0
        row["byteless_sampled"] += sum(1 for t in rollout.completion_ids if table.lengths[t] == 0) - stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--checkpoint", type=Path, default=None, help="a checkpoint directory (default: the latest)")
    parser.add_argument("--samples", type=int, default=64, help="held-out questions")
    parser.add_argument("--rollouts", type=int, default=4, help="sampled completions per question")
    parser.add_argument("--json", action="store_true", help="one line of JSON")
    args = parser.parse_args()
    checkpoint = args.checkpoint or latest_checkpoint(args.run_dir / "checkpoints")
    config = load_config(args.run_dir / "config.yaml", [f"student.path={checkpoint}", "train.progress=false"])
    torch.manual_seed(0)
    parts = build_parts(config, Path(tempfile.mkdtemp()), with_teacher=True)
    rendered, _ = render_batch(parts, list(parts.task.eval_samples())[: args.samples], "raise")
    stats, written = defaultdict(lambda: defaultdict(float)), defaultdict(lambda: defaultdict(int))
    measure_answers(parts, rendered, stats, config.rollout.temperature)
    for _ in range(args.rollouts):
        measure_rollouts(parts, rendered, stats, written)
    report = {}
    for answer, row in sorted(stats.items()):
        questions, rollouts = row.pop("questions"), row.pop("rollouts")
        per_rollout = ("dropped", "first_chunk_one_to_one", "byteless_sampled")
        report[answer] = {k: round(v / (rollouts if k in per_rollout else questions), 4) for k, v in row.items()}
        report[answer]["questions"] = int(questions)
        report[answer]["top_written"] = sorted(written[answer].items(), key=lambda kv: -kv[1])[:4]
    print(json.dumps({"checkpoint": str(checkpoint), "answers": report}, indent=None if args.json else 1))


if __name__ == "__main__":
    main()
