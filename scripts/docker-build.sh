#!/usr/bin/env bash
# Builds the node image (kvstore-node:local by default) with no network during the build:
#  1. builds the workspace and prepares a production bundle of kv-node in deploy/.bundle
#     (pnpm deploy --prod), with kv-router in deploy/.bundle/router;
#  2. uses the official node:20-bookworm-slim base when it is already present or can be
#     pulled, and otherwise creates kvstore/node-base:local from this machine's node binary
#     (scripts/docker-base-image.sh);
#  3. docker build -f deploy/Dockerfile.
#   bash scripts/docker-build.sh [IMAGE]
set -euo pipefail
cd "$(dirname "$0")/.."
image="${1:-kvstore-node:local}"
source scripts/ensure-pnpm.sh
bash scripts/ensure-docker.sh
pnpm install --frozen-lockfile --reporter=silent
pnpm build >/dev/null
rm -rf deploy/.bundle
pnpm --filter @kvstore/cli deploy --prod --legacy deploy/.bundle >/dev/null
# kv-router beside kv-node, when the workspace has it: node /app/router/dist/main.js in the
# image (deploy/docker-compose.shards.yml runs it).
if [ -d packages/router ]; then
  pnpm --filter @kvstore/router deploy --prod --legacy deploy/.bundle/router >/dev/null
fi

base="${BASE_IMAGE:-}"
if [ -z "$base" ]; then
  if docker image inspect node:20-bookworm-slim >/dev/null 2>&1 ||
    timeout 20 docker pull -q node:20-bookworm-slim >/dev/null 2>&1; then
    base=node:20-bookworm-slim
  else
    echo "No registry reachable: making a local base image from this machine's node."
    bash scripts/docker-base-image.sh kvstore/node-base:local
    base=kvstore/node-base:local
  fi
fi
docker build -q --build-arg "BASE_IMAGE=$base" -f deploy/Dockerfile -t "$image" . >/dev/null
echo "built $image (base $base)"
