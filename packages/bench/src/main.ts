/** pnpm bench: runs a benchmark suite (`pnpm bench --help` prints the options below). */
import { parseArgs } from 'node:util'
import { runBackupBench } from './backup.js'
import { runClusterBench } from './cluster.js'
import { runCommittedBench } from './committed.js'
import { runCompareBench, systemNames, type SystemName } from './compare.js'
import { runFailoverBench } from './failover.js'
import { runHandoffBench } from './handoff.js'
import { runLeaderlessBench } from './leaderless.js'
import { runOpenLoopBench } from './open-loop.js'
import { runSingleNode } from './single-node.js'
import { runSecurityBench } from './security-suite.js'
import { runMembershipBench } from './membership.js'
import { runShardsBench, shardParts, type ShardPart } from './shards.js'
import { runQueuedBench } from './queued.js'
import { runLeasesBench } from './leases.js'
import { runRespBench } from './resp.js'
import { runRegionsBench } from './regions.js'
import { runWatchBench } from './watch.js'
import { securityProfiles, type SecurityProfile } from './security.js'

const usage = `pnpm bench: runs a benchmark suite, prints a table and writes JSON and markdown to
bench-results/.

  --suite cluster       (default) a 3-node single-leader cluster: writes per ack mode,
                        replication lag, CPU-capped read scaling. See cluster.ts.
  --suite single-node   one node: group commit, fsync on/off, reads. See single-node.ts.
  --suite failover      kill -9 the leader under SDK writes, --trials N times (default 10):
                        time to the next successful write, elections. See failover.ts.
  --mode leaderless     (or --suite leaderless) a 5-node leaderless cluster with N=3: writes
                        at w=1, quorum, all and reads at r=1, quorum, all. See leaderless.ts.
                        Also --nodes N (5), --replicas N (3), --route preference|any.

  --suite security      plaintext, TLS, and TLS with token auth side by side on a 3-node
                        cluster, interleaved over --rounds N (2): quorum writes and follower
                        reads. See security-suite.ts.

  --suite compare       etcd (Debian's etcd-server; installed with apt-get when missing, as
                        root) and this store side by side with the same wrk load, interleaved
                        over --rounds N (2), --duration S (15) per phase: quorum and async
                        writes vs etcd put, linearizable and follower reads vs etcd range, a
                        3-node leaderless cluster (N=3), and a bare fastify handler (plain
                        HTTP, and HTTPS with a bearer token as the nodes run); ops/s per
                        round, CPU µs per operation of all server processes, the ratios and
                        the issue's targets (printed, never asserted). --check fails unless
                        every phase produced numbers (the CI guard: pnpm bench:guard).
                        --systems single-leader,fastify runs only those (of etcd,
                        single-leader, leaderless, fastify). See compare.ts.

  --suite open-loop     the closed-loop maximum of quorum writes (wrk, --max-duration S,
                        default 15), then PUT ack=quorum offered on a fixed schedule at each
                        --rate-share (0.5,0.8) of it for --duration S (60): p50, p99, p99.9,
                        max from when each write was due, stalls over 100 ms, and per-second
                        p99 and max as an SVG beside the JSON and a text plot. See open-loop.ts.

  --suite backup        backups, the log archive and restore: backup MB/s and keys/s from a
                        follower; quorum writes at 50% of the maximum alone, during backups
                        from a follower (also paced with --max-rate 2M) and from the leader
                        (p50, p99, max); the archive's lag
                        (the RPO) meanwhile; then an offline restore of --rto-keys N
                        (1000000) keys plus --rto-entries N (100000) archived writes (the
                        RTO). --keys N (200000) in the cluster. See backup.ts.

  --suite membership    adding a member: a 3-node cluster holding --keys N (200000) keys of
                        --value-bytes, log compacted; quorum writes at 50% of the maximum
                        for --duration S (steady state), then a fourth node joins, catches up
                        by snapshot and log and is promoted under the same load: the time it
                        took and the p50, p99 and max meanwhile. See membership.ts.
  --suite handoff       leaderless ring changes: a 5-member cluster (N=3) holding --keys N
                        (200000) keys of --value-bytes bytes (loaded at w=all); a sixth
                        member joins, then n1 leaves: keys/s and MB/s each handoff streamed,
                        from the admin call to the end of the change. See handoff.ts.
  --suite shards        sharding, every node capped at --node-cpu-cap CORES (0.25): quorum
                        writes to 1 group of 3 and to 2 groups of 3 (wrk, one per leader, keys
                        of its own slots), interleaved over --rounds N (2); then --moves N (20)
                        slot moves of --move-slots N (16) slots back and forth under quorum
                        writes: fence time, the load's write unavailability, move time;
                        quorum writes through one kv-router against straight to the leader
                        (closed loop, then open loop at 50% with the caps lifted), --rounds
                        interleaved; GETs of --get-keys keys through
                        the router from the followers, followers and leader, the leader alone.
                        --parts scaling,fence,router,reads runs only those. See shards.ts.
  --suite regions       multi-leader: 2 regions of 3 nodes, each inter-region connection
                        through a proxy adding --region-delay-ms MS (25) each way. Lag us -> eu
                        (write acknowledged in us to readable in eu, and /v1/regions lagMs,
                        lagEntries) at idle and under quorum writes at 50% of the closed-loop
                        maximum (--max-duration S, default 5) for --duration S (20); then the
                        links cut for --partition-s S (30) while both regions write (some keys
                        in both): time to equal region digests on all six nodes after the
                        heal, entries shipped, conflicts. About 3 minutes. See regions.ts.
  --suite queued        ack=queued accept latency against ack=quorum (--clients N closed
                        loops, 16, for --duration S, 5, per phase), and the outbox drain rate
                        after a --outage-s S (10) leader outage. Also runs on its own:
                        node packages/bench/dist/queued.js. See queued.ts.
  --suite committed     consistency=committed reads against default reads on a 3-node
                        cluster holding --get-keys keys (100000): idle, under ack=async
                        writes, and with --window N (2000) entries uncommitted (followers
                        paused); reads/s, p50, p99 per level and node. See committed.ts.
  --suite watch         watch streams (GET /v1/watch over HTTP/2) on a 3-node cluster:
                        --few-watchers N (10), then --watchers N (1000) spread over the
                        leader and both followers, while PUTs ack=quorum go to the leader
                        one at a time, at --rate N/s (300) and as fast as --writers N (16)
                        closed loops go, --duration S (5) per phase: writes/s, events/s
                        delivered, whether every watcher got every write, lag (send to
                        arrival, ack to the last watcher) per role; watchers released
                        after. About a minute. See watch.ts.
  --suite leases        lease expiry accuracy: --lease-keys N (100) keys per TTL written with
                        ?ttlMs= (--ttls 500,1000,5000) on a 3-node cluster; how late after
                        its TTL each key vanishes on the leader and on a follower (min, p50,
                        p90, p99, max). See leases.ts.
  --suite resp          the RESP front against Redis: redis-benchmark -t set,get
                        (--requests N (50000), --connections N (50 here), pipelines of 1 and
                        --pipeline N (16)) on a 3-node kv-cluster's leader and on a
                        redis-server primary + 2 replicas (appendfsync everysec, then
                        always), all over TLS with a password. See resp.ts.

Every suite runs its nodes as shipped (--security tls-auth: mutual TLS, HTTPS, tokens);
--security tls or plaintext measure the other profiles.

Options: --duration S (default 10; 15 for compare, 60 for open-loop, 20 for regions, 5 for
queued, committed and watch), --connections N (64),
--value-bytes N (100), --get-keys N (100000; 20000 for leaderless), --read-cpu-cap CORES
(0.5), --out DIR (bench-results).
`

