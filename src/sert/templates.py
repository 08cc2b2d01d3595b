"""Every prompt and training target of the paper, in one place (SERT §II).

Training examples are (prompt, completion) pairs: the loss is taken on the
completion only (prompt tokens masked, as in Fine-tune-CoT), and the same
prompt string is what evaluation feeds the trained model.
"""
from __future__ import annotations

import re

from .answers import NEXT_QUESTION

ANSWER_PHRASE = "So the answer is"
COT_TRIGGER = "Let's think step by step."


def mining_prompt(question: str, style: str = "zero-shot") -> str:
    """SERT §II-A: zero-shot prompt for latent-path mining, no CoT trigger, no examples.

    ``style="train"`` (``mine.prompt``): the trained arms' prompt (:func:`train_prompt`), for mining
    with a checkpoint sert trained (a self-improvement round), which learned to answer that prefix."""
    return train_prompt(question) if style == "train" else f"Question: {question} Answer:"


def train_prompt(question: str) -> str:
    """Prompt side of every training target (SERT §II-B/C): ``Question: {q}. Answer:``.

    Evaluation uses it too, so trained models see exactly their training prefix.
    """
    return f"Question: {question}. Answer:"


def self_training_target(question: str, path: str, answer: str, own_answer: bool = False) -> tuple[str, str]:
    """SERT §II-B: ``Question: {q}. Answer: {path} So the answer is {a}.``

    ``own_answer``: the path was mined with a checkpoint trained on these targets (``mine.prompt: train``)
    and ends with its own ``So the answer is ...``; that statement is replaced by the gold one, so the
    target states one answer, not two (a path whose stated answer is not gold is dropped by the
    self-improvement arms' strict answer-consistency filter)."""
    p = _clean(path)
    if own_answer:
        p = strip_answer_statement(p)
    return train_prompt(question), f" {p} {ANSWER_PHRASE} {answer}."


def strip_answer_statement(text: str) -> str:
    """``text`` without a closing ``So the answer is ...`` (the last sentence); unchanged without one."""
    k = text.rfind(ANSWER_PHRASE)
    if k < 0 or "\n" in text[k:] or re.search(r"[.!?]\s+\S", text[k + len(ANSWER_PHRASE):]):
        return text
    return text[:k].rstrip()


def distillation_target(question: str, rationale: str, answer: str) -> tuple[str, str]:
    """SERT §II-C: ``Question: {q}. Answer: Let's think step by step. {R} So the answer is {a}.``"""
    return train_prompt(question), f" {COT_TRIGGER} {_clean(rationale)} {ANSWER_PHRASE} {answer}."


def finetune_target(question: str, answer: str) -> tuple[str, str]:
    """The Finetune arm (SERT Table II): answer only, ``Question: {q}. Answer: So the answer is {a}.``

    (D) The paper does not print this template; we keep the answer phrase so one
    extractor reads every arm's output.
    """
    return train_prompt(question), f" {ANSWER_PHRASE} {answer}."


def _clean(text: str) -> str:
    return " ".join(text.split())


# A small model's hallucinated next example starts with the prompts' "Question:"
# (sert.answers.NEXT_QUESTION): evaluation stops decoding at it (transformers' and vLLM's stop
# strings); sert.answers cuts an output where a next example starts (NEXT_EXAMPLE) before reading it.
STOP_STRINGS = [NEXT_QUESTION]
