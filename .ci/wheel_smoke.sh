#!/usr/bin/env bash
# CI: the wheel works like the checkout. Build the wheel, install it into a fresh virtual
# environment (no checkout on the path), and from a directory outside the checkout run:
# sert --version, sert tasks, sert configs, sert bench --quick --only mining, one tiny eval,
# and a shipped paper config by name (its Base arm on two questions).
# Dependencies come from the package index (torch as install.sh picks it: the CPU wheel
# torch==2.13.0 without an NVIDIA GPU). Prints the wall time at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
PY=${PYTHON:-python3}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
step() { echo "[wheel-smoke] $*"; }

step "build the wheel from a clean copy of pyproject.toml, README.md, LICENSE, src/"
mkdir -p "$T/src-copy"
tar --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' -cf - pyproject.toml README.md LICENSE src \
  | tar -xf - -C "$T/src-copy"
"$PY" -m pip wheel --quiet --no-deps -w "$T/dist" "$T/src-copy"
WHEEL=$(ls "$T"/dist/sert-*.whl)

step "fresh venv; torch, then $(basename "$WHEEL") with its dependencies"
"$PY" -m venv "$T/venv"
V="$T/venv/bin"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then TORCH=torch; else TORCH="torch==2.13.0"; fi
"$V/python" -m pip install --quiet "$TORCH"
"$V/python" -m pip install --quiet "$WHEEL"

mkdir "$T/elsewhere"
cd "$T/elsewhere"
unset PYTHONPATH
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
where=$("$V/python" -c 'import sert; print(sert.__file__)')
case "$where" in
  "$T/venv/"*) step "sert imported from the venv: $where" ;;
  *) echo "wheel smoke: sert imported from $where, not from the venv" >&2; exit 1 ;;
esac

step "sert --version / tasks / configs"
"$V/sert" --version
"$V/sert" tasks >/dev/null
listing=$("$V/sert" configs)
grep -q '^paper/strategyqa_gpt2 ' <<<"$listing"

step "sert bench --quick --only mining"
"$V/sert" bench --quick --only mining --out bench.json >/dev/null
grep -q '"mining"' bench.json

step "sert eval (random-weight SmolLM2 architecture, 2 questions, 4 tokens)"
"$V/sert" eval --model random:smollm2-135m --task strategyqa --limit 2 --max-new-tokens 4 --n-bootstrap 10 \
  --out eval --quiet >/dev/null
"$V/python" -c 'import json; assert json.load(open("eval/metrics.json"))["n"] == 2'

step "sert run paper/strategyqa_gpt2 (shipped config by name; Base arm, 2 questions)"
"$V/sert" run paper/strategyqa_gpt2 --set model=random:smollm2-135m --set arms=[base] --set eval.limit=2 \
  --set eval.max_new_tokens=4 --set eval.n_bootstrap=10 --out run --quiet >/dev/null
"$V/python" -c 'import json; assert json.load(open("run/eval/base/metrics.json"))["n"] == 2'
test -s run/report.md

step "passed in $((SECONDS - start)) s"
