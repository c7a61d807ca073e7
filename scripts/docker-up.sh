#!/usr/bin/env bash
# Installs Docker when missing (Debian), builds the node image with no registry needed, and
# starts the 3-node single-leader cluster of docker-compose.yml (127.0.0.1:7001-7003), or with
# --leaderless the 5-node leaderless cluster of deploy/docker-compose.leaderless.yml
# (127.0.0.1:7001-7005). Stop it with `docker-compose down` (add -v to delete the data
# volumes; for the leaderless one add `-f deploy/docker-compose.leaderless.yml -p kvstore-leaderless`).
set -euo pipefail
cd "$(dirname "$0")/.."
leaderless=false
case "${1:-}" in
  --leaderless) leaderless=true ;;
  '') ;;
  -h | --help)
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "unknown option $1 (use --leaderless, or nothing)" >&2
    exit 2
    ;;
esac
bash scripts/docker-build.sh
if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
if $leaderless; then
  compose+=(-f deploy/docker-compose.leaderless.yml -p kvstore-leaderless)
  "${compose[@]}" up -d
  echo "waiting for the 5 members to see each other..."
  for _ in $(seq 1 60); do
    if [ "$(curl -sf http://127.0.0.1:7001/v1/cluster 2>/dev/null | grep -o '"up":true' | wc -l)" = 5 ]; then
      echo "leaderless cluster up on http://127.0.0.1:7001-7005"
      exit 0
    fi
    sleep 1
  done
  echo "the members did not all come up within 60 s; see: ${compose[*]} logs" >&2
  exit 1
fi
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
