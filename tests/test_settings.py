"""One settings pattern for every stage: a dataclass per params.yaml section, validated on load, errors naming the
full dotted key; defaults in one place (the dataclass, or the recipe file for finetune); one error path."""

from __future__ import annotations

import ast
import copy
import dataclasses
import inspect
import re
import subprocess
import sys
from pathlib import Path
from typing import get_type_hints

import pytest
import yaml

from ctxsynth.core.errors import StageError, run_reporting_errors, stage_main
from ctxsynth.core.io import InputError
from ctxsynth.core.settings import load_settings
from ctxsynth.core.settings_docs import knobs
from ctxsynth.finetune import recipes
from ctxsynth.finetune.settings import FROM_RECIPE, FinetuneSettings
from ctxsynth.generation.base import GenerationError
from ctxsynth.preflight.params import SECTIONS  # every params section and its settings class
from ctxsynth.prepare import niah
from ctxsynth.prepare.fetch import FetchError
from ctxsynth.prepare.settings import BenchmarkSettings

ROOT = Path(__file__).resolve().parents[1]
# Keys whose dataclass default differs from the value params.yaml ships, and why (each checked below).
DIFFERENCES = {
    # null = niah.yaml's per-subtask needle count (the resource that also holds the needle texts); params.yaml spells
    # the same counts out so that `dvc exp run -S benchmark.niah.needles.multikey=...` has a key to set.
    "benchmark.niah.needles",
}


def shipped() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))


def load(section: str, values) -> object:
    return load_settings(SECTIONS[section], section, values)


def leaf_keys(tree, prefix: str) -> list[str]:
    """Every dotted key under a params mapping (lists are leaves, as DVC sees them)."""
    if not isinstance(tree, dict) or not tree:
        return [prefix]
    return [key for name, value in tree.items() for key in leaf_keys(value, f"{prefix}.{name}")]


def mapping_paths(tree, prefix: str) -> list[str]:
    """Every dotted path in a params section that holds a mapping of settings (where a key can be unknown)."""
    if not isinstance(tree, dict):
        return []
    return [prefix] + [path for name, value in tree.items() for path in mapping_paths(value, f"{prefix}.{name}")]


def set_key(tree: dict, dotted: str, value) -> dict:
    """A deep copy of `tree` with the dotted key (relative to it) set."""
    tree = copy.deepcopy(tree)
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node[part]
    node[leaf] = value
    return tree


