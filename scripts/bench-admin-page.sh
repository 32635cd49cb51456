#!/usr/bin/env bash
# Cost of one /admin/ request with a large policy: a repository signed with a policy of N rules
# (default 100,000; EMBARGO_BENCH_RULES), a few devices applying it (their reports posted over
# mutual TLS; some rules installed, pending, failed), then REQUESTS (default 9;
# EMBARGO_BENCH_REQUESTS) sequential GETs of /admin/ with an admin certificate. Prints the
# median, p90 and max time per request (curl's time_total), the page size in bytes, and the
# server's peak RSS (VmHWM) before the first request and after the last.
# EMBARGO_BENCH_EXTRA_DEVICES (default 0) adds that many devices to the store (see below).
# Usage: scripts/bench-admin-page.sh [SERVER_BINARY] (default target/debug/embargo-server; pass
# another build to compare). Needs openssl, curl, python3, sqlite3. Stops its server on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
SERVER_BIN="${1:-$PWD/target/debug/embargo-server}"
POLICY_BIN="${EMBARGO_POLICY_BIN:-$PWD/target/debug/embargo-policy}"
RULES="${EMBARGO_BENCH_RULES:-100000}"
REQUESTS="${EMBARGO_BENCH_REQUESTS:-9}"
PORT="${EMBARGO_BENCH_PORT:-18443}"
DIR="$(mktemp -d)"
SERVER=
trap 'if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; fi; rm -rf "$DIR"' EXIT

python3 - "$RULES" >"$DIR/policy.toml" <<'EOF'
import sys
n = int(sys.argv[1])
print('expires = "30d"')
for i in range(n):
    print(f'[[rule]]\nid = "app-{i:06d}"\ndescription = "banned app {i}"\naction = "remove"\n'
          f'  [[rule.match]]\n  kind = "deb"\n  id = "pkg-{i:06d}"')
EOF
mkdir -p "$DIR/keys" "$DIR/pki"
for k in root timestamp policy; do "$POLICY_BIN" keygen "$DIR/keys/$k.key" >/dev/null; done
"$POLICY_BIN" init --repo "$DIR/repo" --fleet bench --root-key "$DIR/keys/root.key" \
    --timestamp-key "$DIR/keys/timestamp.key" --policy-key "$DIR/keys/policy.key" >/dev/null
