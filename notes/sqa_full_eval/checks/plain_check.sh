#!/usr/bin/env bash
# Independent check of a full run's RD and SERT+RD evaluations (issue 13): sert eval in fp32 on the first 100 test
# questions, then bench/check_eval_plain.py (a plain transformers loop, batch 1) on the same ones.
# Usage: bash notes/sqa_full_eval/checks/plain_check.sh RUN_DIR OUT_DIR [ARM ...]   (default arms: rd sert_rd)
set -euo pipefail
RUN=${1:?usage: plain_check.sh RUN_DIR OUT_DIR [ARM ...]}; OUT=${2:?usage: plain_check.sh RUN_DIR OUT_DIR [ARM ...]}
shift 2
ARMS=("${@:-rd sert_rd}"); [ $# -eq 0 ] && ARMS=(rd sert_rd)
cd "$(dirname "$0")/../../.."
mkdir -p "$OUT"
for arm in "${ARMS[@]}"; do
  python3 -m sert eval --model "$RUN/arms/$arm/final" --task strategyqa --config "$RUN/config.yaml" \
     --dtype float32 --limit 100 --quiet --out "$OUT/fp32_$arm"
  python3 bench/check_eval_plain.py "$OUT/fp32_$arm" --limit 100 --dtype float32 > "$OUT/plain_$arm.json"
done
