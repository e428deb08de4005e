"""The experiment plan, the queue commands it produces, and the report rendered from collected results."""

import json
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from ctxsynth.core.io import InputError
from ctxsynth.paper.collect import experiments_from_show, merge_experiments, planned_names
from ctxsynth.paper.experiments import (
    hydra_value,
    load_plan,
    planned_runs,
    queue_command,
    record_run,
    run_history,
    select_rows,
)
from ctxsynth.paper.report import render

ROOT = Path(__file__).resolve().parents[1]
PLAN = ROOT / "experiments" / "paper.yaml"


def test_every_planned_override_names_an_existing_param_and_parses_back():
    """`dvc exp run -S` refuses keys absent from params.yaml, and the rendered value must parse to the YAML value."""
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    parser = OverridesParser.create()
    plan = load_plan(PLAN)
    checked = 0
    for group in plan["groups"]:
        for scale in ("cpu", "gpu"):
            for name, overrides in planned_runs(plan, group, scale):
                assert name.startswith(f"{scale}-{group}-")
                for key, value in overrides.items():
                    node = params
                    for part in key.split("."):
                        assert isinstance(node, dict) and part in node, f"{name}: {key} is not in params.yaml"
                        node = node[part]
                    parsed = parser.parse_overrides([f"{key}={hydra_value(value)}"])[0].value()
                    assert parsed == value, (key, value, parsed)
                    checked += 1
    assert checked > 50


def test_cpu_groups_the_issue_requires_have_their_rows():
    plan = load_plan(PLAN)
    pilot = dict(planned_runs(plan, "pilot", "cpu"))
    assert [o["mix.variant"] for o in pilot.values()] == ["none", "niah_needle_only", "niah_short", "niah_long"]
    main = dict(planned_runs(plan, "main", "cpu"))
    assert {o["mix.variant"] for o in main.values()} >= {"none", "context_synthesis", "human_context", "context_free"}
    assert any(o.get("synthesize.method") == "instruction_synthesis" for o in main.values())
    # rows split by scale exist only where defined
    assert [n for n, _ in planned_runs(plan, "generator", "cpu")] == ["cpu-generator-smollm2-135m"]


def test_queue_command_quotes_what_needs_quoting():
    command = queue_command(
        "cpu-main-x",
        {
            "synthesize.response_prefix": "",
            "evaluate.tasks": ["a", "b"],
            "mix.general.count": None,
            "fetch.data.version": "26.3",
        },
    )
    assert command[:6] == ["dvc", "exp", "run", "--queue", "-n", "cpu-main-x"]
    assert "synthesize.response_prefix=''" in command and "evaluate.tasks=[a,b]" in command
    assert "mix.general.count=null" in command and "fetch.data.version='26.3'" in command


def _eval(overall, tasks, base=10.0):
    return {
        "finetuned": {"overall": overall, "tasks": tasks},
        "base": {"overall": base, "tasks": {t: base for t in tasks}},
    }


def _niah_cells(model, values):
    return [
        {"model": model, "subtask": s, "length": n, "depth": d, "recall": values[(s, n)]}
        for (s, n) in values
        for d in (0.0, 1.0)
    ]


def _fake_show():
    subtasks = ("single", "multikey", "multiquery", "multivalue")
    pilot = {"sft1-general": 10.0, "sft2-needle-only": 20.0, "sft3-short-haystack": 60.0, "sft4-long-haystack": 80.0}
    revs, files = [], {}
    for index, (row, value) in enumerate(pilot.items()):
        tasks = {f"niah_{s}": value + (15.0 if s == "multivalue" and row.startswith("sft4") else 0.0) for s in subtasks}
        revs.append(
            {
                "rev": f"{index:040x}",
                "name": f"cpu-pilot-{row}",
                "data": {"timestamp": None, "metrics": {"metrics/eval.json": {"data": _eval(value, tasks, 30.0)}}},
            }
        )
        cells = _niah_cells("finetuned", {(s, n): value for s in subtasks for n in (500, 2000)})
        cells += _niah_cells("base", {(s, n): 30.0 for s in subtasks for n in (500, 2000)})
        files[f"{index:040x}"] = cells
    main = {
        "general-only": 5.0,
        "instruction-synthesis": 8.0,
        "instruction-synthesis-no-context": 8.5,
        "context-synthesis": 20.0,
        "human-context": 22.0,
        "context-free": 6.0,
    }
    for index, (row, value) in enumerate(main.items(), start=10):
        revs.append(
            {
                "rev": f"{index:040x}",
                "name": f"cpu-main-{row}",
                "data": {
                    "metrics": {
                        "metrics/eval.json": {"data": _eval(value, {"squad_long": value})},
                        "metrics/train.json": {"data": {"steps": 3, "final_loss": 1.0}},
                    }
                },
            }
        )
    revs.append({"rev": "f" * 40, "name": "someone-elses-experiment", "data": {"metrics": {"x": {"data": {}}}}})
    return [
        {"rev": "workspace", "experiments": None},
        {"rev": "a" * 40, "experiments": [{"revs": [rev]} for rev in revs]},
    ], files


