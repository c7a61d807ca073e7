#!/usr/bin/env bash
# Installs what is needed (pnpm and the locked dependencies), builds, and starts a local
# 3-node single-leader cluster on https://127.0.0.1:7001-7003 (peer ports 7101-7103, mutual
# TLS; the members elect n1, the preferred leader), data and logs in ./data, and on first start
# the cluster's certificates and root's password in ./data/certs (kv certs init). Extra
# arguments go to kv-cluster (see: bash scripts/start.sh --help): --groups 2 starts a sharded
# deployment instead, --regions 2 two regions (us on 7001-7003, eu on 7011-7013) that each take
# their own writes and ship them to the other. Ctrl-C stops every node cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-pnpm.sh
pnpm install --frozen-lockfile --reporter=silent
pnpm build >/dev/null
exec node packages/cli/dist/kv-cluster.js "$@"
