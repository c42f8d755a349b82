#!/usr/bin/env bash
# Produce throughput with and without retention deleting segments during the
# run (issue: "deletion under load does not cost more than 10 % of produce
# throughput"). Alternates, for ROUNDS rounds, two fresh brokers on
# 127.0.0.1 that differ only in retention_ms:
#   off: retention_ms = 10^12 (nothing ever expires);
#   on:  retention_ms = 1000, so every full segment is deleted about a
#        second after it filled, while the producer keeps writing.
# Both use SEGMENT_MIB segments and clean_interval_ms = 200 (the cleaner
# ticks in both; it finds something to delete only in "on").
#   scripts/bench-retention.sh [BINARY] [MESSAGES] [ROUNDS]
# Defaults: target/release/ferromq, 1000000, 3. Prints per round the msg/s
# of both, on/off, the brokers' CPU seconds (user/system) and the segments
# "on" deleted (from /metrics).
# Every run starts SETTLE seconds (default 20) after the previous run's data
# directory was deleted, so that both start on memory the guest handed back
# (docs/performance.md, "fresh memory is slow"); the order alternates
# (off first in odd rounds, on first in even ones).
set -u
BIN=${1:-target/release/ferromq}
MESSAGES=${2:-1000000}
ROUNDS=${3:-3}
SEGMENT_MIB=${SEGMENT_MIB:-16}
SETTLE=${SETTLE:-20}
[ -x "$BIN" ] || { echo "no executable $BIN (cargo build --release)" >&2; exit 1; }
DIR=$(mktemp -d "${TMPDIR:-/tmp}/bench-retention.XXXX")
BROKER=
cleanup() {
  [ -n "$BROKER" ] && kill "$BROKER" 2>/dev/null && wait "$BROKER" 2>/dev/null
  rm -rf "$DIR"
}
trap cleanup EXIT

# start_broker RETENTION_MS: a fresh broker; sets BROKER, NS, HTTP.
start_broker() {
  rm -rf "$DIR/data"
  sleep "$SETTLE"
  FERROMQ__STORE__SEGMENT_BYTES=$((SEGMENT_MIB << 20)) \
  FERROMQ__STORE__RETENTION_MS=$1 \
  FERROMQ__STORE__CLEAN_INTERVAL_MS=200 \
    "$BIN" broker --data-dir "$DIR/data" --listen 127.0.0.1:0 --namesrv-listen 127.0.0.1:0 \
      --http 127.0.0.1:0 >"$DIR/ready" 2>"$DIR/broker.err" &
  BROKER=$!
  for _ in $(seq 1 300); do grep -q ' ready: ' "$DIR/ready" && break; sleep 0.1; done
  grep -q ' ready: ' "$DIR/ready" || { echo "broker not ready:" >&2; cat "$DIR/broker.err" >&2; stop_broker; exit 1; }
  NS=$(grep -o 'namesrv=[^ ]*' "$DIR/ready" | cut -d= -f2)
  HTTP=$(grep -o 'http=[^ ]*' "$DIR/ready" | cut -d= -f2)
}
stop_broker() { kill "$BROKER" 2>/dev/null; wait "$BROKER" 2>/dev/null; BROKER=; }

# metric NAME: the broker's counter (0 if absent).
metric() {
  python3 - "$HTTP" "$1" <<'EOF'
import sys, urllib.request
body = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=10).read().decode()
print(int(sum(float(l.rsplit(" ", 1)[1]) for l in body.splitlines()
              if l.split("{")[0].split(" ")[0] == sys.argv[2])))
EOF
}

# run LABEL RETENTION_MS: prints "LABEL msg/s segments_deleted segments_left
# broker_cpu_user/system_seconds".
run() {
  start_broker "$2"
  local rate
  "$BIN" bench produce -n "$NS" --messages "$MESSAGES" --size 1024 --batch 1000 --json \
    >"$DIR/bench.out" 2>"$DIR/bench.err"
  rate=$(tail -n 1 "$DIR/bench.out" |
    python3 -c "import json,sys; print(int(json.loads(sys.stdin.read())['msgs_per_sec']))") || {
    echo "bench produce failed ($1):" >&2; tail -n 5 "$DIR/bench.err" "$DIR/broker.err" >&2; stop_broker; exit 1; }
  local deleted left
  deleted=$(metric ferromq_store_segments_deleted_total)
  left=$(find "$DIR/data/commitlog" -type f | wc -l)
  # The broker's CPU time (user + system) over the run, in seconds.
  local cpu
  cpu=$(awk -v hz="$(getconf CLK_TCK)" '{ printf "%.1f/%.1f", $14 / hz, $15 / hz }' "/proc/$BROKER/stat")
  stop_broker
  rm -rf "$DIR/data"
  echo "$1 $rate $deleted $left $cpu"
}

echo "binary $BIN, $MESSAGES x 1024 B, batch 1000, ${SEGMENT_MIB} MiB segments, $ROUNDS rounds"
printf '%-6s %12s %12s %8s %16s %16s %s\n' round off_msg/s on_msg/s on/off off_cpu_usr/sys on_cpu_usr/sys on_segments_deleted
ratios=()
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then
    read -r _ off off_del off_left off_cpu <<<"$(run off 1000000000000)"
    read -r _ on on_del on_left on_cpu <<<"$(run on 1000)"
  else
    read -r _ on on_del on_left on_cpu <<<"$(run on 1000)"
    read -r _ off off_del off_left off_cpu <<<"$(run off 1000000000000)"
  fi
  [ -n "$off" ] && [ -n "$on" ] || exit 1
  [ "$off_del" = 0 ] || echo "warning: the off broker deleted $off_del segments" >&2
  ratio=$(python3 -c "print(f'{$on / $off:.3f}')")
  ratios+=("$ratio")
  printf '%-6s %12s %12s %8s %16s %16s %s\n' "$r" "$off" "$on" "$ratio" "$off_cpu" "$on_cpu" \
    "$on_del (left $on_left of off's $off_left)"
done
python3 -c "import statistics,sys; r=[float(x) for x in sys.argv[1:]]; print(f'on/off median {statistics.median(r):.3f}, min {min(r):.3f}, max {max(r):.3f}')" "${ratios[@]}"
