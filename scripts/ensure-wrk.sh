#!/usr/bin/env bash
# Makes wrk (the HTTP load generator of the benchmarks and of one bench unit test) available:
# on Debian, installs it with apt-get when it is missing. Idempotent; source it or run it.
set -euo pipefail

if ! command -v wrk >/dev/null 2>&1; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-wrk: wrk is missing and this is not Debian; install wrk by hand." >&2
    exit 1
  fi
  echo "Installing wrk from Debian's packages..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
