#!/usr/bin/env bash
# Every paired and pooled row of the schedule20 run recomputed without sert (issue 26): indep_paired.py (exact
# McNemar + paired bootstrap) per seed, indep_pooled.py (sign flips over questions, question resampling) over
# seeds 42 and 43, from the evaluations collected in notes/schedule20/eval/ (or a run directory's eval/).
# Usage: bash notes/schedule20/indep_all.sh [EVAL_DIR]        (default: notes/schedule20/eval)
set -uo pipefail
H=$(cd "$(dirname "$0")" && pwd)
R=${1:-$H/eval}
C=$H/../csqa_full_eval/checks
have() { [ -f "$R/$1/metrics.json" ]; }
for pair in "rd finetune" "sert finetune" "sert_cw finetune" "rd_self finetune" \
            "sert_rd rd" "joint_cw rd" "sert_cw_rd rd" "rd_self rd" \
            "sert_rd@3 rd@3" "joint_cw@3 rd@3" "sert_rd@10 rd@10" "joint_cw@10 rd@10"; do
  set -- $pair
  for s in "" "-s43"; do
    t=$1$s; b=$2$s                     # seed 43's instances: rd-s43, rd@3-s43
    have "$t" && have "$b" && echo "$t vs $b: $(cd "$C" && python3 indep_paired.py "$R/$t" "$R/$b")"
  done
  have "$1-s43" && have "$2-s43" && have "$1" && have "$2" && \
    echo "$1 vs $2 pooled 42,43: $(cd "$C" && python3 indep_pooled.py "$R/$1" "$R/$2" "$R/$1-s43" "$R/$2-s43")"
done
true
