"""Stage 1 (sert.mine) on a tiny random Llama: branching, KV-cache correctness, the sampler's
distribution, determinism, resume (in process and after SIGKILL), cot-decoding, CLI errors."""
from __future__ import annotations

import copy
import inspect
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import torch

from sert.answers import extract_answer
from sert.config import MineConfig
from sert.errors import SertError
from sert.decode import forward_kw as _forward_kw
from sert.mine import mine
from sert.sampling import path_delta, question_seed, sample_top_k_top_p, settings_key, top_k_top_p_dist
from sert.tasks import Example, load_examples
from sert.templates import mining_prompt


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


QUESTIONS = ["Is the sky blue?", "Would a pear sink in water? Think about density and fruit.",
             "Can a dog fly?", "Did Aristotle use a laptop to write his many books about ethics and politics?"]


def exs(n=4):
    return [Example(f"q{i}", q, "yes" if i % 2 else "no", "yesno", None, i) for i, q in enumerate(QUESTIONS[:n])]


def cfg(**kw):
    base = dict(top_k_branches=3, samples_per_branch=2, max_new_tokens=6, batch_questions=3, seed=0)
    base.update(kw)
    return MineConfig(**base)


def by_q(recs):
    out = {}
    for r in recs:
        out.setdefault(r["id"], []).append(r)
    return out


def prompt_logits(model, tok, question, cont=()):
    """Logits after the prompt (+ continuation) by a plain full forward: no padding, no cache."""
    ids = tok(mining_prompt(question))["input_ids"] + list(cont)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float(), len(ids) - len(cont)


def eos_boosted(model, tok):
    """A copy whose EOS logit equals its third-largest logit, so paths end at varied steps
    (exercises row retirement); EOS is then also one of the top-3 first tokens."""
    m = copy.deepcopy(model)
    eos = tok.eos_token_id

    def hook(_mod, _inp, out):
        out = out.clone()
        out[..., eos] = torch.topk(out, 3, dim=-1).values[..., -1]
        return out

    m.lm_head.register_forward_hook(hook)
    return m


def check_against_full_forward(model, tok, recs, c: MineConfig):
    """Every recorded log-prob equals a cache-free forward's, and every sampled token lies in the
    top-k/top-p support of that forward's distribution (catches padding/cache/position bugs)."""
    for r in recs:
        logits, plen = prompt_logits(model, tok, r["question"], r["token_ids"])
        lp = torch.log_softmax(logits, -1)
        for t, tid in enumerate(r["token_ids"]):
            assert abs(lp[plen - 1 + t, tid].item() - r["logprobs"][t]) < 2e-4, (r["id"], r["path"], t)
            if t == 0:
                continue
            if c.mode == "cot-decoding":
                assert tid == int(logits[plen - 1 + t].argmax())
            else:
                idx, p = top_k_top_p_dist(logits[plen - 1 + t][None], c.top_k, c.top_p, c.temperature)
                assert tid in idx[0][p[0] > 0].tolist()
        if r["finish"] == "length":
            assert r["n_tokens"] == c.max_new_tokens
        else:
            assert r["n_tokens"] < c.max_new_tokens and tok.eos_token_id not in r["token_ids"]


# ------------------------------------------------------------------ structure
def test_each_question_gets_k_times_n_paths_on_its_top_k_first_tokens(tiny_model, tmp_path):
    model, tok = tiny_model
    c = cfg()
    recs = mine(model, tok, exs(), c, tmp_path / "p.jsonl", progress=False)
    assert len(recs) == 4 * 6
    for q, rs in by_q(recs).items():
        assert [r["path"] for r in rs] == list(range(6))
        logits, _ = prompt_logits(model, tok, rs[0]["question"])
        probs = torch.softmax(logits[-1], -1)
        top = torch.topk(logits[-1], 3).indices.tolist()
        assert [rs[2 * b]["branch_token_id"] for b in range(3)] == top
        for r in rs:
            assert r["branch_rank"] == r["path"] // 2 and r["sample"] == r["path"] % 2
            assert r["token_ids"][0] == r["branch_token_id"] == top[r["branch_rank"]]
            assert math.isclose(r["branch_prob"], probs[r["branch_token_id"]].item(), rel_tol=1e-3)
            assert r["n_tokens"] == len(r["token_ids"]) == len(r["logprobs"])
            assert r["text"] == tok.decode(r["token_ids"], skip_special_tokens=True)
            assert r["seed"] == 0 and r["mode"] == "sert" and r["finish"] in ("eos", "length")
    check_against_full_forward(model, tok, recs, c)


