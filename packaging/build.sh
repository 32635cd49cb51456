#!/usr/bin/env bash
# Builds both packages from a clean checkout: embargo-agent (device) and embargo-admin, as .deb
# (cargo-deb, with -dbgsym .ddeb) and .rpm (cargo-generate-rpm, with -debuginfo .rpm). Output is
# collected in target/packages/ (builds with another EMBARGO_DEB_REVISION add to it; cargo-deb
# itself keeps only its latest output).
# Needs: cargo install --locked cargo-deb@3.8.0 cargo-generate-rpm@0.21.1 (.ci/run installs
# them), objcopy (binutils), gzip.
# EMBARGO_DEB_REVISION sets the package revision (tests build two revisions to test upgrades).
# SOURCE_DATE_EPOCH (default: the last commit's time) dates the man pages, the changelog entry of
# a rebuild, and both package formats' file times.
set -euo pipefail
cd "$(dirname "$0")/.."

rev="${EMBARGO_DEB_REVISION:-1}"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
epoch="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}"
date="$(date -u -d "@$epoch" +%F)"

# The generator is built with the binaries (one feature resolution: the shipped binaries are the
# same as without it) and is not packaged. SOURCE_DATE_EPOCH is exported only after the build:
# build scripts that watch it would otherwise rebuild at every commit.
cargo build --release --locked -p embargo-agent -p embargo-policy -p embargo-server -p embargo-docgen --bins
export SOURCE_DATE_EPOCH="$epoch"
release="${CARGO_TARGET_DIR:-target}/release"
dist="$release/dist"
rm -rf "$dist"
mkdir -p "$dist/stripped" "$dist/debug"

# Man pages and completions from the built binaries' own clap trees; agent.toml(5) from the
# config docs. Compressed here (-n: no name or time in the header) because cargo-generate-rpm
# does not compress; cargo-deb leaves .gz files as they are.
"$release/embargo-docgen" man --bin-dir "$release" --out "$dist/man" --date "$date" \
    --example-config packaging/config/agent.toml
gzip -9n "$dist"/man/man*/*
"$release/embargo-docgen" completions --bin-dir "$release" --out "$dist/completions"

# DEP-5 copyright files: the project and every crate linked into each package's binaries.
"$release/embargo-docgen" copyright --deb embargo-agent --package embargo-agent \
    --licenses packaging/licenses --out "$dist/copyright.embargo-agent"
"$release/embargo-docgen" copyright --deb embargo-admin --package embargo-policy --package embargo-server \
    --licenses packaging/licenses --out "$dist/copyright.embargo-admin"

# The Debian changelog: packaging/changelog, with an entry for this revision on top when it is
# not the one the file starts with (test builds of revision 2).
top="$(sed -n '1s/^embargo (\([^)]*\)).*/\1/p' packaging/changelog)"
if [ "$top" != "$version-$rev" ]; then
    {
        printf 'embargo (%s-%s) unstable; urgency=medium\n\n  * Rebuild (package revision %s).\n\n' "$version" "$rev" "$rev"
        printf ' -- embargo maintainers <embargo@example.invalid>  %s\n\n' "$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
        cat packaging/changelog
    } >"$dist/changelog"
else
    cp packaging/changelog "$dist/changelog"
fi

# cargo-deb strips the .deb's binaries and moves their debug info to the -dbgsym .ddeb.
cargo deb --no-build --locked -p embargo-agent --deb-revision "$rev"
cargo deb --no-build --locked -p embargo-server --deb-revision "$rev"

# cargo-generate-rpm packages files as they are: strip here, keeping the debug info in
# <name>.debug (linked by a .gnu_debuglink) for the -debuginfo rpms.
for bin in embargod embargoctl embargo-policy embargo-server; do
    objcopy --only-keep-debug "$release/$bin" "$dist/debug/$bin.debug"
    chmod 0644 "$dist/debug/$bin.debug"
    objcopy --strip-debug --strip-unneeded --add-gnu-debuglink="$dist/debug/$bin.debug" \
        "$release/$bin" "$dist/stripped/$bin"
done
for crate in agent policy-server; do
    cargo generate-rpm -p "$crate" --set-metadata "release = \"$rev\""
    cargo generate-rpm -p "$crate" --set-metadata "release = \"$rev\"" --variant debuginfo
done

mkdir -p target/packages
cp target/debian/*.deb target/debian/*.ddeb target/generate-rpm/*.rpm target/packages/
ls -l target/packages/
