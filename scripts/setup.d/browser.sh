# Browser call test (signaling/tests/browser_call.rs): Debian chromium and
# chromium-driver drive two headless WebRTC peers; Node runs the demo page's
# unit tests. Sourced by scripts/test.
need_apt chromium chromium-driver
# The demo page's own unit tests (scripts/check.d/demo-page.sh) run in Node.
command -v node >/dev/null 2>&1 || need_apt nodejs
VIDEOCHAT_CHROMIUM="${VIDEOCHAT_CHROMIUM:-$(command -v chromium || true)}"
VIDEOCHAT_CHROMEDRIVER="${VIDEOCHAT_CHROMEDRIVER:-$(command -v chromedriver || true)}"
if [ -z "$VIDEOCHAT_CHROMIUM" ] || [ -z "$VIDEOCHAT_CHROMEDRIVER" ]; then
  log "chromium or chromedriver still missing after apt-get install chromium chromium-driver"
  return 1
fi
export VIDEOCHAT_CHROMIUM VIDEOCHAT_CHROMEDRIVER
