"""Optional vLLM backend for mining and evaluation (``pip install 'sert[vllm]'``, CUDA only).

Where ``import vllm`` succeeds and the device is CUDA, ``sert mine`` and ``sert eval`` (and
the stages of ``sert run`` that call them) generate with vLLM instead of transformers;
everything else (training, filters, the records written) is unchanged. Choose with the
environment variable ``SERT_BACKEND``: ``auto`` (default: vLLM where importable and CUDA is
used, else transformers), ``hf`` (always transformers), ``vllm`` (fail when vLLM is missing).

What it does (the same records as the transformers path, so filters and reports read them):
- mining, ``mode=sert``: one request per question with ``max_tokens=1`` and ``logprobs=k``
  gives the top-k first tokens (the branches); then one request per (question, branch),
  prompt + branch token, ``n`` samples with the same top-k / top-p / temperature, seeded
  per question (``sert.sampling.question_seed``) so a question's paths do not depend on which
  questions share a batch; ``enable_prefix_caching`` makes the k branch requests share the
  prompt's KV cache. ``mode=cot-decoding``: the branches continued greedily.
  Log-probs are vLLM's ``raw_logprobs`` (the model's own distribution, temperature 1, no
  truncation: the quantity the perplexity filter needs); ``logprobs=2`` gives the top-2
  margins for Δ.
- evaluation: greedy (``temperature=0``), the same stop strings, stop strings kept in the
  text as transformers' ``stop_strings`` keeps them.

Not the same random stream as sert's own sampler (paths differ draw by draw; the
distribution is the same: temperature, then top-k, then top-p). We have measured no
numbers for this backend: none are claimed. Models must be loadable by vLLM from a
directory or hub id (``random:`` benchmark models are not).
"""
from __future__ import annotations

import math
import os
from typing import Callable, Sequence

from .errors import SertError
from .models import RANDOM_PREFIX, load_model, load_tokenizer, pick_placement, resolve_model
from .sampling import path_record, question_seed, samples_per_branch, settings_key
from .templates import STOP_STRINGS
from .tokens import eos_token_ids

ENV = "SERT_BACKEND"
CHOICES = ("auto", "hf", "vllm")
_DEFAULT = object()  # generate_greedy: the evaluation's default stop strings


def vllm_available() -> bool:
    """True when ``import vllm`` succeeds (any failure, not only ImportError, means no)."""
    try:
        import vllm  # noqa: F401  (only whether it imports)
    except Exception:
        return False
    return True


def choose_backend(device: str | None = None, requested: str | None = None) -> str:
    """``"vllm"`` or ``"hf"`` for generation on ``device`` (``requested`` defaults to $SERT_BACKEND)."""
    req = (requested or os.environ.get(ENV) or "auto").strip().lower()
    if req not in CHOICES:
        raise SertError(f"{ENV}={req}: expected one of {', '.join(CHOICES)}")
    if req == "hf":
        return "hf"
    if req == "vllm":
        if not vllm_available():
            raise SertError(f"{ENV}=vllm but vLLM is not importable here; pip install 'sert[vllm]' "
                            f"(CUDA machines) or set {ENV}=hf")
        if device == "cpu":
            raise SertError(f"{ENV}=vllm needs CUDA; got --device cpu")
        return "vllm"
    if device == "cpu":
        return "hf"
    try:
        import torch
        cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        cuda = False
    return "vllm" if cuda and vllm_available() else "hf"


class VllmLM:
    """A loaded vLLM engine as a generator object: what mining and evaluation call on it
    (:meth:`mine_chunk`, :meth:`generate_greedy`) and what they read (``generation_config``,
    the context length through ``config``). It is no torch module and does not pretend to be one."""

    def __init__(self, llm, path: str, generation_config=None):
        self.llm, self.path, self.generation_config = llm, path, generation_config

    @property
    def config(self):
        """What :func:`sert.tokens.context_length` reads: the engine's ``max_model_len`` (None if unknown)."""
        from types import SimpleNamespace

        engine = getattr(self.llm, "llm_engine", None)
        return SimpleNamespace(max_position_embeddings=getattr(getattr(engine, "model_config", None),
                                                               "max_model_len", None))

    def mine_chunk(self, tokenizer, exs, prompts: list[list[int]], cfg, eos: list[int]) -> dict[str, list[dict]]:
        """vLLM twin of :func:`sert.mine._decode_chunk`: id -> the question's records, in path order."""
        return decode_chunk(self, tokenizer, exs, prompts, cfg, eos)

    def generate_greedy(self, tokenizer, prompts: Sequence[str], batch_size: int = 32, max_new_tokens: int = 128,
                        progress: bool = True, on_batch=None) -> list[dict]:
        """vLLM twin of :func:`sert.evaluate.generate_greedy` (see :func:`generate_greedy`)."""
        return generate_greedy(self, tokenizer, prompts, batch_size, max_new_tokens, progress, on_batch=on_batch)


