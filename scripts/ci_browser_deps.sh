#!/usr/bin/env bash
# Browser for tests/test_browser.py: Debian's Chromium (Playwright's own browser download is not used)
# and the Playwright Python package, pinned. Needs root for apt-get; skips what is already there.
set -euo pipefail
PLAYWRIGHT_VERSION=1.65.0
if [[ ! -x /usr/bin/chromium ]]; then
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""
  if [[ "$(id -u)" != 0 ]]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core
fi
pip install "playwright==${PLAYWRIGHT_VERSION}"
/usr/bin/chromium --version 2>/dev/null
