"""Supervised fine-tuning on reference answers: a teacher's warm-up on its own view, or a student
cold start. Same loop, checkpoints and resume as OPD; only the step differs (cross-entropy on the
tokenized answer followed by the end-of-turn token)."""

from __future__ import annotations

import hashlib
from functools import partial
from pathlib import Path
from typing import Any

import torch

from mmopd.build import (
    build_network_policy,
    build_processors,
    build_student_and_tokenizer,
    build_task,
    build_teacher_model,
    build_teacher_tokenizer,
    evaluate_on_task,
    report_skip,
)
from mmopd.completions import answer_ids
from mmopd.config import Config
from mmopd.losses import cross_entropy
from mmopd.models import ModelBundle, output_head
from mmopd.sample import Sample
from mmopd.trainer import BAD_SAMPLE, run_loop
from mmopd.views import (
    SampleError,
    collate,
    completion_hidden_states,
    opsd_messages,
    prepare,
    student_messages,
    text_view_messages,
)


def sft(config: Config, run_dir: Path, resume: bool = False, stop_after: int | None = None) -> dict[str, Any]:
    """Fine-tune `config.sft.target` on answers; the loop saves the result as a model directory in `run_dir/final`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    build_network_policy(config)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    task, processors = build_task(config.data), build_processors(config.data)
    if config.sft.target == "teacher":
        tokenizer = None if config.teacher.model.path else build_teacher_tokenizer(config, task, None)
        bundle = build_teacher_model(config.teacher.model, tokenizer, config, trainable=True)
        messages_for = text_view_messages if config.teacher.view == "text" else student_messages
        processors = build_processors(config.data, config.teacher.processor_args)
        view_for = partial(_view_with_answer, messages_for)
    else:
        bundle, _ = build_student_and_tokenizer(config, task)
        messages_for = student_messages
        view_for = partial(
            warmup_view, fraction=config.sft.context_fraction, template=config.teacher.privileged_template
        )

    def step_fn(step: int, samples: list[Sample]) -> dict[str, Any]:
        metrics, reasons = sft_step(bundle, samples, view_for, processors, config)
        for reason in reasons:
            report_skip(run_dir / "skipped.txt", reason)
        return metrics

    def eval_fn() -> dict[str, float]:
        return evaluate_on_task(config, task, processors, bundle, messages_for)

    summary = run_loop(
        config,
        run_dir,
        resume,
        stop_after,
        bundle,
        step_fn,
        eval_fn,
        task.train_samples(),
        config.sft.lr,
        config.sft.warmup_steps,
        steps=config.sft.steps,
        batch_size=config.sft.batch_size,
    )
    return summary


def warmup_view(sample: Sample, fraction: float, template: str) -> tuple[list[dict], str | None]:
    """A student warm-up sample's messages and target. A fixed `fraction` of samples (by id) read the OPSD
    teacher's view, exactly as the self-teacher will, and answer with `context_answer` when the sample has
    one; the rest read the student's own view and answer with `answer`."""
    if has_context(sample.id, fraction):
        return opsd_messages(sample, template), sample.context_answer or sample.answer
    return student_messages(sample), sample.answer


def has_context(sample_id: str, fraction: float) -> bool:
    """Whether a sample is in the context `fraction`: a hash of its id, the same in every run and process."""
    draw = int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:8], "big") / 2**64  # uniform in [0, 1)
    return draw < fraction


def _view_with_answer(messages_for, sample: Sample) -> tuple[list[dict], str | None]:
    return messages_for(sample), sample.answer


def sft_step(bundle: ModelBundle, samples, view_for, processors, config: Config) -> tuple[dict, list[str]]:
    """One SFT step; `view_for(sample)` gives the messages the model reads and the answer it learns."""
    prepared, answers, skipped = [], [], []
    for sample in samples:
        try:
            messages, answer = view_for(sample)
            if answer is None:
                raise SampleError(f"sample {sample.id!r} has no answer to fine-tune on")
            prepared.append(prepare(sample, messages, bundle, processors))
            answers.append(answer_ids(bundle, answer))
        except BAD_SAMPLE as error:  # as in OPD; a wrong view function raises instead of training on nothing
            if config.data.on_error == "raise":
                raise
            skipped.append(str(error))
    if not prepared:  # every sample of the step was bad: nothing to learn from, no update
        return {"loss": 0.0, "skipped": len(skipped)}, skipped
    prompt = collate(prepared, bundle)
    hidden = completion_hidden_states(bundle, prompt, answers)  # (N, H)
    targets = torch.tensor([t for a in answers for t in a], dtype=torch.long, device=hidden.device)  # (N,)
    weights = torch.full((len(targets),), 1.0 / len(targets), device=hidden.device)  # (N,)
    weight, bias = output_head(bundle)
    loss = cross_entropy(hidden, weight, bias, targets, weights, config.loss.chunk_size)
    loss.backward()
    return {"loss": float(loss.detach()), "skipped": len(skipped)}, skipped
