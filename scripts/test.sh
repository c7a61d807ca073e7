#!/usr/bin/env bash
# Installs what is needed (pnpm and the locked dependencies; on Debian, Docker and the programs
# the tests drive when they are missing: wrk, redis-tools, redis-server, chromium, prometheus),
# builds, makes the node image, and runs every test: unit tests, the process tests that start,
# load, kill -9 and restart real nodes (and drive redis-cli, ioredis, Chromium and Prometheus
# against them), and the chaos smoke matrix and teeth tests on real containers.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-pnpm.sh
pnpm install --frozen-lockfile --reporter=silent
pnpm build
bash scripts/docker-build.sh
bash scripts/ensure-tools.sh
pnpm exec vitest run
