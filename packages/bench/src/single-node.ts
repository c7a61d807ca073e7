/**
 * The single-node suite (pnpm bench --suite single-node): throughput and latency of one node.
 *
 * Three node configurations run side by side in one invocation, each in a fresh data
 * directory:
 *   - group commit, fsync on   (the default: a write is on disk when acknowledged)
 *   - group commit, fsync off  (a write survives a process crash, not a power loss)
 *   - one fsync per write      (--group-commit-writes-max 1: the baseline group commit beats)
 * For each: 64 concurrent PUTs of fresh keys with 100-byte values, then (for the first two) 64
 * concurrent GETs of random keys among 100 000 prefilled ones. wrk generates the load on the
 * same machine; its CPU is reported beside the figures.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { KvClient } from '@kvstore/client'
import { terminate } from '@kvstore/testkit'
import { ensureWrk, fmt, gauge, histogram, say } from './common.js'
import { startBenchNode, type BenchNode } from './node-process.js'
import { cpuSeconds } from './proc.js'
import { publish, rateCells, targetTable } from './report.js'
import { getScript, putScript, runWrk, type WrkResult } from './wrk.js'
import { benchSecurity, type BenchSecurity, type SecurityProfile } from './security.js'

interface Phase {
  scenario: string
  operation: 'put' | 'get'
  result: WrkResult
  /** CPU used by the node process, in cores. */
  nodeCores: number
  /** Mean log entries per LevelDB batch during the phase (puts only). */
  entriesPerBatch: number | null
  /** Mean batch write time including fsync, in ms (puts only). */
  batchWriteMs: number | null
  /** Share of reads served by the node's record cache during the phase (gets only). */
  cacheHitRatio: number | null
}

async function measure(
  options: SingleNodeOptions,
  node: BenchNode,
  scenario: string,
  operation: 'put' | 'get',
  script: string,
  scriptDir: string,
): Promise<Phase> {
  const entriesBefore = await histogram(node.url, 'kv_storage_batch_entries')
  const secondsBefore = await histogram(node.url, 'kv_storage_batch_write_seconds')
  const hitsBefore = await gauge(node.url, 'kv_read_cache_hits')
  const missesBefore = await gauge(node.url, 'kv_read_cache_misses')
  const cpuBefore = await cpuSeconds(node.pid)
  const started = performance.now()
  const result = await runWrk({
    url: node.url,
    script,
    scriptDir,
    connections: options.connections,
    durationS: options.durationS,
  })
  const nodeCores = (await cpuSeconds(node.pid)) - cpuBefore
  const wallS = (performance.now() - started) / 1000
  const entriesAfter = await histogram(node.url, 'kv_storage_batch_entries')
  const secondsAfter = await histogram(node.url, 'kv_storage_batch_write_seconds')
  const batches = entriesAfter.count - entriesBefore.count
  const hits = (await gauge(node.url, 'kv_read_cache_hits')) - hitsBefore
  const misses = (await gauge(node.url, 'kv_read_cache_misses')) - missesBefore
  return {
    scenario,
    operation,
    result,
    nodeCores: nodeCores / wallS,
    entriesPerBatch:
      operation === 'put' && batches > 0 ? (entriesAfter.sum - entriesBefore.sum) / batches : null,
    batchWriteMs:
      operation === 'put' && batches > 0
        ? ((secondsAfter.sum - secondsBefore.sum) / batches) * 1000
        : null,
    cacheHitRatio: operation === 'get' && hits + misses > 0 ? hits / (hits + misses) : null,
  }
}

async function prefill(
  url: string,
  prefix: string,
  valueBytes: number,
  getKeys: number,
  security: BenchSecurity,
): Promise<void> {
  const client = new KvClient({ url, ...security.client })
  const value = 'v'.repeat(valueBytes)
  try {
    for (let start = 0; start < getKeys; start += 1000) {
      const ops = []
      for (let i = start; i < Math.min(getKeys, start + 1000); i++) {
        ops.push({ op: 'put' as const, key: `${prefix}${i}`, value })
      }
      await client.batch(ops)
    }
  } finally {
    await client.close()
  }
}

const scenarios = [
  { name: 'group commit, fsync on', args: ['--fsync', 'true'], gets: true },
  { name: 'group commit, fsync off', args: ['--fsync', 'false'], gets: true },
  {
    name: 'one fsync per write',
    args: ['--fsync', 'true', '--group-commit-writes-max', '1'],
    gets: false,
  },
] as const

export interface SingleNodeOptions {
  security: SecurityProfile
  durationS: number
  connections: number
  valueBytes: number
  getKeys: number
  out: string
}

