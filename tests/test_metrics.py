import pytest

from sert.evaluate import score, summarize
from sert.metrics import bootstrap_ci, compare_runs, format_issues, mcnemar_exact, rep_n
from sert.tasks import Example


def test_rep_n():
    assert rep_n([1, 2, 3, 4], 1) == 0.0
    assert rep_n([1, 1, 1, 1], 1) == pytest.approx(0.75)
    assert rep_n([1, 2, 1, 2, 1, 2], 2) == pytest.approx(1 - 2 / 5)
    assert rep_n([1], 2) == 0.0


def test_format_issues_on_hand_made_outputs():
    assert format_issues(" Ice is frozen. So the answer is yes.", True, [1, 2, 3, 4, 5]) == []
    assert format_issues(" yes", False, [1]) == ["no_answer_phrase"]
    assert "continuation" in format_issues(" So the answer is yes.\nQuestion: why?", True, [1, 2])
    assert "repetition" in format_issues("a a a", True, [7, 8] * 20)


def test_score_and_summary():
    ex = Example("q1", "Is ice cold?", "yes", "yesno")
    good = score(ex, " Ice is frozen water. So the answer is yes.", list(range(10)))
    bad = score(ex, " no no no", [5, 5, 5])
    assert good["correct"] and good["fmt_ok"] and good["reasoning_tokens"] == 4
    assert not bad["correct"] and not bad["fmt_ok"] and bad["rep1"] == pytest.approx(2 / 3)
    m = summarize([good, bad], n_boot=200)
    assert m["acc"] == 0.5 and m["fmt"] == 0.5 and m["len"] == pytest.approx((4 + 3) / 2)
    assert 0.0 <= m["acc_ci"][0] <= 0.5 <= m["acc_ci"][1] <= 1.0


def test_bootstrap_ci_shrinks_with_n():
    small = bootstrap_ci([1, 0] * 10, 500)
    large = bootstrap_ci([1, 0] * 500, 500)
    assert small[0] < large[0] < 0.5 < large[1] < small[1]


def test_mcnemar_and_compare():
    a = [True] * 10 + [False] * 10
    b = [True] * 10 + [True] * 8 + [False] * 2
    r = mcnemar_exact(a, b)
    assert (r["only_a"], r["only_b"]) == (0, 8) and r["p_value"] == pytest.approx(2 / 2 ** 8)
    c = compare_runs([{"id": i, "correct": x} for i, x in enumerate(a)], [{"id": i, "correct": x} for i, x in enumerate(b)])
    assert c["n"] == 20 and c["diff"] == pytest.approx(0.4)


def test_pooled_seeds_are_tested_with_the_question_as_unit():
    """Two seeds that repeat the same outcomes add no evidence: the clustered test must give what one seed
    gives, where a test of every (question, seed) pair as independent halves the p-value or worse."""
    from sert.metrics import compare_clustered

    n = 300      # 60 questions only the treatment gets right, 40 only the baseline, 200 alike (McNemar p ~0.06)
    a = [False] * 60 + [True] * 40 + [i % 2 == 0 for i in range(200)]
    b = [True] * 60 + [False] * 40 + [i % 2 == 0 for i in range(200)]
    one = compare_runs([{"id": i, "correct": x} for i, x in enumerate(a)],
                       [{"id": i, "correct": x} for i, x in enumerate(b)])
    pa = [{"id": f"{i}#s{s}", "correct": x} for s in (42, 43) for i, x in enumerate(a)]
    pb = [{"id": f"{i}#s{s}", "correct": x} for s in (42, 43) for i, x in enumerate(b)]
    naive = compare_runs(pa, pb)
    c = compare_clustered(pa, pb, cluster=lambda r: r["id"].split("#")[0])
    assert c["n"] == 2 * n and c["questions"] == n
    assert c["diff"] == pytest.approx(one["diff"])
    assert c["p_value"] == pytest.approx(one["p_value"], rel=0.25)          # permutation ~ exact McNemar
    assert naive["p_value"] < 0.6 * one["p_value"]                          # what pooling naively claims
    assert c["mde"] == pytest.approx(one["mde"], rel=1e-9)                  # duplicated seeds: same MDE
    assert naive["mde"] < 0.75 * one["mde"]
    width = lambda x: x["ci"][1] - x["ci"][0]                               # noqa: E731
    assert width(c) == pytest.approx(width(one), rel=0.2) and width(naive) < 0.8 * width(one)


