import json

import pytest

from ctxsynth.core.io import InputError, read_jsonl, write_jsonl


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
