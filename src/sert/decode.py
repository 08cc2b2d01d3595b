"""Greedy decoding that retires finished rows: evaluation's default decoder (``eval.decoder: rows``).

``model.generate`` on a batch runs every row until the batch's longest one ends: a row that
stopped at its 20th token keeps computing (and feeding padding) until the one looping row
reaches the budget. This decoder runs the same greedy steps but drops a row from the batch and
from its KV cache as soon as it ends (EOS, a stop string or the budget), as the miner does
(:mod:`sert.mine`), so the steps after most rows have ended cost a small batch's.

It reproduces ``generate``'s greedy decoding: left padding, the position ids and attention mask
``generate`` builds (no mask at all when no row is padded), logits of the last position only
(``logits_to_keep=1``), fp32 argmax, EOS and ``stop_strings`` checked after every token with
transformers' own :class:`~transformers.StopStringCriteria` on the same token window, the budget
as ``max_new_tokens``. :func:`generate_like` returns per row what ``generate`` returns (the new
tokens, padded with ``pad`` to the batch's longest), so callers post-process both alike.
What can differ is floating point: once rows are dropped, the matmuls run on fewer rows, which
may change the logits' last bits; in fp32 on a CPU that did not change a token in our checks
(tests/test_decode.py; the embedded model on 32 CommonsenseQA questions at batch 8 and 32, every
record identical to generate's), in bf16 it changes some, as any change of batch does.

A model whose generation config asks for a logits processor that changes the greedy choice
(repetition penalty, n-gram blocking, suppressed or forced tokens, a minimum length) is decoded
by ``generate`` (:func:`plain_greedy`).
"""
from __future__ import annotations

import inspect
from typing import Sequence

# generation-config fields whose non-default value changes greedy decoding: such a model goes
# through generate, which applies them
_PROCESSORS = {"repetition_penalty": (None, 1.0), "encoder_repetition_penalty": (None, 1.0),
               "no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,), "suppress_tokens": (None,),
               "begin_suppress_tokens": (None,), "forced_bos_token_id": (None,), "forced_eos_token_id": (None,),
               "min_length": (None, 0), "min_new_tokens": (None, 0), "sequence_bias": (None,),
               "exponential_decay_length_penalty": (None,), "guidance_scale": (None, 1.0),
               "watermarking_config": (None,), "diversity_penalty": (None, 0.0),
               "encoder_no_repeat_ngram_size": (None, 0)}


def plain_greedy(model) -> str | None:
    """None when this decoder reproduces ``model.generate``'s greedy decoding of ``model``; else why not."""
    cfg = getattr(model, "config", None)
    if cfg is None or not callable(getattr(model, "forward", None)):
        return "not a transformers model"
    if getattr(cfg, "is_encoder_decoder", False):
        return "an encoder-decoder model"
    params = inspect.signature(model.forward).parameters
    if "position_ids" not in params or not ({"cache", "past_key_values"} & set(params)):
        return "its forward takes no position ids or no cache"
    gen = getattr(model, "generation_config", None)
    for k, plain in _PROCESSORS.items():
        v = getattr(gen, k, None) if gen is not None else None
        if v not in plain:
            return f"its generation config sets {k}={v!r}"
    return None


def forward_kw(model) -> tuple[str, dict]:
    """The cache argument's name (transformers 5: ``cache``; 4.x: ``past_key_values``) and, where
    supported, ``logits_to_keep=1`` (the LM head on the last position only, as ``generate`` asks)."""
    params = inspect.signature(model.forward).parameters
    kw = "cache" if "cache" in params else "past_key_values"
    return kw, ({"logits_to_keep": 1} if "logits_to_keep" in params else {})


def new_cache(model, reserve: int = 0):
    """A DynamicCache for ``model``; with ``reserve``, its full-attention layers keep their keys and values
    in buffers with room for ``reserve`` more positions than the prompt (:func:`_buffer_layer`), so a
    decoding step writes one position instead of copying the whole cache (DynamicLayer's torch.cat)."""
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=model.config)
    except TypeError:  # older transformers
        return DynamicCache()
    layers = getattr(cache, "layers", None)
    if reserve and layers:
        from transformers.cache_utils import DynamicLayer

        if all(type(x) is DynamicLayer for x in layers):
            Buffered = _buffer_layer()
            cache.layers = [Buffered(reserve) for _ in layers]
    return cache


_BUFFERED = None


