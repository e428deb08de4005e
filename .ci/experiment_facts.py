"""What must not depend on where an experiment ran, as JSON: per named experiment, its scores (metrics/eval.json
without library versions), its training losses and counts (metrics/train.json without timings), the md5 of every
data output in its dvc.lock, and its row as the report collected it (metrics/results.json: scores per document, the
mix's counts, NIAH cells). Used by .ci/slurm-expectations to compare Slurm runs with the local queue's."""

import json
import subprocess
import sys

import yaml

TRAINING_FACTS = ("first_loss", "final_loss", "mean_loss", "samples_used", "target_tokens", "steps")
REPORT_FACTS = ("eval", "per_document", "test_documents", "mix", "niah", "overrides")


def ref_of(name: str) -> str:
    refs = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname)", "refs/exps"], text=True, capture_output=True, check=True
    ).stdout.split()
    matches = [ref for ref in refs if ref.rsplit("/", 1)[-1] == name]
    if len(matches) != 1:
        sys.exit(f"experiment_facts: {len(matches)} experiments named {name}")
    return matches[0]


def show(ref: str, path: str) -> str:
    return subprocess.run(["git", "show", f"{ref}:{path}"], text=True, capture_output=True, check=True).stdout


def facts(name: str) -> dict:
    ref = ref_of(name)
    evaluation = json.loads(show(ref, "metrics/eval.json"))
    training = json.loads(show(ref, "metrics/train.json"))
    lock = yaml.safe_load(show(ref, "dvc.lock"))["stages"]
    outputs = {
        out["path"]: out.get("md5")
        for stage in lock.values()
        for out in stage.get("outs") or []
        if out["path"].startswith("data/") and "checkpoints" not in out["path"]
    }
    collected = json.load(open("metrics/results.json", encoding="utf-8"))["experiments"].get(name) or {}
    return {
        "report": {key: collected.get(key) for key in REPORT_FACTS},
        "eval": {key: evaluation[key] for key in ("base", "finetuned", "delta")},
        "train": {key: training.get(key) for key in TRAINING_FACTS},
        "outputs": outputs,
    }


print(json.dumps({name: facts(name) for name in sys.argv[1:]}, indent=1, sort_keys=True))
