"""The Ray runtime on a local CPU cluster: it reproduces the local runtime, survives a dying teacher with every
sample counted once, routes samples to several teachers, and syncs the learner's weights to rollout actors.

One cluster serves the whole module (Ray takes seconds to start on 2 cores); each run builds its actors afresh.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from mmopd.actor_pool import EXIT_ENV  # noqa: E402
from mmopd.build import build_parts  # noqa: E402
from mmopd.config import load_config  # noqa: E402
from mmopd.metrics import read_metrics  # noqa: E402
from mmopd.sample import TeacherSignal  # noqa: E402
from mmopd.trainer import train as train_local  # noqa: E402
from mmopd.wire import pack_signal, unpack_signal  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Two micro-batches per step, so both teacher replicas score one; one CPU thread in the driver and in every actor,
# so the local and Ray runtimes run the same kernels.
BASE = ["eval.num_samples=8", "eval.max_new_tokens=2", "train.steps=3", "train.eval_every=0", "train.threads=1"]
RAY = ["runtime=ray", "ray.teacher_replicas=2"]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    threads = torch.get_num_threads()
    # Idle workers import the actors' modules while the local run goes (each import costs seconds here).
    hook = "mmopd.ray_driver.import_actor_modules"
    ray.init(num_cpus=6, include_dashboard=False, log_to_driver=False, runtime_env={"worker_process_setup_hook": hook})
    yield
    ray.shutdown()
    torch.set_num_threads(threads)


def run(tmp_path: Path, name: str, *overrides: str, stop_after: int | None = None) -> list[dict]:
    config = load_config(ROOT / "configs" / "debug.yaml", [*BASE, *overrides])
    if config.runtime == "ray":
        from mmopd.ray_driver import train
    else:
        train = train_local
    train(config, tmp_path / name, stop_after=stop_after)
    if stop_after is not None:  # interrupted after its checkpoint: a new driver (and new actors) resumes it
        train(config, tmp_path / name, resume=True)
    return read_metrics(tmp_path / name / "metrics.jsonl")[1:]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> list[dict]:
    return run(tmp_path_factory.mktemp("local"), "run")


def test_ray_runtime_matches_the_local_runtime_and_resumes_exactly(tmp_path, local_run):
    remote = run(tmp_path, "ray", *RAY, "ray.hidden_dtype=float32", stop_after=2)
    assert [r["step"] for r in remote] == [r["step"] for r in local_run] == [1, 2, 3]
    for a, b in zip(local_run, remote):
        # Same seeds per micro-batch, same kernels: equal up to float32 summation order (stated tolerance 1e-5).
        for key in ("loss", "kl", "grad_norm"):
            assert math.isclose(a[key], b[key], rel_tol=1e-5), (a["step"], key, a[key], b[key])
        assert b["teacher_bytes_per_token"] == a["teacher_bytes_per_token"] == 4 * 32  # fp32 × hidden 32
        assert b["samples_scored"] == b["samples_trained"] == b["samples_drawn"] == 8 and b["policy_lag"] == 0
    assert remote[-1]["samples_trained_total"] == 24


def test_a_teacher_that_dies_mid_run_is_restarted_and_no_sample_is_lost_or_counted_twice(
    tmp_path, local_run, monkeypatch
):
    # Two teachers by question kind (one with its own BPE, so scored across tokenizers); the colour teacher's actor
    # exits at its second call; rollouts run one step ahead (async) with bf16 hidden states on the wire, and the
    # learner is a 2-rank DDP group (gloo), each signal carrying its teacher's head.
    monkeypatch.setenv(EXIT_ENV, "colour:0:2")
    teachers = "teachers={colour: {model: {family: qwen2, hidden_size: 32, num_layers: 1, num_heads: 2, "
    teachers += "num_kv_heads: 1, intermediate_size: 64, seed: 1}}, shape: {tokenizer: 'bpe:300'}}"
    records = run(
        tmp_path,
        "faulty",
        "runtime=ray",
        teachers,
        "routing.by=meta.question",
        "ray.async_rollouts=true",
        "loss.divergence=jsd",
        "learner.world_size=2",
    )
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[-1]["actor_retries"] >= 1  # the kill happened and its micro-batch was retried
    for record in records:
        assert record["samples_scored"] == record["samples_drawn"] == 8
        assert record["samples_trained"] + record["skipped"] == 8
        assert record["teacher/colour/samples"] + record["teacher/shape/samples"] == 8
        assert math.isfinite(record["loss"]) and math.isfinite(record["kl"])  # a sampled estimate with two tokenizers
        assert 0 <= record["is_clip_fraction"] <= 1 and record["logprob_mismatch"] >= 0
        assert record["teacher/colour/bytes_per_token"] == 2 * 32  # bf16 × hidden 32
        # Each teacher's kl is its micro-batches' share of the step's (one normaliser), summed over both ranks.
        assert math.isclose(record["teacher/colour/kl"] + record["teacher/shape/kl"], record["kl"], rel_tol=1e-5)
    assert [r["policy_lag"] for r in records] == [0, 1, 1]
    assert records[-1]["samples_scored_total"] == 24
    assert records[-1]["samples_trained_total"] == sum(r["samples_trained"] for r in records)


def test_rollout_actors_load_the_learners_weights_and_stamp_their_version(tmp_path, monkeypatch):
    from mmopd.actor_pool import ActorFailure
    from mmopd.rollout_pool import RolloutPool

    monkeypatch.setenv(EXIT_ENV, "rollout:1:3")  # replica 1 exits at its third call, and is not restarted
    restarts = ["ray.max_restarts=0", "ray.max_retries=1"]
    config = load_config(ROOT / "configs" / "debug.yaml", [*BASE, *RAY, "ray.rollout_replicas=2", *restarts])
    parts = build_parts(config, tmp_path, with_teacher=False)
    pool = RolloutPool(config)
    samples = [parts.task.train_samples()[i] for i in range(2)]
    from mmopd.views import collate, prepare, student_messages

    prompt = collate([prepare(s, student_messages(s), parts.student, parts.processors) for s in samples], parts.student)
    learner_weights = parts.student.model.state_dict()
    for version in (1, 2):
        with torch.no_grad():
            for parameter in parts.student.model.parameters():
                parameter.add_(0.01 * torch.randn_like(parameter))  # stands for an update of the learner
        pool.sync(learner_weights, version)
        rollouts = pool.pool.run(
            [(replica, "generate", (prompt, samples, 7, pool.packed, version)) for replica in (0, 1)]
        )
        assert {r.policy_version for group in rollouts for r in group} == {version}
        assert [r.completion_ids for r in rollouts[0]] == [r.completion_ids for r in rollouts[1]]  # same seed
        for replica in pool.replica_weights():
            assert replica.keys() == learner_weights.keys()
            assert all(torch.equal(replica[name], learner_weights[name]) for name in replica)
    # The retry goes to replica 0, whose first life has not ended: the work is done once, counted once.
    assert len(pool.pool.run([(1, "generate", (prompt, samples, 7, pool.packed, 2))])) == 1
    assert pool.pool.retries == 1
    # Replica 1 is dead for good and replica 0 next: after ray.max_retries the error names the actor.
    with pytest.raises(ActorFailure, match=r"rollout actor 0: generate failed 2 times .*died each time"):
        ray.kill(pool.pool.actors[0])
        pool.pool.run([(1, "generate", (prompt, samples, 7, pool.packed, 2))])
    for actor in pool.pool.actors:
        ray.kill(actor)


def test_hidden_states_cross_the_object_store_without_a_copy_and_upcast_to_fp32():
    hidden = torch.randn(12, 32)  # (N, H)
    head = (torch.randn(50, 32), None)  # (V, H)
    packed = pack_signal(TeacherSignal("hidden", hidden=hidden, head_weight=head[0]), "bfloat16")
    received = ray.get(ray.put(packed))
    assert received.head_weight is None and received.hidden.nbytes == 12 * 32 * 2
    assert not received.hidden.data.flags.writeable  # a view of the shared-memory store, not a private copy
    signal = unpack_signal(received, head, torch.device("cpu"))
    assert signal.hidden.dtype == torch.float32 and signal.head_weight is head[0]
    assert torch.equal(signal.hidden, hidden.to(torch.bfloat16).float())
