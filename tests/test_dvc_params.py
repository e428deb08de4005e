"""dvc.yaml tracks params by key: a key that can change a result reruns its stage, an operational one does not."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Where an output is kept or how it is fetched, never what it is. Every other params.yaml key must be tracked.
OPERATIONAL = {
    "fetch.wheel_cache",
    "fetch.pip_args",
    "synthesize.cache_dir",
    "synthesize.vllm.tensor_parallel_size",
    "synthesize.vllm.gpu_memory_utilization",
    "synthesize.openai.base_urls",
    "synthesize.openai.api_key_env",
    "synthesize.openai.concurrency",
    "synthesize.openai.timeout",
    "synthesize.openai.max_retries",
    # where the generator's server runs: the weights are named by synthesize.openai.model / model_id
    "synthesize.openai.serve.command",
    "synthesize.openai.serve.port",
    "synthesize.openai.serve.startup_timeout",
    "synthesize.openai.serve.log",
    "synthesize.openai_batch.base_url",
    "synthesize.openai_batch.api_key_env",
    "synthesize.openai_batch.completion_window",
    "synthesize.openai_batch.poll_interval",
    "synthesize.openai_batch.max_polls",
    "synthesize.openai_batch.state_dir",
    "synthesize.openai_batch.timeout",
    "synthesize.openai_batch.max_retries",
    "finetune.save_steps",
    "evaluate.cache",
}


def leaf_keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        keys |= leaf_keys(value, path + ".") if isinstance(value, dict) and value else {path}
    return keys


def tracked_params() -> dict[str, list[str]]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    return {name: [p for p in stage.get("params", []) if isinstance(p, str)] for name, stage in stages.items()}


def tracked_by(key: str, params: list[str]) -> bool:
    """DVC's rule: a listed key tracks itself and everything under it."""
    return any(key == p or key.startswith(p + ".") for p in params)


def test_every_params_key_is_tracked_or_declared_operational():
    keys = leaf_keys(yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8")))
    tracked = tracked_params()
    untracked = {key for key in keys if not any(tracked_by(key, params) for params in tracked.values())}
    assert untracked == OPERATIONAL
    for key in OPERATIONAL:
        assert key in keys, f"{key} is no longer in params.yaml: remove it from OPERATIONAL"


@pytest.mark.parametrize(
    ("stage", "key"),
    [
        ("synthesize", "synthesize.sampling.temperature"),
        ("synthesize", "synthesize.dtype"),
        ("synthesize", "synthesize.openai_batch.model"),
        ("finetune", "finetune.learning_rate"),
        ("evaluate", "evaluate.dtype"),
        ("evaluate", "evaluate.backend"),
        ("fetch_model", "fetch.model.revision"),
        ("mix", "mix.filter.min_support"),
    ],
)
def test_result_changing_keys_are_tracked_by_their_stage(stage, key):
    assert tracked_by(key, tracked_params()[stage])


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_dvc_status_reruns_on_result_keys_only(tmp_path):
    """A real DVC repository with the synthesize stage's params list: dvc status after each edit."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"synthesize": params["synthesize"]}), encoding="utf-8")
    stage = {"cmd": "echo ok > out.txt", "params": tracked_params()["synthesize"], "outs": ["out.txt"]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"synthesize": stage}}), encoding="utf-8")

    def dvc(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "dvc", *args], cwd=tmp_path, capture_output=True, text=True, check=True
        )
        return result.stdout

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc("init", "-q")
    dvc("repro", "-q")

    def status_after(key: str, value) -> str:
        edited = yaml.safe_load((tmp_path / "params.yaml").read_text(encoding="utf-8"))
        section = edited
        *parents, leaf = key.split(".")
        for part in parents:
            section = section[part]
        original, section[leaf] = section[leaf], value
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(edited), encoding="utf-8")
        status = dvc("status")
        section[leaf] = original
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(edited), encoding="utf-8")
        return status

    for key, value in [
        ("synthesize.cache_dir", "/elsewhere"),
        ("synthesize.openai.concurrency", 64),
        ("synthesize.openai.timeout", 5),
        ("synthesize.openai_batch.poll_interval", 1),
        ("synthesize.openai_batch.max_polls", 3),
    ]:
        assert "up to date" in status_after(key, value), key
    for key, value in [("synthesize.sampling.temperature", 0.1), ("synthesize.dtype", "bfloat16")]:
        status = status_after(key, value)
        assert "synthesize" in status and "modified" in status, (key, status)
