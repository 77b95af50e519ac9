#!/usr/bin/env bash
# Builds and runs one cargo-fuzz target of fuzz/ for a bounded time; fails on
# a crash. Usage: tests/fuzz.sh TARGET SECONDS
#
# cargo-fuzz needs nightly flags (-Zsanitizer); on a stable toolchain
# RUSTC_BOOTSTRAP=1 unlocks them. Prints "SKIPPED: <reason>" and exits 0
# when cargo-fuzz is missing and cannot be installed.
set -euo pipefail

target=${1:?usage: tests/fuzz.sh TARGET SECONDS}
seconds=${2:?usage: tests/fuzz.sh TARGET SECONDS}
root=$(cd "$(dirname "$0")/.." && pwd)

if ! cargo fuzz --version >/dev/null 2>&1; then
    if ! cargo install cargo-fuzz --locked >/dev/null 2>&1; then
        echo "SKIPPED: cargo-fuzz is not installed and cargo install cargo-fuzz failed"
        exit 0
    fi
fi

# New inputs go to a scratch corpus; the committed seeds are only read.
corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
seeds="$root/fuzz/seeds/$target"
[ -d "$seeds" ] || seeds=

cd "$root/fuzz"
export RUSTC_BOOTSTRAP=1
cargo fuzz build --release "$target"
# libFuzzer exits non-zero on a crash, leak or timeout and leaves the input
# in fuzz/artifacts/$target/.
cargo fuzz run --release "$target" "$corpus" $seeds -- \
    -max_total_time="$seconds" -print_final_stats=1
echo "fuzz $target: ${seconds}s, no crash"
