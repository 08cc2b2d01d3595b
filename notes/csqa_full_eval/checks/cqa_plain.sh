#!/usr/bin/env bash
# Independent check of CommonsenseQA evaluations (issue 13): sert eval fp32 on the first LIMIT (default 100) test
# questions at the arm's own budget, then bench/check_eval_plain.py (plain transformers loop, batch 1) on the same.
# Usage: [LIMIT=N] bash notes/csqa_full_eval/checks/cqa_plain.sh RUN_DIR OUT_DIR ARM [ARM ...]
# For wall times, run it with nothing else computing on the machine.
set -euo pipefail
RUN=${1:?usage: cqa_plain.sh RUN_DIR OUT_DIR ARM [ARM ...]}; OUT=${2:?usage: cqa_plain.sh RUN_DIR OUT_DIR ARM [ARM ...]}
shift 2
cd "$(dirname "$0")/../../.."
mkdir -p "$OUT"
for arm in "$@"; do
  B=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['max_new_tokens'])" "$RUN/eval/$arm/metrics.json")
  /usr/bin/time -f "$arm sert eval %e s wall" python3 -m sert eval --model "$RUN/arms/$arm/final" --task commonsense_qa \
     --config "$RUN/config.yaml" --dtype float32 --limit "${LIMIT:-100}" --max-new-tokens "$B" --quiet --out "$OUT/fp32_$arm"
  /usr/bin/time -f "$arm plain loop %e s wall" python3 bench/check_eval_plain.py "$OUT/fp32_$arm" --limit "${LIMIT:-100}" \
     --dtype float32 > "$OUT/plain_$arm.json"
done
