#!/bin/bash
# every paired row of the README's CommonsenseQA table, recomputed by indep_paired.py, and every pooled row by
# indep_pooled.py (neither imports sert)
R=${1:?usage: cqa_indep_all.sh RUN_DIR}/eval
H=$(dirname "$0")
P="python $H/indep_paired.py"
for pair in "rd finetune" "sert_rd rd" "sert finetune" "sert_ac finetune" "sert_ac_rd rd" "sert_ppl finetune" "sert_ppl_rd rd" "sert_rd-s43 rd-s43" "sert-s43 finetune-s43" "rd-s43 finetune-s43"; do
  set -- $pair
  [ -f $R/$1/metrics.json ] && [ -f $R/$2/metrics.json ] && echo "$1 vs $2: $($P $R/$1 $R/$2)"
done
for pair in "sert_rd rd" "sert finetune" "rd finetune"; do   # pooled over seeds 42 and 43
  set -- $pair
  [ -f $R/$1-s43/metrics.json ] && [ -f $R/$2-s43/metrics.json ] && \
    echo "$1 vs $2 pooled 42,43: $(python $H/indep_pooled.py $R/$1 $R/$2 $R/$1-s43 $R/$2-s43)"
done
true
