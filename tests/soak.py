"""Soak test: train over a dataset full of bad samples (and a teacher that makes some steps NaN),
SIGKILL the process at random moments and at named crash points, resume with `--resume`, and check
that every completed run equals an uninterrupted reference run step for step. Prints what it survived.

    python tests/soak.py --minutes 30

Not collected by pytest (the fast versions of these checks are tests/test_crash.py and friends).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bad_corpus import BAD_INPUTS, POISON, PROCESSOR_ARGS, row, write_dataset, write_poisoned_teacher
from transformers.utils import logging as transformers_logging

from mmopd.checkpoint import is_complete, list_checkpoints
from mmopd.config import load_config, save_config
from mmopd.crash import CRASH_ENV, POINTS
from mmopd.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
COMPARED = ("loss", "kl", "grad_norm", "lr", "accuracy", "skipped", "skipped_updates", "nonfinite_reason")


def write_config(work: Path, steps: int) -> tuple[Path, int]:
    """The soak's config (a dataset of every bad input, good samples and one NaN-making sample); its checkpoint interval."""
    data, _ = write_dataset(work / "data", BAD_INPUTS, good=8)
    with open(data, "a") as handle:
        handle.write(row("poison", "image", "good.png", privileged=f"A red {POISON} square.") + "\n")
    every = 5
    overrides = ["data.task=jsonl", f"data.task_args={{train_path: {data}, eval_path: {data}}}"]
    overrides += [f"train.steps={steps}", "train.batch_size=8", "train.micro_batch_size=8", "train.threads=1"]
    overrides += [f"train.checkpoint_every={every}", "train.eval_every=20", "train.max_nonfinite_steps=10"]
    overrides += ["data.max_prompt_tokens=256", "eval.num_samples=8", "data.on_error=skip"]
    overrides += [f"data.processor_args={PROCESSOR_ARGS}"]
    config = load_config(ROOT / "configs" / "debug.yaml", overrides)
    write_poisoned_teacher(config, work / "teacher")
    path = work / "soak.yaml"
    save_config(
        load_config(ROOT / "configs" / "debug.yaml", [*overrides, f"teacher.model.path={work / 'teacher'}"]), path
    )
    return path, every


