#!/usr/bin/env bash
# The main demo: a small Mega-MoE trained from scratch on a CPU. Sets up and builds megamoe, trains
# configs/mega-demo.json (4 MoE layers in 2 cross-layer pools of 256 routed experts, top-8, bias
# balancing without an auxiliary loss) on the text of Debian's fortunes package with a progress bar,
# prints the expert-balance table, saves the plots and samples a few fortunes. About 10 minutes on
# 2 cores from a fresh clone (docs/mega-moe.md).
#
# Every default can be overridden from the environment:
#   MODEL_CONFIG   configs/mega-demo.json
#   DATA           text to train on (default: every fortune file of /usr/share/games/fortunes, gathered
#                  into $OUT/fortunes.txt)
#   OUT            out/mega-demo: model/ (the checkpoint), metrics.jsonl, metrics-*.png (the plots)
#   STEPS=800 SEQ_LEN=64 BATCH_SIZE=16 LR=3e-3
#   BALANCE        bias (none | aux-loss | seq-aux-loss | bias)
#   BIAS_UPDATE_RATE 1e-2 (with BALANCE=bias: a short run needs a faster bias than DeepSeek's 1e-3)
#   THREADS        0 (all cores)
#   PROMPTS        "Q:|A |The |You will " (|-separated prompts to sample from)
#   SAMPLE_TOKENS=40 TEMPERATURE=0.8 SEED=0
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL_CONFIG=${MODEL_CONFIG:-configs/mega-demo.json}
OUT=${OUT:-out/mega-demo}
DATA=${DATA:-}
STEPS=${STEPS:-800}
SEQ_LEN=${SEQ_LEN:-64}
BATCH_SIZE=${BATCH_SIZE:-16}
LR=${LR:-3e-3}
BALANCE=${BALANCE:-bias}
BIAS_UPDATE_RATE=${BIAS_UPDATE_RATE:-1e-2}
THREADS=${THREADS:-0}
PROMPTS=${PROMPTS:-"Q:|A |The |You will "}
SAMPLE_TOKENS=${SAMPLE_TOKENS:-40}
TEMPERATURE=${TEMPERATURE:-0.8}
SEED=${SEED:-0}

scripts/setup.sh
MEGAMOE_BUILD_TARGET=megamoe scripts/build.sh
megamoe=build/megamoe
mkdir -p "$OUT"
if [ -z "$DATA" ]; then
  # The fortune files themselves: not strfile's .dat indexes, not the .u8 links to the same text;
  # the "%" lines between fortunes become blank lines.
  DATA=$OUT/fortunes.txt
  find /usr/share/games/fortunes -maxdepth 1 -type f ! -name '*.dat' -print0 | sort -z |
    xargs -0 cat | sed 's/^%$//' > "$DATA.tmp"
  mv "$DATA.tmp" "$DATA"
fi

echo "== the model: $MODEL_CONFIG"
$megamoe inspect "$MODEL_CONFIG"
echo "== training on $DATA ($(du -h "$DATA" | cut -f1)): $STEPS steps of $BATCH_SIZE x $SEQ_LEN tokens, --balance $BALANCE"
balance_flags=(--balance "$BALANCE")
[ "$BALANCE" = bias ] && balance_flags+=(--bias-update-rate "$BIAS_UPDATE_RATE")
rm -rf "$OUT/model"  # a new run each time (the tokenizer and token file in $OUT/model.data are reused)
$megamoe train --model-config "$MODEL_CONFIG" --data "$DATA" --steps "$STEPS" --seq-len "$SEQ_LEN" \
  --batch-size "$BATCH_SIZE" --lr "$LR" "${balance_flags[@]}" --seed "$SEED" --threads "$THREADS" \
  --eval-every 50 --save-every 0 --sample-lines 0 --output "$OUT/model" --metrics "$OUT/metrics.jsonl"
echo "== plots"
ls "$OUT"/metrics-*.png
echo "== samples"
IFS='|' read -ra prompts <<< "$PROMPTS"
for prompt in "${prompts[@]}"; do
  printf -- '--- %s' "$prompt"
  $megamoe generate --model "$OUT/model" --prompt "$prompt" --max-tokens "$SAMPLE_TOKENS" \
    --temperature "$TEMPERATURE" --top-k 40 --seed "$SEED" 2>/dev/null
  echo
done
