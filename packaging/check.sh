#!/usr/bin/env bash
# What a distribution's reviewers run on the packages packaging/build.sh left in target/packages/
# (newest revision of each): lintian on the .deb files, rpmlint on the .rpm files, and `man -l`
# on every generated page, each failing on any error or warning. Overrides: the lintian ones ship
# in the package (packaging/deb/lintian-overrides.*), the rpmlint ones are in
# packaging/rpm/rpmlint.toml; each with its reason.
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=target/packages
newest() { ls "$pkgs"/$1 2>/dev/null | sort -V | tail -n1; }

debs=("$(newest 'embargo-agent_*.deb')" "$(newest 'embargo-admin_*.deb')")
rpms=("$(newest 'embargo-agent-[0-9]*.rpm')" "$(newest 'embargo-admin-[0-9]*.rpm')"
      "$(newest 'embargo-agent-debuginfo-*.rpm')" "$(newest 'embargo-admin-debuginfo-*.rpm')")
for f in "${debs[@]}" "${rpms[@]}"; do
    [ -f "$f" ] || { echo "check.sh: a package is missing in $pkgs (run packaging/build.sh)" >&2; exit 1; }
done

echo "== lintian ${debs[*]}"
lintian --fail-on error,warning --display-info "${debs[@]}"

echo "== rpmlint ${rpms[*]}"
rpmlint --strict -c packaging/rpm/rpmlint.toml "${rpms[@]}"

echo "== man -l"
release="${CARGO_TARGET_DIR:-target}/release"
for page in "$release"/dist/man/man*/*.gz; do
    # man-db prints groff's warnings on stderr with --warnings; any is a failure.
    warnings="$(MANWIDTH=80 man --warnings -l "$page" 2>&1 >/dev/null)"
    if [ -n "$warnings" ]; then
        echo "$page: $warnings" >&2
        exit 1
    fi
    echo "$page: $(MANWIDTH=80 man -l "$page" 2>/dev/null | wc -l) lines"
done
