#!/usr/bin/env bash
# Same-run benchmark: evaluation of a full run's RD (seed 42) on the first 96 test questions, bf16 vs fp32 vs bf16.
# Usage: bash notes/sqa_full_eval/checks/evaldtype.sh RUN_DIR OUT_DIR   (run it with nothing else computing)
set -euo pipefail
RUN=${1:?usage: evaldtype.sh RUN_DIR OUT_DIR}; OUT=${2:?usage: evaldtype.sh RUN_DIR OUT_DIR}
cd "$(dirname "$0")/../../.."
mkdir -p "$OUT"
for d in bfloat16 float32 bfloat16; do
  rm -rf "$OUT/$d"
  /usr/bin/time -f "$d %e s wall" python3 -m sert eval --model "$RUN/arms/rd/final" --task strategyqa \
     --config "$RUN/config.yaml" --dtype $d --limit 96 --quiet --out "$OUT/$d"
done
