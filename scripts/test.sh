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

# The unit tests first (two at a time), then two lanes of process tests at once, so the run
# fits in about half the time on two cores: the chaos suites (test/chaos*.test.ts: fixed-length
# runs against containers and process clusters, whose checkers judge histories, not speed) in
# one, the other process tests in the other, each lane one file at a time. The chaos lane's
# output is printed when both are done; the script fails if either lane does.
# KV_TEST_LANES=1 runs everything in one vitest, one process file at a time.
if [[ "${KV_TEST_LANES:-2}" == 1 ]]; then
  exec pnpm exec vitest run
fi
pnpm exec vitest run --project unit
chaos_log="$(mktemp -t kv-chaos-lane.XXXXXX)"
pnpm exec vitest run --project process test/chaos > "$chaos_log" 2>&1 &
chaos_pid=$!
trap 'kill "$chaos_pid" 2>/dev/null || true' INT TERM
other_status=0
pnpm exec vitest run --project process --exclude 'test/chaos*.test.ts' || other_status=$?
chaos_status=0
wait "$chaos_pid" || chaos_status=$?
echo
echo "=== the chaos lane (test/chaos*.test.ts), run alongside the process tests above ==="
cat "$chaos_log"
rm -f "$chaos_log"
echo "lanes: process tests exit $other_status, chaos exit $chaos_status"
((other_status == 0 && chaos_status == 0))
