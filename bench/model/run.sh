#!/usr/bin/env bash
# The model-level figures of docs/performance.md: for each config under bench/model (default: the
# 32- and 256-expert models of equal active parameters), makes a synthetic checkpoint once and runs
# `megamoe bench --json` with 1 and 2 threads, then the PyTorch reference's prefill on the first.
#
#   bench/model/run.sh                          # bf16, 512-token prefill, 32 decoded tokens, 3 runs
#   DTYPE=q8_0 CONFIGS="bench/model/experts-256.json" bench/model/run.sh
#   DTYPE=fp8 PROMPT_TOKENS=128 TORCH=0 CONFIGS=bench/model/v41-flash-layers.json BENCH_ARGS=--mmap bench/model/run.sh
#   (then bench/model/project_v41.py projects the figures to the whole 40-layer model)
# Environment: MEGAMOE (binary, default build/megamoe), DTYPE, CONFIGS, OUT, THREADS ("1 2"),
# PROMPT_TOKENS, GEN_TOKENS, RUNS, ROUNDS (1: how many times the thread counts alternate, for
# medians on a noisy machine), TORCH (0 skips the PyTorch reference), TORCH_THREADS (default: the
# last of THREADS), BENCH_ARGS (more `megamoe
# bench` flags, e.g. --mmap; results go to files named with a SUFFIX, default none).
set -euo pipefail
cd "$(dirname "$0")/../.."
MEGAMOE=${MEGAMOE:-build/megamoe}
DTYPE=${DTYPE:-bf16}
CONFIGS=${CONFIGS:-bench/model/experts-32.json bench/model/experts-256.json}
OUT=${OUT:-out/bench-model}
mkdir -p "$OUT"
uptime
for config in $CONFIGS; do
  name=$(basename "$config" .json)-$DTYPE
  [ -f "$OUT/$name/config.json" ] || "$MEGAMOE" synth --model-config "$config" --dtype "$DTYPE" --seed 1 --output "$OUT/$name"
  if grep -q '"engram_layer_ids": \[$' "$config" && [ ! -f "$OUT/$name/tokenizer.json" ]; then
    # V4.1's Engram layers take their token map from a tokenizer.json: a small one, learnt on the spot
    "$MEGAMOE" tokenizer train --vocab-size 512 --input /usr/share/common-licenses/GPL-3 --output "$OUT/$name-tokenizer"
    cp "$OUT/$name-tokenizer/tokenizer.json" "$OUT/$name/"
  fi
  for round in $(seq "${ROUNDS:-1}"); do
    for threads in ${THREADS:-1 2}; do
      "$MEGAMOE" bench --model "$OUT/$name" --prompt-tokens "${PROMPT_TOKENS:-512}" --gen-tokens "${GEN_TOKENS:-32}" \
        --runs "${RUNS:-3}" --threads "$threads" --json ${BENCH_ARGS:-} | tee "$OUT/$name-threads$threads-round$round${SUFFIX:-}.json"
    done
  done
done
if [ "${TORCH:-1}" != 0 ]; then
  first=$(basename "${CONFIGS%% *}" .json)-$DTYPE
  threads=${THREADS:-1 2}
  for dtype in float32 bfloat16; do
    /usr/bin/python3 bench/model/torch_prefill.py --model "$OUT/$first" --prompt-tokens "${PROMPT_TOKENS:-512}" \
      --threads "${TORCH_THREADS:-${threads##* }}" --dtype "$dtype" | tee "$OUT/$first-torch-$dtype${SUFFIX:-}.json"
  done
fi
uptime
