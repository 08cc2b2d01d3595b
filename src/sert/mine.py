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
append (all or none: a write that fails, e.g. on a full disk, is cut back off the file).
After a kill or a failed write, the rerun decodes every chunk that lacks a question whole,
with the same composition, even when part of it had reached the file (a kill inside a
large write), and keeps the questions that were missing: the resumed file equals an
uninterrupted run's, byte for byte, on the same hardware (device, dtype, thread count).
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

import contextlib
import dataclasses
import sys
import time
from pathlib import Path

from .config import MineConfig, check
from .decode import forward_kw, left_padded, new_cache
from .errors import SertError
from .identity import refuse_other
from .io import JsonlLog, RunLock, atomic_write_json, atomic_write_jsonl, read_json, read_jsonl
from .log import get as _get_logger
from .models import fit_rows, resolve_model
from .sampling import (draw, path_record, paths_per_question, question_seed, samples_per_branch, settings_key,
                       truncated_probs)
from .tasks import load_examples
from .templates import mining_prompt
from .tokens import context_length, encode_prompt, eos_token_ids, fit_prompt, n_special_prefix
from .version import __version__
from .vllm_backend import load as load_generator  # = load_model unless vLLM serves (CUDA); vllm loads there

# torch and tqdm are imported inside the functions that decode: `sert --help` and the stages that do
# not mine import this module, and must not wait seconds for them.
log = _get_logger(__name__)

PATHS_FILE = "paths.jsonl"
META_FILE = "mine_meta.json"
# Settings that must match for a rerun to resume the same paths file.
_RESUME_KEYS = ("mode", "split", "top_k_branches", "samples_per_branch", "top_k", "top_p",
                "temperature", "max_new_tokens", "seed", "skip_eos_branch", "prompt")
# Compact the batch (drop finished rows from it and from the KV cache) once this share of
# its rows is finished: a compaction copies the cache once, about one step's attention cost.
_COMPACT_SHARE = 0.125


# ------------------------------------------------------------------ helpers
def model_context(model, tokenizer, cfg: MineConfig) -> int | None:
    """The model's context length (None: unknown); refuses a ``max_new_tokens`` that leaves no room for a prompt."""
    ctx = context_length(model)
    room = None if ctx is None else ctx - cfg.max_new_tokens - n_special_prefix(tokenizer)
    if room is not None and room < 1:
        raise SertError(f"mine.max_new_tokens (--max-new-tokens) {cfg.max_new_tokens}: leaves no room for a prompt "
                        f"in the model's context of {ctx} tokens; expected at most {cfg.max_new_tokens + room - 1}")
    return ctx


def check_vocabulary(model, tokenizer, cfg: MineConfig) -> None:
    """Refuse ``top_k_branches`` / ``top_k`` larger than the model's vocabulary (the first-token
    branches exclude EOS with ``skip_eos_branch``): they name more distinct tokens than there are."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None) or len(tokenizer)
    n_eos = len(eos_token_ids(model, tokenizer)) if cfg.skip_eos_branch else 0
    if cfg.top_k_branches > vocab - n_eos:
        raise SertError(f"mine.top_k_branches (--top-k-branches) {cfg.top_k_branches}: the model has only "
                        f"{vocab - n_eos} tokens to branch on; expected at most {vocab - n_eos}")
    if cfg.mode != "cot-decoding" and cfg.top_k > vocab:
        raise SertError(f"mine.top_k (--top-k) {cfg.top_k}: the model's vocabulary has only {vocab} tokens; "
                        f"expected at most {vocab}")


def prompt_ids(tokenizer, exs, ctx: int | None, max_new_tokens: int, where: str = "question",
               style: str = "zero-shot") -> list[list[int]]:
    """Each question's mining-prompt ids (:func:`sert.tokens.encode_prompt`), fitted to ``ctx - max_new_tokens``.

    A longer prompt keeps its leading special tokens (BOS) and its last tokens (the question's
    end and ``Answer:``), with one warning per question naming its file:line (``Example.source``)
    or else ``where`` (the task and split), and its id.
    """
    limit = None if ctx is None else ctx - max_new_tokens
    head = n_special_prefix(tokenizer) if limit is not None else 0
    out = []
    for e in exs:
        ids = encode_prompt(tokenizer, mining_prompt(e.question, style))
        fit, dropped = fit_prompt(ids, limit, head)
        if dropped:
            log.warning(f"{getattr(e, 'source', None) or where} (id {e.id}): prompt of {len(ids)} tokens "
                        f"exceeds the context ({ctx}) minus max_new_tokens ({max_new_tokens}); "
                        f"kept its last {len(fit) - head} tokens")
        out.append(fit)
    return out


# ------------------------------------------------------------------ the decoder
def _prefill(model, enc: list[list[int]], pad: int, eos_t, cfg: MineConfig):
    """Run the prompts ``enc`` once, left-padded: the KV cache, mask and positions, the ranked
    first tokens (the branches, [B, k]), their log-probs and the first step's top-1 - top-2 margin."""
    import torch

    ids, mask, pos, _ = left_padded(enc, pad, eos_t.device)  # the mask is passed even when nothing is padded
    cache_kw, prefill_kw = forward_kw(model)
    cache = new_cache(model)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **prefill_kw,
                **{cache_kw: cache})
    logits0 = out.logits[:, -1, :].float()
    del out
    lse0 = torch.logsumexp(logits0, dim=-1, keepdim=True)
    p12 = torch.exp(torch.topk(logits0, 2).values - lse0)
    margin0 = (p12[:, 0] - p12[:, 1])                               # Δ's margin at the first step
    if cfg.skip_eos_branch:                                         # branch on the top-k non-EOS tokens
        logits0.index_fill_(-1, eos_t, float("-inf"))
    top_v, branch = torch.topk(logits0, cfg.top_k_branches, dim=-1)  # [B, K] ranked first tokens
    return cache, mask, pos, branch, top_v - lse0, margin0          # branch log-probs under the model


