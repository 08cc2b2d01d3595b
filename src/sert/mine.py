"""Stage 1: mining latent reasoning paths (SERT §II-A).

Inputs: a causal LM, its tokenizer, a task's training questions, a :class:`~sert.config.MineConfig`.
Output: ``RUN/paths.jsonl``, one record per path, and ``RUN/mine_meta.json``.

For each question the zero-shot prompt ``Question: {q} Answer:`` is run once (the
prefill); the top-k tokens of that first decoding step (paper: 5) become branches,
and each branch is continued by n samples (paper: 5) with top-k 10, top-p 0.95,
temperature 1.0: 25 paths per question. ``mode="cot-decoding"`` continues each branch
greedily instead (Wang & Zhou 2024): k paths per question.

When EOS is among the top-k first tokens its branch is an empty path (kept, as in the
paper; the filters count it under ``eos_branch``); ``skip_eos_branch`` branches on the
top-k tokens other than EOS instead. Prompts are encoded as every stage encodes them
(:func:`sert.tokens.encode_prompt`, BOS included where the tokenizer adds it); a prompt
longer than the model's context minus ``max_new_tokens`` keeps its BOS and its last
tokens, with one warning naming the question's file:line and id.

Why our own decoding loop rather than ``model.generate``: one prefill per question
serves all its 25 paths (the KV cache is copied to the 25 rows, never recomputed),
several questions share a batch (left-padded), finished rows are dropped from the
batch and cache, and only the 10 top-k candidates are sorted for top-p. The sampler
is the same distribution as Hugging Face's temperature -> top-k -> top-p warpers
(tests/test_mine.py checks it against them).

Determinism and resume: each question draws its random numbers from its own
``torch.Generator`` seeded from (seed, question id), always ``k*n`` uniforms per
decoding step, so a question's paths do not depend on which rows finished first or on
which other questions share its batch, up to floating point: a different batch shape
changes the matmul tiling, hence the logits' last bits. In fp32 on CPU that flips a
token about once in a million draws; in bf16 on a GPU it flips many (seen on an H200:
63% of paths identical between batch_questions 1 and 4). So questions are decoded in
fixed chunks of ``batch_questions`` consecutive examples and a chunk is written in one
append: after a kill, the rerun recomputes exactly the missing chunks with the same
composition, and the resumed file equals an uninterrupted run's on the same hardware.
Reproducing a run therefore means the same seed, ``batch_questions``, device and dtype.

Each record keeps the branch (token, id, rank, probability under the model), the
continuation (``text`` includes the branch token; ``token_ids``/``logprobs``/``n_tokens``
cover exactly that text, the EOS that ended an ``eos`` path is not part of it), the
log-probabilities under the model's own distribution (temperature 1, no truncation),
so perplexity needs no second pass, and ``delta``: the CoT-decoding answer confidence
(mean over the answer's tokens of p(top-1) - p(top-2) at that step; ``None`` when the
path states no answer), recorded in both modes.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import re
import sys
import time
from pathlib import Path
from typing import Sequence

from .answers import extract_answer, normalize_answer, normalize_number, truncate_continuation
from .config import MineConfig
from .errors import SertError
from .io import JsonlLog, RunLock, atomic_write_json, atomic_write_jsonl, read_json, read_jsonl
from .templates import mining_prompt
from .tokens import context_length, encode_prompt, fit_prompt, n_special_prefix

PATHS_FILE = "paths.jsonl"
META_FILE = "mine_meta.json"
# Settings that must match for a rerun to resume the same paths file.
_RESUME_KEYS = ("mode", "split", "top_k_branches", "samples_per_branch", "top_k", "top_p",
                "temperature", "max_new_tokens", "seed", "skip_eos_branch")
# Compact the batch (drop finished rows from it and from the KV cache) once this share of
# its rows is finished: a compaction copies the cache once, about one step's attention cost.
_COMPACT_SHARE = 0.125


# ------------------------------------------------------------------ helpers
def paths_per_question(cfg: MineConfig) -> int:
    return cfg.top_k_branches * (1 if cfg.mode == "cot-decoding" else cfg.samples_per_branch)


def settings_key(cfg: MineConfig) -> str:
    """What a path depends on besides model and question; records carry it so runs never mix."""
    skip = " skip_eos" if cfg.skip_eos_branch else ""  # absent by default: older paths files still resume
    if cfg.mode == "cot-decoding":
        return f"cot-decoding k={cfg.top_k_branches} max_new={cfg.max_new_tokens}{skip}"
    return (f"sert k={cfg.top_k_branches} n={cfg.samples_per_branch} top_k={cfg.top_k} top_p={cfg.top_p} "
            f"T={cfg.temperature} max_new={cfg.max_new_tokens} seed={cfg.seed}{skip}")


def question_seed(seed: int, qid: str) -> int:
    """A 63-bit seed from (run seed, question id): a question's draws ignore batch composition."""
    h = hashlib.sha256(f"{seed}\x00{qid}".encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def top_k_top_p_dist(logits, top_k: int, top_p: float, temperature: float):
    """The sampling distribution: temperature, then top-k, then top-p (HF's warper order).

    ``logits``: [R, V] float. Only the ``top_k`` candidates are sorted (``torch.topk``
    returns them sorted). A candidate survives top-p when the probability of those
    ranked above it is < ``top_p`` (the first always survives), which is HF's
    ``TopPLogitsWarper`` applied to the top-k-renormalised distribution.
    Returns (candidate ids [R, k], probabilities [R, k], zero for dropped candidates).
    """
    import torch

    vals, idx = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1)
    return idx, _truncate(vals, top_p, temperature)