def is_vllm(model) -> bool:
    return isinstance(model, VllmLM)


def load(model_name: str, device: str | None = None, dtype: str | None = None, seed: int = 0):
    """``(model, tokenizer, placement)``: a :class:`VllmLM` where :func:`choose_backend` says
    vllm, else exactly :func:`sert.models.load_model`'s result."""
    if model_name.startswith(RANDOM_PREFIX) or choose_backend(device) == "hf":
        return load_model(model_name, device, dtype)
    place = pick_placement(device, dtype)
    import vllm
    from transformers import GenerationConfig

    path = resolve_model(model_name)
    tok = load_tokenizer(model_name)
    llm = vllm.LLM(model=path, tokenizer=path, dtype=place.dtype, seed=seed, enable_prefix_caching=True)
    try:
        gen = GenerationConfig.from_pretrained(path)
    except Exception:
        gen = None
    return VllmLM(llm, path, gen), tok, place


def _lp(entry: dict, tid: int) -> float:
    x = entry.get(tid)
    return float(x.logprob if hasattr(x, "logprob") else x) if x is not None else float("-inf")


def _margin(entry: dict) -> float:
    """p(top-1) - p(top-2) at one step from a vLLM logprobs dict (ranked entries)."""
    ranked = sorted(((getattr(v, "rank", None) or 10**9, getattr(v, "logprob", v)) for v in entry.values()))
    ps = [math.exp(lp) for _, lp in ranked[:2]] + [0.0, 0.0]
    return ps[0] - ps[1]


def decode_chunk(model: VllmLM, tokenizer, exs, prompts: list[list[int]], cfg, eos: list[int]
                 ) -> dict[str, list[dict]]:
    """vLLM twin of :func:`sert.mine._decode_chunk`: id -> the question's records, in path order."""
    branches = _branches(model, prompts, cfg, eos)
    conts = _continuations(model, exs, prompts, branches, cfg, eos)
    eos_set = set(eos)
    key = settings_key(cfg)
    N = samples_per_branch(cfg)
    result: dict[str, list[dict]] = {}
    for b, e in enumerate(exs):
        ids_b, lps_b, m0 = branches[b]
        recs = []
        for j in range(cfg.top_k_branches * N):
            rank, sample = divmod(j, N)
            tid, lps, mg, eos_end = _path(ids_b[rank], lps_b[rank], m0, conts.get((b, rank)), sample, eos_set)
            recs.append(path_record(tokenizer, e, cfg, key, j, ids_b[rank], math.exp(lps_b[rank]), tid, lps, mg,
                                    eos_end, backend="vllm"))
        result[e.id] = recs
    return result


def _branches(model: VllmLM, prompts: list[list[int]], cfg, eos: list[int]
              ) -> list[tuple[list[int], list[float], float]]:
    """Per prompt: the top-k first tokens (EOS ids left out with ``skip_eos_branch``), their
    log-probs and the first step's margin, from one ``max_tokens=1`` request each."""
    from vllm import SamplingParams

    K = cfg.top_k_branches
    skip = set(eos) if cfg.skip_eos_branch else set()
    first = model.llm.generate([{"prompt_token_ids": p} for p in prompts],
                               SamplingParams(max_tokens=1, temperature=0.0, logprobs=max(K, 2) + len(skip)),
                               use_tqdm=False)
    out = []
    for o in first:
        entry = o.outputs[0].logprobs[0]
        ranked = sorted(entry.items(), key=lambda kv: getattr(kv[1], "rank", 10**9))
        ranked = [kv for kv in ranked if int(kv[0]) not in skip][:K]
        out.append(([int(t) for t, _ in ranked], [_lp(entry, t) for t, _ in ranked], _margin(entry)))
    return out


