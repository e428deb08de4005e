"""The vllm evaluation backend, without vllm: a fake module stands in for lm-eval's vllm model (never run in CI)."""

import importlib.machinery
import json
import sys
import types

import pytest

from ctxsynth.core.io import InputError
from ctxsynth.evaluate import lm_eval_runner
from ctxsynth.evaluate.lm_eval_runner import LmEvalRunner, LmEvalTask, render_task_dir
from ctxsynth.evaluate.settings import EvalSettings


class Built(Exception):
    """Raised by the fake model once it has recorded its arguments: nothing is generated."""


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.__spec__ = importlib.machinery.ModuleSpec("vllm", None)  # find_spec("vllm") sees an installed package
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    built = []

    class FakeVLLM:
        def __init__(self, **kwargs):
            built.append(kwargs)
            raise Built

    module = types.ModuleType("lm_eval.models.vllm_causallms")
    module.VLLM = FakeVLLM
    monkeypatch.setitem(sys.modules, "lm_eval.models.vllm_causallms", module)
    return built


def write_adapter(directory, rank):
    directory.mkdir()
    (directory / "adapter_config.json").write_text(json.dumps({"r": rank, "peft_type": "LORA"}))
    return directory


def runner(tmp_path):
    task = LmEvalTask("niah_single", tmp_path / "niah_single.jsonl", 32)
    return LmEvalRunner(render_task_dir([task], tmp_path / "tasks", 1)), [task]


def test_vllm_gets_the_lora_adapter_window_and_middle_truncation(fake_vllm, tmp_path):
    adapter = write_adapter(tmp_path / "adapter", rank=24)
    lm_runner, tasks = runner(tmp_path)
    with pytest.raises(Built):
        settings = EvalSettings(backend="vllm", batch_size=4, dtype="auto")
        lm_runner.run(tmp_path / "model", tasks, settings, adapter_dir=adapter, max_length=8192)
    with pytest.raises(Built):
        lm_runner.run(tmp_path / "model", tasks, EvalSettings(backend="vllm"), adapter_dir=None, max_length=4096)
    assert fake_vllm == [
        {
            "pretrained": str(tmp_path / "model"),
            "dtype": "auto",
            "batch_size": 4,
            "max_model_len": 8192,
            "truncation_side": "middle",
            "seed": 0,
            "lora_local_path": str(adapter),
            "max_lora_rank": 32,
        },
        {
            "pretrained": str(tmp_path / "model"),
            "dtype": "auto",
            "batch_size": 1,
            "max_model_len": 4096,
            "truncation_side": "middle",
            "seed": 0,
        },
    ]


def test_vllm_missing_or_unknown_backend_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(lm_eval_runner.importlib.util, "find_spec", lambda name: None)
    lm_runner, tasks = runner(tmp_path)
    with pytest.raises(RuntimeError, match="vllm package is not installed.*evaluate.backend: hf"):
        lm_runner.run(tmp_path / "model", tasks, EvalSettings(backend="vllm"), max_length=4096)
    with pytest.raises(ValueError, match="unknown backend"):
        lm_runner.run(tmp_path / "model", tasks, EvalSettings(backend="tgi"), max_length=4096)
    with pytest.raises(InputError) as error:
        EvalSettings.from_params({"backend": "tgi"})
    assert error.value.field == "evaluate.backend"
    assert EvalSettings.from_params({"backend": "vllm"}).backend == "vllm"