def test_clustered_comparison_is_exact_on_few_discordant_questions():
    from sert.metrics import compare_clustered

    # 5 questions x 2 seeds; the treatment wins both seeds of 3 questions and nothing else differs:
    # per-question sums (2, 2, 2, 0, 0); sign flips of three equal non-zero sums: P(|T| >= 6) = 2/8
    a = [{"id": f"q{i}#s{s}", "correct": False} for s in (1, 2) for i in range(5)]
    b = [{"id": f"q{i}#s{s}", "correct": i < 3} for s in (1, 2) for i in range(5)]
    c = compare_clustered(a, b, cluster=lambda r: r["id"].split("#")[0])
    assert c["p_value"] == pytest.approx(0.25)
    assert (c["only_b"], c["only_a"], c["diff"]) == (6, 0, pytest.approx(0.6))


def test_class_balance_separates_a_lean_from_knowledge():
    from sert.metrics import class_balance

    gold = ["no"] * 60 + ["yes"] * 40
    rec = lambda preds: [{"gold": g, "pred": p, "correct": g == p} for g, p in zip(gold, preds)]  # noqa: E731
    always_no = class_balance(rec(["no"] * 100))
    assert always_no["balanced_acc"] == pytest.approx(0.5) and always_no["majority_acc"] == pytest.approx(0.6)
    assert always_no["answers"] == {"no": 1.0} and always_no["recall"] == {"no": 1.0, "yes": 0.0}
    # answers "no" 80% of the time whatever the gold: accuracy moves with the lean, balanced accuracy stays at 50%
    lean = ["no" if i % 5 else "yes" for i in range(100)]
    cb = class_balance(rec(lean))
    assert sum(p == g for p, g in zip(lean, gold)) / 100 == pytest.approx(0.56)
    assert cb["balanced_acc"] == pytest.approx(0.5) and cb["balanced_acc_ci"][0] < 0.5 < cb["balanced_acc_ci"][1]
    # knows 3 in 4 of each class: 75%, and a missing answer counts as wrong
    knows = [g if i % 4 else ("yes" if g == "no" else None) for i, g in enumerate(gold)]
    cb = class_balance(rec(knows))
    assert cb["balanced_acc"] == pytest.approx(0.75) and cb["balanced_acc_ci"][0] > 0.6
    assert cb["answers"]["none"] == pytest.approx(0.1)
    # multiple choice: five letters, chance 1/5; numbers: not a class task
    mc = class_balance([{"gold": g, "pred": "A", "correct": g == "A"} for g in "ABCDE" * 4])
    assert mc["chance"] == pytest.approx(0.2) and mc["balanced_acc"] == pytest.approx(0.2)
    assert class_balance([{"gold": "12", "pred": "12", "correct": True}]) is None


def test_metrics_json_reports_the_balanced_accuracy():
    recs = [{"id": str(i), "gold": g, "pred": "no", "correct": g == "no", "method": "strict", "fmt_ok": True,
             "reasoning_tokens": 3, "rep1": 0.0, "n_tokens": 5} for i, g in enumerate(["no", "no", "no", "yes"])]
    m = summarize(recs, n_boot=50)
    assert m["acc"] == pytest.approx(0.75) and m["balanced_acc"] == pytest.approx(0.5)
    assert m["answers"] == {"no": 1.0}
