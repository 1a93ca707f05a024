"""One side of `mmopd bench opd`, run in its own process so its peak resident memory is its own.

`python -m mmopd.bench_worker mmopd|trl SPEC_JSON` loads the saved student and teacher, runs the
steps on the spec's prompts and prints one JSON line: seconds of every step, completion tokens of
every step, the RSS once the models are loaded, and the process's peak RSS (VmHWM).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from functools import partial
from pathlib import Path

import torch


def peak_rss_mb() -> float:
    """The process's peak RSS: the kernel's high-water mark (VmHWM, the same counter VmRSS reads), or
    ru_maxrss where /proc has none; ru_maxrss alone can lag the current VmRSS on Linux."""
    return _status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def current_rss_mb() -> float:
    return _status_mb("VmRSS") or float("nan")


def _status_mb(field: str) -> float:
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.exists() else []:
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def step_prompts(spec: dict, step: int) -> list[str]:
    """The prompts of step `step` (0-based): consecutive slices of the spec's prompt list, both sides alike."""
    prompts, batch = spec["prompts"], spec["batch"]
    return [prompts[(step * batch + row) % len(prompts)] for row in range(batch)]


def run_mmopd(spec: dict) -> dict:
    """mmopd's own OPD step (`opd_step` inside `optimizer_step`, as `mmopd train` runs it)."""
    from mmopd.build import Parts
    from mmopd.config import ModelConfig, load_config
    from mmopd.models import load_pretrained
    from mmopd.rollout import build_engine
    from mmopd.sample import Sample
    from mmopd.teacher import ModelTeacher
    from mmopd.trainer import opd_step, optimizer_step

    batch = spec["batch"]
    config = load_config(
        None,
        [
            f"rollout.max_new_tokens={spec['new_tokens']}",
            f"train.batch_size={batch}",
            f"train.micro_batch_size={batch}",
            f"train.lr={spec['lr']}",
            "train.weight_decay=0.0",
            "train.grad_clip=1.0",
            "loss.divergence=reverse_kl",
            "data.on_error=raise",
        ],
    )
    student = load_pretrained(ModelConfig(path=spec["student"]))
    teacher_bundle = load_pretrained(ModelConfig(path=spec["teacher"]))
    teacher_bundle.model.requires_grad_(False)
    # view "media" = the student's own messages: TRL's teacher reads exactly the student's prompt too.
    teacher = ModelTeacher(teacher_bundle, "media", {}, "hidden", 1.0, config.loss.chunk_size)
    parts = Parts(config, None, {}, student, teacher, build_engine(config.rollout, student))
    model = student.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec["lr"], weight_decay=0.0, fused=True)  # as run_loop
    setup_rss = current_rss_mb()
    seconds, tokens = [], []
    for step in range(spec["steps"]):
        torch.manual_seed(spec["seed"] + step)
        began = time.perf_counter()
        samples = [
            Sample(f"{step}-{row}", [{"role": "user", "content": text}])
            for row, text in enumerate(step_prompts(spec, step))
        ]
        record = optimizer_step(model, optimizer, partial(opd_step, parts, samples, config), spec["lr"], config.train)
        seconds.append(time.perf_counter() - began)
        tokens.append(round(record["completion_tokens"] * batch))
    return {"seconds": seconds, "tokens": tokens, "setup_rss_mb": setup_rss, "peak_rss_mb": peak_rss_mb()}


def run_trl(spec: dict) -> dict:
    """TRL's `DistillationTrainer` (β = 1: reverse KL), fp32 on CPU, constant lr, no checkpoints."""
    import tempfile

    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from transformers.utils import logging as transformers_logging
    from trl import DistillationConfig, DistillationTrainer

    transformers_logging.set_verbosity_error()
    times, tokens = [], []

    class StepClock(TrainerCallback):
        """Wall time between consecutive step ends (the first from its step's beginning)."""

        def on_step_begin(self, args, state, control, **kwargs):
            if not times:
                times.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter())
            tokens.append(trainer._metrics["train"]["completions/mean_length"][-1] * spec["batch"])

    rows = [step_prompts(spec, step) for step in range(spec["steps"])]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": text}]} for row in rows for text in row])
    with tempfile.TemporaryDirectory() as output_dir:
        args = DistillationConfig(
            output_dir=output_dir,
            per_device_train_batch_size=spec["batch"],
            gradient_accumulation_steps=1,
            max_completion_length=spec["new_tokens"],
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            beta=1.0,
            learning_rate=spec["lr"],
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            max_steps=spec["steps"],
            shuffle_dataset=False,
            save_strategy="no",
            report_to=[],
            logging_steps=1,
            use_cpu=True,
            bf16=False,
            seed=spec["seed"],
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        tokenizer = AutoTokenizer.from_pretrained(spec["student"])
        trainer = DistillationTrainer(
            model=spec["student"],
            teacher_model=spec["teacher"],
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[StepClock()],
        )
        setup_rss = current_rss_mb()
        trainer.train()
    seconds = [b - a for a, b in zip(times, times[1:])]
    return {
        "seconds": seconds,
        "tokens": [round(t) for t in tokens],
        "setup_rss_mb": setup_rss,
        "peak_rss_mb": peak_rss_mb(),
    }


def main() -> None:
    side, spec = sys.argv[1], json.loads(sys.argv[2])
    torch.set_num_threads(spec["threads"])
    result = run_mmopd(spec) if side == "mmopd" else run_trl(spec)
    print("BENCH_RESULT " + json.dumps({"side": side, **result}), flush=True)


if __name__ == "__main__":
    main()
