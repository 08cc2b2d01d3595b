"""Stage 1b: filtering mined paths (SERT §II-A), then one path per question.

Input: ``RUN/paths.jsonl`` from :mod:`sert.mine`. Outputs in ``--out``:
``selected.jsonl`` (one record per surviving question), ``rejected.jsonl`` (every other
path with the rule that rejected it), ``funnel.json`` + ``funnel.png`` (paths and
questions left after each filter, and the ablation view), ``ablation/`` (the selected
set after each filter is added, for judging as in the paper's Fig. 4).

The paper's filters, in its order, each a named rule with a configurable threshold
(:class:`~sert.config.FilterConfig`), after one rule of ours at the head:

0. ``eos_branch`` -- the path is empty: its branch token was EOS (with the embedded model EOS
   is among the top-5 first tokens of every StrategyQA question: 5 of the 25 paths). The
   paper's filters drop such a path anyway (no reasoning); this rule counts them apart.
   ``mine.skip_eos_branch`` branches on the top-k tokens other than EOS instead.
1. ``pattern`` -- three rules: ``prompt_imitation`` (the path writes ``Question:`` /
   ``Answer:`` / ``Q:`` or ``Answer Choices:`` itself), ``direct_answer`` (after removing
   sentences that only state an answer, fewer than ``direct_answer_min_words`` words are
   left), ``option_listing`` (``option_listing_min`` or more option markers such as
   ``(A)``/``B.``, short list items, or distinct answer-choice texts).
2. ``length``  -- fewer than ``min_tokens`` tokens (25).
3. ``rep2``    -- bigram repetition rate above ``max_rep2`` (0.20).
4. ``ppl``     -- perplexity below ``min_ppl`` (5).
4b. optional, off by default: ``unfinished`` (``drop_unfinished``) -- the path ran to the mining cap
   without ending: cut mid-sentence, before the gold answer is appended to it.
5. optional, off by default: ``answer_consistency`` -- the path states an answer that
   is not the gold one (read by the shared :func:`sert.answers.extract_answer`; a path
   that states none is kept: it does not contradict the gold answer).

Then per question the surviving path with the lowest rep-2 is kept (ties: the earlier
path, i.e. the more probable branch, then the earlier sample). Paths mined in mode
``cot-decoding`` are selected as Wang & Zhou (2024) do instead: the highest CoT-decoding
confidence Δ (``delta``; a path without an answer ranks last), ties again to the earlier path.

Measures. rep-n = 1 - unique n-grams / total n-grams over the path's *model token ids*
(``token_ids`` in the paths file), 0 for a path with fewer than n tokens. Perplexity =
exp(-mean log-prob) of the path's tokens under the model that sampled them (recorded at
mining time); undefined (None) for an empty path, which the length filter removes anyway. The
path's first token is its branch token (chosen by rank, not sampled); it counts, as the paper takes
the perplexity of the path (``ppl_branch_token: false`` leaves it out). Measured on the committed
mines, leaving it out moves 57 of 1052 StrategyQA and 12 of 549 CommonsenseQA selections and does
not remove the selection's lean to branches 2-4, which comes from the pattern and length filters
(docs/METHOD.md).

A *thinned* paths file (:func:`thin_path`; the committed mined paths in ``notes/`` are stored so)
keeps every field but the per-token lists: ``logprobs`` is replaced by ``logprob_sum`` (their sum,
from which the perplexity follows exactly) and ``logprob_first`` (the branch token's), and
``token_ids`` by ``rep2`` (the value computed from them). The filter reads either kind, and a paths
file compressed with xz or gzip as well.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .answers import NEXT_EXAMPLE, extract_answer, is_correct
from .config import FilterConfig, check
from .metrics import rep_n as _metrics_rep_n
from .errors import SertError
from .io import (RunLock, atomic_save_figure, atomic_write_json, atomic_write_jsonl, ensure_dir, open_text,
                 reads_utf8, remove_stale_temps)

# ------------------------------------------------------------------ measures


def rep_n(tokens: Sequence, n: int = 2) -> float:
    """1 - unique n-grams / total n-grams (the evaluation's measure, rep-2 by default)."""
    return _metrics_rep_n(tokens, n)


def perplexity(logprobs: Sequence[float]) -> float | None:
    """exp(-mean log-prob); None for an empty path."""
    if not logprobs:
        return None
    return _ppl(sum(logprobs), len(logprobs))


def _ppl(logprob_sum: float, n: int) -> float | None:
    return math.exp(-logprob_sum / n) if n else None


# ------------------------------------------------------------------ pattern rules
# The prompt's markers anywhere in a path, in any case: broader than a next example's start.
_PROMPT_MARKER = re.compile(r"\bquestion\s*:|\banswer(?:\s+choices)?\s*:|(?:^|\n)\s*q\s*:", re.IGNORECASE)


def prompt_imitation(text: str) -> bool:
    """The path imitates the prompt format: it starts a hallucinated next example
    (:data:`sert.answers.NEXT_EXAMPLE`, what evaluation cuts and the Fmt metric flags) or writes
    ``Question:``, ``Answer:``, ``Answer Choices:`` (anywhere, any case) or ``Q:`` (at a line start)
    itself."""
    return bool(NEXT_EXAMPLE.search(text) or _PROMPT_MARKER.search(text))


_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_ANSWER_ONLY = re.compile(
    r"(?:(?:so|therefore|thus|hence)\s*,?\s*)?(?:the\s+)?(?:correct\s+|final\s+|right\s+)?answer\s+"
    r"(?:is|would be|=)(?:\s*\S+){0,4}"                                    # (so) the answer is X
    r"|(?:yes|no|true|false|correct|incorrect|maybe)(?:\s*,?\s*(?:it|they|that|this)?\s*"
    r"(?:is|isn't|is not|does|doesn't|does not|do|don't|do not|are|aren't|are not|can|can't|cannot|will|won't|not)"
    r"(?:\s+not)?)?"                                                          # Yes. / No, it is not.
    r"|\(\s*[a-e]\s*\)(?:\s+\S+){0,4}|(?-i:[A-E])"                            # (B) bank / B
    r"|-?\$?\d[\d,]*(?:\.\d+)?%?",                                             # 42
    re.IGNORECASE,
)


def _answer_only(sentence: str, choices: Sequence[str] | None) -> bool:
    s = sentence.strip().rstrip(".!?,;: ").strip()
    if not s:
        return True
    if _ANSWER_ONLY.fullmatch(s):
        return True
    low = s.lower()
    return bool(choices) and any(low == c.lower().strip() for c in choices)


def direct_answer(text: str, min_words: int = 5, choices: Sequence[str] | None = None) -> bool:
    """A plain direct answer with no reasoning: once sentences that only state an answer
    (``Yes.``, ``(B) bank.``, ``42``, ``So the answer is no.``) are removed, fewer than
    ``min_words`` words are left."""
    rest = [s for s in _SENTENCE.split(text) if not _answer_only(s, choices)]
    words = sum(len(re.findall(r"\w+", s)) for s in rest)
    return words < min_words


_OPTION_MARK = re.compile(r"(?<![\w(])\(?\s*[A-E]\s*\)|(?m:^\s*[A-E]\s*[.):]\s)")
_LIST_ITEM = re.compile(r"(?m)^\s*(?:[-*\u2022]|\d+[.)]|[A-Ea-e][.)]|\([A-Ea-e1-9]\))\s*(.*)$")


def option_listing(text: str, min_items: int = 3, choices: Sequence[str] | None = None) -> bool:
    """Repetitive listing of options: at least ``min_items`` option markers (``(A)``, ``A)``, ``B.``
    at a line start), or ``min_items`` short list items (at most 3 words each), or ``min_items``
    distinct answer-choice texts of the question named in the path."""
    if len(_OPTION_MARK.findall(text)) >= min_items:
        return True
    short_items = [m.group(1) for m in _LIST_ITEM.finditer(text) if len(m.group(1).split()) <= 3]
    if len(short_items) >= min_items:
        return True
    if choices:
        low = _words(text)
        named = {c for c in choices if _words(c).strip() and _words(c) in low}
        if len(named) >= min_items:
            return True
    return False


def _words(s: str) -> str:
    """Lower-case words separated by single spaces, padded with spaces (for whole-word search)."""
    return " " + " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split()) + " "


# ------------------------------------------------------------------ the rules, in order
@dataclass(frozen=True)
class Rule:
    name: str        # written into rejected.jsonl
    stage: str       # the funnel stage it belongs to
    rejects: Callable[[dict, FilterConfig], bool]
    doc: str


def _consistency(p: dict, cfg: FilterConfig) -> bool:
    kind = p.get("kind")
    if not kind:
        raise SertError(f"answer consistency needs the answer kind; path {p.get('id')!r} has none")
    pred = extract_answer(p["text"], kind, p.get("choices")).answer
    if pred is None:
        return cfg.answer_consistency_strict  # strict (STaR): a path must reach the gold answer to stay
    return not is_correct(pred, p["answer"], kind)


RULES: list[Rule] = [
    Rule("eos_branch", "eos_branch", lambda p, c: p["n_tokens"] == 0, "branch token is EOS: an empty path"),
    Rule("prompt_imitation", "pattern", lambda p, c: prompt_imitation(p["text"]),
         "writes Question:/Answer:/Q: itself"),
    Rule("direct_answer", "pattern", lambda p, c: direct_answer(p["text"], c.direct_answer_min_words, p.get("choices")),
         "states an answer with no reasoning"),
    Rule("option_listing", "pattern", lambda p, c: option_listing(p["text"], c.option_listing_min, p.get("choices")),
         "lists options"),
    Rule("length", "length", lambda p, c: p["n_tokens"] < c.min_tokens, "fewer than min_tokens tokens"),
    Rule("rep2", "rep2", lambda p, c: p["rep2"] > c.max_rep2, "bigram repetition above max_rep2"),
    Rule("ppl", "ppl", lambda p, c: p["ppl"] is not None and p["ppl"] < c.min_ppl, "perplexity below min_ppl"),
    Rule("unfinished", "unfinished", lambda p, c: p.get("finish") == "length",
         "ran to the mining cap without ending"),
    Rule("answer_consistency", "consistency", _consistency, "stated answer contradicts the gold answer"),
]
RULE_NAMES = [r.name for r in RULES]


def active_rules(cfg: FilterConfig) -> list[Rule]:
    """The rules ``cfg`` switches on, in the paper's order (pattern rules as listed in ``cfg.patterns``)."""
    out = []
    for r in RULES:
        if r.stage == "pattern" and r.name not in cfg.patterns:
            continue
        if r.stage == "consistency" and not cfg.answer_consistency:
            continue
        if r.stage == "unfinished" and not cfg.drop_unfinished:
            continue
        out.append(r)
    return out


def first_rejecting_rule(path: dict, rules: Sequence[Rule], cfg: FilterConfig) -> str | None:
    for r in rules:
        if r.rejects(path, cfg):
            return r.name
    return None


SELECT_RULES = ("auto", "rep2", "confidence", "ppl")


def select_rule(paths: Sequence[dict], rule: str = "auto") -> str:
    """The selection rule in force: ``auto`` is the paper's lowest rep-2 for sampled paths (SERT §II-A)
    and the highest CoT-decoding confidence for cot-decoding paths (Wang & Zhou 2024)."""
    if rule != "auto":
        return rule
    return "confidence" if any(p.get("mode") == "cot-decoding" for p in paths) else "rep2"


def _select_key(p: dict, rule: str) -> tuple:
    """Smaller is better: ``rep2`` the lowest rep-2; ``confidence`` the highest confidence Δ (a path
    without one ranks last); ``ppl`` the lowest perplexity (the model's most confident path that passed
    the filters; (D), for variants beyond the paper). Ties: lower path index."""
    if rule == "confidence":
        d = p.get("delta")
        return (d is None, -(d or 0.0), p.get("path", 0))
    if rule == "ppl":
        return (p.get("ppl") is None, p.get("ppl") or 0.0, p.get("path", 0))
    return (p["rep2"], p.get("path", 0))


def select(paths: Sequence[dict], rule: str = "auto") -> dict[str, dict]:
    """Per question, the best path by :func:`_select_key` under :func:`select_rule`."""
    rule = select_rule(paths, rule)
    best: dict[str, dict] = {}
    for p in paths:
        b = best.get(p["id"])
        if b is None or _select_key(p, rule) < _select_key(b, rule):
            best[p["id"]] = p
    return best


def select_names(paths: Sequence[dict], rule: str = "auto") -> tuple[str, str]:
    """The funnel's name for the select stage and the rule its losers are rejected by."""
    rule = select_rule(paths, rule)
    if rule == "confidence":
        return "select (highest confidence)", "not_highest_confidence"
    if rule == "ppl":
        return "select (lowest perplexity)", "not_lowest_ppl"
    return "select", "not_lowest_rep2"


def confidence_weights(selected: Sequence[dict], source: str) -> list[float]:
    """Per-example loss weights with mean 1 over the selected set.

    ``ppl``: confidence = 1/PPL (the geometric-mean token probability); ``delta``: the
    CoT-decoding Δ (paths without one get the set's mean confidence, i.e. weight 1).
    """
    if source == "ppl":
        conf = [1.0 / p["ppl"] if p.get("ppl") else None for p in selected]
    elif source == "delta":
        conf = [p.get("delta") for p in selected]
    else:
        raise SertError(f"confidence_weight: expected 'ppl' or 'delta', got {source!r}")
    known = [c for c in conf if c is not None]
    mean = sum(known) / len(known) if known else 0.0
    if mean <= 0:
        return [1.0] * len(selected)
    return [round((c if c is not None else mean) / mean, 4) for c in conf]


def weight_stats(weights: Sequence[float]) -> dict:
    """The distribution of loss weights: n, mean, min, quartiles, max (what a run records of them)."""
    w = sorted(weights)
    if not w:
        return {"n": 0}

    def q(f: float) -> float:
        return round(w[min(len(w) - 1, int(f * (len(w) - 1) + 0.5))], 4)

    return {"n": len(w), "mean": round(sum(w) / len(w), 4), "min": round(w[0], 4), "q1": q(0.25), "median": q(0.5),
            "q3": q(0.75), "max": round(w[-1], 4)}


# ------------------------------------------------------------------ reading paths
_REQUIRED = {"id": str, "text": str, "token_ids": list, "logprobs": list, "n_tokens": int}
_THIN = {"token_ids": "rep2", "logprobs": "logprob_sum"}  # per-token list -> the aggregate a thinned path keeps


def thin_path(r: dict) -> dict:
    """A path record without its per-token lists: ``logprobs`` -> ``logprob_sum``, ``token_ids`` ->
    ``rep2`` (both as :func:`annotate` would compute them), every other field as it was. The filter
    gives the same result on thinned records as on the full ones."""
    out = {k: v for k, v in r.items() if k not in _THIN}
    out["logprob_sum"] = sum(r["logprobs"])
    out["logprob_first"] = r["logprobs"][0] if r["logprobs"] else None
    out["rep2"] = round(rep_n(r["token_ids"], 2), 6)
    return out


@reads_utf8("paths_file")
def read_paths(paths_file) -> list[dict]:
    """Read and validate a paths file; each problem is reported as ``file:line``."""
    p = Path(paths_file)
    if not p.exists():
        raise SertError(f"{p}: file not found")
    if p.is_dir():
        raise SertError(f"{p}: is a directory; pass its paths.jsonl")
    out, seen = [], set()
    with open_text(p) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                hint = "" if line.endswith("\n") else " (torn last line: rerun 'sert mine' to complete the run)"
                raise SertError(f"{p}:{n}: malformed JSON line ({e.msg}){hint}") from None
            if not isinstance(r, dict):
                raise SertError(f"{p}:{n}: expected a JSON object (a path record), got {type(r).__name__}")
            for k, tp in _REQUIRED.items():
                if k not in r and _THIN.get(k) in r:  # a thinned path: the aggregate instead of the list
                    k = _THIN[k]
                    if not _number(r[k]):
                        raise SertError(f"{p}:{n}: field '{k}' must be a number, got {type(r[k]).__name__}")
                    continue
                if k not in r:
                    also = f" (or '{_THIN[k]}' in a thinned paths file)" if k in _THIN else ""
                    raise SertError(f"{p}:{n}: missing field '{k}'{also} (is this a paths.jsonl from 'sert mine'?)")
                if not isinstance(r[k], tp) or (tp is int and isinstance(r[k], bool)):
                    raise SertError(f"{p}:{n}: field '{k}' must be {tp.__name__}, got {type(r[k]).__name__}")
            if "answer" not in r:
                raise SertError(f"{p}:{n}: missing field 'answer' (the gold answer)")
            lists = [k for k in _THIN if k in r]
            if any(len(r[k]) != r["n_tokens"] for k in lists):
                raise SertError(f"{p}:{n}: n_tokens={r['n_tokens']} but "
                                + " and ".join(f"{len(r[k])} {k}" for k in lists))
            if "logprobs" in r and not all(_number(x) and math.isfinite(x) for x in r["logprobs"]):
                raise SertError(f"{p}:{n}: field 'logprobs' must hold finite numbers")
            key = (r["id"], r.get("path", n))
            if key in seen:
                raise SertError(f"{p}:{n}: duplicate path {r.get('path')} of question {r['id']!r}")
            seen.add(key)
            out.append(r)
    if not out:
        raise SertError(f"{p}: no paths")
    return out


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def annotate(paths: list[dict], branch_token: bool = True) -> list[dict]:
    """Add ``rep2`` and ``ppl`` to each record (in place); returns the list. ``branch_token`` false: the
    perplexity leaves out the path's first (branch) token. A thinned record (:func:`thin_path`) keeps its
    ``rep2`` and has its perplexity from ``logprob_sum`` (and ``logprob_first``)."""
    for r in paths:
        if "token_ids" in r:
            r["rep2"] = round(rep_n(r["token_ids"], 2), 6)
        if "logprobs" in r:
            ppl = perplexity(r["logprobs"] if branch_token else r["logprobs"][1:])
        elif branch_token:
            ppl = _ppl(r["logprob_sum"], r["n_tokens"])
        elif "logprob_first" in r:
            ppl = _ppl(r["logprob_sum"] - r["logprob_first"], r["n_tokens"] - 1) if r["n_tokens"] else None
        else:
            raise SertError(f"path {r.get('path')} of question {r.get('id')!r} is thinned without its branch "
                            "token's log-prob (logprob_first): filter.ppl_branch_token false needs it")
        r["ppl"] = round(ppl, 4) if ppl is not None and math.isfinite(ppl) else None
    return paths


# ------------------------------------------------------------------ the funnel
def _verdicts(paths: list[dict], rules: Sequence[Rule], cfg: FilterConfig) -> list[frozenset]:
    """For each path, the names of every rule that rejects it (each rule evaluated once)."""
    return [frozenset(r.name for r in rules if r.rejects(p, cfg)) for p in paths]


def _first(fails: frozenset, rules: Sequence[Rule]) -> str | None:
    return next((r.name for r in rules if r.name in fails), None)


def _selected_stats(sel: dict[str, dict]) -> dict:
    v = list(sel.values())
    if not v:
        return {"questions": 0}
    with_ans = [p for p in v if p.get("kind") and extract_answer(p["text"], p["kind"], p.get("choices")).answer]
    right = [p for p in with_ans
             if is_correct(extract_answer(p["text"], p["kind"], p.get("choices")).answer, p["answer"], p["kind"])]
    ppls = sorted(p["ppl"] for p in v if p["ppl"] is not None)
    return {
        "questions": len(v),
        "mean_tokens": round(sum(p["n_tokens"] for p in v) / len(v), 2),
        "mean_rep2": round(sum(p["rep2"] for p in v) / len(v), 4),
        "median_ppl": round(ppls[len(ppls) // 2], 3) if ppls else None,
        "states_answer": round(len(with_ans) / len(v), 4),
        "answer_matches_gold": round(len(right) / len(with_ans), 4) if with_ans else None,
    }


def funnel(paths: list[dict], cfg: FilterConfig):
    """Apply the active rules in order to annotated paths.

    Returns (funnel dict, selected path per question, rejected records, the ablation's
    selected sets as (name, {id: path}) after each filter is added).
    """
    rules = active_rules(cfg)
    fails = _verdicts(paths, rules, cfg)
    nq = len({p["id"] for p in paths})
    stages = [{"stage": "mined", "paths": len(paths), "questions": nq}]
    rejected: list[dict] = []
    alive = list(range(len(paths)))
    order = list(dict.fromkeys(r.stage for r in rules))
    for stage in order:
        srules = [r for r in rules if r.stage == stage]
        by_rule = dict.fromkeys((r.name for r in srules), 0)
        keep = []
        for i in alive:
            w = _first(fails[i], srules)
            if w is None:
                keep.append(i)
            else:
                by_rule[w] += 1
                rejected.append(_rejected_record(paths[i], w, stage))
        alive = keep
        stages.append({"stage": stage, "paths": len(alive), "questions": len({paths[i]["id"] for i in alive}),
                       "removed": sum(by_rule.values()), "removed_by": by_rule})
    sel = select([paths[i] for i in alive], cfg.select)
    chosen = {id(p) for p in sel.values()}
    sel_stage, sel_rule = select_names(paths, cfg.select)
    for i in alive:
        if id(paths[i]) not in chosen:
            rejected.append(_rejected_record(paths[i], sel_rule, sel_stage))
    stages.append({"stage": sel_stage, "paths": len(sel), "questions": len(sel), "removed": len(alive) - len(sel)})

    # Ablation (the paper's Fig. 4 adds the filters one at a time): the selected set after
    # each addition, and what each rule removes on its own.
    cumulative, stats_sets = [], []
    for k in range(len(order) + 1):
        used = {r.name for r in rules if r.stage in order[:k]}
        keep = [p for p, f in zip(paths, fails) if not (f & used)]
        s = select(keep, cfg.select)
        stats_sets.append(("none" if k == 0 else "+" + order[k - 1], s))
        cumulative.append({"filters": order[:k], "paths": len(keep), "questions": len({p["id"] for p in keep}),
                           "selected": _selected_stats(s)})
    alone = []
    for r in rules:
        keep = [p for p, f in zip(paths, fails) if r.name not in f]
        alone.append({"rule": r.name, "stage": r.stage, "removed": len(paths) - len(keep),
                      "paths": len(keep), "questions": len({p["id"] for p in keep})})
    out = {"paths_file": None, "config": dataclasses.asdict(cfg), "rules": [r.name for r in rules],
           "stages": stages, "ablation": {"cumulative": cumulative, "alone": alone},
           "selected": _selected_stats(sel)}
    return out, sel, rejected, stats_sets


def _rejected_record(p: dict, rule: str, stage: str) -> dict:
    return {"id": p["id"], "path": p.get("path"), "branch_rank": p.get("branch_rank"), "sample": p.get("sample"),
            "rule": rule, "stage": stage, "n_tokens": p["n_tokens"], "rep2": p["rep2"], "ppl": p["ppl"],
            "text": p["text"]}


def _selected_record(p: dict) -> dict:
    return {"id": p["id"], "question": p.get("question"), "answer": p["answer"], "kind": p.get("kind"),
            "choices": p.get("choices"), "path": p["text"].strip(), "n_tokens": p["n_tokens"],
            "rep2": p["rep2"], "ppl": p["ppl"], "delta": p.get("delta"), "path_index": p.get("path"),
            "branch_rank": p.get("branch_rank"), "branch_token": p.get("branch_token"),
            "branch_token_id": p.get("branch_token_id"), "branch_prob": p.get("branch_prob"),
            "sample": p.get("sample"), "finish": p.get("finish"), "mode": p.get("mode"),
            **({"prompt": p["prompt"]} if p.get("prompt") else {})}


def format_funnel(f: dict) -> str:
    """The funnel as a plain-text table."""
    rows = [("stage", "paths", "questions", "removed", "by rule")]
    for s in f["stages"]:
        rb = s.get("removed_by", {})
        by = ", ".join(f"{k} {v}" for k, v in rb.items()) if len(rb) > 1 else ""
        rows.append((s["stage"], str(s["paths"]), str(s["questions"]), str(s.get("removed", "")), by))
    w = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w[i]) if i in (0, 4) else c.rjust(w[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("")
    lines.append("ablation (filters added one at a time; selected set):")
    hdr = ("filters", "paths", "questions", "mean tok", "mean rep2", "med ppl", "ans=gold")
    ab = [hdr]
    for c in f["ablation"]["cumulative"]:
        s = c["selected"]
        ab.append(("+".join(c["filters"]) or "none", str(c["paths"]), str(c["questions"]),
                   str(s.get("mean_tokens", "-")), str(s.get("mean_rep2", "-")), str(s.get("median_ppl", "-")),
                   str(s.get("answer_matches_gold", "-"))))
    w = [max(len(r[i]) for r in ab) for i in range(len(hdr))]
    lines += ["  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)) for r in ab]
    return "\n".join(lines)


def plot_funnel(f: dict, png) -> Path:
    """Draw the funnel (paths, questions per stage) and the cumulative ablation as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = f["stages"]
    names = [s["stage"] for s in st]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    x = range(len(names))
    bars = ax.bar(x, [s["paths"] for s in st], color="#4C72B0", label="paths")
    ax.set_xticks(list(x), names, rotation=20)
    ax.set_ylabel("paths surviving")
    for b, s in zip(bars, st):
        ax.annotate(f"{s['paths']}\n{s['questions']} q", (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_title("SERT filter funnel (paths; q = questions)")
    ax.margins(y=0.2)
    ax = axes[1]
    cum = f["ablation"]["cumulative"]
    lab = ["none"] + ["+" + c["filters"][-1] for c in cum[1:]]
    ax.plot(lab, [c["selected"].get("questions", 0) for c in cum], "o-", label="questions with a path")
    ax.set_ylabel("questions")
    ax.set_ylim(bottom=0, top=max(1, f["stages"][0]["questions"]) * 1.1)
    ax2 = ax.twinx()
    ax2.plot(lab, [c["selected"].get("mean_tokens") or 0 for c in cum], "s--", color="#C44E52",
             label="mean tokens of selected path")
    ax2.set_ylabel("mean tokens (selected)")
    ax2.set_ylim(bottom=0, top=max([c["selected"].get("mean_tokens") or 0 for c in cum] + [1]) * 1.2)
    ax.set_title("ablation: filters added one at a time")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower left")
    ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    return atomic_save_figure(fig, png)


def run_filter(paths_file, out_dir, cfg: FilterConfig) -> dict:
    """``sert filter``: filter ``paths_file`` into ``out_dir``; returns the funnel dict (see module doc)."""
    check(cfg)
    paths = annotate(read_paths(paths_file), cfg.ppl_branch_token)
    modes = sorted({str(p.get("mode", "sert")) for p in paths})
    if len(modes) > 1:
        raise SertError(f"{paths_file}: mixes paths mined in modes {', '.join(modes)}; filter one mode at a time")
    if cfg.answer_consistency:
        for p in paths:
            if not p.get("kind"):
                raise SertError(f"{paths_file}: path of question {p['id']!r} has no 'kind'; "
                                "answer consistency needs it")
    f, sel, rejected, sets = funnel(paths, cfg)
    f["paths_file"] = str(paths_file)
    with RunLock(out_dir) as lock:  # a second sert process on this directory is refused
        return _write_outputs(lock.dir, paths, f, sel, rejected, sets, cfg)


def _write_outputs(out: Path, paths, f, sel, rejected, sets, cfg: FilterConfig) -> dict:
    order = {}
    for p in paths:
        order.setdefault(p["id"], len(order))
    chosen = sorted(sel.values(), key=lambda p: order[p["id"]])
    records = [_selected_record(p) for p in chosen]
    if cfg.confidence_weight:
        for r, w in zip(records, confidence_weights(chosen, cfg.confidence_weight)):
            r["weight"] = w
        f["weights"] = {"source": cfg.confidence_weight, **weight_stats([r["weight"] for r in records])}
    atomic_write_jsonl(out / "selected.jsonl", records)
    atomic_write_jsonl(out / "rejected.jsonl", rejected)
    abl = ensure_dir(out / "ablation")
    remove_stale_temps(abl)
    names = set()
    for k, (name, s) in enumerate(sets):
        names.add(f"{k}-{name.lstrip('+')}.jsonl")
        atomic_write_jsonl(abl / f"{k}-{name.lstrip('+')}.jsonl",
                           [_selected_record(p) for p in sorted(s.values(), key=lambda p: order[p["id"]])])
    for old in abl.glob("*.jsonl"):  # an earlier run's filter set (other settings)
        if old.name not in names:
            old.unlink()
    atomic_write_json(out / "funnel.json", f)
    plot_funnel(f, out / "funnel.png")
    return f
