/**
 * The cluster suite (pnpm bench): a 3-node single-leader cluster on this machine.
 *
 *  1. Writes: 64 connections PUT fresh keys with 100-byte values to the leader, once per ack
 *     mode (async, quorum, all). Throughput, latency percentiles, and the CPU of every process.
 *  2. Replication lag at 50% and 80% of the highest quorum rate: an open-loop generator
 *     (pacer.ts) offers writes on a fixed schedule while the bench samples the leader's view of
 *     each follower's lag every 20 ms. Lag is the age of the oldest entry a follower has not
 *     acknowledged (durably appended and applied); latency counts from when a write was due.
 *  3. Read scaling: every node is capped at 0.5 CPU (cgroups, as `docker run --cpus 0.5` does),
 *     then 64 connections GET random keys among 100 000 from the leader alone, and spread over
 *     the followers, and over all three replicas.
 *
 * wrk generates the load on the same machine; its CPU is reported beside the figures.
 */
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { KvClient } from '@kvstore/client'
import { ensureWrk, fmt, histogram, say, sleep } from './common.js'
import { Latencies } from './latency.js'
import { cpuCapper } from './cpu-cap.js'
import {
  cpuMeter,
  pidOf,
  startBenchCluster,
  type BenchCluster,
  type BenchMember,
} from './node-process.js'
import { coresCell, publish, rateCells, targetTable } from './report.js'
import { runPaced, type PacedOptions, type PacedResult } from './pacer.js'
import { getScript, putScript, runWrk, warmUpQuorumPuts, type WrkResult } from './wrk.js'
import { benchSecurity, type BenchSecurity, type SecurityProfile } from './security.js'

export interface ClusterOptions {
  security: SecurityProfile
  durationS: number
  connections: number
  valueBytes: number
  getKeys: number
  readCpuCap: number
  out: string
}

type AckMode = 'async' | 'quorum' | 'all'

interface LagSummary {
  samples: number
  p50Ms: number
  p99Ms: number
  maxMs: number
}

interface WritePhase {
  ack: AckMode
  result: WrkResult
  /** CPU per process in cores, by member id. */
  nodeCores: Record<string, number>
  /** Mean log entries per LevelDB batch on the leader. */
  leaderEntriesPerBatch: number | null
  /** Mean entries per append frame sent to followers. */
  entriesPerFrame: number | null
  /** Followers' lag while the phase ran. */
  lag: LagSummary
}

interface LagPhase {
  /** Share of the highest quorum rate offered. */
  share: number
  targetRate: number
  result: PacedResult
  nodeCores: Record<string, number>
  lag: LagSummary
}

interface ReadPhase {
  name: string
  targets: string[]
  throughput: number
  latencyMs: { p50: number; p99: number; p999: number }
  errors: number
  nodeCores: Record<string, number>
  loadGeneratorCores: number
}

/** Sum of a labelled counter across its labels. */
async function labelledSum(url: string, name: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text()
  let sum = 0
  for (const match of text.matchAll(new RegExp(`^${name}\\{[^}]*\\} (\\S+)$`, 'gm'))) {
    sum += Number(match[1])
  }
  return sum
}

/** Samples the leader's view of every follower's lag until stopped. */
function sampleLag(cluster: BenchCluster, everyMs = 20): { stop(): Promise<LagSummary> } {
  const samples = new Latencies()
  let running = true
  const loop = (async () => {
    while (running) {
      try {
        const res = await fetch(`${cluster.leader.url}/v1/cluster`)
        const view = (await res.json()) as { members: { id: string; lagMs: number }[] }
        for (const member of view.members) {
          if (member.id !== cluster.leader.id) samples.record(member.lagMs)
        }
      } catch {
        // a missed sample
      }
      await sleep(everyMs)
    }
  })()
  return {
    async stop() {
      running = false
      await loop
      return {
        samples: samples.count,
        p50Ms: samples.percentile(50),
        p99Ms: samples.percentile(99),
        maxMs: samples.max,
      }
    },
  }
}

/** Waits until every follower has acknowledged everything the leader has. */
export async function waitCaughtUp(cluster: BenchCluster, timeoutMs = 120_000): Promise<number> {
  const started = performance.now()
  for (;;) {
    const view = (await (await fetch(`${cluster.leader.url}/v1/cluster`)).json()) as {
      members: { lagEntries: number }[]
    }
    if (view.members.every((m) => m.lagEntries === 0)) return performance.now() - started
    if (performance.now() - started > timeoutMs) {
      throw new Error(`followers did not catch up within ${timeoutMs / 1000} s`)
    }
    await sleep(50)
  }
}

