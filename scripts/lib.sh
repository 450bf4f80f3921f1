# Shared helpers for the set-up and test scripts. Sourced, not run.
# Everything installs into the repository's ignored folders (.tools, .venv)
# or through apt-get, and only when it is missing.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS="$ROOT/.tools"
VENV="$ROOT/.venv"
export VIDEOCHAT_TOOLS="$TOOLS"
export VIDEOCHAT_VENV="$VENV"
mkdir -p "$TOOLS"

log() { printf '[setup] %s\n' "$*" >&2; }

_apt_updated=0
# need_apt PACKAGE... : install Debian packages that are not installed yet.
need_apt() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  if [ $_apt_updated -eq 0 ]; then
    log "apt-get update"
    $sudo apt-get update -qq >/dev/null
    _apt_updated=1
  fi
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# need_venv : a Python virtual environment at .venv.
need_venv() {
  # A venv whose creation was interrupted has python but no pip: make it again.
  [ -x "$VENV/bin/pip" ] || { log "python venv at $VENV"; python3 -m venv --clear "$VENV"; }
}

# need_pip PACKAGE[==VERSION] COMMAND : pip-install into the venv unless COMMAND exists there.
need_pip() {
  need_venv
  [ -x "$VENV/bin/$2" ] && return 0
  log "pip install $1"
  "$VENV/bin/pip" install -q --disable-pip-version-check "$1"
}