def _uniforms(gens, rows, live_questions, shape: tuple[int, int], device):
    """Every live question draws k*n uniforms per step from its own generator, whichever of its
    rows are live; returns those of the batch's ``rows``."""
    import torch

    u_all = torch.zeros(shape, device=device)
    for b in sorted(set(live_questions.tolist())):
        u_all[b] = torch.rand(shape[1], generator=gens[b], device=device)
    return u_all.view(-1)[rows]


def _next_tokens(logits, cfg: MineConfig, u):
    """One decoding step's token per row (greedy when ``u`` is None, else drawn with the uniforms
    ``u`` by the paper's sampler) and the top-2 logits (for the margin)."""
    import torch

    if u is None:
        top2v, top2i = torch.topk(logits, 2, dim=-1)
        return top2i[:, 0], top2v
    vals, idx = torch.topk(logits, max(cfg.top_k, 2), dim=-1)
    k = min(cfg.top_k, vals.shape[-1])
    return draw(idx[:, :k], truncated_probs(vals[:, :k], cfg.top_p, cfg.temperature), u), vals[:, :2]


def _records(tokenizer, exs, cfg: MineConfig, branch, branch_lp, toks, lps, margins, length, finish_eos
             ) -> dict[str, list[dict]]:
    """The decoded rows as path records (:func:`sert.sampling.path_record`), id -> the question's, in path order."""
    m, N = paths_per_question(cfg), samples_per_branch(cfg)
    toks_l, lps_l, mg_l = toks.cpu().tolist(), lps.cpu().tolist(), margins.cpu().tolist()
    len_l, eos_l = length.cpu().tolist(), finish_eos.cpu().tolist()
    bid_l, bprob_l = branch.cpu().tolist(), branch_lp.exp().cpu().tolist()
    key = settings_key(cfg)
    result: dict[str, list[dict]] = {}
    for b, e in enumerate(exs):
        recs = []
        for j in range(m):
            r, n, rank = b * m + j, len_l[b * m + j], j // N
            recs.append(path_record(tokenizer, e, cfg, key, j, bid_l[b][rank], bprob_l[b][rank], toks_l[r][:n],
                                    lps_l[r][:n], mg_l[r][:n], eos_l[r]))
        result[e.id] = recs
    return result


@dataclasses.dataclass
class _Paths:
    """The decoded rows of a chunk: per row its tokens, their log-probs and margins, how many tokens
    it keeps and whether it ended on EOS."""
    toks: object
    lps: object
    margins: object
    length: object
    finish_eos: object

    @classmethod
    def start(cls, first, first_lp, first_margin, T: int, device) -> "_Paths":
        """Buffers of ``T`` tokens per row, the branch token (its log-prob and margin) at step 0."""
        import torch

        R = len(first)
        p = cls(torch.zeros((R, T), dtype=torch.long, device=device),
                torch.zeros((R, T), dtype=torch.float32, device=device),
                torch.zeros((R, T), dtype=torch.float32, device=device),
                torch.full((R,), T, dtype=torch.long, device=device),   # tokens kept per row
                torch.zeros(R, dtype=torch.bool, device=device))
        p.toks[:, 0] = first
        p.lps[:, 0] = first_lp
        p.margins[:, 0] = first_margin
        return p

    def keep(self, t: int, rows, done, nxt, lp, mg, eos_t):
        """Step ``t``'s token of every live row (batch row -> original row ``rows``); a row that drew
        EOS ends with ``t`` tokens. Returns the rows done after this step."""
        import torch

        live = ~done
        hit = live & torch.isin(nxt, eos_t)
        write = live & ~hit
        r_w = rows[write]
        self.toks[r_w, t] = nxt[write]
        self.lps[r_w, t] = lp[write]
        self.margins[r_w, t] = mg[write]
        r_h = rows[hit]
        self.length[r_h] = t
        self.finish_eos[r_h] = True
        return done | hit


