#!/usr/bin/env node
/**
 * pnpm chaos: one chaos run; exits 1 on any violation (2 on bad usage, 3 when a checker could
 * not decide).
 *
 *   pnpm chaos --backend docker --workload register --nemesis partition-leader,kill \
 *     --ack quorum --duration 60s --seed 7
 *   pnpm chaos --mode leaderless --backend docker --nodes 5 --nemesis kill,partition-one \
 *     --w quorum --r quorum --duration 30s
 *   pnpm chaos --backend process --router --workload register --nemesis move-slots,kill,pause \
 *     --duration 40s --seed 201
 *   pnpm chaos --backend process --regions 2 --nemesis partition-regions,kill-leader,pause-leader \
 *     --duration 30s --seed 181
 */
import { parseArgs } from 'node:util'
import { parseNemeses, nemesisNames } from './nemesis.js'
import { runChaos } from './run.js'
import { workloadNames, type AckMode, type WorkloadName } from './workloads.js'

const usage = `Usage: pnpm chaos [options]
  --backend process|docker    local kv-node processes (kill, pause only) or containers (default docker)
  --workload ${workloadNames.join('|')}   (default register; ll-set in leaderless mode)
  --nemesis LIST              comma-separated: ${nemesisNames.join(', ')} (default kill,pause-leader; kill,pause in leaderless mode)
  --ack async|quorum|all      write durability (default quorum)
  --duration 60s              how long faults run (s or ms suffix; default 30s)
  --seed N                    the schedule's and the clients' seed (default: random, printed)
  --nodes N                   cluster size (default 3)
  --clients N                 concurrent clients (default 6; --regions: writers per region, default 3)
  --out DIR                   where the report folder goes (default chaos-reports)
  --unsafe-no-fencing         run nodes with fencing disabled (a test-only switch; the checkers must catch it)
  --unsafe-concurrent-membership-changes   run nodes that let configuration changes overlap
                              (a test-only switch; member-split must make the checkers catch it)
  --unsafe-no-sessions        session workload: read followers without session tokens (must be caught)
  --read-consistency committed|default   dirty-read workload: the reads' level (default committed;
                              default under --ack async with partition-leader must be caught)
  --unsafe-unfenced-locks     locks workload: resource writes without fencing tokens (must be caught)
  --healthy-ms MS, --fault-ms MS   healthy time between faults and how long a fault lasts, each
                              drawn from 0.5x to 1.5x of this (defaults 3000 and 4000)
Router mode (process backend, single-leader):
  --router                    shard groups of --nodes kv-node processes each (one shard map
                              file) behind kv-router processes; clients talk to the routers only.
                              Adds the nemeses move-slots (slot moves between groups, beside the
                              other faults) and kill-router, and the shard-ownership check
  --groups N                  shard groups (default 2; n1..n3 are g1, n4..n6 g2, ...)
  --routers N                 routers (default 2)
  --unsafe-shard-move-without-fence   run nodes whose slot moves never fence the slots (a
                              test-only switch, KV_UNSAFE_SHARD_MOVE_WITHOUT_FENCE=1: writes
                              landing at the source after the target caught up are lost; the
                              checkers must catch it)
Regions mode (process backend, single-leader regions):
  --regions N                 N regions (2 or 3: us, eu, ap) of --nodes kv-node processes each
                              (n1..n3 are us, n4..n6 eu), started with --region and --regions;
                              each region reaches the others through TCP proxies that the
                              partition-regions nemesis cuts and heals. Runs the regions
                              workload: --clients quorum writers per region on shared keys,
                              and --queued-clients ack=queued sessions per region on followers.
                              Nemeses: partition-regions, kill, kill-leader, pause, pause-leader
                              (default partition-regions,kill-leader,pause-leader). Checks:
                              recovery, region-convergence, conflict-accounting, queued-tickets
  --queued-clients N          queued sessions per region (default 1; 0: none)
  --settle-ms MS              after healing, how long tickets get to end and then the regions
                              to converge (each; default 60000)
  --unsafe-region-skip-conflict-record   run nodes that resolve conflicts without recording
                              the losers (a test-only node flag; conflict-accounting must catch it)
  --unsafe-outbox-apply-twice run nodes whose outbox forwards every queued write twice (a
                              test-only node flag; queued-tickets must catch it)
Leaderless mode:
  --mode single-leader|leaderless   cluster mode (default single-leader); leaderless runs the
                              ll-set workload by default and refuses pause-leader,
                              partition-leader and slow-leader (there is no leader)
  --replicas N                replicas per key (default 3)
  --w W, --r R                write and read quorums: 1..N, quorum or all (default quorum)
  --sloppy                    let writes count hinted stand-ins towards W (default strict)
  --anti-entropy-interval-ms MS   the nodes' anti-entropy interval (default 1000)
  --node-arg ARG              an extra kv-node argument for every node (repeatable)
  --archive-on ID|none        single-leader: the member that archives its log (default n2); after
                              the run a restore from its archive to the final LSN must have the
                              cluster's digest (the archive-restore check); none turns it off
Docker backend: build the image first with bash scripts/docker-build.sh.`

