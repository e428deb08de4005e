"""`ctxsynth preflight`: every params.yaml section through its settings class, and every file a parameter names
checked to exist and to be a declared dependency of the stage that reads it, in seconds and before any stage runs.
Unlike a stage, which stops at its first bad input, preflight lists every problem it finds.

    ctxsynth preflight [--params params.yaml]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from ctxsynth.core.dvc_deps import pipeline_stages, producing_stage, require_tracked
from ctxsynth.core.errors import error_line
from ctxsynth.core.hub import is_local
from ctxsynth.core.io import InputError, read_json, read_jsonl_numbered, read_yaml
from ctxsynth.core.settings import load_settings
from ctxsynth.evaluate.run import find_sources
from ctxsynth.evaluate.settings import EvalSettings
from ctxsynth.finetune.settings import FinetuneSettings
from ctxsynth.generation import api_key
from ctxsynth.mix.general_source import LOCAL_SUFFIXES as GENERAL_SUFFIXES
from ctxsynth.mix.general_source import load_general
from ctxsynth.mix.long_sft import LOCAL_SUFFIXES as LONG_SFT_SUFFIXES
from ctxsynth.mix.long_sft import load_long_sft
from ctxsynth.mix.settings import PRIOR_LONG, MixSettings
from ctxsynth.prepare.seeds import load_source
from ctxsynth.prepare.settings import BenchmarkSettings, FetchSettings, GeneralSettings, SeedSettings
from ctxsynth.synthesis.release_files import load_release
from ctxsynth.synthesis.settings import LengthsSettings, SynthesizeSettings

SECTIONS: dict[str, type] = {
    "fetch": FetchSettings,
    "benchmark": BenchmarkSettings,
    "seed": SeedSettings,
    "general": GeneralSettings,
    "synthesize": SynthesizeSettings,
    "lengths": LengthsSettings,
    "mix": MixSettings,
    "finetune": FinetuneSettings,
    "evaluate": EvalSettings,
}


def named_inputs(settings: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(stage, params key, path) for every file or directory that the settings name."""
    for index, source in enumerate(settings["seed"].sources):
        if source.path:
            yield "seed", f"seed.sources[{index}].path", source.path
    model = settings["fetch"].model
    if model.source == "path" and model.path:
        yield "fetch_model", "fetch.model.path", model.path
    synthesize = settings["synthesize"]
    if synthesize.generator:
        yield "synthesize", "synthesize.generator", synthesize.generator
    if synthesize.verify.judge_model:
        yield "synthesize", "synthesize.verify.judge_model", synthesize.verify.judge_model
    if synthesize.backend == "released" and is_local(synthesize.released.source):  # a hub id is read online
        yield "synthesize", "synthesize.released.source", synthesize.released.source
        for index, name in enumerate(synthesize.released.files):
            yield "synthesize", f"synthesize.released.files[{index}]", os.path.join(synthesize.released.source, name)
    general = settings["mix"].general.source
    if general and is_local(general, GENERAL_SUFFIXES):
        yield "mix", "mix.general.source", general
    mix = settings["mix"]
    if mix.variant == PRIOR_LONG and mix.long_source.source and is_local(mix.long_source.source, LONG_SFT_SUFFIXES):
        yield "mix", "mix.long_source.source", mix.long_source.source  # a hub id is read online
    # evaluate.longbench_dir and its task files: checked by the evaluate stage's own find_sources (below)


# The keys whose named input is a local model directory (named_inputs yields them with the others).
MODEL_KEYS = ("fetch.model.path", "synthesize.generator", "synthesize.verify.judge_model")


def content_checks(settings: dict[str, Any]) -> Iterator[Callable[[], object]]:
    """The stages' own loaders over every user file a parameter names, so that a malformed line, a non-UTF-8 byte or
    an unknown task stops the pipeline here, before any stage removes its outputs. Files a stage of the pipeline
    builds (data/general/train.jsonl) are read by that stage, not here."""
    for index, source in enumerate(settings["seed"].sources):
        if source.type in ("paper", "jsonl"):  # squad, hotpotqa: the registry data, checked by its sha256
            yield partial(load_source, source, Path("data/raw"), f"seed.sources[{index}]")
    mix = settings["mix"]
    general = mix.general.source
    if general and is_local(general, GENERAL_SUFFIXES) and not producing_stage(general):
        yield lambda: load_general(mix.general, 0, mix.seed)
    if mix.variant == PRIOR_LONG and mix.long_source.source and is_local(mix.long_source.source, LONG_SFT_SUFFIXES):
        yield lambda: load_long_sft(mix.long_source, mix.seed)
    synthesize = settings["synthesize"]
    if synthesize.backend == "released" and is_local(synthesize.released.source):
        yield lambda: load_release(synthesize.released)
    evaluate = settings["evaluate"]
    if evaluate.longbench_dir:
        for task, path in find_sources(Path("data/benchmark"), evaluate):
            if task in evaluate.longbench_tasks:
                yield partial(read_jsonl_numbered, path)
    for _, key, directory in named_inputs(settings):
        if key in MODEL_KEYS:
            yield partial(read_model_config, directory, key)


def read_model_config(directory: str, key: str) -> None:
    """A local model's config.json read as transformers will read it: a missing, broken or unknown one stops here,
    in one line, not in a traceback hours into a run. The weights are read by the stage that loads them."""
    config = Path(directory) / "config.json"
    data = read_json(config)  # missing or malformed: InputError naming the file and line
    if not isinstance(data, dict) or not data.get("model_type"):
        raise InputError(config, "no model_type: not a Hugging Face model config", field=key)


