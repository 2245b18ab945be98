#!/usr/bin/env bash
# The fidelity table of docs/quantization.md: what each weight format and numerics mode costs a
# trained model. Trains configs/mega-demo.json on every fortune file but one (the demo's recipe,
# saved in BF16), converts it with `megamoe quantize` to FP8 (DeepSeek's layout), q8_0 and q4_0, then
# for each format and mode runs `megamoe perplexity` on the held-out file against BF16 exact
# (--kld-base / --kld) and `megamoe bench` for decode speed, and prints the table as Markdown.
#
#   bench/fidelity/run.sh                  # about 6 minutes on 2 cores; models under out/fidelity
# Environment: MEGAMOE (build/megamoe), OUT (out/fidelity), HELD_OUT (wisdom: the fortune file scored,
# never trained on), STEPS (800), CONTEXT (256), THREADS (0: all cores; bench runs use it too).
set -euo pipefail
cd "$(dirname "$0")/../.."
MEGAMOE=${MEGAMOE:-build/megamoe}
OUT=${OUT:-out/fidelity}
HELD_OUT=${HELD_OUT:-wisdom}
STEPS=${STEPS:-800}
CONTEXT=${CONTEXT:-256}
THREADS=${THREADS:-0}
fortunes=/usr/share/games/fortunes
mkdir -p "$OUT"
lscpu | grep -E "Model name|^CPU\(s\)" || true

# The text: each fortune file once (not the .dat indexes or .u8 links), "%" separators as blank lines.
find "$fortunes" -maxdepth 1 -type f ! -name '*.dat' ! -name "$HELD_OUT" -print0 | sort -z | xargs -0 cat |
  sed 's/^%$//' > "$OUT/train.txt"
sed 's/^%$//' "$fortunes/$HELD_OUT" > "$OUT/held-out.txt"

if [ ! -f "$OUT/bf16/model.safetensors" ]; then
  "$MEGAMOE" train --model-config configs/mega-demo.json --data "$OUT/train.txt" --steps "$STEPS" --seq-len 64 \
    --batch-size 16 --lr 3e-3 --balance bias --bias-update-rate 1e-2 --seed 0 --threads "$THREADS" \
    --eval-every 100 --save-every 0 --sample-lines 0 --save-dtype bf16 --output "$OUT/bf16"
fi
for dtype in fp8 q8_0 q4_0; do
  [ -d "$OUT/$dtype" ] || "$MEGAMOE" quantize --model "$OUT/bf16" --dtype "$dtype" --output "$OUT/$dtype"
done

threads=()
[ "$THREADS" != 0 ] && threads=(--threads "$THREADS")
perplexity() {  # MODEL NUMERICS FLAGS...
  "$MEGAMOE" perplexity --model "$OUT/$1" --text "$OUT/held-out.txt" --context "$CONTEXT" --numerics "$2" \
    --json "${@:3}"
}
perplexity bf16 exact --kld-base "$OUT/base.bin" > "$OUT/bf16-exact.json"
for dtype in bf16 fp8 q8_0 q4_0; do
  for numerics in fast exact; do
    perplexity "$dtype" "$numerics" --kld "$OUT/base.bin" > "$OUT/$dtype-$numerics.json"
    "$MEGAMOE" bench --model "$OUT/$dtype" --prompt-tokens 64 --gen-tokens 64 --runs 5 --numerics "$numerics" \
      "${threads[@]}" --json > "$OUT/$dtype-$numerics-bench.json"
  done
done

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
print("| weights | numerics | perplexity | mean KLD | 99th pct KLD | top-1 agreement | decode tokens/s |")
print("|---|---|---|---|---|---|---|")
for dtype in ("bf16", "fp8", "q8_0", "q4_0"):
    for numerics in ("exact", "fast"):
        p = json.load(open(f"{out}/{dtype}-{numerics}.json"))
        b = json.load(open(f"{out}/{dtype}-{numerics}-bench.json"))
        k = p["kld"]
        print(f"| {dtype.upper()} | {numerics} | {p['perplexity']:.3f} | {k['mean']:.2e} | {k['p99']:.2e} | "
              f"{100 * k['top1_agreement']:.2f}% | {b['decode_tokens_per_s']:.0f} |")
p = json.load(open(f"{out}/bf16-exact.json"))
print(f"\n{p['scored_tokens']} tokens scored in {p['windows']} windows of {p['context']} (stride {p['stride']}); "
      f"the base is BF16 exact.")
PY