def _truncate(vals, top_p: float, temperature: float):
    import torch

    p = torch.softmax(vals / temperature, dim=-1)
    above = torch.cumsum(p, dim=-1) - p
    keep = above < top_p
    keep[:, 0] = True
    p = p * keep
    return p / p.sum(-1, keepdim=True)


def _draw(idx, p, u):
    """Inverse-CDF draw of one candidate per row with the uniforms ``u`` [R]."""
    import torch

    cdf = torch.cumsum(p, dim=-1)
    target = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    # right=True: a draw never lands on a dropped candidate (its cdf step is flat)
    choice = torch.searchsorted(cdf, target, right=True).clamp_(max=p.shape[-1] - 1)
    return idx.gather(-1, choice).squeeze(-1)


def sample_top_k_top_p(logits, u, top_k: int, top_p: float, temperature: float):
    """One token per row of ``logits`` [R, V], drawn with the uniforms ``u`` [R] in [0, 1)."""
    idx, p = top_k_top_p_dist(logits, top_k, top_p, temperature)
    return _draw(idx, p, u)


def _eos_ids(model, tokenizer) -> list[int]:
    ids: set[int] = set()
    gen = getattr(model, "generation_config", None)
    e = getattr(gen, "eos_token_id", None) if gen is not None else None
    for x in (e if isinstance(e, (list, tuple)) else [e]):
        if x is not None:
            ids.add(int(x))
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


def _forward_kw(model) -> tuple[str, dict]:
    """The cache argument's name (transformers 5: ``cache``; 4.x: ``past_key_values``) and,
    where supported, ``logits_to_keep=1`` so the prefill computes the LM head for one position."""
    import inspect

    params = inspect.signature(model.forward).parameters
    kw = "cache" if "cache" in params else "past_key_values"
    return kw, ({"logits_to_keep": 1} if "logits_to_keep" in params else {})


def _new_cache(model):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older transformers
        return DynamicCache()


def model_context(model, tokenizer, cfg: MineConfig) -> int | None:
    """The model's context length (None: unknown); refuses a ``max_new_tokens`` that leaves no room for a prompt."""
    ctx = context_length(model)
    room = None if ctx is None else ctx - cfg.max_new_tokens - n_special_prefix(tokenizer)
    if room is not None and room < 1:
        raise SertError(f"mine.max_new_tokens (--max-new-tokens) {cfg.max_new_tokens}: leaves no room for a prompt "
                        f"in the model's context of {ctx} tokens; expected at most {cfg.max_new_tokens + room - 1}")
    return ctx