"$POLICY_BIN" sign --repo "$DIR/repo" --key "$DIR/keys/policy.key" "$DIR/policy.toml" >/dev/null
"$POLICY_BIN" timestamp --repo "$DIR/repo" --key "$DIR/keys/timestamp.key" >/dev/null
SHA="$(basename "$(ls "$DIR"/repo/policy/*.json)" .json)"

cd "$DIR/pki"
ca() { openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=$1" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign \
    -keyout "$1.key" -out "$1.pem" 2>/dev/null; }
leaf() { # file cn ca extension
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
    printf '%s\n' "$4" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA "$3.pem" -CAkey "$3.key" -CAcreateserial -days 2 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
}
ca server-ca
ca devices-ca
ca admins-ca
leaf server localhost server-ca "subjectAltName=DNS:localhost,IP:127.0.0.1"
leaf admin bench-admin admins-ca "extendedKeyUsage=clientAuth"
DEVICES="laptop-1 laptop-2 laptop-3 laptop-4 laptop-5"
for d in $DEVICES; do leaf "$d" "$d" devices-ca "extendedKeyUsage=clientAuth"; done
cd - >/dev/null

"$SERVER_BIN" --repo "$DIR/repo" --listen "127.0.0.1:$PORT" \
    --tls-cert "$DIR/pki/server.pem" --tls-key "$DIR/pki/server.key" \
    --client-ca "$DIR/pki/devices-ca.pem" --admin-ca "$DIR/pki/admins-ca.pem" \
    --database "sqlite://$DIR/fleet.db" 2>"$DIR/server.log" &
SERVER=$!
URL="https://localhost:$PORT"
C=(curl -sS --cacert "$DIR/pki/server-ca.pem" --resolve "localhost:$PORT:127.0.0.1")
for _ in $(seq 100); do "${C[@]}" -o /dev/null "$URL/timestamp.json" 2>/dev/null && break; sleep 0.1; done

# Each device applies the big policy; device i has 20 rules in a non-compliant state.
i=0
for d in $DEVICES; do
    i=$((i + 1))
    python3 - "$d" "$SHA" "$i" >"$DIR/report.json" <<'EOF'
import json, sys
device, sha, i = sys.argv[1], sys.argv[2], int(sys.argv[3])
states = ["found", "held_for_confirmation", "failed", "quarantined"]
rules = [{"rule": f"app-{(i * 997 + k * 4099) % 100000:06d}", "apps": [{"kind": "deb", "id": "pkg", "version": "1",
          "path": None, "state": states[k % 4], "found_at": 1790000000, "since": 1790000001, "detail": None}]}
         for k in range(20)]
print(json.dumps({"version": 1, "device": device, "sequence": 1, "at": 1790000000, "agent_version": "0.2.0",
    "mode": "enforce", "policy": {"fleet": "bench", "version": 1, "sha256": sha, "applied_at": 1790000000},
    "health": {"degraded": False, "reasons": []}, "rules": rules, "events": [], "gap": None}))
EOF
    "${C[@]}" --cert "$DIR/pki/$d.pem" --key "$DIR/pki/$d.key" -H 'Content-Type: application/json' \
        --data-binary @"$DIR/report.json" -o /dev/null -w '' "$URL/v1/reports"
done
ADMIN=("${C[@]}" --cert "$DIR/pki/admin.pem" --key "$DIR/pki/admin.key")
# The upkeep task reads the policy from the repository (at start, then every 30 s): wait for it
# without asking /admin/ (so the peak RSS below is the server's before any admin request).
for _ in $(seq 600); do
    [ "$(sqlite3 "$DIR/fleet.db" 'SELECT COUNT(*) FROM policies' 2>/dev/null)" = 1 ] && break
    sleep 0.5
done
# A large fleet without issuing thousands of certificates: EMBARGO_BENCH_EXTRA_DEVICES rows are
# written straight into the server's SQLite store (a stand-in for that many reports; the reads
# measured here only see the stored rows). Each applies the big policy; every tenth has one rule
# installed, so the attention set and the per-rule counts grow with the fleet too.
EXTRA="${EMBARGO_BENCH_EXTRA_DEVICES:-0}"
if [ "$EXTRA" -gt 0 ]; then
    sqlite3 "$DIR/fleet.db" "PRAGMA busy_timeout=5000;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $EXTRA)
INSERT INTO devices (device, first_seen, last_seen, last_sequence, reported_at, agent_version, mode, policy_fleet,
    policy_version, policy_sha256, policy_applied_at, degraded, reasons)
SELECT printf('sim-%07d', i), 1790000000 + i, strftime('%s','now') - (i % 5000), 1, 1790000000, '0.2.0', 'enforce',
    'bench', 1, '$SHA', 1790000000, 0, '[]' FROM n;
WITH RECURSIVE n(i) AS (SELECT 10 UNION ALL SELECT i + 10 FROM n WHERE i + 10 <= $EXTRA)
INSERT INTO device_rules (device, rule, status, since, updated, apps)
SELECT printf('sim-%07d', i), printf('app-%06d', (i * 7) % $RULES), 'installed', 1790000000, 1790000000, '[]' FROM n;
INSERT OR IGNORE INTO rules (rule, first_seen, first_policy_version)
SELECT DISTINCT rule, 1790000000, 1 FROM device_rules;" >/dev/null
fi
hwm() { awk '/VmHWM/ {print $2}' "/proc/$SERVER/status"; }
echo "rules: $RULES  devices: $(($(echo $DEVICES | wc -w) + EXTRA))  server: $SERVER_BIN"
echo "peak RSS before the timed requests: $(hwm) kB"
first="$("${ADMIN[@]}" -o "$DIR/page.html" -w '%{time_total} s, HTTP %{http_code}' "$URL/admin/" 2>&1 || true)"
echo "first request (fills the server's caches): $first; peak RSS after it: $(hwm) kB"
[ -n "${EMBARGO_BENCH_FIRST_ONLY:-}" ] && exit 0
timed() { # label path
    local times=()
    for _ in $(seq "$REQUESTS"); do
        times+=("$("${ADMIN[@]}" -o "$DIR/out" -w '%{time_total}' "$URL$2")")
    done
    printf '%s\n' "${times[@]}" | sort -n | awk -v l="$1" -v b="$(wc -c <"$DIR/out")" '{a[NR]=$1} END {
        printf "%s: %d requests, median %.3f s, p90 %.3f s, max %.3f s, %d bytes\n", l, NR, a[int((NR+1)/2)], a[int(NR*0.9+0.999)], a[NR], b }'
}
timed "GET /admin/" /admin/
echo "page: $(grep -o '<tr data-rule=' "$DIR/out" | wc -l) rule rows"
echo "peak RSS after: $(hwm) kB"
if [ -z "${EMBARGO_BENCH_PAGES_ONLY:-}" ]; then
    last=$(( (RULES + 199) / 200 ))
    timed "GET /admin/?page=$last (the last page of a paged server)" "/admin/?page=$last"
    timed "GET /admin/?rule=app-05 (a filter)" "/admin/?rule=app-05"
    echo "peak RSS after: $(hwm) kB"
    timed "GET /admin/export/rules.csv" /admin/export/rules.csv
    echo "rows in the export: $(($(wc -l <"$DIR/out") - 1))"
    echo "peak RSS after: $(hwm) kB"
fi
