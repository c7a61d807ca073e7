#!/usr/bin/env bash
# Makes a Docker engine available: on Debian, installs docker.io, docker-compose (v1) and
# iptables when docker is missing, then starts dockerd in the background when no engine
# answers. Needs root for the install and the daemon. Idempotent; source it or run it.
set -euo pipefail

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker-compose >/dev/null 2>&1 ||
  ! command -v iptables >/dev/null 2>&1; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-docker: Docker is missing and this is not Debian; install Docker by hand." >&2
    exit 1
  fi
  echo "Installing docker.io, docker-compose and iptables from Debian's packages..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose iptables >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  echo "Starting dockerd in the background (log: /tmp/kvstore-dockerd.log)..."
  nohup dockerd >/tmp/kvstore-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  if ! docker info >/dev/null 2>&1; then
    echo "ensure-docker: dockerd did not come up; see /tmp/kvstore-dockerd.log" >&2
    tail -20 /tmp/kvstore-dockerd.log >&2 || true
    exit 1
  fi
fi
