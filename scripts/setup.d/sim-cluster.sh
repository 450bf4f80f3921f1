# Simulated cluster (sim-cluster/): running pods live in network namespaces
# joined by a bridge (iproute2's `ip`), and their volumes are bind mounts
# made inside each pod's mount namespace (util-linux: mount, nsenter, kill).
# Sourced by scripts/test with scripts/lib.sh's helpers.

if ! command -v ip >/dev/null 2>&1; then
  need_apt iproute2
fi
if ! command -v nsenter >/dev/null 2>&1; then
  need_apt util-linux
fi
if ! command -v ip >/dev/null 2>&1 || ! command -v nsenter >/dev/null 2>&1; then
  log "ip (iproute2) or nsenter (util-linux) is still missing"
  return 1
fi
