#!/bin/bash
# every paired row of the README's CommonsenseQA table, recomputed by indep_paired.py (no sert import)
R=${1:-/work/runs/commonsense_qa_smollm2_full}/eval
H=$(dirname "$0")
P="python $H/indep_paired.py"
for pair in "rd finetune" "sert_rd rd" "sert finetune" "sert_ac finetune" "sert_ac_rd rd" "sert_ppl finetune" "sert_ppl_rd rd" "sert_rd-s43 rd-s43" "sert-s43 finetune-s43" "rd-s43 finetune-s43"; do
  set -- $pair
  [ -f $R/$1/metrics.json ] && [ -f $R/$2/metrics.json ] && echo "$1 vs $2: $($P $R/$1 $R/$2)"
done
[ -f $R/sert_rd-s43/metrics.json ] && echo "sert_rd vs rd pooled 42,43: $(python $H/indep_pooled.py $R/sert_rd $R/rd $R/sert_rd-s43 $R/rd-s43)"
[ -f $R/sert-s43/metrics.json ] && echo "sert vs finetune pooled 42,43: $(python $H/indep_pooled.py $R/sert $R/finetune $R/sert-s43 $R/finetune-s43)"
[ -f $R/finetune-s43/metrics.json ] && echo "rd vs finetune pooled 42,43: $(python $H/indep_pooled.py $R/rd $R/finetune $R/rd-s43 $R/finetune-s43)"
true
