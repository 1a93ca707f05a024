"""The README tells the truth: its quick start, Makefile targets, CI, commands, file tree and examples work."""

from __future__ import annotations

import contextlib
import functools
import io
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from mmopd.cli import _parser, main
from mmopd.config import field_docs, load_config
from mmopd.registry import Registry

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@functools.cache
def cli_parser():
    return _parser()  # builds the --help text of every config field, so it is made once


def code_blocks(text: str = README) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block, in order."""
    return [(match.group(1), match.group(2)) for match in FENCE.finditer(text)]


def section(heading: str) -> str:
    """The README text under the first heading that contains `heading`, up to the next heading
    (lines starting with `#` inside code blocks are not headings)."""
    lines, inside_fence, start = README.splitlines(keepends=True), False, None
    for index, line in enumerate(lines):
        if line.startswith("```"):
            inside_fence = not inside_fence
        elif not inside_fence and re.match(r"#+ ", line):
            if start is not None:
                return "".join(lines[start:index])
            if heading in line:
                start = index + 1
    assert start is not None, f"README has no heading containing {heading!r}"
    return "".join(lines[start:])


def mmopd_commands() -> list[list[str]]:
    """Every `mmopd ...` command line in the README's shell blocks, as argv without the program name."""
    commands = []
    for language, body in code_blocks():
        if language not in ("", "bash", "sh", "shell", "console"):
            continue
        for line in body.splitlines():
            words = shlex.split(line.strip().removeprefix("$ "))
            while words and ENV_ASSIGNMENT.match(words[0]):
                words = words[1:]  # `PYTHONPATH=. mmopd ...`
            if words and words[0] == "mmopd":
                commands.append(words[1:])
    return commands


def makefile_recipe(target: str) -> list[str]:
    """The recipe lines of `target` in the Makefile, with $(BIN) and $(VENV) expanded."""
    text = (ROOT / "Makefile").read_text()
    match = re.search(rf"^{re.escape(target)}:[^\n]*\n((?:\t[^\n]*\n?)+)", text, re.MULTILINE)
    assert match, f"the Makefile has no {target!r} target with a recipe"
    return [
        line.strip().replace("$(BIN)", ".venv/bin").replace("$(VENV)", ".venv") for line in match.group(1).splitlines()
    ]


def test_quick_start_is_make_demo_then_make_test() -> None:
    blocks = code_blocks(section("Quick start"))
    assert blocks, "the Quick start section has no code block"
    _, body = blocks[0]
    assert [line.strip() for line in body.splitlines() if line.strip()] == ["make demo", "make test"]


@pytest.mark.parametrize("target, command", [("demo", "mmopd demo"), ("test", "pytest")])
def test_makefile_target_runs_the_command(target: str, command: str) -> None:
    assert any(command in line for line in makefile_recipe(target)), makefile_recipe(target)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("target, command", [("demo", "mmopd demo"), ("test", "-m pytest")])
def test_make_dry_run_reaches_the_command(target: str, command: str) -> None:
    # --no-print-directory: under `make test` this runs as a sub-make, which would announce its directory.
    result = subprocess.run(
        ["make", "-n", "--no-print-directory", target], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    last_line = result.stdout.strip().splitlines()[-1]
    assert command in last_line, result.stdout


def test_ci_runs_make_test() -> None:
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "make test" in [line for line in lines if line and not line.startswith("#")]


def test_readme_shows_mmopd_commands() -> None:
    subcommands = {argv[0] for argv in mmopd_commands() if argv}
    assert {"train", "sft", "eval", "demo"} <= subcommands


@pytest.mark.parametrize("argv", mmopd_commands(), ids=lambda argv: " ".join(argv)[:60])
def test_readme_command_parses_and_its_config_loads(argv: list[str]) -> None:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()) as stderr:
        try:
            args = cli_parser().parse_args(argv)
        except SystemExit as exit_:
            assert exit_.code == 0 and ("--help" in argv or "-h" in argv), stderr.getvalue()
            help_text = stdout.getvalue()
            assert all(name in help_text for name, *_ in field_docs()), "--help must list every config field"
            return
    if args.command in ("align", "bench"):  # they read no config; `align` is quick enough to run
        assert args.command == "bench" or main(argv) == 0
        return
    config_path = getattr(args, "config", None)
    if config_path is not None:
        assert (ROOT / config_path).is_file(), f"{config_path} does not exist in the repository"
        load_config(ROOT / config_path, args.overrides)
    else:
        load_config(ROOT / "configs" / "demo.yaml", args.overrides)


