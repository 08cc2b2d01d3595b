"""Evaluation (SERT §III): greedy decoding on a task's test split and the paper's metrics.

Inputs: a model (id, path or the embedded default) and a task. Outputs in
``--out DIR``: ``predictions.jsonl`` (one record per question: output text,
extracted answer, correctness, format issues, lengths) and ``metrics.json``
(Acc with 95% bootstrap CI, Fmt, Len, Rep, optional judge score, wall time,
versions). Predictions are appended batch by batch, so an interrupted run
resumes where it stopped; two runs can be compared question by question with
:func:`sert.metrics.compare_runs`.

The prompt is ``Question: {q}. Answer:`` (:func:`sert.templates.train_prompt`),
the exact prefix every trained arm saw; the answer is read by the shared
extractor :func:`sert.answers.extract_answer`.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from .answers import extract_answer, is_correct, truncate_continuation
from .config import EvalConfig
from .errors import SertError
from .io import JsonlLog, RunLock, atomic_write_json, atomic_write_jsonl, ensure_dir, read_json, read_jsonl
from .metrics import bootstrap_ci, format_issues, rep_n
from .tasks import Example, load_examples
from .templates import ANSWER_PHRASE, train_prompt

STOP_STRINGS = ["Question:"]  # a small model's hallucinated next example: stop decoding there


def generate_greedy(model, tokenizer, prompts: Sequence[str], batch_size: int = 32, max_new_tokens: int = 128,
                    progress: bool = True, stop_strings: Sequence[str] | None = STOP_STRINGS,
                    on_batch: Callable[[list[int], list[dict]], None] | None = None) -> list[dict]:
    """Batched greedy decoding, longest prompts first (less padding, early OOM).

    Returns, per prompt, ``{"text", "token_ids", "finish"}``; ``on_batch(indices, results)``
    is called after every batch so callers can persist progress.
    """
    import torch
    from tqdm.auto import tqdm

    tokenizer.padding_side = "left"
    lens = [len(tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -lens[i])
    results: list[dict | None] = [None] * len(prompts)
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
    bar = tqdm(total=len(prompts), desc="eval", unit="q", disable=not progress, file=sys.stderr)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                        add_special_tokens=False).to(model.device)
        kw = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=sorted(i for i in eos_ids if i is not None))
        if stop_strings:
            kw.update(stop_strings=list(stop_strings), tokenizer=tokenizer)
        with torch.inference_mode():
            out = model.generate(**enc, **kw, top_p=None, top_k=None, temperature=None)
        new = out[:, enc.input_ids.shape[1]:].tolist()
        batch_res = []
        for i, ids in zip(idx, new):
            cut = next((j for j, t in enumerate(ids) if t in eos_ids), None)
            finish = "eos" if cut is not None else "length"
            ids = ids[:cut] if cut is not None else ids
            text = tokenizer.decode(ids, skip_special_tokens=True)
            if finish == "length" and stop_strings and any(text.rstrip().endswith(s) for s in stop_strings):
                finish = "stop"
            results[i] = {"text": text, "token_ids": ids, "finish": finish}
            batch_res.append(results[i])
        if on_batch:
            on_batch(idx, batch_res)
        bar.update(len(idx))
    bar.close()
    return results  # type: ignore[return-value]


def _answer_fields(example: Example, text: str) -> dict:
    """What the shared extractor reads from ``text``: pred, method, correct."""
    ex = extract_answer(text, example.kind, example.choices)
    return {"pred": ex.answer, "method": ex.method, "correct": is_correct(ex.answer, example.answer, example.kind)}


def score(example: Example, text: str, token_ids: Sequence[int], tokenizer=None) -> dict:
    """Everything the metrics need about one output, with the shared extractor."""
    ans = _answer_fields(example, text)
    body = truncate_continuation(text)
    k = body.find(ANSWER_PHRASE)
    reasoning = body[:k] if k >= 0 else body
    if tokenizer is not None:
        reasoning_tokens = len(tokenizer(reasoning.strip(), add_special_tokens=False).input_ids) if reasoning.strip() else 0
        body_ids = tokenizer(body, add_special_tokens=False).input_ids if body else []
    else:
        reasoning_tokens = len(reasoning.split())
        body_ids = body.split()
    issues = format_issues(text, ans["method"] == "strict", token_ids)
    return {
        **ans, "fmt_ok": not issues, "fmt_issues": issues, "reasoning_tokens": reasoning_tokens,
        "rep1": rep_n(body_ids, 1), "n_tokens": len(token_ids),
    }


def summarize(records: Sequence[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    n = len(records)
    if n == 0:
        raise SertError("no predictions to summarise")
    correct = [1.0 if r["correct"] else 0.0 for r in records]
    lo, hi = bootstrap_ci(correct, n_boot, seed)
    m = {
        "n": n,
        "acc": sum(correct) / n,
        "acc_ci": [lo, hi],
        "acc_strict": sum(1 for r in records if r["correct"] and r["method"] == "strict") / n,
        "fmt": sum(1 for r in records if r["fmt_ok"]) / n,
        "len": sum(r["reasoning_tokens"] for r in records) / n,
        "rep": sum(r["rep1"] for r in records) / n,
        "no_answer": sum(1 for r in records if r["pred"] is None) / n,
    }
    judged = [r["judge"] for r in records if r.get("judge") is not None]
    if judged:
        m["judge"] = sum(judged) / len(judged)
        m["judge_n"] = len(judged)
    return m


def environment() -> dict:
    import subprocess

    info = {"python": platform.python_version(), "platform": platform.platform()}
    for mod in ("torch", "transformers", "accelerate", "peft"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover
            pass
    from . import __version__
    info["sert"] = __version__
    try:
        info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except Exception:  # pragma: no cover
        info["git"] = None
    return info


def evaluate(model, tokenizer, examples: Sequence[Example], cfg: EvalConfig, out_dir: str | Path | None = None,
             progress: bool = True, label: str | None = None, judge=None) -> dict:
    """Evaluate ``model`` on ``examples``; resumable when ``out_dir`` is given."""
    t0 = time.time()
    done: dict[str, dict] = {}
    log = None
    if out_dir is not None:
        out = ensure_dir(out_dir)
        log = JsonlLog(out / "predictions.jsonl")
        wanted = {e.id for e in examples}
        done = {r["id"]: r for r in log.records() if r["id"] in wanted}
    resumed = len(done)
    todo = batches_to_decode(tokenizer, examples, done, cfg.batch_size)

    def persist(idx: list[int], res: list[dict]) -> None:
        recs = []
        for i, r in zip(idx, res):
            e = todo[i]
            if e.id in done:  # decoded again only to give its batch the same composition
                continue
            rec = {"id": e.id, "question": e.question, "gold": e.answer, "output": r["text"],
                   "finish": r["finish"], **score(e, r["text"], r["token_ids"], tokenizer)}
            done[e.id] = rec
            recs.append(rec)
        if log is not None:
            log.append_many(recs)

    if todo:
        from . import vllm_backend  # optional vLLM engine (sert/vllm_backend.py)
        gen = vllm_backend.generate_greedy if vllm_backend.is_vllm(model) else generate_greedy
        gen(model, tokenizer, [train_prompt(e.question) for e in todo], cfg.batch_size,
            cfg.max_new_tokens, progress=progress, on_batch=persist)
    if log is not None:
        log.close()
    records = [done[e.id] for e in examples]
    if judge is not None:
        records = judge(records)
    metrics = summarize(records, cfg.n_bootstrap, cfg.seed)
    metrics.update({"label": label, "split": cfg.split, "max_new_tokens": cfg.max_new_tokens,
                    "generated_tokens": sum(r["n_tokens"] for r in records),
                    "wall_s": round(time.time() - t0, 2), "resumed": resumed,
                    "env": environment()})
    if out_dir is not None:
        atomic_write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics


def rescore_record(rec: dict, example: Example) -> dict:
    """A stored prediction with its answer-dependent fields recomputed from its output text by
    the current extractor (no decoding): pred, method, correct, and the no-answer-phrase issue."""
    ans = _answer_fields(example, rec["output"])
    issues = [i for i in rec.get("fmt_issues", []) if i != "no_answer_phrase"]  # the others need token ids
    if ans["method"] != "strict":
        issues.insert(0, "no_answer_phrase")  # as format_issues puts it first
    return dict(rec, **ans, fmt_ok=not issues, fmt_issues=issues)


def rescore_dir(eval_dir: str | Path, task: str | None = None) -> dict:
    """Re-score ``eval_dir/predictions.jsonl`` with the current answer extractor and rewrite it and
    ``metrics.json`` (atomically); for predictions made before an extractor change.
    Returns ``{"n", "changed", "acc_before", "acc_after"}``."""
    d = Path(eval_dir)
    pred_file, met_file = d / "predictions.jsonl", d / "metrics.json"
    if not pred_file.exists():
        raise SertError(f"{pred_file}: no predictions to re-score")
    with RunLock(d):
        old_m = read_json(met_file) if met_file.exists() else {}
        ident = read_json(d / EVAL_CONFIG) if (d / EVAL_CONFIG).exists() else {}
        task = task or ident.get("task") or old_m.get("task")
        split = ident.get("split") or old_m.get("split") or "test"
        if not task:
            raise SertError(f"{d}: which task? (no {EVAL_CONFIG} or metrics.json names it)")
        by_id = {e.id: e for e in load_examples(task, split)}
        recs = read_jsonl(pred_file, tolerate_torn_tail=True)
        unknown = [r["id"] for r in recs if r["id"] not in by_id]
        if unknown:
            raise SertError(f"{pred_file}: {len(unknown)} predictions have ids not in {task}/{split} "
                            f"(first: {unknown[0]!r})")
        new = [rescore_record(r, by_id[r["id"]]) for r in recs]
        changed = sum(1 for a, b in zip(recs, new) if a != b)
        if changed:
            atomic_write_jsonl(pred_file, new)
        pos = {eid: i for i, eid in enumerate(by_id)}  # the bootstrap resamples by index: task order, as evaluate()
        ordered = sorted(new, key=lambda r: pos[r["id"]])
        m = summarize(ordered, old_m.get("n_bootstrap", EvalConfig.n_bootstrap), old_m.get("seed", EvalConfig.seed))
        out = dict(old_m, **m)
        out["rescored"] = {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "changed": changed,
                           "acc_before": old_m.get("acc")}
        atomic_write_json(met_file, out)
    return {"n": len(new), "changed": changed, "acc_before": old_m.get("acc"), "acc_after": m["acc"]}


def batches_to_decode(tokenizer, examples: Sequence[Example], done: dict, batch_size: int) -> list[Example]:
    """The examples to decode: every batch that lacks a prediction, whole.

    :func:`generate_greedy` batches longest prompts first. A batch's members and padding
    decide the matmul shapes, hence the logits' last bits (in bf16 on a GPU that flips
    greedy tokens). After a kill, re-decoding whole batches of an uninterrupted run's
    composition keeps the resumed predictions equal to that run's on the same hardware.
    A stable sort of this subset by length yields exactly those batches, in order.
    """
    missing = [e for e in examples if e.id not in done]
    if not missing or not done:
        return missing
    lens = [len(tokenizer(train_prompt(e.question), add_special_tokens=False).input_ids) for e in examples]
    order = sorted(range(len(examples)), key=lambda i: -lens[i])
    keep: set[int] = set()
    for s in range(0, len(order), batch_size):
        b = order[s:s + batch_size]
        if any(examples[i].id not in done for i in b):
            keep.update(b)
    return [e for i, e in enumerate(examples) if i in keep]


EVAL_CONFIG = "eval_config.json"


def _identity(model_name: str, task: str, cfg: EvalConfig) -> dict:
    """What the predictions depend on: a resumed run must match it."""
    model = str(Path(model_name).resolve()) if Path(model_name).exists() else model_name
    return {"model": model, "task": task, "split": cfg.split, "max_new_tokens": cfg.max_new_tokens}


def _check_identity(out: Path, ident: dict) -> None:
    f = out / EVAL_CONFIG
    if not (out / "predictions.jsonl").exists() or not f.exists():
        return
    old = read_json(f)
    diff = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in ident.items() if old.get(k) != v]
    if diff:
        raise SertError(f"{out} holds predictions of another evaluation ({'; '.join(diff)}); "
                        "use another --out or delete it")


def run_eval(model_name: str, task: str, cfg: EvalConfig, out_dir: str | Path | None = None,
             device: str | None = None, dtype: str | None = None, progress: bool = True) -> dict:

    examples = load_examples(task, cfg.split, cfg.limit)
    ident = _identity(model_name, task, cfg)
    lock = RunLock(out_dir) if out_dir is not None else None
    if lock:
        lock.__enter__()
    try:
        if out_dir is not None:
            _check_identity(Path(out_dir), ident)
        t0 = time.time()
        from .vllm_backend import load as load_generator  # = load_model unless vLLM serves (CUDA)
        model, tok, place = load_generator(model_name, device, dtype)
        load_s = time.time() - t0
        judge = _make_judge(cfg) if cfg.judge else None
        if out_dir is not None:  # once model and judge are ready: a bad one leaves nothing behind
            atomic_write_json(Path(out_dir) / EVAL_CONFIG, ident)
        m = evaluate(model, tok, examples, cfg, out_dir, progress=progress, label=model_name, judge=judge)
        m.update({"model": model_name, "task": task, "device": place.device, "dtype": place.dtype,
                  "dtype_reason": place.reason, "load_s": round(load_s, 2)})
        if out_dir is not None:
            atomic_write_json(Path(out_dir) / "metrics.json", m)
        return m
    finally:
        if lock:
            lock.__exit__(*sys.exc_info())  # a failure before any output removes the directory it made


def _make_judge(cfg: EvalConfig):
    """The paper's optional 0-10 LLM judge through any OpenAI-compatible endpoint."""
    try:
        from .openai_client import make_judge
    except ImportError as e:  # pragma: no cover
        raise SertError(f"eval.judge needs sert.openai_client ({e})") from None
    return make_judge(cfg.judge, cfg.judge_base_url)