def _continuations(model: VllmLM, exs, prompts, branches, cfg, eos: list[int]) -> dict[tuple[int, int], list]:
    """(question, branch rank) -> vLLM's n completions of prompt + branch token, with the paper's
    sampler seeded per question and branch (greedy in cot-decoding mode)."""
    from vllm import SamplingParams

    greedy = cfg.mode == "cot-decoding"
    eos_set = set(eos)
    reqs, params, where = [], [], []
    for b, (e, p) in enumerate(zip(exs, prompts)):
        for rank, tid in enumerate(branches[b][0]):
            if tid in eos_set or cfg.max_new_tokens == 1:
                continue
            reqs.append({"prompt_token_ids": p + [tid]})
            params.append(SamplingParams(n=samples_per_branch(cfg), max_tokens=cfg.max_new_tokens - 1, logprobs=2,
                                         stop_token_ids=sorted(eos_set),
                                         temperature=0.0 if greedy else cfg.temperature,
                                         top_k=-1 if greedy else cfg.top_k, top_p=1.0 if greedy else cfg.top_p,
                                         seed=None if greedy else (question_seed(cfg.seed, e.id) + rank) % 2**63))
            where.append((b, rank))
    if not reqs:
        return {}
    return {w: list(out.outputs) for w, out in zip(where, model.llm.generate(reqs, params, use_tqdm=False))}


def _path(bid: int, blp: float, m0: float, outs, sample: int, eos_set: set[int]):
    """One path's token ids, log-probs and margins (branch token first) and whether EOS ended it."""
    if bid in eos_set:
        return [], [], [], True
    tid, lps, mg, eos_end = [bid], [blp], [m0], False
    if outs:
        o = outs[sample]
        c_ids, c_lp = list(o.token_ids), list(o.logprobs or [])
        if c_ids and c_ids[-1] in eos_set:
            c_ids, c_lp, eos_end = c_ids[:-1], c_lp[:len(c_ids) - 1], True
        elif o.finish_reason == "stop":
            eos_end = True
        tid += c_ids
        lps += [_lp(d, t) for d, t in zip(c_lp, c_ids)]
        mg += [_margin(d) for d in c_lp]
    return tid, lps, mg, eos_end


def generate_greedy(model: VllmLM, tokenizer, prompts: Sequence[str], batch_size: int = 32, max_new_tokens: int = 128,
                    progress: bool = True, stop_strings: Sequence[str] | None | object = _DEFAULT,
                    on_batch: Callable[[list[int], list[dict]], None] | None = None) -> list[dict]:
    """vLLM twin of :func:`sert.evaluate.generate_greedy` (same arguments and result records);
    vLLM schedules its own batches, ``batch_size`` only sets how often ``on_batch`` runs."""
    from vllm import SamplingParams

    stops = list(STOP_STRINGS if stop_strings is _DEFAULT else (stop_strings or []))
    eos = set(eos_token_ids(model, tokenizer))
    sp = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop=stops or None,
                        include_stop_str_in_output=True, stop_token_ids=sorted(eos))
    results: list[dict | None] = [None] * len(prompts)
    for s in range(0, len(prompts), max(1, batch_size * 8)):
        idx = list(range(s, min(len(prompts), s + max(1, batch_size * 8))))
        outs = model.llm.generate([prompts[i] for i in idx], sp, use_tqdm=progress)
        batch = []
        for i, out in zip(idx, outs):
            o = out.outputs[0]
            ids = list(o.token_ids)
            finish = "length"
            if ids and ids[-1] in eos:
                ids, finish = ids[:-1], "eos"
            elif o.finish_reason == "stop":
                finish = "stop" if isinstance(getattr(o, "stop_reason", None), str) else "eos"
            results[i] = {"text": tokenizer.decode(ids, skip_special_tokens=True), "token_ids": ids, "finish": finish}
            batch.append(results[i])
        if on_batch:
            on_batch(idx, batch)
    return results  # type: ignore[return-value]
