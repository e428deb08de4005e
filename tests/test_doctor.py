"""`ctxsynth doctor` on this CPU: the checks with a CPU form pass, each CUDA-only one is skipped by name, and a
check fails, with its numbers, when the path it guards is broken (packed samples that see each other, an adapter
saved wrong)."""

from __future__ import annotations

import json

import pytest

from ctxsynth.doctor.checks import FAIL, PASS, SKIPPED, run_check
from ctxsynth.doctor.numerics import packing_checks
from ctxsynth.doctor.run import main
from ctxsynth.doctor.training import training_checks

# The checks with a CPU form (train.qlora too where bitsandbytes is installed, as in the `quant` extra).
CPU_FORMS = {"train.lora", "train.full", "packing.sdpa", "packing.eager"}
CPU_FORMS |= {"generation.continuous_batching", "generation.merged_adapter"}


def test_the_doctor_passes_on_cpu_and_skips_each_cuda_check_by_name(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this test describes the CPU run")
    out = tmp_path / "doctor.json"
    assert main(["--out", str(out)]) == 0
    report = json.loads(out.read_text())
    checks = report["checks"]
    assert {name for name, check in checks.items() if check["status"] == PASS} >= CPU_FORMS
    skipped = {name: check["detail"] for name, check in checks.items() if check["status"] == SKIPPED}
    assert skipped["engine.vllm"] == "no CUDA device" and skipped["engine.deepspeed_zero3"] == "no CUDA device"
    assert all(reason.endswith(("not installed", "no CUDA device", ")")) for reason in skipped.values()), skipped
    assert report["device"].startswith("cpu") and "torch" in report["versions"]
    assert not [name for name, check in checks.items() if check["status"] == FAIL]
    assert "doctor: " in capsys.readouterr().out


def test_packed_rows_without_restarting_positions_fail_the_packing_check(tmp_path, monkeypatch):
    from ctxsynth.finetune import packing

    original = packing.PackedCollator.__call__

    def no_restarts(self, features):
        import torch

        batch = original(self, features)
        width = batch["input_ids"].shape[1]
        batch["position_ids"] = torch.arange(width).expand_as(batch["input_ids"]).clone()  # one long sequence
        return batch

    monkeypatch.setattr(packing.PackedCollator, "__call__", no_restarts)
    (sdpa,) = [check for check in packing_checks(tmp_path) if check.name == "packing.sdpa"]
    result = run_check(sdpa)
    assert result.status == FAIL and "packed samples see each other" in result.detail
    alone, packed = result.numbers["alone"], result.numbers["packed"]
    assert alone[0] == pytest.approx(packed[0]) and alone[1:] != pytest.approx(packed[1:], rel=1e-4)


def test_an_adapter_saved_wrong_fails_the_reload_check(tmp_path, monkeypatch):
    import peft
    from safetensors.torch import load_file, save_file

    original = peft.PeftModel.save_pretrained

    def zeroed_b(self, save_directory, *args, **kwargs):  # the LoRA B matrices lost on the way to disk
        original(self, save_directory, *args, **kwargs)
        path = f"{save_directory}/adapter_model.safetensors"
        tensors = {k: v * 0 if "lora_B" in k else v for k, v in load_file(path).items()}
        save_file(tensors, path, metadata={"format": "pt"})

    monkeypatch.setattr(peft.PeftModel, "save_pretrained", zeroed_b)
    (lora,) = [check for check in training_checks(tmp_path) if check.name == "train.lora"]
    result = run_check(lora)
    assert result.status == FAIL and "reloads to other logits" in result.detail
    assert result.numbers["max_abs_diff"] > 1e-3