def _question_generators(exs, cfg: MineConfig, device) -> list:
    """One generator per question, seeded from the run's seed and the question's id."""
    import torch

    gens = []
    for e in exs:
        g = torch.Generator(device=device)
        g.manual_seed(question_seed(cfg.seed, e.id))
        gens.append(g)
    return gens


def _forward_step(model, cur, mask, next_pos, cache_kw: str, cache):
    """One token per batch row through the model (the cache grows in place): the next token's logits, float."""
    out = model(input_ids=cur.unsqueeze(-1), attention_mask=mask, position_ids=next_pos.unsqueeze(-1),
                use_cache=True, **{cache_kw: cache})
    return out.logits[:, -1, :].float()


def _pick(logits, cfg: MineConfig, u):
    """The next token of each row (:func:`_next_tokens`), its log-prob and the top-2 probability margin."""
    import torch

    lse = torch.logsumexp(logits, dim=-1)
    nxt, top2v = _next_tokens(logits, cfg, u)
    lp = logits.gather(-1, nxt.unsqueeze(-1)).squeeze(-1) - lse
    mg = torch.exp(top2v[:, 0] - lse) - torch.exp(top2v[:, 1] - lse)
    return nxt, lp, mg


def _decode_chunk(model, tokenizer, exs, enc: list[list[int]], cfg: MineConfig, eos: list[int]
                  ) -> dict[str, list[dict]]:
    """Mine all paths of a few questions (prompt ids ``enc``) in one batch: one prefill, then one
    step per token for the k x n rows of every question; returns id -> its records."""
    import torch

    device = next(model.parameters()).device
    greedy = cfg.mode == "cot-decoding"
    N, m, B, T = samples_per_branch(cfg), paths_per_question(cfg), len(exs), cfg.max_new_tokens
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    eos_t = torch.tensor(eos, device=device)
    cache, mask, pos, branch, branch_lp, margin0 = _prefill(model, enc, pad, eos_t, cfg)
    cache_kw = forward_kw(model)[0]

    R = B * m
    cache.batch_repeat_interleave(m)
    mask = mask.repeat_interleave(m, dim=0)
    next_pos = pos[:, -1].repeat_interleave(m) + 1                  # position of the token fed next
    cur = branch.repeat_interleave(N, dim=1).reshape(R)             # row r: question r//m, branch (r%m)//N
    paths = _Paths.start(cur, branch_lp.repeat_interleave(N, dim=1).reshape(R), margin0.repeat_interleave(m), T,
                         device)
    gens = [] if greedy else _question_generators(exs, cfg, device)

    rows = torch.arange(R, device=device)                           # original row of each batch row
    rows_h = torch.arange(R)                                        # the same, on the host
    done = torch.isin(cur, eos_t)                                   # branch token is EOS: empty path
    paths.length[done] = 0
    paths.finish_eos |= done
    for t in range(1, T):
        done_h = done.cpu()                                         # the one host sync per step
        n_done = int(done_h.sum())
        if n_done == len(done_h):
            break
        if n_done and n_done >= _COMPACT_SHARE * len(done_h):       # drop the finished rows from the batch
            keep = (~done).nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            rows, cur, mask, next_pos = rows[keep], cur[keep], mask[keep], next_pos[keep]
            rows_h = rows_h[~done_h]
            done, done_h = done[keep], done_h[~done_h]
        mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=device)], dim=1)
        logits = _forward_step(model, cur, mask, next_pos, cache_kw, cache)
        u = None if greedy else _uniforms(gens, rows, rows_h[~done_h] // m, (B, m), device)
        nxt, lp, mg = _pick(logits, cfg, u)
        done = paths.keep(t, rows, done, nxt, lp, mg, eos_t)
        cur = torch.where(done, torch.full_like(nxt, pad), nxt)
        next_pos = next_pos + 1
    del cache
    return _records(tokenizer, exs, cfg, branch, branch_lp, paths.toks, paths.lps, paths.margins, paths.length,
                    paths.finish_eos)


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


def _decoder(model):
    """How ``model`` mines a chunk: ``decode(tokenizer, exs, prompt_ids, cfg, eos) -> id -> records``.
    A generator object that mines itself (``mine_chunk``: :class:`sert.vllm_backend.VllmLM`) does;
    a transformers model goes through our decoder, in eval mode (dropout off: paths come from the
    model's own distribution)."""
    own = getattr(model, "mine_chunk", None)
    if own is not None:
        return own
    return lambda *a: _decode_chunk(model, *a)


def _mine(model, tokenizer, examples, cfg: MineConfig, out_path, progress: bool = True, where: str = "question"):
    ids = [e.id for e in examples]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise SertError(f"duplicate question id {dup!r} in the examples to mine")
    out_path = Path(out_path)
    per_q = paths_per_question(cfg)
    have = _existing(out_path, cfg, per_q)
    eos = eos_token_ids(model, tokenizer)
    if not eos:
        raise SertError("the tokenizer has no EOS token; cannot tell where a path ends")
    decode = _decoder(model)
    ctx = model_context(model, tokenizer, cfg)
    check_vocabulary(model, tokenizer, cfg)
    stats = {"questions": 0, "paths": 0, "tokens": 0, "seconds": 0.0}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(examples), initial=sum(1 for e in examples if e.id in have),
                   desc="mine", unit="q", file=sys.stderr, dynamic_ncols=True)
    import torch

    t0 = time.perf_counter()
    with JsonlLog(out_path) as log, _eval_mode(model), torch.inference_mode():
        B = questions_per_batch(cfg, model, tokenizer, examples)
        for c in range(0, len(examples), B):
            chunk = examples[c:c + B]
            todo = [e for e in chunk if e.id not in have]
            if not todo:
                continue
            # a chunk is decoded whole, as an uninterrupted run decodes it (its composition decides the
            # logits' last bits), even when part of it was written before a stop; only the rest is kept
            enc = prompt_ids(tokenizer, chunk, ctx, cfg.max_new_tokens, where, cfg.prompt)
            res = decode(tokenizer, chunk, enc, cfg, eos)
            log.append_many([r for e in todo for r in res[e.id]])   # whole questions, one append
            for e in todo:
                have[e.id] = res[e.id]
                stats["tokens"] += sum(r["n_tokens"] for r in res[e.id])
            stats["questions"] += len(todo)
            stats["paths"] += len(todo) * per_q
            if bar:
                bar.update(len(todo))
    stats["seconds"] = time.perf_counter() - t0
    if bar:
        bar.close()
    return [r for e in examples for r in have[e.id]], stats


