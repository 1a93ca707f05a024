"""Offline OPD: a store's first batch trains exactly like online OPD's first step; no teacher during training;
exact resume; the teacher-consistency check; a store made under another config is refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import mmopd.build
from mmopd.build import build_parts
from mmopd.config import load_config
from mmopd.metrics import read_metrics
from mmopd.offline import TeacherConsistencyError, collect_store, offline_step, reference_digest, train_offline
from mmopd.teacher_store import StoreError, open_store
from mmopd.trainer import batch_of, opd_step, seed_step, train_on_runtime

ROOT = Path(__file__).resolve().parents[1]
DEBUG = ROOT / "configs" / "debug.yaml"
SHORT = ["eval.num_samples=8", "train.eval_every=0", "train.batch_size=4", "train.micro_batch_size=2"]


def offline_config(store: Path, *overrides: str):
    return load_config(DEBUG, [*SHORT, f"offline.store={store}", "offline.num_rollouts=8", *overrides])


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "overrides",
    [
        ["loss.kind=divergence", "offline.hidden_dtype=float32"],
        ["loss.kind=policy_gradient", "teacher.signal=sampled"],
    ],
    ids=["divergence", "policy_gradient"],
)
def test_first_stored_batch_trains_like_the_online_step(tmp_path, overrides):
    """Collected with the run's seed, the store's first batch is online step 1's rollouts and teacher signal: from
    the same initial student, the offline step's loss and gradients equal the online step's."""
    config = offline_config(tmp_path / "store", *overrides)
    online = build_parts(config, tmp_path / "online", with_teacher=True)
    seed_step(config.train.seed, 1)
    samples = batch_of(online.task.train_samples(), 1, config.train.batch_size, config.train.seed)
    online_record = opd_step(online, samples, config)

    collect_store(config, config.offline.store)
    store = open_store(Path(config.offline.store))
    offline = build_parts(config, tmp_path / "offline", with_teacher=False)
    first = store.records[: config.train.batch_size]
    offline_record = offline_step(offline, store, first, offline.task.train_samples(), config)

    assert [offline.task.train_samples()[r.index].id for r in first] == [s.id for s in samples]
    assert offline_record["loss"] == pytest.approx(online_record["loss"], rel=1e-5, abs=1e-7)
    assert offline_record["kl"] == pytest.approx(online_record["kl"], rel=1e-5, abs=1e-7)
    expected, got = gradients(online.student.model), gradients(offline.student.model)
    assert expected.keys() == got.keys() and expected
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)


def test_training_builds_no_teacher_and_checks_teacher_consistency(tmp_path, monkeypatch):
    """The teacher's directory is deleted after collection and building a teacher is made to fail: training still
    runs. The store's teacher digest is the SFT teacher's (consistent); another digest stops the run."""
    teacher_dir = tmp_path / "teacher"
    parts = build_parts(load_config(DEBUG), tmp_path / "build", with_teacher=True)
    parts.teacher.bundle.save(teacher_dir)
    store = tmp_path / "store"
    config = offline_config(store, f"teacher.model.path={teacher_dir}", "train.steps=2", "offline.hidden_dtype=float16")
    collect_store(config, store)
    digest = reference_digest(str(teacher_dir), config)
    assert open_store(store).manifest["teacher_digest"] == digest
    assert open_store(store).tensors["hidden"].dtype == torch.float16

    for path in sorted(teacher_dir.iterdir()):
        path.unlink()
    teacher_dir.rmdir()

    def no_teacher(*args, **kwargs):
        raise AssertionError("a teacher model was built during offline training")

    monkeypatch.setattr(mmopd.build, "build_teacher_model", no_teacher)
    consistent = dataclasses.replace(config, offline=dataclasses.replace(config.offline, sft_teacher=digest))
    summary = train_on_runtime(consistent, tmp_path / "run")
    assert summary["steps"] == 2 and summary["teacher_consistency"] == "consistent"
    assert summary["same_initial_student"] is True
    assert all(r["kl"] >= 0 for r in read_metrics(tmp_path / "run" / "metrics.jsonl")[1:])

    other = "sha256:" + "0" * 64
    inconsistent = dataclasses.replace(config, offline=dataclasses.replace(config.offline, sft_teacher=other))
    with pytest.raises(TeacherConsistencyError, match="offline.consistency=warn"):
        train_offline(inconsistent, tmp_path / "refused")
    assert not (tmp_path / "refused" / "metrics.jsonl").exists()
    warned = dataclasses.replace(inconsistent.offline, consistency="warn")
    summary = train_offline(dataclasses.replace(config, offline=warned), tmp_path / "warned")
    assert summary["teacher_consistency"] == "inconsistent"


def test_resume_reproduces_the_uninterrupted_offline_run(tmp_path):
    config = offline_config(Path("store"), "train.steps=4", "train.checkpoint_every=2")  # in each run directory
    straight = train_offline(config, tmp_path / "straight")
    assert straight["collect_seconds"] > 0 and (tmp_path / "straight" / "store").is_dir()  # collected at the start
    train_offline(config, tmp_path / "interrupted", stop_after=3)
    resumed = train_offline(config, tmp_path / "interrupted", resume=True)
    assert resumed["collect_seconds"] == 0.0
    keys = ("loss", "kl", "grad_norm", "accuracy")
    before = [{k: r.get(k) for k in keys} for r in read_metrics(tmp_path / "straight" / "metrics.jsonl")]
    after = [{k: r.get(k) for k in keys} for r in read_metrics(tmp_path / "interrupted" / "metrics.jsonl")]
    assert before == after and len(before) == 5


def test_a_store_of_another_config_is_refused(tmp_path):
    config = offline_config(tmp_path / "store")
    collect_store(config, config.offline.store)
    changed = offline_config(tmp_path / "store", "rollout.temperature=0.7")
    with pytest.raises(
        StoreError, match="collected with rollout.temperature=1.0, this run has rollout.temperature=0.7"
    ):
        train_offline(changed, tmp_path / "run")
