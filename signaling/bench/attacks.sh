#!/usr/bin/env bash
# The issue-11 attacks as measured loads against a release videochat-signaling
# on loopback, each run on a fresh server. Prints one JSON line per run.
# Usage: signaling/bench/attacks.sh [out.jsonl]
#   BENCH_RUNS=3  BENCH_FLOODERS=10  BENCH_DURATION=20s  BENCH_ONLY=history|flood
# The attackers come from 127.0.0.2, the measured clients from 127.0.0.1,
# so that the per-address limits keep them apart as they would on a network.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/dev/stdout}
RUNS=${BENCH_RUNS:-3}
FLOODERS=${BENCH_FLOODERS:-10}
DURATION=${BENCH_DURATION:-20s}

cargo build --release --locked -p videochat-signaling --bins >&2
BIN=target/release
WORK=$(mktemp -d /tmp/videochat-attacks.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_server <args...>: a fresh server on a free port; sets PORT and PID.
start_server() {
  PORT=$(free_port)
  rm -rf "$WORK/data"
  "$BIN/videochat-signaling" --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" \
    --no-embedded-turn --log warn "$@" >"$WORK/server.log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && return
    sleep 0.1
  done
  echo "server did not start:" >&2; cat "$WORK/server.log" >&2; exit 1
}

stop_server() { kill "$PID"; wait "$PID" 2>/dev/null || true; }

ONLY=${BENCH_ONLY:-}
for run in $(seq "$RUNS"); do
  # (a) History attack. Rate limits out of the way (the attack at its worst):
  # only the byte bounds stand between it and the server's memory. One
  # attacker (the issue's attack), then 20 at once (memory grows with them,
  # each bounded by --max-outbox-bytes).
  for attackers in $([ "$ONLY" = flood ] || echo 1 20); do
    start_server --rate-per-connection 100000 --rate-per-ip 100000 --heartbeat 2s
    "$BIN/videochat-bench" history-attack --url "ws://127.0.0.1:$PORT/ws" \
      --server-pid "$PID" --messages 1000 --attackers "$attackers" --requests 300 \
      --watch 10s >>"$OUT"
    stop_server
  done

  # (b) Flood, default limits: the measured client alone, then under the flood.
  [ "$ONLY" = history ] && continue
  start_server
  "$BIN/videochat-bench" flood --url "ws://127.0.0.1:$PORT/ws" --server-pid "$PID" \
    --flooders 0 --duration "$DURATION" >>"$OUT"
  "$BIN/videochat-bench" flood --url "ws://127.0.0.1:$PORT/ws" --server-pid "$PID" \
    --flooders "$FLOODERS" --duration "$DURATION" >>"$OUT"
  stop_server
  echo "run $run done" >&2
done
