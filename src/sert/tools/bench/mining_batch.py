"""Mining tokens/s against ``batch_questions`` (on request: ``--only mining_batch``)."""
from __future__ import annotations

from typing import Callable

from ...config import MineConfig
from ...mine import questions_per_batch
from ...tokens import eos_token_ids
from .data import mining_examples
from .figures import figure
from .fixed_length import no_eos
from .machine import Timer, load_avg
from .mining import sert_mining
from .settings import BenchSizes


def batch_sweep(n_questions: int) -> list[int]:
    """1, 2, 4, ... up to ``n_questions`` (which is always included)."""
    out, b = [], 1
    while b < n_questions:
        out.append(b)
        b *= 2
    return out + [n_questions]


def bench_mining_batch(load: Callable[[], tuple], device: str, sizes: BenchSizes) -> tuple[dict, list[dict]]:
    """Mining tokens/s (fixed length, EOS masked) of ``sert.mine.mine`` at batch_questions 1, 2, 4, ...
    ``--mine-questions`` on the same questions; also what ``batch_questions: auto`` picks here."""

    model, tok, _ = load()
    exs = mining_examples(sizes.mine_questions)
    T = sizes.mine_tokens
    res: dict = {"questions": len(exs), "new_tokens": T, "load_before": load_avg(), "tokens_per_s": {},
                 "auto": questions_per_batch(MineConfig(max_new_tokens=T), model, tok, exs)}
    with no_eos(model, eos_token_ids(model, tok)):
        sert_mining(model, tok, exs[:1], min(T, 4), 1)                            # warm-up
        for b in batch_sweep(len(exs)):
            with Timer(device) as t:
                n = sert_mining(model, tok, exs, T, b)
            res["tokens_per_s"][b] = round(n / t.s, 1)
    res["load_after"] = load_avg()
    one = res["tokens_per_s"][1]
    figs = [figure("mining_batch", f"sampled tok/s at batch_questions {b} ({25 * b} rows), {len(exs)} q x {T} tok",
                   v, one, "tok/s", note=f"batch_questions 1 (same run); auto picks {res['auto']} here")
            for b, v in res["tokens_per_s"].items()]
    del model
    return res, figs
