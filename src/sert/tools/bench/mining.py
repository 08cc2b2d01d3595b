"""Mining: ``sert.mine.mine`` vs ``model.generate(num_return_sequences=25)`` per question."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from ...config import MineConfig
from ...errors import SertError
from ...mine import mine
from ...templates import mining_prompt
from ...tokens import eos_token_ids
from .data import mining_examples
from .figures import figure
from .fixed_length import no_eos
from .flops import matmul_params, mining_flops
from .machine import PeakMemory, Timer, load_avg
from .settings import BenchSizes


def hf_generate_mining(model, tokenizer, examples, new_tokens: int, top_k: int = 10, top_p: float = 0.95,
                       rows: int = 25, seed: int = 0) -> int:
    """The baseline: ``model.generate`` with 25 return sequences, one question at a time.
    Returns the number of generated tokens (EOS and padding excluded)."""
    import torch  # lazy: start-up time (package doc)


    eos = set(eos_token_ids(model, tokenizer))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    torch.manual_seed(seed)
    n = 0
    for e in examples:
        ids = torch.tensor([tokenizer(mining_prompt(e.question))["input_ids"]], device=model.device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=top_k,
                             top_p=top_p, temperature=1.0, num_return_sequences=rows, max_new_tokens=new_tokens,
                             pad_token_id=pad, eos_token_id=sorted(eos))
        new = out[:, ids.shape[1]:]
        n += int((~torch.isin(new, torch.tensor(sorted(eos | {pad}), device=new.device))).sum())
    return n


def sert_mining(model, tokenizer, examples, new_tokens: int, batch_questions: int, seed: int = 0) -> int:
    """Ours: ``sert.mine.mine`` at the paper's 5 x 5 (writes its JSONL to a temp dir). Returns tokens sampled."""

    cfg = MineConfig(max_new_tokens=new_tokens, batch_questions=batch_questions, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        recs = mine(model, tokenizer, examples, cfg, Path(tmp) / "paths.jsonl", progress=False)
    return sum(r["n_tokens"] for r in recs)


def bench_mining(model, tokenizer, device: str, sizes: BenchSizes, matmul_flops: float | None,
                 ours_fn: Callable = sert_mining, base_fn: Callable = hf_generate_mining) -> tuple[dict, list[dict]]:
    exs = mining_examples(sizes.mine_questions)
    T, rows = sizes.mine_tokens, 25
    expect = len(exs) * rows * T
    res: dict = {"questions": len(exs), "rows_per_question": rows, "new_tokens": T,
                 "batch_questions": sizes.mine_batch, "load_before": load_avg()}
    with no_eos(model, eos_token_ids(model, tokenizer)):
        ours_fn(model, tokenizer, exs[:1], min(T, 4), 1)                  # warm-up, same code
        base_fn(model, tokenizer, exs[:1], min(T, 4))
        with PeakMemory(device) as mo, Timer(device) as to:
            n_ours = ours_fn(model, tokenizer, exs, T, sizes.mine_batch)
        with PeakMemory(device) as mb, Timer(device) as tb:
            n_base = base_fn(model, tokenizer, exs, T)
    if n_ours != expect or n_base != expect:
        raise SertError(f"mining bench: generated {n_ours} (ours) and {n_base} (baseline) tokens, "
                        f"expected {expect} each; the fixed-length setup failed")
    plens = [len(tokenizer(mining_prompt(e.question))["input_ids"]) for e in exs]
    flops = mining_flops(model, plens, rows, T)
    res.update({"tokens": expect, "ours_s": round(to.s, 3), "baseline_s": round(tb.s, 3),
                "ours_tokens_per_s": round(n_ours / to.s, 1), "baseline_tokens_per_s": round(n_base / tb.s, 1),
                "model_flops": flops, "matmul_params": matmul_params(model), "prompt_tokens_mean": sum(plens) / len(plens),
                "ours_peak_rss_mb": mo.peak_rss_mb, "baseline_peak_rss_mb": mb.peak_rss_mb,
                "ours_peak_gpu_mb": mo.peak_gpu_mb, "baseline_peak_gpu_mb": mb.peak_gpu_mb,
                "rss_reset": mo.reset, "load_after": load_avg()})
    base_note = "generate(num_return_sequences=25) per question"
    figs = [figure("mining", f"sampled tokens/s, 5x5 paths, {len(exs)} q x {T} tok", res["ours_tokens_per_s"],
                   res["baseline_tokens_per_s"], "tok/s", note=base_note)]
    if matmul_flops:
        res["ours_mfu"] = flops / to.s / matmul_flops
        res["baseline_mfu"] = flops / tb.s / matmul_flops
        figs.append(figure("mining", "MFU vs matmul", float(f"{res['ours_mfu']:.3g}"),
                           float(f"{res['baseline_mfu']:.3g}"), "", note="same model FLOPs / same matmul",
                           ratio=res["ours_mfu"] / res["baseline_mfu"]))
    figs.append(figure("mining", "peak RSS", mo.peak_rss_mb, mb.peak_rss_mb, "MB", better="lower", note=base_note))
    if mo.peak_gpu_mb is not None:
        figs.append(figure("mining", "peak GPU memory", mo.peak_gpu_mb, mb.peak_gpu_mb, "MB", better="lower",
                           note=base_note))
    if sizes.mine_real:
        # The same two arms as mining really runs: EOS allowed, so paths end at their own length. Ours
        # retires finished rows; generate() keeps a question's finished rows in the batch until its last
        # row ends. Both count sampled tokens only (EOS and padding excluded); the token counts differ
        # (different random streams), so the figure is a rate. With random weights EOS is almost never
        # drawn and this equals the fixed-length figure; with trained weights it is what a user sees.
        with Timer(device) as to2:
            n_ours2 = ours_fn(model, tokenizer, exs, T, sizes.mine_batch)
        with Timer(device) as tb2:
            n_base2 = base_fn(model, tokenizer, exs, T)
        paths = len(exs) * rows
        res.update({"real_ours_tokens": n_ours2, "real_baseline_tokens": n_base2,
                    "real_ours_s": round(to2.s, 3), "real_baseline_s": round(tb2.s, 3),
                    "real_ours_tokens_per_s": round(n_ours2 / to2.s, 1),
                    "real_baseline_tokens_per_s": round(n_base2 / tb2.s, 1),
                    "real_mean_path_tokens_ours": round(n_ours2 / paths, 1),
                    "real_mean_path_tokens_baseline": round(n_base2 / paths, 1)})
        figs.append(figure("mining", f"sampled tokens/s, EOS on (real lengths, mean {n_ours2 / paths:.0f} "
                                     f"vs {n_base2 / paths:.0f} tok/path)",
                           res["real_ours_tokens_per_s"], res["real_baseline_tokens_per_s"], "tok/s",
                           note=base_note + "; finished rows retired vs kept until the question's last row ends"))
    return res, figs
