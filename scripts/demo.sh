#!/usr/bin/env bash
# The demo device: builds the agent and runs it on an embedded default under ./demo (no root
# needed): generated keys, a file:// repository signed with the example WeChat/Kaspersky policy,
# watched folders, a banned WeChat AppImage and an allowed one "installed", `embargoctl status`
# shown. Keeps enforcing until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p embargo-agent --bins
exec ./target/release/embargod --demo "${1:-./demo}"
