#!/usr/bin/env bash
# The full chaos matrix on containers: every workload under every nemesis (and all of them
# together) at ack=quorum, then leaderless ll-set and ll-register under every nemesis that
# needs no leader, then router mode (two shard groups behind two routers, process backend):
# register and set under move-slots with each node fault, and all together; 60 s each
# (DURATION to change), reports in chaos-reports/. Exits 1 if any run found a violation.
# About two hours.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/docker-build.sh || exit 1
duration="${DURATION:-60s}"
seed="${SEED:-1}"
failed=0
all="kill,pause,pause-leader,partition-one,partition-majority,partition-leader,partition-bridge,loss,slow,slow-leader,member-churn,member-split"
for workload in register set session; do
  for nemesis in ${all//,/ } "$all"; do
    echo "== $workload / $nemesis"
    if ! node packages/chaos/dist/main.js --backend docker --workload "$workload" \
      --nemesis "$nemesis" --ack quorum --duration "$duration" --seed "$seed"; then
      failed=1
    fi
  done
done
# Leaderless mode: the ll-set workload on 5 nodes (N=3, W=R=quorum) under every nemesis that
# needs no leader (member-churn changes the ring there), and all of them together.
ll="kill,pause,partition-one,partition-majority,partition-bridge,loss,slow,member-churn"
for workload in ll-set ll-register; do
  for nemesis in ${ll//,/ } "$ll"; do
    echo "== leaderless $workload / $nemesis"
    if ! node packages/chaos/dist/main.js --backend docker --mode leaderless --nodes 5 \
      --workload "$workload" --nemesis "$nemesis" --duration "$duration" --seed "$seed"; then
      failed=1
    fi
  done
done
# Dirty reads: committed reads under ack=async while the leader is isolated, killed or paused
# (default-level reads under the same faults are caught: test/chaos-committed.test.ts).
for nemesis in partition-leader kill pause-leader partition-leader,kill,pause-leader; do
  echo "== dirty-read (committed) / $nemesis"
  if ! node packages/chaos/dist/main.js --backend docker --workload dirty-read \
    --read-consistency committed --nemesis "$nemesis" --ack async --duration "$duration" --seed "$seed"; then
    failed=1
  fi
done
# Router mode: clients talk to two routers in front of two shard groups while move-slots moves
# the workload's slots between them (process backend: kills and pauses, no partitions).
routed="move-slots,kill move-slots,pause move-slots,pause-leader move-slots,kill-router move-slots,kill,pause,pause-leader,kill-router"
for workload in register set; do
  for nemesis in $routed; do
    echo "== router $workload / $nemesis"
    if ! node packages/chaos/dist/main.js --backend process --router --workload "$workload" \
      --nemesis "$nemesis" --ack quorum --duration "$duration" --seed "$seed"; then
      failed=1
    fi
  done
done
exit $failed
