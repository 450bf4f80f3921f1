#!/usr/bin/env bash
# Runs videochat-bench against videochat-signaling (embedded store: chat log,
# one fdatasync per commit group) and the Node.js reference server, same
# machine, same load, after measuring the disk's own 4 KiB write+fsync.
# Prints one JSON line per run. Usage: signaling/bench/compare.sh [out.jsonl]
#   BENCH_RATES="5000 15000 30000 60000"  BENCH_CLIENTS=400  BENCH_ROOM=4
#   BENCH_IDLE=5000  BENCH_DURATION=10s  NODE_BASELINE=<dir of server.js>
#   BENCH_ROUNDS=1 (rounds of everything; labels get "rN ")
# signaling/bench/summarize.py out.jsonl prints medians and per-round ratios.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/dev/stdout}
RATES=${BENCH_RATES:-"5000 15000 30000 60000"}
CLIENTS=${BENCH_CLIENTS:-400}
ROOM=${BENCH_ROOM:-4}
IDLE=${BENCH_IDLE:-5000}
DURATION=${BENCH_DURATION:-10s}
NODE_SRC=${NODE_BASELINE:-signaling/bench/node-ws-baseline}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"  # as many as the hard limit allows

cargo build --release --locked -p videochat-signaling --bins >&2
BIN=target/release
WORK=$(mktemp -d /tmp/videochat-bench.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

# The reference server, installed outside the repository.
cp -r "$NODE_SRC" "$WORK/node"
(cd "$WORK/node" && npm install --silent --no-audit --no-fund >&2)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_ours() {
  PORT=$(free_port)
  rm -rf "$WORK/data"
  "$BIN/videochat-signaling" --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" \
    --no-embedded-turn --rate-per-connection 100000 --rate-per-ip 10000000 --connect-rate-per-ip 100000 \
    --max-connections 100000 --max-connections-per-ip 100000 --max-handshakes-per-ip 100000 \
    --log warn >/dev/null 2>&1 &
  PID=$!
  sleep 1
}

start_node() {
  PORT=$(free_port)
  node "$WORK/node/server.js" "$PORT" >/dev/null 2>&1 &
  PID=$!
  sleep 1
}

run() { # label, extra args...
  local label=$1; shift
  "$BIN/videochat-bench" --url "ws://127.0.0.1:$PORT/ws" --server-pid "$PID" --label "$label" "$@" | tee -a "$OUT"
}

# The disk under the data directory: 4 KiB appended and fsynced, 1,000 times.
disk_sync() { # label
  python3 - "$WORK/disk-probe" "$1" <<'PY' | tee -a "$OUT"
import json, os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
block, took = b"x" * 4096, []
for _ in range(1000):
    t = time.perf_counter(); os.write(fd, block); os.fsync(fd); took.append(time.perf_counter() - t)
os.close(fd); os.unlink(sys.argv[1]); took.sort()
load = os.getloadavg()[0]
print(json.dumps({"label": sys.argv[2], "disk_write_fsync_p50_ms": round(took[500] * 1e3, 3),
                  "disk_write_fsync_p99_ms": round(took[990] * 1e3, 3), "load_avg_1m": load}))
PY
}

for round in $(seq 1 "${BENCH_ROUNDS:-1}"); do
  tag="r$round "
  disk_sync "${tag}disk"
  for server in ours node; do
    "start_$server"
    run "${tag}$server idle" --clients "$IDLE" --room-size "$ROOM" --idle --connect-parallelism 128
    kill "$PID"; wait "$PID" 2>/dev/null || true
    for rate in $RATES; do
      "start_$server"
      echo "{\"label\":\"${tag}load $server $rate/s\",\"load_avg_1m\":$(cut -d' ' -f1 /proc/loadavg)}" | tee -a "$OUT"
      run "${tag}$server $rate/s" --clients "$CLIENTS" --room-size "$ROOM" --rate "$rate" --duration "$DURATION"
      kill "$PID"; wait "$PID" 2>/dev/null || true
    done
  done
  disk_sync "${tag}disk after"
done
