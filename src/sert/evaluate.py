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

import contextlib
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from .answers import answer_consistent, extract_answer, is_correct, truncate_continuation
from .config import EvalConfig
from .decode import generate_like, left_padded, plain_greedy, stop_criteria
from .errors import SertError
from .identity import refuse_other
from .io import JsonlLog, RunLock, atomic_write_json, atomic_write_jsonl, ensure_dir, read_json, read_jsonl
from .log import get as _get_logger
from .metrics import SEVERE_REP4, bootstrap_ci, class_balance, format_issues, rep_n
from .openai_client import coverage, format_judge, make_judge
from .tasks import Example, load_examples
from .templates import ANSWER_PHRASE, COT_TRIGGER, STOP_STRINGS, train_prompt
from .tokens import context_length, encode_prompts, eos_token_ids, fit_prompt, n_special_prefix
from .train import TRAINING_INFO, longest_training_completion  # noqa: F401 - TRAINING_INFO re-exported
from .version import __version__
from .vllm_backend import load as load_generator  # = load_model unless vLLM serves (CUDA); vllm itself loads there

# torch, transformers and tqdm are imported inside the functions that decode: `sert --help` and the
# stages that do not generate import this module, and must not wait seconds for them.
log = _get_logger(__name__)


def _fit_prompts(model, tokenizer, prompts: Sequence[str], max_new_tokens: int,
                 warn: Callable[[int, int, int], None] | None) -> tuple[list[list[int]], dict[int, int]]:
    """Every prompt's ids, cut (keeping the special prefix) to leave ``max_new_tokens`` positions of the
    model's context; returns the ids and, per cut prompt, how many tokens it lost."""
    ids_all = encode_prompts(tokenizer, prompts)
    ctx = context_length(model)
    room = None if ctx is None else ctx - max_new_tokens
    if room is not None and room < 1:
        raise SertError(f"eval.max_new_tokens {max_new_tokens} leaves no room for a prompt in the model's "
                        f"context of {ctx} tokens; expected at most {ctx - 1}")
    head = n_special_prefix(tokenizer)
    cut_by: dict[int, int] = {}
    for i, x in enumerate(ids_all):
        ids_all[i], dropped = fit_prompt(x, room, keep_head=head)
        if dropped:
            cut_by[i] = dropped
            if warn:
                warn(i, len(x), len(ids_all[i]))
    return ids_all, cut_by


def _generate_batch(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, eos_ids: set[int], pad: int,
                    stop_strings: Sequence[str] | None) -> list[list[int]]:
    """``model.generate`` on one left-padded batch: each row's new tokens, padded with ``pad``."""
    import torch  # heavy: imported where decoding starts (sert --help start-up time)

    input_ids, mask, _, _ = left_padded(prompts, pad, model.device)  # each prompt's last token next to generation
    width = input_ids.shape[1]
    kw = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad, eos_token_id=sorted(eos_ids))
    if stop_strings:
        kw.update(stop_strings=list(stop_strings), tokenizer=tokenizer)
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=mask,
                             **kw, top_p=None, top_k=None, temperature=None)
    return out[:, width:].tolist()


def _output_record(tokenizer, ids: list[int], eos_ids: set[int], stop_strings: Sequence[str] | None,
                   prompt_truncated: int) -> dict:
    """One row's new tokens (padded as generate pads) as an output record: text, tokens up to the first
    EOS, and why it ended (eos, stop: a stop string ends the text, length: the budget)."""
    cut = next((j for j, t in enumerate(ids) if t in eos_ids), None)
    finish = "eos" if cut is not None else "length"
    ids = ids[:cut] if cut is not None else ids
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if finish == "length" and stop_strings and any(text.rstrip().endswith(s) for s in stop_strings):
        finish = "stop"
    return {"text": text, "token_ids": ids, "finish": finish, "prompt_truncated": prompt_truncated}


