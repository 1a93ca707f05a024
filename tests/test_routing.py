"""Multi-teacher routing: which teacher scores a sample, and the routed teachers' configs."""

from __future__ import annotations

import pytest

from mmopd.config import ConfigError, load_config
from mmopd.routing import SINGLE, route_of, routed_configs
from mmopd.sample import Sample
from mmopd.views import SampleError

TEACHERS = "teachers={colour: {view: text}, shape: {view: text, tokenizer: 'bpe:300'}}"


def sample(**meta) -> Sample:
    return Sample(id="s", messages=[], meta=meta)


def test_a_sample_goes_to_the_teacher_its_field_names():
    names = ["colour", "shape"]
    assert route_of(sample(question="shape"), "meta.question", names, "") == "shape"
    assert route_of(sample(question="colour"), "meta.question", names, "shape") == "colour"
    assert route_of(sample(question="size"), "meta.question", names, "shape") == "shape"  # the default
    with pytest.raises(SampleError, match="'s'.*meta.question='size'"):
        route_of(sample(question="size"), "meta.question", names, "")


def test_one_teacher_takes_every_sample():
    config = load_config(None, [])
    assert list(routed_configs(config)) == [SINGLE] and routed_configs(config)[SINGLE] is config
    assert route_of(sample(), "task", [SINGLE], "") == SINGLE


def test_each_routed_config_carries_its_own_teacher_section():
    config = load_config(None, ["runtime=ray", TEACHERS, "routing.by=meta.question"])
    routed = routed_configs(config)
    assert sorted(routed) == ["colour", "shape"]
    assert routed["shape"].teacher.tokenizer == "bpe:300" and routed["colour"].teacher.tokenizer == "student"
    assert routed["shape"].student == config.student and routed["shape"].teachers == {}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ([TEACHERS], "runtime: ray"),
        (["runtime=ray", "teachers={a: {veiw: text}}"], "teachers.a.view"),
        (["runtime=ray", TEACHERS, "routing.default=size"], "routing.default"),
        (["runtime=ray", "routing.by=source"], "routing.by"),
        (["runtime=ray", "teacher.kind=self"], "OPSD"),
        (["ray.hidden_dtype=int8"], "hidden_dtype"),
        (["ray.async_rollouts=true", "ray.max_staleness=0"], "max_staleness"),
    ],
)
def test_bad_ray_and_routing_configs_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
