"""The experiment's report (SERT Table II): ``report.md`` and a self-contained ``report.html``.

Input: a run directory written by :func:`sert.pipeline.run_experiment` (``config.yaml``,
``eval/<arm>/{metrics.json,predictions.jsonl}``, ``filter/funnel.{json,png}``,
``arms/<arm>/arm.json``, ``stages.json``, ``commands.txt``). Every part is optional:
an arm that has not been evaluated, or whose evaluation cannot be read, is not in the table but
named above it with the reason (and on stderr); a missing or damaged ``metrics.json`` is rebuilt
from a finished ``predictions.jsonl`` first.

Output: ``RUN/report.md`` (images linked relative to RUN), ``RUN/report.html`` (images
embedded as base64, so the one file can be mailed) and ``RUN/plots/accuracy.png``.

Contents: the Table II layout (Acc with 95% bootstrap CI, Fmt, Len, Rep, judge score when
present) with the paper's published accuracy beside ours; paired significance of SERT+RD vs
RD and SERT vs Finetune on the same questions (paired bootstrap CI of the difference, exact
McNemar p); the filter funnel; sample outputs of every arm for the same questions; and the
config, seeds, versions, stage timings and commands that reproduce the run.
"""
from __future__ import annotations

import base64
import html
import math
import re
import sys
from pathlib import Path
from typing import Callable

from .arms import PAPER_ARMS, report_arms, split_curve
from .answers import answer_consistent
from .config import load_yaml
from .errors import SertError
from .evaluate import rebuild_metrics, rescore_dir
from .metrics import class_balance, compare_clustered, compare_runs, mean_sd
from .tasks import load_examples
from .io import atomic_save_figure, atomic_write_text, read_json, read_jsonl
from .openai_client import format_judge
from .log import get as _get_logger

log = _get_logger(__name__)

ARMS = list(PAPER_ARMS)

# SERT Table II (Zhang et al., ICASSP 2025), accuracy in %, per student and task.
PAPER = {
    "gpt2": ("GPT-2 (124M)", {
        "strategyqa": {"finetune": 54.00, "rd": 52.69, "sert": 54.00, "sert_rd": 54.65},
        "commonsense_qa": {"finetune": 20.80, "rd": 21.87, "sert": 20.72, "sert_rd": 21.95}}),
    "gpt2-medium": ("GPT-2-medium", {
        "strategyqa": {"finetune": 50.22, "rd": 52.69, "sert": 55.17, "sert_rd": 56.34},
        "commonsense_qa": {"finetune": 19.82, "rd": 21.54, "sert": 23.10, "sert_rd": 25.72}}),
    "gpt2-large": ("GPT-2-large", {
        "strategyqa": {"finetune": 53.57, "rd": 50.22, "sert": 55.75, "sert_rd": 57.21},
        "commonsense_qa": {"finetune": 20.88, "rd": 22.93, "sert": 22.63, "sert_rd": 26.03}}),
}
# Fine-tune-CoT (Ho et al. 2023), same teacher, per student and task: "rd" its reasoning distillation (the
# published RD reference), "finetune" its vanilla answer-only fine-tuning.
FINETUNE_COT = {"gpt2": {"strategyqa": {"rd": 55.75, "finetune": 54.44},
                         "commonsense_qa": {"rd": 22.69, "finetune": 20.88}},
                "gpt2-medium": {"strategyqa": {"rd": 56.19, "finetune": 54.59},
                                "commonsense_qa": {"rd": 21.70, "finetune": 20.23}},
                "gpt2-large": {"strategyqa": {"rd": 53.86, "finetune": 52.98},
                               "commonsense_qa": {"rd": 22.28, "finetune": 21.38}}}
N_SAMPLES = 4  # sample questions shown for every arm
CUT_FLAG = 0.02  # an arm with more than this share of outputs cut at the budget is flagged
# The teacher whose rationales the paper distilled, per task (SERT §II-C: text-davinci-002 Zero-shot-CoT).
PAPER_TEACHER = {"strategyqa": "text-davinci-002", "commonsense_qa": "text-davinci-002"}


def paper_key(model: str) -> str | None:
    """``gpt2`` / ``gpt2-medium`` / ``gpt2-large`` for those students (by id or path), else None."""
    base = str(model).rstrip("/").lower().rsplit("/", 1)[-1]
    return base if base in PAPER else None


def paper_row(model: str, task: str) -> tuple[str, dict | None, bool]:
    """``(label, {arm: acc%} or None, exact)``: the paper's row for a GPT-2 student, else GPT-2 (124M) as reference."""
    key = paper_key(model)
    label, rows = PAPER[key or "gpt2"]
    if key is None:
        label = f"{label}, for reference"
    return label, rows.get(task), key is not None


