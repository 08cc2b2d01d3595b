#!/usr/bin/env bash
# Copy what the README's numbers rest on out of a run of cpu/commonsense_qa_smollm2_schedule20 into this folder,
# for every stage finished so far (rerun it as stages finish; it overwrites with the same files):
#   eval/<arm>/metrics.json + predictions.jsonl.xz, train/<arm>/{arm.json,train_summary.json}, the funnels of the
#   selections, stages.json, config.yaml, commands.txt, report.md.
# Usage: bash notes/schedule20/collect.sh RUN_DIR     (e.g. runs/commonsense_qa_smollm2_schedule20)
set -euo pipefail
RUN=${1:?usage: collect.sh RUN_DIR}
HERE=$(cd "$(dirname "$0")" && pwd)
for d in "$RUN"/eval/*/; do
  a=$(basename "$d")
  [ -f "$d/.done.json" ] || continue                      # finished evaluations only
  mkdir -p "$HERE/eval/$a"
  cp "$d/metrics.json" "$HERE/eval/$a/"
  xz -9e -c "$d/predictions.jsonl" > "$HERE/eval/$a/predictions.jsonl.xz"
done
for d in "$RUN"/arms/*/; do
  a=$(basename "$d")
  [ -f "$d/.done.json" ] || continue
  mkdir -p "$HERE/train/$a"
  cp "$d/arm.json" "$d/train_summary.json" "$HERE/train/$a/"
done
for d in "$RUN"/filter*/ "$RUN"/mine-*/; do
  [ -d "$d" ] || continue
  a=$(basename "$d")
  mkdir -p "$HERE/select/$a"
  for f in funnel.json mine_meta.json; do [ -f "$d/$f" ] && cp "$d/$f" "$HERE/select/$a/"; done
  [ -f "$d/selected.jsonl" ] && xz -9e -c "$d/selected.jsonl" > "$HERE/select/$a/selected.jsonl.xz"
done
for f in stages.json config.yaml commands.txt report.md; do [ -f "$RUN/$f" ] && cp "$RUN/$f" "$HERE/"; done
echo "collected $(ls "$HERE/eval" 2>/dev/null | wc -l) evaluations, $(ls "$HERE/train" 2>/dev/null | wc -l) trainings from $RUN"