def prompt_ids(tokenizer, exs, ctx: int | None, max_new_tokens: int, where: str = "question") -> list[list[int]]:
    """Each question's mining-prompt ids (:func:`sert.tokens.encode_prompt`), fitted to ``ctx - max_new_tokens``.

    A longer prompt keeps its leading special tokens (BOS) and its last tokens (the question's
    end and ``Answer:``), with one warning per question naming its file:line (``Example.source``)
    or else ``where`` (the task and split), and its id.
    """
    limit = None if ctx is None else ctx - max_new_tokens
    head = n_special_prefix(tokenizer) if limit is not None else 0
    out = []
    for e in exs:
        ids = encode_prompt(tokenizer, mining_prompt(e.question))
        fit, dropped = fit_prompt(ids, limit, head)
        if dropped:
            print(f"sert: warning: {getattr(e, 'source', None) or where} (id {e.id}): prompt of {len(ids)} tokens "
                  f"exceeds the context ({ctx}) minus max_new_tokens ({max_new_tokens}); "
                  f"kept its last {len(fit) - head} tokens", file=sys.stderr)
        out.append(fit)
    return out


# ---------------------------------------------------------- answer span / delta
_ANSWER_IS = re.compile(r"the answer is\s*:?\s*", re.IGNORECASE)
_YESNO_WORD = re.compile(r"\b(yes|no|true|false|correct|incorrect)\b", re.IGNORECASE)
_NUM = re.compile(r"-?\$?\s?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def answer_char_span(text: str, kind: str, choices: Sequence[str] | None = None) -> tuple[int, int] | None:
    """Character span of the answer the path states (the tokens Δ is averaged over), or None.

    The answer itself comes from the shared extractor (:func:`sert.answers.extract_answer`);
    this only locates it: after ``the answer is`` up to the end of that sentence, else the
    first yes/no word, option, or the last number that normalises to the extracted answer.
    """
    span = _answer_span(text, kind, choices)
    if span is None:
        return None
    a, b = span
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return (a, b) if b > a else None


def _answer_span(text: str, kind: str, choices: Sequence[str] | None) -> tuple[int, int] | None:
    ext = extract_answer(text, kind, choices)
    if ext.answer is None:
        return None
    body = truncate_continuation(text)
    m = _ANSWER_IS.search(body)
    if ext.method == "strict" and m:
        stop = re.search(r"\n" if kind == "number" else r"[.\n]", body[m.end():])
        end = m.end() + stop.start() if stop else len(body)
        return _locate(body, m.end(), end, kind, ext.answer, choices, last=False) or (m.end(), end)
    return _locate(body, 0, len(body), kind, ext.answer, choices, last=True)


def _locate(body, a, b, kind, ans, choices, last) -> tuple[int, int] | None:
    """Span of ``ans`` inside ``body[a:b]``: yes/no word, number (last or first), option, or first sentence."""
    seg = body[a:b]
    if kind == "yesno":
        for w in _YESNO_WORD.finditer(seg):
            if normalize_answer(w.group(1), "yesno") == ans:
                return a + w.start(1), a + w.end(1)
        return None
    if kind == "number":
        nums = list(_NUM.finditer(seg))
        for n in (reversed(nums) if last else nums):
            if normalize_number(n.group(0)) == ans:
                return a + n.start(), a + n.end()
        return None
    if kind == "choice":
        m2 = re.search(rf"\(\s*{ans}\s*\)|\b{ans}\s*[).:,]|\b{ans}\b", seg)
        if m2:
            return a + m2.start(), a + m2.end()
        i = ord(ans) - ord("A")
        if choices and i < len(choices):
            j = seg.lower().find(choices[i].lower())
            if j >= 0:
                return a + j, a + j + len(choices[i])
        return None
    s = seg.lstrip()  # text: the first sentence
    start = a + len(seg) - len(s)
    stop = re.search(r"[.\n]", s)
    return start, start + (stop.start() if stop else len(s))


def _token_at_char(tokenizer, ids: list[int], pos: int) -> int:
    """Index of the token whose decoded text covers character ``pos`` (binary search on prefixes)."""
    lo, hi = 0, len(ids) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.decode(ids[: mid + 1], skip_special_tokens=True)) > pos:
            hi = mid
        else:
            lo = mid + 1
    return lo


