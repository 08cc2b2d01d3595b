"""Evaluation: ``sert.evaluate.generate_greedy`` batched vs at batch size 1."""
from __future__ import annotations

from typing import Callable, Sequence

from ...errors import SertError
from ...evaluate import generate_greedy
from ...templates import train_prompt
from ...tokens import eos_token_ids
from .data import eval_examples
from .figures import figure
from .fixed_length import no_eos
from .machine import PeakMemory, Timer, load_avg
from .settings import BenchSizes


def compare_predictions(a: Sequence[dict], b: Sequence[dict]) -> dict:
    """Share of prompts whose generated token ids are identical in ``a`` and ``b``."""
    if len(a) != len(b):
        raise SertError(f"eval bench: {len(a)} vs {len(b)} predictions")
    diff = [i for i, (x, y) in enumerate(zip(a, b)) if list(x["token_ids"]) != list(y["token_ids"])]
    return {"n": len(a), "identical": len(a) - len(diff), "share_identical": (len(a) - len(diff)) / max(1, len(a)),
            "mismatched_indices": diff[:20]}


def bench_eval(model, tokenizer, device: str, sizes: BenchSizes, generate: Callable | None = None
               ) -> tuple[dict, list[dict]]:
    if generate is None:
        generate = generate_greedy
    exs = eval_examples(sizes.eval_questions)
    prompts = [train_prompt(e.question) for e in exs]
    T = sizes.eval_tokens
    kw = dict(max_new_tokens=T, progress=False, stop_strings=None)
    res: dict = {"questions": len(prompts), "batch": sizes.eval_batch, "new_tokens": T, "load_before": load_avg()}
    with no_eos(model, eos_token_ids(model, tokenizer)):
        generate(model, tokenizer, prompts[:2], batch_size=2, **dict(kw, max_new_tokens=min(T, 4)))  # warm-up
        generate(model, tokenizer, prompts[:1], batch_size=1, **dict(kw, max_new_tokens=min(T, 4)))
        with PeakMemory(device) as mo, Timer(device) as to:
            ours = generate(model, tokenizer, prompts, batch_size=sizes.eval_batch, **kw)
        with PeakMemory(device) as mb, Timer(device) as tb:
            base = generate(model, tokenizer, prompts, batch_size=1, **kw)
    n_o = sum(len(r["token_ids"]) for r in ours)
    n_b = sum(len(r["token_ids"]) for r in base)
    if n_o != len(prompts) * T or n_b != len(prompts) * T:
        raise SertError(f"eval bench: generated {n_o} (batched) and {n_b} (batch 1) tokens, expected "
                        f"{len(prompts) * T} each; the fixed-length setup failed")
    cmp = compare_predictions(ours, base)
    res.update({"tokens": n_o, "ours_s": round(to.s, 3), "baseline_s": round(tb.s, 3),
                "ours_tokens_per_s": round(n_o / to.s, 1), "baseline_tokens_per_s": round(n_b / tb.s, 1),
                "ours_peak_rss_mb": mo.peak_rss_mb, "baseline_peak_rss_mb": mb.peak_rss_mb, **cmp,
                "load_after": load_avg()})
    figs = [figure("eval", f"greedy tok/s, {len(prompts)} q x {T} tok", res["ours_tokens_per_s"],
                   res["baseline_tokens_per_s"], "tok/s", note="generate_greedy at batch size 1"),
            figure("eval", "share of predictions identical to batch 1", round(cmp["share_identical"], 4), 1.0,
                   note="batch 1 (reference)")]
    return res, figs