def test_paper_defaults_give_25_paths(tiny_model, tmp_path):
    model, tok = tiny_model
    c = MineConfig(max_new_tokens=2)
    assert (c.top_k_branches, c.samples_per_branch, c.top_k, c.top_p, c.temperature) == (5, 5, 10, 0.95, 1.0)
    recs = mine(model, tok, exs(1), c, tmp_path / "p.jsonl", progress=False)
    logits, _ = prompt_logits(model, tok, QUESTIONS[0])
    assert len(recs) == 25
    assert sorted({r["branch_token_id"] for r in recs}) == sorted(torch.topk(logits[-1], 5).indices.tolist())
    assert Counter(r["branch_rank"] for r in recs) == {i: 5 for i in range(5)}


def test_retired_rows_and_eos(tiny_model, tmp_path):
    model, tok = tiny_model
    m = eos_boosted(model, tok)
    c = cfg(top_k_branches=3, samples_per_branch=4, max_new_tokens=12)
    recs = mine(m, tok, exs(), c, tmp_path / "p.jsonl", progress=False)
    fin = Counter(r["finish"] for r in recs)
    assert fin["eos"] > 5 and fin["length"] > 5, fin
    assert len({r["n_tokens"] for r in recs if r["finish"] == "eos"}) > 3  # ended at varied steps
    check_against_full_forward(m, tok, recs, c)
    # an EOS branch is an empty path
    empty = [r for r in recs if r["branch_token_id"] == tok.eos_token_id]
    assert empty and all(r["n_tokens"] == 0 and r["text"] == "" and r["finish"] == "eos" for r in empty)
    # batch composition does not change a question's paths (compaction differs with the batch)
    solo = mine(m, tok, exs(), cfg(top_k_branches=3, samples_per_branch=4, max_new_tokens=12, batch_questions=1),
                tmp_path / "solo.jsonl", progress=False)
    assert [r["token_ids"] for r in solo] == [r["token_ids"] for r in recs]


def eos_second(model, tok):
    """A copy whose EOS logit lies strictly between its top-2 logits at every step: EOS is the
    second first token of every question (as it is among the top-5 for the embedded model)."""
    m = copy.deepcopy(model)
    eos = tok.eos_token_id

    def hook(_mod, _inp, out):
        out = out.clone()
        v = torch.topk(out, 2, dim=-1).values
        out[..., eos] = (v[..., 0] + v[..., 1]) / 2
        return out

    m.lm_head.register_forward_hook(hook)
    return m


def test_eos_branch_is_mined_empty_by_default_and_skipped_on_request(tiny_model, tmp_path):
    from sert.config import FilterConfig
    from sert.filters import run_filter

    model, tok = tiny_model
    m, eos = eos_second(model, tok), tok.eos_token_id
    c = cfg(top_k_branches=3, samples_per_branch=2, max_new_tokens=6)
    recs = mine(m, tok, exs(2), c, tmp_path / "paper" / "paths.jsonl", progress=False)
    for rs in by_q(recs).values():  # paper: k*n paths, the n of the EOS branch empty
        assert len(rs) == 6
        assert [r["path"] for r in rs if r["n_tokens"] == 0] == [2, 3]
        assert {r["branch_token_id"] for r in rs if r["n_tokens"] == 0} == {eos}
    f = run_filter(tmp_path / "paper" / "paths.jsonl", tmp_path / "paper", FilterConfig())
    assert f["stages"][1] == {"stage": "eos_branch", "paths": 8, "questions": 2, "removed": 4,
                              "removed_by": {"eos_branch": 4}}

    s = cfg(top_k_branches=3, samples_per_branch=2, max_new_tokens=6, skip_eos_branch=True)
    skip = mine(m, tok, exs(2), s, tmp_path / "skip.jsonl", progress=False)
    for q, rs in by_q(skip).items():
        assert len(rs) == 6 and all(r["n_tokens"] >= 1 and r["branch_token_id"] != eos for r in rs)
        logits, _ = prompt_logits(m, tok, rs[0]["question"])
        probs = torch.softmax(logits[-1], -1)
        logits[-1, eos] = float("-inf")
        assert [rs[2 * b]["branch_token_id"] for b in range(3)] == torch.topk(logits[-1], 3).indices.tolist()
        assert [r["branch_rank"] for r in rs] == [0, 0, 1, 1, 2, 2]
        assert all(math.isclose(r["branch_prob"], probs[r["branch_token_id"]].item(), rel_tol=1e-3) for r in rs)
    check_against_full_forward(m, tok, skip, s)
    assert settings_key(s) == settings_key(c) + " skip_eos"
    with pytest.raises(SertError, match="other settings"):  # never mixed with paths mined the paper's way
        mine(m, tok, exs(2), s, tmp_path / "paper" / "paths.jsonl", progress=False)