def _buffer_layer():
    """A DynamicLayer whose keys and values are views of buffers ``[rows, heads, capacity, dim]``: an update
    writes its positions in place (the buffer doubles when full); :meth:`retire` drops rows by moving the
    last live rows into the holes (a copy of the moved rows only) and viewing the first rows."""
    global _BUFFERED
    if _BUFFERED is not None:
        return _BUFFERED
    from transformers.cache_utils import DynamicLayer

    class BufferedLayer(DynamicLayer):
        def __init__(self, reserve: int):
            super().__init__()
            self.reserve, self.n, self.kbuf, self.vbuf = reserve, 0, None, None

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n = self.n + key_states.shape[-2]
            if self.kbuf is None or n > self.kbuf.shape[-2]:
                cap = max(n + self.reserve, 2 * (self.kbuf.shape[-2] if self.kbuf is not None else 0))
                kb = key_states.new_empty((*key_states.shape[:2], cap, key_states.shape[-1]))
                vb = value_states.new_empty((*value_states.shape[:2], cap, value_states.shape[-1]))
                if self.n:
                    kb[:, :, :self.n].copy_(self.kbuf[:, :, :self.n])
                    vb[:, :, :self.n].copy_(self.vbuf[:, :, :self.n])
                self.kbuf, self.vbuf = kb, vb
            self.kbuf[:, :, self.n:n].copy_(key_states)
            self.vbuf[:, :, self.n:n].copy_(value_states)
            self.n = n
            self.keys, self.values = self.kbuf[:, :, :n], self.vbuf[:, :, :n]
            return self.keys, self.values

        def retire(self, holes, movers, rows: int) -> None:
            if self.kbuf is None:
                return
            if len(holes):
                self.kbuf[holes] = self.kbuf[movers]
                self.vbuf[holes] = self.vbuf[movers]
            self.kbuf, self.vbuf = self.kbuf[:rows], self.vbuf[:rows]
            self.keys, self.values = self.kbuf[:, :, :self.n], self.vbuf[:, :, :self.n]

        def batch_select_indices(self, indices) -> None:
            if self.kbuf is not None:
                self.kbuf, self.vbuf = self.kbuf[indices], self.vbuf[indices]
                self.keys, self.values = self.kbuf[:, :, :self.n], self.vbuf[:, :, :self.n]

    _BUFFERED = BufferedLayer
    return BufferedLayer


def _retire(cache, keep: list[int]) -> list[int]:
    """Drop every row of ``cache`` but ``keep`` (ascending batch rows); returns the old row of each new one.
    The last live rows move into the holes the ended ones leave, so only they are copied."""
    import torch

    n = len(keep)
    live = set(keep)
    holes = [j for j in range(n) if j not in live]
    movers = [j for j in keep if j >= n]
    order = list(range(n))
    for h, m in zip(holes, movers):
        order[h] = m
    layers = getattr(cache, "layers", None)
    if layers and all(hasattr(x, "retire") for x in layers):
        dev = next((x.kbuf.device for x in layers if x.kbuf is not None), "cpu")
        h_t, m_t = torch.tensor(holes, dtype=torch.long, device=dev), torch.tensor(movers, dtype=torch.long, device=dev)
        for x in layers:
            x.retire(h_t, m_t, n)
    else:
        cache.batch_select_indices(torch.tensor(order, dtype=torch.long, device=_cache_device(cache)))
    return order


def _cache_device(cache):
    for x in getattr(cache, "layers", None) or []:
        k = getattr(x, "keys", None)
        if k is not None and hasattr(k, "device"):
            return k.device
    return "cpu"


def stop_criteria(tokenizer, stop_strings: Sequence[str] | None):
    """transformers' StopStringCriteria for ``stop_strings`` (None without any): the check generate runs."""
    if not stop_strings:
        return None
    from transformers import StopStringCriteria

    return StopStringCriteria(tokenizer=tokenizer, stop_strings=list(stop_strings))


def _count(stats: dict | None, **counts: int) -> None:
    """Add ``counts`` to ``stats`` (when given): forward calls after the prefill and rows computed."""
    if stats is not None:
        for k, v in counts.items():
            stats[k] = stats.get(k, 0) + v


def left_padded(prompts: Sequence[Sequence[int]], pad: int, device):
    """A batch as evaluation always built it (left padding) with the position ids ``generate`` derives
    from its mask; ``use_mask`` False when no row is padded (``generate`` drops an all-ones mask)."""
    import torch

    B, W = len(prompts), max(len(x) for x in prompts)
    ids = torch.full((B, W), pad, dtype=torch.long)
    mask = torch.zeros((B, W), dtype=torch.long)
    for r, x in enumerate(prompts):
        ids[r, W - len(x):] = torch.tensor(list(x), dtype=torch.long)
        mask[r, W - len(x):] = 1
    pos = (mask.cumsum(-1) - 1).masked_fill_(mask == 0, 0)
    use_mask = not bool(mask.all())
    return ids.to(device), mask.to(device), pos.to(device), use_mask