def get_key(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


# --- the shipped params -------------------------------------------------------------------------------------------


def test_every_params_section_has_a_settings_class():
    from ctxsynth.core.io import SECTION_NAMES  # what a stage accepts at the top of params.yaml

    assert set(shipped()) == set(SECTIONS) and tuple(SECTIONS) == SECTION_NAMES


@pytest.mark.parametrize("section", SECTIONS)
def test_the_shipped_params_load(section):
    assert isinstance(load_settings(SECTIONS[section], section, source=ROOT / "params.yaml"), SECTIONS[section])


@pytest.mark.parametrize("section", [name for name in SECTIONS if name != "finetune"])
def test_dataclass_defaults_are_the_shipped_values(section):
    """The dataclass is the one place for defaults; params.yaml repeats every key for DVC and must agree."""
    values = shipped()[section]
    for key in DIFFERENCES:
        if key.startswith(section + "."):
            values = set_key(values, key.split(".", 1)[1], None)
    assert load(section, values) == SECTIONS[section]()

    # Every key of the dataclass (nested ones too) is in params.yaml, so DVC tracks it.
    def collapse(keys: list[str]) -> set[str]:  # a documented difference counts as one key
        return {next((k for k in DIFFERENCES if key.startswith(k + ".")), key) for key in keys}

    defaults = dataclasses.asdict(SECTIONS[section]())
    assert collapse(leaf_keys(defaults, section)) == collapse(leaf_keys(shipped()[section], section))


def params_comments() -> dict[str, str]:
    """Dotted key -> the comment on its line in params.yaml (keys with one)."""
    found, stack = {}, []
    for line in (ROOT / "params.yaml").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^(\s*)([A-Za-z_0-9]+):(.*)$", line)
        if match:
            stack = stack[: len(match[1]) // 2] + [match[2]]
            if "#" in match[3]:
                found[".".join(stack)] = match[3].split("#", 1)[1].strip()
    return found


def word_runs(text: str, length: int = 4) -> set[tuple[str, ...]]:
    words = re.findall(r"[\w'.]+", text.lower())
    return {tuple(words[i : i + length]) for i in range(len(words) - length + 1)}


def test_params_yaml_says_why_not_what_a_key_means():
    """What a key means lives beside its field in the settings class (`ctxsynth params` prints it); a comment in
    params.yaml that repeats four words of it in a row is the copy that drifts."""
    meanings = {knob.key: knob.meaning for section, cls in SECTIONS.items() for knob in knobs(cls, section)}
    comments = params_comments()
    assert comments, "params.yaml has no comments to check: the parser above is broken"
    copied = [key for key, comment in comments.items() if word_runs(comment) & word_runs(meanings.get(key, ""))]
    assert not copied, f"params.yaml comments repeating their settings field's comment: {copied}"


# Parameters whose default coincides with a settings default by name and value but is not that setting.
NOT_SETTINGS = {
    "build_stand_in(seed)": "the random weights' seed of a rehearsal student, not synthesize.seed",
    "build_tiny_base_llama(seed)": "the random weights' seed of the tiny test model, not synthesize.seed",
}


def test_no_function_repeats_a_settings_default():
    """A default lives in its settings dataclass only: a backend, runner or builder takes the settings object, or
    the value from its caller, never a default of its own that must be kept equal to the dataclass's (None, "not
    given", is not a default of a setting)."""
    defaults = {
        (knob.key.rsplit(".", 1)[-1], repr(knob.default))
        for section, cls in SECTIONS.items()
        for knob in knobs(cls, section)
        if knob.default is not None
    }
    repeated = []
    for path in (ROOT / "ctxsynth").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            positional = node.args.posonlyargs + node.args.args
            pairs = list(zip(positional[len(positional) - len(node.args.defaults) :], node.args.defaults))
            pairs += [(arg, d) for arg, d in zip(node.args.kwonlyargs, node.args.kw_defaults) if d is not None]
            for arg, default in pairs:
                try:
                    value = ast.literal_eval(default)
                except ValueError:
                    continue
                name = f"{node.name}({arg.arg})"
                if (arg.arg, repr(value)) in defaults and name not in NOT_SETTINGS:
                    repeated.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}={value!r}")
    assert not repeated, "defaults written a second time, outside their settings class:\n" + "\n".join(repeated)


def test_ctxsynth_params_shows_value_default_and_meaning(tmp_path, capsys):
    from ctxsynth.params import main

    assert main(["mix.num_contexts"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("mix.num_contexts = 3\n") and "the relevant context plus n-1" in shown
    changed = tmp_path / "params.yaml"
    changed.write_text(yaml.safe_dump({**shipped(), "mix": {**shipped()["mix"], "num_contexts": 10}}))
    assert main(["--changed", "--params", str(changed), "mix"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "mix.num_contexts = 10   (default 3)"
    with pytest.raises(InputError, match="no knob is named 'mix.nope'"):
        main(["mix.nope"])


def test_documented_differences():
    counts = shipped()["benchmark"]["niah"]["needles"]
    assert BenchmarkSettings().niah.needles is None
    assert counts == {name: niah.texts()["subtasks"][name]["needles"] for name in counts}  # what null gives


def test_finetune_defaults_live_in_the_recipe_file_only():
    params = shipped()["finetune"]
    assert params["recipe"] == FinetuneSettings().recipe == recipes.DEFAULT_RECIPE
    assert all(value is None for key, value in params.items() if key != "recipe")  # null = the recipe's value
    from_recipe = {field.name for field in dataclasses.fields(FinetuneSettings) if field.default is FROM_RECIPE}
    assert set(params) - from_recipe == {
        "recipe",
        "launcher",
        "accelerate_config",
        "chat_template",
    }  # no recipe sets these
    assert set(recipes.recipe_values(recipes.DEFAULT_RECIPE)) == from_recipe  # the default recipe sets every one
    assert load("finetune", params) == FinetuneSettings()
    assert FinetuneSettings(recipe="paper") == FinetuneSettings.from_mapping({"recipe": "paper"})


def test_every_settings_field_says_what_it_means():
    def classes(cls, seen):
        if cls in seen:
            return
        seen.add(cls)
        for hint in get_type_hints(cls).values():
            for inner in [hint, *_type_args(hint)]:
                if dataclasses.is_dataclass(inner):
                    classes(inner, seen)

    seen: set = set()
    for cls in SECTIONS.values():
        classes(cls, seen)
    undocumented = []
    for cls in seen:
        lines = inspect.getsource(cls).splitlines()
        for field in dataclasses.fields(cls):
            index = next(i for i, line in enumerate(lines) if re.match(rf"\s+{field.name}:", line))
            if "#" not in lines[index] and not lines[index - 1].strip().startswith("#"):
                undocumented.append(f"{cls.__name__}.{field.name}")
    assert not undocumented


def _type_args(hint) -> list:
    from typing import get_args

    found = []
    for arg in get_args(hint):
        found += [arg, *_type_args(arg)]
    return found


# --- errors name the dotted key -----------------------------------------------------------------------------------


@pytest.mark.parametrize("section", SECTIONS)
def test_an_unknown_key_is_named(section):
    with pytest.raises(InputError) as error:
        load(section, {**shipped()[section], "no_such_key": 1})
    assert error.value.field == f"{section}.no_such_key" and f"'{section}.no_such_key'" in str(error.value)
    assert "unknown key" in str(error.value)


WRONG_TYPES = {
    "fetch": ("pip_args", "--no-index"),  # a string where a list is expected
    "benchmark": ("seed", "1234"),  # a string where an int is expected
    "seed": ("seed", True),  # bool is not an int
    "general": ("max_paragraph_words", 400.5),
    "synthesize": ("verify", ["enabled"]),  # a list where a mapping is expected
    "lengths": ("tasks", "squad_long"),
    "mix": ("summarization_distractors", "yes"),
    "finetune": ("lora_r", "16"),
    "evaluate": ("apply_chat_template", 1),
}


@pytest.mark.parametrize("section", SECTIONS)
def test_a_wrong_type_is_named(section):
    key, value = WRONG_TYPES[section]
    with pytest.raises(InputError, match="expected") as error:
        load(section, {**shipped()[section], key: value})
    assert error.value.field == f"{section}.{key}" and f"'{section}.{key}'" in str(error.value)


def test_every_key_of_params_yaml_is_type_checked():
    """A value of the wrong type at any key of params.yaml is refused, naming that very key: one loop over every
    key, every key that fails listed in one message."""
    unchecked = []
    for dotted in [key for section in SECTIONS for key in leaf_keys(shipped()[section], section)]:
        section, key = dotted.split(".", 1)
        errors = []
        for value in ("oops", 7):  # no key takes both a string and an integer
            try:
                load(section, set_key(shipped()[section], key, value))
            except InputError as error:
                errors.append(error)
        if not errors or any(error.field != dotted for error in errors):
            unchecked.append(f"{dotted}: {[error.field for error in errors]}")
    assert not unchecked, unchecked


def test_an_unknown_key_is_named_at_any_depth():
    unnamed = []
    for path in [p for section in SECTIONS for p in mapping_paths(shipped()[section], section)]:
        section, *rest = path.split(".")
        values = shipped()[section]
        if rest:
            values = set_key(values, ".".join(rest), {**get_key(values, ".".join(rest)), "no_such_key": 1})
        else:
            values = {**values, "no_such_key": 1}
        try:
            load(section, values)
            unnamed.append(f"{path}: accepted")
        except InputError as error:
            if error.field != f"{path}.no_such_key":
                unnamed.append(f"{path}: named {error.field}")
    assert not unnamed, unnamed


def test_nested_keys_name_the_nested_path():
    values = set_key(shipped()["synthesize"], "sampling.temperature", "hot")
    with pytest.raises(InputError, match=r"field 'synthesize\.sampling\.temperature': expected a number, got 'hot'"):
        load("synthesize", values)
    sources = [{"type": "squad", "count": 3}, {"type": "hotpotqa", "count": "all"}]
    with pytest.raises(InputError, match=r"field 'seed\.sources\[1\]\.count'"):
        load("seed", {"sources": sources})
    with pytest.raises(InputError, match=r"field 'fetch\.data\.files\.squad\.sha256'"):
        load("fetch", set_key(shipped()["fetch"], "data.files.squad.sha256", 5))


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("synthesize.method", "context_synthesis_v2"),
        ("synthesize.backend", "tgi"),
        ("mix.variant", "niah_medium"),
        ("evaluate.backend", "tgi"),
        ("finetune.method", "adapter"),
        ("finetune.launcher", "torchrun"),
        ("fetch.model.source", "s3"),
        ("benchmark.niah.subtasks", ["single", "multi"]),
        ("mix.niah.subtasks", ["haystack"]),
    ],
)
def test_a_value_outside_the_allowed_set_is_an_error(dotted, value):
    section, key = dotted.split(".", 1)
    with pytest.raises(InputError, match="expected one of") as error:
        load(section, set_key(shipped()[section], key, value))
    assert error.value.field.startswith(dotted)


def test_checks_across_keys_name_the_key_to_fix():
    with pytest.raises(InputError, match=r"field 'seed\.sources\[0\]\.path': required for a jsonl source"):
        load("seed", {"sources": [{"type": "jsonl", "task": "hotpotqa"}]})
    with pytest.raises(InputError, match=r"field 'mix\.general': give mix\.general\.count or mix\.general\.ratio"):
        load("mix", {"general": {"source": "x.jsonl", "count": 3, "ratio": 1.0}})
    with pytest.raises(InputError, match=r"field 'fetch\.model\.id': required when source is hub"):
        load("fetch", {"model": {"source": "hub"}})
    with pytest.raises(InputError, match=r"field 'lengths\.tasks\[1\]': unknown task 'nope'"):
        load("lengths", {"tasks": ["squad_long", "nope"]})
    with pytest.raises(
        InputError, match=r"field 'finetune\.batch_size': packing with flash_attention_2 needs batch_siz"
    ):
        load("finetune", {"recipe": "paper", "batch_size": 2})
    with pytest.raises(InputError, match=r"field 'synthesize\.response_prefix': backend openai talks to a chat-comp"):
        load("synthesize", {"backend": "openai"})  # the default prefix: refused by the preflight, not a traceback
    with pytest.raises(InputError, match=r"field 'synthesize\.sampling\.repetition_penalty': not an OpenAI Batch"):
        load("synthesize", {"backend": "openai-batch", "response_prefix": ""})
    with pytest.raises(InputError, match=r"field 'fetch\.model\.stand_in': expected one of llama-3\.1-8b, longal"):
        load("fetch", {"model": {"source": "stand_in", "stand_in": "gpt-2"}})


def test_types_are_checked_not_converted():
    # An integer is a number, and stays the integer it was written as: sampling values are hashed into cache keys.
    sampling = load("synthesize", {"sampling": {"temperature": 1, "top_p": 1}}).sampling.as_dict()
    assert sampling["temperature"] == 1 and type(sampling["temperature"]) is int
    with pytest.raises(InputError, match=r"'general\.seed': expected an integer, got True"):
        load("general", {"seed": True})
    with pytest.raises(InputError, match=r"'synthesize\.response_prefix': expected a string, got null"):
        load("synthesize", {"response_prefix": None})
    assert load("general", {"count": None}).count is None  # `int | None` takes null


def test_legacy_benchmark_niah_single_still_builds_niah_single():
    settings = load("benchmark", {"niah_single": {"lengths": [30], "depths": [0.5], "samples": 2}})
    assert settings.niah.subtasks == ["single"] and settings.niah.lengths == [30] and settings.niah.samples == 2


def test_every_experiment_of_the_plan_loads():
    """Each row of experiments/paper.yaml, applied to params.yaml as `dvc exp run -S` does, is valid settings."""
    plan = yaml.safe_load((ROOT / "experiments" / "paper.yaml").read_text(encoding="utf-8"))
    checked = 0
    for group in plan["groups"].values():
        for scale in ("cpu", "gpu"):
            common = (group["overrides"] or {}).get(scale) or {}
            for row in group["rows"].values():
                own = row.get(scale) if row and set(row) <= {"cpu", "gpu"} else row
                if own is None:
                    continue
                params = shipped()
                for dotted, value in {**common, **own}.items():
                    params = set_key(params, dotted, value)
                for section, cls in SECTIONS.items():
                    load_settings(cls, section, params[section])
                checked += 1
    assert checked > 10


# --- one error path -----------------------------------------------------------------------------------------------


def test_expected_errors_are_one_line_and_exit_2(capsys):
    def failing(error):
        def main():
            raise error

        return main

    assert run_reporting_errors(failing(InputError("params.yaml", "bad", field="seed.x"))) == 2
    assert capsys.readouterr().err == "error: params.yaml, field 'seed.x': bad\n"
    assert run_reporting_errors(failing(FetchError("could not download\npip said no"))) == 2
    assert capsys.readouterr().err == "error: could not download | pip said no\n"
    assert run_reporting_errors(failing(GenerationError("retries exhausted")), GenerationError) == 2
    assert capsys.readouterr().err == "error: retries exhausted\n"
    assert issubclass(FetchError, StageError) and issubclass(FetchError, RuntimeError)
    assert issubclass(GenerationError, StageError)  # a stage expects it without naming it
    assert run_reporting_errors(failing(GenerationError("x"))) == 2
    capsys.readouterr()
    with pytest.raises(ValueError):  # not a domain error: a bug, with its traceback
        run_reporting_errors(failing(ValueError("x")))
    with pytest.raises(KeyError):
        run_reporting_errors(failing(KeyError("x")))
    assert run_reporting_errors(lambda: None) == 0 and run_reporting_errors(lambda: 3) == 3

    @stage_main(GenerationError)
    def stage(argv=None):
        raise GenerationError("batch failed")

    assert stage([]) == 2 and capsys.readouterr().err == "error: batch failed\n"


def test_a_stage_with_a_bad_key_prints_one_error_line(tmp_path):
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"seed": {"seed": 42, "sources": [{"type": "squad", "count": 2}], "sede": 1}}), encoding="utf-8"
    )
    result = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "seed.py")], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "'seed.sede'" in lines[0]
    assert "did you mean 'seed'" in lines[0] and result.stdout == ""


