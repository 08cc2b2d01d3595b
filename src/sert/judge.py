"""The paper's Fig. 4 (SERT §III): judge scores of the latent paths each filter set keeps.

Input: a run directory (``sert run``; its ``filter/ablation/``) or a filter directory
(``sert filter --out``; its ``ablation/``). ``ablation/K-NAME.jsonl`` is the selected set
(one path per question) after the filters are added one at a time: none, +pattern,
+length, +rep2, +ppl (:func:`sert.filters.funnel`).

A seeded sample of up to ``judge.sample`` paths per set is scored 0-10 by an LLM judge
(the evaluation's rubric and client, :class:`sert.openai_client.Judge`: coherence,
relevance, logical consistency, completeness; the paper used Llama-3-8B-Instruct).

Outputs in ``--out`` (default ``RUN/judge/``): ``fig4.json`` (per set: size, asked, scored,
failed, mean, quartiles, the scores by question id), ``fig4.png`` (a box plot per set,
coverage in the labels) and ``cache.jsonl`` (the judge's replies: a rerun makes no new
request and retries only the failed ones).
"""
from __future__ import annotations

import random
import statistics
from pathlib import Path

from .config import JudgeConfig
from .errors import SertError
from .io import RunLock, atomic_save_figure, atomic_write_json, read_jsonl
from .openai_client import coverage, format_judge, make_judge


def ablation_dir(run: str | Path) -> Path:
    """``RUN/filter/ablation`` or ``DIR/ablation``: where ``sert filter`` wrote the filter sets."""
    run = Path(run)
    for d in (run / "filter" / "ablation", run / "ablation"):
        if any(d.glob("*.jsonl")):
            return d
    raise SertError(f"{run}: no filter ablation sets (expected {run / 'filter' / 'ablation'}/*.jsonl "
                    "from 'sert run', or ablation/*.jsonl from 'sert filter --out')")


def filter_sets(abl: Path) -> list[tuple[str, list[dict]]]:
    """(name, selected records) per ablation file, in the filters' order (``0-none``, ``1-pattern``, ...)."""
    files = sorted(abl.glob("*.jsonl"), key=lambda p: int(p.stem.split("-", 1)[0]) if p.stem[0].isdigit() else 99)
    out = []
    for f in files:
        k, _, name = f.stem.partition("-")
        out.append(("none" if name == "none" else "+" + (name or k), read_jsonl(f)))
    return out


def sample_paths(records: list[dict], n: int, seed: int) -> list[dict]:
    """Up to ``n`` records, the same seeded draw for a set of the same questions."""
    if len(records) <= n:
        return list(records)
    ids = sorted(range(len(records)), key=lambda i: str(records[i]["id"]))
    return [records[i] for i in sorted(random.Random(seed).sample(ids, n))]


def _stats(scores: list[float]) -> dict:
    if not scores:
        return {"mean": None, "median": None, "q1": None, "q3": None}
    q = statistics.quantiles(scores, n=4, method="inclusive") if len(scores) > 1 else [scores[0]] * 3
    return {"mean": round(sum(scores) / len(scores), 3), "median": q[1], "q1": q[0], "q3": q[2]}


def run_judge(run: str | Path, cfg: JudgeConfig, out: str | Path | None = None, judge=None) -> dict:
    """Score a sample of each filter set's paths; write fig4.json and fig4.png; return fig4.json's dict."""
    errs = cfg.validate()
    if cfg.model is None and judge is None:
        errs.append("judge.model: give the judge as openai:MODEL (--model, or judge.model in the config)")
    if errs:
        raise SertError("; ".join(errs))
    sets = filter_sets(ablation_dir(run))
    out = Path(out) if out is not None else Path(run) / "judge"
    with RunLock(out):
        judge = judge or make_judge(cfg.model, cfg.base_url, cache_path=out / "cache.jsonl")
        rows = []
        for name, recs in sets:
            picked = sample_paths(recs, cfg.sample, cfg.seed)
            res = judge.score([(r.get("question") or "", r["path"]) for r in picked], what=f"judge {name}")
            cov = coverage(res)
            rows.append({"set": name, "size": len(recs), "asked": cov["judge_asked"], "scored": cov["judge_n"],
                         "failed": cov["judge_failed"],
                         **_stats([j["judge"] for j in res if j["judge"] is not None]),
                         "scores": {str(r["id"]): j["judge"] for r, j in zip(picked, res)}})
        fig = {"judge": cfg.model or getattr(judge, "model", None), "sample": cfg.sample, "seed": cfg.seed,
               "sets": rows, "note": "per filter set: up to `sample` selected paths (one per question), "
                                     "scored 0-10; mean and quartiles over the scored only"}
        atomic_write_json(out / "fig4.json", fig)
        plot_fig4(fig, out / "fig4.png")
    return fig


def plot_fig4(fig: dict, png: str | Path) -> Path:
    """A box plot of the judge scores per filter set (the paper's Fig. 4), coverage in the labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = fig["sets"]
    data = [[s for s in r["scores"].values() if s is not None] for r in rows]
    labels = [f"{r['set']}\n{r['scored']}/{r['asked']} scored" for r in rows]
    f, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 4))
    ax.boxplot([d or [float("nan")] for d in data], showmeans=True)
    ax.set_xticks(range(1, len(rows) + 1), labels, fontsize=8)
    for i, d in enumerate(data, 1):
        ax.scatter([i] * len(d), d, s=8, alpha=0.4, color="#4C72B0")
    ax.set_ylim(-0.5, 10.5)
    ax.set_ylabel("judge score (0-10)")
    ax.set_title(f"Judge scores of the selected paths per filter set ({fig.get('judge')})", fontsize=9)
    f.tight_layout()
    return atomic_save_figure(f, png)


def format_fig4(fig: dict) -> str:
    lines = [f"{'filter set':12s} {'paths':>6s}  judge mean (coverage)  median [q1, q3]"]
    for r in fig["sets"]:
        m = {"judge": r["mean"], "judge_n": r["scored"], "judge_asked": r["asked"]}
        q = "–" if r["median"] is None else f"{r['median']:.1f} [{r['q1']:.1f}, {r['q3']:.1f}]"
        lines.append(f"{r['set']:12s} {r['size']:6d}  {format_judge(m):21s}  {q}")
    return "\n".join(lines)
