"""`ctxsynth inputs`: the paper's seeds and LongBench checked, copied with SOURCE.json, and tracked by DVC."""

import json
import subprocess
import sys
import zipfile

import pytest

from ctxsynth.core.io import InputError, sha256_file
from ctxsynth.inputs import LONGBENCH_TASKS
from ctxsynth.inputs import main as inputs_main


def _seed_release(root):
    for name, rows in {
        "hotpotqa": [("Who built the mill?", "Anna Rell")],
        "qmsum": [("What was agreed?", "a vote")],
    }.items():
        (root / "seed_instruction").mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"instruction": q, "answer": a}) for q, a in rows]
        (root / "seed_instruction" / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    (root / "seed_context").mkdir()
    (root / "seed_context" / "hotpotqa.jsonl").write_text(json.dumps({"context": "Anna Rell built the mill."}) + "\n")
    return root


def _longbench_zip(path, broken_task=None):
    with zipfile.ZipFile(path, "w") as archive:
        for task in LONGBENCH_TASKS:
            doc = {"_id": f"{task}-0", "input": "Who?", "context": "Ola did.", "answers": ["Ola"], "dataset": task}
            if task == broken_task:
                doc["answers"] = "Ola"  # a string, not a list
            archive.writestr(f"data/{task}.jsonl", json.dumps(doc) + "\n")
    return path


def test_seeds_are_checked_copied_and_described(tmp_path, capsys):
    release, dest = _seed_release(tmp_path / "release"), tmp_path / "inputs" / "seeds" / "context_synthesis"
    assert inputs_main(["seeds", str(release), "--revision", "abc123", "--dest", str(dest), "--no-dvc"]) == 0
    source = json.loads((dest / "SOURCE.json").read_text())
    assert source["revision"] == "abc123" and set(source["files"]) == {
        "seed_context/hotpotqa.jsonl",
        "seed_instruction/hotpotqa.jsonl",
        "seed_instruction/qmsum.jsonl",
    }
    assert source["files"]["seed_instruction/qmsum.jsonl"] == sha256_file(dest / "seed_instruction" / "qmsum.jsonl")
    assert "2 seeds, 1 with a human context" in capsys.readouterr().out


def test_longbench_zip_with_a_bad_record_stops_before_anything_is_copied(tmp_path):
    archive = _longbench_zip(tmp_path / "data.zip", broken_task="qmsum")
    dest = tmp_path / "LongBench"
    with pytest.raises(InputError) as error:
        inputs_main(["longbench", str(archive), "--revision", "r1", "--dest", str(dest), "--no-dvc"])
    assert "qmsum.jsonl" in str(error.value) and "answers" in str(error.value)
    assert not dest.exists()


def test_longbench_zip_with_the_wrong_sha256_is_refused(tmp_path):
    archive = _longbench_zip(tmp_path / "data.zip")
    with pytest.raises(InputError, match="sha256"):
        inputs_main(["longbench", str(archive), "--revision", "r1", "--sha256", "0" * 64, "--no-dvc"])


def test_longbench_is_tracked_by_dvc_inside_the_declared_input_directory(tmp_path, monkeypatch):
    """The copy lands under inputs/longbench (an evaluate dep) as its own .dvc-tracked directory."""
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.chdir(repo)
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], check=True)
    archive = _longbench_zip(tmp_path / "data.zip")
    assert inputs_main(["longbench", str(archive), "--revision", "r1", "--sha256", sha256_file(archive)]) == 0
    assert (repo / "inputs" / "longbench" / "LongBench.dvc").is_file()
    assert "/LongBench" in (repo / "inputs" / "longbench" / ".gitignore").read_text()
    assert len(list((repo / "inputs" / "longbench" / "LongBench" / "data").glob("*.jsonl"))) == 8
