#!/usr/bin/env bash
# Builds and runs Sluice. With no arguments: the embedded default config (the built-in demo
# upstream on 127.0.0.1:8080, admin on 127.0.0.1:9090). Arguments go to `sluice`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
cargo build --release --locked
exec target/release/sluice "$@"
