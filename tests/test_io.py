import json

import pytest

from ctxsynth.core.io import InputError, load_params, read_json, read_jsonl, write_jsonl


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_text('{"instruction": "a", "answer": "b"}\n{"instruction": \n')
    with pytest.raises(InputError, match=r"seeds.jsonl, line 2: malformed JSON"):
        read_jsonl(path, required=("instruction", "answer"))


def test_missing_field_names_file_line_and_field(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_text('{"instruction": "a", "answer": "b"}\n\n{"instruction": "c"}\n')
    with pytest.raises(InputError) as error:
        read_jsonl(path, required=("instruction", "answer"))
    assert (error.value.line, error.value.field) == (3, "answer")
    assert "seeds.jsonl, line 3, field 'answer'" in str(error.value)


def test_non_object_line_is_rejected(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text("[1, 2]\n")
    with pytest.raises(InputError, match="line 1: expected a JSON object"):
        read_jsonl(path)


def test_write_jsonl_is_canonical_and_atomic(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"b": 1, "a": "é"}])
    assert path.read_text(encoding="utf-8") == '{"a": "é", "b": 1}\n'
    with pytest.raises(RuntimeError):
        write_jsonl(path, (dict(a=1) if i == 0 else (_ for _ in ()).throw(RuntimeError("boom")) for i in range(2)))
    # The failed write left the previous complete file in place and no temporary file behind.
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": "é", "b": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


@pytest.mark.parametrize(
    ("name", "content", "read", "where"),
    [
        ("seeds.jsonl", b'{"a": 1}\n{"b": "caf\xe9"}\n', read_jsonl, "line 2: not UTF-8 (byte 0xe9 at column 11)"),
        ("reserved.json", b'{\n "a": "x",\n "b": "\xff"\n}', read_json, "line 3: not UTF-8 (byte 0xff at column 8)"),
        ("params.yaml", b"seed:\n  seed: 4\xc3\n", lambda p: load_params("seed", p), "line 2: not UTF-8"),
    ],
)
def test_non_utf8_input_names_file_line_and_column(tmp_path, name, content, read, where):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError) as error:
        read(path)
    assert str(error.value).startswith(f"{path}, {where}")


def test_bad_yaml_and_a_duplicated_key_are_one_line_errors(tmp_path):
    """`ctxsynth preflight` on broken params.yaml: one line naming the file and line, no parser traceback; a key
    given twice (which DVC refuses) is an error too, not "the last one wins"."""
    from ctxsynth.core.errors import error_line
    from ctxsynth.core.io import read_yaml

    broken = tmp_path / "params.yaml"
    broken.write_text("fetch:\n  model: [unclosed\nmix: {}\n", encoding="utf-8")
    with pytest.raises(InputError) as error:
        read_yaml(broken)
    assert error.value.line == 3 and "not valid YAML" in error_line(error.value)
    duplicated = tmp_path / "dup.yaml"
    duplicated.write_text("mix:\n  seed: 1\nfinetune: {}\nmix:\n  seed: 2\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"line 4.*duplicate key 'mix'"):
        read_yaml(duplicated)


def test_a_byte_order_mark_is_read_not_refused(tmp_path):
    """Windows editors write a UTF-8 byte-order mark; it is not content, and not malformed JSON."""
    lines, whole = tmp_path / "seeds.jsonl", tmp_path / "reserved.json"
    lines.write_bytes(b'\xef\xbb\xbf{"instruction": "a", "answer": "b"}\n')
    whole.write_bytes(b'\xef\xbb\xbf{"ids": []}\n')
    assert read_jsonl(lines, required=("instruction", "answer")) == [{"instruction": "a", "answer": "b"}]
    assert read_json(whole) == {"ids": []}


def test_a_cut_off_line_is_named_at_its_end(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_text('{"instruction": "a", "answer": "b"}\n{"instruction": "c", "answer": ["d"\n')
    with pytest.raises(InputError) as error:
        read_jsonl(path)
    message = str(error.value)
    assert error.value.line == 2 and message.endswith(
        "(cut off at the end of the line, column 36: Expecting ',' delimiter)"
    )
    for ending, reason in (
        ("\n", "the line ends inside a string"),
        ("", "the string opened at column 32 is never closed"),
    ):
        path.write_text('{"instruction": "c", "answer": "a long answ' + ending)  # cut inside a string
        with pytest.raises(InputError) as error:
            read_jsonl(path)
        assert str(error.value).endswith(f"(cut off at the end of the line, column 44: {reason})"), str(error.value)
    path.write_text('{"instruction": "c",, "answer": "d"}\n')  # a bad character inside the line: its column
    with pytest.raises(InputError, match=r"line 1: malformed JSON \(Expecting property name .* at column 21\)"):
        read_jsonl(path)


def test_an_unknown_params_section_is_named_with_a_suggestion(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    from ctxsynth.preflight.params import main

    params = tmp_path / "params.yaml"
    params.write_text("mixx: {variant: none}\n" + (Path(__file__).parents[1] / "params.yaml").read_text())
    monkeypatch.chdir(Path(__file__).parents[1])
    assert main(["--params", str(params)]) == 2
    assert "field 'mixx': unknown section (did you mean 'mix'?" in capsys.readouterr().err


def test_an_unknown_task_is_named_without_stray_quotes(tmp_path):
    from ctxsynth.prepare.seeds import load_jsonl_seeds

    path = tmp_path / "seeds.jsonl"
    path.write_text('{"instruction": "q", "answer": "a", "task": "nope"}\n')
    with pytest.raises(InputError) as error:
        load_jsonl_seeds(path, None)
    assert str(error.value).startswith(f"{path}, line 1, field 'task': unknown task 'nope'; known tasks:"), error.value
