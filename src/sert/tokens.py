"""How every stage turns a prompt into token ids: one convention, one place.

Mining, training and evaluation must feed a model the same ids for the same prompt. The
convention is the tokenizer's own (``add_special_tokens=True``): a Llama-style tokenizer
that adds BOS gets it everywhere, GPT-2 and SmolLM2 (which add nothing) get the bare text.

A prompt longer than the model's context cannot be decoded at all (position embeddings run
out: an IndexError deep in the model). :func:`fit_prompt` keeps the prompt's last tokens
(the question's end, ``Answer:`` and the start of generation stay adjacent) and says so.
"""
from __future__ import annotations

from typing import Sequence


def encode_prompt(tokenizer, text: str) -> list[int]:
    """The token ids of a prompt, special tokens (e.g. BOS) included as the tokenizer adds them."""
    return list(tokenizer(text).input_ids)


def encode_prompts(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    return [list(x) for x in tokenizer(list(texts)).input_ids] if texts else []


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a generation: the generation config's EOS id(s) and the tokenizer's."""
    gen = getattr(model, "generation_config", None)
    e = getattr(gen, "eos_token_id", None) if gen is not None else None
    ids = {int(i) for i in (e if isinstance(e, (list, tuple)) else [e]) if i is not None}
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


def context_length(model) -> int | None:
    """Positions the model (or its config) can attend over (None when its config does not say)."""
    cfg = getattr(model, "config", model)
    for k in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length"):
        v = getattr(cfg, k, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def fit_prompt(ids: list[int], limit: int | None, keep_head: int = 0) -> tuple[list[int], int]:
    """``ids`` cut to at most ``limit`` tokens: the first ``keep_head`` (e.g. BOS) and the last
    ``limit - keep_head``. Returns (ids, number of tokens dropped)."""
    if limit is None or len(ids) <= limit:
        return ids, 0
    limit = max(1, limit)
    head = ids[:min(keep_head, limit - 1)] if keep_head else []
    tail = ids[len(ids) - (limit - len(head)):]
    return head + tail, len(ids) - limit


def n_special_prefix(tokenizer) -> int:
    """How many special tokens the tokenizer puts in front of a text (1 for BOS-adding ones)."""
    try:
        with_sp = tokenizer("a").input_ids
        bare = tokenizer("a", add_special_tokens=False).input_ids
    except Exception:  # pragma: no cover - exotic tokenizers
        return 0
    n = 0
    while n < len(with_sp) and (n >= len(bare) or with_sp[n] != bare[0]):
        n += 1
    return min(n, max(0, len(with_sp) - len(bare)))