# ------------------------------------------------------------------ gathering
def _load_run(run_dir: Path) -> dict:
    run: dict = {"dir": run_dir, "config": {}, "arms": {}, "train": {}}
    cfg_file = run_dir / "config.yaml"
    if cfg_file.exists():
        run["config"] = load_yaml(cfg_file)  # a damaged one: one line naming file and line
        run["config_text"] = cfg_file.read_text(encoding="utf-8")
    # the arms in order (learning-curve points after their arm), their labels, and the (baseline, treatment)
    # pairs: the paper's claims (SERT+RD beats RD, SERT beats Finetune), declared arms', each at every curve epoch
    order, run["labels"], run["comparisons"] = report_arms(run["config"])
    run["order"] = order
    run["notes"] = {}  # eval/<instance> -> why it is not shown, or what was done to show it
    for arm in order:
        ev = _arm_eval(run, arm)
        if ev is not None:
            run["arms"][arm] = ev
        a = run_dir / "arms" / arm / "arm.json"
        if a.exists():
            run["train"][arm] = read_json(a)
            ts = run_dir / "arms" / arm / "train_summary.json"
            if ts.exists():  # written by sert.train: loss curve, steps, timing
                t = read_json(ts)
                run["train"][arm].update({k: t.get(k) for k in ("steps", "final_loss", "mean_train_loss")})
    run["seeds"] = _load_seeds(run_dir, run, order)
    _not_shown(run)
    t = run_dir / "teach" / "teach_summary.json"
    run["teacher"] = (read_json(t).get("settings") or {}).get("teacher") if t.exists() else None
    f = run_dir / "filter" / "funnel.json"
    run["funnel"] = read_json(f) if f.exists() else None
    s = run_dir / "stages.json"
    run["stages"] = read_json(s) if s.exists() else None
    c = run_dir / "commands.txt"
    run["commands"] = c.read_text(encoding="utf-8") if c.exists() else None
    first = next(iter(run["arms"].values()), None)
    run["task"] = run["config"].get("task") or (first["metrics"].get("task") if first else None)
    run["model"] = run["config"].get("model") or (first["metrics"].get("model") if first else None)
    return run


def _load_seeds(run_dir: Path, run: dict, order: list[str]) -> dict[str, dict[int, dict]]:
    """Per trained arm, its evaluated instances by training seed: ``{arm: {seed: {"metrics", "preds"}}}``
    (the first seed's instance is ``eval/<arm>``, the others ``eval/<arm>-s<seed>``, see
    :func:`sert.pipeline.instance_name`)."""
    out: dict[str, dict[int, dict]] = {}
    default_seed = (run["config"].get("train") or {}).get("seed")
    for arm in order:
        if arm == "base" or not (run_dir / "eval").is_dir():
            continue
        names = [arm] + sorted(p.name for p in (run_dir / "eval").iterdir()
                               if re.fullmatch(rf"{re.escape(arm)}-s-?\d+", p.name))
        for inst in names:
            if inst == arm and arm not in run["arms"]:
                continue
            if inst == arm:
                a = run["arms"][arm]
                seed = (run["train"].get(split_curve(arm)[0]) or {}).get("seed", default_seed)
            else:
                a = _arm_eval(run, inst)
                if a is None:
                    continue
                seed = int(inst.rsplit("-s", 1)[1])
            out.setdefault(arm, {})[seed] = a
    return out


def _arm_eval(run: dict, inst: str) -> dict | None:
    """``{"metrics", "preds"}`` of the evaluated instance ``eval/<inst>``, or None (why: ``run["notes"]``).
    A missing or damaged metrics.json is rebuilt from a finished predictions.jsonl (written back, see
    :func:`sert.evaluate.rebuild_metrics`); what could not be read is noted, never silently dropped."""
    d = run["dir"] / "eval" / inst
    m, p = d / "metrics.json", d / "predictions.jsonl"
    if not m.exists() and not p.exists():
        return None
    notes = run.setdefault("notes", {})
    metrics, problem = None, f"{m.name} is missing"
    if m.exists():
        try:
            metrics = read_json(m)
            if not isinstance(metrics, dict) or not isinstance(metrics.get("acc"), (int, float)):
                metrics, problem = None, f"{m.name} holds no accuracy"
        except SertError as e:
            problem = f"{m.name} is damaged ({str(e).split(': ', 1)[-1]})"
    preds: list[dict] = []
    if p.exists():
        try:
            preds = read_jsonl(p, tolerate_torn_tail=True)
        except SertError as e:
            if metrics is None:
                notes[inst] = f"{problem}, and predictions.jsonl cannot be read ({e}); rerun its evaluation"
                return None
            notes[inst] = f"shown without its predictions ({e}): no paired rows or samples for it"
    if metrics is not None:
        return {"metrics": metrics, "preds": preds}
    if not p.exists():
        notes[inst] = f"{problem} and there is no predictions.jsonl to rebuild it from; rerun its evaluation"
        return None
    ev = run["config"].get("eval") or {}
    try:
        metrics = rebuild_metrics(d, run["config"].get("task"), ev.get("limit"),
                                  ev.get("n_bootstrap", 1000), ev.get("seed", 0))
    except SertError as e:
        notes[inst] = f"{problem}; {e}" if m.exists() else str(e)
        return None
    notes[inst] = f"{problem}: rebuilt from predictions.jsonl"
    return {"metrics": metrics, "preds": preds}


def _expected_instances(run: dict) -> list[str]:
    """The evaluations a run's config asks for (each arm, and its instances for the other training seeds), or
    without a config, the eval/ directories there are."""
    cfg = run["config"]
    if not cfg:
        d = run["dir"] / "eval"
        return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []
    train = cfg.get("train") or {}
    seeds = list(train.get("seeds") or [train.get("seed", 42)])
    arms = list(cfg.get("arms") or ARMS)
    out = list(arms)
    for s in seeds[1:]:  # the other seeds' instances: <arm>-s<seed> (sert.pipeline.instance_name)
        again = train.get("seed_arms")
        out += [f"{a}-s{s}" for a in arms if a != "base" and (again is None or a in again)]
    return out


def _not_shown(run: dict) -> None:
    """Record in ``run["notes"]`` why each evaluation the config asks for is not in the tables."""
    shown = set(run["arms"]) | {f"{a}-s{s}" for a, by in run["seeds"].items() for s in by}
    for inst in _expected_instances(run):
        if inst not in shown and inst not in run["notes"]:
            done = (run["dir"] / "eval" / inst).is_dir()
            run["notes"][inst] = ("its evaluation has not written anything yet" if done
                                  else f"not evaluated yet (no eval/{inst}/)")


