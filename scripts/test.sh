#!/usr/bin/env bash
# Installs what is needed (pnpm and the locked dependencies), builds, and runs every test:
# unit tests, and the process tests that start, load, kill -9 and restart real nodes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-pnpm.sh
pnpm install --frozen-lockfile --reporter=silent
pnpm build
pnpm exec vitest run
