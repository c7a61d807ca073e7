#!/usr/bin/env bash
# Installs what is needed (pnpm and the locked dependencies), builds, and starts one node on
# http://127.0.0.1:7001 with its data in ./data/n1. Extra arguments go to kv-node
# (see: bash scripts/start.sh --help). Ctrl-C stops it cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-pnpm.sh
pnpm install --frozen-lockfile --reporter=silent
pnpm build >/dev/null
cat <<'MSG'

  Starting a node on http://127.0.0.1:7001 (data in ./data/n1). Try, in another terminal:
    curl -X PUT --data-binary 'hello' http://127.0.0.1:7001/v1/kv/greeting
    curl http://127.0.0.1:7001/v1/kv/greeting
    node packages/cli/dist/kv.js ls
  Ctrl-C stops it cleanly.

MSG
exec node packages/cli/dist/kv-node.js --data-dir ./data/n1 "$@"