# ------------------------------------------------------------------ the sampler
def test_sampler_matches_hf_warpers():
    from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                        TopPLogitsWarper)

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 60, generator=g) * 2.5
    for T, k, p in [(1.0, 10, 0.95), (0.7, 10, 0.8), (1.3, 5, 0.5), (1.0, 10, 1.0)]:
        ref = TopPLogitsWarper(p)(None, TopKLogitsWarper(k)(None, TemperatureLogitsWarper(T)(None, logits.clone())))
        ref = torch.softmax(ref, -1)
        idx, prob = top_k_top_p_dist(logits, k, p, T)
        mine_full = torch.zeros_like(ref).scatter_(1, idx, prob)
        assert torch.allclose(mine_full, ref, atol=1e-6), (T, k, p)
        # empirical frequencies of many draws vs the exact distribution
        n = 20000
        rows = logits[:1].expand(n, -1)
        u = torch.rand(n, generator=g)
        draws = sample_top_k_top_p(rows, u, k, p, T)
        freq = torch.bincount(draws, minlength=60).float() / n
        assert 0.5 * (freq - ref[0]).abs().sum() < 0.02
        assert (freq[ref[0] == 0] == 0).all()


def test_first_sampled_token_distribution_end_to_end(tiny_model, tmp_path):
    """Empirical frequency of the token sampled right after the branch vs the exact top-k/top-p law."""
    model, tok = tiny_model
    draws = Counter()
    for seed in range(4):
        c = cfg(top_k_branches=1, samples_per_branch=500, max_new_tokens=2, seed=seed, batch_questions=1)
        for r in mine(model, tok, exs(1), c, tmp_path / f"d{seed}.jsonl", progress=False):
            draws[r["token_ids"][1]] += 1
    logits, _ = prompt_logits(model, tok, QUESTIONS[0], [r["token_ids"][0]])
    idx, p = top_k_top_p_dist(logits[-1][None], 10, 0.95, 1.0)
    exact = dict(zip(idx[0].tolist(), p[0].tolist()))
    n = sum(draws.values())
    assert set(draws) <= {t for t, q in exact.items() if q > 0}
    tv = 0.5 * sum(abs(draws.get(t, 0) / n - q) for t, q in exact.items())
    assert tv < 0.06, tv


# ------------------------------------------------------------------ determinism and resume
def test_deterministic_under_a_seed(tiny_model, tmp_path):
    model, tok = tiny_model
    a = mine(model, tok, exs(), cfg(), tmp_path / "a.jsonl", progress=False)
    b = mine(model, tok, exs(), cfg(), tmp_path / "b.jsonl", progress=False)
    c = mine(model, tok, exs(), cfg(seed=1), tmp_path / "c.jsonl", progress=False)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert [r["token_ids"] for r in a] != [r["token_ids"] for r in c]
    assert [r["branch_token_id"] for r in a] == [r["branch_token_id"] for r in c]  # branches are not sampled
    assert question_seed(0, "q1") != question_seed(0, "q2") != question_seed(1, "q1")