@pytest.mark.parametrize("script", sorted((ROOT / "stages").glob("*.py")), ids=lambda path: path.name)
def test_every_stage_uses_the_one_error_path(script):
    tree = ast.parse(script.read_text(encoding="utf-8"))
    main = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main")
    decorators = [ast.unparse(decorator) for decorator in main.decorator_list]
    assert any(decorator.startswith("stage_main") for decorator in decorators), decorators
    assert "SystemExit(" not in script.read_text(encoding="utf-8")
    text = script.read_text(encoding="utf-8")
    # preflight loads every section through collect_problems, which lists every problem instead of the first
    assert ("load_settings(" in text or "collect_problems(" in text) and "load_params(" not in text


def test_no_library_module_exits_with_a_message():
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("core", "prepare", "generation", "synthesis", "mix", "finetune", "evaluate")
        for path in (ROOT / "ctxsynth" / package).rglob("*.py")
        if re.search(r"SystemExit\(\s*f?[\"']", path.read_text(encoding="utf-8"))
    ]
    assert not offenders


def test_a_stage_reading_finetunes_chat_template_gets_the_settings_default_and_a_type_check(tmp_path):
    from ctxsynth.core.chat import configured_chat_template

    params = tmp_path / "params.yaml"
    params.write_text("finetune:\n  recipe: cpu\n", encoding="utf-8")
    assert configured_chat_template("finetune", params) == FinetuneSettings().chat_template
    params.write_text("finetune:\n  chat_template: null\n", encoding="utf-8")  # null: the default, as params.yaml ships
    assert configured_chat_template("finetune", params) == FinetuneSettings().chat_template
    shipped_value = load_settings(FinetuneSettings, "finetune", source=ROOT / "params.yaml").chat_template
    assert configured_chat_template("finetune", ROOT / "params.yaml") == shipped_value
    params.write_text("finetune:\n  chat_template: longalign\n", encoding="utf-8")
    assert configured_chat_template("finetune", params) == "longalign"
    params.write_text("finetune:\n  chat_template: 3\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"finetune\.chat_template.*expected"):
        configured_chat_template("finetune", params)