def not_shown(run_dir: str | Path) -> dict[str, str]:
    """``{eval instance: why}`` for every evaluation of the run the report cannot show (and those it shows
    only after rebuilding their metrics.json)."""
    return dict(_load_run(Path(run_dir))["notes"])


def _pct(x, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def _num(x, fmt: str) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def results_table(run: dict) -> tuple[list[str], list[list[str]]]:
    """Table II: one row per evaluated arm."""
    label, paper, _ = paper_row(run["model"] or "", run["task"] or "")
    ftc = finetune_cot_row(run["model"] or "", run["task"] or "")
    judge = any("judge" in a["metrics"] for a in run["arms"].values())
    head = ["Arm", "Acc % (95% CI)", "Fmt %", "Cons %", "Len", "Rep", *(["Judge (0-10)"] if judge else []), "n",
            f"Paper Acc % ({label})",
            *([f"Fine-tune-CoT Acc % ({label.split(',')[0]}; Finetune: its vanilla fine-tuning)"] if ftc else [])]
    rows = []
    for arm, a in run["arms"].items():
        m = a["metrics"]
        lo, hi = m.get("acc_ci", [None, None])
        pub = (paper or {}).get(arm)
        rows.append([run["labels"].get(arm, arm), f"{_pct(m.get('acc'))} [{_pct(lo)}, {_pct(hi)}]",
                     _pct(m.get("fmt"), 1), _pct(consistency(run, arm), 1),
                     _num(m.get("len"), ".1f"), _num(m.get("rep"), ".3f"),
                     *([format_judge(m) if "judge" in m else "–"] if judge else []), str(m.get("n", "–")),
                     "–" if pub is None else f"{pub:.2f}",
                     *(["–" if ftc.get(arm) is None else f"{ftc[arm]:.2f}"] if ftc else [])])
    return head, rows


def consistency(run: dict, arm: str) -> float | None:
    """The share of an arm's outputs whose final answer follows from their own text (metrics.json's
    ``answer_consistency``; for predictions made before it existed, computed from their outputs)."""
    a = run["arms"][arm]
    m = a["metrics"]
    if "answer_consistency" in m:
        return m["answer_consistency"]
    if not a["preds"] or not run.get("task"):
        return None
    if "_examples" not in run:
        try:
            run["_examples"] = {e.id: e for e in load_examples(run["task"], m.get("split", "test"))}
        except SertError:
            run["_examples"] = {}
    ex = run["_examples"]
    got = [answer_consistent(r.get("output", ""), ex[r["id"]].kind, ex[r["id"]].choices)
           for r in a["preds"] if r.get("id") in ex]
    got = [g for g in got if g is not None]
    return sum(got) / len(got) if got else None


def curve_points(run: dict) -> dict[str, list[tuple[int, str]]]:
    """Per arm with learning-curve points: ``[(epoch, evaluated arm name)]`` ascending, its last epoch
    (the arm itself) included."""
    final = (run["config"].get("train") or {}).get("epochs")
    out: dict[str, list[tuple[int, str]]] = {}
    for name in run["arms"]:
        arm, ep = split_curve(name)
        if ep is not None:
            out.setdefault(arm, []).append((ep, name))
    for arm, pts in out.items():
        if arm in run["arms"] and final is not None:
            pts.append((int(float(final)), arm))
        pts.sort()
    return out


def curve_rows(run: dict) -> tuple[list[str], list[list[str]]]:
    """The learning curves as a table: accuracy [95% CI] per arm and epoch; with several seeds, their mean ± sd."""
    pts = curve_points(run)
    epochs = sorted({e for p in pts.values() for e, _ in p})
    rows = []
    for arm, p in pts.items():
        by = dict(p)
        cells = []
        for e in epochs:
            if e not in by:
                cells.append("–")
                continue
            m = run["arms"][by[e]]["metrics"]
            lo, hi = m.get("acc_ci", [None, None])
            cell = f"{_pct(m['acc'])} [{_pct(lo)}, {_pct(hi)}]"
            seeds = run["seeds"].get(by[e]) or {}
            if len(seeds) > 1:
                mu, sd = mean_sd([100 * x["metrics"]["acc"] for x in seeds.values()])
                cell += f"; seeds {mu:.2f} ± {sd:.2f}"
            cells.append(cell)
        rows.append([run["labels"].get(arm, arm), *cells])
    return ["Arm", *(f"epoch {e}" for e in epochs)], rows


def finetune_cot_row(model: str, task: str) -> dict | None:
    """Fine-tune-CoT's published ``{"rd", "finetune"}`` for this GPT-2 student (else GPT-2 (124M), for
    reference) on ``task``; None for a task it did not report."""
    return FINETUNE_COT[paper_key(model) or "gpt2"].get(task)


def significance(run: dict) -> list[dict]:
    """Paired comparisons of the paper's claims on the questions both arms answered."""
    out = []
    _, paper, _ = paper_row(run["model"] or "", run["task"] or "")
    for base, treat in run["comparisons"]:
        if base not in run["arms"] or treat not in run["arms"]:
            continue
        c = compare_runs(run["arms"][base]["preds"], run["arms"][treat]["preds"])
        if c["n"] == 0:
            continue
        pub = None
        if paper and base in paper and treat in paper:
            pub = paper[treat] - paper[base]
        row = {"baseline": base, "treatment": treat, **c, "paper_diff_pp": pub}
        sb, st = run.get("seeds", {}).get(base, {}), run.get("seeds", {}).get(treat, {})
        own = [s for s, x in st.items() if x is run["arms"][treat]]
        if len(set(sb) & set(st)) > 1 and own:
            row["seed"] = own[0]              # several seeds: name the one this row compares
        out.append(row)
    return out


def pooled_significance(run: dict) -> list[dict]:
    """The paper's comparisons pooled over training seeds: every (question, seed) is one pair, the
    treatment of seed s against the baseline of seed s, and the question is the unit of the test
    (:func:`sert.metrics.compare_clustered`). Only where both arms have several seeds."""
    out = []
    _, paper, _ = paper_row(run["model"] or "", run["task"] or "")
    for base, treat in run["comparisons"]:
        sb, st = run["seeds"].get(base, {}), run["seeds"].get(treat, {})
        common = sorted(set(sb) & set(st))
        if len(common) < 2:
            continue
        pub = paper[treat] - paper[base] if paper and base in paper and treat in paper else None
        for s in common:   # the first seed's row is significance()'s; the others here, then the pooled row
            if sb[s] is run["arms"].get(base) and st[s] is run["arms"].get(treat):
                continue
            c = compare_runs(sb[s]["preds"], st[s]["preds"])
            if c["n"]:
                out.append({"baseline": base, "treatment": treat, "seed": s, **c, "paper_diff_pp": pub})
        pa = [dict(r, id=f"{r['id']}#s{s}") for s in common for r in sb[s]["preds"]]
        pb = [dict(r, id=f"{r['id']}#s{s}") for s in common for r in st[s]["preds"]]
        c = compare_clustered(pa, pb, cluster=lambda r: r["id"].rsplit("#s", 1)[0])
        out.append({"baseline": base, "treatment": treat, "seeds": common, **c, "paper_diff_pp": pub})
    return out


def seed_rows(run: dict) -> list[list[str]]:
    """One row per arm trained with several seeds: accuracy per seed and mean +- sd."""
    rows = []
    for arm, by_seed in run["seeds"].items():
        if len(by_seed) < 2:
            continue
        accs = [100 * by_seed[s]["metrics"]["acc"] for s in sorted(by_seed)]
        m, sd = mean_sd(accs)
        rows.append([run["labels"].get(arm, arm), ", ".join(str(s) for s in sorted(by_seed)),
                     ", ".join(f"{a:.2f}" for a in accs), f"{m:.2f} ± {sd:.2f}"])
    return rows


def class_rows(run: dict) -> tuple[list[str], list[list[str]], str]:
    """Yes/no and multiple-choice tasks: per evaluated arm and seed, accuracy beside the balanced accuracy
    (:func:`sert.metrics.class_balance`), the share of each answer and each gold class's recall."""
    insts = []
    for arm, a in run["arms"].items():
        label = run["labels"].get(arm, arm)
        by_seed = run["seeds"].get(arm) or {}
        own = [s for s, x in by_seed.items() if x is a]
        insts.append((label + (f" (seed {own[0]})" if own and len(by_seed) > 1 else ""), a["preds"]))
        insts += [(f"{label} (seed {s})", x["preds"]) for s, x in sorted(by_seed.items()) if x is not a]
    rows, head, first = [], [], None
    for label, preds in insts:
        cb = class_balance(preds, n_boot=1000) if preds else None
        if cb is None:
            continue
        if first is None:
            first = cb
            classes = list(cb["recall"])
            head = ["Arm", "Acc %", "Balanced acc % (95% CI)", *(f"answers {c} %" for c in classes),
                    "no answer %", *(f"recall gold {c} %" for c in classes)]
        lo, hi = cb["balanced_acc_ci"]
        acc = sum(1 for r in preds if r["correct"]) / len(preds)
        rows.append([label, _pct(acc), f"{_pct(cb['balanced_acc'])} [{_pct(lo)}, {_pct(hi)}]",
                     *(_pct(cb["answers"].get(c, 0.0), 1) for c in classes), _pct(cb["answers"].get("none", 0.0), 1),
                     *(_pct(cb["recall"].get(c), 1) for c in classes)])
    if first is None:
        return [], [], ""
    note = (f"Balanced accuracy: the mean over the gold classes of the share of that class answered right; any "
            f"constant answer scores {100 * first['chance']:.0f}%. Accuracy can rise or fall with how often an arm "
            f"gives the majority answer ('{first['majority']}', {100 * first['majority_acc']:.2f}% of the test "
            "questions) without any knowledge of the questions; the balanced accuracy does not move with that lean. "
            "CI: 1000 bootstrap resamples of the questions.")
    return head, rows, note


def budget_rows(run: dict) -> list[list[str]]:
    """Per arm: the generation budget, the longest completion it was trained on, and where outputs stopped."""
    rows = []
    for arm, a in run["arms"].items():
        m = a["metrics"]
        b = m.get("budget") or {}
        cut = m.get("cut")
        flag = "" if cut is None or cut <= CUT_FLAG else \
            ("⚠ mostly loops" if (m.get("cut_loop") or 0) >= (m.get("cut_budget") or 0) else "⚠ budget too small")
        rows.append([run["labels"].get(arm, arm), _cell(m.get("max_new_tokens")),
                     _cell(b.get("longest_training_completion")), _cell(m.get("max_output_tokens")),
                     _pct(cut, 1), _pct(m.get("cut_loop"), 1), _pct(m.get("cut_budget"), 1),
                     _pct(m.get("no_answer"), 1), flag])
    return rows


def teacher_note(run: dict) -> str | None:
    """Which teacher the RD arms learned from, and whether it is the paper's."""
    t = run.get("teacher")
    if not t:
        return None
    paper = PAPER_TEACHER.get(run["task"] or "")
    s = f"RD teacher: `{t}`"
    if paper is None:
        return s + "."
    if t == paper:
        return s + " (the paper's own teacher)."
    return s + f"; the paper used {paper} (GPT-3.5), so the RD arms here are not the paper's RD."


def _sample_ids(run: dict) -> list[str]:
    """The same few questions for every arm: first those on which the arms disagree."""
    arms = [a for a in run["arms"].values() if a["preds"]]
    if not arms:
        return []
    maps = [{r["id"]: r for r in a["preds"]} for a in arms]
    shared = [r["id"] for r in arms[0]["preds"] if all(r["id"] in m for m in maps)]
    split = [i for i in shared if len({bool(m[i]["correct"]) for m in maps}) > 1]
    agree = [i for i in shared if i not in set(split)]
    return (split + agree)[:N_SAMPLES]


def _short(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _funnel_rows(funnel) -> tuple[list[str], list[list[str]]] | None:
    """The funnel (``sert.filters``: ``stages`` = paths and questions left after each filter) as a table."""
    steps = funnel.get("stages") if isinstance(funnel, dict) else None
    if not steps:
        return None
    rows = [[s.get("stage", "?"), _cell(s.get("paths")), _cell(s.get("questions")), _cell(s.get("removed")),
             ", ".join(f"{k} {v}" for k, v in (s.get("removed_by") or {}).items())] for s in steps]
    return ["filter", "paths left", "questions left", "removed", "removed by rule"], rows


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "–" if v is None else str(v)


# ------------------------------------------------------------------ plots
def accuracy_plot(run: dict, path: Path) -> Path | None:
    """Bars: our accuracy with 95% CI; diamonds: the paper's published accuracy."""
    if not run["arms"]:
        return None
    import matplotlib  # here, not at the top: its import costs ~0.5 s that reports without plots and the CLI skip

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label, paper, _ = paper_row(run["model"] or "", run["task"] or "")
    arms = [a for a in run["arms"] if split_curve(a)[1] is None]  # curve points: the learning-curve plot
    acc = [100 * run["arms"][a]["metrics"]["acc"] for a in arms]
    ci = [run["arms"][a]["metrics"].get("acc_ci", [None, None]) for a in arms]
    err = [[max(0.0, y - 100 * (c[0] if c[0] is not None else y / 100)) for y, c in zip(acc, ci)],
           [max(0.0, 100 * (c[1] if c[1] is not None else y / 100) - y) for y, c in zip(acc, ci)]]
    fig, ax = plt.subplots(figsize=(1.3 * len(arms) + 2.5, 3.6), dpi=110)
    xs = range(len(arms))
    ax.bar(xs, acc, yerr=err, capsize=5, color="#4c78a8", label="this run (95% CI)")
    px = [i for i, a in enumerate(arms) if paper and a in paper]
    if px:
        ax.scatter(px, [paper[arms[i]] for i in px], marker="D", color="#e45756", zorder=3,
                   label=f"paper: {label}")
    for i, y in enumerate(acc):
        ax.annotate(f"{y:.1f}", (i, y), textcoords="offset points", xytext=(8, 2), fontsize=8)
    ax.set_xticks(list(xs), [run["labels"].get(a, a) for a in arms])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, min(100, max(acc + [p for p in (paper or {}).values()] + [10]) * 1.35))
    ax.set_title(f"{run['task']} · {Path(str(run['model'])).name}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return atomic_save_figure(fig, path)


def curve_plot(run: dict, path: Path) -> Path | None:
    """Accuracy against training epoch per arm with learning-curve points (95% CI bars); other seeds as dots."""
    pts = curve_points(run)
    if not pts:
        return None
    import matplotlib  # here, not at the top: its import costs ~0.5 s that reports without plots and the CLI skip

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=110)
    for k, (arm, p) in enumerate(pts.items()):
        xs = [e + 0.04 * (k - len(pts) / 2) for e, _ in p]
        ms = [run["arms"][n]["metrics"] for _, n in p]
        ys = [100 * m["acc"] for m in ms]
        lo = [y - 100 * (m.get("acc_ci") or [m["acc"]] * 2)[0] for y, m in zip(ys, ms)]
        hi = [100 * (m.get("acc_ci") or [m["acc"]] * 2)[1] - y for y, m in zip(ys, ms)]
        line = ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=4, label=run["labels"].get(arm, arm))
        for x, (_, n) in zip(xs, p):
            others = [100 * v["metrics"]["acc"] for v in (run["seeds"].get(n) or {}).values()
                      if v is not run["arms"][n]]
            ax.scatter([x] * len(others), others, color=line[0].get_color(), alpha=0.45, s=14)
    ax.set_xlabel("training epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_xticks(sorted({e for p in pts.values() for e, _ in p}))
    ax.set_title(f"learning curves · {run['task']} · {Path(str(run['model'])).name}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return atomic_save_figure(fig, path)


# ------------------------------------------------------------------ document
def _build(run: dict, acc_png: Path | None, curve_png: Path | None = None) -> list[tuple]:
    """The report as blocks, rendered once to Markdown and once to HTML: one builder per section."""
    return [*intro_blocks(run), *results_blocks(run, acc_png, curve_png), *significance_blocks(run),
            *funnel_blocks(run), *fig4_blocks(run["dir"]), *training_blocks(run), *sample_blocks(run),
            *reproduce_blocks(run)]


def intro_blocks(run: dict) -> list[tuple]:
    d = [("h1", f"SERT experiment: {run['task']} · {run['model']}"),
         ("p", f"Run directory `{run['dir']}`. Arms of SERT Table II (Zhang et al., ICASSP 2025): "
               "Finetune (answer-only, from the base model), RD (distillation of teacher rationales from "
               "the base model), SERT (self-training on the model's own filtered latent paths), SERT+RD "
               "(distillation started from the SERT checkpoint), and the untrained base model."),
         ("h2", "Results (Table II layout)")]
    if run.get("notes"):
        d.append(("p", "**Evaluations not shown, or shown after a repair:** " + "; ".join(
            f"`eval/{k}`: {v}" for k, v in run["notes"].items()) + "."))
    return d


def _results_note(run: dict) -> str:
    """What the results table's columns are, and whose published numbers stand beside ours."""
    label, paper, exact = paper_row(run["model"] or "", run["task"] or "")
    m0 = next(iter(run["arms"].values()))["metrics"]
    budgets = sorted({str(a["metrics"].get("max_new_tokens", "?")) for a in run["arms"].values()})
    notes = [f"Greedy decoding on the {m0.get('split', 'test')} split, at most {'/'.join(budgets)} new "
             "tokens (per arm: the table below); answer read after the last `the answer is`. "
             "Acc: accuracy with 95% percentile bootstrap CI; "
             "Fmt: share of outputs with no format error, hallucinated continuation or severe repetition; "
             "Cons: share of the outputs with a final answer and a checkable text whose final answer follows "
             "from their own text (multiple choice: the final letter is the option the reasoning names last; "
             "no earlier 'the answer is' states another answer); "
             "Len: mean reasoning tokens; Rep: unigram repetition rep-1."]
    if paper is None:
        notes.append(f"The paper reports no numbers for task `{run['task']}`.")
    elif not exact:
        notes.append(f"The paper has no row for `{run['model']}`; its {label.split(',')[0]} row is shown for "
                     "reference only, not as a like-for-like comparison.")
    if finetune_cot_row(run["model"] or "", run["task"] or ""):
        notes.append(f"Fine-tune-CoT (Ho et al. 2023; {label.split(',')[0]}, distilled from text-davinci-002, "
                     "and its vanilla answer-only fine-tuning in the Finetune row) is the published reference "
                     "for the RD and Finetune arms.")
    tn = teacher_note(run)
    if tn:
        notes.append(tn)
    return " ".join(notes)


def results_blocks(run: dict, acc_png: Path | None, curve_png: Path | None) -> list[tuple]:
    """Table II, the budget table, answers by class, seeds and learning curves."""
    if not run["arms"]:
        return [("p", "No arm has been evaluated yet.")]
    d = [("table", *results_table(run)), ("p", _results_note(run))]
    if acc_png:
        d.append(("img", acc_png, "accuracy by arm"))
    d += [("h3", "Generation budget and where outputs stopped"),
          ("table", ["Arm", "budget (new tokens)", "longest training completion", "longest output",
                     "cut at budget %", "… in a loop %", "… still reasoning %", "no answer %", ""], budget_rows(run)),
          ("p", f"An output cut at the budget either loops (its second half repeats: rep-4 > 0.5; the "
                f"model's failure, more tokens would not help) or is still reasoning (the budget's failure). "
                f"Arms with more than {100 * CUT_FLAG:.0f}% of outputs cut are flagged. The automatic budget "
                "is the longest completion the checkpoint was trained on (student tokens, answer phrase and "
                "EOS included) plus a margin.")]
    ch, crows, cnote = class_rows(run)
    if crows:
        d += [("h3", "Answers by class (does an arm know, or only lean?)"), ("table", ch, crows), ("p", cnote)]
    srows = seed_rows(run)
    if srows:
        d += [("h3", "Training seeds"), ("table", ["Arm", "seeds", "Acc % per seed", "mean ± sd"], srows)]
    return d + curve_blocks(run, curve_png)


def curve_blocks(run: dict, curve_png: Path | None) -> list[tuple]:
    head, rows = curve_rows(run)
    if not rows:
        return []
    d = [("h3", "Learning curves (accuracy by training epoch)"), ("table", head, rows),
         ("p", "Each point is the arm's checkpoint at the end of that epoch (`train.eval_epochs`), "
               "evaluated like an arm (named `ARM@E`); the last epoch is the arm itself. With the "
               "constant learning rate, the epoch-E point is the model a run of E epochs gives. "
               "Paired rows at each epoch are in the significance table.")]
    return d + ([("img", curve_png, "learning curves")] if curve_png else [])


def _significance_row(run: dict, s: dict) -> list[str]:
    shown = s["p_value"] < 0.05 and (s["ci"][0] > 0 or s["ci"][1] < 0)
    verdict = "not significant" if not shown else \
        f"significant: {run['labels'][s['treatment']]} {'better' if s['diff'] > 0 else 'worse'}"
    pub = s["paper_diff_pp"]
    seen = "–" if pub is None else ("yes" if abs(pub) >= 100 * s["mde"] else "no")
    what = f"{run['labels'][s['treatment']]} vs {run['labels'][s['baseline']]}"
    if "seeds" in s:
        what += f" (pooled over seeds {', '.join(map(str, s['seeds']))})"
    elif "seed" in s:
        what += f" (seed {s['seed']})"
    return [what, str(s["n"]), f"{100 * s['diff']:+.2f}", f"[{100 * s['ci'][0]:+.2f}, {100 * s['ci'][1]:+.2f}]",
            f"{s['only_b']} / {s['only_a']}", f"{s['p_value']:.4g}", verdict, f"{100 * s['mde']:.2f}",
            "–" if pub is None else f"{pub:+.2f}", seen]


def significance_blocks(run: dict) -> list[tuple]:
    d = [("h2", "Paired significance (same questions)")]
    sig = significance(run) + pooled_significance(run)
    if not sig:
        return d + [("p", "Needs both arms of a pair (SERT+RD and RD, or SERT and Finetune) evaluated.")]
    return d + [
        ("table", ["Comparison", "n", "Δ Acc (pp)", "95% paired bootstrap CI", "wins / losses",
                   "p (McNemar exact; pooled: sign-flip over questions)", "at α=0.05", "MDE (pp)", "paper Δ (pp)",
                   "paper Δ detectable?"], [_significance_row(run, s) for s in sig]),
        ("p", "Δ = treatment − baseline on the questions both arms answered; wins / losses count the "
              "questions only the treatment / only the baseline got right (the discordant pairs McNemar's "
              "test uses). Called significant when McNemar's p < 0.05 and the paired CI excludes 0. "
              "MDE: the smallest difference this comparison detects 80% of the time at α = 0.05, given its n "
              "and its share of discordant pairs ((1.96 + 0.84)·√(discordant/n)); a paper Δ below it could "
              "not be seen here. Pooled rows pair each (question, seed) of the treatment with the same "
              "question and seed of the baseline; since a question's pairs are not independent, their p is "
              "a sign-flip permutation test over questions (all seeds of a question flip together), their "
              "CI resamples questions, and their MDE comes from the per-question mean differences "
              "((1.96 + 0.84)·√(mean d²/questions)); n counts pairs.")]


def funnel_blocks(run: dict) -> list[tuple]:
    png = run["dir"] / "filter" / "funnel.png"
    if run["funnel"] is None and not png.exists():
        return []
    d = [("h2", "Filter funnel (latent paths kept by each filter, in the paper's order)")]
    fr = _funnel_rows(run["funnel"])
    if fr:
        d.append(("table", *fr))
    sel = (run["funnel"] or {}).get("selected") or {}
    if sel.get("questions"):
        d.append(("p", f"Selected for self-training: {sel['questions']} paths (one per question), mean "
                       f"{_cell(sel.get('mean_tokens'))} tokens, mean rep-2 {_cell(sel.get('mean_rep2'))}, median "
                       f"PPL {_cell(sel.get('median_ppl'))}; {_pct(sel.get('states_answer'), 0)}% state an answer, "
                       f"of which {_pct(sel.get('answer_matches_gold'), 0)}% match the gold answer (the paper "
                       "appends the gold answer to every path regardless)."))
    return d + ([("img", png, "filter funnel")] if png.exists() else [])


def training_blocks(run: dict) -> list[tuple]:
    if not run["train"]:
        return []
    rows = [[run["labels"].get(arm, arm), t.get("stage", "–"), f"`{t.get('init', '–')}`", f"`{t.get('data', '–')}`",
             _cell(t.get("n_examples")), _cell(t.get("steps")), _cell(t.get("mean_train_loss")),
             _cell(t.get("final_loss")), _cell(t.get("wall_s"))] for arm, t in run["train"].items()]
    d = [("h2", "Training"), ("table", ["Arm", "stage", "initialised from", "data", "examples", "steps", "mean loss",
                                        "last logged loss", "wall s"], rows)]
    wrows = [[run["labels"].get(arm, arm), src, _cell(w.get("n")), _cell(w.get("min")), _cell(w.get("q1")),
              _cell(w.get("median")), _cell(w.get("q3")), _cell(w.get("max"))]
             for arm, t in run["train"].items() for src, w in (t.get("weights") or {}).items()]
    if wrows:
        d += [("p", "Per-example loss weights as trained (per data source: the selection's confidence "
                    "weights rescaled to mean 1 over its completion tokens, then the self source x "
                    "train.self_weight beside the teacher's rationales; docs/METHOD.md):"),
              ("table", ["Arm", "source", "examples", "min", "q1", "median", "q3", "max"], wrows)]
    return d


def sample_blocks(run: dict) -> list[tuple]:
    ids = _sample_ids(run)
    if not ids:
        return []
    d = [("h2", "Sample outputs (same questions for every arm)")]
    maps = {arm: {r["id"]: r for r in a["preds"]} for arm, a in run["arms"].items() if a["preds"]}
    for i in ids:
        r0 = next(m[i] for m in maps.values())
        rows = [[run["labels"].get(arm, arm), _short(m[i].get("output", ""), 360), str(m[i].get("pred")),
                 "✓" if m[i].get("correct") else "✗"] for arm, m in maps.items()]
        d += [("h3", f"{i} · gold: {r0.get('gold')}"), ("p", _short(r0.get("question", ""), 400)),
              ("table", ["Arm", "output", "answer", ""], rows)]
    return d


def reproduce_blocks(run: dict) -> list[tuple]:
    cfg = run["config"]
    d = [("h2", "Reproduce")]
    if cfg:
        seeds = {k: (cfg.get(k) or {}).get("seed") for k in ("mine", "train", "eval")}
        d.append(("p", "Seeds: " + ", ".join(f"{k}.seed = {v}" for k, v in seeds.items()) + "."))
    env = next((a["metrics"].get("env") for a in run["arms"].values() if a["metrics"].get("env")), None)
    if env:
        d.append(("p", "Versions: " + ", ".join(f"{k} {v}" for k, v in env.items() if v) + "."))
    if run["stages"]:
        st = run["stages"].get("stages", run["stages"])
        rows = [[name, s.get("status", "–"), _cell(s.get("wall_s")), _cell(s.get("cpu_s"))] for name, s in st.items()]
        total = {k: sum(float(s.get(k) or 0) for s in st.values()) for k in ("wall_s", "cpu_s")}
        rows.append(["**total**", "", f"{total['wall_s']:.1f}", f"{total['cpu_s']:.1f}"])
        d.append(("table", ["stage", "status", "wall s", "CPU s (all threads)"], rows))
    if run["commands"]:
        d += [("p", "Commands (`commands.txt`):"), ("pre", run["commands"].rstrip())]
    if run.get("config_text"):
        d += [("p", "Resolved config (`config.yaml`):"), ("pre", run["config_text"].rstrip())]
    return d


def fig4_blocks(run_dir: Path) -> list[tuple]:
    """The paper's Fig. 4 from ``RUN/judge/fig4.json`` (``sert judge``), if present: judge scores of
    the selected paths per filter set, coverage beside each mean."""
    f = Path(run_dir) / "judge" / "fig4.json"
    if not f.exists():
        return []
    fig = read_json(f)
    rows = [[r["set"], str(r["size"]), format_judge({"judge": r["mean"], "judge_n": r["scored"],
                                                     "judge_asked": r["asked"]}),
             "–" if r["median"] is None else f"{r['median']:.1f} [{r['q1']:.1f}, {r['q3']:.1f}]"]
            for r in fig["sets"]]
    d = [("h2", "Judge scores per filter set (the paper's Fig. 4)"),
         ("table", ["filter set", "selected paths", "judge mean (scored/asked)", "median [q1, q3]"], rows),
         ("p", f"Judge `{fig.get('judge')}`; up to {fig.get('sample')} selected paths per set (seed "
               f"{fig.get('seed')}), scored 0-10 on coherence, relevance, logical consistency and completeness; "
               "unscored replies are left out of the mean. The paper's judge: Llama-3-8B-Instruct.")]
    png = f.with_name("fig4.png")
    if png.exists():
        d.append(("img", png, "judge scores per filter set"))
    return d


def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[tuple], run_dir: Path) -> str:
    out = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + b[1])
        elif kind == "p":
            out.append(b[1])
        elif kind == "table":
            head, rows = b[1], b[2]
            out.append("\n".join(["| " + " | ".join(_md_cell(h) for h in head) + " |",
                                  "|" + "|".join("---" for _ in head) + "|",
                                  *("| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows)]))
        elif kind == "img":
            rel = Path(b[1]).resolve().relative_to(run_dir.resolve()) if Path(b[1]).resolve().is_relative_to(
                run_dir.resolve()) else Path(b[1])
            out.append(f"![{b[2]}]({rel.as_posix()})")
        elif kind == "pre":
            out.append("```\n" + b[1] + "\n```")
    return "\n\n".join(out) + "\n"


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.3em .6em;"
        "vertical-align:top;font-size:.92em}th{background:#f3f3f3}pre{background:#f7f7f7;padding:.8em;"
        "overflow-x:auto;font-size:.85em}code{background:#f3f3f3}img{max-width:100%}")


def _inline(s: str) -> str:
    """Escape, then the two bits of Markdown the blocks use: `code` and **bold**."""
    s = html.escape(str(s))
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", s)


def render_html(blocks: list[tuple], title: str) -> str:
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{_CSS}</style></head><body>"]
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{_inline(b[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_inline(b[1])}</p>")
        elif kind == "table":
            out.append("<table><tr>" + "".join(f"<th>{_inline(h)}</th>" for h in b[1]) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in b[2])
                       + "</table>")
        elif kind == "img":
            data = base64.b64encode(Path(b[1]).read_bytes()).decode()
            out.append(f"<p><img alt='{html.escape(b[2])}' src='data:image/png;base64,{data}'></p>")
        elif kind == "pre":
            out.append(f"<pre>{html.escape(b[1])}</pre>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write ``RUN/report.md`` and ``RUN/report.html``; returns their paths."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SertError(f"{run_dir}: no such run directory")
    if not (run_dir / "config.yaml").exists() and not (run_dir / "eval").is_dir():
        raise SertError(f"{run_dir}: not a sert run directory (no config.yaml, no eval/)")
    run = _load_run(run_dir)
    for inst, why in run["notes"].items():  # never silently: each evaluation the tables lack, and why
        shown = inst in run["arms"] or any(inst == f"{a}-s{s}" for a, by in run["seeds"].items() for s in by)
        log.warning(f"report: eval/{inst}{'' if shown else ' not shown'}: {why}")
    png = accuracy_plot(run, run_dir / "plots" / "accuracy.png")
    blocks = _build(run, png, curve_plot(run, run_dir / "plots" / "learning_curves.png"))
    md = atomic_write_text(run_dir / "report.md", render_markdown(blocks, run_dir))
    page = atomic_write_text(run_dir / "report.html", render_html(blocks, f"SERT report: {run['task']}"))
    return md, page


def summary_table(run_dir: str | Path) -> str:
    """The results table as Markdown, for printing at the end of a run."""
    run = _load_run(Path(run_dir))
    if not run["arms"]:
        return "(no arm evaluated)"
    head, rows = results_table(run)
    budget = ["Arm", "budget", "longest training completion", "longest output", "cut %", "loop %",
              "still reasoning %", "no answer %", ""]
    blocks = [("table", head, rows), ("table", budget, budget_rows(run))]
    if seed_rows(run):
        blocks.append(("table", ["Arm", "seeds", "Acc % per seed", "mean ± sd"], seed_rows(run)))
    return render_markdown(blocks, Path(run_dir)).rstrip()


def rescore_run(run_dir: str | Path, log: Callable[[str], None] = print) -> dict:
    """``sert report --rescore``: re-score each ``eval/<arm>/`` of a run (see ``evaluate.rescore_dir``)."""

    run_dir = Path(run_dir)
    cfg_file = run_dir / "config.yaml"

    cfg = load_yaml(cfg_file) if cfg_file.exists() else {}
    task, limit = cfg.get("task"), (cfg.get("eval") or {}).get("limit")
    out = {}
    for d in sorted((run_dir / "eval").glob("*/predictions.jsonl")) if (run_dir / "eval").is_dir() else []:
        r = rescore_dir(d.parent, task, limit)
        out[d.parent.name] = r
        before = "?" if r["acc_before"] is None else f"{100 * r['acc_before']:.2f}"
        log(f"[sert] rescore eval/{d.parent.name}: {r['changed']} of {r['n']} predictions changed, "
            f"accuracy {before} -> {100 * r['acc_after']:.2f}%")
    if not out:
        raise SertError(f"{run_dir}: no eval/<arm>/predictions.jsonl to re-score")
    return out