@contextlib.contextmanager
def _eval_mode(model):
    """A torch module in eval mode (dropout off) for the block, its mode restored after; others as they are."""
    was = getattr(model, "training", None)
    if was is not None:
        model.eval()
    try:
        yield
    finally:
        if was is not None:
            model.train(was)


def questions_per_batch(cfg: MineConfig, model, tokenizer, examples) -> int:
    """``batch_questions``, or for ``auto``: 8 on a CPU (or vLLM); on a GPU as many questions as half
    its free memory holds (KV cache of the longest prompt + max_new_tokens, logits), at most 256."""
    if cfg.batch_questions != "auto":
        return int(cfg.batch_questions)
    import torch

    dev = getattr(model, "device", None)
    if dev is None or getattr(dev, "type", "cpu") != "cuda":
        return 8
    longest = max(len(tokenizer(mining_prompt(e.question, cfg.prompt))["input_ids"]) for e in examples)
    free, _ = torch.cuda.mem_get_info(dev)
    rows = fit_rows(model.config, longest + cfg.max_new_tokens, model.dtype.itemsize, free)
    B = max(1, min(256, rows // paths_per_question(cfg)))
    log.info(f"mine: batch_questions auto -> {B} ({free / 2**30:.1f} GiB free on {dev})")
    return B


def mine(model, tokenizer, examples, cfg: MineConfig, out_path, progress: bool = True) -> list[dict]:
    """Mine ``k x n`` paths per example (``k`` in cot-decoding mode), appending to ``out_path``.

    Questions already complete in ``out_path`` are skipped (resume); all paths of a
    question are written in one append. Returns every record of ``examples``, in order.
    """
    check(cfg)
    return _mine(model, tokenizer, examples, cfg, out_path, progress)[0]


def run_mine(model_name: str, task: str, cfg: MineConfig, out_dir, device: str | None = None,
             dtype: str | None = None, progress: bool = True) -> Path:
    """``sert mine``: load task and model, mine into ``out_dir/paths.jsonl``, write ``mine_meta.json``."""
    check(cfg)
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
            refuse_other(out, "holds a mining run with other settings",
                         {**was, "model": old.get("model"), "task": old.get("task")},
                         {**settings, "model": model_name, "task": task}, "use another --out or the same settings",
                         keys=[*_RESUME_KEYS, "model", "task"])
        history = list(old.get("history", []))
        meta = {"stage": "mine", "status": "running", "model": model_name, "task": task, "settings": settings,
                "sert_version": __version__, "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "history": history}
        t0 = time.perf_counter()
        model, tok, place = load_generator(model_name, device, dtype)
        load_s = time.perf_counter() - t0
        model_context(model, tok, cfg)  # a max_new_tokens that fills the context is refused here
        check_vocabulary(model, tok, cfg)  # so is a top_k beyond the vocabulary
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