function duration(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(text)
  if (!m) throw new Error(`--duration must look like 60s, 90000ms or 2m, not ${text}`)
  const n = Number(m[1])
  return m[2] === 'ms' ? n : m[2] === 'm' ? n * 60_000 : n * 1000
}

async function main(): Promise<number> {
  let parsed
  try {
    parsed = parseArgs({
      options: {
        backend: { type: 'string' },
        workload: { type: 'string' },
        mode: { type: 'string', default: 'single-leader' },
        replicas: { type: 'string', default: '3' },
        w: { type: 'string', default: 'quorum' },
        r: { type: 'string', default: 'quorum' },
        sloppy: { type: 'boolean', default: false },
        'anti-entropy-interval-ms': { type: 'string', default: '1000' },
        'node-arg': { type: 'string', multiple: true, default: [] },
        'archive-on': { type: 'string' },
        nemesis: { type: 'string' },
        ack: { type: 'string', default: 'quorum' },
        duration: { type: 'string', default: '30s' },
        seed: { type: 'string' },
        nodes: { type: 'string', default: '3' },
        clients: { type: 'string' },
        out: { type: 'string', default: 'chaos-reports' },
        'unsafe-no-fencing': { type: 'boolean', default: false },
        'unsafe-concurrent-membership-changes': { type: 'boolean', default: false },
        'unsafe-no-sessions': { type: 'boolean', default: false },
        'read-consistency': { type: 'string' },
        'unsafe-unfenced-locks': { type: 'boolean', default: false },
        'unsafe-shard-move-without-fence': { type: 'boolean', default: false },
        router: { type: 'boolean', default: false },
        groups: { type: 'string', default: '2' },
        routers: { type: 'string', default: '2' },
        'healthy-ms': { type: 'string' },
        regions: { type: 'string' },
        'queued-clients': { type: 'string', default: '1' },
        'settle-ms': { type: 'string' },
        'unsafe-region-skip-conflict-record': { type: 'boolean', default: false },
        'unsafe-outbox-apply-twice': { type: 'boolean', default: false },
        'fault-ms': { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    })
  } catch (err) {
    process.stderr.write(`chaos: ${(err as Error).message}\n${usage}\n`)
    return 2
  }
  const o = parsed.values
  if (o.help) {
    process.stdout.write(`${usage}\n`)
    return 0
  }
  try {
    if (o.regions !== undefined) return await regionsMain(o)
    if (o['unsafe-region-skip-conflict-record'] || o['unsafe-outbox-apply-twice'])
      throw new Error(
        '--unsafe-region-skip-conflict-record and --unsafe-outbox-apply-twice go with --regions',
      )
    const backend = o.backend ?? 'docker'
    if (backend !== 'process' && backend !== 'docker')
      throw new Error('--backend must be process or docker')
    if (o.mode !== 'single-leader' && o.mode !== 'leaderless')
      throw new Error('--mode must be single-leader or leaderless')
    const leaderless = o.mode === 'leaderless'
    const workload = o.workload ?? (leaderless ? 'll-set' : 'register')
    if (!(workloadNames as readonly string[]).includes(workload))
      throw new Error(`--workload must be one of ${workloadNames.join(', ')}`)
    const replicas = Number(o.replicas)
    if (!Number.isInteger(replicas) || replicas < 1)
      throw new Error('--replicas must be at least 1')
    const antiEntropyIntervalMs = Number(o['anti-entropy-interval-ms'])
    if (!Number.isInteger(antiEntropyIntervalMs) || antiEntropyIntervalMs < 1)
      throw new Error('--anti-entropy-interval-ms must be a whole number of ms')
    if (o.ack !== 'async' && o.ack !== 'quorum' && o.ack !== 'all')
      throw new Error('--ack must be async, quorum or all')
    const nemeses = parseNemeses(o.nemesis ?? (leaderless ? 'kill,pause' : 'kill,pause-leader'))
    const seed = o.seed === undefined ? Math.floor(Math.random() * 2 ** 31) : Number(o.seed)
    if (!Number.isSafeInteger(seed)) throw new Error('--seed must be a whole number')
    const nodes = Number(o.nodes)
    const clients = Number(o.clients ?? '6')
    if (!Number.isInteger(nodes) || nodes < 1) throw new Error('--nodes must be at least 1')
    if (!Number.isInteger(clients) || clients < 1) throw new Error('--clients must be at least 1')
    const durationMs = duration(o.duration)
    const groups = Number(o.groups)
    const routers = Number(o.routers)
    if (!Number.isInteger(groups) || groups < 2) throw new Error('--groups must be at least 2')
    if (!Number.isInteger(routers) || routers < 1) throw new Error('--routers must be at least 1')
    const msOption = (name: 'healthy-ms' | 'fault-ms'): number | undefined => {
      const text = o[name]
      if (text === undefined) return undefined
      const n = Number(text)
      if (!Number.isInteger(n) || n < 100) throw new Error(`--${name} must be at least 100`)
      return n
    }
    const healthyMs = msOption('healthy-ms')
    const faultMs = msOption('fault-ms')
    const unsafeEnv: Record<string, string> = {
      ...(o['unsafe-no-fencing'] ? { KV_UNSAFE_NO_FENCING: '1' } : {}),
      ...(o['unsafe-concurrent-membership-changes']
        ? { KV_UNSAFE_CONCURRENT_MEMBERSHIP_CHANGES: '1' }
        : {}),
      ...(o['unsafe-shard-move-without-fence'] ? { KV_UNSAFE_SHARD_MOVE_WITHOUT_FENCE: '1' } : {}),
    }
    const routerText = o.router ? ` --router --groups ${groups} --routers ${routers}` : ''
    const timingText = `${healthyMs !== undefined ? ` --healthy-ms ${healthyMs}` : ''}${faultMs !== undefined ? ` --fault-ms ${faultMs}` : ''}`
    const leaderlessText = leaderless
      ? ` --mode leaderless --replicas ${replicas} --w ${o.w} --r ${o.r}${o.sloppy ? ' --sloppy' : ''} --anti-entropy-interval-ms ${antiEntropyIntervalMs}${o['node-arg'].map((a) => ` --node-arg=${a}`).join('')}`
      : ''
    const readConsistency = o['read-consistency']
    if (
      readConsistency !== undefined &&
      readConsistency !== 'committed' &&
      readConsistency !== 'default'
    )
      throw new Error(`--read-consistency must be committed or default, got ${readConsistency}`)
    const result = await runChaos({
      backend,
      workload: workload as WorkloadName,
      ...(leaderless
        ? {
            mode: 'leaderless' as const,
            replicas,
            w: o.w,
            r: o.r,
            sloppy: o.sloppy,
            antiEntropyIntervalMs,
          }
        : {}),
      ...(o['node-arg'].length > 0 ? { nodeArgs: o['node-arg'] } : {}),
      ...(o['archive-on'] !== undefined ? { archiveOn: o['archive-on'] } : {}),
      nemeses,
      ack: o.ack as AckMode,
      durationMs,
      seed,
      nodes,
      clients,
      out: o.out,
      ...(Object.keys(unsafeEnv).length > 0 ? { nodeEnv: unsafeEnv } : {}),
      ...(o['unsafe-no-sessions'] ? { noSessions: true } : {}),
      ...(o['unsafe-unfenced-locks'] ? { unfenced: true } : {}),
      ...(readConsistency !== undefined ? { readConsistency } : {}),
      ...(o.router ? { router: true, groups, routers } : {}),
      ...(healthyMs !== undefined ? { healthyMs } : {}),
      ...(faultMs !== undefined ? { faultMs } : {}),
      command: `pnpm chaos --backend ${backend}${routerText}${leaderlessText} --workload ${workload} --nemesis ${nemeses.join(',')} --ack ${o.ack} --duration ${o.duration} --seed ${seed} --nodes ${nodes} --clients ${clients}${timingText}${o['unsafe-no-fencing'] ? ' --unsafe-no-fencing' : ''}${o['unsafe-concurrent-membership-changes'] ? ' --unsafe-concurrent-membership-changes' : ''}${o['unsafe-no-sessions'] ? ' --unsafe-no-sessions' : ''}${o['unsafe-unfenced-locks'] ? ' --unsafe-unfenced-locks' : ''}${o['unsafe-shard-move-without-fence'] ? ' --unsafe-shard-move-without-fence' : ''}${readConsistency !== undefined ? ` --read-consistency ${readConsistency}` : ''}`,
    })
    return result.summary.valid === true ? 0 : result.summary.valid === false ? 1 : 3
  } catch (err) {
    process.stderr.write(`chaos: ${(err as Error).message}\n`)
    return 2
  }
}

/** `--regions N`: the multi-region run (process backend); see regions-run.ts. */
async function regionsMain(o: {
  backend?: string | undefined
  nemesis?: string | undefined
  duration: string
  seed?: string | undefined
  nodes: string
  clients?: string | undefined
  out: string
  regions?: string | undefined
  'queued-clients': string
  'settle-ms'?: string | undefined
  'healthy-ms'?: string | undefined
  'fault-ms'?: string | undefined
  'node-arg': string[]
  'unsafe-region-skip-conflict-record': boolean
  'unsafe-outbox-apply-twice': boolean
}): Promise<number> {
  const whole = (name: string, text: string | undefined, min: number): number | undefined => {
    if (text === undefined) return undefined
    const n = Number(text)
    if (!Number.isInteger(n) || n < min)
      throw new Error(`--${name} must be a whole number >= ${min}`)
    return n
  }
  const regions = whole('regions', o.regions, 2) as number
  const nodes = whole('nodes', o.nodes, 1) as number
  const clients = whole('clients', o.clients ?? '3', 1) as number
  const queued = whole('queued-clients', o['queued-clients'], 0) as number
  const settleMs = whole('settle-ms', o['settle-ms'], 1000)
  const healthyMs = whole('healthy-ms', o['healthy-ms'], 100)
  const faultMs = whole('fault-ms', o['fault-ms'], 100)
  const seed = o.seed === undefined ? Math.floor(Math.random() * 2 ** 31) : Number(o.seed)
  if (!Number.isSafeInteger(seed)) throw new Error('--seed must be a whole number')
  const nodeArgs = [
    ...o['node-arg'],
    ...(o['unsafe-region-skip-conflict-record'] ? ['--unsafe-region-skip-conflict-record'] : []),
    ...(o['unsafe-outbox-apply-twice'] ? ['--unsafe-outbox-apply-twice'] : []),
  ]
  const result = await runChaos({
    backend: o.backend === undefined || o.backend === 'process' ? 'process' : 'docker',
    workload: 'regions',
    nemeses: parseNemeses(o.nemesis ?? 'partition-regions,kill-leader,pause-leader'),
    ack: 'quorum',
    durationMs: duration(o.duration),
    seed,
    nodes,
    clients,
    out: o.out,
    regions,
    writersPerRegion: clients,
    queuedPerRegion: queued,
    ...(settleMs !== undefined ? { settleTimeoutMs: settleMs } : {}),
    ...(healthyMs !== undefined ? { healthyMs } : {}),
    ...(faultMs !== undefined ? { faultMs } : {}),
    ...(nodeArgs.length > 0 ? { nodeArgs } : {}),
  })
  return result.summary.valid === true ? 0 : result.summary.valid === false ? 1 : 3
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`chaos: ${(err as Error).stack ?? String(err)}\n`)
    process.exit(1)
  },
)
