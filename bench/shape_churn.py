"""CPU-only: how many input shapes the attention kernels first see in each arm of the H200 bench run
(notes/bench_gpu_h200.log), and the per-new-shape cost that the measured times then imply.

The run (torch 2.11+cu130, bench before the untimed pass and the pad-to-8): a 1-step warm-up, then
ours (length-grouped), naive (padded to 512), dynamic (random order), 30 steps x batch 16 each; and
mining: ours = one batch of 400 rows, 128 decode steps; baseline = generate() per question, 25 rows.
A kernel that sets up per shape (cuDNN attention builds an execution plan per new shape) charges each
arm for the shapes it is first to see. Usage: PYTHONPATH=src python bench/shape_churn.py (~20 s).
"""
import random

import torch

from sert.tools.bench import default_mega_batch_mult, distill_pairs, grouped_order, mining_examples
from sert.models import load_tokenizer, ASSETS
from sert.templates import mining_prompt
from sert.train import tokenize_pairs

STEPS, B, L, SEED = 30, 16, 512, 0
H200 = {"ours": 4407, "naive": 9871, "dynamic": 10238}  # useful tok/s, notes/bench_gpu_h200.log

tok = load_tokenizer(str(ASSETS))
feats, _ = tokenize_pairs(distill_pairs(), tok, L)
lens_all = [len(f["input_ids"]) for f in feats]
pick = sorted(random.Random(SEED).sample(range(len(feats)), STEPS * B))
lens = [lens_all[i] for i in pick]
useful = sum(lens)


def shapes(order, fixed=None):
    return [fixed or max(lens[j] for j in order[i:i + B]) for i in range(0, len(order), B)]


seen = set(shapes(list(range(B))))                                    # the warm-up step
ours = shapes(grouped_order(lens, B, SEED, default_mega_batch_mult(len(feats), B)))
new_ours = len(set(ours) - seen)
seen |= set(ours) | {L}
news = []
for s in range(20):                                                   # the Trainer's random order: a range
    dyn = shapes(torch.randperm(len(lens), generator=torch.Generator().manual_seed(s)).tolist())
    news.append(len(set(dyn) - seen))
t = {k: useful / v for k, v in H200.items()}
print(f"training: {useful} useful tokens in {STEPS} steps x {B}; distinct new lengths first seen by "
      f"ours {new_ours}, naive {0 if L in set(ours) else 1}, dynamic {min(news)}-{max(news)} (after ours)")
print(f"H200 seconds: ours {t['ours']:.2f}, naive {t['naive']:.2f}, dynamic {t['dynamic']:.2f}")
# If ours' steps cost what dynamic's do (it computes fewer tokens), its extra time is set-up for its new
# shapes; dynamic's own new shapes bound the cost from above (its whole time / its new shapes).
c = (t["ours"] - t["dynamic"]) / new_ours
print(f"=> about {1e3 * c:.0f} ms per newly seen shape (fwd+bwd), {100 * c * new_ours / t['ours']:.0f}% of ours' "
      f"time; at most {1e3 * t['dynamic'] / max(news):.0f}-{1e3 * t['dynamic'] / min(news):.0f} ms by dynamic's time")
print(f"pad-to-8 leaves {len({-(-n // 8) * 8 for n in lens_all})} lengths over all {len(lens_all)} targets, "
      f"pad-to-64 {len({-(-n // 64) * 64 for n in lens_all})}")
plens = [len(tok(mining_prompt(e.question))["input_ids"]) for e in mining_examples(16)]
T = 128
ours_kv = {p + t for p in [max(plens)] for t in range(T)}              # one left-padded batch
base_kv = {p + t for p in plens for t in range(T)}
print(f"mining: ours {T} decode steps, {len(ours_kv)} distinct KV lengths (all new); baseline "
      f"{16 * T} steps, {len(base_kv)} distinct KV lengths (prompts {min(plens)}-{max(plens)} tokens)")
s_ours, s_base = 16 * 25 * T / 3136, 16 * 25 * T / 933
print(f"H200 mining: ours {1e3 * s_ours / T:.0f} ms per step, baseline {1e3 * s_base / (16 * T):.1f} ms per step")
