"""Training: sert's collator and length grouping vs naive padding to ``max_length`` in random order."""
from __future__ import annotations

import dataclasses
import gc
import random
import tempfile
import time
from typing import Sequence

from ...errors import SertError
from ...train import PadCollator, pad_multiple, tokenize_pairs
from .data import distill_pairs
from .figures import figure
from .machine import PeakMemory, load_avg, sync
from .settings import BenchSizes


class FixedPadCollator:
    """The naive baseline: every batch right-padded to one fixed length (labels -100, mask 0)."""

    def __init__(self, pad_id: int, length: int):
        self.inner = PadCollator(pad_id)
        self.length = length
        self.real_tokens = self.padded_tokens = 0
        self.batches: list[tuple[int, int]] = []

    def __call__(self, feats):
        import torch  # lazy: start-up time (package doc)

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
        self.inner = PadCollator(pad_id, multiple=multiple)
        self.batches: list[tuple[int, int]] = []

    def __call__(self, feats):
        b = self.inner(feats)
        self.batches.append((int(b["attention_mask"].sum()), b["input_ids"].numel()))
        return b


def _training_args(out_dir: str, steps: int, batch: int, grouped: bool, precision: str, device: str, seed: int,
                   log_loss: bool = False):
    import torch  # lazy: start-up time (package doc)
    from transformers import TrainingArguments  # lazy: start-up time (package doc)

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
    import torch  # lazy: start-up time (package doc)
    from transformers.trainer_pt_utils import get_length_grouped_indices  # lazy: start-up time (package doc)

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
    import torch  # lazy: start-up time (package doc)

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
    from transformers import PrinterCallback, Trainer, TrainerCallback  # lazy: start-up time (package doc)

    begins: list[float] = []
    ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            sync(device)
            begins.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            sync(device)
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
    n = sizes.train_steps * sizes.train_batch
    L = sizes.train_max_length
    all_feats, feats, truncated = training_sample(tokenizer, n, L, seed)
    all_lens = [len(f["input_ids"]) for f in all_feats]
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.config.use_cache = False
    lens = [len(f["input_ids"]) for f in feats]
    res: dict = {"examples": n, "steps": sizes.train_steps, "batch": sizes.train_batch, "precision": precision,
                 "max_length": L, "truncated": truncated, "mean_length": round(sum(lens) / n, 1),
                 "longest": max(lens), "load_before": load_avg()}
    res["epoch"] = epoch_efficiency(all_lens, sizes.train_batch, L, seed)
    pad = tokenizer.pad_token_id
    # warm-up (kernels, allocator): one step, then back to the initial weights
    train_arm(model, tokenizer, feats[:sizes.train_batch], CountingCollator(pad), 1, sizes.train_batch, False,
              precision, device, seed)
    mult = default_mega_batch_mult(len(all_feats), sizes.train_batch)   # as sert train on the whole set
    res["mega_batch_mult"] = mult
    pm = pad_multiple(device)  # as sert train pads on this device
    res["pad_multiple"] = pm
    arms = {"ours": (lambda: CountingCollator(pad, pm), mult), "naive": (lambda: FixedPadCollator(pad, L), False)}
    if with_dynamic:
        arms["dynamic"] = (lambda: CountingCollator(pad, pm), False)
    run_training_arms(model, tokenizer, feats, arms, init, sizes, precision, device, seed, res)
    res["load_after"] = load_avg()
    if len({res[a]["useful_tokens"] for a in arms}) != 1:
        raise SertError("training bench: the arms trained on different tokens")
    return res, training_figures(res, sizes, with_dynamic)


def training_sample(tokenizer, n: int, max_length: int, seed: int) -> tuple[list[dict], list[dict], int]:
    """All distillation targets tokenized (weights dropped), a seeded representative subset of ``n``
    of them in their order, and how many were truncated."""
    pairs = distill_pairs()
    if len(pairs) < n:
        raise SertError(f"training bench: {n} examples needed, {len(pairs)} available; fewer steps or a smaller batch")
    all_feats, truncated = tokenize_pairs(pairs, tokenizer, max_length)
    for f in all_feats:
        f.pop("weight", None)
    pick = sorted(random.Random(seed).sample(range(len(all_feats)), n))  # a representative subset
    return all_feats, [all_feats[i] for i in pick], truncated


def epoch_efficiency(all_lens: Sequence[int], batch: int, max_length: int, seed: int) -> dict:
    """One epoch of the whole set, by the samplers themselves (no training, no timing)."""
    import torch  # lazy: start-up time (package doc)

    rnd = torch.randperm(len(all_lens), generator=torch.Generator().manual_seed(seed)).tolist()
    return {"examples": len(all_lens), "batch": batch,
            "ours": epoch_padding(all_lens, grouped_order(all_lens, batch, seed), batch),  # HF's default
            "naive": epoch_padding(all_lens, rnd, batch, fixed=max_length),
            "dynamic": epoch_padding(all_lens, rnd, batch)}


def run_training_arms(model, tokenizer, feats, arms: dict, init: dict, sizes: BenchSizes, precision: str,
                      device: str, seed: int, res: dict) -> None:
    """Each arm (``name: (make collator, grouped)``) from the initial weights, its figures into ``res``;
    the model is left with the initial weights."""
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


def training_figures(res: dict, sizes: BenchSizes, with_dynamic: bool) -> list[dict]:
    o, b = res["ours"], res["naive"]
    naive = f"padded to max_length {sizes.train_max_length}, random order"
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
    return figs
