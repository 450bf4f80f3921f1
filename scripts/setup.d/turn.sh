# TURN relay (turn-server/): coturn's turnutils_uclient is the third-party
# client of the interop test; coturn's turnserver is the benchmark reference.
# Sourced by scripts/test with scripts/lib.sh's helpers.

if ! command -v turnutils_uclient >/dev/null 2>&1; then
  need_apt coturn
  # Debian's coturn may start a turnserver on 3478 on install. Tests use
  # ephemeral ports, but a stray daemon must not stay behind.
  _turn_sudo=""
  [ "$(id -u)" -ne 0 ] && _turn_sudo="sudo"
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet coturn 2>/dev/null; then
    $_turn_sudo systemctl stop coturn || true
    $_turn_sudo systemctl disable coturn >/dev/null 2>&1 || true
  elif [ -x /etc/init.d/coturn ]; then
    $_turn_sudo /etc/init.d/coturn stop >/dev/null 2>&1 || true
  fi
  unset _turn_sudo
fi
if ! command -v turnutils_uclient >/dev/null 2>&1; then
  log "turnutils_uclient is still missing after installing coturn"
  return 1
fi
