#!/usr/bin/env bash
# Runs the aarch64 build (packaging/android/build.sh) under qemu-aarch64-static against a
# simulated Android device tree (sections as printed):
#   1. embargod/embargoctl are static aarch64 binaries, start and print their versions;
#   2. the tree: /data/system/packages.xml (500 apps, ABX written by AOSP's serializer), users 0,
#      10 and 11 with package-restrictions.xml, APKs built by aapt + apksigner (when present)
#      under /data/app/~~*/PKG-*/base.apk, in a vmdl<SESSION>.tmp staging directory and in
#      Downloads, and the shipped agent.toml with its paths moved into the tree;
#   3. the shipped agent.toml loads, so a config error cannot reach a device image (init would
#      restart an exit-64 daemon forever);
#   4. android_inspect reads packages.xml with the per-user state, and the APKs with the signers
#      apksigner prints;
#   5. `embargod --demo` quarantines a banned AppImage on aarch64 (qemu 7.2 has no openat2:
#      safefs's component-by-component O_NOFOLLOW walk does the opening);
#   6. the shipped agent.toml runs for real on the tree, with a policy signed by the real admin
#      tool (its aarch64 build, check-tools/embargo-policy): a `quarantine` rule on an installed
#      app runs `cmd package suspend --user U` for each user who has it (per
#      data/system/users/<N>/package-restrictions.xml), a system app the rule matches is left
#      alone, a banned staged session is abandoned, a banned APK in Downloads is quarantined, and
#      `embargoctl quarantine restore` runs `cmd package unsuspend` for the same users. `cmd`
#      cannot run off a device: the stand-in tests/tests/android_device.rs uses
#      (agent/tests/fixtures/android/cmd-standin.sh, a host shell script) records each call and
#      applies it to the tree;
#   7. qemu's own syscall trace shows openat2 refused (so 5 and 6 ran on the fallback) and
#      fanotify_init failing with ENOSYS, and an enabled exec gate that cannot start stops the
#      daemon naming fanotify.
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
    for pid in ${demo_pid:-} ${agent_pid:-}; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
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
mkdir -p "$dev/system/etc/embargo" "$dev/data/system" "$dev/data/misc/embargo/run" "$dev/data/media/0/Download"
chmod 700 "$dev/data/misc/embargo"
fx=agent/tests/fixtures/android
# 500 apps, ABX by AOSP's serializer; com.kaspersky.tool1 is installed in /data/app,
# com.kaspersky.tool301 is a system app.
cp "$fx/generated/packages-500.xml.abx" "$dev/data/system/packages.xml"
# restrictions USER STATE: user USER's package-restrictions.xml (text, as Android writes it with
# persist.sys.binary_xml=false) with com.tencent.app0 not installed for the user and
# com.kaspersky.tool1 in STATE: installed, absent (inst=false) or suspended (by root, as
# `cmd package suspend` run as uid 0 records it). For users with the app, the stand-in `cmd`
# switches between the prepared suspended/unsuspended files.
restrictions() {
    local tool1='<pkg name="com.kaspersky.tool1" ceDataInode="81234" />'
    case $2 in
        absent) tool1='<pkg name="com.kaspersky.tool1" ceDataInode="0" inst="false" />' ;;
        suspended) tool1='<pkg name="com.kaspersky.tool1" ceDataInode="81234" suspended="true">
<suspend-params suspending-package="root">
<dialog-info message="Blocked by your organisation (embargo rule kaspersky)" />
</suspend-params>
</pkg>' ;;
    esac
    printf "<?xml version='1.0' encoding='utf-8' standalone='yes' ?>\n<package-restrictions>\n%s\n%s\n<preferred-activities />\n</package-restrictions>\n" \
        '<pkg name="com.tencent.app0" ceDataInode="0" inst="false" />' "$tool1"
}
for u in 0 10 11; do
    mkdir -p "$dev/data/system/users/$u"
    if [ $u = 11 ]; then
        restrictions $u absent > "$dev/data/system/users/$u/package-restrictions.xml"
    else
        restrictions $u installed > "$dev/data/system/users/$u/package-restrictions.xml"
        mkdir -p "$work/after/restrictions/$u"
        restrictions $u suspended > "$work/after/restrictions/$u/suspended.xml"
        restrictions $u installed > "$work/after/restrictions/$u/unsuspended.xml"
    fi
done
# The stand-in `cmd` (see the header): a wrapper that gives the shared script its paths.
mkdir -p "$work/bin"
printf "#!/bin/sh\nlog='%s' tree='%s' after='%s'\n. '%s'\n" \
    "$work/cmd.log" "$dev" "$work/after" "$PWD/$fx/cmd-standin.sh" > "$work/bin/cmd"
chmod 755 "$work/bin/cmd"
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
sed -e "s#/data/#$dev/data/#g" -e "s#/system/etc/#$dev/system/etc/#g" -e "s#^paths = \\[\"/\"\\]#paths = [\"$dev\"]#" \
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

echo "== 5. embargod --demo on aarch64 (no openat2 under qemu 7.2)"
run "$bin/embargod" --demo "$work/demo" > "$work/demo.log" 2>&1 &
demo_pid=$!
for _ in $(seq 1 120); do
    grep -q "AppImage quarantined\|was not quarantined" "$work/demo.log" && break
    kill -0 "$demo_pid" 2>/dev/null || break
    sleep 1
done
cat "$work/demo.log"
grep -q "WeChat-x86_64.AppImage quarantined" "$work/demo.log" || { echo "the demo did not quarantine the banned app" >&2; exit 1; }
# The demo's last step runs `embargoctl status` as a child: an aarch64 binary exec'd without a
# binfmt registration fails under qemu-user (Exec format error) and the demo exits; else stop it.
kill "$demo_pid" 2>/dev/null || true
wait "$demo_pid" 2>/dev/null || true
demo_pid=

echo "== 6. quarantine by cmd package suspend, per user (the shipped agent.toml, a signed policy)"
# A repository made with the real admin tool (the aarch64 build, under qemu), its root.json where
# the image puts it. The policy quarantines an installed app (and a system app: protected), removes
# the app staged in vmdl1234567.tmp and quarantines the WeChat APK in Downloads.
pt() { run "$bin/check-tools/embargo-policy" "$@" >/dev/null; }
mkdir -p "$work/keys"
for k in root timestamp policy; do pt keygen "$work/keys/$k.key"; done
pt init --repo "$work/repo" --fleet android-check --root-key "$work/keys/root.key" \
    --timestamp-key "$work/keys/timestamp.key" --policy-key "$work/keys/policy.key"
cat > "$work/policy.toml" <<'POLICY'
expires = "30d"

[[rule]]
id = "kaspersky"
action = "quarantine"
  [[rule.match]]
  kind = "android"
  id = "com.kaspersky.tool1"
  [[rule.match]]
  kind = "android"
  id = "com.kaspersky.tool301"

[[rule]]
id = "kms"
action = "remove"
  [[rule.match]]
  kind = "android"
  id = "com.kms.free"

[[rule]]
id = "wechat"
action = "quarantine"
  [[rule.match]]
  kind = "android"
  id = "com.tencent.mm"
POLICY
pt sign --repo "$work/repo" --key "$work/keys/policy.key" "$work/policy.toml"
pt timestamp --repo "$work/repo" --key "$work/keys/timestamp.key"
cp "$work/repo/root/1.json" "$dev/system/etc/embargo/root.json"
sock="$dev/data/misc/embargo/run/embargod.sock"
ctl() { run "$bin/embargoctl" --socket "$sock" "$@"; }
# One call a line, arguments joined by |.
calls() { awk '/^--$/ { print c; c = ""; next } { c = (c == "" ? $0 : c "|" $0) }' "$work/cmd.log" 2>/dev/null; }
# eventually WHAT COMMAND...: polls COMMAND for up to 120 s (qemu and a loaded machine are slow).
eventually() {
    local what=$1
    shift
    for _ in $(seq 1 240); do
        if "$@"; then return 0; fi
        kill -0 "$agent_pid" 2>/dev/null || { echo "embargod exited:" >&2; cat "$work/agent.log" >&2; exit 1; }
        sleep 0.5
    done
    echo "timed out waiting for $what; cmd calls:" >&2
    calls >&2
    echo "embargod's log:" >&2
    cat "$work/agent.log" >&2
    exit 1
}
PATH="$work/bin:$PATH" EMBARGO_LOG="warn,embargo_agent=info" "$qemu" "$bin/embargod" \
    --config "$dev/system/etc/embargo/agent.toml" > "$work/agent.log" 2>&1 &
agent_pid=$!
msg="Blocked by your organisation (embargo rule kaspersky)"
suspended_listed() { ctl quarantine list 2>/dev/null | grep -q "suspended com.kaspersky.tool1 for users 0,10 (suspended)"; }
eventually "the suspension entry" suspended_listed
want="package|suspend|--user|0|--dialogMessage|$msg|com.kaspersky.tool1
package|suspend|--user|10|--dialogMessage|$msg|com.kaspersky.tool1"
if [ ${#apks[@]} -gt 0 ]; then
    abandoned() { [ ! -e "$dev/data/app/vmdl1234567.tmp" ]; }
    eventually "the staged com.kms.free session abandoned" abandoned
    apk_quarantined() { [ ! -e "$dev/data/media/0/Download/holiday-photos.apk" ] && ctl quarantine list | grep -q "rule wechat .*holiday-photos.apk"; }
    eventually "the WeChat APK in Downloads quarantined" apk_quarantined
    want="package|install-abandon|1234567
$want"
fi
protected() { ctl events --json | grep '"app_id":"com.kaspersky.tool301"' | grep -q '"result":"protected'; }
eventually "the system app recorded as protected" protected
echo "   com.kaspersky.tool301 (system app, same rule): $(ctl events --json | grep '"app_id":"com.kaspersky.tool301"' | grep -o '"result":"protected[^"]*"' | head -n 1)"
ctl quarantine list | sed 's/^/   /'
echo "   cmd calls:"
calls | sed 's/^/     /'
[ "$(calls | sort)" = "$(printf '%s\n' "$want" | sort)" ] || { echo "expected exactly these cmd calls:" >&2; echo "$want" >&2; exit 1; }
for u in 0 10; do
    cmp -s "$work/after/restrictions/$u/suspended.xml" "$dev/data/system/users/$u/package-restrictions.xml" \
        || { echo "user $u: not suspended" >&2; exit 1; }
done
grep -q 'inst="false"' "$dev/data/system/users/11/package-restrictions.xml" || { echo "user 11 was touched" >&2; exit 1; }
id=$(ctl quarantine list | awk '/suspended com.kaspersky.tool1 for users/ { print $1 }')
ctl quarantine restore "$id" > "$work/restore.json"
for u in 0 10; do
    cmp -s "$work/after/restrictions/$u/unsuspended.xml" "$dev/data/system/users/$u/package-restrictions.xml" \
        || { echo "user $u: not unsuspended" >&2; exit 1; }
done
want="$want
package|unsuspend|--user|0|com.kaspersky.tool1
package|unsuspend|--user|10|com.kaspersky.tool1"
[ "$(calls | sort)" = "$(printf '%s\n' "$want" | sort)" ] || { echo "restore: expected these cmd calls:" >&2; echo "$want" >&2; calls >&2; exit 1; }
! ctl quarantine list | grep -q "com.kaspersky.tool1" || { echo "the restored entry is still listed" >&2; exit 1; }
echo "   restore $id: $(calls | tail -n 2 | tr '\n' ' ')"
kill "$agent_pid"
wait "$agent_pid" || true
agent_pid=

echo "== 7. what qemu lacks: openat2 and fanotify_init (qemu's own syscall trace)"
# The same config with the exec gate enabled, traced by qemu (QEMU_STRACE): openat2 (aarch64
# syscall 437) is unknown to qemu 7.2, so safefs falls back to its O_NOFOLLOW walk; fanotify_init
# fails with ENOSYS, and an exec gate the admin enabled but that cannot start stops the daemon
# with an error naming it (by design: no one may believe execs are gated when they are not).
cp "$dev/system/etc/embargo/agent.toml" "$work/exec.toml"
printf '\n[exec]\nenabled = true\n' >> "$work/exec.toml"
set +e
QEMU_STRACE=1 "$qemu" "$bin/embargod" --config "$work/exec.toml" > "$work/exec.out" 2> "$work/exec.trace"
code=$?
set -e
openat2=$(grep -c "Unknown syscall 437" "$work/exec.trace" || true)
fan=$(grep -m1 "^[0-9]* fanotify_init(" "$work/exec.trace" | sed 's/^[0-9]* fanotify_init([^)]*) = //')
echo "   openat2 calls refused by qemu: $openat2; fanotify_init: $fan"
echo "   embargod: exit $code: $(grep -o "\[exec\] enabled but.*" "$work/exec.trace" | head -n 1 | sed 's/ = [0-9]*$//')"
[ "$openat2" -gt 0 ] || { echo "openat2 was not tried (or qemu now has it): the fallback was not exercised" >&2; exit 1; }
case $fan in *"errno=38"*) ;; *) echo "fanotify_init did not fail with ENOSYS" >&2; exit 1 ;; esac
[ "$code" != 0 ] && grep -q "exec gate cannot start: fanotify_init" "$work/exec.trace" \
    || { echo "an exec gate that cannot start did not stop the daemon with its reason" >&2; exit 1; }
echo "check.sh: all passed"
