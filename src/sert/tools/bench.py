"""``sert bench``: throughput of mining, training and evaluation, each beside its baseline.

Every figure is measured twice in the same process, on the same inputs: once with sert's
code ("ours") and once with the plain way ("baseline"), and printed as
``figure | ours | baseline | ratio``. Sections (``--only``):

mining    ``sert.mine.mine`` (one prefill per question shared by its k x n = 5 x 5 rows,
          several questions per batch, top-k before top-p) on B real StrategyQA train
          questions, vs ``model.generate(do_sample=True, top_k=10, top_p=0.95,
          num_return_sequences=25)`` called once per question. Sampled tokens/s, and the
          model-FLOPs utilisation (MFU) of each: useful model FLOP/s / the FLOP/s of a plain
          matmul measured in the same run (the ``matmul`` section, in the dtype the model
          runs in). Model FLOPs (the same for both; the baseline's 24 extra prefills per
          question are not counted as useful):
              per question:  F(p, 0) + 25 * sum_{t=1}^{T-1} F(1, p + t)
              F(n, c) = n * 2 * P + 4 * n_layer * d_attn * (attended positions of the n tokens)
          P = weights of every Linear/Conv1D layer (the LM head included, the embedding
          lookup not), d_attn = heads x head dim, p = prompt tokens, T = new tokens per path.
training  useful (non-padding) tokens/s of transformers' Trainer with sert's collator
          (pads a batch to its longest member) and length grouping (``TrainConfig``
          default), vs naive batches padded to ``max_length`` (512, ``TrainConfig``'s) in
          random order, and vs dynamic padding in random order (what length grouping adds
          by itself). Same examples (a seeded random sample of steps x batch of the real
          StrategyQA distillation targets from the shipped text-davinci-002 teacher, one
          epoch), same initial weights, same number of optimizer steps, all timed (after a
          one-step warm-up; on CUDA each arm also runs once untimed before its timed pass,
          since kernel plans are built per input shape). Ours orders the sample as
          transformers' ``LengthGroupedSampler`` does in ``sert train`` on the whole
          862-target set: random megabatches of
          min(862 // (4 x batch), 50) x batch examples, each sorted by length (its default
          on the small sample itself would make at least 4 megabatches: no grouping for a
          sample of 16). Also computed without timing: the padding efficiency of one whole
          epoch over all targets with the actual samplers.
eval      ``sert.evaluate.generate_greedy`` at ``--eval-batch`` vs the same at batch size 1
          on real StrategyQA test prompts; tokens/s, and the share of predictions
          (generated token ids) identical between the two.
matmul    the reference for MFU.
dtype     (on request) fp32 against the ``--dtype`` choice (auto: see ``sert.models.pick_placement``),
          same run: matmul, mining and greedy tok/s with the weights in each dtype, training
          useful tok/s from the same fp32 weights in fp32 vs autocast; and the quality of the
          choice: the share of greedy predictions (EOS on, ``--dtype-eval-tokens``) identical to
          fp32's on the same checkpoint, the accuracy of each, and the training loss (final and
          mean) of each over the same steps and data. Ratios: chosen dtype / fp32.
mining_batch (on request) mining tok/s at batch_questions 1, 2, 4, ... ``--mine-questions``, and
          what ``batch_questions: auto`` picks on this device.

Throughput figures use a fixed output length: the EOS logit is set to -inf by a forward
hook on the output layer, for ours and the baseline alike, so both generate exactly the
same number of tokens (checked; ``stop_strings`` are off in eval). Each timed call is
preceded by a small warm-up call of the same code. Peak RSS per measured arm: the
process's VmHWM after resetting it (``/proc/self/clear_refs``) just before the arm, with
the model already loaded, so it is the arm's whole-process peak; on CUDA also the peak
allocated GPU memory. Ratios: ours / baseline (for memory, lower is better).

Results: a table on stdout and, with ``--out``, JSON (machine, settings, every figure)
rewritten after each section so a run cut short keeps what it measured.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import functools
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

from ..errors import SertError
from ..tokens import eos_token_ids

SECTIONS = ("matmul", "mining", "training", "eval")
EXTRA_SECTIONS = ("dtype", "mining_batch")  # on request (--only): fp32 vs the dtype choice; mining vs batch size
TARGETS = {"mining": 2.5, "training": 1.5, "eval": 3.0}  # issue 5: ours / baseline at least this


# ------------------------------------------------------------------ settings
@dataclasses.dataclass
class BenchSizes:
    mine_questions: int
    mine_batch: int          # questions per batch of ours (x 25 rows)
    mine_tokens: int         # new tokens per path
    train_steps: int
    train_batch: int
    eval_questions: int
    eval_batch: int
    eval_tokens: int
    matmul_n: int
    train_max_length: int = 512   # the naive baseline pads every batch to this (TrainConfig.max_length)
    mine_real: int = 1            # also time both mining arms with EOS allowed (real path lengths); 0: skip
    dtype_eval_tokens: int = 128  # dtype section: new tokens per answer of the untimed quality decode (EOS on)


PRESETS = {
    ("cpu", False): BenchSizes(8, 8, 64, 4, 4, 32, 32, 32, 2048),
    ("cpu", True): BenchSizes(2, 2, 8, 2, 2, 4, 4, 4, 512),
    ("cuda", False): BenchSizes(16, 16, 128, 30, 16, 16, 16, 64, 8192),
    ("cuda", True): BenchSizes(2, 2, 16, 3, 4, 4, 4, 8, 2048),
}


def sizes_for(device: str, quick: bool, overrides: dict | None = None) -> BenchSizes:
    s = copy.copy(PRESETS[("cuda" if device.startswith("cuda") else "cpu", bool(quick))])
    for k, v in (overrides or {}).items():
        if v is not None:
            if k == "mine_real":
                if int(v) not in (0, 1):
                    raise SertError(f"--mine-real: expected 0 or 1, got {v}")
            elif int(v) < 1:
                raise SertError(f"--{k.replace('_', '-')}: expected a positive integer, got {v}")
            setattr(s, k, int(v))
    if s.train_steps < 2:
        raise SertError("--train-steps: expected at least 2")
    return s


# ------------------------------------------------------------------ machine and memory
def machine_info(device: str) -> dict:
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    cpuinfo: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = line.partition(":")
            k = k.strip().lower()
            if k in ("model name", "cpu family", "model", "flags") and k not in cpuinfo:
                cpuinfo[k] = v.strip()
        cpu = cpuinfo.get("model name", cpu)
    except OSError:
        pass
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in cpuinfo.get("flags", "").split()]
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        usable = os.cpu_count()
    info = {"cpu": cpu, "cpu_family_model": f"{cpuinfo.get('cpu family', '?')}/{cpuinfo.get('model', '?')}",
            "cpu_simd": simd, "cpu_cores": os.cpu_count(), "cpu_cores_usable": usable,
            "torch_threads": torch.get_num_threads(), "device": device,
            "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else None,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "platform": platform.platform()}
    try:
        mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()
        info["ram_gib"] = round(int(mem[1]) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    return info


def load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak RSS (and peak CUDA allocation) over a ``with`` block.

    Linux: freed heap memory is returned to the OS (``malloc_trim``) and VmHWM is reset on
    entry through ``/proc/self/clear_refs`` ("5"), so the figure is the process's peak during
    the block. Elsewhere: ``getrusage`` max RSS, which cannot be
    reset (then ``reset`` is False and the figure is the process's lifetime peak).
    """

    def __init__(self, device: str = "cpu"):
        self.cuda = device.startswith("cuda")
        self.reset = False
        self.peak_rss_mb: float | None = None
        self.peak_gpu_mb: float | None = None

    def __enter__(self):
        import gc
        gc.collect()
        try:  # hand memory freed by earlier arms back to the OS, so it is not counted again
            import ctypes
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.reset = True
        except OSError:
            self.reset = False
        if self.cuda:
            import torch
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc):
        hwm = _status_kb("VmHWM") if self.reset else None
        if hwm is None:
            import resource
            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
        self.peak_rss_mb = round(hwm / 1024, 1)
        if self.cuda:
            import torch
            self.peak_gpu_mb = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return False


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch
        torch.cuda.synchronize()


