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


DRAFT_ROWS = 8  # speculation starts once at most this many rows are left (a step then reads all weights for
#                 a few rows: checking guessed tokens there costs little more than one token)


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
    """Add ``counts`` to ``stats`` (when given): forward calls after the prefill, rows computed, and with
    guessed tokens the guesses fed and accepted."""
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


def _record(rows: list[int], toks: list[list[int]], why: list[str], nxt: list[int], code: list[int]) -> list[int]:
    """Append each live row's new token and mark why the ended ones ended (code 1: EOS, 2: a stop
    string); returns the batch rows that go on."""
    keep = []
    for j, (r, tok, c) in enumerate(zip(rows, nxt, code)):
        toks[r].append(tok)
        if c:
            why[r] = "eos" if c & 1 else "stop"
        else:
            keep.append(j)
    return keep


def decode_rows(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos_ids: Sequence[int], pad: int,
                stop=None, stats: dict | None = None, buffered: bool = True, draft: int = 0,
                draft_rows: int | None = None) -> list[tuple[list[int], str]]:
    """Greedy-decode one batch of prompt ids, each row dropped from the batch once it ends.

    Returns per prompt ``(tokens, why)``: the new tokens up to and including the one that ended the
    row (its EOS, the last token of a stop string) and why it ended: ``"eos"``, ``"stop"`` or
    ``"length"`` (``max_new_tokens`` tokens). ``stop``: :func:`stop_criteria`'s object or None.
    ``stats`` (optional) is given ``steps`` (forward calls after the prefill) and ``row_steps``
    (rows computed, summed over those calls), and once guesses are checked ``drafted`` and
    ``accepted`` (guessed tokens fed, and kept). ``buffered``: keys and values in preallocated buffers
    (:func:`new_cache`), else transformers' DynamicCache as it is. ``draft`` > 0: once at most
    ``draft_rows`` (default :data:`DRAFT_ROWS`) rows are left, each step also checks up to ``draft``
    tokens guessed from the row's own text (:func:`_speculate`); the greedy tokens are the same.
    """
    import torch

    draft_rows = DRAFT_ROWS if draft_rows is None else draft_rows
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
            keep = _record(rows, toks, why, nxt.tolist(), code.tolist())  # the one host sync per step
            if t == max_new_tokens - 1 or not keep:
                break
            if len(keep) < len(rows):
                order = _retire(cache, keep)                   # drop the ended rows
                rows = [rows[j] for j in order]
                kt = torch.tensor(order, dtype=torch.long, device=device)
                nxt, mask, next_pos = nxt[kt], mask[kt], next_pos[kt]
                if tail is not None:
                    tail = tail[kt]
            if draft > 0 and len(rows) <= draft_rows and _full_attention(cache):  # the few rows left: guesses too
                st = _Spec(model, cache, prompts, rows, toks, why, mask, use_mask, next_pos, nxt, tail, draft)
                steps, row_steps = _speculate(st, eos_ids, stop, max_new_tokens, stats, steps, row_steps)
                break
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


# ------------------------------------------------------------------ the last rows: guessed tokens checked


def lookup_draft(context: Sequence[int], k: int, ngrams: Sequence[int] = (3, 2)) -> list[int]:
    """Up to ``k`` tokens guessed from ``context`` itself (prompt lookup): the tokens that followed the latest
    earlier occurrence of its last ``n`` tokens, the longest ``n`` of ``ngrams`` that occurs, continued
    periodically where the text runs out. A looping output guesses its loop exactly; an output that
    copies the question guesses the copied words."""
    if k <= 0:
        return []
    ctx = list(context)
    for n in ngrams:
        if len(ctx) <= n:
            continue
        key = ctx[-n:]
        for s in range(len(ctx) - n - 1, -1, -1):
            if ctx[s:s + n] == key:
                out: list[int] = []
                for j in range(s + n, s + n + k):  # past the end, the match repeats itself (a loop's period)
                    out.append(ctx[j] if j < len(ctx) else out[j - len(ctx)])
                return out
    return []


