"""The arm table (sert/arms.py): arms declared in a config run like the paper's, from one entry each."""
import json

import pytest
import yaml

from sert.arms import arm_table, training_order
from sert.config import RunConfig, from_dict, load_run_config
from sert.errors import SertError

SPECS = [
    {"name": "sert_ppl", "label": "SERT (lowest PPL)", "kind": "self", "data": "selection",
     "filter": {"select": "ppl"}, "baseline": "finetune"},
    {"name": "sert_ppl_rd", "label": "SERT (lowest PPL)+RD", "kind": "distill", "init": "sert_ppl", "data": "teach",
     "baseline": "rd"},
]


def test_training_order_puts_each_arm_after_the_one_it_starts_from():
    table = arm_table(SPECS)
    # in the order the arms are listed (a config puts its decisive arms first), each after its start
    assert training_order(["sert_ppl_rd", "rd"], table) == ["sert_ppl", "sert_ppl_rd", "rd"]
    assert training_order(["rd", "sert_ppl_rd"], table) == ["rd", "sert_ppl", "sert_ppl_rd"]
    assert training_order(["base", "sert_rd"], table) == ["sert", "sert_rd"]   # sert trained, not evaluated
    assert training_order(["base"], table) == []


@pytest.mark.parametrize("specs, arms, message", [
    ([{"name": "x", "kind": "self", "data": "selection", "filter": {"select": "ppl"}, "init": "sert_ppl"}], ["x"],
     "arm_specs[x].init: unknown arm 'sert_ppl'"),
    ([{"name": "rd", "kind": "distill", "data": "teach"}], ["rd"], "'rd' is one of the paper's arms"),
    ([{"name": "x", "kind": "self", "data": "selection"}], ["x"], "data 'selection' and filter overrides go together"),
    ([{"name": "x", "kind": "train", "data": "teach"}], ["x"], "arm_specs[x].kind: expected finetune, self, distill or joint"),
    ([{"name": "x", "kind": "distill", "data": "teach", "init": "y"},
      {"name": "y", "kind": "distill", "data": "teach", "init": "x"}], ["x"], "a cycle of initialisations"),
    ([], ["sert_rdd"], "unknown arm 'sert_rdd' (did you mean 'sert_rd'?)"),
    ([{"name": "x", "kind": "self", "data": "selection", "filter": {"min_tokenz": 3}}], ["x"],
     "unknown config key 'arm_specs[x].filter.min_tokenz' (did you mean 'min_tokens'?)"),
    ([{"name": "x", "kind": "self", "data": "selection", "filter": {"select": "best"}}], ["x"],
     "arm_specs[x].filter.select: expected auto, rep2, confidence or ppl"),
])
def test_bad_arm_specs_are_refused_in_one_message(specs, arms, message):
    with pytest.raises(SertError) as e:
        from_dict(RunConfig, {"arms": arms, "arm_specs": specs})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_declared_arms_run_end_to_end_from_their_own_selection(tiny_dir, tmp_path, one_thread):
    from sert.pipeline import run_experiment
    from sert.report import _load_run, significance

    cfg = {
        "task": "strategyqa", "model": str(tiny_dir), "out": str(tmp_path / "run"), "device": "cpu",
        "arms": ["finetune", "rd", "sert_ppl", "sert_ppl_rd"], "arm_specs": SPECS, "train_limit": 8,
        "mine": {"limit": 3, "top_k_branches": 2, "samples_per_branch": 2, "max_new_tokens": 8},
        "filter": {"min_tokens": 3, "max_rep2": 1.0, "min_ppl": 1.0},
        "train": {"epochs": 1, "batch_size": 4, "max_length": 128, "logging_steps": 1},
        "eval": {"limit": 4, "batch_size": 4, "n_bootstrap": 20, "max_new_tokens": 4},
    }
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(cfg))
    res = run_experiment(load_run_config(f), progress=False)
    run = tmp_path / "run"
    assert list(res["stages"]) == ["mine", "filter:sert_ppl", "teach", "train:finetune", "eval:finetune",
                                   "train:rd", "eval:rd", "train:sert_ppl", "eval:sert_ppl",
                                   "train:sert_ppl_rd", "eval:sert_ppl_rd"]
    funnel = json.loads((run / "filter-sert_ppl" / "funnel.json").read_text())
    assert funnel["config"]["select"] == "ppl" and funnel["config"]["min_tokens"] == 3  # run's filter + override
    assert funnel["stages"][-1]["stage"] == "select (lowest perplexity)"
    sel = [json.loads(x) for x in (run / "filter-sert_ppl" / "selected.jsonl").read_text().splitlines()]
    paths = [json.loads(x) for x in (run / "mine" / "paths.jsonl").read_text().splitlines()]
    assert sel
    for s in sel:  # the lowest-PPL survivor of its question
        survivors = funnel_survivors(paths, s["id"], funnel)
        assert s["ppl"] == pytest.approx(min(p["ppl"] for p in survivors), rel=1e-6)
    arm = json.loads((run / "arms" / "sert_ppl_rd" / "arm.json").read_text())
    assert arm["init"] == "arms/sert_ppl/final" and arm["stage"] == "distill"
    assert json.loads((run / "arms" / "sert_ppl" / "arm.json").read_text())["data"] == "filter-sert_ppl/selected.jsonl"

    r = _load_run(run)
    assert r["labels"]["sert_ppl_rd"] == "SERT (lowest PPL)+RD"
    pairs = {(s["baseline"], s["treatment"]) for s in significance(r)}
    assert pairs == {("finetune", "sert_ppl"), ("rd", "sert_ppl_rd")}
    md = (run / "report.md").read_text()
    assert "SERT (lowest PPL)+RD vs RD" in md

    # changing a declared arm's selection redoes its filter, training and evaluation, nothing else
    cfg["arm_specs"][0]["filter"] = {"select": "rep2"}
    f.write_text(yaml.safe_dump(cfg))
    res2 = run_experiment(load_run_config(f), progress=False)
    redone = sorted(k for k, v in res2["stages"].items() if v["action"] != "skipped")
    assert redone == ["eval:sert_ppl", "eval:sert_ppl_rd", "filter:sert_ppl", "train:sert_ppl", "train:sert_ppl_rd"]


def funnel_survivors(paths, qid, funnel):
    """A question's paths that passed every filter of the funnel (rules in funnel['config'])."""
    from sert.config import FilterConfig
    from sert.filters import active_rules, annotate, first_rejecting_rule

    cfg = from_dict(FilterConfig, funnel["config"])
    ps = annotate([dict(p) for p in paths if p["id"] == qid])
    return [p for p in ps if first_rejecting_rule(p, active_rules(cfg), cfg) is None]
