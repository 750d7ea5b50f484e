#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests (the real binary against
# real upstream processes on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --test
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy || true
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets
