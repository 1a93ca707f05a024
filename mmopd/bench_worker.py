"""One side of `mmopd bench opd`, run in its own process so its peak resident memory is its own.

`python -m mmopd.bench_worker mmopd|trl SPEC_JSON` loads the saved student and teacher, runs the
steps on the spec's prompts and prints one JSON line: seconds of every step, completion tokens of
every step, the RSS once the models are loaded, the process's peak RSS (VmHWM), and the RSS and peak
after each phase (imports, loads, the first step's parts, all steps).
"""

from __future__ import annotations

import json
import sys
import time
from functools import partial

from mmopd.rss import PhaseLog, current_rss_mb

PHASES = PhaseLog()
PHASES.mark("python")

import torch  # noqa: E402  (after the first mark: the log shows what importing torch costs)

PHASES.mark("import torch")
QWEN2_CODE = "import transformers' Qwen2 model code"


def import_qwen2_code() -> None:
    """transformers' Qwen2 model code (`from_pretrained` imports it anyway), first, so the log shows its cost."""
    import transformers.models.qwen2.modeling_qwen2  # noqa: F401

    PHASES.mark(QWEN2_CODE)


def step_prompts(spec: dict, step: int) -> list[str]:
    """The prompts of step `step` (0-based): consecutive slices of the spec's prompt list, both sides alike."""
    prompts, batch = spec["prompts"], spec["batch"]
    return [prompts[(step * batch + row) % len(prompts)] for row in range(batch)]


def run_mmopd(spec: dict) -> dict:
    """mmopd's own OPD step (`opd_step` inside `optimizer_step`, as `mmopd train` runs it)."""
    import_qwen2_code()
    from mmopd.build import Parts
    from mmopd.config import ModelConfig, load_config
    from mmopd.models import load_pretrained
    from mmopd.rollout import build_engine
    from mmopd.sample import Sample
    from mmopd.teacher import ModelTeacher
    from mmopd.trainer import opd_step, optimizer_step

    PHASES.mark("import mmopd")
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
            "train.release_heap=true",  # mmopd's low-memory setting: the bench compares peak memory
        ],
    )
    student = load_pretrained(ModelConfig(path=spec["student"]))
    PHASES.mark("student loaded (weights mapped, tokenizer)")
    teacher_bundle = load_pretrained(ModelConfig(path=spec["teacher"]))
    teacher_bundle.model.requires_grad_(False)
    PHASES.mark("teacher loaded")
    # view "media" = the student's own messages: TRL's teacher reads exactly the student's prompt too.
    teacher = ModelTeacher(teacher_bundle, "media", {}, "hidden", 1.0, config.loss.chunk_size)
    engine = build_engine(config.rollout, student)
    # Logged after their first call only (instance attributes shadow the methods; the code run is the same).
    engine.generate = PHASES.wrap(engine.generate, "step 1: generation")
    teacher.score = PHASES.wrap(teacher.score, "step 1: teacher hidden states")
    parts = Parts(config, None, {}, student, teacher, engine)
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
        accumulate = partial(opd_step, parts, samples, config)
        if step == 0:
            accumulate = PHASES.wrap(accumulate, "step 1: loss and backward")
        record = optimizer_step(model, optimizer, accumulate, spec["lr"], config.train)
        seconds.append(time.perf_counter() - began)
        tokens.append(round(record["completion_tokens"] * batch))
        if step == 0:
            PHASES.mark("step 1: clip and AdamW step")
    PHASES.mark(f"all {spec['steps']} steps")
    return {
        "seconds": seconds,
        "tokens": tokens,
        "setup_rss_mb": setup_rss,
        "peak_rss_mb": PHASES.peak(),
        "phases": PHASES.rows,
        "tensors_mb": training_tensors_mb(model, optimizer, teacher_bundle.model),
    }


def training_tensors_mb(student, optimizer, teacher) -> dict[str, float]:
    """MB of the tensors of an OPD step with AdamW: the student's weights, gradients and AdamW moments, its
    output head and input embedding alone, the teacher's weights, and the teacher's output head (which
    every full-vocabulary loss reads whole)."""

    def mb(tensors) -> float:
        return sum(t.numel() * t.element_size() for t in tensors if t is not None) / 2**20

    states = [value for state in optimizer.state.values() for value in state.values() if torch.is_tensor(value)]
    return {
        "student_weights": mb(student.parameters()),
        "student_gradients": mb(p for p in student.parameters() if p.requires_grad),
        "adamw_moments": mb(s for s in states if s.dim() > 0),
        "student_head": mb([student.get_output_embeddings().weight]),
        "student_input_embedding": mb([student.get_input_embeddings().weight]),
        "teacher_weights": mb(teacher.parameters()),
        "teacher_head": mb([teacher.get_output_embeddings().weight]),
    }


def run_trl(spec: dict) -> dict:
    """TRL's `DistillationTrainer` (β = 1: reverse KL), fp32 on CPU, constant lr, no checkpoints."""
    import tempfile

    import_qwen2_code()
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from transformers.utils import logging as transformers_logging
    from trl import DistillationConfig, DistillationTrainer

    PHASES.mark("import datasets and TRL")
    transformers_logging.set_verbosity_error()
    times, tokens = [], []

    class StepClock(TrainerCallback):
        """Wall time between consecutive step ends (the first from its step's beginning)."""

        def on_step_begin(self, args, state, control, **kwargs):
            if not times:
                times.append(time.perf_counter())

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            if state.global_step == 0:
                PHASES.mark("step 1: generation, teacher, loss and backward")

        def on_optimizer_step(self, args, state, control, **kwargs):
            if state.global_step == 0:
                PHASES.mark("step 1: clip and AdamW step")

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
        PHASES.mark("tokenizer loaded")
        trainer = DistillationTrainer(
            model=spec["student"],
            teacher_model=spec["teacher"],
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[StepClock()],
        )
        PHASES.mark("trainer built (student and teacher loaded)")
        setup_rss = current_rss_mb()
        trainer.train()
        PHASES.mark(f"all {spec['steps']} steps")
    seconds = [b - a for a, b in zip(times, times[1:])]
    return {
        "seconds": seconds,
        "tokens": [round(t) for t in tokens],
        "setup_rss_mb": setup_rss,
        "peak_rss_mb": PHASES.peak(),
        "phases": PHASES.rows,
    }


def main() -> None:
    side, spec = sys.argv[1], json.loads(sys.argv[2])
    torch.set_num_threads(spec["threads"])
    result = run_mmopd(spec) if side == "mmopd" else run_trl(spec)
    print("BENCH_RESULT " + json.dumps({"side": side, **result}), flush=True)


if __name__ == "__main__":
    main()
