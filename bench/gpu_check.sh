#!/usr/bin/env bash
# Issue 5, GPU check: `sert bench` on random:smollm2-135m and random:gpt2-large (the paper's
# largest student), bf16, GPU-sized batches. Every figure is printed beside its baseline
# measured in the same run, and written as JSON to $OUT/. Budget: < 6 minutes in all (each
# model run is capped by `timeout`; a run cut short keeps the sections it finished, since the
# JSON is rewritten after every section).
#
#   bash bench/gpu_check.sh                      # from the repository root, on a CUDA machine
#
# Needs torch, transformers, accelerate, peft; no install of sert (PYTHONPATH=src), no network
# (random-weight models built from the shipped config + tokenizer; throughput does not depend
# on weight values). Environment:
#   OUT=DIR            results (default ./bench_out)
#   DEVICE=cuda|cpu    (default cuda)
#   QUICK=1            tiny sizes: a dry run of this script's logic (e.g. on a CPU box)
#   LARGE=MODEL        the second model (default random:gpt2-large; LARGE=none: skip it, ~6 min in all)
#
# Issue 11 (notes/gpu_training.md): sert now takes cuDNN out of attention on CUDA (it builds a plan per new
# input shape). The smollm2 run measures the fix; the "before" run repeats its training section with
# SERT_CUDNN_SDPA=1 (cuDNN kept, as in the 0.45x run); both print the step time of first-seen batch shapes
# vs shapes seen before. The "mining_batch" run gives mining tok/s against batch_questions and what
# batch_questions: auto picks from free memory.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_out}
DEVICE=${DEVICE:-cuda}
LARGE=${LARGE:-random:gpt2-large}
mkdir -p "$OUT"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
LOG="$OUT/gpu_check.log"
: > "$LOG"
say() { echo "$@" | tee -a "$LOG"; }

if [ "${QUICK:-0}" = 1 ]; then
  SMALL_SIZES=(--quick)
  LARGE_SIZES=(--quick)
  BEFORE_SIZES=(--quick)
  SWEEP_SIZES=(--quick --mine-questions 4)
  CAP_SMALL=900; CAP_LARGE=900; CAP_BEFORE=900; CAP_SWEEP=900
else
  # mining: 16 questions x 25 rows x 128 new tokens (ours: one batch of 400 rows; baseline: 16 generate calls)
  # training: 24 (gpt2-large: 16) steps x batch 16 of real StrategyQA distillation targets, 3 arms,
  #           on CUDA each run once untimed before its timed pass
  # eval: 16 test questions x 64 tokens, batch 16 vs batch 1
  SMALL_SIZES=(--mine-questions 16 --mine-batch 16 --mine-tokens 128 --train-steps 24 --train-batch 16
               --eval-questions 16 --eval-batch 16 --eval-tokens 64 --matmul-n 8192)
  LARGE_SIZES=(--mine-questions 16 --mine-batch 16 --mine-tokens 128 --train-steps 16 --train-batch 16
               --matmul-n 8192)
  BEFORE_SIZES=(--train-steps 24 --train-batch 16)
  SWEEP_SIZES=(--mine-questions 16 --mine-tokens 64)    # batch_questions 1, 2, 4, 8, 16
  CAP_SMALL=190; CAP_LARGE=150; CAP_BEFORE=100; CAP_SWEEP=90
fi

say "[gpu_check] $(date -Is) host $(hostname) device=$DEVICE quick=${QUICK:-0}"
(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || true) | tee -a "$LOG"
python - <<'EOF' 2>&1 | tee -a "$LOG"
import torch, transformers
print(f"[gpu_check] torch {torch.__version__} transformers {transformers.__version__} "
      f"cuda {torch.cuda.is_available()} {torch.cuda.get_device_name(0) if torch.cuda.is_available() else ''}")
EOF

if [ "$DEVICE" = cuda ]; then  # per-shape attention set-up? (see bench/sdpa_shapes.py)
  timeout 60 python bench/sdpa_shapes.py 2>&1 | tee -a "$LOG"
fi

run() {  # name cap args...
  local name=$1 cap=$2; shift 2
  local t0=$SECONDS
  say "[gpu_check] ---- $name (cap ${cap}s)"
  timeout -k 10 "$cap" python -m sert bench --device "$DEVICE" --dtype auto --out "$OUT/bench_$name.json" "$@" \
    2>&1 | tee -a "$LOG"
  say "[gpu_check] $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0))s -> $OUT/bench_$name.json"
}

run smollm2-135m "$CAP_SMALL" --model random:smollm2-135m "${SMALL_SIZES[@]}"
SERT_CUDNN_SDPA=1 run smollm2-135m_cudnn_before "$CAP_BEFORE" --model random:smollm2-135m --only training \
  "${BEFORE_SIZES[@]}"
run smollm2-135m_mining_batch "$CAP_SWEEP" --model random:smollm2-135m --only mining_batch "${SWEEP_SIZES[@]}"
if [ "$LARGE" != none ]; then
  run "${LARGE#random:}" "$CAP_LARGE" --model "$LARGE" --only matmul,mining,training "${LARGE_SIZES[@]}"
fi
say "[gpu_check] done in ${SECONDS}s; files: $(ls "$OUT" | tr '\n' ' ')"