def format_metrics(m: dict) -> str:
    lo, hi = m["acc_ci"]
    s = (f"accuracy {100 * m['acc']:.2f}% (95% CI {100 * lo:.2f}-{100 * hi:.2f}, n={m['n']}) | "
         f"Fmt {100 * m['fmt']:.1f}% | Len {m['len']:.1f} | Rep {m['rep']:.3f}")
    if "judge" in m:
        s += f" | Judge {m['judge']:.2f}"
    return s


def add_parser(sub) -> None:
    from .cli import add_config_flags, add_model_args

    p = sub.add_parser("eval", help="evaluate a model on a task (greedy; Acc with 95%% CI, Fmt, Len, Rep)",
                       description="Batched greedy evaluation with the paper's metrics. Resumable with --out.")
    add_model_args(p)
    p.add_argument("--task", required=True, help="task name (see 'sert tasks') or a .jsonl/.csv file")
    p.add_argument("--out", default=None, help="directory for predictions.jsonl and metrics.json")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(p, EvalConfig)
    p.set_defaults(func=_cli)

    t = sub.add_parser("tasks", help="list the registered tasks with their split sizes")
    t.set_defaults(func=_cli_tasks)


def _cli(args: argparse.Namespace) -> int:
    from .cli import config_from_args

    cfg = config_from_args(EvalConfig, args, section="eval")
    m = run_eval(args.model, args.task, cfg, args.out, args.device, args.dtype, progress=not args.quiet)
    print(format_metrics(m))
    print(f"wall time {m['wall_s']:.1f} s (+ {m['load_s']:.1f} s model load) on {m['device']}/{m['dtype']}")
    if args.out:
        print(f"predictions: {Path(args.out) / 'predictions.jsonl'}\nmetrics: {Path(args.out) / 'metrics.json'}")
    return 0


def _cli_tasks(args: argparse.Namespace) -> int:
    from .tasks import TASKS

    for name, t in TASKS.items():
        tr, te = len(t.examples("train")), len(t.examples("test"))
        teachers = ", ".join(t.teachers) or "-"
        print(f"{name:28s} {t.kind:7s} train {tr:5d}  test {te:5d}  teachers: {teachers}")
    return 0
