"""Multi-teacher routing: each sample goes, by one of its fields, to one of several named teachers.

Each teacher keeps its own model, tokenizer and view (a math teacher reading text, a video teacher reading
frames); the routed config of a teacher is the run's config with that `teacher` section, so every builder
reads it unchanged. With no `teachers`, the run's one teacher is the route "teacher".
"""

from __future__ import annotations

from dataclasses import replace

from mmopd.config import Config, TeacherConfig, from_dict
from mmopd.sample import Sample
from mmopd.views import SampleError

SINGLE = "teacher"


def routed_configs(config: Config) -> dict[str, Config]:
    """The run's config for each teacher, by name."""
    if not config.teachers:
        return {SINGLE: config}
    return {
        name: replace(config, teacher=from_dict(TeacherConfig, section or {}, f"teachers.{name}"), teachers={})
        for name, section in sorted(config.teachers.items())
    }


def route_of(sample: Sample, by: str, names: list[str], default: str) -> str:
    """The teacher that scores `sample`: the value of its field `by` (task: always `default`) when it names one."""
    if len(names) == 1:
        return names[0]
    value = sample.meta.get(by.removeprefix("meta.")) if by.startswith("meta.") else None
    if value in names:
        return value
    if default:
        return default
    raise SampleError(f"sample {sample.id!r}: {by}={value!r} names none of the teachers {names} (set routing.default)")
