"""fp32 against the ``--dtype`` choice, speed and quality (on request: ``--only dtype``)."""
from __future__ import annotations

import random
from typing import Callable

from ...evaluate import generate_greedy, score
from ...models import load_model
from ...templates import train_prompt
from ...tokens import eos_token_ids
from ...train import pad_multiple, tokenize_pairs
from .data import distill_pairs, eval_examples, mining_examples
from .evaluation import compare_predictions
from .figures import figure
from .fixed_length import no_eos
from .flops import bench_matmul
from .machine import Timer, load_avg
from .mining import sert_mining
from .settings import BenchSizes
from .training import CountingCollator, default_mega_batch_mult, train_arm


PRECISION = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def bench_dtype(load: Callable[[str], tuple], device: str, dtype: str, sizes: BenchSizes, seed: int = 0
                ) -> tuple[dict, list[dict]]:
    """fp32 against ``dtype`` (the ``--dtype auto`` choice) in one run: mining and greedy decoding
    with the model's weights in each dtype; training from the same fp32 weights, in fp32 and under
    autocast (as ``sert train``). Also their quality: the share of greedy predictions identical and
    the accuracy of each (same checkpoint, EOS on, untimed), and the training loss of each over
    the same steps and data. ``load(dtype)`` returns ``(model, tokenizer)`` with that weight dtype."""

    res: dict = {"dtype": dtype, "load_before": load_avg(), "fp32": {}, dtype: {}}
    mexs, eexs = mining_examples(sizes.mine_questions), eval_examples(sizes.eval_questions)
    prompts = [train_prompt(e.question) for e in eexs]
    T, E = sizes.mine_tokens, sizes.eval_tokens
    for dt in ("float32", dtype):
        model, tok = load(dt)
        r = res["fp32" if dt == "float32" else dt]
        with no_eos(model, eos_token_ids(model, tok)):
            sert_mining(model, tok, mexs[:1], min(T, 4), 1)                    # warm-up
            with Timer(device) as t:
                n = sert_mining(model, tok, mexs, T, sizes.mine_batch)
            r["mining_tokens_per_s"] = round(n / t.s, 1)
            generate_greedy(model, tok, prompts[:2], batch_size=2, max_new_tokens=min(E, 4), progress=False,
                            stop_strings=None)
            with Timer(device) as t:
                out = generate_greedy(model, tok, prompts, batch_size=sizes.eval_batch, max_new_tokens=E,
                                      progress=False, stop_strings=None)
            r["eval_tokens_per_s"] = round(sum(len(o["token_ids"]) for o in out) / t.s, 1)
        preds = generate_greedy(model, tok, prompts, batch_size=sizes.eval_batch,
                                max_new_tokens=sizes.dtype_eval_tokens, progress=False)   # as sert eval decodes
        r["predictions"] = preds
        r["accuracy"] = sum(score(e, p["text"], p["token_ids"])["correct"] for e, p in zip(eexs, preds)) / len(eexs)
        del model
    cmp = compare_predictions(res[dtype].pop("predictions"), res["fp32"].pop("predictions"))
    res["eval_compare"] = cmp
    _dtype_training(load, device, dtype, sizes, seed, res)
    res["load_after"] = load_avg()
    o, b = res[dtype], res["fp32"]
    vs = f"float32 (same run){'; ' + res.get('reason', '') if res.get('reason') else ''}"
    d_acc = o["accuracy"] - b["accuracy"]
    figs = [figure("dtype", f"mining tok/s, {dtype} vs fp32", o["mining_tokens_per_s"], b["mining_tokens_per_s"],
                   "tok/s", note=vs),
            figure("dtype", f"training useful tok/s, {PRECISION[dtype]} autocast vs fp32",
                   o["train_useful_tokens_per_s"], b["train_useful_tokens_per_s"], "tok/s", note=vs),
            figure("dtype", f"eval greedy tok/s, {dtype} vs fp32", o["eval_tokens_per_s"], b["eval_tokens_per_s"],
                   "tok/s", note=vs),
            figure("dtype", f"eval predictions identical to fp32, {cmp['n']} q x <= {sizes.dtype_eval_tokens} tok",
                   round(cmp["share_identical"], 4), 1.0, note="fp32 predictions of the same checkpoint"),
            figure("dtype", "eval accuracy", round(o["accuracy"], 4), round(b["accuracy"], 4),
                   note=f"fp32; difference {d_acc:+.4f} ({cmp['n']} questions)"),
            figure("dtype", f"training final loss ({sizes.train_steps} steps)", o["train_final_loss"],
                   b["train_final_loss"], better="lower", note="fp32 training, same steps and data"),
            figure("dtype", "training mean loss", o["train_mean_loss"], b["train_mean_loss"], better="lower",
                   note="fp32 training, same steps and data")]
    return res, figs


def _dtype_training(load, device: str, dtype: str, sizes: BenchSizes, seed: int, res: dict) -> None:
    """The training rows of :func:`bench_dtype`: same fp32 initial weights, same examples and order."""


    model, tok = load("float32")
    model.train()
    model.config.use_cache = False
    n, B = sizes.train_steps * sizes.train_batch, sizes.train_batch
    feats, _ = tokenize_pairs(distill_pairs(), tok, sizes.train_max_length)
    feats = [{k: v for k, v in f.items() if k != "weight"} for f in feats]
    feats = [feats[i] for i in sorted(random.Random(seed).sample(range(len(feats)), n))]
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    pad, pm = tok.pad_token_id, pad_multiple(device)
    mult = default_mega_batch_mult(len(distill_pairs()), B)
    train_arm(model, tok, feats[:B], CountingCollator(pad, pm), 1, B, False, PRECISION[dtype], device, seed)  # warm-up
    for dt in ("float32", dtype):
        model.load_state_dict(init)
        losses: list[float] = []
        a = train_arm(model, tok, feats, CountingCollator(pad, pm), sizes.train_steps, B, mult, PRECISION[dt],
                      device, seed, losses=losses)
        r = res["fp32" if dt == "float32" else dt]
        r.update({"train_useful_tokens_per_s": a["useful_tokens_per_s"], "train_losses": [round(x, 4) for x in losses],
                  "train_final_loss": round(losses[-1], 4), "train_mean_loss": round(sum(losses) / len(losses), 4)})
    model.load_state_dict(init)
    del model


def dtype_section(model_name: str, place, sizes: BenchSizes, seed: int = 0) -> tuple[dict, list[dict]]:
    """:func:`bench_dtype` for the chosen dtype, with the matmul of each dtype; nothing to compare
    where the choice is fp32."""

    if place.dtype == "float32":
        return {"dtype": "float32", "reason": place.reason, "skipped": "the dtype is float32: nothing to compare"}, []
    res, figs = bench_dtype(lambda dt: load_model(model_name, place.device, dt)[:2], place.device, place.dtype,
                            sizes, seed)
    res["reason"] = place.reason
    mm = {dt: bench_matmul(place.device, dt, sizes.matmul_n, min_s=0.5) for dt in ("float32", place.dtype)}
    res["matmul"] = mm
    figs.insert(0, figure("dtype", f"matmul {sizes.matmul_n}^3 GFLOP/s, {place.dtype} vs fp32",
                          mm[place.dtype]["gflops"], mm["float32"]["gflops"], "GFLOP/s",
                          note=f"float32 (same run); {place.reason}"))
    return res, figs