/** Runs the single-node suite; resolves once the report is written. */
export async function runSingleNode(options: SingleNodeOptions): Promise<void> {
  const { durationS, connections, valueBytes, getKeys } = options
  ensureWrk()
  const work = await mkdtemp(join(tmpdir(), 'kv-bench-'))
  const security = await benchSecurity(options.security, work)
  const phases: Phase[] = []
  try {
    for (const scenario of scenarios) {
      say(`\n== ${scenario.name}`)
      const node = await startBenchNode(
        ['--data-dir', join(work, scenario.name.replace(/\W+/g, '-')), ...scenario.args],
        security,
      )
      const authorization = await security.authorization(node.url)
      try {
        say('   warming up...')
        await runWrk({
          url: node.url,
          script: putScript('warm/', valueBytes, { authorization }),
          scriptDir: work,
          connections,
          durationS: 2,
        })
        say(`   PUT for ${durationS} s with ${connections} connections...`)
        phases.push(
          await measure(
            options,
            node,
            scenario.name,
            'put',
            putScript('bench/put/', valueBytes, { authorization }),
            work,
          ),
        )
        if (scenario.gets) {
          say(`   prefilling ${fmt(getKeys)} keys, warming up, then GET for ${durationS} s...`)
          await prefill(node.url, 'bench/get/', valueBytes, getKeys, security)
          await runWrk({
            url: node.url,
            script: getScript('bench/get/', getKeys, { authorization }),
            scriptDir: work,
            connections,
            durationS: 5,
          })
          phases.push(
            await measure(
              options,
              node,
              scenario.name,
              'get',
              getScript('bench/get/', getKeys, { authorization }),
              work,
            ),
          )
        }
      } finally {
        await terminate(node)
      }
    }
  } finally {
    await rm(work, { recursive: true, force: true })
  }

  const put = (name: string) => phases.find((p) => p.scenario === name && p.operation === 'put')
  const grouped = put(scenarios[0].name)
  const single = put(scenarios[2].name)
  const ratio = grouped && single ? grouped.result.throughput / single.result.throughput : 0
  const gets = phases.find((p) => p.scenario === scenarios[0].name && p.operation === 'get')
  const targets = {
    durablePutsPerSecond: { target: 20_000, actual: grouped?.result.throughput ?? 0 },
    getsPerSecond: { target: 30_000, actual: gets?.result.throughput ?? 0 },
    durablePutP99Ms: { target: 10, actual: grouped?.result.latencyMs.p99 ?? Infinity },
    getP99Ms: { target: 10, actual: gets?.result.latencyMs.p99 ?? Infinity },
    groupCommitSpeedup: { target: 5, actual: ratio },
  }

  const rows = phases.map(
    (p) =>
      `| ${p.scenario} | ${p.operation.toUpperCase()} | ${rateCells(p.result)} | ${p.result.errors} | ${p.entriesPerBatch === null ? '' : fmt(p.entriesPerBatch, 1)} | ${p.batchWriteMs === null ? '' : fmt(p.batchWriteMs, 2)} | ${p.cacheHitRatio === null ? '' : `${fmt(p.cacheHitRatio * 100)}%`} | ${fmt(p.nodeCores, 2)} | ${fmt(p.result.loadGeneratorCores, 2)} |`,
  )
  await publish(options.out, {
    suite: 'single-node',
    command: `pnpm bench --suite single-node --duration ${durationS} --connections ${connections} --value-bytes ${valueBytes} --get-keys ${getKeys}`,
    summary: `Single node, ${connections} connections, ${valueBytes}-byte values, ${durationS} s per phase, wrk on the same machine.`,
    body: [
      '| scenario | op | ops/s | p50 ms | p99 ms | p99.9 ms | errors | entries/batch | batch write ms | read cache hits | node CPU (cores) | wrk CPU (cores) |',
      '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
      ...rows,
      '',
      ...targetTable([
        [
          'durable PUT throughput',
          '>= 20,000/s',
          `${fmt(targets.durablePutsPerSecond.actual)}/s`,
          targets.durablePutsPerSecond.actual >= 20_000,
        ],
        [
          'GET throughput',
          '>= 30,000/s',
          `${fmt(targets.getsPerSecond.actual)}/s`,
          targets.getsPerSecond.actual >= 30_000,
        ],
        [
          'durable PUT p99',
          '<= 10 ms',
          `${fmt(targets.durablePutP99Ms.actual, 2)} ms`,
          targets.durablePutP99Ms.actual <= 10,
        ],
        [
          'GET p99',
          '<= 10 ms',
          `${fmt(targets.getP99Ms.actual, 2)} ms`,
          targets.getP99Ms.actual <= 10,
        ],
        ['group commit vs one fsync per write', '>= 5x', `${fmt(ratio, 1)}x`, ratio >= 5],
      ]),
    ],
    json: { connections, valueBytes, durationS, phases, targets },
  })
}
