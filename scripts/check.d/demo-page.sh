#!/usr/bin/env bash
# The demo page's logic that can be checked without a browser (call-quality
# reporting), with Node's built-in test runner. The browser tests
# (signaling/tests/browser_call.rs) cover the page end to end.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v node >/dev/null 2>&1 || { echo "[demo page check] FAIL: node not found; scripts/setup.d/browser.sh installs it" >&2; exit 1; }
node --test signaling/tests/web/
