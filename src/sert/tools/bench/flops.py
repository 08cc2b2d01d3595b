"""Model FLOPs of mining and the FLOP/s of a plain matmul (the reference for MFU)."""
from __future__ import annotations

from typing import Sequence

from .machine import Timer


def matmul_params(model) -> int:
    """Weights that take part in a matmul per token: Linear and GPT-2's Conv1D (LM head included)."""
    import torch  # lazy: start-up time (package doc)

    n = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D":
            n += m.weight.numel()
    return n


def _attn_dims(config) -> tuple[int, int]:
    c = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(c, "num_hidden_layers", None) or getattr(c, "n_layer")
    heads = getattr(c, "num_attention_heads", None) or getattr(c, "n_head")
    hidden = getattr(c, "hidden_size", None) or getattr(c, "n_embd")
    head_dim = getattr(c, "head_dim", None) or hidden // heads
    return int(layers), int(heads * head_dim)


def mining_flops(model, prompt_lens: Sequence[int], rows: int, new_tokens: int) -> float:
    """Useful model FLOPs to mine ``rows`` paths of ``new_tokens`` tokens per prompt (see module doc)."""
    P = matmul_params(model)
    L, d = _attn_dims(model.config)
    total = 0.0
    for p in prompt_lens:
        total += p * 2 * P + 4 * L * d * p * (p + 1) / 2             # prefill (causal)
        n = new_tokens - 1                                             # forwards per row after the prefill
        ctx = n * p + n * (n + 1) / 2                                  # sum over t=1..n of (p + t)
        total += rows * (n * 2 * P + 4 * L * d * ctx)
    return total


def bench_matmul(device: str, dtype: str, n: int, min_s: float = 1.0) -> dict:
    """FLOP/s of a plain n x n x n matmul: the best of several timed repeats after a warm-up."""
    import torch  # lazy: start-up time (package doc)

    dt = getattr(torch, dtype)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dt)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dt)
    c = torch.empty(n, n, device=device, dtype=dt)
    torch.matmul(a, b, out=c)
    flop = 2.0 * n ** 3
    best, total, reps = float("inf"), 0.0, 0
    while total < min_s or reps < 3:
        with Timer(device) as t:
            for _ in range(4):
                torch.matmul(a, b, out=c)
        best = min(best, t.s / 4)
        total += t.s
        reps += 1
        if reps >= 200:
            break
    return {"n": n, "dtype": dtype, "device": device, "flops_per_s": flop / best, "gflops": round(flop / best / 1e9, 1),
            "repeats": reps}
