#!/usr/bin/env bash
# Produce (1 KiB, batches of 100 and of 1000) and consume throughput of one
# broker with ACL off and with ACL on (every request signed, checked and
# authorized), rounds alternating the two so they share the machine's noise
# (docs/performance.md, "Access control"; TLS is scripts in docs/security.md).
#   scripts/bench-acl.sh [path/to/ferromq] [MESSAGES] [ROUNDS]
# Honours TMPDIR (where the data directories go).
set -u
BIN=${1:-target/release/ferromq}
N=${2:-1000000}
ROUNDS=${3:-3}
DIR=$(mktemp -d "${TMPDIR:-/tmp}/bench-acl.XXXX")
PID=
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$DIR"
}
trap cleanup EXIT

cat >"$DIR/acl.toml" <<'ACL'
[[accounts]]
access_key = "root"
secret_key = "root-secret-0001"
admin = true

[[accounts]]
access_key = "app"
secret_key = "app-secret-00001"
default_topic_perm = "PUB|SUB"
default_group_perm = "SUB"
ACL

wait_ready() { for _ in $(seq 1 200); do grep -q ' ready: ' "$1" && return 0; sleep 0.05; done; return 1; }

# start SETUP: off | on
start() {
  rm -rf "$DIR/d" "$DIR"/*.ready
  if [ "$1" = on ]; then
    export FERROMQ__ACL__ENABLED=true FERROMQ__ACL__FILE="$DIR/acl.toml" \
      FERROMQ__ACL__ACCESS_KEY=root FERROMQ__ACL__SECRET_KEY=root-secret-0001
    CRED=(--access-key app --secret-key app-secret-00001)
    ROOT=(--access-key root --secret-key root-secret-0001)
  else
    ROOT=()
    unset FERROMQ__ACL__ENABLED FERROMQ__ACL__FILE FERROMQ__ACL__ACCESS_KEY FERROMQ__ACL__SECRET_KEY
    CRED=()
  fi
  "$BIN" broker --data-dir "$DIR/d" --listen 127.0.0.1:0 --namesrv-listen 127.0.0.1:0 --http 0 \
    >"$DIR/b.ready" 2>"$DIR/b.err" &
  PID=$!
  wait_ready "$DIR/b.ready" || { echo "broker did not start"; cat "$DIR/b.err"; exit 1; }
  NS=$(grep -o 'namesrv=[^ ]*' "$DIR/b.ready" | cut -d= -f2)
}
stop() {
  kill "$PID" 2>/dev/null
  wait 2>/dev/null
  PID=
}
rate() {
  python3 -c "import json,sys; d=json.loads(sys.stdin.read().strip().splitlines()[-1])
print(sys.argv[1], sys.argv[2], int(d['msgs_per_sec']), 'msg/s')" "$1" "$2"
}

for round in $(seq 1 "$ROUNDS"); do
  for setup in off on; do
    start "$setup"
    # Warm-up (and, as an admin, the topic's creation).
    "$BIN" bench produce -n "$NS" "${ROOT[@]}" --messages 20000 --size 1024 --batch 1000 --json >/dev/null 2>&1
    for batch in 100 1000; do
      "$BIN" bench produce -n "$NS" "${CRED[@]}" --messages "$N" --size 1024 --batch "$batch" --json 2>/dev/null |
        rate "acl-$setup" "produce-batch$batch(round $round)"
    done
    "$BIN" bench consume -n "$NS" "${CRED[@]}" --messages "$N" --json 2>/dev/null |
      rate "acl-$setup" "consume(round $round)"
    stop
  done
done
