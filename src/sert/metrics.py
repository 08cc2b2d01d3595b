"""The paper's evaluation metrics (SERT §III) and the statistics around them.

- ``acc``  accuracy, with a 95% bootstrap confidence interval;
- ``fmt``  format alignment: share of outputs with no format error (no
  ``So the answer is <answer>``), no hallucinated continuation (a new
  ``Question:``/``Q:``: :data:`sert.answers.NEXT_EXAMPLE`) and no severe repetition;
- ``len``  mean reasoning length in tokens (output before the answer phrase);
- ``rep``  unigram repetition rep-1 = 1 - unique tokens / tokens.

(D) rep-n = 1 - unique n-grams / total n-grams (SERT cites it without a formula).
(D) "severe repetition": rep-4 > 0.5 over the output tokens, i.e. most 4-grams repeat.
"""
from __future__ import annotations

import math
import random
from typing import Sequence

from .answers import has_continuation

SEVERE_REP4 = 0.5


def rep_n(tokens: Sequence, n: int) -> float:
    """1 - unique n-grams / total n-grams; 0.0 when there are no n-grams."""
    total = len(tokens) - n + 1
    if total <= 0:
        return 0.0
    grams = {tuple(tokens[i:i + n]) for i in range(total)}
    return 1.0 - len(grams) / total


def format_issues(text: str, strict_answer: bool, token_ids: Sequence[int]) -> list[str]:
    issues = []
    if not strict_answer:
        issues.append("no_answer_phrase")
    if has_continuation(text):
        issues.append("continuation")
    if rep_n(token_ids, 4) > SEVERE_REP4:
        issues.append("repetition")
    return issues