# ------------------------------------------------------------------ both cache argument names
def _other_cache_name(model, calls):
    """A copy whose forward takes the other cache argument name than the installed transformers'
    (5.x: ``cache``, 4.x: ``past_key_values``) and no ``logits_to_keep``, like an older model."""
    m = copy.deepcopy(model)
    orig = m.forward
    own, _ = _forward_kw(model)
    other = "past_key_values" if own == "cache" else "cache"

    def forward(input_ids=None, attention_mask=None, position_ids=None, use_cache=None, **kw):
        calls.append(other in kw)
        return orig(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    use_cache=use_cache, **{own: kw.pop(other)})

    forward.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
         for n in ("input_ids", "attention_mask", "position_ids", other, "use_cache")])
    m.forward = forward
    return m, other


def test_installed_cache_argument_is_the_one_the_model_takes(tiny_model):
    model, _ = tiny_model
    params = inspect.signature(model.forward).parameters
    kw, extra = _forward_kw(model)
    assert kw == ("cache" if "cache" in params else "past_key_values") and kw in params
    assert extra == ({"logits_to_keep": 1} if "logits_to_keep" in params else {})


def test_both_cache_argument_names_mine_the_same_paths(tiny_model, tmp_path):
    """transformers 5.x renamed ``past_key_values`` to ``cache``: mining through either name (and
    with or without ``logits_to_keep``) gives the same paths."""
    model, tok = tiny_model
    calls = []
    other_model, other = _other_cache_name(model, calls)
    assert _forward_kw(other_model) == (other, {})
    a = mine(model, tok, exs(), cfg(), tmp_path / "a.jsonl", progress=False)
    b = mine(other_model, tok, exs(), cfg(), tmp_path / "b.jsonl", progress=False)
    assert calls and all(calls)
    assert [(r["token_ids"], r["finish"]) for r in a] == [(r["token_ids"], r["finish"]) for r in b]
    for ra, rb in zip(a, b):
        assert ra["logprobs"] == pytest.approx(rb["logprobs"], abs=1e-4)


def test_resume_in_process_skips_done_and_repairs_a_torn_question(tiny_model, tmp_path, monkeypatch):
    import sert.mine as mm

    model, tok = tiny_model
    c = cfg(batch_questions=2)
    full = tmp_path / "full.jsonl"
    mine(model, tok, exs(), c, full, progress=False)

    part = tmp_path / "part.jsonl"
    mine(model, tok, exs(2), c, part, progress=False)
    lines = full.read_text().splitlines(keepends=True)
    # a kill in the middle of the next append: 3 whole lines of q2, then half a line
    with open(part, "a") as f:
        f.write("".join(lines[12:15]) + lines[15][:40])
    mined = []
    real = mm._decode_chunk
    monkeypatch.setattr(mm, "_decode_chunk", lambda m, t, todo, *a: mined.append([e.id for e in todo]) or
                        real(m, t, todo, *a))
    recs = mine(model, tok, exs(), c, part, progress=False)
    assert mined == [["q2", "q3"]]
    assert part.read_bytes() == full.read_bytes()
    assert len(recs) == 24 and len({(r["id"], r["path"]) for r in recs}) == 24
    mined.clear()
    mine(model, tok, exs(), c, part, progress=False)  # complete: nothing to do
    assert mined == []
    with pytest.raises(SertError, match="other settings"):
        mine(model, tok, exs(), cfg(batch_questions=2, max_new_tokens=7), part, progress=False)


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_resume_after_sigkill_equals_an_uninterrupted_run(tiny_model, tiny_dir, tmp_path):
    model, tok = tiny_model
    run = tmp_path / "run"
    n_q, k, n, T, B = 30, 3, 3, 16, 2
    args = [sys.executable, "-m", "sert", "mine", "--model", str(tiny_dir), "--task", "strategyqa",
            "--limit", str(n_q), "--out", str(run), "--device", "cpu", "--quiet", "--top-k-branches", str(k),
            "--samples-per-branch", str(n), "--max-new-tokens", str(T), "--batch-questions", str(B)]
    paths = run / "paths.jsonl"
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if paths.exists() and paths.stat().st_size > 0 and paths.read_bytes().count(b"\n") >= k * n:
            break
        time.sleep(0.003)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-500:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    got = paths.read_bytes().count(b"\n")
    assert 0 < got < n_q * k * n
    meta = json.loads((run / "mine_meta.json").read_text())
    assert meta["status"] == "running"

    r = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "already done" in r.stdout
    meta = json.loads((run / "mine_meta.json").read_text())
    assert meta["status"] == "done" and 0 < meta["this_run"]["questions_mined"] < n_q
    assert meta["this_run"]["sampled_tokens_per_s"] > 0 and len(meta["history"]) == 1
    assert meta["paths"] == n_q * k * n
    assert (meta["dtype"], meta["dtype_reason"]) == ("float32", "auto: probe off (SERT_DTYPE_PROBE=0)")

    # uninterrupted reference, in process, same weights, same settings
    ref = mine(model, tok, load_examples("strategyqa", "train", n_q),
               MineConfig(top_k_branches=k, samples_per_branch=n, max_new_tokens=T, batch_questions=B, limit=n_q),
               tmp_path / "ref.jsonl", progress=False)
    out = [json.loads(x) for x in paths.read_text().splitlines()]
    assert [(x["id"], x["path"]) for x in out] == [(x["id"], x["path"]) for x in ref]
    assert [x["text"] for x in out] == [x["text"] for x in ref]
    assert [x["token_ids"] for x in out] == [x["token_ids"] for x in ref]


