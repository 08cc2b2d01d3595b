"""`sert report` never drops an arm silently: a missing or damaged metrics.json is rebuilt from the
predictions (the same accuracy and CI), an unfinished or absent evaluation is named with the reason, in
report.md and on stderr; `report --rescore` works on a damaged metrics.json too."""
from __future__ import annotations

import json

import pytest
import yaml

from sert.cli import main
from sert.config import RunConfig, to_dict

N = 20


@pytest.fixture
def run(tmp_path):
    """A run directory with the five arms' evaluations of the first 20 StrategyQA test questions, as
    sert.evaluate writes them (predictions in decoding order, metrics summarised in task order)."""
    from sert.evaluate import score, summarize
    from sert.tasks import load_examples

    exs = load_examples("strategyqa", "test", N)
    d = tmp_path / "run"
    cfg = to_dict(RunConfig(task="strategyqa", model="gpt2"))
    cfg["eval"].update(limit=N, n_bootstrap=200, seed=3)
    d.mkdir()
    (d / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for k, arm in enumerate(("base", "finetune", "rd", "sert", "sert_rd")):
        e = d / "eval" / arm
        e.mkdir(parents=True)
        recs = []
        for i, ex in enumerate(exs):
            ans = ex.answer if (i * 7 + k) % 3 else ("no" if ex.answer == "yes" else "yes")
            out = f" Because {i}. So the answer is {ans}."
            recs.append({"id": ex.id, "question": ex.question, "gold": ex.answer, "output": out, "finish": "eos",
                         **score(ex, out, list(range(5 + i)), finish="eos")})
        (e / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reversed(recs)))
        m = summarize(recs, 200, 3)
        m.update(split="test", max_new_tokens=64, model="gpt2", task="strategyqa")
        (e / "metrics.json").write_text(json.dumps(m))
        (e / "eval_config.json").write_text(json.dumps({"model": "gpt2", "task": "strategyqa", "split": "test",
                                                        "max_new_tokens": 64}))
    return d


def report(d, capsys, *extra) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["report", str(d), *extra])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


KEYS = ("n", "acc", "acc_ci", "acc_strict", "fmt", "len", "rep", "no_answer", "cut", "balanced_acc",
        "balanced_acc_ci", "max_output_tokens")


def test_a_missing_or_damaged_metrics_json_is_rebuilt_the_same(run, capsys):
    before = {a: json.loads((run / "eval" / a / "metrics.json").read_text()) for a in ("rd", "sert")}
    (run / "eval" / "rd" / "metrics.json").unlink()
    m = run / "eval" / "sert" / "metrics.json"
    m.write_text(m.read_text()[:40])  # torn by hand: a truncated file
    rc, so, se = report(run, capsys)
    assert rc == 0, se
    for a in ("rd", "sert"):
        now = json.loads((run / "eval" / a / "metrics.json").read_text())
        assert {k: now[k] for k in KEYS} == {k: before[a][k] for k in KEYS}, a  # CI included: same resamples
        assert now["rebuilt"]["from"] == "predictions.jsonl"
    assert "sert: warning: report: eval/rd: metrics.json is missing: rebuilt from predictions.jsonl" in se
    assert "sert: warning: report: eval/sert: metrics.json is damaged (malformed JSON" in se
    md = (run / "report.md").read_text()
    table = md.split("## Results")[1].split("\n## ")[0]
    assert "| RD |" in table and "| SERT |" in table
    assert "`eval/rd`: metrics.json is missing: rebuilt from predictions.jsonl" in md
    rc, so, se = report(run, capsys)  # repaired for good: nothing to say any more
    assert rc == 0 and "warning" not in se


def test_an_arm_that_cannot_be_shown_is_named_with_the_reason(run, capsys):
    import shutil

    shutil.rmtree(run / "eval" / "finetune")                       # never evaluated
    p = run / "eval" / "sert_rd" / "predictions.jsonl"               # interrupted: 12 of 20, no metrics yet
    p.write_text("".join(p.read_text().splitlines(keepends=True)[:12]))
    (run / "eval" / "sert_rd" / "metrics.json").unlink()
    (run / "eval" / "sert" / "metrics.json").write_text("{")        # damaged, and no predictions to rebuild from
    (run / "eval" / "sert" / "predictions.jsonl").unlink()
    rc, so, se = report(run, capsys)
    assert rc == 0, se
    md = (run / "report.md").read_text()
    table = md.split("## Results")[1].split("\n## ")[0]
    rows = [ln for ln in table.splitlines() if ln.startswith("| ") and not ln.startswith("| Arm")]
    assert [r.split(" | ")[0].strip("| ") for r in rows[:2]] == ["Base (untrained)", "RD"]
    want = {
        "finetune": "not evaluated yet (no eval/finetune/)",
        "sert_rd": "predictions.jsonl: holds 12 of the 20 predictions of strategyqa/test: the evaluation did not "
                   "finish; rerun it to finish it",
        "sert": "metrics.json is damaged (malformed JSON (Expecting property name enclosed in double quotes)) and "
                "there is no predictions.jsonl to rebuild it from; rerun its evaluation",
    }
    for arm, why in want.items():
        assert f"sert: warning: report: eval/{arm} not shown: " in se and why in se, (arm, se)
        assert f"`eval/{arm}`: " in md and why in md, arm
    assert not (run / "eval" / "sert_rd" / "metrics.json").exists()  # an unfinished evaluation is not summarised


def test_rescore_rebuilds_a_damaged_metrics_json_and_refuses_an_unfinished_one(run, capsys):
    before = json.loads((run / "eval" / "rd" / "metrics.json").read_text())
    (run / "eval" / "rd" / "metrics.json").write_text('{"n": 20, "acc"')
    rc, so, se = report(run, capsys, "--rescore")
    assert rc == 0, se
    assert "rescore eval/rd: 0 of 20 predictions changed, accuracy ? -> " in so
    now = json.loads((run / "eval" / "rd" / "metrics.json").read_text())
    assert now["acc"] == before["acc"] and now["n"] == N
    p = run / "eval" / "sert" / "predictions.jsonl"
    p.write_text("".join(p.read_text().splitlines(keepends=True)[:5]))
    (run / "eval" / "sert" / "metrics.json").unlink()
    rc, so, se = report(run, capsys, "--rescore")
    assert rc == 2 and se.count("\n") == 1 and "holds 5 of the 20 predictions" in se and "rerun it" in se, se
    assert not (run / "eval" / "sert" / "metrics.json").exists()


@pytest.mark.parametrize("body,msg", [("task: [\n", "config.yaml:2: invalid YAML"),
                                      ("- 1\n- 2\n", "config.yaml: expected a mapping of config keys")])
def test_a_damaged_run_config_is_one_line(run, capsys, body, msg):
    (run / "config.yaml").write_text(body)
    for extra in ((), ("--rescore",)):
        rc, so, se = report(run, capsys, *extra)
        assert rc == 2 and se.count("\n") == 1 and msg in se, se