def bootstrap_ci(values: Sequence[float], n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (e.g. 0/1 correctness)."""
    n = len(values)
    if n == 0:
        return (float("nan"), float("nan"))
    if n_boot <= 0:
        m = sum(values) / n
        return (m, m)
    rng = random.Random(seed)
    return _percentile_ci(sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot)), alpha)


def _percentile_ci(boots: Sequence[float], alpha: float = 0.05) -> tuple[float, float]:
    """The (alpha/2, 1 - alpha/2) percentiles of sorted bootstrap statistics ``boots``."""
    k = len(boots)
    lo = boots[int(math.floor(alpha / 2 * k))]
    return float(lo), float(boots[min(k - 1, int(math.ceil((1 - alpha / 2) * k)) - 1)])


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """Exact McNemar test on paired correctness (same questions): two-sided p-value."""
    if len(a) != len(b):
        raise ValueError("paired test needs the same questions in both runs")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    k, n = min(only_a, only_b), only_a + only_b
    if n == 0:
        p = 1.0
    else:
        p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)
    return {"only_a": only_a, "only_b": only_b, "p_value": p}


def paired_bootstrap(a: Sequence[bool], b: Sequence[bool], n_boot: int = 2000, seed: int = 0) -> dict:
    """Accuracy difference b - a with a 95% paired bootstrap CI."""
    n = len(a)
    diffs = [float(y) - float(x) for x, y in zip(a, b)]
    lo, hi = bootstrap_ci(diffs, n_boot, seed)
    return {"diff": sum(diffs) / n if n else float("nan"), "ci": [lo, hi]}


def compare_runs(a: Sequence[dict], b: Sequence[dict]) -> dict:
    """Paired comparison of two prediction lists (``id``, ``correct``) on their shared ids."""
    bmap = {r["id"]: r for r in b}
    shared = [r["id"] for r in a if r["id"] in bmap]
    amap = {r["id"]: r for r in a}
    ca = [bool(amap[i]["correct"]) for i in shared]
    cb = [bool(bmap[i]["correct"]) for i in shared]
    out = {"n": len(shared), **paired_bootstrap(ca, cb)}
    out.update(mcnemar_exact(ca, cb))
    out["discordant"] = (out["only_a"] + out["only_b"]) / len(shared) if shared else float("nan")
    out["mde"] = mde_paired(len(shared), out["discordant"])  # at alpha 0.05, 80% power
    return out


def compare_clustered(a: Sequence[dict], b: Sequence[dict], cluster, n_boot: int = 2000, n_perm: int = 20000,
                      seed: int = 0) -> dict:
    """Paired comparison of pooled prediction lists (``id``, ``correct``) whose pairs come in clusters, e.g.
    the same test question under several training seeds (``cluster(record)`` names a record's question).

    Pairs of one question are not independent (a question one arm gets right under seed 42 it tends to get
    right under seed 43), so treating every (question, seed) as a fresh pair, as McNemar's test and a
    pair-level bootstrap do, overstates the evidence. Here the question is the unit: the difference is the
    mean over pairs, its 95% CI resamples questions (all of a question's pairs together), the two-sided p
    is a sign-flip permutation test on the per-question sums of differences (exact when at most 16
    questions differ, else ``n_perm`` seeded draws), and the MDE is (z_0.975 + z_0.8) * sqrt(mean(d_q^2) / Q)
    over the Q per-question mean differences d_q, which for one pair per question is the McNemar-based
    :func:`mde_paired`. Returns the keys of :func:`compare_runs` plus ``questions``."""
    import itertools

    import numpy as np

    bmap = {r["id"]: r for r in b}
    groups: dict = {}
    only_a = only_b = n = 0
    for r in a:
        if r["id"] not in bmap:
            continue
        x, y = bool(r["correct"]), bool(bmap[r["id"]]["correct"])
        only_a += x and not y
        only_b += y and not x
        n += 1
        groups.setdefault(cluster(r), []).append(float(y) - float(x))
    out = {"n": n, "questions": len(groups), "only_a": only_a, "only_b": only_b,
           "discordant": (only_a + only_b) / n if n else float("nan")}
    if not n:
        return {**out, "diff": float("nan"), "ci": [float("nan")] * 2, "p_value": 1.0, "mde": float("nan")}
    sums = np.array([sum(v) for v in groups.values()])
    sizes = np.array([len(v) for v in groups.values()], dtype=float)
    out["diff"] = float(sums.sum() / n)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(sums), size=(n_boot, len(sums)))
    boot = np.sort(sums[idx].sum(axis=1) / sizes[idx].sum(axis=1))
    out["ci"] = list(_percentile_ci(boot))
    nz = sums[sums != 0]
    t = abs(nz.sum())
    if len(nz) == 0:
        p = 1.0
    elif len(nz) <= 16:
        flips = np.array(list(itertools.product((1, -1), repeat=len(nz))))
        p = float(np.mean(np.abs(flips @ nz) >= t - 1e-9))
    else:
        hits = 0
        for start in range(0, n_perm, 2000):
            k = min(2000, n_perm - start)
            signs = rng.integers(0, 2, size=(k, len(nz)), dtype=np.int8) * 2 - 1
            hits += int(np.sum(np.abs(signs @ nz) >= t - 1e-9))
        p = (1 + hits) / (1 + n_perm)
    out["p_value"] = min(1.0, p)
    out["mde"] = mde_paired(len(sums), float(np.mean((sums / sizes) ** 2)))
    return out


def class_balance(records: Sequence[dict], n_boot: int = 1000, seed: int = 0) -> dict | None:
    """How an arm's answers split over the classes of a yes/no or multiple-choice task (records with
    ``gold``, ``pred``): the balanced accuracy (mean over gold classes of the share answered right, i.e.
    macro recall; any constant answer scores 1 / number of classes, 50% on yes/no) with a 95% bootstrap
    CI over records, each gold class's recall, the share of each answer
    (``None`` = no answer), and the majority-class accuracy. A small model can gain or lose accuracy just
    by leaning to the majority class; the balanced accuracy does not move with that lean, so it says whether
    the answers carry any information about the gold. None for other tasks (numbers, free text)."""
    import numpy as np

    if not records or any("gold" not in r for r in records):
        return None
    golds = [str(r["gold"]) for r in records]
    classes = sorted(set(golds))
    if not (set(classes) <= {"yes", "no"} or all(len(g) == 1 and g.isupper() for g in classes)):
        return None
    gi = np.array([classes.index(g) for g in golds])
    ok = np.array([r["pred"] == r["gold"] for r in records], dtype=float)
    k = len(classes)

    def bal(idx):
        g, o = gi[idx], ok[idx]
        counts = np.bincount(g, minlength=k)
        hits = np.bincount(g, weights=o, minlength=k)
        seen = counts > 0
        return float(np.mean(hits[seen] / counts[seen]))

    rng = np.random.default_rng(seed)
    boots = np.sort([bal(rng.integers(0, len(gi), len(gi))) for _ in range(max(n_boot, 1))])
    lo, hi = _percentile_ci(boots)
    counts = np.bincount(gi, minlength=k)
    hits = np.bincount(gi, weights=ok, minlength=k)
    answers: dict = {}
    for r in records:
        key = "none" if r["pred"] is None else str(r["pred"])
        answers[key] = answers.get(key, 0) + 1
    return {"balanced_acc": bal(np.arange(len(gi))), "balanced_acc_ci": [float(lo), float(hi)],
            "chance": 1.0 / k, "recall": {c: float(hits[i] / counts[i]) for i, c in enumerate(classes)},
            "answers": {a: c / len(records) for a, c in sorted(answers.items())},
            "majority": max(classes, key=golds.count), "majority_acc": float(counts.max() / len(records))}


def mde_paired(n: int, discordant_rate: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable effect (accuracy difference, as a fraction) of a paired comparison of ``n``
    questions whose share of discordant pairs is ``discordant_rate``, at two-sided ``alpha`` and
    ``power``: (z_{1-alpha/2} + z_power) * sqrt(discordant_rate / n) (Connor 1987's McNemar
    approximation, small effects). The paper's +1.96 pp on 687 StrategyQA questions with 41%
    discordance needs 6.8 pp to be seen 80% of the time."""
    from statistics import NormalDist

    if n <= 0:
        return float("nan")
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return z * math.sqrt(max(discordant_rate, 0.0) / n)


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(values) / n
    return m, (math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0)