# ------------------------------------------------------------------ cot-decoding and delta
def test_cot_decoding_mode(tiny_model, tmp_path):
    model, tok = tiny_model
    c = cfg(mode="cot-decoding", top_k_branches=4, max_new_tokens=8)
    recs = mine(model, tok, exs(), c, tmp_path / "c.jsonl", progress=False)
    assert len(recs) == 4 * 4 and {r["sample"] for r in recs} == {0}
    assert all(r["mode"] == "cot-decoding" and "delta" in r for r in recs)
    check_against_full_forward(model, tok, recs, c)
    again = mine(model, tok, exs(), cfg(mode="cot-decoding", top_k_branches=4, max_new_tokens=8, seed=5),
                 tmp_path / "c2.jsonl", progress=False)
    assert [r["token_ids"] for r in again] == [r["token_ids"] for r in recs]  # greedy: seed-free


def test_answer_span_and_delta(tiny_model):
    _, tok = tiny_model
    text = " Birds have wings, so the answer is yes."
    s = extract_answer(text, "yesno").span
    assert text[s[0]:s[1]] == "yes"
    s = extract_answer(" No, dogs cannot fly.", "yesno").span
    assert s == (1, 3)
    t = " 3 apples plus 4 is 7 apples"
    s = extract_answer(t, "number").span
    assert t[s[0]:s[1]] == "7"
    t = " I think (B) is right"
    s = extract_answer(t, "choice", ["a", "b", "c"]).span
    assert t[s[0]:s[1]] == "(B)"
    assert extract_answer(" The sky is a thing", "yesno").span is None
    assert extract_answer("", "yesno").span is None

    ids = tok(text, add_special_tokens=False)["input_ids"]
    margins = [0.1 * i for i in range(len(ids))]
    yes_tok = [i for i in range(len(ids)) if "yes" in tok.decode([ids[i]])]
    d = path_delta(tok, ids, tok.decode(ids), margins, "yesno")
    assert d == pytest.approx(sum(margins[i] for i in yes_tok) / len(yes_tok), abs=1e-6)
    assert path_delta(tok, [], "", [], "yesno") is None
    assert path_delta(tok, tok(" 日本 🙂", add_special_tokens=False)["input_ids"], " 日本 🙂", [0.5] * 8,
                      "yesno") is None