/**
 * Writes keys `bench/data/`0 .. (keys-1) with random values (base64 text of `valueBytes`
 * bytes) through `client`, 1000 to a batch, ack=all: data that compresses and transfers as
 * real data would, not as the repeated byte of `prefill`.
 */
export async function prefillRandom(
  client: KvClient,
  keys: number,
  valueBytes: number,
): Promise<void> {
  for (let start = 0; start < keys; start += 1000) {
    const ops = []
    for (let i = start; i < Math.min(keys, start + 1000); i++) {
      const value = randomBytes(Math.ceil((valueBytes * 3) / 4))
        .toString('base64')
        .slice(0, valueBytes)
      ops.push({ op: 'put' as const, key: `bench/data/${i}`, value })
    }
    await client.batch(ops, { ack: 'all' })
  }
}

/** Writes keys `prefix`0 .. `prefix`(keys-1) through the SDK, 1000 to a batch, ack=all. */
export async function prefill(
  url: string,
  prefix: string,
  valueBytes: number,
  keys: number,
  security: BenchSecurity,
) {
  const client = new KvClient({ url, ...security.client })
  const value = 'v'.repeat(valueBytes)
  try {
    for (let start = 0; start < keys; start += 1000) {
      const ops = []
      for (let i = start; i < Math.min(keys, start + 1000); i++) {
        ops.push({ op: 'put' as const, key: `${prefix}${i}`, value })
      }
      await client.batch(ops, { ack: 'all' })
    }
  } finally {
    await client.close()
  }
}

/** Runs wrk against several nodes at once, splitting the connections, and sums the results. */
async function readAcross(
  cluster: BenchCluster,
  name: string,
  targets: BenchMember[],
  connections: number,
  durationS: number,
  script: string,
  scriptDir: string,
): Promise<ReadPhase> {
  const meter = await cpuMeter(cluster.members)
  const results = await Promise.all(
    targets.map((target, i) =>
      runWrk({
        url: target.url,
        script,
        scriptDir,
        connections:
          Math.floor(connections / targets.length) + (i < connections % targets.length ? 1 : 0),
        durationS,
      }),
    ),
  )
  const nodeCores = await meter.stop()
  const throughput = results.reduce((sum, r) => sum + r.throughput, 0)
  // Percentiles across several wrk runs: the worst of each, an upper bound.
  return {
    name,
    targets: targets.map((t) => t.id),
    throughput,
    latencyMs: {
      p50: Math.max(...results.map((r) => r.latencyMs.p50)),
      p99: Math.max(...results.map((r) => r.latencyMs.p99)),
      p999: Math.max(...results.map((r) => r.latencyMs.p999)),
    },
    errors: results.reduce((sum, r) => sum + r.errors, 0),
    nodeCores,
    loadGeneratorCores: results.reduce((sum, r) => sum + r.loadGeneratorCores, 0),
  }
}

