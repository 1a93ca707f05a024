"""Crash consistency: SIGKILL the CLI during rollout, loss and checkpoint write, resume with `--resume`,
and get the uninterrupted run's metrics exactly (CPU), one record per step, no half-written checkpoint.

Runs are forked children of the test process (already imported, so each costs only its run time);
`MMOPD_CRASH_AT=point:step` makes a child SIGKILL itself at a named point (mmopd/crash.py).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
from pathlib import Path

import torch

from mmopd.checkpoint import list_checkpoints
from mmopd.cli import main
from mmopd.crash import CRASH_ENV
from mmopd.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
DEBUG = str(ROOT / "configs" / "debug.yaml")
SHORT = ["train.steps=8", "train.checkpoint_every=2", "train.eval_every=4", "eval.num_samples=8", "train.threads=1"]
COMPARED = ("loss", "kl", "grad_norm", "lr", "accuracy", "skipped", "skipped_updates")


def _child(argv: list[str], crash_at: str | None) -> None:
    # A forked child must not enter an OpenMP parallel region: the parent's thread pool did not survive
    # the fork and the child would hang. One thread also makes every run's float reductions identical.
    torch.set_num_threads(1)
    if crash_at:
        os.environ[CRASH_ENV] = crash_at
    sys.exit(main(argv))


def run_cli(argv: list[str], crash_at: str | None = None) -> int:
    """Exit code of `mmopd argv` in a forked child: 0 on success, -SIGKILL when it killed itself."""
    process = multiprocessing.get_context("fork").Process(target=_child, args=(argv, crash_at))
    process.start()
    process.join(timeout=180)
    if process.is_alive():
        process.kill()
        process.join()
        raise TimeoutError(f"mmopd {' '.join(argv)} did not finish in 180 s")
    return process.exitcode


def assert_same_metrics(reference: Path, resumed: Path) -> None:
    expected, got = read_metrics(reference), read_metrics(resumed)
    assert [r["step"] for r in got] == [r["step"] for r in expected]  # one record per step, no gaps
    for a, b in zip(expected, got):
        for key in COMPARED:
            assert a.get(key) == b.get(key), (a["step"], key, a.get(key), b.get(key))


def test_sigkill_during_rollout_loss_and_checkpoint_write_then_resume_is_exact(tmp_path):
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    assert run_cli(["train", DEBUG, *SHORT, "--run-dir", str(reference)]) == 0
    train = ["train", DEBUG, *SHORT, "--run-dir", str(crashed)]
    assert run_cli(train, crash_at="rollout:3") == -signal.SIGKILL
    assert [r["step"] for r in read_metrics(crashed / "metrics.jsonl")] == [0, 1, 2]
    assert run_cli([*train, "--resume"], crash_at="checkpoint:6") == -signal.SIGKILL
    assert list((crashed / "checkpoints").glob(".tmp_step_0000006_*"))  # killed between write and rename
    assert [p.name for p in list_checkpoints(crashed / "checkpoints")] == ["step_0000002", "step_0000004"]
    assert run_cli([*train, "--resume"], crash_at="loss:7") == -signal.SIGKILL
    with open(crashed / "metrics.jsonl", "a") as handle:  # what a kill in the middle of a write leaves
        handle.write('{"step": 7, "loss": 0.12')
    assert run_cli([*train, "--resume"]) == 0

    assert_same_metrics(reference / "metrics.jsonl", crashed / "metrics.jsonl")
    assert not list((crashed / "checkpoints").glob(".tmp*"))  # the half-written checkpoint was cleaned up
    summary = json.loads((crashed / "summary.json").read_text())
    assert summary["steps"] == 8 and (crashed / "final" / "model.safetensors").exists()


def test_demo_killed_in_teacher_sft_and_in_distillation_resumes_exactly(tmp_path):
    short = ["sft.steps=3", "sft.batch_size=8", "train.steps=4", "train.batch_size=8", "train.micro_batch_size=8"]
    short += ["train.checkpoint_every=2", "train.eval_every=0", "eval.num_samples=8", "train.threads=1"]
    short += ["train.progress=false"]
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    assert run_cli(["demo", "--run-dir", str(reference), *short]) == 0
    demo = ["demo", "--run-dir", str(crashed), *short]
    assert run_cli(demo, crash_at="checkpoint:2") == -signal.SIGKILL  # the teacher's SFT writes step 2 first
    assert not (crashed / "teacher_sft" / "summary.json").exists()
    assert run_cli([*demo, "--resume"], crash_at="rollout:3") == -signal.SIGKILL  # now in distillation
    assert (crashed / "teacher_sft" / "summary.json").exists()
    assert run_cli([*demo, "--resume"]) == 0

    assert_same_metrics(reference / "teacher_sft" / "metrics.jsonl", crashed / "teacher_sft" / "metrics.jsonl")
    assert_same_metrics(reference / "metrics.jsonl", crashed / "metrics.jsonl")
