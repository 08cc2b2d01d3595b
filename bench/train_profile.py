"""Where a bf16 training step's time goes on this CPU (issue 25, part 2): the Trainer's step done by
hand (CPU autocast bf16, fp32 master weights, fused AdamW as the Trainer makes it, clipping at 1.0)
on sert's RD targets in length-grouped batches of 8, timed by phase: the step of commit a4e734d, the
step as sert trains now (LM head on the completion positions only, ``train.head_on_labels``) and a
foreach AdamW for reference, each with its loss beside the first's; a torch.profiler table of the
current step; and the bf16 matmul rate for MFU.

    python3 bench/train_profile.py [--data RATIONALES.jsonl] [--steps 6] [--model smollm2-135m]

Without ``--data``: CommonsenseQA's shipped rationales of 64 train questions (``sert teach``).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def batches(feats, bs, pad):
    import torch

    order = sorted(range(len(feats)), key=lambda i: -len(feats[i]["input_ids"]))
    out = []
    for s in range(0, len(order), bs):
        fs = [feats[i] for i in order[s:s + bs]]
        n = max(len(f["input_ids"]) for f in fs)
        ids = torch.full((len(fs), n), pad, dtype=torch.long)
        lab = torch.full((len(fs), n), -100, dtype=torch.long)
        mask = torch.zeros((len(fs), n), dtype=torch.long)
        for i, f in enumerate(fs):
            k = len(f["input_ids"])
            ids[i, :k], lab[i, :k], mask[i, :k] = torch.tensor(f["input_ids"]), torch.tensor(f["labels"]), 1
        out.append({"input_ids": ids, "attention_mask": mask, "labels": lab})
    return out


def head_on_labels_loss(model, b):
    """The causal-LM loss with the LM head computed only where a label is predicted (completion tokens)."""
    import torch
    import torch.nn.functional as F

    h = model.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
    lab = b["labels"][:, 1:]
    sel = lab != -100
    logits = model.lm_head(h[:, :-1][sel])
    return F.cross_entropy(logits.float(), lab[sel], reduction="sum") / sel.sum()


def run(model, bl, steps, fused=False, head_on_labels=False, profile=False):
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0, fused=fused, foreach=None if fused else True)
    ph = {"forward": 0.0, "backward": 0.0, "clip": 0.0, "optimizer": 0.0}
    losses, toks = [], 0
    prof = None
    if profile:
        prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        prof.__enter__()
    t_all = time.perf_counter()
    for s in range(steps):
        b = bl[s % len(bl)]
        toks += int(b["attention_mask"].sum())
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = head_on_labels_loss(model, b) if head_on_labels else model(**b).loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        t3 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        ph["forward"] += t1 - t0
        ph["backward"] += t2 - t1
        ph["clip"] += t3 - t2
        ph["optimizer"] += t4 - t3
        losses.append(loss.item())
    wall = time.perf_counter() - t_all
    if prof is not None:
        prof.__exit__(None, None, None)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    return {"wall": wall, "tok_s": toks / wall, "phases": ph, "losses": losses}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--steps", type=int, default=6)
    a = p.parse_args()
    import copy

    import torch

    from sert.models import load_tokenizer, resolve_model
    from sert.train import build_pairs, load_records, tokenize_pairs

    data = a.data
    if data is None:
        d = Path(tempfile.mkdtemp())
        subprocess.run([sys.executable, "-m", "sert", "teach", "--task", "commonsense_qa", "--out", str(d),
                        "--limit", "64"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        data = str(d / "rationales.jsonl")
    tok = load_tokenizer(a.model)
    recs, _ = load_records("distill", data)
    feats, _ = tokenize_pairs(build_pairs("distill", recs), tok, 512)
    bl = batches(feats, 8, tok.pad_token_id)
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(resolve_model(a.model), dtype=torch.float32)
    base.config.use_cache = False
    base.train()
    n = sum(p.numel() for p in base.parameters())
    x, w = torch.randn(1024, 1024, dtype=torch.bfloat16), torch.randn(1024, 1024, dtype=torch.bfloat16)
    for _ in range(3):
        x @ w
    best = min((lambda t0: (x @ w, time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(20))
    peak = 2 * 1024 ** 3 / best
    print(f"bf16 matmul 1024^3: {peak / 1e9:.0f} GFLOP/s; {n / 1e6:.1f}M parameters; {len(feats)} targets, "
          f"mean {sum(len(f['input_ids']) for f in feats) / len(feats):.0f} tokens, "
          f"{sum(sum(1 for t in f['labels'] if t != -100) for f in feats) / sum(len(f['input_ids']) for f in feats):.2f} "
          "of them supervised")
    variants = [("a4e734d's Trainer step (fused AdamW)", {"fused": True}),
                ("+ LM head on labels only (now)", {"fused": True, "head_on_labels": True}),
                ("foreach AdamW (not the Trainer's)", {})]
    ref = None
    run(copy.deepcopy(base), bl, 1)  # warm-up
    for name, kw in variants:
        torch.manual_seed(0)
        r = run(copy.deepcopy(base), bl, a.steps, **kw)
        ref = ref or r
        dl = max(abs(u - v) for u, v in zip(r["losses"], ref["losses"]))
        ph = ", ".join(f"{k} {v / a.steps * 1000:.0f} ms" for k, v in r["phases"].items())
        print(f"{name:36s} {r['tok_s']:7.1f} tok/s ({r['tok_s'] / ref['tok_s']:.2f}x), MFU "
              f"{100 * 6 * n * r['tok_s'] / peak:.1f}% | per step: {ph} | max |dloss| {dl:.2e}")
    print("profile of the step as sert trains now (fused AdamW, LM head on labels only):")
    run(copy.deepcopy(base), bl, 2, fused=True, head_on_labels=True, profile=True)


if __name__ == "__main__":
    main()
