#!/usr/bin/env bash
# Builds both packages from a clean checkout: embargo-agent (device) and embargo-admin, as .deb
# (cargo-deb) and .rpm (cargo-generate-rpm). Output is collected in target/packages/ (builds with
# another EMBARGO_DEB_REVISION add to it; cargo-deb itself keeps only its latest output).
# Needs: cargo install --locked cargo-deb cargo-generate-rpm (.ci/run installs them).
# EMBARGO_DEB_REVISION sets the Debian revision (tests build two revisions to test upgrades).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p embargo-agent -p embargo-policy -p embargo-server --bins
rev=(); [ -n "${EMBARGO_DEB_REVISION:-}" ] && rev=(--deb-revision "$EMBARGO_DEB_REVISION")
cargo deb --no-build --locked -p embargo-agent "${rev[@]}"
cargo deb --no-build --locked -p embargo-server "${rev[@]}"
cargo generate-rpm -p agent
cargo generate-rpm -p policy-server
mkdir -p target/packages
cp target/debian/*.deb target/generate-rpm/*.rpm target/packages/
ls -l target/packages/
