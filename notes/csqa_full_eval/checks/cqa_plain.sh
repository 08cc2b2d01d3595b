#!/bin/bash
# Independent check of CommonsenseQA evaluations (issue 13): sert eval fp32 on the first LIMIT (default 100) test
# questions, then bench/check_eval_plain.py (plain transformers loop, batch 1) on the same ones; run alone, the run paused.
cd /work/main
RUN=/work/runs/commonsense_qa_smollm2_full
OUT=/work/checks/cqa
mkdir -p $OUT
echo -15 > /proc/$$/autogroup 2>/dev/null
pkill -STOP -f "sert run cpu/commonsense_qa"; echo "paused(cqa_plain $*) $(date -u +%FT%T) $(date +%s)" >> /work/checks/times
for arm in "$@"; do
  B=$(python -c "import json;print(json.load(open('$RUN/eval/$arm/metrics.json'))['max_new_tokens'])")
  /usr/bin/time -f "%e s wall" python -m sert eval --model $RUN/arms/$arm/final --task commonsense_qa --config $RUN/config.yaml \
     --dtype float32 --limit ${LIMIT:-100} --max-new-tokens $B --quiet --out $OUT/fp32_$arm > $OUT/fp32_$arm.log 2>&1
  /usr/bin/time -f "%e s wall" python bench/check_eval_plain.py $OUT/fp32_$arm --limit ${LIMIT:-100} --dtype float32 > $OUT/plain_$arm.json 2> $OUT/plain_$arm.err
done
pkill -CONT -f "sert run cpu/commonsense_qa"; echo "resumed(cqa_plain) $(date -u +%FT%T) $(date +%s)" >> /work/checks/times
