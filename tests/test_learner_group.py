"""The learner group (2 gloo ranks as Ray actors) against LocalLearner: DDP, FSDP2, vocab-sharded teacher head,
exact resume from a checkpoint. Batches are real rollouts of a tiny student scored by a real tiny teacher."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from mmopd.build import build_parts
from mmopd.config import ConfigError, load_config
from mmopd.cross_objective import supervised_tokens
from mmopd.learner import LearnerBatch, LocalLearner
from mmopd.learner_group import LearnerGroup, assign_by_tokens, split_batch
from mmopd.models import output_head
from mmopd.sample import Sample
from mmopd.trainer import batch_of, render_batch
from mmopd.views import collate

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
# 3 micro-batches of 2 over 2 ranks: one rank gets two, the other one and a weight-0 pad.
OVERRIDES = ["train.batch_size=6", "train.micro_batch_size=2", "train.warmup_steps=0", "train.grad_clip=0.05"]
STEPS = 3
RELATIVE = 1e-5  # float32 sums in another order (two ranks, micro-batches regrouped)
# The vocab-parallel KL is assembled from per-slice log-partition functions and sums in float32: ~1e-7 absolute
# on a loss of ~1e-2 (in float64, test_vocab_parallel finds it equal to the unsharded loss to ~1e-15).
VOCAB_RELATIVE = 3e-5
LRS = [1e-2, 2e-2, 3e-2]
# AdamW moves a weight by up to ~lr per step whatever its gradient's size, so float32 noise in near-zero gradient
# elements (embedding rows of rare tokens) shows in the weights: LocalLearner itself, fed these batches with the
# teacher's hidden states perturbed by 1e-7 (relative), ends 4e-4 away from its own unperturbed run (1e-6: 1e-3).
# Weights are compared at 2e-3, a tenth of one step's lr: a skipped or mis-scaled step on a rank moves them by ~lr.
WEIGHTS_ABSOLUTE = 2e-3


def config_of(*overrides: str):
    return load_config(ROOT / "configs" / "debug.yaml", [*OVERRIDES, *overrides])


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def learner_batch(parts, config, step: int, text_only: int = 0) -> LearnerBatch:
    """One step's LearnerBatch, made as `trainer.opd_step` makes it; its first `text_only` samples have no image
    (a micro-batch of them leaves the student's vision tower unused)."""
    torch.manual_seed(step)
    samples = batch_of(parts.task.train_samples(), step, config.train.batch_size, config.train.seed)
    question = [{"role": "user", "content": "Name a colour."}]
    texts = [Sample(f"text{i}", question, privileged="red", answer="red") for i in range(text_only)]
    rendered, _ = render_batch(parts, texts + samples[text_only:], "raise")
    micro = config.train.micro_batch_size
    groups = [rendered[i : i + micro] for i in range(0, len(rendered), micro)]
    prompts = [collate([r.student for r in group], parts.student) for group in groups]
    rollouts = [parts.engine.generate(p, [r.student.sample for r in g]) for p, g in zip(prompts, groups)]
    signals = [
        parts.teacher.score([r.teacher for r in g], [r.completion_ids for r in rs], rs)
        for g, rs in zip(groups, rollouts)
    ]
    supervised = sum(supervised_tokens(rs, s) for rs, s in zip(rollouts, signals))
    return LearnerBatch(prompts, rollouts, signals, supervised)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Batches, the initial weights, the teacher head, and LocalLearner's records and weights after each step."""
    config = config_of()
    parts = build_parts(config, tmp_path_factory.mktemp("run"))
    # Step 2's first micro-batch is text-only: ranks whose micro-batches use different parameters.
    batches = [learner_batch(parts, config, step, text_only=2 if step == 2 else 0) for step in range(1, STEPS + 1)]
    initial = {name: tensor.clone() for name, tensor in parts.student.model.state_dict().items()}
    head = tuple(None if t is None else t.detach().clone() for t in output_head(parts.teacher.bundle))
    local = LocalLearner(parts.student, config)
    records, weights = [], []
    for step, batch in enumerate(batches, start=1):
        records.append(local.update(LRS[step - 1], batch))
        weights.append({name: tensor.clone() for name, tensor in local.weights().items()})
    return dict(parts=parts, batches=batches, initial=initial, head=head, records=records, weights=weights)


def headless(batch: LearnerBatch) -> LearnerBatch:
    """The batch as the Ray runtime ships it: hidden signals without the teacher's head."""
    signals = [dataclasses.replace(s, head_weight=None, head_bias=None) for s in batch.signals]
    return dataclasses.replace(batch, signals=signals)


def close(actual: float, expected: float, relative: float) -> bool:
    return abs(actual - expected) <= relative * max(abs(expected), 1e-8)


def assert_weights_close(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        assert (actual[name] - tensor).abs().max() <= WEIGHTS_ABSOLUTE, name


def run_against_local(
    group: LearnerGroup, reference, steps=range(STEPS), ship_head: bool = False, relative: float = RELATIVE
) -> list[dict]:
    records = []
    for step in steps:
        batch = reference["batches"][step]
        record = group.update(LRS[step], batch if ship_head else headless(batch))
        expected = reference["records"][step]
        for key in ("loss", "kl", "grad_norm"):
            assert close(record[key], expected[key], relative), (step, key, record[key], expected[key])
        assert record["lr"] == expected["lr"] and "skipped_update" not in record
        records.append(record)
    return records


def poisoned(batch: LearnerBatch) -> LearnerBatch:
    """The batch with one NaN in the first micro-batch's teacher signal: that micro-batch's rank sees a NaN loss."""
    hidden = batch.signals[0].hidden.clone()
    hidden[0, 0] = float("nan")
    signals = [dataclasses.replace(batch.signals[0], hidden=hidden), *batch.signals[1:]]
    return dataclasses.replace(batch, signals=signals)


def truncated(batch: LearnerBatch) -> LearnerBatch:
    """The batch with the first micro-batch's teacher signal one token short."""
    signals = [dataclasses.replace(batch.signals[0], hidden=batch.signals[0].hidden[:-1]), *batch.signals[1:]]
    return dataclasses.replace(batch, signals=signals)


def test_ddp_group_matches_local_learner(cluster, reference):
    group = LearnerGroup(config_of("runtime=ray", "learner.world_size=2"), reference["initial"], reference["head"])
    try:
        # Every rank skips a step that is non-finite on one rank only; had any rank stepped, the ranks' weights
        # (and the summed gradients of the steps below) would no longer be LocalLearner's.
        skipped = group.update(LRS[0], headless(poisoned(reference["batches"][0])))
        assert skipped["skipped_update"] == 1 and "loss is nan" in skipped["nonfinite_reason"]
        run_against_local(group, reference, [0])
        run_against_local(group, reference, [1], ship_head=True)  # a head that comes with the signal is used
        run_against_local(group, reference, [2])
        weights = group.weights()
        # A rank that fails (here: one micro-batch's signal is a row short) would leave the other waiting in the
        # gradient all-reduce: the group ends and the error comes back at once.
        with pytest.raises(ray.exceptions.RayTaskError, match="token counts differ"):
            group.update(LRS[0], headless(truncated(reference["batches"][0])))
        assert group.ranks == []
    finally:
        group.close()
    # Three updates moved the weights (clipped steps of lr 1e-2..3e-2), and both learners moved them alike.
    assert any(not torch.equal(weights[n], reference["initial"][n]) for n in weights)
    assert_weights_close(weights, reference["weights"][-1])


def test_fsdp2_group_with_a_vocab_sharded_teacher_head_matches_local_learner_and_resumes_exactly(
    cluster, reference, tmp_path
):
    config = config_of("runtime=ray", "learner.world_size=2", "learner.strategy=fsdp2", "teacher.head_sharding=vocab")
    parts = reference["parts"]
    group = LearnerGroup(config, reference["initial"], reference["head"])
    try:
        run_against_local(group, reference, range(2), relative=VOCAB_RELATIVE)
        checkpoint = group.save_checkpoint(tmp_path / "checkpoints", 2, parts.student, {"step": 2}, keep=1)
        straight = run_against_local(group, reference, [2], relative=VOCAB_RELATIVE)[0]
        straight_weights = group.weights()
    finally:
        group.close()
    assert_weights_close(straight_weights, reference["weights"][-1])
    resumed = LearnerGroup(config, reference["initial"], reference["head"])
    try:
        saved = resumed.load_checkpoint(checkpoint, parts.student)
        assert saved["loop"] == {"step": 2}
        record = resumed.update(LRS[2], headless(reference["batches"][2]))
        weights = resumed.weights()
    finally:
        resumed.close()
    assert {k: record[k] for k in ("loss", "kl", "grad_norm")} == {k: straight[k] for k in ("loss", "kl", "grad_norm")}
    assert all(torch.equal(weights[name], straight_weights[name]) for name in weights)


def test_micro_batches_are_balanced_by_tokens_and_padded_to_equal_counts(reference):
    assert assign_by_tokens([10, 50, 30, 40, 20], 2) == [[0, 1, 4], [2, 3]]  # loads 80 and 70
    assert assign_by_tokens([5], 3) == [[0], [], []]
    assert ["pixel_values" in prompt for prompt in reference["batches"][1].prompts] == [False, True, True]
    batch = reference["batches"][0]
    shares = split_batch(batch, 2)
    assert [len(share) for share in shares] == [2, 2]
    real = [item for share in shares for item in share if item[-1] == 1.0]
    assert sorted(id(item[2]) for item in real) == sorted(id(s) for s in batch.signals)
    assert sum(item[-1] == 0.0 for share in shares for item in share) == 1


def test_head_sharding_needs_ranks_the_hidden_signal_and_the_students_tokenizer():
    with pytest.raises(ConfigError, match="learner.world_size >= 2"):
        config_of("teacher.head_sharding=vocab")
    with pytest.raises(ConfigError, match="teacher.signal=hidden"):
        sampled = ["teacher.signal=sampled", "loss.kind=policy_gradient"]
        config_of("runtime=ray", "learner.world_size=2", "teacher.head_sharding=vocab", *sampled)
    with pytest.raises(ConfigError, match="teacher.tokenizer=student"):
        config_of("runtime=ray", "learner.world_size=2", "teacher.head_sharding=vocab", "teacher.tokenizer=bpe:300")
    with pytest.raises(ConfigError, match="learner.strategy"):
        config_of("learner.strategy=zero3")