/** Runs the cluster suite; resolves once the report is written. */
export async function runClusterBench(options: ClusterOptions): Promise<void> {
  const { durationS, connections, valueBytes, getKeys } = options
  ensureWrk()
  const found = await cpuCapper()
  const capper = 'unavailable' in found ? null : found
  const noCapReason = 'unavailable' in found ? found.unavailable : null
  if (noCapReason !== null) {
    say(`note: the read-scaling phase needs CPU caps and will be skipped: ${noCapReason}`)
  }
  const work = await mkdtemp(join(tmpdir(), 'kv-bench-cluster-'))
  const security = await benchSecurity(options.security, work)
  const writes: WritePhase[] = []
  const reads: ReadPhase[] = []
  const paced: LagPhase[] = []
  let catchUpMs: Record<string, number> = {}
  try {
    say('== starting a 3-node cluster (n1 leads)')
    const cluster = await startBenchCluster(work, 3, security)
    const { leader } = cluster
    const authorization = await security.authorization(leader.url)
    try {
      say('   warming up (ack=quorum, 3 s)...')
      await warmUpQuorumPuts({
        url: leader.url,
        valueBytes,
        authorization,
        scriptDir: work,
        connections,
      })
      await waitCaughtUp(cluster)

      for (const ack of ['async', 'quorum', 'all'] as const) {
        say(`== PUT ack=${ack} for ${durationS} s with ${connections} connections`)
        const batchesBefore = await histogram(leader.url, 'kv_storage_batch_entries')
        const shippedBefore = await labelledSum(leader.url, 'kv_replication_entries_shipped_total')
        const framesBefore = await labelledSum(leader.url, 'kv_replication_append_frames_total')
        const meter = await cpuMeter(cluster.members)
        const lag = sampleLag(cluster)
        const result = await runWrk({
          url: leader.url,
          script: putScript(`bench/${ack}/`, valueBytes, { query: `?ack=${ack}`, authorization }),
          scriptDir: work,
          connections,
          durationS,
        })
        const nodeCores = await meter.stop()
        const lagSummary = await lag.stop()
        const batchesAfter = await histogram(leader.url, 'kv_storage_batch_entries')
        const shipped =
          (await labelledSum(leader.url, 'kv_replication_entries_shipped_total')) - shippedBefore
        const frames =
          (await labelledSum(leader.url, 'kv_replication_append_frames_total')) - framesBefore
        const batches = batchesAfter.count - batchesBefore.count
        writes.push({
          ack,
          result,
          nodeCores,
          leaderEntriesPerBatch:
            batches > 0 ? (batchesAfter.sum - batchesBefore.sum) / batches : null,
          entriesPerFrame: frames > 0 ? shipped / frames : null,
          lag: lagSummary,
        })
        const waited = await waitCaughtUp(cluster)
        catchUpMs = { ...catchUpMs, [ack]: waited }
        say(
          `   ${fmt(result.throughput)}/s, p99 ${fmt(result.latencyMs.p99, 1)} ms, lag p99 ${fmt(lagSummary.p99Ms)} ms; followers caught up ${fmt(waited)} ms after the load stopped`,
        )
      }

      // Replication lag at 50% and 80% of the highest quorum rate, offered open-loop on a
      // fixed schedule (wrk is closed-loop and cannot hold a rate below its maximum).
      const quorum = writes.find((w) => w.ack === 'quorum') as WritePhase
      for (const share of [0.5, 0.8]) {
        const targetRate = Math.round(share * quorum.result.throughput)
        say(
          `== PUT ack=quorum at ${share * 100}% of the quorum rate (${fmt(targetRate)}/s, open-loop) for ${durationS} s`,
        )
        const meter = await cpuMeter(cluster.members)
        const lag = sampleLag(cluster)
        const result = await runPaced({
          url: leader.url,
          tls: security.client.tls as PacedOptions['tls'],
          authorization,
          rate: targetRate,
          durationS,
          connections,
          valueBytes,
          prefix: `bench/paced${share * 100}/`,
          query: '?ack=quorum',
        })
        const phase = {
          share,
          targetRate,
          result,
          nodeCores: await meter.stop(),
          lag: await lag.stop(),
        }
        paced.push(phase)
        say(
          `   ${fmt(result.throughput)}/s, p99 ${fmt(result.latencyMs.p99, 1)} ms, lag p50 ${fmt(phase.lag.p50Ms)} ms, p99 ${fmt(phase.lag.p99Ms)} ms`,
        )
        await waitCaughtUp(cluster)
      }
      await waitCaughtUp(cluster)

      if (capper !== null) {
        say(`== reads: prefilling ${fmt(getKeys)} keys (ack=all)...`)
        await prefill(leader.url, 'bench/get/', valueBytes, getKeys, security)
        for (const member of cluster.members) await capper.cap(pidOf(member), options.readCpuCap)
        say(`   capped every node at ${options.readCpuCap} CPU (${capper.description})`)
        const script = getScript('bench/get/', getKeys, { authorization })
        say('   warming up every node (5 s)...')
        await readAcross(cluster, 'warm', cluster.members, connections, 5, script, work)
        const plans: [string, BenchMember[]][] = [
          ['leader alone', [leader]],
          ['one follower alone', [cluster.followers[0] as BenchMember]],
          ['spread over the 2 followers', cluster.followers],
          ['spread over all 3 replicas', cluster.members],
        ]
        for (const [name, targets] of plans) {
          say(`== GET ${name} for ${durationS} s with ${connections} connections`)
          const phase = await readAcross(
            cluster,
            name,
            targets,
            connections,
            durationS,
            script,
            work,
          )
          reads.push(phase)
          say(`   ${fmt(phase.throughput)}/s, p99 ${fmt(phase.latencyMs.p99, 1)} ms`)
        }
      }
    } finally {
      await capper?.release()
      await cluster.stop()
    }
  } finally {
    await rm(work, { recursive: true, force: true })
  }

  const write = (ack: AckMode) => writes.find((w) => w.ack === ack) as WritePhase
  const readRate = (name: string) => reads.find((r) => r.name === name)?.throughput ?? 0
  const single = readRate('leader alone')
  const scaling = single > 0 ? readRate('spread over all 3 replicas') / single : 0
  const followerScaling = single > 0 ? readRate('spread over the 2 followers') / single : 0
  const lag = paced.find((p) => p.share === 0.8) as LagPhase
  const targets = {
    quorumWritesPerSecond: { target: 13_000, actual: write('quorum').result.throughput },
    quorumP99Ms: { target: 30, actual: write('quorum').result.latencyMs.p99 },
    asyncWritesPerSecond: { target: 25_000, actual: write('async').result.throughput },
    lagP99MsAt80PercentQuorum: { target: 50, actual: lag.lag.p99Ms },
    readScaling: { target: 2.7, actual: scaling },
  }

  const writeRows = writes.map(
    (w) =>
      `| PUT ack=${w.ack} | ${rateCells(w.result)} | ${w.result.errors} | ${fmt(w.lag.p50Ms)} / ${fmt(w.lag.p99Ms)} | ${w.leaderEntriesPerBatch === null ? '' : fmt(w.leaderEntriesPerBatch, 1)} | ${w.entriesPerFrame === null ? '' : fmt(w.entriesPerFrame, 1)} | ${coresCell(w.nodeCores)} | ${fmt(w.result.loadGeneratorCores, 2)} |`,
  )
  for (const p of paced) {
    writeRows.push(
      `| PUT ack=quorum, open-loop at ${fmt(p.targetRate)}/s (${p.share * 100}%) | ${rateCells(p.result)} | ${p.result.errors} | ${fmt(p.lag.p50Ms)} / ${fmt(p.lag.p99Ms)} | | | ${coresCell(p.nodeCores)} | ${fmt(p.result.loadGeneratorCores, 2)} |`,
    )
  }
  const readRows = reads.map(
    (r) =>
      `| GET ${r.name} | ${rateCells(r)} | ${r.errors} | ${coresCell(r.nodeCores)} | ${fmt(r.loadGeneratorCores, 2)} |`,
  )
  await publish(options.out, {
    suite: 'cluster',
    command: `pnpm bench --duration ${durationS} --connections ${connections} --value-bytes ${valueBytes} --get-keys ${getKeys} --read-cpu-cap ${options.readCpuCap}`,
    summary: `3-node single-leader cluster and wrk on one machine: ${connections} connections, ${valueBytes}-byte values, ${durationS} s per phase, fsync on.`,
    body: [
      '| writes (to the leader) | ops/s | p50 ms | p99 ms | p99.9 ms | errors | follower lag p50 / p99 ms | entries/disk batch | entries/frame | node CPU (cores) | load generator CPU |',
      '|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|',
      ...writeRows,
      '',
      ...(noCapReason === null
        ? [
            `| reads, every node capped at ${options.readCpuCap} CPU | ops/s | p50 ms | p99 ms | p99.9 ms | errors | node CPU (cores) | load generator CPU |`,
            '|---|---:|---:|---:|---:|---:|---|---:|',
            ...readRows,
            '',
            `Read scaling: all 3 replicas ${fmt(scaling, 2)}x the leader alone; the 2 followers ${fmt(followerScaling, 2)}x.`,
          ]
        : [`Reads were not measured: ${noCapReason}.`]),
      '',
      ...targetTable([
        [
          'ack=quorum throughput',
          '>= 13,000/s',
          `${fmt(targets.quorumWritesPerSecond.actual)}/s`,
          targets.quorumWritesPerSecond.actual >= 13_000,
        ],
        [
          'ack=quorum p99',
          '<= 30 ms',
          `${fmt(targets.quorumP99Ms.actual, 2)} ms`,
          targets.quorumP99Ms.actual <= 30,
        ],
        [
          'ack=async throughput',
          '>= 25,000/s',
          `${fmt(targets.asyncWritesPerSecond.actual)}/s`,
          targets.asyncWritesPerSecond.actual >= 25_000,
        ],
        [
          'lag p99 at 80% of the quorum rate',
          '<= 50 ms',
          `${fmt(targets.lagP99MsAt80PercentQuorum.actual)} ms`,
          targets.lagP99MsAt80PercentQuorum.actual <= 50,
        ],
        noCapReason === null
          ? [
              `reads over 3 replicas vs the leader alone (${options.readCpuCap} CPU each)`,
              '>= 2.7x',
              `${fmt(scaling, 2)}x`,
              scaling >= 2.7,
            ]
          : ['reads over 3 replicas vs the leader alone', '>= 2.7x', 'not measured', noCapReason],
      ]),
    ],
    json: {
      cpuCap: { cores: options.readCpuCap, how: capper?.description ?? null, skipped: noCapReason },
      connections,
      valueBytes,
      durationS,
      writes,
      paced,
      catchUpMs,
      reads,
      readScaling: { allReplicas: scaling, followers: followerScaling },
      targets,
    },
  })
}
