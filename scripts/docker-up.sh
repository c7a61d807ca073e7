#!/usr/bin/env bash
# Installs Docker when missing (Debian), builds the node image with no registry needed, makes
# the cluster's certificates in deploy/certs (kv certs init: a CA, members n1-n5, root's client
# certificate and root.password; kept between runs), and starts the 3-node single-leader
# cluster of docker-compose.yml (https://127.0.0.1:7001-7003), or with --leaderless the 5-node
# leaderless cluster of deploy/docker-compose.leaderless.yml (https://127.0.0.1:7001-7005), or
# with --shards 2 groups of 3 behind 2 kv-routers (deploy/docker-compose.shards.yml, its
# certificates in deploy/certs-shards; routers on https://127.0.0.1:7000 and :7010).
# Stop it with `docker-compose down` (add -v to delete the data volumes; for the others add
# `-f deploy/docker-compose.leaderless.yml -p kvstore-leaderless`, or
# `-f deploy/docker-compose.shards.yml -p kvstore-shards`).
set -euo pipefail
cd "$(dirname "$0")/.."
leaderless=false
shards=false
case "${1:-}" in
  --leaderless) leaderless=true ;;
  --shards) shards=true ;;
  '') ;;
  -h | --help)
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "unknown option $1 (use --leaderless, --shards, or nothing)" >&2
    exit 2
    ;;
esac
bash scripts/docker-build.sh
if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
if $shards; then
  certs=deploy/certs-shards
  if [ ! -f "$certs/ca.crt" ]; then
    # One CA, cluster id, root password and auth secret for both groups, and the routers'
    # certificates (kv://<cluster>/router/r1 and r2).
    node packages/cli/dist/kv.js certs init --dir "$certs" \
      --members g1n1,g1n2,g1n3,g2n1,g2n2,g2n3 --routers r1,r2 --hosts localhost >/dev/null
    echo "made the deployment's certificates and root's password in $certs"
  fi
  tls=(--cacert "$certs/ca.crt" --cert "$certs/root.crt" --key "$certs/root.key")
  compose+=(-f deploy/docker-compose.shards.yml -p kvstore-shards)
  "${compose[@]}" run --rm certs >/dev/null
  "${compose[@]}" up -d
  echo "waiting for both routers to reach both groups..."
  for _ in $(seq 1 90); do
    if curl -sf "${tls[@]}" https://127.0.0.1:7000/ready >/dev/null 2>&1 &&
      curl -sf "${tls[@]}" https://127.0.0.1:7010/ready >/dev/null 2>&1; then
      echo "sharded deployment up: routers on https://127.0.0.1:7000 and https://127.0.0.1:7010"
      echo "Try: node packages/cli/dist/kv.js --url https://127.0.0.1:7000,https://127.0.0.1:7010 --cacert $certs/ca.crt --cert $certs/root.crt --key $certs/root.key shard map"
      exit 0
    fi
    sleep 1
  done
  echo "the routers were not ready within 90 s; see: ${compose[*]} logs" >&2
  exit 1
fi
certs=deploy/certs
if [ ! -f "$certs/ca.crt" ]; then
  node packages/cli/dist/kv.js certs init --dir "$certs" --members n1,n2,n3,n4,n5 \
    --hosts localhost >/dev/null
  echo "made the cluster's certificates and root's password in $certs"
fi
tls=(--cacert "$certs/ca.crt" --cert "$certs/root.crt" --key "$certs/root.key")
if $leaderless; then compose+=(-f deploy/docker-compose.leaderless.yml -p kvstore-leaderless); fi
# The nodes run as an unprivileged user: the certificates go into a volume it owns.
"${compose[@]}" run --rm certs >/dev/null
"${compose[@]}" up -d
try="Try: curl ${tls[*]} https://127.0.0.1:7001/v1/cluster
 or: node packages/cli/dist/kv.js login --user root --password-file $certs/root.password --cacert $certs/ca.crt"
if $leaderless; then
  echo "waiting for the 5 members to see each other..."
  for _ in $(seq 1 60); do
    if [ "$(curl -sf "${tls[@]}" https://127.0.0.1:7001/v1/cluster 2>/dev/null | grep -o '"up":true' | wc -l)" = 5 ]; then
      echo "leaderless cluster up on https://127.0.0.1:7001-7005"
      echo "$try"
      exit 0
    fi
    sleep 1
  done
  echo "the members did not all come up within 60 s; see: ${compose[*]} logs" >&2
  exit 1
fi
echo "waiting for a leader..."
for _ in $(seq 1 60); do
  if curl -sf "${tls[@]}" https://127.0.0.1:7001/v1/cluster 2>/dev/null | grep -q '"leaderId":"n'; then
    curl -s "${tls[@]}" https://127.0.0.1:7001/v1/cluster | grep -o '"leaderId":"[^"]*"'
    echo "$try"
    exit 0
  fi
  sleep 1
done
echo "no leader after 60 s; see: ${compose[*]} logs" >&2
exit 1
