#!/usr/bin/env bash
# Sets up, builds and runs every test: unit tests and model tests (against the PyTorch
# references) on a release build, then the unit tests again under AddressSanitizer and
# UndefinedBehaviorSanitizer. Set MEGAMOE_SKIP_SANITIZE=1 to skip the second build.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
(cd build && ctest --output-on-failure -j2)
if [ "${MEGAMOE_SKIP_SANITIZE:-0}" != 1 ]; then
  MEGAMOE_BUILD_DIR=build-sanitize MEGAMOE_BUILD_TARGET=megamoe_unit_tests \
    scripts/build.sh -DMEGAMOE_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
  (cd build-sanitize && ASAN_OPTIONS=detect_leaks=1 LSAN_OPTIONS="suppressions=$PWD/../tests/lsan.supp" \
    UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure -j2 -L unit)
fi