def test_config_paths_named_in_the_readme_exist() -> None:
    named = set(re.findall(r"configs/[\w./-]+\.yaml", README))
    assert named
    missing = sorted(path for path in named if not (ROOT / path).is_file())
    assert not missing, f"README names configs that do not exist: {missing}"


def test_file_tree_lists_real_files() -> None:
    blocks = [body for _, body in code_blocks(section("Files"))]
    assert blocks, "the Files section has no code block"
    parents: list[str] = []
    listed = []
    for line in blocks[0].splitlines():
        if not line.strip():
            continue
        name, _, comment = line.strip().partition("#")
        assert comment.strip(), f"file tree line without a comment: {line!r}"
        depth = (len(line) - len(line.lstrip())) // 2
        parents = parents[:depth]
        path = "".join(parents) + name.strip()
        if path.endswith("/"):
            parents.append(name.strip())
        listed.append(path)
    missing = [path for path in listed if not (ROOT / path).exists()]
    assert not missing, f"the README's file tree lists paths that do not exist: {missing}"
    assert "mmopd/trainer.py" in listed and "tests/test_readme.py" in listed


def python_block_after(heading: str) -> str:
    blocks = [body for language, body in code_blocks(section(heading)) if language == "python"]
    assert blocks, f"no python block under {heading!r}"
    return blocks[0]


def lines_of_code(code: str) -> int:
    return sum(1 for line in code.splitlines() if line.strip() and not line.strip().startswith("#"))


def test_add_a_processor_example_works(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import numpy as np
    import soundfile

    from mmopd.sample import MediaRef

    code = python_block_after("Add a processor")
    assert lines_of_code(code) <= 10
    registry = Registry("processors")
    monkeypatch.setattr("mmopd.registry.PROCESSORS", registry)
    exec(compile(code, "README.md", "exec"), {})
    soundfile.write(tmp_path / "tone.wav", np.zeros(1600, dtype=np.float32), 16_000)
    processor = registry.get("audio")()
    waveform = processor.load(MediaRef(kind="audio", path="tone.wav", root=str(tmp_path)), "sample-1")
    assert processor.kind == "audio" and waveform.shape == (1600,)


def test_add_a_task_example_works(monkeypatch: pytest.MonkeyPatch) -> None:
    code = python_block_after("Add a task")
    assert lines_of_code(code) <= 10
    registry = Registry("tasks")
    monkeypatch.setattr("mmopd.registry.TASKS", registry)
    exec(compile(code, "README.md", "exec"), {})
    # The README runs it with configs/debug.yaml, whose task_args it must accept.
    task = registry.get("parity")(**load_config(ROOT / "configs" / "debug.yaml").data.task_args)
    train, held_out = task.train_samples(), task.eval_samples()
    assert train and held_out and not {s.id for s in train} & {s.id for s in held_out}
    assert all(task.verify(sample.answer + ".", sample) for sample in held_out)
    assert not task.verify("maybe", held_out[0])
    corpus = set(task.corpus())
    assert all(sample.privileged in corpus and sample.answer in corpus for sample in train)


def test_jsonl_example_is_a_valid_line(tmp_path: Path) -> None:
    from mmopd.tasks.jsonl import load_samples

    blocks = [body for language, body in code_blocks(section("Data format")) if language == "json"]
    assert blocks, "the Data format section has no json block"
    (tmp_path / "train.jsonl").write_text(blocks[0])
    (sample,) = load_samples(tmp_path / "train.jsonl")
    assert sample.images and sample.privileged and sample.answer
    assert sample.images[0].root == str(tmp_path)  # media paths resolve against the file's directory