def generate_greedy(model, tokenizer, prompts: Sequence[str], batch_size: int = 32, max_new_tokens: int = 128,
                    progress: bool = True, stop_strings: Sequence[str] | None = STOP_STRINGS,
                    on_batch: Callable[[list[int], list[dict]], None] | None = None,
                    warn: Callable[[int, int, int], None] | None = None, decoder: str = "rows",
                    stats: dict | None = None, draft: int = 8) -> list[dict]:
    """Batched greedy decoding, longest prompts first (less padding, early OOM).

    ``decoder``: ``rows`` (:mod:`sert.decode`: the same greedy decoding, each row dropped from its
    batch once it ends; ``generate`` where it cannot reproduce it) or ``generate`` (``model.generate``).
    ``draft``: with ``rows``, the last few rows of a batch check up to this many tokens guessed from
    their own text per step (:func:`sert.decode.lookup_draft`; the same greedy tokens; 0 = off).

    Prompts are tokenized as mining and training tokenize them (:mod:`sert.tokens`: the
    tokenizer's special tokens, e.g. BOS, included). A prompt that leaves fewer than
    ``max_new_tokens`` positions of the model's context keeps its last tokens;
    ``warn(index, n_tokens, kept)`` is told. Returns, per prompt, ``{"text", "token_ids",
    "finish", "prompt_truncated"}``; ``on_batch(indices, results)`` is called after every
    batch so callers can persist progress.
    """
    from tqdm.auto import tqdm  # imported where decoding starts (sert --help start-up time)

    ids_all, cut_by = _fit_prompts(model, tokenizer, prompts, max_new_tokens, warn)
    order = sorted(range(len(prompts)), key=lambda i: -len(ids_all[i]))
    results: list[dict | None] = [None] * len(prompts)
    eos_ids = set(eos_token_ids(model, tokenizer))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
    bar = tqdm(total=len(prompts), desc="eval", unit="q", disable=not progress, file=sys.stderr)
    rows = decoder == "rows" and plain_greedy(model) is None
    stop = stop_criteria(tokenizer, stop_strings) if rows else None
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        batch = [ids_all[i] for i in idx]
        if rows:  # generate's output, padding included, from a decoder that retires ended rows
            new = generate_like(model, batch, max_new_tokens, eos_ids, pad, stop, stats, draft=draft)
        else:
            new = _generate_batch(model, tokenizer, batch, max_new_tokens, eos_ids, pad, stop_strings)
        batch_res = []
        for i, ids in zip(idx, new):
            results[i] = _output_record(tokenizer, ids, eos_ids, stop_strings, cut_by.get(i, 0))
            batch_res.append(results[i])
        if on_batch:
            on_batch(idx, batch_res)
        bar.update(len(idx))
    bar.close()
    return results  # type: ignore[return-value]


def _answer_fields(example: Example, text: str) -> dict:
    """What the shared extractor reads from ``text``: pred, method, correct, and whether the final answer
    follows from the output's own text (``consistent``, :func:`sert.answers.answer_consistent`)."""
    ex = extract_answer(text, example.kind, example.choices)
    return {"pred": ex.answer, "method": ex.method, "correct": is_correct(ex.answer, example.answer, example.kind),
            "consistent": answer_consistent(text, example.kind, example.choices)}


