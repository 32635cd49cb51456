#!/usr/bin/env bash
# Builds statically linked aarch64 embargod and embargoctl for Android (plus the android_inspect
# example, the parsers' smoke test) into target/android/, and the admin tool embargo-policy into
# target/android/check-tools/ (check.sh signs its test policy with it; not for the image):
#   target: aarch64-unknown-linux-musl (no NDK: Android's bionic is not needed by a static binary)
#   linker: rust-lld (ships with rustup's toolchain), self-contained musl CRT objects
#   C code: ring (under rustls) compiles C and assembly for the target: Debian's clang does it
#           (clang --target=aarch64-unknown-linux-musl), llvm-ar archives it.
# The target's standard library comes from `rustup target add aarch64-unknown-linux-musl`, which
# needs static.rust-lang.org; the script says so and stops if it is missing and cannot be fetched.
# This is not part of .ci/run (a fresh CI machine may not reach static.rust-lang.org);
# packaging/android/check.sh runs the result under qemu-aarch64-static.
set -euo pipefail
cd "$(dirname "$0")/../.."
target=aarch64-unknown-linux-musl
out=target/android

if ! rustup target list --installed | grep -qx "$target"; then
    echo "build.sh: the $target standard library is not installed; trying rustup target add" >&2
    if ! rustup target add "$target"; then
        echo "build.sh: rustup could not fetch $target (no access to static.rust-lang.org?)." >&2
        echo "build.sh: install it where the network allows, or build inside AOSP with rust_binary (README.md)." >&2
        exit 2
    fi
fi
for tool in clang llvm-ar llvm-objcopy; do
    command -v "$tool" >/dev/null || { echo "build.sh: needs $tool (Debian: clang, llvm)" >&2; exit 2; }
done

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C target-feature=+crt-static -C link-self-contained=yes"
export CC_aarch64_unknown_linux_musl=clang
export CFLAGS_aarch64_unknown_linux_musl="--target=$target"
export AR_aarch64_unknown_linux_musl=llvm-ar
# rust-lld is in the toolchain's bin directory, which cargo does not put on PATH.
PATH="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin:$PATH"
export PATH

cargo build --release --locked --target "$target" -p embargo-agent -p embargo-policy --bins --example android_inspect
mkdir -p "$out/check-tools"
cp "target/$target/release/embargo-policy" "$out/check-tools/embargo-policy"
for b in embargod embargoctl; do
    cp "target/$target/release/$b" "$out/$b"
done
cp "target/$target/release/examples/android_inspect" "$out/android_inspect"
# The release profile keeps line tables for backtraces on servers; a device image ships stripped
# binaries (keep the unstripped ones in target/$target/release for symbolizing crash reports).
for b in embargod embargoctl android_inspect; do
    llvm-objcopy --strip-all "$out/$b"
done
file "$out"/embargo* "$out"/android_inspect 2>/dev/null || true
ls -l "$out"/embargo* "$out"/android_inspect
