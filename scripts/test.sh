#!/usr/bin/env bash
# The whole test suite: builds the binaries the end-to-end tests run, then every test, and ends
# with one summary line over all test binaries: `tests: N passed, N failed, N skipped`, followed
# by one `SKIPPED <test>: <why>` line per skipped test (a skipped test is not counted as passed).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins --locked
log=$(mktemp)
skips=$(mktemp)
trap 'rm -f "$log" "$skips"' EXIT
set +e
EMBARGO_SKIP_LOG="$skips" cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
ran=$(grep -Eo '^test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '; [0-9]+ failed' "$log" | awk '{s+=$2} END {print s+0}')
skipped=$(grep -c '^SKIPPED ' "$skips" || true)
echo
echo "tests: $((ran - skipped)) passed, $failed failed, $skipped skipped"
grep '^SKIPPED ' "$skips" || true
exit "$status"
