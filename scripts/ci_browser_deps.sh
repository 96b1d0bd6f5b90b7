#!/usr/bin/env bash
# Browser for tests/test_browser.py: Debian's Chromium (Playwright's own browser download is not used)
# (the Playwright Python package is pinned in requirements-test.txt). Needs root for apt-get; skips what is
# already there.
set -euo pipefail
if [[ ! -x /usr/bin/chromium ]]; then
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""
  if [[ "$(id -u)" != 0 ]]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core
fi
/usr/bin/chromium --version 2>/dev/null
