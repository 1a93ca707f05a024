"""Every default of mmopd, as frozen nested dataclasses with one docstring per field: the whole `Config`, its
cross-section checks, YAML loading and `--help`. The sections live in `config_sections.py` (models, data,
teacher, rollout, loss) and `config_runtime.py` (schedule, eval, warm-ups, Ray, offline); this module
re-exports them. YAML → dataclasses (an unknown key is an error naming the closest one) → `a.b=value`
overrides; the field docstrings double as `--help` (read from each class's source, as litgpt does).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmopd.config_runtime import (  # noqa: F401  (re-exported)
    EvalConfig,
    LearnerConfig,
    OfflineConfig,
    RayConfig,
    RoutingConfig,
    SFTConfig,
    TrainConfig,
    WarmupConfig,
)
from mmopd.config_sections import (  # noqa: F401  (re-exported: the config's sections)
    ConfigError,
    DataConfig,
    LossConfig,
    ModelConfig,
    RolloutConfig,
    TeacherConfig,
    TokenizerConfig,
    check_privileged_template,
    check_tokenizer_name,
    template_fields,
)


@dataclass(frozen=True)
class Config:
    student: ModelConfig = field(default_factory=ModelConfig)
    """The student model."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """Tokenizer of tiny models."""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """The teacher and what it sees."""
    data: DataConfig = field(default_factory=DataConfig)
    """Task and media handling."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Student sampling."""
    loss: LossConfig = field(default_factory=LossConfig)
    """The distillation objective."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The optimisation loop."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Held-out evaluation."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Supervised fine-tuning (`mmopd sft`, the demo's teacher warm-up)."""
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    """What `mmopd recipe` fine-tunes before training (teachers, student)."""
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    """The learner group: torch.distributed ranks that hold the student and its optimizer."""
    runtime: str = "local"
    """local (one process) | ray (teacher and rollout actor pools on a Ray cluster; see the `ray` section)."""
    ray: RayConfig = field(default_factory=RayConfig)
    """The Ray runtime: cluster, pools, transport, async pipeline, faults."""
    teachers: dict = field(default_factory=dict)
    """runtime ray: several teachers by name, each a `teacher` section (its own model, tokenizer and view);
    each sample goes to one by `routing`. Empty: the one `teacher`."""
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    """Which of `teachers` scores a sample."""
    device: str = "cpu"
    """cpu | cuda | auto."""
    offline: OfflineConfig = field(default_factory=OfflineConfig)
    """Offline OPD: train from a store of rollouts and teacher signal collected once (no live teacher)."""

    def __post_init__(self):
        if self.runtime not in ("local", "ray"):
            raise ConfigError(f"runtime must be local or ray, got {self.runtime!r}")
        if self.learner.world_size > 1 and self.runtime != "ray":
            raise ConfigError("learner.world_size > 1 runs the learner ranks as Ray actors; set runtime: ray")
        check_teachers(self)
        check_completion_sources(self)
        if self.teacher.signal == "sampled" and self.loss.kind not in ("policy_gradient", "cross_entropy"):
            raise ConfigError("teacher.signal=sampled carries no distribution; use loss.kind=policy_gradient")
        if self.teacher.head_sharding == "vocab":
            check_vocab_sharding(self)
        check_rewards(self)
        if self.offline.store:
            check_offline(self)


def check_rewards(config: Config) -> None:
    """Verifier rewards, GRPO groups and teacher-free runs: their sizes and the runtime that serves them."""
    loss, where = config.loss, "teacher.kind=none"
    if config.train.batch_size % config.rollout.group_size:
        raise ConfigError(
            f"train.batch_size ({config.train.batch_size}) must be a multiple of rollout.group_size "
            f"({config.rollout.group_size})"
        )
    if config.teacher.kind == "none" and (loss.kind != "policy_gradient" or loss.teacher_weight != 0):
        raise ConfigError(f"{where} has no teacher to learn from; set loss.kind=policy_gradient loss.teacher_weight=0")
    if config.teacher.kind == "none" and loss.reward_weight == 0:
        raise ConfigError(f"{where} with loss.reward_weight=0 has nothing to learn from; set loss.reward_weight > 0")
    if loss.teacher_weight == 0 and loss.reward_weight == 0:
        raise ConfigError("loss.teacher_weight and loss.reward_weight are both 0: the advantage is always 0")
    rl = loss.reward_weight > 0 or config.rollout.group_size > 1 or config.teacher.kind == "none"
    rl = rl or any((section or {}).get("kind") == "none" for section in config.teachers.values())
    if rl and config.runtime != "local":
        raise ConfigError(
            "verifier rewards (loss.reward_weight, rollout.group_size, teacher.kind=none) run with runtime local"
        )
    if loss.reward_weight > 0 and config.teacher.kind == "model" and config.teacher.tokenizer != "student":
        raise ConfigError(
            "loss.reward_weight > 0 needs the student's tokenizer for the teacher; set teacher.tokenizer=student"
        )


def check_offline(config: Config) -> None:
    """An offline store holds one teacher's signal on the student's tokens, for the local runtime."""
    if config.runtime != "local" or config.teachers:
        raise ConfigError("offline.store trains in one process from one teacher's store; set runtime: local")
    if config.teacher.kind != "model":
        raise ConfigError("offline.store holds a separate teacher's signal; set teacher.kind=model")
    if config.teacher.tokenizer != "student":
        raise ConfigError("offline.store holds signal on the student's tokens; set teacher.tokenizer=student")
    if config.rollout.on_policy_fraction != 1 or config.loss.kind == "cross_entropy":
        raise ConfigError(
            "offline.store holds the student's own rollouts and their teacher signal; set "
            "rollout.on_policy_fraction=1 and loss.kind to divergence or policy_gradient"
        )
    if config.loss.reward_weight or config.rollout.group_size > 1:
        raise ConfigError(
            "offline.store trains on stored teacher signal only; set loss.reward_weight=0 rollout.group_size=1"
        )


