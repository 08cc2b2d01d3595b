#!/usr/bin/env bash
# fp32 robustness evaluation of a full run's arms on all test questions (the run evaluated them in bf16).
# Usage: bash notes/sqa_full_eval/checks/fp32_full.sh RUN_DIR ARM [ARM ...]   -> RUN_DIR/eval_fp32/<arm>/
# For wall times, run it with nothing else computing on the machine.
set -euo pipefail
RUN=${1:?usage: fp32_full.sh RUN_DIR ARM [ARM ...]}; shift
cd "$(dirname "$0")/../../.."
for arm in "$@"; do
  /usr/bin/time -f "$arm %e s wall" python3 -m sert eval --model "$RUN/arms/$arm/final" --task strategyqa \
     --config "$RUN/config.yaml" --dtype float32 --quiet --out "$RUN/eval_fp32/$arm"
done
