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

The package, one module per section of the benchmark: ``settings`` (sections, sizes, targets),
``machine`` (machine info, timer, peak memory), ``fixed_length`` (EOS masked), ``flops`` (model
FLOPs, matmul reference), ``data`` (the inputs), ``figures`` (figure rows, the table), ``mining``,
``training``, ``evaluation``, ``mining_batch``, ``dtype`` and ``driver`` (:func:`run_bench`,
:func:`report`). torch and transformers are imported inside the functions that use them: ``sert
--help`` imports this package (for this text and the presets) and must not wait for torch.
"""
from __future__ import annotations

from .data import distill_pairs, eval_examples, mining_examples
from .driver import report, run_bench, targets_met
from .dtype import PRECISION, bench_dtype, dtype_section
from .evaluation import bench_eval, compare_predictions
from .figures import figure, format_table
from .fixed_length import no_eos
from .flops import bench_matmul, matmul_params, mining_flops
from .machine import PeakMemory, Timer, load_avg, machine_info, sync
from .mining import bench_mining, hf_generate_mining, sert_mining
from .mining_batch import batch_sweep, bench_mining_batch
from .settings import EXTRA_SECTIONS, PRESETS, SECTIONS, TARGETS, BenchSizes, sizes_for
from .training import (CountingCollator, FixedPadCollator, bench_training, default_mega_batch_mult, epoch_padding,
                       grouped_order, shape_step_times, train_arm)

__all__ = ["BenchSizes", "CountingCollator", "EXTRA_SECTIONS", "FixedPadCollator", "PRECISION", "PRESETS", "PeakMemory",
           "SECTIONS", "TARGETS", "Timer", "batch_sweep", "bench_dtype", "bench_eval", "bench_matmul", "bench_mining",
           "bench_mining_batch", "bench_training", "compare_predictions", "default_mega_batch_mult", "distill_pairs",
           "dtype_section", "epoch_padding", "eval_examples", "figure", "format_table", "grouped_order",
           "hf_generate_mining", "load_avg", "machine_info", "matmul_params", "mining_examples", "mining_flops",
           "no_eos", "report", "run_bench", "sert_mining", "shape_step_times", "sizes_for", "sync", "targets_met",
           "train_arm"]
