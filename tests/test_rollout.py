"""Rollouts carry the sampled ids exactly, their behaviour logprobs, finish reasons and byte spans."""

from __future__ import annotations

import torch

from mmopd.losses import sampled_logprobs
from mmopd.models import final_hidden_states, output_head
from mmopd.rollout import HFEngine
from mmopd.views import collate, completion_hidden, prepare, student_messages, with_completions


def _prompt(task, student, processors, count=8):
    samples = [task.train_samples()[i] for i in range(count)]
    return samples, collate([prepare(s, student_messages(s), student, processors) for s in samples], student)


def test_rollout_contract(task, student, processors):
    torch.manual_seed(0)
    samples, prompt = _prompt(task, student, processors)
    rollouts = HFEngine(student, max_new_tokens=6).generate(prompt, samples)
    stops = set(student.stop_ids())
    for rollout in rollouts:
        ids = rollout.completion_ids
        assert 1 <= len(ids) <= 6 and len(rollout.behaviour_logprobs) == len(ids) == len(rollout.byte_spans)
        if rollout.finish_reason == "stop":
            assert ids[-1] in stops and not stops & set(ids[:-1])
        else:
            assert len(ids) == 6 and not stops & set(ids)
        decoded = student.tokenizer.decode(ids, skip_special_tokens=True)
        assert rollout.completion_bytes.decode("utf-8", errors="replace") == decoded
        assert b"".join(rollout.completion_bytes[a:b] for a, b in rollout.byte_spans) == rollout.completion_bytes


def test_behaviour_logprobs_match_the_learner_forward(task, student, processors):
    """The sampler's logprobs equal those the loss recomputes from hidden states at the same weights."""
    torch.manual_seed(1)
    samples, prompt = _prompt(task, student, processors)
    rollouts = HFEngine(student, max_new_tokens=5, temperature=0.7).generate(prompt, samples)
    completions = [r.completion_ids for r in rollouts]
    with torch.no_grad():
        inputs = with_completions(prompt, completions, student.tokenizer.pad_token_id)
        hidden = completion_hidden(
            final_hidden_states(student.model, inputs), prompt["input_ids"].shape[1], completions
        )
        weight, bias = output_head(student)
        ids = torch.tensor([t for c in completions for t in c])
        recomputed = sampled_logprobs(hidden, weight, bias, ids, temperature=0.7)
    behaviour = torch.tensor([lp for r in rollouts for lp in r.behaviour_logprobs])
    torch.testing.assert_close(behaviour, recomputed, atol=2e-4, rtol=0)


def test_media_placeholders_are_never_sampled(task, student, processors):
    media = student.media_token_ids()
    with torch.no_grad():
        # Make the media tokens overwhelmingly likely; suppression must still keep them out.
        student.model.get_output_embeddings().weight[media] = 50.0
    torch.manual_seed(2)
    samples, prompt = _prompt(task, student, processors)
    rollouts = HFEngine(student, max_new_tokens=4).generate(prompt, samples)
    assert not set(media) & {t for r in rollouts for t in r.completion_ids}
    assert all(lp > float("-inf") for r in rollouts for lp in r.behaviour_logprobs)


def test_greedy_is_deterministic(task, student, processors):
    samples, prompt = _prompt(task, student, processors, count=4)
    engine = HFEngine(student, max_new_tokens=4)
    first = [r.completion_ids for r in engine.generate(prompt, samples, greedy=True)]
    torch.manual_seed(123)
    second = [r.completion_ids for r in engine.generate(prompt, samples, greedy=True)]
    assert first == second


def test_head_padding_rows_are_never_sampled_and_dropped_from_the_loss(task, tokenizer, processors):
    """Real checkpoints pad the head beyond the tokenizer; those rows are not tokens."""
    from mmopd.config import ModelConfig
    from mmopd.models import build_tiny

    student = build_tiny(
        ModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, vision_depth=1), tokenizer
    )
    student.model.resize_token_embeddings(len(tokenizer) + 16)
    with torch.no_grad():
        student.model.get_output_embeddings().weight[len(tokenizer) :] = 50.0
    torch.manual_seed(3)
    samples, prompt = _prompt(task, student, processors)
    rollouts = HFEngine(student, max_new_tokens=4).generate(prompt, samples)
    assert max(t for r in rollouts for t in r.completion_ids) < len(tokenizer)
    weight, bias = output_head(student)
    assert weight.shape[0] == bias.shape[0] == len(tokenizer)


def test_greedy_ids_equal_transformers_generate(task, student, processors):
    """The engine's own sampler sits in generate's processor chain; greedy must still be generate's greedy."""
    samples, prompt = _prompt(task, student, processors, count=4)
    ours = [r.completion_ids for r in HFEngine(student, max_new_tokens=6).generate(prompt, samples, greedy=True)]
    with torch.no_grad():
        sequences = student.model.generate(
            **prompt,
            do_sample=False,
            max_new_tokens=6,
            suppress_tokens=student.suppressed_ids(),
            eos_token_id=student.stop_ids(),
            pad_token_id=student.tokenizer.pad_token_id,
        )
    for row, ids in enumerate(ours):
        theirs = sequences[row, prompt["input_ids"].shape[1] :].tolist()
        assert ids == theirs[: len(ids)] and (len(ids) == 6 or ids[-1] in student.stop_ids())


def test_sampling_is_reproducible_from_the_seed(task, student, processors):
    samples, prompt = _prompt(task, student, processors, count=4)
    engine = HFEngine(student, max_new_tokens=5)
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append([(r.completion_ids, r.behaviour_logprobs) for r in engine.generate(prompt, samples)])
    assert runs[0] == runs[1]
