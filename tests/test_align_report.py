"""`mmopd align`: the JSON report partitions both token lists over the text's bytes; bad input exits non-zero."""

from __future__ import annotations

import json

import pytest

from mmopd.align import byte_table
from mmopd.cli import main
from mmopd.tokenizers import load_tokenizer

TEXT = "Tokyo 🗼 数字 12345\n\n  x = [1, 2]"


def run_json(capsys, *args):
    assert main(["align", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(("student", "teacher"), [("qwen2", "mistral-v3"), ("tekken", "mistral-v1")])
def test_json_report_partitions_both_sides(capsys, student, teacher):
    report = run_json(capsys, "--student", student, "--teacher", teacher, "--text", TEXT)
    assert report["coverage"] == 1.0 and 0 < report["one_to_one"] < 1 and report["shared_vocab"] > 1000
    chunks, data = report["chunks"], TEXT.encode()
    for side, count, name in (("student", "student_tokens", student), ("teacher", "teacher_tokens", teacher)):
        assert [i for chunk in chunks for i in chunk[side]] == list(range(report[count]))
        table, ids = byte_table(load_tokenizer(name)), report[f"{side}_ids"]
        for chunk in chunks:
            start, end = chunk["bytes"]
            assert table.join([ids[i] for i in chunk[side]]) == data[start:end]
    assert chunks[0]["bytes"][0] == 0 and chunks[-1]["bytes"][1] == len(data)


def test_sampled_student_ids_with_end_of_turn(capsys):
    qwen = load_tokenizer("qwen2")
    ids = [qwen.convert_tokens_to_ids(t) for t in ["H", "i", "Ġ", "ðŁ", "Ĺ", "¼"]] + [qwen.eos_token_id]
    args = ["--student", "qwen2", "--teacher", "mistral-v1", "--text", "Hi 🗼"]
    report = run_json(capsys, *args, "--student-ids", ",".join(map(str, ids)))
    assert report["student_ids"] == ids and report["chunks"][0] == {"student": [0, 1], "teacher": [0], "bytes": [0, 2]}
    assert report["chunks"][-1]["bytes"] == [7, 7]
    assert report["teacher_ids"][-1] == load_tokenizer("mistral-v1").eos_token_id
    assert main(["align", *args, "--student-ids", ",".join(map(str, ids))]) == 0
    table = capsys.readouterr().out
    assert "<|im_end|>" in table and "</s>" in table and "2:1" in table and "coverage 100%" in table


def test_bad_input_exits_with_a_clear_error(capsys, tmp_path):
    bad_file = tmp_path / "bad.txt"
    bad_file.write_bytes(b"ok \xff")
    cases = [
        (["--student", "gpt5", "--teacher", "qwen2", "--text", "x"], "unknown tokenizer 'gpt5'"),
        (["--student", "qwen2", "--teacher", "tekken", "--text", "x", "--student-ids", "1,999999999"], "out of range"),
        (["--student", "qwen2", "--teacher", "tekken", "--text", "x", "--student-ids", "1,a"], "comma-separated"),
        (["--student", "qwen2", "--teacher", "tekken", "--text", "xy", "--student-ids", "87"], "not the text's bytes"),
        (["--student", "qwen2", "--teacher", "tekken", "--file", str(bad_file)], "bad.txt is not valid UTF-8"),
        (["--student", "qwen2", "--teacher", "tekken", "--file", str(tmp_path / "missing.txt")], "missing.txt"),
    ]
    for args, message in cases:
        assert main(["align", *args]) == 2
        assert message in capsys.readouterr().err