def cut_kind(finish: str, token_ids: Sequence[int]) -> str | None:
    """Why an output stopped at the generation budget: None (it ended by itself), ``"loop"`` (its
    second half repeats, rep-4 > 0.5: a degenerate loop that more tokens would not end) or
    ``"budget"`` (still going somewhere when the budget ran out: a budget that cut it short)."""
    if finish != "length":
        return None
    tail = list(token_ids)[len(token_ids) // 2:]
    return "loop" if rep_n(tail, 4) > SEVERE_REP4 else "budget"


def reasoning_text(body: str) -> str:
    """The reasoning of an output: what precedes the answer phrase, without the CoT trigger that
    the RD arms learned to open with (it is the prompt's, not the model's reasoning)."""
    k = body.find(ANSWER_PHRASE)
    reasoning = (body[:k] if k >= 0 else body).strip()
    if reasoning.startswith(COT_TRIGGER):
        reasoning = reasoning[len(COT_TRIGGER):].strip()
    return reasoning


def score(example: Example, text: str, token_ids: Sequence[int], tokenizer=None, finish: str | None = None) -> dict:
    """Everything the metrics need about one output, with the shared extractor."""
    ans = _answer_fields(example, text)
    body = truncate_continuation(text)
    reasoning = reasoning_text(body)
    if tokenizer is not None:
        reasoning_tokens = len(tokenizer(reasoning, add_special_tokens=False).input_ids) if reasoning else 0
        body_ids = tokenizer(body, add_special_tokens=False).input_ids if body else []
    else:
        reasoning_tokens = len(reasoning.split())
        body_ids = body.split()
    issues = format_issues(text, ans["method"] == "strict", token_ids)
    return {
        **ans, "fmt_ok": not issues, "fmt_issues": issues, "reasoning_tokens": reasoning_tokens,
        "rep1": rep_n(body_ids, 1), "n_tokens": len(token_ids),
        "cut": cut_kind(finish, token_ids) if finish is not None else None,
    }


def summarize(records: Sequence[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    n = len(records)
    if n == 0:
        raise SertError("no predictions to summarise")
    correct = [1.0 if r["correct"] else 0.0 for r in records]
    lo, hi = bootstrap_ci(correct, n_boot, seed)
    cut = [r.get("cut") or ("budget" if r.get("finish") == "length" else None) for r in records]
    m = {
        "n": n,
        "acc": sum(correct) / n,
        "acc_ci": [lo, hi],
        "acc_strict": sum(1 for r in records if r["correct"] and r["method"] == "strict") / n,
        "fmt": sum(1 for r in records if r["fmt_ok"]) / n,
        "len": sum(r["reasoning_tokens"] for r in records) / n,
        "rep": sum(r["rep1"] for r in records) / n,
        "no_answer": sum(1 for r in records if r["pred"] is None) / n,
        "cut": sum(1 for c in cut if c) / n,                 # outputs that ran to the generation budget
        "cut_loop": sum(1 for c in cut if c == "loop") / n,  # ... in a degenerate loop (the model's failure)
        "cut_budget": sum(1 for c in cut if c == "budget") / n,  # ... still reasoning (the budget's)
        "max_output_tokens": max((r.get("n_tokens") or 0) for r in records),
    }
    checked = [r["consistent"] for r in records if r.get("consistent") is not None]
    m["answer_consistency"] = sum(checked) / len(checked) if checked else None  # final answer follows the text
    m["answer_consistency_n"] = len(checked)
    cb = class_balance(records, n_boot, seed)  # yes/no and multiple choice: does the arm only lean to a class?
    if cb is not None:
        m["balanced_acc"], m["balanced_acc_ci"] = cb["balanced_acc"], cb["balanced_acc_ci"]
        m["answers"] = cb["answers"]
    if any("judge" in r for r in records):  # judge = mean of the scored only, beside its coverage
        m.update(coverage(records))
    return m


def environment() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform()}
    for mod in ("torch", "transformers", "accelerate", "peft"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover
            pass
    info["sert"] = __version__
    try:
        info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except Exception:  # pragma: no cover
        info["git"] = None
    return info


def evaluate(model, tokenizer, examples: Sequence[Example], cfg: EvalConfig, out_dir: str | Path | None = None,
             progress: bool = True, label: str | None = None, judge=None, budget: dict | None = None) -> dict:
    """Evaluate ``model`` on ``examples``; resumable when ``out_dir`` is given.

    ``budget``: the generation budget as :func:`resolve_budget` gives it (default: ``cfg``'s
    ``max_new_tokens``, or ``default_budget`` when that is auto).
    """
    t0 = time.time()
    budget = budget or resolve_budget(cfg, None)
    max_new = budget["max_new_tokens"]
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
                   "finish": r["finish"], **score(e, r["text"], r["token_ids"], tokenizer, r["finish"])}
            if r.get("prompt_truncated"):
                rec["prompt_truncated"] = r["prompt_truncated"]
            done[e.id] = rec
            recs.append(rec)
        if log is not None:
            log.append_many(recs)

    if todo:
        prompts = [train_prompt(e.question) for e in todo]
        own = getattr(model, "generate_greedy", None)  # a generator object that decodes itself (sert.vllm_backend)
        if own is not None:
            own(tokenizer, prompts, cfg.batch_size, max_new, progress=progress, on_batch=persist)
        else:
            generate_greedy(model, tokenizer, prompts, cfg.batch_size, max_new, progress=progress, on_batch=persist,
                            warn=lambda i, n, k: _warn_long(todo[i], n, k, max_new), decoder=cfg.decoder,
                            draft=cfg.draft_tokens)
    if log is not None:
        log.close()
    records = [done[e.id] for e in examples]
    if judge is not None:
        records = judge(records)
    metrics = summarize(records, cfg.n_bootstrap, cfg.seed)
    metrics.update({"label": label, "split": cfg.split, "max_new_tokens": max_new, "budget": budget,
                    "generated_tokens": sum(r["n_tokens"] for r in records),
                    "wall_s": round(time.time() - t0, 2), "resumed": resumed,
                    "env": environment()})
    if out_dir is not None:
        atomic_write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics


def _warn_long(e: Example, n: int, kept: int, max_new: int) -> None:
    where = e.source or f"id {e.id}"
    log.warning(f"{where}: prompt of {n} tokens does not fit the model's context with "
                f"{max_new} new tokens; kept its last {kept} tokens")


def resolve_budget(cfg: EvalConfig, longest: int | None, label: str | None = None) -> dict:
    """The generation budget of one evaluation and why: ``{"max_new_tokens", "longest_training_completion",
    "rule"}``. Auto (``max_new_tokens`` None): ``ceil(budget_factor x longest) + budget_margin``, or ``default_budget`` for a
    model sert did not train. A set budget below ``longest`` is kept, with a warning naming the model."""
    if cfg.max_new_tokens is None:
        if longest is None:
            return {"max_new_tokens": cfg.default_budget, "longest_training_completion": None,
                    "rule": "auto: default_budget (no sert training record)"}
        n = math.ceil(cfg.budget_factor * longest) + cfg.budget_margin
        return {"max_new_tokens": n, "longest_training_completion": longest,
                "rule": f"auto: budget_factor {cfg.budget_factor:g} x longest training completion {longest} "
                        f"+ budget_margin {cfg.budget_margin}"}
    if longest is not None and cfg.max_new_tokens < longest:
        log.warning(f"eval.max_new_tokens {cfg.max_new_tokens} is below the longest completion "
                    f"{label or 'this model'} was trained on ({longest} tokens): outputs can be cut before their "
                    "answer; use eval.max_new_tokens: auto")
    return {"max_new_tokens": cfg.max_new_tokens, "longest_training_completion": longest, "rule": "set"}


def rescore_record(rec: dict, example: Example) -> dict:
    """A stored prediction with its answer-dependent fields recomputed from its output text by
    the current extractor (no decoding): pred, method, correct, and the no-answer-phrase issue."""
    ans = _answer_fields(example, rec["output"])
    issues = [i for i in rec.get("fmt_issues", []) if i != "no_answer_phrase"]  # the others need token ids
    if ans["method"] != "strict":
        issues.insert(0, "no_answer_phrase")  # as format_issues puts it first
    return dict(rec, **ans, fmt_ok=not issues, fmt_issues=issues)


def rescore_dir(eval_dir: str | Path, task: str | None = None, limit: int | None = None) -> dict:
    """Re-score ``eval_dir/predictions.jsonl`` with the current answer extractor and rewrite it and
    ``metrics.json`` (atomically); for predictions made before an extractor change.
    Returns ``{"n", "changed", "acc_before", "acc_after"}``."""
    d = Path(eval_dir)
    pred_file, met_file = d / "predictions.jsonl", d / "metrics.json"
    if not pred_file.exists():
        raise SertError(f"{pred_file}: no predictions to re-score")
    with RunLock(d):
        try:
            old_m = read_json(met_file) if met_file.exists() else {}
        except SertError:  # damaged: rebuilt below, from predictions that must then be complete
            old_m = {}
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
        if "n" not in old_m:  # no (readable) metrics.json: rebuilt, from predictions that must be complete
            old_m = _rebuilt(d, task, limit, EvalConfig.n_bootstrap, EvalConfig.seed)
            old_m["acc"] = None  # no accuracy before the re-scoring is known
        elif old_m["n"] != len(recs):
            raise SertError(f"{pred_file}: holds {len(recs)} of the {old_m['n']} predictions its metrics.json counts; "
                            "rerun the evaluation to finish it")
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


def finished_predictions(pred_file: str | Path, task: str, split: str, limit: int | None = None
                         ) -> tuple[list[dict], list[Example]]:
    """The records of a finished evaluation's ``predictions.jsonl``, in the task's order (the order
    :func:`evaluate` summarises them in, so a bootstrap CI computed again is the same), and its examples.
    ``limit``: the evaluation's ``eval.limit``; None = as many as the file holds, which must then be the
    split's first questions. An unfinished evaluation is an error saying how many it holds."""
    p = Path(pred_file)
    recs = read_jsonl(p, tolerate_torn_tail=True)
    by_id = {r.get("id"): r for r in recs}
    examples = load_examples(task, split)
    want = examples[:limit if limit is not None else len(by_id)]
    held = sum(1 for e in want if e.id in by_id)
    if held != len(want) or len(by_id) != len(want):
        raise SertError(f"{p}: holds {held} of the {len(want)} predictions of {task}/{split}"
                        f"{'' if limit is not None else ' (its first questions)'}: the evaluation did not finish; "
                        "rerun it to finish it (sert eval with the same --out, or sert run, resumes it)")
    return [by_id[e.id] for e in want], want


def rebuild_metrics(eval_dir: str | Path, task: str | None = None, limit: int | None = None,
                    n_bootstrap: int = EvalConfig.n_bootstrap, seed: int = EvalConfig.seed) -> dict:
    """``metrics.json`` of a finished evaluation rebuilt from its ``predictions.jsonl`` (no decoding) and
    written atomically: for one that was deleted or damaged. The accuracy, its CI (same ``n_bootstrap``
    and ``seed``), the format, length and budget figures are what :func:`evaluate` wrote; wall times,
    device and a judge score (not in the predictions) are not. Task and split come from
    ``eval_config.json`` unless ``task`` is given."""
    m = _rebuilt(Path(eval_dir), task, limit, n_bootstrap, seed)
    with RunLock(eval_dir):
        atomic_write_json(Path(eval_dir) / "metrics.json", m)
    return m


def _rebuilt(d: Path, task: str | None, limit: int | None, n_bootstrap: int, seed: int) -> dict:
    """:func:`rebuild_metrics`' metrics, not written (the caller holds ``d``'s lock or takes it)."""
    ident = read_json(d / EVAL_CONFIG) if (d / EVAL_CONFIG).exists() else {}
    task = task or ident.get("task")
    split = ident.get("split") or "test"
    if not task:
        raise SertError(f"{d}: which task? no {EVAL_CONFIG} names it")
    records, _ = finished_predictions(d / "predictions.jsonl", task, split, limit)
    m = summarize(records, n_bootstrap, seed)
    model = ident.get("model")
    longest = longest_training_completion(model) if model and Path(model).is_dir() else None
    m.update({"label": model, "split": split, "max_new_tokens": ident.get("max_new_tokens"),
              "budget": {"max_new_tokens": ident.get("max_new_tokens"), "longest_training_completion": longest,
                         "rule": "rebuilt from predictions.jsonl"},
              "generated_tokens": sum(r.get("n_tokens") or 0 for r in records), "model": model, "task": task,
              "rebuilt": {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "from": "predictions.jsonl"}})
    return m


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


def _identity(model_name: str, task: str, cfg: EvalConfig, max_new_tokens: int, out: str | Path | None = None
              ) -> dict:
    """What the predictions depend on: a resumed run must match it. A local model is recorded by its
    absolute path and, with ``out``, also by its path relative to ``out`` (``model_from_out``), so a
    run directory moved or copied with its checkpoints still matches its evaluations."""
    p = Path(model_name)
    model = str(p.resolve()) if p.exists() else model_name
    ident = {"model": model, "task": task, "split": cfg.split, "max_new_tokens": max_new_tokens}
    if p.exists() and out is not None:
        ident["model_from_out"] = Path(os.path.relpath(p.resolve(), Path(out).resolve())).as_posix()
    return ident


def _check_identity(out: Path, ident: dict) -> None:
    f = out / EVAL_CONFIG
    if (out / "predictions.jsonl").exists() and f.exists():
        old = read_json(f)
        rel = old.get("model_from_out")
        if old.get("model") != ident["model"] and rel is not None and rel == ident.get("model_from_out"):
            old = dict(old, model=ident["model"])  # moved together with the directory: the same model
        refuse_other(out, "holds predictions of another evaluation", old, ident,
                     "use another --out or delete it", keys=[k for k in ident if k != "model_from_out"])


def run_eval(model_name: str, task: str, cfg: EvalConfig, out_dir: str | Path | None = None,
             device: str | None = None, dtype: str | None = None, progress: bool = True,
             budget: dict | None = None) -> dict:
    """Evaluate ``model_name`` on ``task`` (``sert eval``); resumable with ``out_dir``. ``budget``: the
    generation budget already resolved by the caller (:func:`resolve_budget`: the pipeline resolves it
    once per stage, with the arm's name in its warning); by default resolved here from the checkpoint's
    training record."""
    examples = load_examples(task, cfg.split, cfg.limit)
    if budget is None:
        budget = resolve_budget(cfg, longest_training_completion(model_name), label=model_name)
    ident = _identity(model_name, task, cfg, budget["max_new_tokens"], out_dir)
    # a failure before any output removes the directory the lock made
    with RunLock(out_dir) if out_dir is not None else contextlib.nullcontext():
        if out_dir is not None:
            _check_identity(Path(out_dir), ident)
        t0 = time.time()
        model, tok, place = load_generator(model_name, device, dtype)
        load_s = time.time() - t0
        judge = _make_judge(cfg) if cfg.judge else None
        if out_dir is not None:  # once model and judge are ready: a bad one leaves nothing behind
            atomic_write_json(Path(out_dir) / EVAL_CONFIG, ident)
        m = evaluate(model, tok, examples, cfg, out_dir, progress=progress, label=model_name, judge=judge,
                     budget=budget)
        m.update({"model": model_name, "task": task, "device": place.device, "dtype": place.dtype,
                  "dtype_reason": place.reason, "load_s": round(load_s, 2)})
        if out_dir is not None:
            atomic_write_json(Path(out_dir) / "metrics.json", m)
        return m


def _make_judge(cfg: EvalConfig):
    """The paper's optional 0-10 LLM judge through any OpenAI-compatible endpoint."""
    return make_judge(cfg.judge, cfg.judge_base_url)


def format_metrics(m: dict) -> str:
    lo, hi = m["acc_ci"]
    s = (f"accuracy {100 * m['acc']:.2f}% (95% CI {100 * lo:.2f}-{100 * hi:.2f}, n={m['n']}) | "
         f"Fmt {100 * m['fmt']:.1f}% | Len {m['len']:.1f} | Rep {m['rep']:.3f}")
    if "judge" in m:
        s += f" | Judge {format_judge(m)}"
    return s