class Timer:
    def __init__(self, device: str):
        self.device = device
        self.s = 0.0

    def __enter__(self):
        _sync(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        _sync(self.device)
        self.s = time.perf_counter() - self.t0
        return False


# ------------------------------------------------------------------ fixed-length generation
@contextlib.contextmanager
def no_eos(model, ids: Sequence[int]):
    """Set the EOS logits to -inf (a forward hook on the output layer): nothing stops early,
    so ours and the baseline generate exactly ``max_new_tokens`` per row."""
    head = model.get_output_embeddings()
    if head is None:
        raise SertError("the model has no output layer to hook; cannot fix the output length")
    ids = list(ids)

    def hook(_mod, _inp, out):
        out[..., ids] = float("-inf")
        return out

    h = head.register_forward_hook(hook)
    try:
        yield
    finally:
        h.remove()


# ------------------------------------------------------------------ FLOPs and matmul
def matmul_params(model) -> int:
    """Weights that take part in a matmul per token: Linear and GPT-2's Conv1D (LM head included)."""
    import torch

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
    import torch

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


# ------------------------------------------------------------------ data
def mining_examples(n: int):
    from ..tasks import get_task
    return get_task("strategyqa").examples("train", n)


def eval_examples(n: int):
    from ..tasks import get_task
    return get_task("strategyqa").examples("test", n)


def distill_pairs() -> list[dict]:
    """Real StrategyQA distillation pairs: the shipped text-davinci-002 Zero-shot-CoT rationales
    (the paper's teacher), correct ones only (the teach stage's default), train split."""
    return [dict(p) for p in _distill_pairs()]


@functools.lru_cache(maxsize=1)
def _distill_pairs() -> tuple[dict, ...]:
    from ..config import TeachConfig
    from ..tasks import get_task
    from ..teach import build_records, resolve_teacher, teacher_rationales
    from ..train import build_pairs

    task = get_task("strategyqa")
    exs = task.examples("train")
    teacher = resolve_teacher(task, "auto")
    with tempfile.TemporaryDirectory() as tmp:
        found, _ = teacher_rationales(task, teacher, exs, TeachConfig(), Path(tmp))
    recs, _ = build_records(exs, found, teacher)
    return tuple(build_pairs("distill", [r for r in recs if r["correct"]]))


# ------------------------------------------------------------------ figures
def figure(section: str, name: str, ours, baseline, unit: str = "", better: str = "higher", note: str = "",
           ratio: float | None = None) -> dict:
    if ratio is None and isinstance(ours, (int, float)) and isinstance(baseline, (int, float)) and baseline:
        ratio = ours / baseline
    return {"section": section, "figure": name, "unit": unit, "ours": ours, "baseline": baseline,
            "ratio": None if ratio is None else round(ratio, 3), "better": better, "note": note}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if v == 0:
            return "0"
        a = abs(v)
        return f"{v:.3g}" if a < 1 else f"{v:.2f}" if a < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def format_table(figs: Sequence[dict]) -> str:
    head = ["section", "figure", "ours", "baseline", "ratio", "baseline is"]
    rows = [[f["section"], f["figure"] + (f" ({f['unit']})" if f["unit"] else ""), _fmt(f["ours"]),
             _fmt(f["baseline"]), ("-" if f["ratio"] is None else f"{f['ratio']:.2f}x"), f["note"]] for f in figs]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


# ------------------------------------------------------------------ mining
def hf_generate_mining(model, tokenizer, examples, new_tokens: int, top_k: int = 10, top_p: float = 0.95,
                       rows: int = 25, seed: int = 0) -> int:
    """The baseline: ``model.generate`` with 25 return sequences, one question at a time.
    Returns the number of generated tokens (EOS and padding excluded)."""
    import torch

    from ..templates import mining_prompt

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
    from ..config import MineConfig
    from ..mine import mine

    cfg = MineConfig(max_new_tokens=new_tokens, batch_questions=batch_questions, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        recs = mine(model, tokenizer, examples, cfg, Path(tmp) / "paths.jsonl", progress=False)
    return sum(r["n_tokens"] for r in recs)


def bench_mining(model, tokenizer, device: str, sizes: BenchSizes, matmul_flops: float | None,
                 ours_fn: Callable = sert_mining, base_fn: Callable = hf_generate_mining) -> tuple[dict, list[dict]]:
    from ..templates import mining_prompt

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


# ------------------------------------------------------------------ training
class FixedPadCollator:
    """The naive baseline: every batch right-padded to one fixed length (labels -100, mask 0)."""

    def __init__(self, pad_id: int, length: int):
        from ..train import PadCollator

        self.inner = PadCollator(pad_id)
        self.length = length
        self.real_tokens = self.padded_tokens = 0
        self.batches: list[tuple[int, int]] = []

    def __call__(self, feats):
        import torch

        b = self.inner(feats)
        n = b["input_ids"].shape[1]
        if n < self.length:
            k = self.length - n
            b["input_ids"] = torch.nn.functional.pad(b["input_ids"], (0, k), value=self.inner.pad_id)
            b["labels"] = torch.nn.functional.pad(b["labels"], (0, k), value=-100)
            b["attention_mask"] = torch.nn.functional.pad(b["attention_mask"], (0, k), value=0)
        real = int(b["attention_mask"].sum())
        self.batches.append((real, b["input_ids"].numel()))
        return b


class CountingCollator:
    """sert's ``PadCollator`` with the per-batch (real, padded) token counts recorded."""

    def __init__(self, pad_id: int, multiple: int = 1):
        from ..train import PadCollator

        self.inner = PadCollator(pad_id, multiple=multiple)
        self.batches: list[tuple[int, int]] = []

    def __call__(self, feats):
        b = self.inner(feats)
        self.batches.append((int(b["attention_mask"].sum()), b["input_ids"].numel()))
        return b


def _training_args(out_dir: str, steps: int, batch: int, grouped: bool, precision: str, device: str, seed: int,
                   log_loss: bool = False):
    import torch
    from transformers import TrainingArguments

    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    kw = {}
    if "train_sampling_strategy" in known:
        kw["train_sampling_strategy"] = "group_by_length" if grouped else "random"
    else:
        kw["group_by_length"] = grouped
    return TrainingArguments(
        **kw, output_dir=out_dir, per_device_train_batch_size=batch, max_steps=steps, learning_rate=3e-4,
        weight_decay=0.0, lr_scheduler_type="constant", seed=seed, data_seed=seed, bf16=precision == "bf16",
        fp16=precision == "fp16", use_cpu=not device.startswith("cuda"), save_strategy="no", report_to="none",
        logging_strategy="steps" if log_loss else "no", logging_steps=1, remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=device.startswith("cuda") and torch.cuda.is_available(), disable_tqdm=True)


def grouped_order(lengths: Sequence[int], batch: int, seed: int, mega_batch_mult: int | None = None) -> list[int]:
    """The example order of transformers' ``LengthGroupedSampler`` (``group_by_length``): random
    megabatches of ``mega_batch_mult x batch`` examples, each sorted by length, the longest batch
    first. ``None``: transformers' default, min(len // (4 x batch), 50)."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    g = torch.Generator()
    g.manual_seed(seed)
    return list(get_length_grouped_indices(list(lengths), batch, mega_batch_mult=mega_batch_mult, generator=g))


def default_mega_batch_mult(n_examples: int, batch: int) -> int:
    return max(1, min(n_examples // (batch * 4), 50))


def epoch_padding(lengths: Sequence[int], order: Sequence[int], batch: int, fixed: int | None = None) -> float:
    """Useful / computed tokens over one epoch in ``order`` (batches padded to their longest, or to ``fixed``)."""
    useful = sum(lengths)
    computed = 0
    for i in range(0, len(order), batch):
        b = [lengths[j] for j in order[i:i + batch]]
        computed += len(b) * (fixed if fixed else max(b))
    return useful / computed


def _grouped_trainer(Trainer, seed: int, mega_batch_mult: int):
    """A Trainer whose sampler is :func:`grouped_order` with a given megabatch size."""
    import torch

    class GroupedTrainer(Trainer):
        def _get_train_sampler(self, *a, **kw):
            ds = self.train_dataset
            order = grouped_order([len(f["input_ids"]) for f in ds], self.args.train_batch_size, seed,
                                  mega_batch_mult)

            class Fixed(torch.utils.data.Sampler):
                def __len__(self):
                    return len(order)

                def __iter__(self):
                    return iter(order)

            return Fixed()

    return GroupedTrainer


def train_arm(model, tokenizer, feats, collator, steps: int, batch: int, grouped: int | bool, precision: str,
              device: str, seed: int = 0, losses: list | None = None) -> dict:
    """Run ``steps`` optimizer steps with the Trainer; time them from the first step's start to
    the last step's end (callbacks), so Trainer set-up and the final save/log are not counted.
    ``losses``: a list that receives every step's training loss (logged each step)."""
    from transformers import PrinterCallback, Trainer, TrainerCallback

    begins: list[float] = []
    ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            _sync(device)
            begins.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            _sync(device)
            ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            if losses is not None and logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    own_attrs = set(model.__dict__)
    with tempfile.TemporaryDirectory() as tmp:
        args = _training_args(tmp, steps, batch, grouped, precision, device, seed, log_loss=losses is not None)
        # grouped: an int = the megabatch multiplier of sert train's sampler on the whole data set
        cls = _grouped_trainer(Trainer, seed, int(grouped)) if grouped else Trainer
        tr = cls(model=model, args=args, data_collator=collator, train_dataset=feats,
                 processing_class=tokenizer, callbacks=[StepClock()])
        tr.remove_callback(PrinterCallback)  # it prints the run's summary dict to stdout
        with PeakMemory(device) as mem:
            tr.train()
        # accelerate leaves the model marked prepared (``_is_accelerate_prepared``) and, for mixed precision,
        # its forward wrapped in autocast: drop what it added, or the next arm would reuse the first arm's
        # precision (a prepared model is not prepared again)
        for k in set(model.__dict__) - own_attrs:
            del model.__dict__[k]
        del tr  # the optimizer state goes with it, before the next arm measures its peak
        import gc
        gc.collect()
    if len(ends) != steps or len(collator.batches) < steps:
        raise SertError(f"training bench: expected {steps} steps, saw {len(ends)} "
                        f"({len(collator.batches)} batches collated)")
    real = sum(r for r, _ in collator.batches[:steps])
    padded = sum(p for _, p in collator.batches[:steps])
    secs = ends[-1] - begins[0]
    return {"steps": steps, "seconds": round(secs, 3), "useful_tokens": real, "padded_tokens": padded,
            "useful_tokens_per_s": round(real / secs, 1), "padding_efficiency": round(real / padded, 3),
            "peak_rss_mb": mem.peak_rss_mb, "peak_gpu_mb": mem.peak_gpu_mb, "rss_reset": mem.reset,
            **shape_step_times([e - b for b, e in zip(begins, ends)], [p for _, p in collator.batches[:steps]])}


_SEEN_SHAPES: set = set()  # batch shapes (padded token count at a fixed batch) any training arm of this process ran


def shape_step_times(step_s: Sequence[float], shapes: Sequence, seen: set | None = None) -> dict:
    """Mean step time of steps whose batch shape this process had not run before vs the others:
    the signature of kernels that set up per input shape (notes/gpu_training.md)."""
    seen = _SEEN_SHAPES if seen is None else seen
    first, again = [], []
    for t, shape in zip(step_s, shapes):
        (again if shape in seen else first).append(t)
        seen.add(shape)
    mean = lambda xs: round(sum(xs) / len(xs), 4) if xs else None  # noqa: E731
    return {"first_shape_steps": len(first), "first_shape_step_s": mean(first), "seen_shape_step_s": mean(again)}


def bench_training(model, tokenizer, device: str, sizes: BenchSizes, precision: str,
                   seed: int = 0, with_dynamic: bool = True) -> tuple[dict, list[dict]]:
    """``model``: fp32 weights (mixed precision through the Trainer, as ``sert train`` does).

    Arms, each from the same initial weights over the same ``steps x batch`` examples (one
    epoch, so every arm trains on exactly the same tokens): ours = ``PadCollator`` + length
    grouping; naive = every batch padded to ``max_length`` (``TrainConfig.max_length``, 512),
    random order; dynamic = ``PadCollator``, random order (what grouping adds by itself).
    See the module doc for the grouping of the small sample.
    """
    from ..train import tokenize_pairs

    n = sizes.train_steps * sizes.train_batch
    L = sizes.train_max_length
    pairs = distill_pairs()
    if len(pairs) < n:
        raise SertError(f"training bench: {n} examples needed, {len(pairs)} available; fewer steps or a smaller batch")
    all_feats, truncated = tokenize_pairs(pairs, tokenizer, L)
    for f in all_feats:
        f.pop("weight", None)
    import random
    pick = sorted(random.Random(seed).sample(range(len(all_feats)), n))  # a representative subset
    feats = [all_feats[i] for i in pick]
    all_lens = [len(f["input_ids"]) for f in all_feats]
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.config.use_cache = False
    lens = [len(f["input_ids"]) for f in feats]
    res: dict = {"examples": n, "steps": sizes.train_steps, "batch": sizes.train_batch, "precision": precision,
                 "max_length": L, "truncated": truncated, "mean_length": round(sum(lens) / n, 1),
                 "longest": max(lens), "load_before": load_avg()}
    # one epoch of the whole set, by the samplers themselves (no training, no timing)
    import torch
    B = sizes.train_batch
    rnd = torch.randperm(len(all_lens), generator=torch.Generator().manual_seed(seed)).tolist()
    res["epoch"] = {"examples": len(all_lens), "batch": B,
                    "ours": epoch_padding(all_lens, grouped_order(all_lens, B, seed), B),  # HF's default
                    "naive": epoch_padding(all_lens, rnd, B, fixed=L),
                    "dynamic": epoch_padding(all_lens, rnd, B)}
    pad = tokenizer.pad_token_id

    # warm-up (kernels, allocator): one step, then back to the initial weights
    train_arm(model, tokenizer, feats[:sizes.train_batch], CountingCollator(pad), 1, sizes.train_batch, False,
              precision, device, seed)
    mult = default_mega_batch_mult(len(all_feats), sizes.train_batch)   # as sert train on the whole set
    res["mega_batch_mult"] = mult
    from ..train import pad_multiple

    pm = pad_multiple(device)  # as sert train pads on this device
    res["pad_multiple"] = pm
    arms = {"ours": (lambda: CountingCollator(pad, pm), mult), "naive": (lambda: FixedPadCollator(pad, L), False)}
    if with_dynamic:
        arms["dynamic"] = (lambda: CountingCollator(pad, pm), False)
    # On CUDA every arm first runs once untimed: kernels and their plans (e.g. cuDNN attention) are set
    # up per input shape on first sight, which would charge whichever variable-length arm runs first.
    # On CPU there is no such per-shape set-up, and a second pass would double the section's time.
    warm = device.startswith("cuda")
    res["untimed_pass_per_arm"] = warm
    for name, (make, grouped) in arms.items():
        if warm:
            model.load_state_dict(init)
            res[name + "_untimed"] = train_arm(model, tokenizer, feats, make(), sizes.train_steps, sizes.train_batch,
                                               grouped, precision, device, seed)
        model.load_state_dict(init)
        res[name] = train_arm(model, tokenizer, feats, make(), sizes.train_steps, sizes.train_batch, grouped,
                              precision, device, seed)
    model.load_state_dict(init)
    res["load_after"] = load_avg()
    o, b = res["ours"], res["naive"]
    if len({res[a]["useful_tokens"] for a in arms}) != 1:
        raise SertError("training bench: the arms trained on different tokens")
    naive = f"padded to max_length {L}, random order"
    figs = [figure("training", f"useful tok/s, {sizes.train_steps} steps x batch {sizes.train_batch}",
                   o["useful_tokens_per_s"], b["useful_tokens_per_s"], "tok/s", note=naive)]
    if with_dynamic:
        d = res["dynamic"]
        figs.append(figure("training", "useful tok/s (length grouping alone)", o["useful_tokens_per_s"],
                           d["useful_tokens_per_s"], "tok/s", note="dynamic padding, random order"))
    figs.append(figure("training", "padding efficiency (useful / computed tokens)", o["padding_efficiency"],
                       b["padding_efficiency"], note=naive))
    if with_dynamic:
        figs.append(figure("training", "padding efficiency (length grouping alone)", o["padding_efficiency"],
                           res["dynamic"]["padding_efficiency"], note="dynamic padding, random order"))
    ep = res["epoch"]
    figs.append(figure("training", f"padding efficiency, 1 epoch of all {ep['examples']} targets (computed)",
                       round(ep["ours"], 3), round(ep["naive"], 3), note=naive + "; sert's sampler as in sert train"))
    figs.append(figure("training", "padding efficiency, 1 epoch (computed, grouping alone)", round(ep["ours"], 3),
                       round(ep["dynamic"], 3), note="dynamic padding, random order"))
    first = res.get("ours_untimed", o)  # where shapes were first seen
    if first["first_shape_step_s"] and first["seen_shape_step_s"]:
        figs.append(figure("training", f"step time, first-seen batch shape ({first['first_shape_steps']} steps) "
                                       "vs seen before (ours)", round(1e3 * first["first_shape_step_s"], 1),
                           round(1e3 * first["seen_shape_step_s"], 1), "ms", better="lower",
                           note="steps whose shape ran before in this process"))
    figs.append(figure("training", "peak RSS", o["peak_rss_mb"], b["peak_rss_mb"], "MB", better="lower", note=naive))
    if o["peak_gpu_mb"] is not None:
        figs.append(figure("training", "peak GPU memory", o["peak_gpu_mb"], b["peak_gpu_mb"], "MB", better="lower",
                           note=naive))
    return res, figs


# ------------------------------------------------------------------ evaluation
def compare_predictions(a: Sequence[dict], b: Sequence[dict]) -> dict:
    """Share of prompts whose generated token ids are identical in ``a`` and ``b``."""
    if len(a) != len(b):
        raise SertError(f"eval bench: {len(a)} vs {len(b)} predictions")
    diff = [i for i, (x, y) in enumerate(zip(a, b)) if list(x["token_ids"]) != list(y["token_ids"])]
    return {"n": len(a), "identical": len(a) - len(diff), "share_identical": (len(a) - len(diff)) / max(1, len(a)),
            "mismatched_indices": diff[:20]}


def bench_eval(model, tokenizer, device: str, sizes: BenchSizes, generate: Callable | None = None
               ) -> tuple[dict, list[dict]]:
    from ..templates import train_prompt

    if generate is None:
        from ..evaluate import generate_greedy as generate
    exs = eval_examples(sizes.eval_questions)
    prompts = [train_prompt(e.question) for e in exs]
    T = sizes.eval_tokens
    kw = dict(max_new_tokens=T, progress=False, stop_strings=None)
    res: dict = {"questions": len(prompts), "batch": sizes.eval_batch, "new_tokens": T, "load_before": load_avg()}
    with no_eos(model, eos_token_ids(model, tokenizer)):
        generate(model, tokenizer, prompts[:2], batch_size=2, **dict(kw, max_new_tokens=min(T, 4)))  # warm-up
        generate(model, tokenizer, prompts[:1], batch_size=1, **dict(kw, max_new_tokens=min(T, 4)))
        with PeakMemory(device) as mo, Timer(device) as to:
            ours = generate(model, tokenizer, prompts, batch_size=sizes.eval_batch, **kw)
        with PeakMemory(device) as mb, Timer(device) as tb:
            base = generate(model, tokenizer, prompts, batch_size=1, **kw)
    n_o = sum(len(r["token_ids"]) for r in ours)
    n_b = sum(len(r["token_ids"]) for r in base)
    if n_o != len(prompts) * T or n_b != len(prompts) * T:
        raise SertError(f"eval bench: generated {n_o} (batched) and {n_b} (batch 1) tokens, expected "
                        f"{len(prompts) * T} each; the fixed-length setup failed")
    cmp = compare_predictions(ours, base)
    res.update({"tokens": n_o, "ours_s": round(to.s, 3), "baseline_s": round(tb.s, 3),
                "ours_tokens_per_s": round(n_o / to.s, 1), "baseline_tokens_per_s": round(n_b / tb.s, 1),
                "ours_peak_rss_mb": mo.peak_rss_mb, "baseline_peak_rss_mb": mb.peak_rss_mb, **cmp,
                "load_after": load_avg()})
    figs = [figure("eval", f"greedy tok/s, {len(prompts)} q x {T} tok", res["ours_tokens_per_s"],
                   res["baseline_tokens_per_s"], "tok/s", note="generate_greedy at batch size 1"),
            figure("eval", "share of predictions identical to batch 1", round(cmp["share_identical"], 4), 1.0,
                   note="batch 1 (reference)")]
    return res, figs


# ------------------------------------------------------------------ mining vs batch size
def batch_sweep(n_questions: int) -> list[int]:
    """1, 2, 4, ... up to ``n_questions`` (which is always included)."""
    out, b = [], 1
    while b < n_questions:
        out.append(b)
        b *= 2
    return out + [n_questions]


def bench_mining_batch(load: Callable[[], tuple], device: str, sizes: BenchSizes) -> tuple[dict, list[dict]]:
    """Mining tokens/s (fixed length, EOS masked) of ``sert.mine.mine`` at batch_questions 1, 2, 4, ...
    ``--mine-questions`` on the same questions; also what ``batch_questions: auto`` picks here."""
    from ..config import MineConfig
    from ..mine import questions_per_batch

    model, tok, _ = load()
    exs = mining_examples(sizes.mine_questions)
    T = sizes.mine_tokens
    res: dict = {"questions": len(exs), "new_tokens": T, "load_before": load_avg(), "tokens_per_s": {},
                 "auto": questions_per_batch(MineConfig(max_new_tokens=T), model, tok, exs)}
    with no_eos(model, eos_token_ids(model, tok)):
        sert_mining(model, tok, exs[:1], min(T, 4), 1)                            # warm-up
        for b in batch_sweep(len(exs)):
            with Timer(device) as t:
                n = sert_mining(model, tok, exs, T, b)
            res["tokens_per_s"][b] = round(n / t.s, 1)
    res["load_after"] = load_avg()
    one = res["tokens_per_s"][1]
    figs = [figure("mining_batch", f"sampled tok/s at batch_questions {b} ({25 * b} rows), {len(exs)} q x {T} tok",
                   v, one, "tok/s", note=f"batch_questions 1 (same run); auto picks {res['auto']} here")
            for b, v in res["tokens_per_s"].items()]
    del model
    return res, figs


# ------------------------------------------------------------------ dtype: fp32 vs the choice
PRECISION = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def bench_dtype(load: Callable[[str], tuple], device: str, dtype: str, sizes: BenchSizes, seed: int = 0
                ) -> tuple[dict, list[dict]]:
    """fp32 against ``dtype`` (the ``--dtype auto`` choice) in one run: mining and greedy decoding
    with the model's weights in each dtype; training from the same fp32 weights, in fp32 and under
    autocast (as ``sert train``). Also their quality: the share of greedy predictions identical and
    the accuracy of each (same checkpoint, EOS on, untimed), and the training loss of each over
    the same steps and data. ``load(dtype)`` returns ``(model, tokenizer)`` with that weight dtype."""
    from ..evaluate import generate_greedy, score
    from ..templates import train_prompt

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
    import random

    from ..train import pad_multiple, tokenize_pairs

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


# ------------------------------------------------------------------ driver
def targets_met(figs: Sequence[dict]) -> dict:
    out = {}
    first = {}
    for f in figs:
        if f["unit"] == "tok/s" and f["section"] not in first:
            first[f["section"]] = f
    for sec, target in TARGETS.items():
        f = first.get(sec)
        if f is None:
            continue
        met = f["ratio"] is not None and f["ratio"] >= target
        if sec == "eval":
            share = next((g["ours"] for g in figs if g["section"] == "eval" and g["figure"].startswith("share")), None)
            met = met and share == 1.0
        out[sec] = {"target_ratio": target, "ratio": f["ratio"], "met": met}
    return out


def run_bench(model_name: str = "random:smollm2-135m", device: str | None = "auto", dtype: str | None = "auto",
              only: Sequence[str] = SECTIONS, quick: bool = False, out: str | None = None,
              overrides: dict | None = None, threads: int | None = None, seed: int = 0,
              log: Callable[[str], None] = print) -> dict:
    import torch

    from ..models import load_model, pick_placement
    from ..train import training_precision
    from ..config import TrainConfig

    bad = [s for s in only if s not in SECTIONS + EXTRA_SECTIONS]
    if bad:
        raise SertError(f"--only: unknown section(s) {', '.join(bad)}; "
                        f"expected some of {', '.join(SECTIONS + EXTRA_SECTIONS)}")
    if threads:
        torch.set_num_threads(threads)
    place = pick_placement(device, dtype)
    sizes = sizes_for(place.device, quick, overrides)
    result = {"command": "sert bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else None,
              "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "model": model_name, "placement": dataclasses.asdict(place), "quick": quick,
              "sizes": dataclasses.asdict(sizes), "machine": machine_info(place.device), "load_start": load_avg(),
              "reference": {}, "sections": {}, "figures": []}

    def save():
        result["targets"] = targets_met(result["figures"])
        if out:
            p = Path(out)
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(p.name + ".tmp")
            tmp.write_text(json.dumps(result, indent=2, default=str))
            os.replace(tmp, p)

    m = result["machine"]
    log(f"[bench] {model_name} on {place.device}/{place.dtype}; {m['gpu'] or m['cpu']}; "
        f"{m['cpu_cores_usable']} cores, {m['torch_threads']} torch threads; load {result['load_start']}")
    mm = None
    if "matmul" in only or "mining" in only:
        mm_dtype = place.dtype  # the dtype mining runs in (bf16 on a CPU where --dtype auto chose it)
        mm = bench_matmul(place.device, mm_dtype, sizes.matmul_n)
        result["reference"]["matmul"] = mm
        log(f"[bench] matmul {mm['n']}^3 {mm['dtype']}: {mm['gflops']} GFLOP/s")
        save()
    t_all = time.perf_counter()

    def section(name: str, fn) -> None:
        t0 = time.perf_counter()
        res, figs = fn()
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        result["sections"][name] = res
        result["figures"] += figs
        log(format_table(figs))
        save()

    def release() -> None:  # after `del model`: give the memory back before the next section
        import gc
        gc.collect()
        if place.device.startswith("cuda"):
            torch.cuda.empty_cache()

    # order: mining, training, eval (the GPU check cares most about the first two); one model at a time
    if "mining" in only:
        model, tok, _ = load_model(model_name, place.device, place.dtype)
        section("mining", lambda: bench_mining(model, tok, place.device, sizes, mm["flops_per_s"] if mm else None))
        del model
        release()
    if "training" in only:
        model, tok, _ = load_model(model_name, place.device, "float32")  # fp32 master weights, as sert train
        model.train()
        precision = training_precision(TrainConfig(), place.device, place.dtype)[0]
        section("training", lambda: bench_training(model, tok, place.device, sizes, precision, seed=seed))
        del model
        release()
    if "eval" in only:
        model, tok, _ = load_model(model_name, place.device, place.dtype)
        section("eval", lambda: bench_eval(model, tok, place.device, sizes))
        del model
        release()
    if "dtype" in only:
        section("dtype", lambda: dtype_section(model_name, place, sizes, seed))
        release()
    if "mining_batch" in only:
        section("mining_batch", lambda: bench_mining_batch(lambda: load_model(model_name, place.device, place.dtype),
                                                           place.device, sizes))
        release()
    result["wall_s"] = round(time.perf_counter() - t_all, 1)
    result["load_end"] = load_avg()
    save()
    return result


def dtype_section(model_name: str, place, sizes: BenchSizes, seed: int = 0) -> tuple[dict, list[dict]]:
    """:func:`bench_dtype` for the chosen dtype, with the matmul of each dtype; nothing to compare
    where the choice is fp32."""
    from ..models import load_model

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


def report(result: dict) -> str:
    """The whole table with the machine line, as printed at the end and pasted into the README."""
    m = result["machine"]
    where = m["gpu"] or f"{m['cpu']} ({', '.join(m.get('cpu_simd') or ['no avx2'])})"
    pl = result["placement"]
    lines = [f"`{result.get('command') or 'sert bench'}` — {result['model']}, {pl['device']}/{pl['dtype']} "
             f"({pl.get('reason', '')}), {where}, {m['cpu_cores_usable']} cores / {m['torch_threads']} torch "
             f"threads, torch {m['torch']}, transformers {m['transformers']}, {result['date']}, "
             f"load avg {result['load_start']} -> {result.get('load_end')}", ""]
    if "matmul" in result["reference"]:
        mm = result["reference"]["matmul"]
        lines.append(f"Reference matmul ({mm['n']}^3, {mm['dtype']}): {mm['gflops']} GFLOP/s.")
        lines.append("")
    lines.append(format_table(result["figures"]))
    t = result.get("targets") or {}
    if t:
        lines.append("")
        lines.append("Targets: " + "; ".join(f"{k} {v['ratio']}x vs {v['target_ratio']}x: "
                                            f"{'met' if v['met'] else 'NOT met'}" for k, v in t.items()))
    return "\n".join(lines)