def environment_checks(settings: dict[str, Any]) -> Iterator[Callable[[], object]]:
    """What the chosen backend needs from this machine's environment: the API key variable its settings name."""
    synthesize = settings["synthesize"]
    if synthesize.backend == "openai":
        yield lambda: api_key(synthesize.openai.api_key_env, "synthesize.openai.api_key_env")
    if synthesize.backend == "openai-batch":
        yield lambda: api_key(synthesize.openai_batch.api_key_env, "synthesize.openai_batch.api_key_env")


def collect_problems(params_path: Path, check_environment: bool = True) -> tuple[list[str], int]:
    """(one line per problem, how many named files were checked). `check_environment`: also what this machine's
    environment must hold for the run (off where the run happens elsewhere: a row's preflight on a planning
    machine)."""
    problems: list[str] = []

    def attempt(check: Callable[[], Any]) -> Any:
        try:
            return check()
        except InputError as error:
            problems.append(error_line(error))
            return None

    if attempt(lambda: read_yaml(params_path) or {}) is None:  # unreadable or not YAML: said once
        return problems, 0
    settings = {name: attempt(partial(load_settings, cls, name, source=params_path)) for name, cls in SECTIONS.items()}
    checked = 0
    if all(value is not None for value in settings.values()):
        for stage, key, path in named_inputs(settings):
            checked += 1
            # A pipeline output (data/general/train.jsonl) is built later in the same `dvc repro`: not there yet.
            attempt(partial(require_tracked, path, stage, key, str(params_path), built_by_pipeline=True))
        if settings["evaluate"].longbench_dir:  # the directory, its place in dvc.yaml and every task file
            checked += 1
            attempt(lambda: find_sources(Path("data/benchmark"), settings["evaluate"]))
        if not problems:  # every named file is there and tracked: now what is in it
            for check in content_checks(settings):
                attempt(check)
        for check in environment_checks(settings) if check_environment else ():
            attempt(check)
    return list(dict.fromkeys(problems)), checked  # a file-wide problem (an unknown section) is said once


def inputs_by_stage(params_path: Path, pipeline: Path = Path("dvc.yaml")) -> dict[str, list[str]]:
    """The files and directories the settings name, by the stage that reads them; every stage of `pipeline` (the
    preflight aside) is listed, with no inputs where it reads none named by a parameter. Valid params only."""
    settings: dict[str, Any] = {name: load_settings(cls, name, source=params_path) for name, cls in SECTIONS.items()}
    found: dict[str, set[str]] = {name: set() for name in pipeline_stages(pipeline) if name != "preflight"}
    for stage, _, path in named_inputs(settings):
        found.setdefault(stage, set()).add(path)
    if settings["evaluate"].longbench_dir:
        found.setdefault("evaluate", set()).add(settings["evaluate"].longbench_dir)
    return {stage: sorted(paths) for stage, paths in sorted(found.items())}


def warnings(params_path: Path) -> list[str]:
    """Settings that are valid but almost always a mistake."""
    found = []
    finetune = load_settings(FinetuneSettings, "finetune", source=params_path)
    evaluate = load_settings(EvalSettings, "evaluate", source=params_path)
    if evaluate.apply_chat_template and finetune.chat_template != evaluate.chat_template:
        found.append(
            f"warning: finetune.chat_template is {finetune.chat_template!r} but evaluate.chat_template is "
            f"{evaluate.chat_template!r}: the model would be asked in another format than it was trained in"
        )
    model = load_settings(FetchSettings, "fetch", source=params_path).model
    if model.source == "hub" and not re.fullmatch(r"[0-9a-f]{40}", model.revision or ""):
        found.append(
            f"warning: fetch.model.revision is {model.revision!r}, not a commit sha: the same params can mean other "
            "weights once the hub moves (the commit it resolves to is recorded in data/model/provenance.json)"
        )
    synthesize = load_settings(SynthesizeSettings, "synthesize", source=params_path)
    mix = load_settings(MixSettings, "mix", source=params_path)
    general, long_source, released = mix.general, mix.long_source, synthesize.released
    hub_data = []  # (key, dataset id, revision, where the commit read is recorded)
    if general.source and not is_local(general.source, GENERAL_SUFFIXES):
        hub_data.append(("mix.general.revision", general.source, general.revision, "metrics/mix.json"))
    if mix.variant == PRIOR_LONG and long_source.source and not is_local(long_source.source, LONG_SFT_SUFFIXES):
        hub_data.append(("mix.long_source.revision", long_source.source, long_source.revision, "metrics/mix.json"))
    if synthesize.backend == "released" and not is_local(released.source):
        hub_data.append(("synthesize.released.revision", released.source, released.revision, "metrics/synthesize.json"))
    for key, source, revision, recorded_in in hub_data:
        if not re.fullmatch(r"[0-9a-f]{40}", revision or ""):
            found.append(
                f"warning: {key} is {revision!r}, not a commit sha: the hub dataset {source} can change under the "
                f"same params (the commit it resolves to is recorded in {recorded_in})"
            )
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    problems, checked = collect_problems(args.params)
    for line in problems:
        print(line, file=sys.stderr)
    for line in warnings(args.params) if not problems else []:
        print(line, file=sys.stderr)
    if problems:
        return 2
    print(f"preflight: {args.params} is valid ({len(SECTIONS)} sections); {checked} named inputs exist and are tracked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