def _full_attention(cache) -> bool:
    """Whether every layer of ``cache`` keeps all positions (a plain or buffered DynamicLayer): a masked-out
    guess is then simply never attended to. A sliding window (it would count the masked positions) or a
    recurrent state (it cannot take a token back) does not allow checking guesses."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(x) is DynamicLayer or type(x) is _buffer_layer() for x in layers)


class _Spec:
    """The live rows of a batch when speculation starts: per row (in batch order) its original index,
    its context (prompt + new tokens), its stop-string window and the token it last chose (not yet fed)."""

    def __init__(self, model, cache, prompts, rows, toks, why, mask, use_mask, next_pos, nxt, tail, draft):
        import torch

        self.model, self.cache, self.toks, self.why, self.draft = model, cache, toks, why, draft
        self.cache_kw, self.keep_kw = forward_kw(model)
        self.rows, self.next_pos, self.pending = list(rows), next_pos, nxt.tolist()
        self.ctx = [list(prompts[r]) + toks[r] for r in self.rows]
        self.tails = tail.tolist() if tail is not None else None
        n = cache.get_seq_length()
        self.mask = mask if use_mask else torch.ones((len(self.rows), n), dtype=torch.long, device=mask.device)


def _emit(st: _Spec, i: int, tok: int, eos: set, stop, max_new: int) -> bool:
    """Append ``tok`` to live row ``i``; True when it ends the row (EOS, a stop string, the budget)."""
    import torch

    r = st.rows[i]
    st.toks[r].append(tok)
    st.ctx[i].append(tok)
    if tok in eos:
        st.why[r] = "eos"
        return True
    if stop is not None:
        st.tails[i] = (st.tails[i] + [tok])[-stop.maximum_token_len:]
        if bool(stop(torch.tensor([st.tails[i]], dtype=torch.long), None)[0]):
            st.why[r] = "stop"
            return True
    return len(st.toks[r]) >= max_new


def _verify_step(st: _Spec, max_new: int):
    """Feed each row its pending token and its guess (:func:`lookup_draft`); returns the greedy choice at
    every fed position (``[rows][1 + k]``) and the guesses."""
    import torch

    guesses = [lookup_draft(c, min(st.draft, max_new - len(st.toks[r]) - 1)) for c, r in zip(st.ctx, st.rows)]
    k = max(len(g) for g in guesses)
    R, dev = len(st.rows), st.next_pos.device
    ids = torch.tensor([[p] + g + [p] * (k - len(g)) for p, g in zip(st.pending, guesses)], dtype=torch.long,
                       device=dev)
    pos = st.next_pos[:, None] + torch.arange(k + 1, device=dev)
    st.mask = torch.cat([st.mask, st.mask.new_ones((R, k + 1))], dim=1)
    keep = {"logits_to_keep": k + 1} if st.keep_kw else {}
    out = st.model(input_ids=ids, attention_mask=st.mask, position_ids=pos, use_cache=True, **keep,
                   **{st.cache_kw: st.cache})
    choice = torch.argmax(out.logits[:, -(k + 1):].to(dtype=torch.float32), dim=-1).tolist()
    return choice, guesses, k


def _speculate(st: _Spec, eos_ids, stop, max_new: int, stats: dict | None, steps: int, row_steps: int):
    """Decode the last rows to their ends, each step checking guessed tokens: the row's pending token and
    up to ``draft`` guesses go through one forward; the greedy choices are kept up to the first guess
    that differs from them (the tokens greedy decoding emits, one forward for several); the positions
    of the rejected guesses stay in the cache, masked out. Returns the updated step counts."""
    import torch

    eos = set(int(e) for e in eos_ids)
    drafted = accepted = 0
    while st.rows:
        choice, guesses, k = _verify_step(st, max_new)
        steps, row_steps = steps + 1, row_steps + len(st.rows)
        keep, adv = [], []
        for i, (c, g) in enumerate(zip(choice, guesses)):
            a = 0
            while a < len(g) and g[a] == c[a]:
                a += 1
            drafted, accepted = drafted + len(g), accepted + a
            if not any(_emit(st, i, tok, eos, stop, max_new) for tok in c[:a + 1]):
                keep.append(i)
                adv.append(a)
                st.pending[i] = c[a]
                if k > a:
                    st.mask[i, st.mask.shape[1] - (k - a):] = 0   # the rejected guesses' positions
        if len(keep) < len(st.rows):
            if not keep:
                break
            order = _retire(st.cache, keep)                  # old batch rows, each one of keep
            at = {j: x for x, j in enumerate(keep)}
            st.rows, st.pending, st.ctx = [st.rows[j] for j in order], [st.pending[j] for j in order], \
                [st.ctx[j] for j in order]
            st.tails = [st.tails[j] for j in order] if st.tails is not None else None
            adv = [adv[at[j]] for j in order]
            kt = torch.tensor(order, dtype=torch.long, device=st.next_pos.device)
            st.mask, st.next_pos = st.mask[kt], st.next_pos[kt]
        st.next_pos = st.next_pos + 1 + torch.tensor(adv, dtype=st.next_pos.dtype, device=st.next_pos.device)
    _count(stats, drafted=drafted, accepted=accepted)
    return steps, row_steps


def generate_like(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos_ids: Sequence[int], pad: int,
                  stop=None, stats: dict | None = None, draft: int = 0) -> list[list[int]]:
    """What ``model.generate`` returns after the prompts for this batch (greedy, ``pad_token_id=pad``):
    each row's new tokens, padded with ``pad`` to the batch's longest row (a row that ended before
    the others is followed by padding there too), computed by :func:`decode_rows`."""
    res = decode_rows(model, prompts, max_new_tokens, eos_ids, pad, stop, stats, draft=draft)
    width = max(len(t) for t, _ in res)
    return [t + [pad] * (width - len(t)) for t, _ in res]
