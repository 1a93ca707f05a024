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
import mmopd.processors.audio  # noqa: F401  (registers the built-in processors)
import mmopd.processors.image  # noqa: F401
import mmopd.processors.video  # noqa: F401
import mmopd.tasks.jsonl  # noqa: F401  (registers the built-in tasks)
import mmopd.tasks.motion  # noqa: F401
import mmopd.tasks.shapes  # noqa: F401
import mmopd.tasks.tones  # noqa: F401
from mmopd.config import Config, ConfigError, DataConfig, ModelConfig
from mmopd.cross_teacher import CrossTokenizerTeacher
from mmopd.evaluate import evaluate
from mmopd.models import ModelBundle, build_model, go_offline, is_hub_id, qwen_tokenizer, train_bpe_tokenizer
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
        bundle,
        samples,
        messages_for,
        task.verify,
        processors,
        config.eval.batch_size,
        config.eval.max_new_tokens,
        config.eval.group_by,
    )


def report_skip(path: Path | None, reason: str) -> None:
    """Skipped samples are listed, with why, in `skipped.txt` of the run directory."""
    if path is not None:
        with open(path, "a") as handle:
            handle.write(reason + "\n")


def build_network_policy(config: Any) -> None:
    """Go offline unless some model of the config (at any depth) names a hub model."""
    models = []
    pending = [config]
    while pending:
        node = pending.pop()
        if isinstance(node, ModelConfig):
            models.append(node)
        elif dataclasses.is_dataclass(node):
            pending += [getattr(node, f.name) for f in dataclasses.fields(node)]
    if not any(is_hub_id(model.path) for model in models):
        go_offline()


def build_task(config: DataConfig) -> Any:
    factory = TASKS.get(config.task)
    kwargs = dict(config.task_args)
    if "on_error" in inspect.signature(factory).parameters:
        kwargs.setdefault("on_error", config.on_error)  # a task that can keep bad records follows data.on_error
    return _construct(factory, kwargs, f"data.task_args (task {config.task!r})")


def build_processors(config: DataConfig, teacher_args: dict | None = None) -> dict[str, Any]:
    """The processor serving each media kind: every registered processor serves its own `kind` (the one
    registered under the kind's name first), and `data.processors` maps a kind to another one.
    `teacher_args` (teacher.processor_args) override data.processor_args argument by argument, so a
    teacher can read the media with its own sampling policy."""
    teacher_args = teacher_args or {}
    names = PROCESSORS.names()
    chosen = dict(config.processors)
    for where, args in (("data.processor_args", config.processor_args), ("teacher.processor_args", teacher_args)):
        unknown = set(args) - set(names) - set(chosen.values())
        if unknown:
            raise ConfigError(f"{where} names unknown processors {sorted(unknown)}; known: {PROCESSORS.names()}")
    built = {}
    for name in sorted({*names, *chosen.values()}):
        try:
            factory = PROCESSORS.get(name)
        except (KeyError, ImportError, AttributeError) as error:
            raise ConfigError(f"data.processors: {error}") from error
        args = {**config.processor_args.get(name, {}), **teacher_args.get(name, {})}
        where = "teacher.processor_args" if name in teacher_args else "data.processor_args"
        built[name] = _construct(factory, args, f"{where}.{name}")
    serving: dict[str, str] = {}
    for name in sorted(names, key=lambda name: name != built[name].kind):
        serving.setdefault(built[name].kind, name)
    serving.update(chosen)
    return {kind: built[name] for kind, name in serving.items()}


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
    build_network_policy(config)
    task = build_task(config.data)
    processors = build_processors(config.data)
    student, tokenizer = build_student_and_tokenizer(config, task)
    teacher = teacher_model = None
    if with_teacher:
        if config.teacher.kind == "model":
            teacher_tokenizer = build_teacher_tokenizer(config, task, tokenizer)
            teacher_model = build_teacher_model(config.teacher.model, teacher_tokenizer, config)
        teacher_processors = build_processors(config.data, config.teacher.processor_args)
        teacher = build_teacher(
            config.teacher,
            student,
            teacher_model,
            teacher_processors,
            run_dir,
            config.rollout.temperature,
            config.loss.chunk_size,
        )
        if isinstance(teacher, CrossTokenizerTeacher):
            # What the teacher cannot score is never sampled, as media placeholders are not (contract 6).
            student.unscorable = teacher.unscorable_ids(student.stop_ids())
    engine = build_engine(config.rollout, student)
    return Parts(config, task, processors, student, teacher, engine, run_dir / "skipped.txt")


def build_teacher_model(spec: ModelConfig, tokenizer: Any, config: Config, trainable: bool = False) -> ModelBundle:
    image_args = {**config.data.processor_args.get("image", {}), **config.teacher.processor_args.get("image", {})}
    bundle = build_model(spec, tokenizer, image_args, config.device)
    bundle.model.requires_grad_(trainable)
    return bundle
