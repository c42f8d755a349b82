#!/usr/bin/env bash
# One benchmark round against fresh brokers of one build, for before/after
# comparisons in one sitting (docs/performance.md): produce, consume and e2e
# on 8 queues, then produce over 10 topics x 1000 queues.
#   scripts/bench-round.sh path/to/ferromq LABEL
# Alternate two builds' rounds (A B A B) and compare only within the sitting.
set -u
BIN=$1
LABEL=$2
DIR=$(mktemp -d "/tmp/bench-$LABEL.XXXX")
trap 'rm -rf "$DIR"' EXIT

start_broker() {
  rm -rf "$DIR/data"
  "$BIN" broker --data-dir "$DIR/data" --listen 127.0.0.1:0 --namesrv-listen 127.0.0.1:0 --http 0 \
    >"$DIR/ready" 2>"$DIR/broker.err" &
  BROKER=$!
  for _ in $(seq 1 100); do grep -q ' ready: ' "$DIR/ready" && break; sleep 0.1; done
  NS=$(grep -o 'namesrv=[^ ]*' "$DIR/ready" | cut -d= -f2)
}
stop_broker() { kill "$BROKER"; wait "$BROKER" 2>/dev/null; }
summary() {
  python3 -c "import json,sys; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); l=d['latency_us']
print('$LABEL', sys.argv[1], int(d['msgs_per_sec']), 'msg/s', 'p50', l['p50'], 'p99', l['p99'], 'us')" "$1"
}

start_broker
"$BIN" bench produce -n "$NS" --messages 1000000 --batch 1000 --json 2>/dev/null | summary produce
"$BIN" bench consume -n "$NS" --messages 1000000 --json 2>/dev/null | summary consume
"$BIN" bench e2e -n "$NS" --messages 20000 --rate 10000 --topic e2e --json 2>/dev/null | summary e2e
stop_broker
start_broker
"$BIN" bench produce -n "$NS" --messages 1000000 --batch 1000 --topics 10 --queues 1000 --json 2>/dev/null |
  summary produce-10k-queues
stop_broker
