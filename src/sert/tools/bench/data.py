"""The benchmark's inputs: real StrategyQA questions and distillation pairs."""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from ...config import TeachConfig
from ...tasks import get_task
from ...teach import build_records, resolve_teacher, teacher_rationales
from ...train import build_pairs


def mining_examples(n: int):
    return get_task("strategyqa").examples("train", n)


def eval_examples(n: int):
    return get_task("strategyqa").examples("test", n)


def distill_pairs() -> list[dict]:
    """Real StrategyQA distillation pairs: the shipped text-davinci-002 Zero-shot-CoT rationales
    (the paper's teacher), correct ones only (the teach stage's default), train split."""
    return [dict(p) for p in _distill_pairs()]


@functools.lru_cache(maxsize=1)
def _distill_pairs() -> tuple[dict, ...]:
    task = get_task("strategyqa")
    exs = task.examples("train")
    teacher = resolve_teacher(task, "auto")
    with tempfile.TemporaryDirectory() as tmp:
        found, _ = teacher_rationales(task, teacher, exs, TeachConfig(), Path(tmp))
    recs, _ = build_records(exs, found, teacher)
    return tuple(build_pairs("distill", [r for r in recs if r["correct"]]))
