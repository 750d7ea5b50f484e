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
# The benches build (release profile), and the whole-proxy load harness runs once, tiny (a few
# seconds; nginx/HAProxy only when installed; results to target/load-smoke/): fails on any error.
cargo bench --locked --no-run
cargo bench --locked --bench load -- --smoke
# Once more with TLS from the client to every proxy (SLUICE_LOAD_TLS), so that path cannot rot.
SLUICE_LOAD_TLS=1 cargo bench --locked --bench load -- --smoke
# And with HTTP/2 (h2c) from the client to every proxy (SLUICE_LOAD_H2).
SLUICE_LOAD_H2=1 cargo bench --locked --bench load -- --smoke