def path_delta(tokenizer, ids: list[int], text: str, margins: list[float], kind: str,
               choices: Sequence[str] | None = None) -> float | None:
    """CoT-decoding confidence Δ (Wang & Zhou 2024, eq. 1) of one path, or None without an answer."""
    if not ids:
        return None
    span = answer_char_span(text, kind, choices)
    if span is None:
        return None
    a = _token_at_char(tokenizer, ids, span[0])
    b = _token_at_char(tokenizer, ids, max(span[0], span[1] - 1))
    sel = margins[a: b + 1]
    return round(sum(sel) / len(sel), 6) if sel else None


# ------------------------------------------------------------------ the decoder
def _decode_chunk(model, tokenizer, exs, enc: list[list[int]], cfg: MineConfig, eos: list[int],
                  fwd: tuple[str, dict]) -> dict[str, list[dict]]:
    """Mine all paths of a few questions (prompt ids ``enc``) in one batch; returns id -> its records."""
    import torch

    device = next(model.parameters()).device
    greedy = cfg.mode == "cot-decoding"
    K = cfg.top_k_branches
    N = 1 if greedy else cfg.samples_per_branch
    m = K * N
    B = len(exs)
    T = cfg.max_new_tokens

    L = max(len(x) for x in enc)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    ids = torch.full((B, L), pad, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    for i, x in enumerate(enc):
        ids[i, L - len(x):] = torch.tensor(x, dtype=torch.long)
        mask[i, L - len(x):] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp_(min=0)
    cache_kw, prefill_kw = fwd
    cache = _new_cache(model)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **prefill_kw,
                **{cache_kw: cache})
    logits0 = out.logits[:, -1, :].float()
    lse0 = torch.logsumexp(logits0, dim=-1, keepdim=True)
    eos_t = torch.tensor(eos, device=device)
    p12 = torch.exp(torch.topk(logits0, 2).values - lse0)
    margin0 = (p12[:, 0] - p12[:, 1])                               # Δ's margin at the first step
    if cfg.skip_eos_branch:                                         # branch on the top-k non-EOS tokens
        logits0.index_fill_(-1, eos_t, float("-inf"))
    top_v, branch = torch.topk(logits0, K, dim=-1)                 # [B, K] ranked first tokens
    branch_lp = top_v - lse0                                        # model log-prob of each branch
    del out, logits0

    R = B * m
    cache.batch_repeat_interleave(m)
    mask = mask.repeat_interleave(m, dim=0)
    next_pos = pos[:, -1].repeat_interleave(m) + 1                  # position of the token fed next
    cur = branch.repeat_interleave(N, dim=1).reshape(R)             # row r: question r//m, branch (r%m)//N

    toks = torch.zeros((R, T), dtype=torch.long, device=device)
    lps = torch.zeros((R, T), dtype=torch.float32, device=device)
    margins = torch.zeros((R, T), dtype=torch.float32, device=device)
    toks[:, 0] = cur
    lps[:, 0] = branch_lp.repeat_interleave(N, dim=1).reshape(R)
    margins[:, 0] = margin0.repeat_interleave(m)
    length = torch.full((R,), T, dtype=torch.long, device=device)  # tokens kept per row
    finish_eos = torch.zeros(R, dtype=torch.bool, device=device)

    gens = []
    if not greedy:
        for e in exs:
            g = torch.Generator(device=device)
            g.manual_seed(question_seed(cfg.seed, e.id))
            gens.append(g)

    rows = torch.arange(R, device=device)                           # original row of each batch row
    rows_h = torch.arange(R)                                        # the same, on the host
    done = torch.isin(cur, eos_t)                                   # branch token is EOS: empty path
    length[done] = 0
    finish_eos |= done
    for t in range(1, T):
        done_h = done.cpu()                                         # the one host sync per step
        n_done = int(done_h.sum())
        if n_done == len(done_h):
            break
        if n_done and n_done >= _COMPACT_SHARE * len(done_h):
            keep = (~done).nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            rows, cur, mask, next_pos = rows[keep], cur[keep], mask[keep], next_pos[keep]
            rows_h = rows_h[~done_h]
            done, done_h = done[keep], done_h[~done_h]
        mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=device)], dim=1)
        out = model(input_ids=cur.unsqueeze(-1), attention_mask=mask, position_ids=next_pos.unsqueeze(-1),
                    use_cache=True, **{cache_kw: cache})
        logits = out.logits[:, -1, :].float()
        del out
        lse = torch.logsumexp(logits, dim=-1)
        if greedy:
            top2v, top2i = torch.topk(logits, 2, dim=-1)
            nxt = top2i[:, 0]
        else:
            # Every live question draws k*n uniforms per step, whichever of its rows are live.
            u_all = torch.zeros((B, m), device=device)
            for b in sorted(set((rows_h[~done_h] // m).tolist())):
                u_all[b] = torch.rand(m, generator=gens[b], device=device)
            u = u_all.view(-1)[rows]
            vals, idx = torch.topk(logits, max(cfg.top_k, 2), dim=-1)
            k = min(cfg.top_k, vals.shape[-1])
            nxt = _draw(idx[:, :k], _truncate(vals[:, :k], cfg.top_p, cfg.temperature), u)
            top2v = vals[:, :2]
        lp = logits.gather(-1, nxt.unsqueeze(-1)).squeeze(-1) - lse
        mg = torch.exp(top2v[:, 0] - lse) - torch.exp(top2v[:, 1] - lse)
        live = ~done
        hit = live & torch.isin(nxt, eos_t)
        write = live & ~hit
        r_w = rows[write]
        toks[r_w, t] = nxt[write]
        lps[r_w, t] = lp[write]
        margins[r_w, t] = mg[write]
        r_h = rows[hit]
        length[r_h] = t
        finish_eos[r_h] = True
        done = done | hit
        cur = torch.where(done, torch.full_like(nxt, pad), nxt)
        next_pos = next_pos + 1
    del cache

    toks_l, lps_l, mg_l = toks.cpu().tolist(), lps.cpu().tolist(), margins.cpu().tolist()
    len_l, eos_l = length.cpu().tolist(), finish_eos.cpu().tolist()
    bid_l, bprob_l = branch.cpu().tolist(), branch_lp.exp().cpu().tolist()
    key = settings_key(cfg)
    result: dict[str, list[dict]] = {}
    for b, e in enumerate(exs):
        recs = []
        for j in range(m):
            r = b * m + j
            n = len_l[r]
            tid = toks_l[r][:n]
            text = tokenizer.decode(tid, skip_special_tokens=True)
            rank, sample = divmod(j, N)
            recs.append({
                "id": e.id, "question": e.question, "answer": e.answer, "kind": e.kind, "choices": e.choices,
                "mode": cfg.mode, "seed": cfg.seed, "settings": key, "path": j,
                "branch_rank": rank, "branch_token": tokenizer.decode([bid_l[b][rank]]),
                "branch_token_id": bid_l[b][rank], "branch_prob": float(f"{bprob_l[b][rank]:.6g}"), "sample": sample,
                "text": text, "token_ids": tid, "n_tokens": n, "logprobs": [round(x, 5) for x in lps_l[r][:n]],
                "finish": "eos" if eos_l[r] else "length",
                "delta": path_delta(tokenizer, tid, text, mg_l[r][:n], e.kind, e.choices),
            })
        result[e.id] = recs
    return result


# ------------------------------------------------------------------ library API
def _existing(out_path: Path, cfg: MineConfig, per_q: int) -> dict[str, list[dict]]:
    """Complete questions already in ``out_path``; incomplete ones (a kill mid-write) are removed."""
    if not out_path.exists():
        return {}
    recs = read_jsonl(out_path, tolerate_torn_tail=True)
    key = settings_key(cfg)
    groups: dict[str, list[dict]] = {}
    for r in recs:
        if r.get("settings") != key:
            raise SertError(f"{out_path}: holds paths mined with other settings ({r.get('settings')!r}, "
                            f"now {key!r}); use another --out or the same settings")
        groups.setdefault(str(r.get("id")), []).append(r)
    complete = {q: g for q, g in groups.items()
                if len(g) == per_q and {r.get("path") for r in g} == set(range(per_q))}
    if len(complete) != len(groups):
        # Keep the file an exact concatenation of complete questions.
        atomic_write_jsonl(out_path, [r for r in recs if str(r.get("id")) in complete])
    return complete


def _mine(model, tokenizer, examples, cfg: MineConfig, out_path, progress: bool = True, where: str = "question"):
    errs = cfg.validate()
    if errs:
        raise SertError("; ".join(errs))
    ids = [e.id for e in examples]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise SertError(f"duplicate question id {dup!r} in the examples to mine")
    out_path = Path(out_path)
    per_q = paths_per_question(cfg)
    have = _existing(out_path, cfg, per_q)
    eos = _eos_ids(model, tokenizer)
    if not eos:
        raise SertError("the tokenizer has no EOS token; cannot tell where a path ends")
    from . import vllm_backend  # optional vLLM engine (sert/vllm_backend.py); else our decoder
    decode = vllm_backend.decode_chunk if vllm_backend.is_vllm(model) else _decode_chunk
    fwd = None if vllm_backend.is_vllm(model) else _forward_kw(model)
    ctx = model_context(model, tokenizer, cfg)
    stats = {"questions": 0, "paths": 0, "tokens": 0, "seconds": 0.0}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(examples), initial=sum(1 for e in examples if e.id in have),
                   desc="mine", unit="q", file=sys.stderr, dynamic_ncols=True)
    import torch

    t0 = time.perf_counter()
    was_training = model.training
    model.eval()  # dropout off: paths come from the model's own distribution
    with JsonlLog(out_path) as log, torch.inference_mode():
        B = _batch_questions(cfg, model, tokenizer, examples)
        for c in range(0, len(examples), B):
            todo = [e for e in examples[c:c + B] if e.id not in have]
            if not todo:
                continue
            enc = prompt_ids(tokenizer, todo, ctx, cfg.max_new_tokens, where)
            res = decode(model, tokenizer, todo, enc, cfg, eos, fwd)
            log.append_many([r for e in todo for r in res[e.id]])   # whole questions, one append
            for e in todo:
                have[e.id] = res[e.id]
                stats["tokens"] += sum(r["n_tokens"] for r in res[e.id])
            stats["questions"] += len(todo)
            stats["paths"] += len(todo) * per_q
            if bar:
                bar.update(len(todo))
    stats["seconds"] = time.perf_counter() - t0
    model.train(was_training)
    if bar:
        bar.close()
    return [r for e in examples for r in have[e.id]], stats


def _batch_questions(cfg: MineConfig, model, tokenizer, examples) -> int:
    """``batch_questions``, or for ``auto``: 8 on a CPU (or vLLM); on a GPU as many questions as half
    its free memory holds (KV cache of the longest prompt + max_new_tokens, logits), at most 256."""
    if cfg.batch_questions != "auto":
        return int(cfg.batch_questions)
    import torch

    dev = getattr(model, "device", None)
    if dev is None or getattr(dev, "type", "cpu") != "cuda":
        return 8
    from .models import fit_rows

    longest = max(len(tokenizer(mining_prompt(e.question))["input_ids"]) for e in examples)
    free, _ = torch.cuda.mem_get_info(dev)
    rows = fit_rows(model.config, longest + cfg.max_new_tokens, model.dtype.itemsize, free)
    B = max(1, min(256, rows // paths_per_question(cfg)))
    print(f"[sert] mine: batch_questions auto -> {B} ({free / 2**30:.1f} GiB free on {dev})", file=sys.stderr)
    return B


def mine(model, tokenizer, examples, cfg: MineConfig, out_path, progress: bool = True) -> list[dict]:
    """Mine ``k x n`` paths per example (``k`` in cot-decoding mode), appending to ``out_path``.

    Questions already complete in ``out_path`` are skipped (resume); all paths of a
    question are written in one append. Returns every record of ``examples``, in order.
    """
    return _mine(model, tokenizer, examples, cfg, out_path, progress)[0]


def run_mine(model_name: str, task: str, cfg: MineConfig, out_dir, device: str | None = None,
             dtype: str | None = None, progress: bool = True) -> Path:
    """``sert mine``: load task and model, mine into ``out_dir/paths.jsonl``, write ``mine_meta.json``."""
    from . import __version__
    from .models import resolve_model
    from .tasks import load_examples

    errs = cfg.validate()
    if errs:
        raise SertError("; ".join(errs))
    examples = load_examples(task, cfg.split, cfg.limit)
    out = Path(out_dir)  # RunLock creates it (and removes it again if this fails before any output)
    settings = dataclasses.asdict(cfg)
    with RunLock(out):
        meta_path = out / META_FILE
        paths = out / PATHS_FILE
        old: dict = {}
        if meta_path.exists() and paths.exists():
            old = read_json(meta_path)
            was = {**dataclasses.asdict(MineConfig()), **old.get("settings", {})}  # keys added since: defaults
            diff = [k for k in _RESUME_KEYS if was[k] != settings[k]]
            diff += [k for k in ("model", "task") if old.get(k) != (model_name if k == "model" else task)]
            if diff:
                raise SertError(f"{out} holds a mining run with other settings ({', '.join(diff)} differ); "
                                "use another --out or the same settings")
        history = list(old.get("history", []))
        meta = {"stage": "mine", "status": "running", "model": model_name, "task": task, "settings": settings,
                "sert_version": __version__, "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "history": history}
        t0 = time.perf_counter()
        from .vllm_backend import load as load_generator  # = load_model unless vLLM serves (CUDA)
        model, tok, place = load_generator(model_name, device, dtype)
        load_s = time.perf_counter() - t0
        model_context(model, tok, cfg)  # a max_new_tokens that fills the context is refused here
        atomic_write_json(meta_path, meta)  # once the model has loaded: a bad --model leaves nothing
        recs, st = _mine(model, tok, examples, cfg, paths, progress, where=f"task {task}, split {cfg.split}")
        import torch

        n_eos = sum(r["finish"] == "eos" for r in recs)
        this = {"questions_mined": st["questions"], "paths": st["paths"], "tokens_sampled": st["tokens"],
                "model_load_s": round(load_s, 2), "wall_s": round(st["seconds"], 2),
                "sampled_tokens_per_s": round(st["tokens"] / st["seconds"], 1) if st["tokens"] else None,
                "questions_skipped_resume": len(examples) - st["questions"], "device": place.device,
                "dtype": place.dtype, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if st["questions"]:
            history.append(this)
        tok_all = sum(h["tokens_sampled"] for h in history)
        wall_all = sum(h["wall_s"] for h in history)
        meta.update({
            "status": "done", "model_path": resolve_model(model_name), "device": place.device, "dtype": place.dtype,
            "dtype_reason": place.reason,
            "torch": torch.__version__, "questions": len(examples), "paths": len(recs),
            "paths_per_question": paths_per_question(cfg), "finished_eos": n_eos, "finished_length": len(recs) - n_eos,
            "mean_tokens": round(sum(r["n_tokens"] for r in recs) / max(1, len(recs)), 2),
            # throughput over every invocation that mined something (a resume adds one)
            "tokens_sampled": tok_all, "wall_s": round(wall_all, 2),
            "sampled_tokens_per_s": round(tok_all / wall_all, 1) if wall_all else None,
            "this_run": this, "finished": this["finished"],
        })
        atomic_write_json(meta_path, meta)
    return paths


# ------------------------------------------------------------------ CLI
def add_parser(sub) -> None:
    from .cli import add_config_flags, add_model_args

    p = sub.add_parser("mine", help="stage 1: mine latent reasoning paths (first-token branching + sampling)",
                       description="Mine k x n zero-shot paths per training question (SERT §II-A). "
                                   "Rerun the same command to resume an interrupted run.")
    add_model_args(p)
    p.add_argument("--task", required=True, help="task name (e.g. strategyqa) or a .jsonl/.csv data file")
    p.add_argument("--out", required=True, help="run directory (gets paths.jsonl and mine_meta.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(p, MineConfig)
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    from .cli import config_from_args

    cfg = config_from_args(MineConfig, args, section="mine")
    paths = run_mine(args.model, args.task, cfg, args.out, device=args.device, dtype=args.dtype,
                     progress=not args.quiet)
    meta = read_json(Path(args.out) / META_FILE)
    tr = meta["this_run"]
    print(f"mined {meta['questions']} questions x {meta['paths_per_question']} paths -> {paths}")
    if tr["questions_mined"]:
        print(f"this run: {tr['questions_mined']} questions, {tr['tokens_sampled']} tokens in {tr['wall_s']} s "
              f"({tr['sampled_tokens_per_s']} sampled tokens/s); {tr['questions_skipped_resume']} already done")
    else:
        print(f"nothing to do: all {tr['questions_skipped_resume']} questions already done")
    return 0