def test_report_collects_planned_experiments_and_computes_verdicts(tmp_path):
    show, files = _fake_show()
    plan = load_plan(PLAN)
    experiments = experiments_from_show(show, planned_names(plan), read_file=lambda rev, path: files.get(rev))
    assert len(experiments) == 10 and "someone-elses-experiment" not in experiments
    results = {
        "plan_version": 1,
        "scales": plan["scales"],
        "experiments": experiments,
        "runs": {},
        "groups": {g: {"finding": s["finding"], "title": s["title"]} for g, s in plan["groups"].items()},
        "context_lengths": [
            {"words": 0, "synthesized": 0.5, "evaluation": 0.0},
            {"words": 100, "synthesized": 0.5, "evaluation": 1.0},
        ],
    }
    text = render(json.loads(json.dumps(results)), tmp_path / "figures")
    # the pilot: SFT1 (10) below base (30) at 2000 words; SFT2 < SFT3; SFT4 best, largest gain on multivalue
    assert (
        "**F1a** general data alone falls below the base model on long haystacks: "
        "at 2000 words SFT1 10.00 vs base 30.00 → **holds**" in text
    )
    assert "**F1e**" in text and "multivalue +35.00" in text
    assert "**F2a** context synthesis beats instruction synthesis: 20.00 vs 8.00 → **holds**" in text
    # coherence: IS gap -0.50 is below CS gap 14 and human gap 16
    assert "| instruction synthesis | 8.00 | 8.50 | -0.50 |" in text
    assert "**F5**" in text and "**F3** (contexts): **not measured**" in text
    assert "| + context synthesis | 20.00 | 20.00 | 33.42 | 38.57 |" in text  # ours beside the paper's
    for name in ("niah_base.png", "niah_sft4-long-haystack.png", "tasks_main.png", "context_lengths.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 1000


def test_a_finding_that_does_not_reproduce_is_reported_as_such(tmp_path):
    show, files = _fake_show()
    for rev in show[1]["experiments"]:
        data = rev["revs"][0]
        if data["name"] == "cpu-main-context-synthesis":
            data["data"]["metrics"]["metrics/eval.json"]["data"] = _eval(1.0, {"squad_long": 1.0})
    plan = load_plan(PLAN)
    results = {
        "scales": plan["scales"],
        "runs": {},
        "context_lengths": None,
        "experiments": experiments_from_show(show, planned_names(plan), read_file=lambda r, p: files.get(r)),
        "groups": {g: {"finding": s["finding"], "title": s["title"]} for g, s in plan["groups"].items()},
    }
    text = render(results, tmp_path)
    assert "context synthesis beats instruction synthesis: 1.00 vs 8.00 → **does not hold**" in text


@pytest.mark.parametrize("value", ["", "0.1.2", "26.3", "null", "a b", "it's", 3, 2.5, True, None, ["x", "y z"], []])
def test_hydra_values_round_trip(value):
    parsed = OverridesParser.create().parse_overrides([f"k={hydra_value(value)}"])[0].value()
    assert parsed == value


def test_rows_still_running_or_failed_are_not_collected():
    show, files = _fake_show()
    entries = show[1]["experiments"]
    entries[0]["executor"] = {"state": "running"}
    entries[1]["executor"] = {"state": "failed"}
    entries[2]["executor"] = {"state": "success"}
    found = experiments_from_show(show, planned_names(load_plan(PLAN)), read_file=lambda r, p: files.get(r))
    assert "cpu-pilot-sft1-general" not in found and "cpu-pilot-sft2-needle-only" not in found
    assert "cpu-pilot-sft3-short-haystack" in found and len(found) == 8


def test_collecting_keeps_stored_rows_whose_refs_are_gone_and_lets_new_runs_win():
    planned = planned_names(load_plan(PLAN))
    general, context = planned["cpu-main-general-only"], planned["cpu-main-context-synthesis"]
    stored = {
        "cpu-main-general-only": {**general, "eval": {"finetuned": {"overall": 1.0}}},  # refs gone: kept
        "cpu-main-context-synthesis": {**context, "eval": {"finetuned": {"overall": 2.0}}},  # rerun: replaced
        "cpu-main-human-context": {
            **planned["cpu-main-human-context"],
            "overrides": {"mix.variant": "old"},
            "eval": {"finetuned": {"overall": 3.0}},
        },  # plan changed: dropped
        "cpu-retired-row": {**general, "row": "retired", "eval": {}},  # not planned: dropped
    }
    found = {"cpu-main-context-synthesis": {**context, "eval": {"finetuned": {"overall": 20.0}}}}
    merged = merge_experiments(stored, found, planned)
    assert list(merged) == ["cpu-main-general-only", "cpu-main-context-synthesis"]
    assert merged["cpu-main-general-only"]["eval"]["finetuned"]["overall"] == 1.0
    assert merged["cpu-main-context-synthesis"]["eval"]["finetuned"]["overall"] == 20.0


def test_rows_can_be_selected_and_an_unknown_row_is_an_error():
    plan = load_plan(PLAN)
    chosen = select_rows(plan, "main", "cpu", ["human-context", "context-synthesis"])
    assert [name for name, _ in chosen] == ["cpu-main-context-synthesis", "cpu-main-human-context"]  # plan order
    assert len(select_rows(plan, "main", "cpu", None)) == 6
    with pytest.raises(InputError, match="no row human-contxt"):
        select_rows(plan, "main", "cpu", ["human-contxt"])


def test_partial_runs_add_to_a_groups_run_history(tmp_path):
    log = tmp_path / "paper_runs.json"
    log.write_text(
        json.dumps(
            {
                "main": {
                    "scale": "cpu",
                    "wall_seconds": 2400,
                    "finished": "2026-11-22 07:54 UTC",
                    "statuses": {"cpu-main-a": "success", "cpu-main-b": "failed"},
                }
            }
        )
    )
    record_run("main", "cpu", 0.0, {"cpu-main-b": "success"}, path=log)
    entry = json.loads(log.read_text())["main"]
    assert entry["statuses"] == {"cpu-main-a": "success", "cpu-main-b": "success"}
    assert [run["rows"] for run in run_history(entry)] == [["cpu-main-a", "cpu-main-b"], ["cpu-main-b"]]


def test_margins_smaller_than_one_test_document_are_called_ties_within_resolution(tmp_path):
    show, files = _fake_show()
    for entry in show[1]["experiments"]:
        rev = entry["revs"][0]
        if rev["name"].startswith("cpu-main-"):  # 8 squad_long documents: one moves the overall score by 12.5
            rev["data"]["params"] = {
                "params.yaml": {"data": {"benchmark": {"squad_long": {"count": 8}, "hotpotqa_long": {"count": 99}}}}
            }
    plan = load_plan(PLAN)
    experiments = experiments_from_show(show, planned_names(plan), read_file=lambda r, p: files.get(r))
    assert experiments["cpu-main-context-synthesis"]["test_documents"] == {"squad_long": 8}  # only scored tasks
    results = {
        "scales": plan["scales"],
        "runs": {},
        "context_lengths": None,
        "experiments": experiments,
        "groups": {g: {"finding": s["finding"], "title": s["title"]} for g, s in plan["groups"].items()},
    }
    lines = {line.split("**")[1]: line for line in render(results, tmp_path).splitlines() if line.startswith("- **F")}
    assert "a margin of 12.00 points, less than the 12.50" in lines["F2a"]  # 20 vs 8
    assert "margin" not in lines["F2b"]  # 20 vs 5: beyond one document
    assert "a margin of 2.00 points" in lines["F2c"] and "**holds**" in lines["F2c"]  # 20 vs 22
