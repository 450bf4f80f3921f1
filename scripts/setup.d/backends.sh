# Real backends for the signaling cluster, fault and queue tests
# (signaling/tests/cluster*.rs, fault*.rs, queue*.rs): Redis 7 from Debian and
# the SecantusDB MongoDB wire-protocol server from PyPI in the project venv.
# Sourced by scripts/test. Tests start their own servers on free loopback
# ports, so Debian's redis-server service (port 6379) is stopped when apt
# starts it, only to keep the machine quiet.
if ! command -v redis-server >/dev/null 2>&1; then
  need_apt redis-server
  if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now redis-server >/dev/null 2>&1 || true
  fi
fi
need_pip "secantusdb==0.7.0b3" secantusd-py
VIDEOCHAT_REDIS_SERVER="${VIDEOCHAT_REDIS_SERVER:-$(command -v redis-server || true)}"
VIDEOCHAT_SECANTUSD="${VIDEOCHAT_SECANTUSD:-$VIDEOCHAT_VENV/bin/secantusd-py}"
if [ -z "$VIDEOCHAT_REDIS_SERVER" ] || [ ! -x "$VIDEOCHAT_SECANTUSD" ]; then
  log "redis-server or secantusd-py still missing after installing redis-server and secantusdb"
  return 1
fi
export VIDEOCHAT_REDIS_SERVER VIDEOCHAT_SECANTUSD
