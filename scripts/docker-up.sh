#!/usr/bin/env bash
# Installs Docker when missing (Debian), builds the node image with no registry needed, and
# starts the 3-node cluster of docker-compose.yml (127.0.0.1:7001-7003). Stop it with
# `docker-compose down` (add -v to delete the data volumes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/docker-build.sh
if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
"${compose[@]}" up -d
echo "waiting for a leader..."
for _ in $(seq 1 60); do
  if curl -sf http://127.0.0.1:7001/v1/cluster 2>/dev/null | grep -q '"leaderId":"n'; then
    curl -s http://127.0.0.1:7001/v1/cluster | grep -o '"leaderId":"[^"]*"'
    exit 0
  fi
  sleep 1
done
echo "no leader after 60 s; see: ${compose[*]} logs" >&2
exit 1
