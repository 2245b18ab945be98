#!/usr/bin/env bash
# A checkpoint without training: set up, build, make a small DeepSeek-V3-style checkpoint
# (configs/tiny-v3.json, FP8 weights), describe it and compute its logits.
# Override with MODEL_CONFIG=... DTYPE=bf16|fp8 OUT=... TOKENS=...
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL_CONFIG=${MODEL_CONFIG:-configs/tiny-v3.json}
DTYPE=${DTYPE:-fp8}
OUT=${OUT:-out/demo-checkpoint}
TOKENS=${TOKENS:-1,17,256,1024,7,7,99,2000}

scripts/setup.sh
scripts/build.sh
megamoe=build/megamoe
mkdir -p "$OUT"
echo "== synth: $MODEL_CONFIG ($DTYPE) -> $OUT/model"
$megamoe synth --model-config "$MODEL_CONFIG" --dtype "$DTYPE" --seed 1 --output "$OUT/model"
echo "== inspect"
$megamoe inspect "$OUT/model"
echo "== logits for tokens $TOKENS -> $OUT/logits.npy"
$megamoe logits --model "$OUT/model" --tokens "$TOKENS" --output "$OUT/logits.npy"
/usr/bin/python3 - "$OUT/logits.npy" <<'PY'
import sys, numpy as np
logits = np.load(sys.argv[1])
print(f"logits shape {logits.shape}; next-token argmax per position: {logits.argmax(axis=1).tolist()}")
PY
