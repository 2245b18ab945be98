#!/usr/bin/env bash
# Fuzzes one target under libFuzzer (docs/fuzzing.md): builds build-fuzz with clang, libFuzzer,
# AddressSanitizer and UndefinedBehaviorSanitizer, then runs the target on its corpus for SECONDS
# (default 300). Inputs that reach new code go to out/fuzz/TARGET, inputs that fail to
# out/fuzz/TARGET-crashes; the committed corpus is only read.
#   scripts/fuzz.sh fuzz_gguf [SECONDS] [libFuzzer flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: scripts/fuzz.sh TARGET [SECONDS] [libFuzzer flags...]}
seconds=${2:-300}
shift $(($# < 2 ? $# : 2))
if ! command -v clang++ >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends clang
fi
MEGAMOE_BUILD_DIR=build-fuzz MEGAMOE_BUILD_TARGET="$target" \
  scripts/build.sh -DCMAKE_CXX_COMPILER=clang++ -DMEGAMOE_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo
mkdir -p "out/fuzz/$target" "out/fuzz/$target-crashes"
# One thread for the model's kernels: libFuzzer runs inputs one after another, and OpenMP teams
# would only add noise (and memory) to each.
OMP_NUM_THREADS=1 ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 UBSAN_OPTIONS=print_stacktrace=1 \
  "build-fuzz/fuzz/$target" -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=30 \
  -artifact_prefix="out/fuzz/$target-crashes/" "$@" "out/fuzz/$target" "fuzz/corpus/$target"
