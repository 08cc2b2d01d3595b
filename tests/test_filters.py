"""Stage 1b (sert.filters): every rule on hand-made paths, the order, the selection, the funnel
files, the options beyond the paper, and one-line errors for bad input."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from sert.config import FilterConfig
from sert.errors import SertError
from sert.filters import (RULE_NAMES, active_rules, annotate, confidence_weights, direct_answer,
                          first_rejecting_rule, option_listing, perplexity, prompt_imitation, read_paths, rep_n,
                          run_filter, select, thin_path)

REASONING = ("Hydrogen has atomic number one, and one squared is one. The Spice Girls had five members, "
             "and one does not exceed five.")


def mk(qid="q0", text=REASONING, n=30, ppl=12.0, rep_tokens=None, path=0, answer="no", kind="yesno",
       choices=None, delta=None):
    """A path record as 'sert mine' writes it: n distinct token ids (rep-2 = 0) unless given."""
    ids = list(rep_tokens) if rep_tokens is not None else list(range(100, 100 + n))
    return {"id": qid, "question": f"question {qid}?", "answer": answer, "kind": kind, "choices": choices,
            "path": path, "branch_rank": path // 5, "sample": path % 5, "branch_token": " x",
            "branch_token_id": ids[0] if ids else 0, "branch_prob": 0.1, "text": text, "token_ids": ids,
            "n_tokens": len(ids), "logprobs": [-math.log(ppl)] * len(ids), "finish": "length", "mode": "sert",
            "delta": delta}


def write(tmp_path, recs, name="paths.jsonl"):
    p = tmp_path / name
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    return p


# ------------------------------------------------------------------ measures
def test_rep_n():
    assert rep_n([], 2) == 0.0
    assert rep_n([5], 2) == 0.0
    assert rep_n([1, 2, 3, 4], 2) == 0.0
    assert rep_n([7] * 30, 2) == pytest.approx(1 - 1 / 29)
    assert rep_n([1, 2, 1, 2, 1, 2], 2) == pytest.approx(1 - 2 / 5)
    assert rep_n([1, 2, 1, 2, 1, 2], 1) == pytest.approx(1 - 2 / 6)
    assert rep_n("日本 の 日本 の".split(), 2) == pytest.approx(1 - 2 / 3)  # any hashable tokens


def test_perplexity():
    assert perplexity([]) is None
    assert perplexity([math.log(0.2)] * 7) == pytest.approx(5.0)
    assert perplexity([0.0]) == 1.0


# ------------------------------------------------------------------ pattern rules
@pytest.mark.parametrize("text", [
    " Yes.\nQuestion: Is the sun hot? Answer: yes",
    " No. question : what about the moon?",
    " The sky is blue.\nQ: why?",
    " Because of this.\nAnswer: no",
    " Answer Choices: (A) bank (B) shop",
])
def test_prompt_imitation_positive(text):
    assert prompt_imitation(text)


@pytest.mark.parametrize("text", ["", REASONING, " The question is hard to settle without data.",
                                  " 日本は島国です。🙂 So it has a coast.", " Qatar is hot: very hot."])
def test_prompt_imitation_negative(text):
    assert not prompt_imitation(text)


@pytest.mark.parametrize("text", ["", " ", " Yes.", " No, it is not.", " (B) bank.", " 42", " So the answer is yes.",
                                  " Yes. Yes. Yes. The answer is yes.", " No!\n\nNo.", " True", " B",
                                  " Yes, 🙂"])
def test_direct_answer_positive(text):
    assert direct_answer(text)


@pytest.mark.parametrize("text", [REASONING, " Yes, because the sun is hotter than the moon.",
                                  " Москва является столицей России, поэтому да.",
                                  " A pear is less dense than water, so it floats. So the answer is no."])
def test_direct_answer_negative(text):
    assert not direct_answer(text)


def test_direct_answer_threshold_and_choices():
    assert direct_answer(" No, pears float on water", min_words=6)        # 5 words < 6
    assert not direct_answer(" No, pears float on water", min_words=5)
    assert direct_answer(" Bank.", choices=["bank", "library", "shop"])  # the option text alone


@pytest.mark.parametrize("text,choices", [
    (" (A) yes (B) no (C) maybe", None),
    (" (A) yes (B) no (A) yes", None),
    (" Which is a synonym? A) coffee. A) wine. B) beer.", None),
    (" A. dog\nB. cat\nC. cow", None),
    (" - yes\n- no\n- maybe", None),
    (" 1. Yes\n2. No\n3. Yes", None),
    (" It could be a bank, a library or a shop.", ["bank", "library", "shop", "park", "zoo"]),
])
def test_option_listing_positive(text, choices):
    assert option_listing(text, choices=choices)


@pytest.mark.parametrize("text,choices", [
    ("", None), (REASONING, None),
    (" 1. Paris is the capital of France.\n2. France is in Europe.\n3. So Paris is in Europe.", None),
    (" I would keep money in a bank, since banks are safe.", ["bank", "library", "shop"]),
    (" (A) is wrong because pears float.", None), (" ① ② ③ 日本", None),
])
def test_option_listing_negative(text, choices):
    assert not option_listing(text, choices=choices)


def test_option_listing_threshold():
    assert not option_listing(" (A) yes (B) no", min_items=3)
    assert option_listing(" (A) yes (B) no", min_items=2)


# ------------------------------------------------------------------ thresholds and order
def _rule(p, cfg=None):
    cfg = cfg or FilterConfig()
    return first_rejecting_rule(annotate([p])[0], active_rules(cfg), cfg)


def test_length_rep2_ppl_boundaries():
    assert _rule(mk(n=24)) == "length" and _rule(mk(n=25)) is None
    assert _rule(mk(n=0, text="")) == "eos_branch"          # empty path (EOS branch): its own rule, first
    assert _rule(mk(n=0, text=""), FilterConfig(patterns=[], min_tokens=0)) == "eos_branch"
    assert _rule(mk(n=1, text=" Yes.")) == "direct_answer"
    # rep-2 exactly 0.20 passes, above fails: 25 tokens -> 24 bigrams
    base = list(range(25))
    ok = base[:20] + base[:5]                               # 24 bigrams, 4 repeated ... + 1 = 0.1667
    assert rep_n(ok, 2) <= 0.20 and _rule(mk(rep_tokens=ok)) is None
    bad = base[:15] + base[:10]                             # 9 repeated of 24 = 0.375
    assert _rule(mk(rep_tokens=bad)) == "rep2"
    p = annotate([mk(rep_tokens=list(range(20)) + [0, 1, 2, 3, 4, 5])])[0]
    assert p["rep2"] == pytest.approx(5 / 25) and _rule(mk(rep_tokens=list(range(20)) + [0, 1, 2, 3, 4, 5])) is None
    assert _rule(mk(rep_tokens=[9] * 40)) == "rep2"          # all-repeated tokens
    assert _rule(mk(ppl=5.0)) is None and _rule(mk(ppl=4.99)) == "ppl"
    assert _rule(mk(ppl=4.0), FilterConfig(min_ppl=3.0)) is None
    assert _rule(mk(n=10), FilterConfig(min_tokens=5)) is None


def test_paper_order_first_rule_wins():
    # fails pattern, length, rep2 and ppl at once: reported as the first in the paper's order
    p = mk(text=" Question: why? Answer: because", rep_tokens=[1, 1, 1, 1], ppl=2.0)
    assert _rule(p) == "prompt_imitation"
    assert _rule(p, FilterConfig(patterns=[])) == "length"
    assert _rule(p, FilterConfig(patterns=[], min_tokens=0)) == "rep2"
    assert _rule(p, FilterConfig(patterns=[], min_tokens=0, max_rep2=1.0)) == "ppl"
    assert RULE_NAMES[:7] == ["eos_branch", "prompt_imitation", "direct_answer", "option_listing", "length", "rep2",
                              "ppl"]


def test_select_lowest_rep2_ties_to_earlier_path():
    ps = annotate([mk(path=0, rep_tokens=list(range(30)) + [0, 1]), mk(path=1), mk(path=2),
                   mk("q1", path=3, rep_tokens=[1, 2] * 20), mk("q1", path=1, rep_tokens=[1, 2, 3] * 10)])
    sel = select(ps)
    assert sel["q0"]["path"] == 1
    assert sel["q1"]["path"] == 1


def test_cot_decoding_selects_the_highest_confidence():
    """Mode cot-decoding: per question the surviving path with the highest Δ (ties: lower path index,
    no Δ ranks last), whatever its rep-2; mode sert keeps the lowest rep-2 on the same paths."""
    def paths(mode):
        ps = [mk(path=0, delta=0.2), mk(path=1, delta=0.7, rep_tokens=list(range(30)) + [0, 1]), mk(path=2, delta=0.7),
              mk("q1", path=0, delta=None), mk("q1", path=1, delta=0.1, rep_tokens=list(range(30)) + [0, 1]),
              mk("q2", path=0, delta=None), mk("q2", path=1, delta=None)]
        return annotate([{**p, "mode": mode} for p in ps])
    sel = select(paths("cot-decoding"))
    assert {q: p["path"] for q, p in sel.items()} == {"q0": 1, "q1": 1, "q2": 0}
    sel = select(paths("sert"))
    assert {q: p["path"] for q, p in sel.items()} == {"q0": 0, "q1": 0, "q2": 0}


def test_cot_decoding_funnel_names_its_select_stage(tmp_path):
    recs = [{**mk(path=j, delta=d), "mode": "cot-decoding"} for j, d in enumerate([0.1, 0.5, 0.3])]
    f = run_filter(write(tmp_path, recs), tmp_path / "f", FilterConfig())
    assert f["stages"][-1]["stage"] == "select (highest confidence)"
    sel = [json.loads(x) for x in (tmp_path / "f" / "selected.jsonl").read_text().splitlines()]
    assert [s["path_index"] for s in sel] == [1]
    rej = [json.loads(x) for x in (tmp_path / "f" / "rejected.jsonl").read_text().splitlines()]
    assert sorted((r["path"], r["rule"]) for r in rej) == [(0, "not_highest_confidence"),
                                                           (2, "not_highest_confidence")]
    recs[2]["mode"] = "sert"
    with pytest.raises(SertError, match="mixes paths mined in modes cot-decoding, sert"):
        run_filter(write(tmp_path, recs, "mixed.jsonl"), tmp_path / "g", FilterConfig())


def test_answer_consistency_is_off_by_default():
    wrong = mk(text=REASONING + " So the answer is yes.", answer="no")
    silent = mk(text=REASONING.replace("does not exceed", "is below"), answer="yes")
    right = mk(text=REASONING + " So the answer is no.", answer="no")
    assert _rule(wrong) is None
    on = FilterConfig(answer_consistency=True)
    assert _rule(wrong, on) == "answer_consistency"
    assert _rule(right, on) is None
    assert _rule(silent, on) is None  # states no answer: does not contradict
    strict = FilterConfig(answer_consistency=True, answer_consistency_strict=True)  # STaR: must reach gold
    assert _rule(silent, strict) == "answer_consistency"
    assert _rule(right, strict) is None and _rule(wrong, strict) == "answer_consistency"


def test_confidence_weights():
    sel = annotate([mk(ppl=6.0, delta=0.2), mk("q1", ppl=12.0, delta=None), mk("q2", ppl=24.0, delta=0.6)])
    w = confidence_weights(sel, "ppl")
    assert sum(w) / 3 == pytest.approx(1.0, abs=1e-3) and w[0] > w[1] > w[2]
    d = confidence_weights(sel, "delta")
    assert d[1] == pytest.approx(1.0) and d[2] == pytest.approx(3 * d[0], rel=1e-3)
    assert confidence_weights(annotate([mk(delta=0.0)]), "delta") == [1.0]


# ------------------------------------------------------------------ run_filter end to end
def _paths():
    recs = []
    for q in range(4):
        for j in range(5):
            recs.append(mk(f"q{q}", path=j, text=REASONING, rep_tokens=list(range(40)) + list(range(j))))
    recs[0]["text"] = " Question: is it? Answer: yes"        # q0: pattern
    recs[1] = mk("q0", path=1, n=10)                           # q0: length
    recs[2] = mk("q0", path=2, rep_tokens=[3, 4] * 20)         # q0: rep2
    recs[3]["logprobs"] = [-0.1] * recs[3]["n_tokens"]          # q0: ppl (1.1)
    recs[4]["text"] = " Yes."                                 # q0: direct answer -> q0 has no survivor
    for j in range(5):
        recs[5 + j]["text"] = " 日本の首都は東京です。🙂 Tokyo is the capital, so the answer is no."
    recs.append({**mk("q3", path=5, rep_tokens=[], text=""), "finish": "eos"})  # q3: an EOS branch (empty)
    return recs


def test_run_filter_writes_everything(tmp_path):
    pf = write(tmp_path, _paths())
    out = tmp_path / "f"
    f = run_filter(pf, out, FilterConfig())
    assert [s["stage"] for s in f["stages"]] == ["mined", "eos_branch", "pattern", "length", "rep2", "ppl", "select"]
    assert [(s["paths"], s["questions"]) for s in f["stages"]] == [(21, 4), (20, 4), (18, 4), (17, 4), (16, 4),
                                                                  (15, 3), (3, 3)]
    assert f["stages"][1]["removed_by"] == {"eos_branch": 1}
    assert f["stages"][2]["removed_by"] == {"prompt_imitation": 1, "direct_answer": 1, "option_listing": 0}
    sel = [json.loads(x) for x in (out / "selected.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [s["id"] for s in sel] == ["q1", "q2", "q3"]
    assert all(s["path_index"] == 0 and s["rep2"] == 0.0 and "weight" not in s for s in sel)
    assert sel[0]["path"].startswith("日本の首都") and sel[0]["answer"] == "no"
    rej = [json.loads(x) for x in (out / "rejected.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rej) == 21 - 3
    assert [(r["id"], r["path"], r["stage"]) for r in rej if r["rule"] == "eos_branch"] == [("q3", 5, "eos_branch")]
    assert {(r["id"], r["path"]): r["rule"] for r in rej if r["id"] == "q0"} == {
        ("q0", 0): "prompt_imitation", ("q0", 1): "length", ("q0", 2): "rep2", ("q0", 3): "ppl",
        ("q0", 4): "direct_answer"}
    assert {r["rule"] for r in rej if r["id"] != "q0"} == {"not_lowest_rep2", "eos_branch"}
    disk = json.loads((out / "funnel.json").read_text())
    assert disk["stages"] == f["stages"]
    cum = disk["ablation"]["cumulative"]
    assert [c["filters"] for c in cum] == [[], ["eos_branch"], ["eos_branch", "pattern"],
                                           ["eos_branch", "pattern", "length"],
                                           ["eos_branch", "pattern", "length", "rep2"],
                                           ["eos_branch", "pattern", "length", "rep2", "ppl"]]
    assert [c["paths"] for c in cum] == [21, 20, 18, 17, 16, 15]
    assert {a["rule"]: a["removed"] for a in disk["ablation"]["alone"]}["eos_branch"] == 1
    assert {a["rule"]: a["removed"] for a in disk["ablation"]["alone"]}["ppl"] == 1
    assert (out / "funnel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "ablation" / "0-none.jsonl").read_text().splitlines()) == 4
    assert (out / "ablation" / "1-eos_branch.jsonl").exists()


def test_run_filter_options(tmp_path):
    recs = _paths()
    for j in range(5):
        recs[10 + j]["text"] = REASONING + " So the answer is yes."   # q2 contradicts gold "no"
    pf = write(tmp_path, recs)
    f = run_filter(pf, tmp_path / "o", FilterConfig(answer_consistency=True, confidence_weight="ppl"))
    assert [s["stage"] for s in f["stages"]][-2:] == ["consistency", "select"]
    sel = [json.loads(x) for x in (tmp_path / "o" / "selected.jsonl").read_text().splitlines()]
    assert [s["id"] for s in sel] == ["q1", "q3"] and all(s["weight"] == 1.0 for s in sel)


# ------------------------------------------------------------------ bad input
def test_malformed_paths_files(tmp_path):
    good = json.dumps(mk())
    cases = {
        "bad json": (good + "\n{not json\n", ":2: malformed JSON"),
        "missing": (json.dumps({k: v for k, v in mk().items() if k != "logprobs"}) + "\n",
                    ":1: missing field 'logprobs' (or 'logprob_sum' in a thinned"),
        "thin type": (json.dumps({**thin_path(mk()), "logprob_sum": "-3"}) + "\n",
                      ":1: field 'logprob_sum' must be a number, got str"),
        "thin count": (json.dumps({**thin_path(mk()), "token_ids": [1], "rep2": None}) + "\n",
                       ":1: n_tokens=.* but 1 token_ids"),
        "count": (json.dumps({**mk(), "n_tokens": 3}) + "\n", ":1: n_tokens=3"),
        "type": (good + "\n" + json.dumps({**mk(), "text": 5}) + "\n", ":2: field 'text' must be str"),
        "dup": (good + "\n" + good + "\n", ":2: duplicate path"),
        "array": ("[1, 2]\n", ":1: expected a JSON object"),
        "empty": ("\n", "no paths"),
    }
    for name, (body, msg) in cases.items():
        p = tmp_path / f"{name.replace(' ', '_')}.jsonl"
        p.write_text(body)
        with pytest.raises(SertError, match=msg.replace("(", r"\(")):
            read_paths(p)
    with pytest.raises(SertError, match="file not found"):
        read_paths(tmp_path / "nope.jsonl")


def test_cli_one_line_errors_and_table(tmp_path, capsys):
    from sert.cli import main

    pf = write(tmp_path, _paths())
    assert main(["filter", str(pf), "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "pattern" in out and "select" in out and "ablation" in out
    assert main(["filter", "--paths", str(pf), "--out", str(tmp_path / "d"), "--min-tokens", "5"]) == 0
    capsys.readouterr()
    for argv, msg in [(["filter", str(pf), "--max-rep2", "1.5"], "max_rep2"),
                      (["filter", str(pf), "--min-ppl", "0.5"], "min_ppl"),
                      (["filter", str(pf), "--patterns", "prompt_imitaton"], "did you mean"),
                      (["filter", str(pf), "--confidence-weight", "entropy"], "confidence_weight"),
                      (["filter", str(tmp_path / "nope.jsonl")], "file not found")]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err, err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(mk()) + "\n{oops\n")
    r = subprocess.run([sys.executable, "-m", "sert", "filter", str(bad), "--out", str(tmp_path / "e")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and f"{bad}:2:" in r.stderr, r.stderr


def test_confidence_weight_without_use_weights_is_refused(tmp_path):
    from sert.config import RunConfig, from_dict, load_run_config

    with pytest.raises(SertError, match="filter.confidence_weight 'ppl' has no effect unless train.use_weights is "
                                        "true; set train.use_weights: true or drop filter.confidence_weight"):
        from_dict(RunConfig, {"filter": {"confidence_weight": "ppl"}})
    assert from_dict(RunConfig, {"filter": {"confidence_weight": "delta"}, "train": {"use_weights": True}})
    assert from_dict(RunConfig, {"train": {"use_weights": True}})
    y = tmp_path / "run.yaml"
    y.write_text("filter:\n  confidence_weight: delta\n")
    assert load_run_config(y, {"train.use_weights": "true"}).filter.confidence_weight == "delta"
    r = subprocess.run([sys.executable, "-m", "sert", "run", str(y), "--out", str(tmp_path / "r")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "confidence_weight 'delta'" in r.stderr, r.stderr
    assert not (tmp_path / "r").exists()
