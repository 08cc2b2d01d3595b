"""The report on hand-made metrics and predictions: table numbers, paper row, significance, partial runs."""
import json
import re
import subprocess
import sys

import pytest
import yaml

from sert.config import RunConfig, to_dict
from sert.report import finetune_cot_row, paper_row, significance, write_report, _load_run

N = 20
# correctness per arm on the same 20 questions
CORRECT = {
    "base": [i < 6 for i in range(N)],
    "finetune": [i < 10 for i in range(N)],
    "rd": [i < 8 for i in range(N)],             # 8 right
    "sert": [i < 10 for i in range(N)],          # same as finetune: difference 0, p = 1
    "sert_rd": [i < 14 for i in range(N)],       # rd's 8 plus 6 more: 6 wins, 0 losses
}


def make_run(tmp_path, arms=("base", "finetune", "rd", "sert", "sert_rd"), model="gpt2-medium", judge=False):
    run = tmp_path / "run"
    cfg = to_dict(RunConfig(task="strategyqa", model=model))
    cfg["out"] = str(run)
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for arm in arms:
        d = run / "eval" / arm
        d.mkdir(parents=True)
        preds = [{"id": f"q{i}", "question": f"Is {i} even?", "gold": "yes", "output": f"{arm} says {i}. So the answer is "
                  f"{'yes' if c else 'no'}.", "pred": "yes" if c else "no", "correct": c, "method": "strict",
                  "fmt_ok": True, "reasoning_tokens": 3, "rep1": 0.0, "n_tokens": 9}
                 for i, c in enumerate(CORRECT[arm])]
        (d / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
        acc = sum(CORRECT[arm]) / N
        m = {"n": N, "acc": acc, "acc_ci": [acc - 0.1, acc + 0.1], "fmt": 0.95, "len": 12.345, "rep": 0.1234,
             "split": "test", "max_new_tokens": 64, "model": model, "task": "strategyqa",
             "env": {"python": "3.11", "torch": "2.13.0", "sert": "0.1.0"}}
        if judge:
            m.update(judge=6.5, judge_n=9, judge_asked=N, judge_failed=0)
        (d / "metrics.json").write_text(json.dumps(m))
    (run / "filter").mkdir()
    (run / "filter" / "funnel.json").write_text(json.dumps({"stages": [  # as sert.filters writes it
        {"stage": "mined", "paths": 100, "questions": 10},
        {"stage": "pattern", "paths": 80, "questions": 9, "removed": 20,
         "removed_by": {"prompt_imitation": 5, "direct_answer": 15}},
        {"stage": "select", "paths": 9, "questions": 9, "removed": 71}],
        "selected": {"questions": 9, "mean_tokens": 40.5, "mean_rep2": 0.05, "median_ppl": 7.2,
                     "states_answer": 0.5, "answer_matches_gold": 0.75}}))
    (run / "commands.txt").write_text("sert run run/config.yaml --out run\n")
    return run


def table_rows(md: str) -> dict:
    """Results table rows of report.md by arm label."""
    sect = md.split("## Results")[1].split("\n## ")[0].split("\n### ")[0]
    rows = {}
    for line in sect.splitlines():
        if line.startswith("| ") and not line.startswith("| Arm"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[0]] = cells
    return rows


def test_table_numbers_paper_row_and_significance(tmp_path):
    run = make_run(tmp_path)
    md_path, html_path = write_report(run)
    md = md_path.read_text()
    rows = table_rows(md)
    assert list(rows) == ["Base (untrained)", "Finetune", "RD", "SERT", "SERT+RD"]
    assert rows["RD"][1:9] == ["40.00 [30.00, 50.00]", "95.0", "–", "12.3", "0.123", "20", "52.69", "56.19"]
    assert rows["SERT+RD"][1] == "70.00 [60.00, 80.00]" and rows["SERT+RD"][-2:] == ["56.34", "–"]  # GPT-2-medium
    assert rows["Finetune"][-2:] == ["50.22", "54.59"]    # the paper's Finetune; Fine-tune-CoT's vanilla fine-tuning
    assert rows["Base (untrained)"][-2:] == ["–", "–"]
    assert "Paper Acc % (GPT-2-medium)" in md and "Judge" not in md.split("## Paired")[0]
    assert "Fine-tune-CoT Acc % (GPT-2-medium; Finetune: its vanilla fine-tuning)" in md

    sig = {(s["baseline"], s["treatment"]): s for s in significance(_load_run(run))}
    s = sig[("rd", "sert_rd")]
    assert s["n"] == N and s["diff"] == pytest.approx(0.30) and (s["only_b"], s["only_a"]) == (6, 0)
    assert s["p_value"] == pytest.approx(2 / 2 ** 6)  # exact McNemar: 6 discordant pairs, all one way
    assert s["ci"][0] > 0 and s["paper_diff_pp"] == pytest.approx(56.34 - 52.69)
    f = sig[("finetune", "sert")]
    assert f["diff"] == 0 and f["p_value"] == 1.0
    assert "| SERT+RD vs RD | 20 | +30.00 |" in md and "| 0.03125 | significant: SERT+RD better |" in md
    assert "| SERT vs Finetune | 20 | +0.00 |" in md and "not significant" in md

    # funnel, samples (same questions for every arm, disagreements first), reproduction info
    assert "| mined | 100 | 10 | – |  |" in md and "| pattern | 80 | 9 | 20 | prompt_imitation 5, direct_answer 15 |" in md
    assert "Selected for self-training: 9 paths" in md and "75% match the gold answer" in md
    assert "Sample outputs" in md
    assert "### q6 · gold: yes" in md  # q6..q9: the first questions where the arms disagree
    assert md.count("| SERT+RD | sert_rd says 6.") == 1
    assert "mine.seed = 0" in md and "torch 2.13.0" in md and "sert run run/config.yaml" in md
    assert "![accuracy by arm](plots/accuracy.png)" in md and (run / "plots" / "accuracy.png").exists()

    html = html_path.read_text()
    assert "data:image/png;base64," in html and "plots/accuracy.png" not in html
    assert "<td>SERT+RD</td>" in html and "<script" not in html


def test_missing_arms_and_judge_and_other_model(tmp_path):
    run = make_run(tmp_path, arms=("base", "rd"), model="smollm2-135m", judge=True)
    md = write_report(run)[0].read_text()
    rows = table_rows(md)
    assert list(rows) == ["Base (untrained)", "RD"]
    assert "Judge (0-10)" in md and rows["RD"][6] == f"6.50 (9/{N} scored)"  # the mean beside its coverage
    assert "GPT-2 (124M), for reference" in md and rows["RD"][-2:] == ["52.69", "55.75"]  # paper; Fine-tune-CoT
    assert "Needs both arms of a pair" in md and "SERT+RD vs RD" not in md


def test_report_of_run_without_evaluations(tmp_path):
    run = make_run(tmp_path, arms=())
    md, html = write_report(run)
    assert "No arm has been evaluated yet" in md.read_text() and html.exists()
    assert not (run / "plots" / "accuracy.png").exists()


def test_paper_row_mapping():
    assert paper_row("gpt2", "strategyqa") == ("GPT-2 (124M)", {"finetune": 54.00, "rd": 52.69, "sert": 54.00,
                                                                "sert_rd": 54.65}, True)
    assert paper_row("openai-community/gpt2-large", "commonsense_qa")[1]["sert_rd"] == 26.03
    assert paper_row("/models/gpt2-medium/", "strategyqa")[0] == "GPT-2-medium"
    label, row, exact = paper_row("smollm2-135m", "strategyqa")
    assert label == "GPT-2 (124M), for reference" and not exact and row["rd"] == 52.69
    assert paper_row("gpt2", "gsm8k")[1] is None
    assert finetune_cot_row("smollm2-135m", "commonsense_qa") == {"rd": 22.69, "finetune": 20.88}
    assert finetune_cot_row("gpt2-large", "strategyqa") == {"rd": 53.86, "finetune": 52.98}
    assert finetune_cot_row("gpt2", "gsm8k") is None


def test_report_cli(tmp_path):
    run = make_run(tmp_path, arms=("finetune", "sert"))
    r = subprocess.run([sys.executable, "-m", "sert", "report", str(run)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert re.search(r"\| SERT \| 50\.00 \[40\.00, 60\.00\]", r.stdout) and "report.html" in r.stdout
    r = subprocess.run([sys.executable, "-m", "sert", "report", str(tmp_path / "nope")], capture_output=True, text=True)
    assert r.returncode == 2 and "no such run directory" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_rescore_refreshes_stale_predictions_without_decoding(tmp_path, capsys):
    """`sert report --rescore`: predictions scored by an older extractor are re-read from their output text."""
    from sert.cli import main
    from sert.evaluate import rescore_dir, score
    from sert.tasks import load_examples

    exs = load_examples("strategyqa", "test", 6)
    run = tmp_path / "run"
    cfg = to_dict(RunConfig(task="strategyqa", model="gpt2"))
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    d = run / "eval" / "sert"
    d.mkdir(parents=True)
    wrong = "no" if exs[0].answer == "yes" else "yes"
    outputs = [f" A: {wrong}. The answer is: B: {wrong} So the answer is {exs[0].answer}."]  # stale: read as `wrong`
    outputs += [f" Because. So the answer is {e.answer}." for e in exs[1:3]] + [" Hmm." for _ in exs[3:]]
    recs = []
    for i, (e, out) in enumerate(zip(exs, outputs)):
        r = {"id": e.id, "question": e.question, "gold": e.answer, "output": out, "finish": "eos",
             **score(e, out, list(range(9)))}
        if i == 0:  # as the first-match extractor scored it
            r.update(pred=wrong, method="flexible", correct=False, fmt_ok=False, fmt_issues=["no_answer_phrase"])
        recs.append(r)
    (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reversed(recs)))  # decode order
    (d / "metrics.json").write_text(json.dumps({"n": 6, "acc": 2 / 6, "task": "strategyqa", "split": "test",
                                                 "wall_s": 12.5}))
    assert main(["report", str(run), "--rescore"]) == 0
    out = capsys.readouterr().out
    assert "rescore eval/sert: 1 of 6 predictions changed, accuracy 33.33 -> 50.00%" in out
    new = [json.loads(x) for x in (d / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in new] == [r["id"] for r in reversed(recs)]  # order kept
    first = next(r for r in new if r["id"] == exs[0].id)
    assert (first["pred"], first["method"], first["correct"], first["fmt_ok"]) == (exs[0].answer, "strict", True, True)
    assert [r for r in new if r["id"] != exs[0].id] == [r for r in reversed(recs) if r["id"] != exs[0].id]
    m = json.loads((d / "metrics.json").read_text())
    assert m["acc"] == 0.5 and m["wall_s"] == 12.5 and m["rescored"]["changed"] == 1
    assert "| SERT | 50.00" in (run / "report.md").read_text()
    # a second pass changes nothing; the bootstrap CI is the one evaluate() computes (task order)
    from sert.evaluate import summarize
    assert rescore_dir(d)["changed"] == 0
    assert json.loads((d / "metrics.json").read_text())["acc_ci"] == summarize(
        [next(r for r in new if r["id"] == e.id) for e in exs])["acc_ci"]


def test_answers_by_class_shows_a_lean_as_chance(tmp_path):
    """An arm that always answers the majority class gets the majority's accuracy and a balanced accuracy of
    50%; one that knows the answers gets both high. The section is built from the stored predictions."""
    run = make_run(tmp_path, arms=("finetune", "rd"))
    gold = ["no" if i % 4 else "yes" for i in range(N)]                 # 15 no, 5 yes
    for arm, preds in (("finetune", ["no"] * N), ("rd", gold)):
        rows = [{"id": f"q{i}", "question": f"Q{i}?", "gold": g, "output": f"So the answer is {p}.", "pred": p,
                 "correct": p == g, "method": "strict", "fmt_ok": True, "reasoning_tokens": 3, "rep1": 0.0,
                 "n_tokens": 9} for i, (g, p) in enumerate(zip(gold, preds))]
        (run / "eval" / arm / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    md = write_report(run)[0].read_text()
    sect = md.split("### Answers by class")[1].split("\n### ")[0].split("\n## ")[0]
    cells = {ln.split(" | ")[0].strip("| "): ln.strip("|").split(" | ") for ln in sect.splitlines()
             if ln.startswith("| ") and not ln.startswith("| Arm")}
    assert cells["Finetune"][1:3] == ["75.00", "50.00 [50.00, 50.00]"]
    assert cells["Finetune"][3:6] == ["100.0", "0.0", "0.0"]            # answers no / yes / none
    assert cells["RD"][1] == "100.00" and cells["RD"][2].startswith("100.00")
    assert "any constant answer scores 50%" in sect and "('no', 75.00% of the test questions)" in sect
