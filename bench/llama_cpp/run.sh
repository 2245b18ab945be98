#!/usr/bin/env bash
# megamoe and llama.cpp side by side on the very same weights (docs/performance.md#megamoe-and-llamacpp):
# synthesizes bench/llama_cpp/peer-v3.json (DeepSeek-V3 layout: hidden 1536, 8 layers, 32 routed
# experts of 384, top 8, one shared) in each DTYPE with a small tokenizer, writes it with `megamoe
# export-gguf` (the checkpoint's bytes kept), and times prefill of each of PROMPTS tokens and decode of
# GEN_TOKENS after it (llama-bench: at that depth) with each of THREADS: `megamoe bench` on the .gguf, then llama-bench on
# it, ROUNDS times in turn so that machine drift falls on both. llama-bench is built here from the
# llama.cpp source node-llama-cpp ships (its git bundle) against the package's prebuilt CPU libraries
# (tests/llama_cpp installs them), with llama.cpp's defaults. bench/llama_cpp/summarize.py prints the
# medians and ratios.
#
#   bench/llama_cpp/run.sh && /usr/bin/python3 bench/llama_cpp/summarize.py out/bench-llama-cpp
# Environment: MEGAMOE (default build/megamoe), OUT (out/bench-llama-cpp), DTYPES ("q8_0 q4_0"),
# THREADS ("1 2"), PROMPTS ("64 512"), GEN_TOKENS (32), RUNS (3, per call), ROUNDS (3).
set -euo pipefail
cd "$(dirname "$0")/../.."
MEGAMOE=${MEGAMOE:-build/megamoe}
OUT=${OUT:-out/bench-llama-cpp}
GEN_TOKENS=${GEN_TOKENS:-32}
RUNS=${RUNS:-3}
mkdir -p "$OUT"

tests/llama_cpp/setup.sh
package=tests/llama_cpp/node_modules
libs=$package/@node-llama-cpp/linux-x64/bins/linux-x64
bench="$OUT/llama-bench/llama-bench"
if [ ! -x "$bench" ]; then
  # llama.cpp's source at the libraries' commit; llama-bench compiled alone and linked against them.
  rm -rf "$OUT/llama.cpp" "$OUT/llama-bench"
  git clone -q "$package/node-llama-cpp/llama/gitRelease.bundle" "$OUT/llama.cpp"
  mkdir -p "$OUT/llama-bench"
  for lib in "$libs"/*.so; do ln -s "$PWD/$lib" "$OUT/llama-bench/"; done  # the CPU backends load from beside it
  src="$OUT/llama.cpp"
  g++ -O2 -DNDEBUG -std=c++17 -I"$src/include" -I"$src/ggml/include" -I"$src/common" -I"$src/vendor" \
    "$src/tools/llama-bench/llama-bench.cpp" "$src/tools/llama-bench/main.cpp" -o "$bench" \
    -L"$OUT/llama-bench" -l:libllama-common.so -l:libllama.v0.5.0.so -l:libggml.v0.5.0.so -l:libggml-base.so \
    -Wl,-rpath,'$ORIGIN' -pthread
fi

uptime
lscpu | grep -E "Model name|^CPU\(s\)" || true
for dtype in ${DTYPES:-q8_0 q4_0}; do
  model="$OUT/peer-v3-$dtype"
  if [ ! -f "$model.gguf" ]; then
    rm -rf "$model" "$model-tokenizer"
    "$MEGAMOE" synth --model-config bench/llama_cpp/peer-v3.json --dtype "$dtype" --seed 1 --output "$model"
    # export-gguf carries a tokenizer; ids past its 512 tokens become unused ones, as llama.cpp's converter does
    "$MEGAMOE" tokenizer train --vocab-size 512 --input /usr/share/common-licenses/GPL-3 --output "$model-tokenizer"
    cp "$model-tokenizer"/tokenizer*.json "$model/"
    "$MEGAMOE" export-gguf --model "$model" --output "$model.gguf" --dtype "$dtype"
  fi
  for round in $(seq "${ROUNDS:-3}"); do
    for threads in ${THREADS:-1 2}; do
      for prompt in ${PROMPTS:-64 512}; do
        tag="$dtype-t$threads-p$prompt-r$round"
        # megamoe's decode follows its prompt; llama-bench's runs at that depth (-d).
        "$MEGAMOE" bench --model "$model.gguf" --prompt-tokens "$prompt" --gen-tokens "$GEN_TOKENS" --runs "$RUNS" \
          --threads "$threads" --json > "$OUT/megamoe-$tag.json"
        "$bench" -m "$model.gguf" -p "$prompt" -n 0 -t "$threads" -r "$RUNS" -o json > "$OUT/llama-prefill-$tag.json"
        "$bench" -m "$model.gguf" -p 0 -n "$GEN_TOKENS" -d "$prompt" -t "$threads" -r "$RUNS" -o json \
          > "$OUT/llama-decode-$tag.json"
        echo "$tag done"
      done
    done
  done
done
uptime