def check_completion_sources(config: Config) -> None:
    """Off-policy completions (rollout.on_policy_fraction < 1) and the cross_entropy loss: what runs them."""
    mixed, cross_entropy = config.rollout.on_policy_fraction < 1.0, config.loss.kind == "cross_entropy"
    if config.runtime == "ray" and (mixed or cross_entropy):
        raise ConfigError(
            "runtime ray samples every completion with the student and scores it with the teacher; "
            "rollout.on_policy_fraction < 1 and loss.kind=cross_entropy run with runtime local"
        )
    if cross_entropy and not mixed:
        raise ConfigError(
            "loss.kind=cross_entropy with rollout.on_policy_fraction=1 trains on the student's own samples with no "
            "teacher signal; lower on_policy_fraction (0: SFT on off_policy_source) or pick another loss.kind"
        )
    if mixed and config.loss.kind == "policy_gradient":
        raise ConfigError(
            "loss.kind=policy_gradient needs the sampling policy's logprobs, which off-policy completions lack; "
            "use loss.kind=divergence or cross_entropy with rollout.on_policy_fraction < 1"
        )
    teacher = config.teacher
    if (
        mixed
        and config.rollout.off_policy_source == "teacher"
        and teacher.kind == "self"
        and teacher.self_weights == "frozen"
    ):
        raise ConfigError(
            "rollout.off_policy_source=teacher samples from the OPSD teacher with live weights only; "
            "set teacher.self_weights=live or off_policy_source=answers"
        )


def check_vocab_sharding(config: Config) -> None:
    """teacher.head_sharding=vocab splits the teacher's head over learner ranks: it needs several ranks, the
    hidden signal, and the student's tokenizer."""
    where = "teacher.head_sharding=vocab"
    if config.learner.world_size < 2:
        raise ConfigError(f"{where} splits the teacher head over learner ranks; set learner.world_size >= 2")
    if config.teacher.signal != "hidden":
        raise ConfigError(f"{where} shards the head of the hidden signal; set teacher.signal=hidden")
    if config.teacher.tokenizer != "student" and not config.teacher.model.path:
        raise ConfigError(f"{where} needs the student's tokenizer; set teacher.tokenizer=student")


def check_teachers(config: Config) -> None:
    """`teachers` entries are teacher sections (checked like `teacher`); routing needs the Ray runtime."""
    if config.runtime == "ray" and config.teacher.kind == "self":
        raise ConfigError(
            "runtime ray serves teachers of kind model; an OPSD teacher (kind self) runs with runtime local"
        )
    if not config.teachers:
        return
    if config.runtime != "ray":
        raise ConfigError("several teachers (`teachers`) need runtime: ray")
    for name, section in config.teachers.items():
        teacher = from_dict(TeacherConfig, section or {}, f"teachers.{name}")
        if teacher.signal == "sampled" and config.loss.kind != "policy_gradient":
            raise ConfigError(f"teachers.{name}: signal=sampled carries no distribution; use loss.kind=policy_gradient")
    if config.routing.default and config.routing.default not in config.teachers:
        raise ConfigError(
            f"routing.default {config.routing.default!r} is not one of teachers {sorted(config.teachers)}"
        )


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass `cls` from nested dicts; an unknown key is an error naming the closest field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {(where + '.' if where else '') + close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {path!r}{hint}")
        kwargs[key] = _coerce(hints[key], value, path)
    return cls(**kwargs)


def _coerce(kind: Any, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(kind):
        return from_dict(kind, value or {}, path)
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{path} must be true or false, got {value!r}")
    if kind is float and isinstance(value, str):
        # YAML 1.1 reads "5e-3" (no dot) as a string.
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{path} must be float, got {value!r}") from None
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind in (int, float, str) and not isinstance(value, kind):
        raise ConfigError(f"{path} must be {kind.__name__}, got {value!r}")
    if kind is dict and not isinstance(value, dict):
        raise ConfigError(f"{path} must be a mapping, got {value!r}")
    return value


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """YAML file (optional) + `a.b=value` overrides → a validated `Config`."""
    tree: dict[str, Any] = {}
    if path is not None:
        tree = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r} is not of the form a.b=value")
        key, raw = override.split("=", 1)
        _set_path(tree, key.strip(), yaml.safe_load(raw) if raw else "")
    return from_dict(Config, tree)


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def field_docs(cls: type = Config, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(dotted name, type, default, docstring) for every leaf field, for `--help`."""
    docs = _docstrings(cls)
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(hints[f.name]):
            rows += _nested_docs(hints[f.name], default, name + ".")
        else:
            rows.append((name, getattr(hints[f.name], "__name__", str(hints[f.name])), default, docs.get(f.name, "")))
    return rows


def _nested_docs(cls: type, default: Any, prefix: str) -> list[tuple[str, str, Any, str]]:
    rows = field_docs(cls, prefix)
    # A nested default (e.g. the teacher's ModelConfig) may differ from the class defaults.
    return [(name, kind, _get_path(default, name[len(prefix) :]), doc) for name, kind, _, doc in rows]


def _get_path(obj: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        obj = getattr(obj, key)
    return obj


def _docstrings(cls: type) -> dict[str, str]:
    """A class's field docstrings: the string literal right under each annotated field."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs
