#!/usr/bin/env bash
# The fleet demo (no root needed): embargo-server with SQLite serves a repository signed with the
# example WeChat/Kaspersky policy and takes reports from device certificates (a throwaway CA made
# with openssl); embargod syncs from it over HTTPS, quarantines a "downloaded" WeChat AppImage and
# reports it with its client certificate. Prints the /admin/ URL (sign in with the password
# printed) and the `embargo-server fleet` summary, then keeps both running until Ctrl-C.
# Usage: scripts/demo-fleet.sh [DIR] (default ./demo-fleet, recreated). Needs openssl and sqlite3.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-./demo-fleet}"
PORT="${EMBARGO_DEMO_PORT:-8443}"
cargo build --locked -p embargo-agent -p embargo-server -p embargo-policy --bins
BIN="$PWD/target/debug"
rm -rf "$DIR"
mkdir -p "$DIR"/{keys,pki,home/alice/Downloads,state}
DIR="$(cd "$DIR" && pwd)"
chmod 700 "$DIR/state"

echo "== keys, repository, certificates"
for k in root timestamp policy; do "$BIN/embargo-policy" keygen "$DIR/keys/$k.key" >/dev/null; done
"$BIN/embargo-policy" init --repo "$DIR/repo" --fleet demo-fleet --root-key "$DIR/keys/root.key" \
    --timestamp-key "$DIR/keys/timestamp.key" --policy-key "$DIR/keys/policy.key" >/dev/null
"$BIN/embargo-policy" sign --repo "$DIR/repo" --key "$DIR/keys/policy.key" policy-schema/policies/wechat-kaspersky.toml >/dev/null
"$BIN/embargo-policy" timestamp --repo "$DIR/repo" --key "$DIR/keys/timestamp.key" >/dev/null
cd "$DIR/pki"
ca() { openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj "/CN=$1" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign \
    -keyout "$1.key" -out "$1.pem" 2>/dev/null; }
leaf() { # name cn ca extensions...
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
    printf '%s\n' "$4" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA "$3.pem" -CAkey "$3.key" -CAcreateserial -days 30 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
}
ca server-ca
ca devices-ca
leaf server localhost server-ca "subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"
leaf device demo-laptop devices-ca "extendedKeyUsage=clientAuth"
cd - >/dev/null
head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/admin-password"

echo "== embargo-server on https://127.0.0.1:$PORT (SQLite: $DIR/fleet.db)"
"$BIN/embargo-server" --repo "$DIR/repo" --listen "127.0.0.1:$PORT" \
    --tls-cert "$DIR/pki/server.pem" --tls-key "$DIR/pki/server.key" \
    --client-ca "$DIR/pki/devices-ca.pem" --database "sqlite://$DIR/fleet.db" \
    --admin-password-file "$DIR/admin-password" 2>"$DIR/server.log" &
SERVER=$!
AGENT=
trap 'kill $SERVER ${AGENT:+$AGENT} 2>/dev/null || true' EXIT
cat >"$DIR/agent.toml" <<TOML
mode = "enforce"
state_dir = "$DIR/state"
socket = "$DIR/embargod.sock"

[policy]
repository = "https://127.0.0.1:$PORT/"
root = "$DIR/repo/root/1.json"
ca = "$DIR/pki/server-ca.pem"
client_cert = "$DIR/pki/device.pem"
client_key = "$DIR/pki/device.key"
interval = "1m"

[report]
url = "https://127.0.0.1:$PORT"

[[watch]]
kind = "appimage"
paths = ["$DIR/home/*/Downloads"]
TOML
sleep 1
echo "== embargod (config $DIR/agent.toml)"
"$BIN/embargod" --config "$DIR/agent.toml" 2>"$DIR/embargod.log" &
AGENT=$!
for _ in $(seq 100); do [ -S "$DIR/embargod.sock" ] && break; sleep 0.1; done
echo "== a user downloads WeChat"
printf '\177ELF\002\001\001\000AI\002\000\000\000\000\000wechat' >"$DIR/home/alice/Downloads/.part"
chmod 755 "$DIR/home/alice/Downloads/.part"
mv "$DIR/home/alice/Downloads/.part" "$DIR/home/alice/Downloads/WeChat-x86_64.AppImage"
for _ in $(seq 300); do
    if sqlite3 "$DIR/fleet.db" "SELECT apps FROM device_rules WHERE device='demo-laptop' AND rule='wechat'" 2>/dev/null | grep -q quarantined; then
        break
    fi
    sleep 0.1
done
"$BIN/embargoctl" --socket "$DIR/embargod.sock" status | tail -n 3
echo
echo "== the server's stored state for demo-laptop / wechat"
sqlite3 "$DIR/fleet.db" "SELECT device, rule, status, apps FROM device_rules"
echo
echo "== embargo-server fleet --database sqlite://$DIR/fleet.db"
"$BIN/embargo-server" fleet --database "sqlite://$DIR/fleet.db"
echo
echo "Compliance view: https://127.0.0.1:$PORT/admin/  (CA $DIR/pki/server-ca.pem; password in $DIR/admin-password: $(cat "$DIR/admin-password"))"
if [ -n "${EMBARGO_DEMO_ONESHOT:-}" ]; then exit 0; fi
echo "Running until Ctrl-C."
wait
