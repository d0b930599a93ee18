#!/usr/bin/env bash
# CI for the VS Code extension: install exactly the locked dependencies, compile, run the unit tests (mocked
# vscode API) and package a .vsix. Runs non-interactively; exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")"
export CI=true
npm ci --no-audit --no-fund --prefer-offline
rm -rf out
npm run compile
npm test
npm run package
ls -l kvblend.vsix
