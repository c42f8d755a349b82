#!/usr/bin/env bash
# Produce throughput of a master alone, with one slave under async
# replication and with one slave under sync replication, on this machine
# (both processes on loopback), plus single-send latency (one send in flight)
# for each, after a 20,000-message warm-up of the same topic; rounds
# alternate the three setups so they share the machine's noise
# (docs/performance.md, "Replication").
#   scripts/bench-replication.sh [path/to/ferromq] [MESSAGES] [ROUNDS]
# Honours TMPDIR (where the data directories go).
set -u
BIN=${1:-target/release/ferromq}
N=${2:-1000000}
ROUNDS=${3:-3}
DIR=$(mktemp -d "${TMPDIR:-/tmp}/bench-repl.XXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$DIR"
}
trap cleanup EXIT

wait_ready() { for _ in $(seq 1 200); do grep -q ' ready: ' "$1" && return 0; sleep 0.05; done; return 1; }

# start SETUP: none | async | sync
start() {
  rm -rf "$DIR/m" "$DIR/s" "$DIR"/*.ready
  local mode=async
  [ "$1" = sync ] && mode=sync
  "$BIN" broker --data-dir "$DIR/m" --listen 127.0.0.1:0 --namesrv-listen 127.0.0.1:0 --http 0 \
    --replication "$mode" >"$DIR/m.ready" 2>"$DIR/m.err" &
  PIDS+=($!)
  wait_ready "$DIR/m.ready" || { echo "master did not start"; cat "$DIR/m.err"; exit 1; }
  NS=$(grep -o 'namesrv=[^ ]*' "$DIR/m.ready" | cut -d= -f2)
  MASTER=$(grep -o 'broker=[^ ]*' "$DIR/m.ready" | cut -d= -f2)
  if [ "$1" != none ]; then
    FERROMQ__REPLICATION__MASTER=$MASTER "$BIN" broker --data-dir "$DIR/s" --listen 127.0.0.1:0 \
      --no-embedded-namesrv --namesrv "$NS" --http 0 --broker-id 1 >"$DIR/s.ready" 2>"$DIR/s.err" &
    PIDS+=($!)
    wait_ready "$DIR/s.ready" || { echo "slave did not start"; cat "$DIR/s.err"; exit 1; }
    # The slave follows once its handshake is done; a sync send needs it.
    for _ in $(seq 1 100); do grep -q 'following the master' "$DIR/s.err" && break; sleep 0.05; done
  fi
}
stop() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  PIDS=()
}
summary() {
  python3 -c "import json,sys; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); l=d['latency_us']
print(sys.argv[1], sys.argv[2], int(d['msgs_per_sec']), 'msg/s', 'p50', l['p50'], 'p99', l['p99'], 'us')" "$1" "$2"
}

for round in $(seq 1 "$ROUNDS"); do
  for setup in none async sync; do
    start "$setup"
    # Warm-up: the topic's creation and its queues' first files (on the
    # slave too) are one-off costs, not the steady rate measured next.
    "$BIN" bench produce -n "$NS" --messages 20000 --size 1024 --batch 1000 --json >/dev/null 2>&1
    "$BIN" bench produce -n "$NS" --messages "$N" --size 1024 --batch 1000 --json 2>/dev/null |
      summary "$setup" "produce(round $round)"
    "$BIN" bench latency -n "$NS" --messages 5000 --size 1024 --topic lat --json 2>/dev/null |
      summary "$setup" "single-send(round $round)"
    if [ "$setup" != none ]; then
      # Everything acknowledged reached the slave (compare the logs' ends).
      sleep 1
      same=identical
      for f in "$DIR"/m/commitlog/*; do
        cmp -s "$f" "$DIR/s/commitlog/$(basename "$f")" || same=DIFFERENT
      done
      echo "$setup slave-copy(round $round) $same"
    fi
    stop
  done
done
