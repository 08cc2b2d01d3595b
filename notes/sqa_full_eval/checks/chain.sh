#!/bin/bash
# After the StrategyQA run: the fp32 and plain-loop checks of SERT (lowest PPL)+RD, then the CommonsenseQA run.
cd /work/main
echo -15 > /proc/$$/autogroup 2>/dev/null
RUN=/work/runs/strategyqa_smollm2_full
while pgrep -f "sert run cpu/strategyqa_smollm2_full" >/dev/null; do sleep 30; done
tail -1 /work/runs/full_run.times | grep -q "end rc=0" || { echo "sqa run did not end with rc 0" >> /work/runs/chain.log; exit 1; }
echo "sqa done $(date -u +%FT%T)" >> /work/runs/chain.log
if [ ! -f $RUN/eval_fp32/sert_ppl_rd/metrics.json ]; then
  /usr/bin/time -f "%e s wall" python -m sert eval --model $RUN/arms/sert_ppl_rd/final --task strategyqa --config $RUN/config.yaml \
     --dtype float32 --quiet --out $RUN/eval_fp32/sert_ppl_rd > /work/checks/fp32full_sert_ppl_rd.log 2>&1
fi
echo "fp32 done $(date -u +%FT%T)" >> /work/runs/chain.log
if [ ! -s /work/checks/plain_sert_ppl_rd.json ]; then
  /usr/bin/time -f "%e s wall" python bench/check_eval_plain.py $RUN/eval_fp32/sert_ppl_rd --limit 100 --dtype float32 \
     > /work/checks/plain_sert_ppl_rd.json.tmp 2> /work/checks/plain_sert_ppl_rd.err && mv /work/checks/plain_sert_ppl_rd.json.tmp /work/checks/plain_sert_ppl_rd.json
fi
echo "plain done $(date -u +%FT%T)" >> /work/runs/chain.log
git -C /work/exp checkout -q --detach main && echo "exp at $(git -C /work/exp log --oneline -1)" >> /work/runs/chain.log
bash /work/runs/cqa_run.sh
echo "cqa ended $(date -u +%FT%T)" >> /work/runs/chain.log
