#!/usr/bin/env bash
# CI for the VS Code extension: install exactly the locked dependencies, compile, run the unit tests (mocked
# vscode API), the smoke tests in a fake VS Code host (the failure paths against stand-in servers; against the
# real server when KVBLEND_SMOKE_SERVER names its command, a JSON array, e.g.
# '["/path/.venv/bin/python", "-m", "kvblend", "serve"]'), and package a .vsix.
# Runs non-interactively; exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")"
export CI=true
npm ci --no-audit --no-fund --prefer-offline
rm -rf out
npm run compile
npm test
# The failure-path smoke tests use stand-in servers and always run; the real-server one skips itself without
# KVBLEND_SMOKE_SERVER.
if [ -z "${KVBLEND_SMOKE_SERVER:-}" ]; then
    echo "KVBLEND_SMOKE_SERVER not set: smoke test against the real server skipped"
fi
npm run test:smoke
npm run package
ls -l kvblend.vsix
