#!/usr/bin/env bash
# Makes the outside programs that the tests and benchmarks drive available, installing any that
# is missing from Debian's packages (one apt-get run for all of them). Idempotent; run it or
# source it.
#   wrk             the HTTP load generator of the benchmarks and of one bench unit test
#   redis-cli, redis-benchmark (redis-tools), redis-server
#                   the RESP front's tests, and the real Redis it is benchmarked against
#   chromium        the dashboard's browser test (driven by playwright-core)
#   prometheus, promtool
#                   the alert rules' check and the alert test
# The services that Debian's packages start on install (redis-server, prometheus and its node
# exporter) are not wanted here: policy-rc.d keeps them from starting.
set -euo pipefail

declare -A package_of=(
  [wrk]=wrk
  [redis-cli]=redis-tools
  [redis-benchmark]=redis-tools
  [redis-server]=redis-server
  [chromium]="chromium fonts-liberation"
  [prometheus]=prometheus
  [promtool]=prometheus
)
missing=()
for command in "${!package_of[@]}"; do
  if ! command -v "$command" >/dev/null 2>&1; then
    missing+=("${package_of[$command]}")
  fi
done
if ((${#missing[@]} > 0)); then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-tools: missing ${missing[*]} and this is not Debian; install them by hand." >&2
    exit 1
  fi
  packages=$(printf "%s\n" ${missing[*]} | sort -u | tr "\n" " ")
  echo "Installing from Debian's packages: $packages"
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    created_policy=1
  fi
  apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages >/dev/null
  if ((created_policy)); then rm -f "$policy"; fi
fi
