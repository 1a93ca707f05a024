"""The command line: overrides may follow options; stray tokens are refused."""

import pytest

from mmopd.cli import parse


def test_overrides_after_options_are_kept_in_order():
    args = parse(
        ["train", "configs/debug.yaml", "train.steps=2", "--run-dir", "runs/x", "train.steps=3", "loss.beta=0.1"]
    )
    assert args.overrides == ["train.steps=2", "train.steps=3", "loss.beta=0.1"]
    assert str(args.run_dir) == "runs/x"


def test_demo_takes_overrides_after_run_dir():
    args = parse(["demo", "--run-dir", "runs/x", "train.steps=3"])
    assert args.overrides == ["train.steps=3"] and args.config is None


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "configs/debug.yaml", "--bogus"],
        ["train", "configs/debug.yaml", "--run-dir", "x", "notanoverride"],
        ["align", "--student", "qwen2", "--teacher", "qwen2", "--text", "a", "x=1"],
    ],
)
def test_stray_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err
