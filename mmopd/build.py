"""Build a run's parts from the config: task, processors, tokenizer, student, teacher, engine.

The only place (with the small `build_*` functions it calls) that reads the config (contract 7).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import mmopd.losses  # noqa: F401  (registers the built-in divergences)
import mmopd.processors.image  # noqa: F401  (registers the built-in processors)
import mmopd.tasks.jsonl  # noqa: F401  (registers the built-in tasks)
import mmopd.tasks.shapes  # noqa: F401
from mmopd.config import Config, ConfigError, DataConfig, ModelConfig
from mmopd.evaluate import evaluate
from mmopd.models import ModelBundle, build_model, qwen_tokenizer, train_bpe_tokenizer
from mmopd.registry import PROCESSORS, TASKS
from mmopd.rollout import RolloutEngine, build_engine
from mmopd.sample import Sample
from mmopd.teacher import Teacher, build_teacher
from mmopd.tokenizers import load_tokenizer


@dataclass
class Parts:
    config: Config
    task: Any
    processors: dict[str, Any]
    student: ModelBundle
    teacher: Teacher | None
    engine: RolloutEngine
    skip_log: Path | None = None

    def evaluate(self, bundle: ModelBundle, messages_for: Callable[[Sample], list[dict]]) -> dict[str, float]:
        return evaluate_on_task(self.config, self.task, self.processors, bundle, messages_for)

    def report_skip(self, reason: str) -> None:
        report_skip(self.skip_log, reason)


def evaluate_on_task(config: Config, task: Any, processors: dict, bundle: ModelBundle, messages_for) -> dict:
    samples = task.eval_samples()
    samples = [samples[i] for i in range(min(config.eval.num_samples, len(samples)))]
    return evaluate(
        bundle, samples, messages_for, task.verify, processors, config.eval.batch_size, config.eval.max_new_tokens
    )


def report_skip(path: Path | None, reason: str) -> None:
    """Skipped samples are listed, with why, in `skipped.txt` of the run directory."""
    if path is not None:
        with open(path, "a") as handle:
            handle.write(reason + "\n")


def build_task(config: DataConfig) -> Any:
    factory = TASKS.get(config.task)
    return _construct(factory, config.task_args, f"data.task_args (task {config.task!r})")


def build_processors(config: DataConfig) -> dict[str, Any]:
    unknown = set(config.processor_args) - set(PROCESSORS.names())
    if unknown:
        raise ConfigError(
            f"data.processor_args names unknown processors {sorted(unknown)}; known: {PROCESSORS.names()}"
        )
    processors = {}
    for name in PROCESSORS.names():
        processor = _construct(PROCESSORS.get(name), config.processor_args.get(name, {}), f"data.processor_args.{name}")
        processors[processor.kind] = processor
    return processors


def _construct(factory: Any, kwargs: dict, where: str) -> Any:
    """Call a plug-in's constructor; an unknown argument is an error naming the closest one."""
    if dataclasses.is_dataclass(factory):
        names = [f.name for f in dataclasses.fields(factory)]
    else:
        names = list(inspect.signature(factory).parameters)
    for key in kwargs:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown key {key!r} in {where}{hint}")
    return factory(**kwargs)


def build_tokenizer(config: Config, task: Any):
    """The tokenizer tiny models share: trained on the task's text (deterministic) or the real Qwen2 one."""
    if config.tokenizer.kind == "qwen":
        return qwen_tokenizer()
    return train_bpe_tokenizer(task.corpus(), config.tokenizer.vocab_size)


def build_teacher_tokenizer(config: Config, task: Any, student_tokenizer: Any):
    """A tiny teacher's tokenizer (`teacher.tokenizer`): the student's, a BPE of another size, or a named one."""
    name = config.teacher.tokenizer
    if name == "student":
        return student_tokenizer if student_tokenizer is not None else build_tokenizer(config, task)
    if name == "qwen":
        return qwen_tokenizer()
    if name.startswith("bpe:"):
        return train_bpe_tokenizer(task.corpus(), int(name.partition(":")[2]))
    return load_tokenizer(name)


def build_student_and_tokenizer(config: Config, task: Any) -> tuple[ModelBundle, Any]:
    tokenizer = None if config.student.path else build_tokenizer(config, task)
    student = build_model(config.student, tokenizer, config.data.processor_args.get("image", {}), config.device)
    return student, student.tokenizer


def build_parts(config: Config, run_dir: Path, with_teacher: bool = True) -> Parts:
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    task = build_task(config.data)
    processors = build_processors(config.data)
    student, tokenizer = build_student_and_tokenizer(config, task)
    teacher = teacher_model = None
    if with_teacher:
        if config.teacher.kind == "model":
            teacher_tokenizer = build_teacher_tokenizer(config, task, tokenizer)
            teacher_model = build_teacher_model(config.teacher.model, teacher_tokenizer, config)
        teacher = build_teacher(
            config.teacher,
            student,
            teacher_model,
            processors,
            run_dir,
            config.rollout.temperature,
            config.loss.chunk_size,
        )
    engine = build_engine(config.rollout, student)
    return Parts(config, task, processors, student, teacher, engine, run_dir / "skipped.txt")


def build_teacher_model(spec: ModelConfig, tokenizer: Any, config: Config, trainable: bool = False) -> ModelBundle:
    bundle = build_model(spec, tokenizer, config.data.processor_args.get("image", {}), config.device)
    bundle.model.requires_grad_(trainable)
    return bundle
