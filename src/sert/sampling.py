"""What a mined path is drawn from and what its record holds, shared by both mining backends.

:mod:`sert.mine` (our decoder) and :mod:`sert.vllm_backend` both mine with the paper's sampler
(temperature, then top-k, then top-p: SERT §II-A), seed each question from (run seed, question
id), tag every record with the settings it was mined under, and build their records here, so
the two backends write the same schema and neither imports the other.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

from .answers import extract_answer
from .config import MineConfig


def samples_per_branch(cfg: MineConfig) -> int:
    """Paths per branch: ``samples_per_branch``, or 1 in cot-decoding mode (greedy)."""
    return 1 if cfg.mode == "cot-decoding" else cfg.samples_per_branch


def paths_per_question(cfg: MineConfig) -> int:
    return cfg.top_k_branches * samples_per_branch(cfg)


def settings_key(cfg: MineConfig) -> str:
    """What a path depends on besides model and question; records carry it so runs never mix."""
    skip = " skip_eos" if cfg.skip_eos_branch else ""  # absent by default: older paths files still resume
    skip += " prompt=train" if cfg.prompt == "train" else ""
    if cfg.mode == "cot-decoding":
        return f"cot-decoding k={cfg.top_k_branches} max_new={cfg.max_new_tokens}{skip}"
    return (f"sert k={cfg.top_k_branches} n={cfg.samples_per_branch} top_k={cfg.top_k} top_p={cfg.top_p} "
            f"T={cfg.temperature} max_new={cfg.max_new_tokens} seed={cfg.seed}{skip}")


def question_seed(seed: int, qid: str) -> int:
    """A 63-bit seed from (run seed, question id): a question's draws ignore batch composition."""
    h = hashlib.sha256(f"{seed}\x00{qid}".encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


# ------------------------------------------------------------------ the sampler
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
    return idx, truncated_probs(vals, top_p, temperature)


def truncated_probs(vals, top_p: float, temperature: float):
    """Probabilities of the sorted top-k logits ``vals`` [R, k] after temperature and top-p."""
    import torch

    p = torch.softmax(vals / temperature, dim=-1)
    above = torch.cumsum(p, dim=-1) - p
    keep = above < top_p
    keep[:, 0] = True
    p = p * keep
    return p / p.sum(-1, keepdim=True)


def draw(idx, p, u):
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
    return draw(idx, p, u)


# ------------------------------------------------------------------ the record
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
    span = extract_answer(text, kind, choices).span
    if span is None:
        return None
    a = _token_at_char(tokenizer, ids, span[0])
    b = _token_at_char(tokenizer, ids, max(span[0], span[1] - 1))
    sel = margins[a: b + 1]
    return round(sum(sel) / len(sel), 6) if sel else None


def path_record(tokenizer, example, cfg: MineConfig, key: str, path: int, branch_id: int, branch_prob: float,
                token_ids: list[int], logprobs: list[float], margins: list[float], eos: bool, **extra) -> dict:
    """One mined path as ``paths.jsonl`` holds it (see :mod:`sert.mine`), from either backend.

    ``path``: its index in the question (branch rank x samples per branch + sample);
    ``token_ids``/``logprobs``/``margins``: the branch token and its continuation, without the
    EOS that ended it (``eos``); ``key``: :func:`settings_key` of ``cfg``."""
    rank, sample = divmod(path, samples_per_branch(cfg))
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    e = example
    return {
        "id": e.id, "question": e.question, "answer": e.answer, "kind": e.kind, "choices": e.choices,
        "mode": cfg.mode, "seed": cfg.seed, "settings": key, "path": path,
        "branch_rank": rank, "branch_token": tokenizer.decode([branch_id]),
        "branch_token_id": branch_id, "branch_prob": float(f"{branch_prob:.6g}"), "sample": sample,
        "text": text, "token_ids": token_ids, "n_tokens": len(token_ids),
        "logprobs": [round(x, 5) for x in logprobs], "finish": "eos" if eos else "length",
        "delta": path_delta(tokenizer, token_ids, text, margins, e.kind, e.choices),
        **({"prompt": cfg.prompt} if cfg.prompt != "zero-shot" else {}), **extra,
    }