# ------------------------------------------------------------------ CLI
def test_cli_errors_are_one_line(tiny_dir, tmp_path, capsys):
    from sert.cli import main

    for argv, msg in [
        (["mine", "--model", str(tiny_dir), "--task", "strategyqq", "--out", str(tmp_path / "x")], "unknown task"),
        (["mine", "--model", str(tiny_dir), "--task", "strategyqa", "--top-p", "1.5", "--out", str(tmp_path)], "top_p"),
        (["mine", "--model", str(tiny_dir), "--task", "strategyqa", "--mode", "beam", "--out", str(tmp_path)], "mode"),
        (["mine", "--model", str(tiny_dir), "--task", "strategyqa", "--limit", "0", "--out", str(tmp_path)], "limit"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("sert: error:") and msg in err, err


@pytest.fixture(scope="module")
def short_ctx_dir(tiny_model, tmp_path_factory):
    """The tiny Llama with a 64-position context, saved for the CLI."""
    model, tok = tiny_model
    m = copy.deepcopy(model)
    m.config.max_position_embeddings = 64
    d = tmp_path_factory.mktemp("tiny-64")
    m.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_a_question_longer_than_the_context_is_cut_with_a_warning(short_ctx_dir, tmp_path, capsys):
    from sert.cli import main

    data = tmp_path / "mine.jsonl"
    rows = [{"question": q, "answer": "yes"} for q in QUESTIONS[:2]]
    rows.append({"id": "long", "question": "Is this long? " + "very " * 60000 + "long indeed?", "answer": "no"})
    rows.append({"question": QUESTIONS[2], "answer": "no"})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(rows[2]["question"]) > 300_000
    out = tmp_path / "run"
    argv = ["mine", "--model", str(short_ctx_dir), "--task", str(data), "--out", str(out), "--device", "cpu",
            "--quiet", "--top-k-branches", "2", "--samples-per-branch", "2", "--max-new-tokens", "8"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    err = [x for x in err.splitlines() if x.startswith("sert:")]  # (not the weight-loading bar)
    assert len(err) == 1 and err[0].startswith(f"sert: warning: {data}:3 (id long): prompt of "), err
    assert "exceeds the context (64) minus max_new_tokens (8); kept its last 56 tokens" in err[0]
    recs = [json.loads(x) for x in (out / "paths.jsonl").read_text().splitlines()]
    assert Counter(r["id"] for r in recs) == {"mine-0": 4, "mine-1": 4, "long": 4, "mine-3": 4}
    assert all(r["n_tokens"] >= 1 for r in recs if r["id"] == "long")
    # max_new_tokens alone fills the context: refused, naming the option
    assert main(argv[:-1] + ["64", "--out", str(tmp_path / "r2")]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("sert:")]
    assert len(err) == 1 and err[0].startswith("sert: error: mine.max_new_tokens (--max-new-tokens) 64: leaves no "
                                               "room") and "at most 63" in err[0], err
    assert not (tmp_path / "r2").exists()


def test_prompt_fitting_keeps_the_end_of_a_built_in_question(tiny_model, capsys):
    from sert.mine import prompt_ids

    _, tok = tiny_model
    ex = Example("sqa-1", "word " * 100 + "Is it?", "no", "yesno", None, 0)
    full = tok(mining_prompt(ex.question))["input_ids"]
    (ids,) = prompt_ids(tok, [ex], 50, 10, where="task strategyqa, split train")
    assert ids == full[-40:]
    assert capsys.readouterr().err == (f"sert: warning: task strategyqa, split train (id sqa-1): prompt of {len(full)} "
                                       "tokens exceeds the context (50) minus max_new_tokens (10); kept its last 40 "
                                       "tokens\n")
    assert prompt_ids(tok, [ex], None, 10) == [full] and capsys.readouterr().err == ""


def test_settings_key_names_every_sampling_setting():
    k = settings_key(MineConfig())
    for part in ("k=5", "n=5", "top_k=10", "top_p=0.95", "T=1.0", "max_new=128", "seed=0"):
        assert part in k


def test_answer_span_after_the_answer_phrase():
    t = " 2 + 3 = 5, so the answer is 5 apples"
    s = extract_answer(t, "number").span
    assert s == (t.rindex("5"), t.rindex("5") + 1)
    t = " It is cold there. Therefore, the answer is no, it is not."
    s = extract_answer(t, "yesno").span
    assert t[s[0]:s[1]] == "no"
