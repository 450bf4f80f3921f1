#!/usr/bin/env bash
# Instructions per chat message of the whole server path (decode, limits,
# commit, ack, fan-out encode, socket writes), counted by valgrind's
# callgrind on a fixed load: 40 clients in rooms of 4 sending at a low
# rate, once for SHORT and once for LONG seconds; the difference between
# the two runs divided by the difference in chat messages received cancels
# start-up, connecting and joining. Counts do not depend on the machine's
# load, unlike times. Usage: signaling/bench/callgrind.sh [out-dir]
#   CG_RATE=200  CG_SHORT=5s  CG_LONG=15s  (needs valgrind: apt-get install valgrind)
#   CG_SERVER_BIN=<another build of videochat-signaling> to profile that one
set -euo pipefail
cd "$(dirname "$0")/../.."
RATE=${CG_RATE:-200}
SHORT=${CG_SHORT:-5s}
LONG=${CG_LONG:-15s}
OUT_DIR=${1:-$(mktemp -d /tmp/videochat-callgrind.XXXXXX)}
mkdir -p "$OUT_DIR"

cargo build --release --locked -p videochat-signaling --bins >&2
BIN=target/release
SERVER_BIN=${CG_SERVER_BIN:-$BIN/videochat-signaling}
WORK=$(mktemp -d /tmp/videochat-cg.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

profile() { # name, duration
  local name=$1 duration=$2 port
  port=$(free_port)
  valgrind --tool=callgrind --callgrind-out-file="$OUT_DIR/callgrind.$name.out" \
    "$SERVER_BIN" --listen "127.0.0.1:$port" --data-dir "$WORK/data-$name" \
    --no-embedded-turn --rate-per-connection 100000 --rate-per-ip 10000000 \
    --connect-rate-per-ip 100000 --max-handshakes-per-ip 1000 --log warn \
    >/dev/null 2>"$OUT_DIR/valgrind.$name.log" &
  local pid=$!
  for _ in $(seq 600); do
    curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  "$BIN/videochat-bench" --url "ws://127.0.0.1:$port/ws" --clients 40 --room-size 4 \
    --rate "$RATE" --duration "$duration" --warmup 1s --connect-parallelism 4 --label "callgrind $name" >"$OUT_DIR/bench.$name.json"
  local chats
  chats=$(curl -fs "http://127.0.0.1:$port/metrics" |
    awk '/^videochat_signaling_messages_in_total\{type="chat"\}/ {print $2}')
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  local total
  total=$(awk '/Collected :/ {print $NF}' "$OUT_DIR/valgrind.$name.log" | tail -1)
  echo "$name $chats $total"
}

read -r _ short_chats short_ir < <(profile short "$SHORT")
read -r _ long_chats long_ir < <(profile long "$LONG")
python3 - "$short_chats" "$short_ir" "$long_chats" "$long_ir" <<'PY'
import json, sys
sc, si, lc, li = (float(x) for x in sys.argv[1:])
print(json.dumps({"chat_short": sc, "ir_short": si, "chat_long": lc, "ir_long": li,
                  "instructions_per_chat": round((li - si) / (lc - sc))}))
PY
echo "profiles in $OUT_DIR (callgrind_annotate --inclusive=yes $OUT_DIR/callgrind.long.out)" >&2
