#!/usr/bin/env bash
# The whole test suite: builds the binaries the end-to-end tests run, then every test.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins --locked
cargo test --workspace --locked
