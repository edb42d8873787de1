#!/usr/bin/env bash
# Loa — browser tests of the web console: installs the pinned Playwright
# client (`npm ci` in tests/browser, from its package-lock.json; it uses
# Debian's /usr/bin/chromium, no browser download), builds the binaries,
# then runs tests/tests/console_browser.rs, which starts the controller and
# two receivers and runs tests/browser/console.test.mjs in headless
# Chromium. Screenshots, logs and figures: tests/artifacts/console/.
# Works without a terminal (CI=true), as root.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v node >/dev/null || { echo "browser-test: node not found (scripts/setup.sh installs it)" >&2; exit 1; }
[ -x "${LOA_CHROMIUM:-/usr/bin/chromium}" ] || { echo "browser-test: ${LOA_CHROMIUM:-/usr/bin/chromium} not found (scripts/setup.sh installs Debian's chromium)" >&2; exit 1; }

(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
cargo build -p loa-controller -p loa-receiver --bins
cargo test -p loa-e2e --test console_browser -- --ignored --nocapture --test-threads=1
