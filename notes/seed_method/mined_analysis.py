"""Decisions of the seed-method issue from the committed mined paths (no model, no sert training).

For each task's committed mine (notes/{sqa,csqa}_full_mine.thin.jsonl.xz, the paths the full runs filtered,
thinned: sert.filters.thin_path):
1. confidence weight: which confidence, 1/PPL or the CoT-decoding delta, separates the paths whose stated
   answer is gold from those whose stated answer is not (ROC AUC), among the paths that pass the paper's
   filters and among the selected ones;
2. drop_unfinished: how the paths that ran to the mining cap (finish == "length") differ from the others;
3. branch token in the perplexity: which branches the selection takes with and without it.

Usage: python3 notes/seed_method/mined_analysis.py [notes/csqa_full_mine.thin.jsonl.xz ...]
Reads the filters through sert (the same rules as `sert filter`); the AUC is a plain rank count.
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from sert.answers import extract_answer, is_correct
from sert.config import FilterConfig
from sert.filters import active_rules, annotate, first_rejecting_rule, read_paths, select

ROOT = Path(__file__).resolve().parents[2]


def auc(pos: list[float], neg: list[float]) -> float | None:
    """P(score of a random positive > a random negative), ties 1/2 (Mann-Whitney)."""
    if not pos or not neg:
        return None
    allv = sorted([(v, 1) for v in pos] + [(v, 0) for v in neg])
    ranks, i = {}, 0
    r = [0.0] * len(allv)
    while i < len(allv):
        j = i
        while j < len(allv) and allv[j][0] == allv[i][0]:
            j += 1
        for k in range(i, j):
            r[k] = (i + j + 1) / 2
        i = j
    rp = sum(rk for rk, (_, lab) in zip(r, allv) if lab == 1)
    return (rp - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def gold_state(p: dict) -> bool | None:
    a = extract_answer(p["text"], p["kind"], p.get("choices")).answer
    return None if a is None else is_correct(a, p["answer"], p["kind"])


def separation(paths: list[dict], what: str) -> None:
    lab = [(p, gold_state(p)) for p in paths]
    stated = [(p, g) for p, g in lab if g is not None]
    print(f"  {what}: {len(paths)} paths, {len(stated)} state an answer, "
          f"{sum(g for _, g in stated)} of them gold ({100 * sum(g for _, g in stated) / max(1, len(stated)):.1f}%)")
    for name, f in (("1/PPL", lambda p: 1 / p["ppl"] if p["ppl"] else None), ("delta", lambda p: p.get("delta"))):
        pos = [f(p) for p, g in stated if g and f(p) is not None]
        neg = [f(p) for p, g in stated if not g and f(p) is not None]
        a = auc(pos, neg)
        print(f"    {name:6s} AUC gold vs not-gold {a if a is None else round(a, 3)} "
              f"(n {len(pos)} / {len(neg)}; defined for {len(pos) + len(neg)} of {len(stated)})")


def main(files: list[str]) -> None:
    cfg = FilterConfig()
    rules = active_rules(cfg)
    for fn in files:
        raw = read_paths(fn)
        paths = annotate([dict(p) for p in raw])
        print(f"== {fn}: {len(paths)} paths, {len({p['id'] for p in paths})} questions")
        surv = [p for p in paths if first_rejecting_rule(p, rules, cfg) is None]
        sel = list(select(surv, "rep2").values())
        # 1. confidence
        separation(surv, "survivors of the paper's filters")
        separation(sel, "selected (lowest rep-2 per question)")
        # 2. unfinished
        for what, ps in (("survivors", surv), ("selected", sel)):
            for fin in ("eos", "length"):
                g = [p for p in ps if p["finish"] == fin]
                st = [gold_state(p) for p in g]
                stated = [s for s in st if s is not None]
                print(f"  {what} finish={fin}: {len(g)} ({100 * len(g) / max(1, len(ps)):.1f}%), state an answer "
                      f"{100 * len(stated) / max(1, len(g)):.1f}%, gold among stated "
                      f"{100 * sum(stated) / max(1, len(stated)):.1f}%, mean tokens "
                      f"{sum(p['n_tokens'] for p in g) / max(1, len(g)):.1f}")
        cut_sel = [p for p in sel if p["finish"] == "length"]
        ends = Counter(p["text"].rstrip()[-1:] in ".!?" for p in cut_sel)
        print(f"  selected cut at the cap: {len(cut_sel)}; ending on . ! ? {ends[True]}, mid-sentence {ends[False]}")
        cfg_u = FilterConfig()
        surv_u = [p for p in surv if p["finish"] != "length"]
        sel_u = select(surv_u, "rep2")
        print(f"  drop_unfinished: selected questions {len(sel)} -> {len(sel_u)}; "
              f"same path kept for {sum(1 for p in sel if p['id'] in sel_u and sel_u[p['id']] is p)}")
        # 3. branch token in the perplexity
        print("  branch rank of the selected paths (with the branch token in PPL):",
              dict(sorted(Counter(p["branch_rank"] for p in sel).items())))
        alt = annotate([dict(p) for p in raw], branch_token=False)
        surv_b = [p for p in alt if first_rejecting_rule(p, rules, cfg) is None]
        sel_b = select(surv_b, "rep2")
        print("  branch rank of the selected paths (without it):",
              dict(sorted(Counter(p["branch_rank"] for p in sel_b.values()).items())))
        by_rank = {}
        for ps, tag in ((surv, "with"), (surv_b, "without")):
            by_rank[tag] = dict(sorted(Counter(p["branch_rank"] for p in ps).items()))
        print(f"  PPL-filter survivors by branch rank: with {by_rank['with']}, without {by_rank['without']}")
        pre = [p for p in alt if first_rejecting_rule(p, [r for r in rules if r.name != "ppl"], cfg) is None]
        pre_w = [p for p in paths if first_rejecting_rule(p, [r for r in rules if r.name != "ppl"], cfg) is None]
        for rank in range(5):
            w = [p for p in pre_w if p["branch_rank"] == rank]
            wo = [p for p in pre if p["branch_rank"] == rank]
            if w:
                print(f"    rank {rank}: {len(w)} paths before the PPL filter; pass PPL>=5 with branch token "
                      f"{100 * sum(p['ppl'] >= 5 for p in w if p['ppl']) / len(w):.1f}%, without "
                      f"{100 * sum(p['ppl'] >= 5 for p in wo if p['ppl']) / len(wo):.1f}%")
        changed = sum(1 for q, p in sel_b.items() if q not in {x['id'] for x in sel} or
                      next(x for x in sel if x['id'] == q)['path'] != p['path'])
        print(f"  selected questions with/without: {len(sel)} / {len(sel_b)}; selections that differ: {changed}")


if __name__ == "__main__":
    main(sys.argv[1:] or [str(ROOT / "notes/sqa_full_mine.thin.jsonl.xz"), str(ROOT / "notes/csqa_full_mine.thin.jsonl.xz")])
