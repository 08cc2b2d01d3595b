"""Issue 10: an evaluation that measures reasoning, not truncation.

The generation budget covers the longest completion an arm was trained on; cut outputs are
told apart (loop vs still reasoning); a changed budget redoes the eval stages of a run and
nothing else; several training seeds give mean +- sd and a pooled paired test; the minimum
detectable effect stands beside every comparison; over-long prompts are fitted, not fatal.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sert.config import EvalConfig, RunConfig, from_dict, load_run_config
from sert.evaluate import cut_kind, reasoning_text, resolve_budget, score
from sert.metrics import compare_runs, mde_paired
from sert.tasks import Example


# ------------------------------------------------------------------ units
def test_cut_kind_tells_loops_from_budget_cuts():
    loop = [5, 6, 7, 8] * 20                       # "A: No, the answer to the above question is:" again and again
    going = list(range(80))                        # new tokens to the end: cut while still going
    assert cut_kind("length", loop) == "loop"
    assert cut_kind("length", going) == "budget"
    assert cut_kind("eos", loop) is None and cut_kind("stop", going) is None
    # a loop that only starts late is still a loop once it fills the second half
    assert cut_kind("length", list(range(40)) + [1, 2, 3] * 14) == "loop"


def test_len_counts_reasoning_without_the_cot_trigger():
    e = Example("q", "Is it?", "yes", "yesno")
    text = " Let's think step by step. Birds fly and cats do not. So the answer is yes."
    r = score(e, text, list(range(20)), None, "eos")
    assert reasoning_text(text) == "Birds fly and cats do not."
    assert r["reasoning_tokens"] == 6 and r["correct"] and r["cut"] is None
    assert score(e, " So the answer is yes.", [1, 2], None, "eos")["reasoning_tokens"] == 0


def test_budget_rules_and_warning(capsys):
    auto = EvalConfig()
    assert auto.max_new_tokens is None
    b = resolve_budget(auto, 157)
    assert auto.budget_factor == 2.0 and auto.budget_margin == 64
    assert b["max_new_tokens"] == 2 * 157 + 64 and b["longest_training_completion"] == 157
    assert resolve_budget(EvalConfig(budget_factor=1.5, budget_margin=0), 157)["max_new_tokens"] == 236  # ceil
    assert resolve_budget(auto, None)["max_new_tokens"] == auto.default_budget
    assert capsys.readouterr().err == ""
    b = resolve_budget(EvalConfig(max_new_tokens=128), 157, label="arm rd")
    assert b["max_new_tokens"] == 128 and b["rule"] == "set"
    err = capsys.readouterr().err
    assert "arm rd" in err and "157" in err and err.count("\n") == 1
    resolve_budget(EvalConfig(max_new_tokens=200), 157, label="arm rd")
    assert capsys.readouterr().err == ""


def test_auto_is_accepted_for_the_budget():
    assert from_dict(RunConfig, {"eval": {"max_new_tokens": "auto"}}).eval.max_new_tokens is None
    assert from_dict(RunConfig, {"eval": {"max_new_tokens": 300}}).eval.max_new_tokens == 300
    with pytest.raises(Exception, match="eval.max_new_tokens"):
        from_dict(RunConfig, {"eval": {"max_new_tokens": "lots"}})


def test_minimum_detectable_effect():
    # the figure: 687 questions, 41% discordant pairs -> about 6.8 pp
    assert mde_paired(687, 0.41) == pytest.approx(0.0684, abs=5e-4)
    assert mde_paired(4 * 687, 0.41) == pytest.approx(0.0684 / 2, abs=5e-4)  # 4x the pairs halve it
    a = [{"id": str(i), "correct": i % 2 == 0} for i in range(100)]
    b = [{"id": str(i), "correct": i % 4 == 0} for i in range(100)]
    c = compare_runs(a, b)
    assert c["discordant"] == pytest.approx(0.25) and c["mde"] == pytest.approx(mde_paired(100, 0.25))


# ------------------------------------------------------------------ a run with two seeds and the auto budget
def _config(tmp_path: Path, model: Path, **eval_kw) -> Path:
    cfg = {
        "task": "strategyqa", "model": str(model), "out": str(tmp_path / "run"), "device": "cpu",
        "arms": ["rd", "sert_rd"], "train_limit": 8,
        "mine": {"limit": 3, "top_k_branches": 2, "samples_per_branch": 2, "max_new_tokens": 8},
        "filter": {"min_tokens": 3, "max_rep2": 1.0, "min_ppl": 1.0},
        "train": {"epochs": 1, "batch_size": 4, "max_length": 256, "logging_steps": 1, "seeds": [1, 2]},
        "eval": {"limit": 4, "batch_size": 4, "n_bootstrap": 20, "budget_margin": 2, "budget_factor": 1.0, **eval_kw},
    }
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_two_seeds_auto_budget_and_budget_change_redoes_evals(tiny_dir, tmp_path, one_thread, capsys):
    from sert.pipeline import run_experiment
    from sert.report import write_report

    run = tmp_path / "run"
    res = run_experiment(load_run_config(_config(tmp_path, tiny_dir)), progress=False)
    assert [s for s in res["stages"] if s.startswith("train:")] == [
        "train:rd", "train:sert", "train:sert_rd", "train:rd-s2", "train:sert-s2", "train:sert_rd-s2"]
    arm = lambda i: json.loads((run / "arms" / i / "arm.json").read_text())  # noqa: E731
    assert arm("rd")["seed"] == 1 and arm("rd-s2")["seed"] == 2
    assert arm("sert_rd-s2")["init"] == "arms/sert-s2/final"          # each seed's SERT+RD from its own SERT
    assert json.loads((run / "arms" / "rd-s2" / "train_summary.json").read_text())["config"]["seed"] == 2

    # the auto budget covers the longest completion each checkpoint was trained on, ancestors included
    for inst in ("rd", "sert_rd", "rd-s2", "sert_rd-s2"):
        info = json.loads((run / "arms" / inst / "final" / "sert_training.json").read_text())
        m = json.loads((run / "eval" / inst / "metrics.json").read_text())
        assert m["max_new_tokens"] == info["max_completion_tokens"] + 2
        assert m["budget"]["longest_training_completion"] == info["max_completion_tokens"]
        assert {"cut", "cut_loop", "cut_budget", "no_answer"} <= set(m)
        assert m["cut"] == pytest.approx(m["cut_loop"] + m["cut_budget"])
    sert_longest = json.loads((run / "arms" / "sert" / "final" / "sert_training.json").read_text())
    sert_rd_info = json.loads((run / "arms" / "sert_rd" / "final" / "sert_training.json").read_text())
    assert sert_rd_info["inherited_max_completion_tokens"] == sert_longest["max_completion_tokens"]
    rd_targets = [len(r["rationale"]) for r in map(json.loads, (run / "teach" / "rationales.jsonl").open())]
    assert rd_targets and sert_rd_info["own_max_completion_tokens"] > 20  # the rationale, not a stub

    # report: seeds table with mean +- sd, pooled comparison over (question, seed), MDE beside it
    md = write_report(run)[0].read_text()
    assert "Training seeds" in md and "±" in md
    pooled = [ln for ln in md.splitlines() if "pooled over seeds 1, 2" in ln]
    assert pooled and pooled[0].split(" | ")[1] == "8"               # 4 questions x 2 seeds
    for seed in (1, 2):                                                # and one row per seed
        assert [ln for ln in md.splitlines() if f"| SERT+RD vs RD (seed {seed}) | 4 |" in ln]
    assert "MDE (pp)" in md and "budget (new tokens)" in md

    # a smaller budget: the same run directory is accepted, the evaluations are redone, trainings skipped,
    # and the warning names every arm the budget now cuts short
    capsys.readouterr()
    res2 = run_experiment(load_run_config(_config(tmp_path, tiny_dir, max_new_tokens=5)), progress=False)
    acts = {k: v["action"] for k, v in res2["stages"].items()}
    assert all(a == "skipped" for k, a in acts.items() if not k.startswith("eval:"))
    assert all(a == "redone" for k, a in acts.items() if k.startswith("eval:"))
    err = capsys.readouterr().err
    for inst in ("rd", "sert_rd", "rd-s2", "sert_rd-s2"):
        assert err.count(f"arm {inst} was trained on") == 1  # the budget is resolved once per stage
        assert json.loads((run / "eval" / inst / "metrics.json").read_text())["max_new_tokens"] == 5
    warned = [ln for ln in err.splitlines() if "was trained on" in ln]
    assert warned and all("longest completion arm " in ln for ln in warned)  # none again from the evaluation
    # and the same budget again skips everything
    res3 = run_experiment(load_run_config(_config(tmp_path, tiny_dir, max_new_tokens=5)), progress=False)
    assert all(v["action"] == "skipped" for v in res3["stages"].values())


def test_teacher_named_and_flagged_when_not_the_papers(tmp_path):
    from sert.report import _load_run, teacher_note

    run = tmp_path / "r"
    (run / "teach").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"task": "commonsense_qa", "model": "gpt2"}))
    (run / "teach" / "teach_summary.json").write_text(json.dumps({"settings": {"teacher": "palm-540b"}}))
    note = teacher_note(_load_run(run))
    assert "palm-540b" in note and "text-davinci-002" in note and "not the paper" in note
    (run / "config.yaml").write_text(yaml.safe_dump({"task": "strategyqa", "model": "gpt2"}))
    (run / "teach" / "teach_summary.json").write_text(json.dumps({"settings": {"teacher": "text-davinci-002"}}))
    assert "the paper's own teacher" in teacher_note(_load_run(run))


# ------------------------------------------------------------------ over-long input
@pytest.fixture(scope="module")
def short_context(tmp_path_factory, make_tiny):
    """A tiny GPT-2 with 64 positions (past them its position embedding has no row) and a user file
    whose second line holds a question of ~300,000 characters."""
    from transformers import AutoTokenizer

    from sert.models import embedded_model_dir

    d = tmp_path_factory.mktemp("short-ctx")
    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    make_tiny(tok, "gpt2", hidden=16, layers=1, heads=2, positions=64, save_to=d / "m")
    rows = [{"question": "Is water wet?", "answer": "yes"},
            {"question": "Is fire cold? " + "very " * 60000, "answer": "no"},   # ~300,000 characters
            {"question": "Do fish swim?", "answer": "yes"}]
    (d / "long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d / "m", d / "long.jsonl"


def test_train_cuts_examples_to_the_model_context_instead_of_crashing(short_context, tmp_path):
    mdir, data = short_context
    r = subprocess.run([sys.executable, "-m", "sert", "train", "--model", str(mdir), "--data", str(data),
                        "--stage", "finetune", "--out", str(tmp_path / "tr"), "--epochs", "1", "--batch-size", "3",
                        "--device", "cpu", "--dtype", "float32"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-1500:]
    assert "train.max_length 512 exceeds the model's context (64 positions)" in r.stderr
    assert "1 of 3 examples exceed max_length=64" in r.stderr
    assert (tmp_path / "tr" / "final" / "config.json").exists()


def test_eval_fits_an_overlong_question_and_loses_nothing(short_context, tmp_path):
    mdir, data = short_context
    out = tmp_path / "ev"
    r = subprocess.run([sys.executable, "-m", "sert", "eval", "--model", str(mdir), "--task", str(data),
                        "--out", str(out), "--max-new-tokens", "6", "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-1500:]
    assert "Traceback" not in r.stderr
    warn = [ln for ln in r.stderr.splitlines() if "does not fit the model's context" in ln]
    assert len(warn) == 1 and f"{data}:2" in warn[0] and "kept its last 58 tokens" in warn[0]
    preds = {p["id"]: p for p in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    assert len(preds) == 3
    assert preds["long-1"]["prompt_truncated"] > 59000 and "prompt_truncated" not in preds["long-0"]
    # a budget that leaves no room at all is refused in one line
    r = subprocess.run([sys.executable, "-m", "sert", "eval", "--model", str(mdir), "--task", str(data),
                        "--max-new-tokens", "64", "--quiet"], capture_output=True, text=True, timeout=300)
    errs = [ln for ln in r.stderr.splitlines() if ln.startswith("sert: error:")]
    assert r.returncode == 2 and len(errs) == 1 and "eval.max_new_tokens 64" in errs[0]
    assert "Traceback" not in r.stderr