def decode_rows(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos_ids: Sequence[int], pad: int,
                stop=None, stats: dict | None = None, buffered: bool = True) -> list[tuple[list[int], str]]:
    """Greedy-decode one batch of prompt ids, each row dropped from the batch once it ends.

    Returns per prompt ``(tokens, why)``: the new tokens up to and including the one that ended the
    row (its EOS, the last token of a stop string) and why it ended: ``"eos"``, ``"stop"`` or
    ``"length"`` (``max_new_tokens`` tokens). ``stop``: :func:`stop_criteria`'s object or None.
    ``stats`` (optional) is given ``steps`` (forward calls after the prefill) and ``row_steps``
    (rows computed, summed over those calls). ``buffered``: keys and values in preallocated buffers
    (:func:`new_cache`), else transformers' DynamicCache as it is.
    """
    import torch

    device = next(model.parameters()).device
    B = len(prompts)
    ids, mask, pos, use_mask = left_padded(prompts, pad, device)
    cache_kw, keep_kw = forward_kw(model)
    cache = new_cache(model, max_new_tokens if buffered else 0)
    eos_t = torch.tensor(sorted(set(int(e) for e in eos_ids)), dtype=torch.long, device=device)
    tail = ids[:, -stop.maximum_token_len:] if stop is not None else None

    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask if use_mask else None, position_ids=pos, use_cache=True,
                    **keep_kw, **{cache_kw: cache})
        logits = out.logits[:, -1].to(dtype=torch.float32)
        del out
        next_pos = pos[:, -1] + 1
        rows = list(range(B))                                  # original row of each live batch row
        toks: list[list[int]] = [[] for _ in range(B)]
        why = ["length"] * B
        steps = row_steps = 0
        for t in range(max_new_tokens):
            nxt = torch.argmax(logits, dim=-1)
            code = torch.isin(nxt, eos_t).to(torch.long)       # 1: EOS
            if stop is not None:
                tail = torch.cat([tail, nxt[:, None]], dim=1)[:, -stop.maximum_token_len:]
                code = code + 2 * stop(tail, None).to(torch.long)  # 2: a stop string ends here
            nxt_h, code_h = nxt.tolist(), code.tolist()        # the one host sync per step
            for r, tok in zip(rows, nxt_h):
                toks[r].append(tok)
            if t == max_new_tokens - 1:
                for r, c in zip(rows, code_h):
                    if c:
                        why[r] = "eos" if c & 1 else "stop"
                break
            if any(code_h):
                keep = [j for j, c in enumerate(code_h) if not c]
                for r, c in zip(rows, code_h):
                    if c:
                        why[r] = "eos" if c & 1 else "stop"
                if not keep:
                    break
                order = _retire(cache, keep)                   # drop the ended rows
                rows = [rows[j] for j in order]
                kt = torch.tensor(order, dtype=torch.long, device=device)
                nxt, mask, next_pos = nxt[kt], mask[kt], next_pos[kt]
                if tail is not None:
                    tail = tail[kt]
            if use_mask:
                mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
            out = model(input_ids=nxt[:, None], attention_mask=mask if use_mask else None,
                        position_ids=next_pos[:, None], use_cache=True, **keep_kw, **{cache_kw: cache})
            logits = out.logits[:, -1].to(dtype=torch.float32)
            del out
            next_pos = next_pos + 1
            steps += 1
            row_steps += len(rows)
    del cache
    _count(stats, steps=steps, row_steps=row_steps)
    return [(toks[r], why[r]) for r in range(B)]


def generate_like(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos_ids: Sequence[int], pad: int,
                  stop=None, stats: dict | None = None) -> list[list[int]]:
    """What ``model.generate`` returns after the prompts for this batch (greedy, ``pad_token_id=pad``):
    each row's new tokens, padded with ``pad`` to the batch's longest row (a row that ended before
    the others is followed by padding there too), computed by :func:`decode_rows`."""
    res = decode_rows(model, prompts, max_new_tokens, eos_ids, pad, stop, stats)
    width = max(len(t) for t, _ in res)
    return [t + [pad] * (width - len(t)) for t, _ in res]