async function main(): Promise<void> {
  const { values: opts } = parseArgs({
    options: {
      suite: { type: 'string' },
      mode: { type: 'string' },
      duration: { type: 'string' },
      connections: { type: 'string', default: '64' },
      'value-bytes': { type: 'string', default: '100' },
      'get-keys': { type: 'string' },
      'read-cpu-cap': { type: 'string', default: '0.5' },
      out: { type: 'string', default: 'bench-results' },
      trials: { type: 'string', default: '10' },
      nodes: { type: 'string', default: '5' },
      replicas: { type: 'string', default: '3' },
      route: { type: 'string', default: 'preference' },
      security: { type: 'string', default: 'tls-auth' },
      rounds: { type: 'string', default: '2' },
      check: { type: 'boolean', default: false },
      systems: { type: 'string' },
      'rate-share': { type: 'string', default: '0.5,0.8' },
      'max-duration': { type: 'string' },
      keys: { type: 'string', default: '200000' },
      'rto-keys': { type: 'string', default: '1000000' },
      'rto-entries': { type: 'string', default: '100000' },
      'node-cpu-cap': { type: 'string', default: '0.25' },
      moves: { type: 'string', default: '20' },
      'move-slots': { type: 'string', default: '16' },
      parts: { type: 'string' },
      'region-delay-ms': { type: 'string', default: '25' },
      'partition-s': { type: 'string', default: '30' },
      'outage-s': { type: 'string', default: '10' },
      clients: { type: 'string', default: '16' },
      window: { type: 'string', default: '2000' },
      rate: { type: 'string', default: '300' },
      watchers: { type: 'string', default: '1000' },
      'few-watchers': { type: 'string', default: '10' },
      writers: { type: 'string', default: '16' },
      'lease-keys': { type: 'string', default: '100' },
      ttls: { type: 'string', default: '500,1000,5000' },
      requests: { type: 'string', default: '50000' },
      pipeline: { type: 'string', default: '16' },
      help: { type: 'boolean', short: 'h' },
    },
  })
  if (opts.help) {
    process.stdout.write(usage)
    return
  }
  if (!(securityProfiles as readonly string[]).includes(String(opts.security))) {
    throw new Error(`--security must be one of ${securityProfiles.join(', ')}`)
  }
  const security = opts.security as SecurityProfile
  if (opts.mode !== undefined && opts.mode !== 'leaderless' && opts.mode !== 'single-leader') {
    throw new Error(`--mode must be leaderless or single-leader, not ${opts.mode}`)
  }
  if (opts.mode === 'leaderless' && opts.suite !== undefined && opts.suite !== 'leaderless') {
    throw new Error(`--mode leaderless runs the leaderless suite, not --suite ${opts.suite}`)
  }
  const suite = opts.suite ?? (opts.mode === 'leaderless' ? 'leaderless' : 'cluster')
  opts['get-keys'] ??= suite === 'leaderless' ? '20000' : '100000'
  opts.duration ??=
    suite === 'compare'
      ? '15'
      : suite === 'open-loop'
        ? '60'
        : suite === 'regions'
          ? '20'
          : suite === 'queued' || suite === 'committed' || suite === 'watch'
            ? '5'
            : '10'
  opts['max-duration'] ??= suite === 'regions' ? '5' : '15'
  const number = (name: keyof typeof opts, min: number): number => {
    const value = Number(opts[name])
    if (!Number.isFinite(value) || value < min) {
      throw new Error(`--${name} must be a number >= ${min}, not ${String(opts[name])}`)
    }
    return value
  }
  const common = {
    security,
    durationS: number('duration', 1),
    connections: number('connections', 1),
    valueBytes: number('value-bytes', 1),
    getKeys: number('get-keys', 1),
    out: String(opts.out),
  }
  switch (suite) {
    case 'cluster':
      return runClusterBench({ ...common, readCpuCap: number('read-cpu-cap', 0.01) })
    case 'single-node':
      return runSingleNode(common)
    case 'failover':
      return runFailoverBench({ security, trials: number('trials', 1), out: common.out })
    case 'security':
      return runSecurityBench({ ...common, rounds: number('rounds', 1) })
    case 'compare': {
      const systems = opts.systems?.split(',').map((s) => s.trim())
      const unknown = systems?.filter((s) => !(systemNames as readonly string[]).includes(s))
      if (systems !== undefined && (systems.length === 0 || (unknown?.length ?? 0) > 0)) {
        throw new Error(
          `--systems must be some of ${systemNames.join(', ')}, comma-separated; not ${String(opts.systems)}`,
        )
      }
      return runCompareBench({
        ...common,
        rounds: number('rounds', 1),
        check: !!opts.check,
        ...(systems !== undefined ? { systems: systems as SystemName[] } : {}),
      })
    }
    case 'open-loop': {
      const shares = String(opts['rate-share'])
        .split(',')
        .map((s) => Number(s.trim()))
      if (shares.length === 0 || shares.some((s) => !Number.isFinite(s) || s <= 0 || s > 2)) {
        throw new Error(
          `--rate-share must be shares of the maximum above 0 (up to 2), comma-separated, such as 0.5,0.8; not ${String(opts['rate-share'])}`,
        )
      }
      return runOpenLoopBench({
        ...common,
        maxDurationS: number('max-duration', 1),
        shares,
      })
    }
    case 'backup':
      return runBackupBench({
        ...common,
        keys: number('keys', 1),
        rtoKeys: number('rto-keys', 1),
        rtoEntries: number('rto-entries', 1),
      })
    case 'membership':
      return runMembershipBench({ ...common, keys: number('keys', 1) })
    case 'handoff':
      return runHandoffBench({
        security,
        keys: number('keys', 1),
        valueBytes: common.valueBytes,
        connections: common.connections,
        out: common.out,
      })
    case 'shards': {
      const parts = (opts.parts?.split(',').map((s) => s.trim()) ?? [...shardParts]) as ShardPart[]
      if (parts.length === 0 || parts.some((p) => !(shardParts as readonly string[]).includes(p)))
        throw new Error(
          `--parts must be some of ${shardParts.join(', ')}, comma-separated; not ${String(opts.parts)}`,
        )
      const moveSlots = number('move-slots', 1)
      if (moveSlots > 2048) throw new Error(`--move-slots must be at most 2048, not ${moveSlots}`)
      return runShardsBench({
        ...common,
        nodeCpuCap: number('node-cpu-cap', 0.01),
        rounds: number('rounds', 1),
        moves: number('moves', 1),
        moveSlots,
        parts,
      })
    }
    case 'regions':
      return runRegionsBench({
        ...common,
        maxDurationS: number('max-duration', 1),
        delayMs: number('region-delay-ms', 0),
        partitionS: number('partition-s', 1),
      })
    case 'queued': {
      const clients = number('clients', 1)
      const outageS = number('outage-s', 1)
      return runQueuedBench({
        security,
        clients,
        durationS: common.durationS,
        outageS,
        out: common.out,
        command: `pnpm bench --suite queued --clients ${clients} --duration ${common.durationS} --outage-s ${outageS}${security === 'tls-auth' ? '' : ` --security ${security}`}`,
      })
    }
    case 'committed': {
      const window = number('window', 1)
      return runCommittedBench({
        ...common,
        window,
        command: `pnpm bench --suite committed --duration ${common.durationS} --connections ${common.connections} --get-keys ${common.getKeys} --window ${window}${security === 'tls-auth' ? '' : ` --security ${security}`}`,
      })
    }
    case 'watch': {
      const rate = number('rate', 1)
      const watchers = number('watchers', 3)
      const fewWatchers = number('few-watchers', 1)
      const writers = number('writers', 1)
      if (fewWatchers > watchers)
        throw new Error(`--few-watchers (${fewWatchers}) must be at most --watchers (${watchers})`)
      return runWatchBench({
        security,
        durationS: common.durationS,
        rate,
        watchers,
        fewWatchers,
        writers,
        valueBytes: common.valueBytes,
        out: common.out,
        command: `pnpm bench --suite watch --duration ${common.durationS} --rate ${rate} --watchers ${watchers} --few-watchers ${fewWatchers} --writers ${writers}${security === 'tls-auth' ? '' : ` --security ${security}`}`,
      })
    }
    case 'resp': {
      const requests = number('requests', 1)
      const clients = opts.connections === '64' ? 50 : number('connections', 1)
      const pipeline = number('pipeline', 1)
      return runRespBench({
        requests,
        clients,
        pipeline,
        valueBytes: common.valueBytes,
        out: common.out,
        command: `pnpm bench --suite resp --requests ${requests} --connections ${clients} --pipeline ${pipeline}${common.valueBytes === 100 ? '' : ` --value-bytes ${common.valueBytes}`}`,
      })
    }
    case 'leases': {
      const keys = number('lease-keys', 1)
      const ttls = String(opts.ttls)
        .split(',')
        .map((t) => Number(t))
      if (ttls.some((t) => !Number.isInteger(t) || t < 100))
        throw new Error(`--ttls must be whole numbers of ms, each at least 100, not ${opts.ttls}`)
      return runLeasesBench({
        security,
        keys,
        ttls,
        out: common.out,
        command: `pnpm bench --suite leases --lease-keys ${keys} --ttls ${ttls.join(',')}${security === 'tls-auth' ? '' : ` --security ${security}`}`,
      })
    }
    case 'leaderless': {
      if (opts.route !== 'preference' && opts.route !== 'any') {
        throw new Error(`--route must be preference or any, not ${opts.route}`)
      }
      return runLeaderlessBench({
        ...common,
        nodes: number('nodes', 1),
        replicas: number('replicas', 1),
        route: opts.route,
      })
    }
    default:
      throw new Error(
        `--suite must be cluster, single-node, failover, leaderless, security, compare, open-loop, backup, membership, handoff, shards, regions, queued, committed, watch, leases or resp, not ${String(suite)}`,
      )
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench: ${(err as Error).message}\n`)
  process.exitCode = 1
})