def start(config: Path, run_dir: Path, crash_at: str | None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    if crash_at:
        env[CRASH_ENV] = crash_at
    argv = [sys.executable, "-m", "mmopd.cli", "train", str(config), "--run-dir", str(run_dir), "--resume"]
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def last_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    steps = [json.loads(line)["step"] for line in lines if line.endswith("}")]
    return max(steps, default=-1)


def inspect_leftovers(run_dir: Path, tally: Counter) -> None:
    """Count what the last kill left for the resume to clean up."""
    checkpoints = run_dir / "checkpoints"
    if checkpoints.exists():
        tally["half-written checkpoints"] += sum(
            p.name.startswith(".tmp_") or not is_complete(p) for p in checkpoints.iterdir() if p.is_dir()
        )
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists() and metrics.read_text() and not metrics.read_text().endswith("\n"):
        tally["torn metrics lines"] += 1


def compare(reference: Path, run_dir: Path) -> list[str]:
    """Differences between a resumed run and the reference: steps, metrics, skipped.txt, leftovers."""
    expected, got = read_metrics(reference / "metrics.jsonl"), read_metrics(run_dir / "metrics.jsonl")
    problems = []
    if [r["step"] for r in got] != [r["step"] for r in expected]:
        problems.append(f"steps differ: {[r['step'] for r in got]}")
    for a, b in zip(expected, got):
        problems += [
            f"step {a['step']} {k}: {a.get(k)} != {b.get(k)}" for k in COMPARED if str(a.get(k)) != str(b.get(k))
        ]
    if (reference / "skipped.txt").read_text() != (run_dir / "skipped.txt").read_text():
        problems.append("skipped.txt differs")
    if list((run_dir / "checkpoints").glob(".tmp*")):
        problems.append("temporary checkpoint directories left")
    return problems


def one_run(config, run_dir: Path, every: int, steps: int, kill_after, deadline: float, rng, tally: Counter):
    """Start, kill and resume one run until it completes; after `deadline`, let it finish unharmed.
    A random kill comes `kill_after` = (startup, whole run) seconds: after startup, within the run."""
    while True:
        before = last_step(run_dir)
        crash_at = None
        checkpoints = list_checkpoints(run_dir / "checkpoints")
        done = int(checkpoints[-1].name.split("_")[1]) if checkpoints else 0  # where the next process resumes
        reachable = range(done + 1, steps + 1)
        killing = time.perf_counter() < deadline and len(reachable) > 0
        if killing and rng.random() < 0.5:  # a named crash point at a step this attempt will reach
            point = rng.choice(POINTS)
            candidates = [s for s in reachable if point != "checkpoint" or s % every == 0 or s == steps]
            crash_at = f"{point}:{rng.choice(candidates)}"
        process = start(config, run_dir, crash_at)
        tally["processes started"] += 1
        tally["resumes"] += before >= 0
        try:
            startup, seconds = kill_after  # a random moment of the training this process has left to do
            left = startup + (seconds - startup) * len(reachable) / steps
            timeout = rng.uniform(startup, left) if killing and not crash_at else None
            _, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.communicate()
            tally["SIGKILL at a random moment"] += 1
            what = f"SIGKILL after {timeout:.0f} s"
        else:
            if process.returncode == 0:
                print(f"  {run_dir.name}: completed after step {before}", flush=True)
                return
            if process.returncode != -signal.SIGKILL:
                raise SystemExit(f"training failed (exit {process.returncode}):\n{stderr[-3000:]}")
            tally[f"SIGKILL at crash point {crash_at.split(':')[0]}"] += 1
            what = f"SIGKILL at crash point {crash_at}"
        print(f"  {run_dir.name}: {what}, last step logged {last_step(run_dir)} (before: {before})", flush=True)
        tally["kills before the run got past its furthest step so far"] += last_step(run_dir) <= before
        inspect_leftovers(run_dir, tally)


def timed_reference(config: Path, run_dir: Path) -> tuple[float, float]:
    """Run the uninterrupted reference; seconds until its first metrics record, and in all."""
    began, startup = time.perf_counter(), None
    argv = [sys.executable, "-m", "mmopd.cli", "train", str(config), "--run-dir", str(run_dir)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    while process.poll() is None:
        if startup is None and (run_dir / "metrics.jsonl").exists():
            startup = time.perf_counter() - began
        time.sleep(0.1)
    if process.returncode != 0:
        raise SystemExit(f"the reference run failed (exit {process.returncode})")
    return startup, time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to keep killing and resuming")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps of each run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    parser.add_argument("--workdir", type=Path, help="where runs go (default: a temporary directory, removed)")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mmopd-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    transformers_logging.disable_progress_bar()
    config, every = write_config(work, args.steps)
    began = time.perf_counter()
    reference = work / "reference"
    startup, seconds = timed_reference(config, reference)
    summary = json.loads((reference / "summary.json").read_text())
    print(
        f"reference run: {args.steps} steps in {seconds:.0f} s ({startup:.0f} s to the first step), "
        f"{summary['skipped_samples']} skipped samples, "
        f"{summary['skipped_updates']} non-finite steps skipped",
        flush=True,
    )

    rng, tally, runs = random.Random(args.seed), Counter(), 0
    while time.perf_counter() - began < args.minutes * 60:
        run_dir = work / f"run_{runs}"
        kill_after = (startup, seconds)
        one_run(config, run_dir, every, args.steps, kill_after, began + args.minutes * 60, rng, tally)
        problems = compare(reference, run_dir)
        if problems:
            print(f"run {runs} differs from the reference:\n  " + "\n  ".join(problems[:20]))
            return 1
        runs += 1
        print(f"run {runs} complete and identical to the reference ({dict(tally)})", flush=True)
    print(
        f"\nsoak survived {(time.perf_counter() - began) / 60:.1f} minutes: {runs} runs, each identical to the "
        "uninterrupted reference (loss, kl, grad_norm, accuracy per step; skipped.txt)"
    )
    for key, value in sorted(tally.items()):
        print(f"  {key}: {value}")
    print(
        f"  per run: {summary['skipped_samples']} skipped samples ({len(set(_skipped_ids(reference)))} distinct, "
        f"every one listed with its reason in skipped.txt), {summary['skipped_updates']} non-finite steps skipped"
    )
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _skipped_ids(run_dir: Path) -> list[str]:
    return [line.split("'")[1] for line in (run_dir / "skipped.txt").read_text().splitlines()]


if __name__ == "__main__":
    sys.exit(main())
