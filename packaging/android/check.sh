#!/usr/bin/env bash
# Runs the aarch64 build (packaging/android/build.sh) under qemu-aarch64-static against a
# simulated Android device tree:
#   1. embargod/embargoctl start and print their versions;
#   2. the shipped agent.toml loads (paths rewritten into the simulated tree), so a config error
#      cannot reach a device image (init would restart a exit-64 daemon forever);
#   3. android_inspect reads the tree's /data/system/packages.xml (ABX, written by AOSP's
#      serializer) and package-restrictions.xml, and the APKs under /data/app/~~*/PKG-*/base.apk
#      and in a vmdl<SESSION>.tmp staging directory (built by aapt + apksigner when present);
#   4. `embargod --demo` runs on aarch64: qemu 7.2 has no openat2 and no fanotify_init, so this
#      exercises the agent's fallbacks (component-by-component O_NOFOLLOW walk; inotify) and
#      checks a banned app is quarantined.
# Not part of .ci/run (the aarch64 target may not be installable there). Exit 0 = all passed.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=target/android
qemu=qemu-aarch64-static
command -v "$qemu" >/dev/null || { echo "check.sh: needs $qemu (Debian: qemu-user-static)" >&2; exit 2; }
[ -x "$bin/embargod" ] || { echo "check.sh: run packaging/android/build.sh first" >&2; exit 2; }
run() { "$qemu" "$@"; }
work=$(mktemp -d)
cleanup() {
    if [ -n "${demo_pid:-}" ]; then kill "$demo_pid" 2>/dev/null || true; wait "$demo_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

echo "== 1. versions (aarch64 under qemu)"
file "$bin/embargod" | grep -q "ARM aarch64" || { echo "not an aarch64 binary" >&2; exit 1; }
file "$bin/embargod" | grep -qE "statically linked|static-pie linked" || { echo "not statically linked" >&2; exit 1; }
run "$bin/embargod" --version
run "$bin/embargoctl" --version

echo "== 2. the simulated device tree"
dev="$work/device"
mkdir -p "$dev/system/etc/embargo" "$dev/data/system/users/0" "$dev/data/misc/embargo/run" "$dev/data/media/0/Download"
chmod 700 "$dev/data/misc/embargo"
fx=agent/tests/fixtures/android
cp "$fx/generated/packages-500.xml.abx" "$dev/data/system/packages.xml"
printf '<package-restrictions>\n<pkg name="com.tencent.app0" inst="false" />\n</package-restrictions>\n' \
    > "$dev/data/system/users/0/package-restrictions.xml"
apks=()
if command -v aapt >/dev/null && command -v apksigner >/dev/null && command -v keytool >/dev/null; then
    keytool -genkeypair -keystore "$work/k.jks" -storepass checkpass -keypass checkpass -alias k \
        -keyalg RSA -keysize 2048 -validity 1000 -dname "CN=check" >/dev/null 2>&1
    mk() { # mk PACKAGE DEST
        mkdir -p "$work/src-$1" "$(dirname "$2")"
        printf '<manifest xmlns:android="http://schemas.android.com/apk/res/android" package="%s"><application/></manifest>\n' "$1" \
            > "$work/src-$1/AndroidManifest.xml"
        aapt package -f -M "$work/src-$1/AndroidManifest.xml" -F "$2" >/dev/null
        apksigner sign --ks "$work/k.jks" --ks-pass pass:checkpass --min-sdk-version 21 "$2"
        apks+=("$2")
    }
    mk com.tencent.mm "$dev/data/app/~~aGVsbG8gd29ybGQh/com.tencent.mm-d29ybGQgaGVsbG8h/base.apk"
    mk org.example.maps "$dev/data/app/~~bWFwcyBtYXBzIG1h/org.example.maps-bWFwcw==/base.apk"
    mk com.kms.free "$dev/data/app/vmdl1234567.tmp/base.apk"
    mk com.tencent.mm "$dev/data/media/0/Download/holiday-photos.apk"
else
    echo "   (aapt/apksigner/keytool missing: no APKs in the tree)"
fi
sed -e "s#/data/#$dev/data/#g" -e "s#/system/etc/#$dev/system/etc/#g" \
    -e 's#^repository = .*#repository = "file://'"$work"'/repo/"#' -e 's#^ca = .*##' \
    packaging/android/agent.toml > "$dev/system/etc/embargo/agent.toml"

echo "== 3. the shipped agent.toml loads"
# No trust anchor in the tree: the daemon must get past the config (exit 64 names the config
# problem; exit 64 for the missing anchor names policy.root, which is what we expect here).
set +e
msg=$(run "$bin/embargod" --config "$dev/system/etc/embargo/agent.toml" 2>&1)
code=$?
set -e
echo "   embargod: exit $code: $msg"
echo "$msg" | grep -q "trust anchor" || { echo "the shipped agent.toml did not load" >&2; exit 1; }

echo "== 4. packages.xml and APKs read on aarch64"
run "$bin/android_inspect" packages "$dev/data/system/packages.xml" "$dev/data/system/users/0/package-restrictions.xml" \
    > "$work/installed.json"
n=$(wc -l < "$work/installed.json")
echo "   $n installed apps read from ABX packages.xml"
[ "$n" = 500 ] || { echo "expected 500" >&2; exit 1; }
grep -q '"id":"com.tencent.app0".*"installed_for_user":false' "$work/installed.json" \
    || { echo "per-user state not applied" >&2; exit 1; }
if [ ${#apks[@]} -gt 0 ]; then
    run "$bin/android_inspect" apk "${apks[@]}" | tee "$work/apks.json"
    for a in "${apks[@]}"; do
        want=$(apksigner verify --print-certs --min-sdk-version 21 "$a" | sed -n 's/^Signer #1 certificate SHA-256 digest: //p')
        grep -q "\"signers\":\[\"$want\"" "$work/apks.json" || { echo "$a: signer $want not reported" >&2; exit 1; }
    done
fi

echo "== 5. embargod --demo on aarch64 (no openat2, no fanotify under qemu 7.2)"
run "$bin/embargod" --demo "$work/demo" > "$work/demo.log" 2>&1 &
demo_pid=$!
for _ in $(seq 1 120); do
    grep -q "AppImage quarantined\|was not quarantined" "$work/demo.log" && break
    kill -0 "$demo_pid" 2>/dev/null || break
    sleep 1
done
cat "$work/demo.log"
grep -q "WeChat-x86_64.AppImage quarantined" "$work/demo.log" || { echo "the demo did not quarantine the banned app" >&2; exit 1; }
echo "check.sh: all passed"
