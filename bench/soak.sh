#!/usr/bin/env bash
# The soak (tests/soak.rs): guestlogd under a real systemd for SOAK_SECS
# seconds (default 1800) with pipes, fake and real guests, stalling clients,
# Follow streams, churn and a restart, reload or kill -9 every few minutes;
# prints RSS, descriptors and losses over time and fails on growth or on a
# loss beyond the kill bound. Not part of tests/run-all (it is #[ignore]d).
#   bench/soak.sh                 # 30 minutes
#   SOAK_SECS=300 bench/soak.sh   # the short mode, to validate it
# Knobs: SOAK_EVENT_SECS, SOAK_SAMPLE_SECS, SOAK_CHURN_MS, SOAK_PIPES,
# SOAK_CONSOLES, SOAK_STALLED_FOLLOWERS. Needs root and tests/env/setup.sh's
# cache (/var/cache/guestlogd-test).
set -euo pipefail
cd "$(dirname "$0")/.."
export SOAK_SECS=${SOAK_SECS:-1800}
cargo build --release --bins
exec cargo test --release --test soak -- --ignored --nocapture --test-threads 1
