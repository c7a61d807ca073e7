/**
 * pnpm bench --suite compare: etcd and this store side by side on this machine, with the same
 * load generator (wrk, one thread, closed loop) and the same settings (64 connections, 100-byte
 * values, fresh keys for writes, 100 000 prefilled keys for random reads, `durationS` per
 * phase).
 *
 * Each round starts every system afresh, one after the other, and measures it:
 *
 *   etcd (Debian's etcd-server, 3 members, as shipped; etcd.ts): put to the leader; range,
 *     linearizable, on the leader; range, serializable, on a follower.
 *   this store, single-leader (3 nodes as shipped: mutual TLS between members, HTTPS and
 *     token auth for clients, see --security): PUT ack=quorum and ack=async to the leader;
 *     GET ?consistency=linearizable on the leader; GET (default) on a follower.
 *   this store, leaderless (3 nodes, N=3, so every node is a replica of every key and no
 *     request is forwarded): PUT ?w=quorum and GET ?r=quorum, the connections split over the
 *     3 nodes.
 *   a bare fastify handler (hello-server.ts; one process, a fixed body): plain HTTP with no
 *     auth, the ceiling of Node's HTTP on this machine that the follower-read target is defined
 *     against; and secured as the nodes are (HTTPS with a member's certificate and a bearer
 *     token checked on every request, under the default --security tls-auth), the
 *     like-for-like ceiling printed beside it.
 *
 * Rounds alternate the order (etcd first, then last, ...) so that a machine that gets busier
 * during the run weighs on every system alike. For each phase it reads the CPU time (user +
 * system, /proc/PID/stat) of every server process of the system before and after, and reports
 * CPU µs per successful operation. Ratios are of the means over rounds. The targets are
 * printed, never asserted; `check` (the CI guard) only asserts that every phase ran and
 * produced numbers. `systems` runs a subset (say, single-leader and fastify while working on
 * follower reads); the rows and targets that need a system left out are then left out too.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { cpus, tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { Pool } from 'undici'
import { prefill, waitCaughtUp } from './cluster.js'
import { ensureWrk, fmt, loadInBatches, say } from './common.js'
import {
  ensureEtcd,
  etcdCount,
  etcdGet,
  etcdPrefill,
  etcdPutScript,
  etcdRangeScript,
  startEtcdCluster,
  type EtcdBinary,
} from './etcd.js'
import {
  pidOf,
  startBenchCluster,
  closeLeaderlessBenchCluster,
  startLeaderlessBenchCluster,
} from './node-process.js'
import { cpuSeconds, loadAverage, removeOnExit, stopChild, track } from './proc.js'
import { publish, targetTable, type TargetRow } from './report.js'
import { benchSecurity, type BenchSecurity, type SecurityProfile } from './security.js'
import type { SecuritySuiteOptions } from './security-suite.js'
import { getScript, putScript, runWrk, type WrkResult } from './wrk.js'

/** The security suite's run settings, and these. */
export interface CompareOptions extends SecuritySuiteOptions {
  security: SecurityProfile
  /** The CI guard: fail unless every phase ran and produced numbers (never on speed). */
  check: boolean
  /** The systems to run, in the suite's order; all of them by default. */
  systems?: readonly SystemName[]
}

export const systemNames = ['etcd', 'single-leader', 'leaderless', 'fastify'] as const
export type SystemName = (typeof systemNames)[number]

const phaseLabelsBase = {
  'etcd put': 'etcd put (to the leader)',
  'etcd range': 'etcd range, linearizable (on the leader)',
  'etcd range serializable': 'etcd range, serializable (on a follower)',
  quorum: 'PUT ?ack=quorum (to the leader)',
  async: 'PUT ?ack=async (to the leader)',
  linearizable: 'GET ?consistency=linearizable (on the leader)',
  follower: 'GET, default (on a follower)',
  'leaderless put': 'leaderless PUT ?w=quorum (3 nodes, N=3)',
  'leaderless get': 'leaderless GET ?r=quorum (3 nodes, N=3)',
  fastify: 'bare fastify handler (plain HTTP, 1 process)',
  'fastify secured': 'bare fastify handler, HTTPS + bearer token (1 process)',
} as const
type PhaseKey = keyof typeof phaseLabelsBase

/** The phases' labels; the secured bare handler is secured as the nodes are. */
function phaseLabelsFor(profile: SecurityProfile): Record<PhaseKey, string> {
  const secured = {
    'tls-auth': phaseLabelsBase['fastify secured'],
    tls: 'bare fastify handler, HTTPS, no auth (1 process)',
    plaintext: 'bare fastify handler, plain HTTP, no auth, again (1 process)',
  }[profile]
  return { ...phaseLabelsBase, 'fastify secured': secured }
}
let phaseLabels: Record<PhaseKey, string> = phaseLabelsBase

const systemOf: Record<PhaseKey, SystemName> = {
  'etcd put': 'etcd',
  'etcd range': 'etcd',
  'etcd range serializable': 'etcd',
  quorum: 'single-leader',
  async: 'single-leader',
  linearizable: 'single-leader',
  follower: 'single-leader',
  'leaderless put': 'leaderless',
  'leaderless get': 'leaderless',
  fastify: 'fastify',
  'fastify secured': 'fastify',
}

interface Phase {
  key: PhaseKey
  system: SystemName
  round: number
  /** wrk's counts, summed over the phase's wrk processes. */
  requests: number
  errors: number
  /** Successful operations (requests less errors) per second. */
  throughput: number
  /** The worst of each wrk process's percentiles (an upper bound when several ran). */
  latencyMs: { p50: number; p99: number; p999: number; max: number }
  /** CPU of every server process of the system, in cores, over the phase. */
  serverCores: number
  /** The same per server process, in the order measured (for a cluster: its members'). */
  serverCoresByProcess: number[]
  /** The same, in µs of CPU per successful operation. */
  cpuUsPerOp: number
  loadGeneratorCores: number
}

interface Row {
  name: string
  ours: PhaseKey
  baseline: PhaseKey
}

const rows: Row[] = [
  { name: 'durable write through a majority', ours: 'quorum', baseline: 'etcd put' },
  { name: 'write acknowledged by the leader alone', ours: 'async', baseline: 'etcd put' },
  { name: 'linearizable read on the leader', ours: 'linearizable', baseline: 'etcd range' },
  { name: 'follower read', ours: 'follower', baseline: 'etcd range serializable' },
  { name: 'leaderless write, W=quorum', ours: 'leaderless put', baseline: 'etcd put' },
  { name: 'leaderless read, R=quorum', ours: 'leaderless get', baseline: 'etcd range' },
  { name: 'follower read vs the Node HTTP ceiling', ours: 'follower', baseline: 'fastify' },
  {
    name: 'follower read vs the like-for-like Node HTTP ceiling',
    ours: 'follower',
    baseline: 'fastify secured',
  },
]

const isCeiling = (key: PhaseKey): boolean => key === 'fastify' || key === 'fastify secured'

const mean = (values: number[]): number =>
  values.length === 0 ? 0 : values.reduce((a, b) => a + b, 0) / values.length

/** A load: one wrk per target, the connections split between them. */
interface Target {
  url: string
  script: string
}

class Runner {
  readonly phases: Phase[] = []

  constructor(
    private readonly options: CompareOptions,
    private readonly scriptDir: string,
  ) {}

  /** Warm-up length: 3 s, or the phase length when shorter. */
  get warmS(): number {
    return Math.min(3, this.options.durationS)
  }

  private wrk(targets: Target[], durationS: number): Promise<WrkResult[]> {
    const { connections } = this.options
    return Promise.all(
      targets.map((t, i) =>
        runWrk({
          url: t.url,
          script: t.script,
          scriptDir: this.scriptDir,
          connections:
            Math.floor(connections / targets.length) + (i < connections % targets.length ? 1 : 0),
          durationS,
        }),
      ),
    )
  }

  async warm(targets: Target[]): Promise<void> {
    await this.wrk(targets, this.warmS)
  }

  /** Runs one measured phase: wrk on `targets`, the CPU of `pids` around it. */
  async measure(key: PhaseKey, round: number, pids: number[], targets: Target[]): Promise<Phase> {
    const cpu = () => Promise.all(pids.map(cpuSeconds))
    const before = await cpu()
    const started = performance.now()
    const results = await this.wrk(targets, this.options.durationS)
    const after = await cpu()
    const cpuByProcessS = after.map((a, i) => a - (before[i] ?? 0))
    const cpuS = cpuByProcessS.reduce((a, b) => a + b, 0)
    const wallS = (performance.now() - started) / 1000
    const requests = results.reduce((sum, r) => sum + r.requests, 0)
    const errors = results.reduce((sum, r) => sum + r.errors, 0)
    const ok = Math.max(0, requests - errors)
    const durationS = Math.max(...results.map((r) => r.durationS))
    const worst = (pick: (r: WrkResult) => number) => Math.max(...results.map(pick))
    const phase: Phase = {
      key,
      system: systemOf[key],
      round,
      requests,
      errors,
      throughput: durationS > 0 ? ok / durationS : 0,
      latencyMs: {
        p50: worst((r) => r.latencyMs.p50),
        p99: worst((r) => r.latencyMs.p99),
        p999: worst((r) => r.latencyMs.p999),
        max: worst((r) => r.latencyMs.max),
      },
      serverCores: cpuS / wallS,
      serverCoresByProcess: cpuByProcessS.map((c) => c / wallS),
      cpuUsPerOp: ok > 0 ? (cpuS / ok) * 1e6 : NaN,
      loadGeneratorCores: results.reduce((sum, r) => sum + r.loadGeneratorCores, 0),
    }
    this.phases.push(phase)
    say(
      `   ${phaseLabels[key]}: ${fmt(phase.throughput)}/s, p99 ${fmt(phase.latencyMs.p99, 1)} ms, ${fmt(phase.cpuUsPerOp)} µs CPU/op (cores per process ${phase.serverCoresByProcess.map((c) => fmt(c, 2)).join(', ')}), ${errors} errors`,
    )
    return phase
  }
}

async function roundEtcd(
  run: Runner,
  options: CompareOptions,
  bin: EtcdBinary,
  dir: string,
  round: number,
): Promise<void> {
  const { valueBytes, getKeys } = options
  say(`== round ${round}: etcd ${bin.version}, 3 members`)
  const etcd = await startEtcdCluster(bin, dir, 3)
  try {
    const { leader } = etcd
    const follower = etcd.followers[0]
    if (follower === undefined) throw new Error('etcd has no follower')
    const pids = etcd.members.map((m) => m.pid)
    await run.warm([{ url: leader.url, script: etcdPutScript('warm/', valueBytes) }])
    const putPrefix = `bench/put/`
    const put = await run.measure('etcd put', round, pids, [
      { url: leader.url, script: etcdPutScript(putPrefix, valueBytes) },
    ])
    // Every put was of a fresh key: etcd must hold at least as many as wrk saw succeed.
    const stored = await etcdCount(leader.url, putPrefix)
    if (stored === null || stored < put.requests - put.errors) {
      throw new Error(
        `etcd holds ${stored} keys under ${putPrefix} after ${put.requests - put.errors} successful puts`,
      )
    }
    say(`   loading ${fmt(getKeys)} keys (transactions of 128 puts)...`)
    await etcdPrefill(leader.url, 'bench/get/', valueBytes, getKeys)
    for (const key of ['bench/get/0', `bench/get/${getKeys - 1}`]) {
      if ((await etcdGet(follower.url, key, true)) !== 'v'.repeat(valueBytes)) {
        throw new Error(`etcd's follower ${follower.name} does not hold ${key} after loading`)
      }
    }
    const linearizable = etcdRangeScript('bench/get/', getKeys, false)
    const serializable = etcdRangeScript('bench/get/', getKeys, true)
    await run.warm([
      { url: leader.url, script: linearizable },
      { url: follower.url, script: serializable },
    ])
    await run.measure('etcd range', round, pids, [{ url: leader.url, script: linearizable }])
    await run.measure('etcd range serializable', round, pids, [
      { url: follower.url, script: serializable },
    ])
  } finally {
    await etcd.stop()
  }
}

async function roundSingleLeader(
  run: Runner,
  options: CompareOptions,
  security: BenchSecurity,
  dir: string,
  round: number,
): Promise<void> {
  const { valueBytes, getKeys } = options
  say(`== round ${round}: this store, single-leader, 3 nodes (${security.profile})`)
  const cluster = await startBenchCluster(dir, 3, security)
  try {
    const { leader } = cluster
    const follower = cluster.followers[0]
    if (follower === undefined) throw new Error('no follower')
    const pids = cluster.members.map(pidOf)
    const authorization = await security.authorization(leader.url)
    const followerAuthorization = await security.authorization(follower.url)
    await run.warm([
      {
        url: leader.url,
        script: putScript('warm/', valueBytes, { query: '?ack=quorum', authorization }),
      },
    ])
    await waitCaughtUp(cluster)
    for (const ack of ['quorum', 'async'] as const) {
      await run.measure(ack, round, pids, [
        {
          url: leader.url,
          script: putScript(`bench/${ack}/`, valueBytes, { query: `?ack=${ack}`, authorization }),
        },
      ])
      await waitCaughtUp(cluster)
    }
    say(`   loading ${fmt(getKeys)} keys (batches of 1000, ack=all)...`)
    await prefill(leader.url, 'bench/get/', valueBytes, getKeys, security)
    await waitCaughtUp(cluster)
    const linearizable = getScript('bench/get/', getKeys, {
      authorization,
      query: '?consistency=linearizable',
    })
    const followerRead = getScript('bench/get/', getKeys, {
      authorization: followerAuthorization,
    })
    await run.warm([
      { url: leader.url, script: linearizable },
      { url: follower.url, script: followerRead },
    ])
    await run.measure('linearizable', round, pids, [{ url: leader.url, script: linearizable }])
    await run.measure('follower', round, pids, [{ url: follower.url, script: followerRead }])
  } finally {
    await cluster.stop()
  }
}

/**
 * Writes `prefix`0 .. `prefix`(keys-1) to a leaderless cluster at w=all, the keys spread over
 * the members, 64 at a time; fails on any error or past `timeoutMs`.
 */
async function leaderlessPrefill(
  urls: string[],
  security: BenchSecurity,
  authorization: string | undefined,
  prefix: string,
  valueBytes: number,
  keys: number,
  timeoutMs = 300_000,
): Promise<void> {
  const tls = security.client.tls
  const pools = urls.map(
    (url) =>
      new Pool(url, {
        ...(tls !== undefined ? { connect: tls } : {}),
        connections: 24,
        headersTimeout: 30_000,
        bodyTimeout: 30_000,
      }),
  )
  const body = Buffer.alloc(valueBytes, 'v')
  const headers = {
    'content-type': 'application/octet-stream',
    ...(authorization !== undefined ? { authorization } : {}),
  }
  try {
    await loadInBatches(
      { total: keys, batch: 1, workers: 64, timeoutMs, what: `${keys} leaderless keys` },
      async (i) => {
        const res = await (pools[i % pools.length] as Pool).request({
          method: 'PUT',
          path: `/v1/kv/${prefix}${i}?w=all`,
          body,
          headers,
        })
        const text = await res.body.text()
        if (res.statusCode !== 200) {
          throw new Error(`PUT ${prefix}${i}?w=all answered ${res.statusCode}: ${text}`)
        }
      },
    )
  } finally {
    await Promise.all(pools.map((p) => p.close()))
  }
}

async function roundLeaderless(
  run: Runner,
  options: CompareOptions,
  security: BenchSecurity,
  dir: string,
  round: number,
): Promise<void> {
  const { valueBytes, getKeys } = options
  say(`== round ${round}: this store, leaderless, 3 nodes, N=3 (${security.profile})`)
  const cluster = await startLeaderlessBenchCluster(dir, 3, security, ['--replicas', '3'])
  try {
    const members = cluster.members
    const pids = members.map(pidOf)
    const first = members[0]
    if (first === undefined) throw new Error('no leaderless member')
    const authorization = await security.authorization(first.url)
    // Each wrk writes its own keys, so that no two coordinators write one key at once.
    const puts = (prefix: string) =>
      members.map((m) => ({
        url: m.url,
        script: putScript(`${prefix}${m.id}/`, valueBytes, { query: '?w=quorum', authorization }),
      }))
    await run.warm(puts('warm/'))
    await run.measure('leaderless put', round, pids, puts('bench/put/'))
    say(`   loading ${fmt(getKeys)} keys (w=all)...`)
    await leaderlessPrefill(
      members.map((m) => m.url),
      security,
      authorization,
      'bench/get/',
      valueBytes,
      getKeys,
    )
    const gets = members.map((m) => ({
      url: m.url,
      script: getScript('bench/get/', getKeys, { authorization, query: '?r=quorum' }),
    }))
    await run.warm(gets)
    await run.measure('leaderless get', round, pids, gets)
  } finally {
    await closeLeaderlessBenchCluster(cluster)
  }
}

/**
 * Starts the bare fastify server, plain or secured (HTTPS with `certsDir`'s member certificate,
 * a bearer token checked when `token` is given); resolves with its process and URL.
 */
async function startHelloServer(
  valueBytes: number,
  secured: { certsDir: string | null; token: string | null } = { certsDir: null, token: null },
  timeoutMs = 15_000,
): Promise<{ child: ChildProcess; url: string }> {
  const script = fileURLToPath(new URL('./hello-server.js', import.meta.url))
  const args = [script, '--value-bytes', String(valueBytes)]
  if (secured.certsDir !== null) args.push('--certs-dir', secured.certsDir)
  if (secured.token !== null) args.push('--bearer-token', secured.token)
  const child = track(spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] }))
  try {
    const port = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`the fastify server did not start within ${timeoutMs} ms`)),
        timeoutMs,
      )
      child.once('exit', (code) => {
        clearTimeout(timer)
        reject(new Error(`the fastify server exited (${code}) before listening`))
      })
      createInterface({ input: child.stdout as NodeJS.ReadableStream }).once('line', (line) => {
        clearTimeout(timer)
        try {
          resolve((JSON.parse(line) as { port: number }).port)
        } catch {
          reject(new Error(`the fastify server said ${line}`))
        }
      })
    })
    return { child, url: `${secured.certsDir === null ? 'http' : 'https'}://127.0.0.1:${port}` }
  } catch (err) {
    await stopChild(child)
    throw err
  }
}

async function roundFastify(
  run: Runner,
  options: CompareOptions,
  security: BenchSecurity,
  round: number,
): Promise<void> {
  // Plain first, then secured as the nodes are; each server afresh.
  for (const key of ['fastify', 'fastify secured'] as const) {
    say(`== round ${round}: ${phaseLabels[key]}`)
    const secured = key === 'fastify secured'
    // A random token for this server alone, sent as a node's client sends its own.
    const token =
      secured && security.profile === 'tls-auth' ? randomBytes(32).toString('base64url') : null
    const server = await startHelloServer(options.valueBytes, {
      certsDir: secured ? security.certsDir : null,
      token,
    })
    try {
      const authorization = token === null ? undefined : `Bearer ${token}`
      const targets = [
        { url: server.url, script: getScript('bench/get/', options.getKeys, { authorization }) },
      ]
      await run.warm(targets)
      await run.measure(key, round, [server.child.pid as number], targets)
    } finally {
      await stopChild(server.child)
    }
  }
}

/** Runs the compare suite; resolves once the report is written. */
export async function runCompareBench(options: CompareOptions): Promise<void> {
  const { durationS, connections, valueBytes, getKeys, rounds } = options
  phaseLabels = phaseLabelsFor(options.security)
  const startedAt = performance.now()
  const loadBefore = await loadAverage()
  const order: SystemName[] = systemNames.filter(
    (s) => options.systems === undefined || options.systems.includes(s),
  )
  if (order.length === 0) throw new Error('no system to run')
  const ran = (key: PhaseKey) => order.includes(systemOf[key])
  const allSystems = order.length === systemNames.length
  ensureWrk()
  const bin = order.includes('etcd') ? ensureEtcd() : null
  const work = await mkdtemp(join(tmpdir(), 'kv-bench-compare-'))
  const workOnExit = removeOnExit(work)
  const run = new Runner(options, work)
  try {
    for (let round = 1; round <= rounds; round++) {
      const systems = round % 2 === 1 ? order : [...order].reverse()
      for (const system of systems) {
        const dir = join(work, `r${round}-${system}`)
        await mkdir(dir, { recursive: true })
        // A fresh security per cluster: its token cache is per URL, and ports come back.
        const security = await benchSecurity(options.security, work)
        switch (system) {
          case 'etcd':
            await roundEtcd(run, options, bin as EtcdBinary, dir, round)
            break
          case 'single-leader':
            await roundSingleLeader(run, options, security, dir, round)
            break
          case 'leaderless':
            await roundLeaderless(run, options, security, dir, round)
            break
          case 'fastify':
            await roundFastify(run, options, security, round)
            break
        }
      }
    }
  } finally {
    await rm(work, { recursive: true, force: true })
    workOnExit.forget()
  }
  const elapsedS = (performance.now() - startedAt) / 1000
  const loadAfter = await loadAverage()

  const of = (key: PhaseKey) => run.phases.filter((p) => p.key === key)
  const rate = (key: PhaseKey) => mean(of(key).map((p) => p.throughput))
  const cpu = (key: PhaseKey) => mean(of(key).map((p) => p.cpuUsPerOp))
  const ratio = (row: Row) => rate(row.ours) / rate(row.baseline)
  const cpuRatio = (row: Row) => cpu(row.ours) / cpu(row.baseline)
  const perRound = (key: PhaseKey) =>
    of(key)
      .map((p) => fmt(p.throughput))
      .join(' / ')
  const ratioText = (row: Row) =>
    isCeiling(row.baseline) ? `${fmt(ratio(row) * 100)}%` : `${fmt(ratio(row), 2)}x`
  const rowsRun = rows.filter((row) => ran(row.ours) && ran(row.baseline))
  const rowRan = (name: string) => rowsRun.some((r) => r.name === name)
  const rowByName = (name: string) => rows.find((r) => r.name === name) as Row
  const summaryRows = rowsRun.map((row) => ({
    name: row.name,
    ours: { phase: row.ours, label: phaseLabels[row.ours], throughput: rate(row.ours) },
    baseline: {
      phase: row.baseline,
      label: phaseLabels[row.baseline],
      throughput: rate(row.baseline),
    },
    ratio: ratio(row),
    cpuUsPerOp: { ours: cpu(row.ours), baseline: cpu(row.baseline) },
    cpuRatio: cpuRatio(row),
  }))

  const target = (name: string, goal: number, text: string): TargetRow[] => {
    if (!rowRan(name)) return []
    const r = ratio(rowByName(name))
    return [[text, `>= ${goal}x`, `${fmt(r, 2)}x`, r >= goal]]
  }
  const quorumCpu = cpuRatio(rowByName('durable write through a majority'))
  const followerShare = ratio(rowByName('follower read vs the Node HTTP ceiling'))
  const followerShareSecured = ratio(
    rowByName('follower read vs the like-for-like Node HTTP ceiling'),
  )
  const followerCpuSecured = cpuRatio(
    rowByName('follower read vs the like-for-like Node HTTP ceiling'),
  )
  const securedCeiling = {
    'tls-auth': 'HTTPS + bearer token',
    tls: 'HTTPS, no auth',
    plaintext: 'plain HTTP, no auth',
  }
  const targets: TargetRow[] = [
    ...target('durable write through a majority', 2.5, 'ack=quorum writes vs etcd put'),
    ...target('write acknowledged by the leader alone', 3, 'ack=async writes vs etcd put'),
    ...target(
      'linearizable read on the leader',
      3,
      'linearizable reads vs etcd linearizable range',
    ),
    ...(rowRan('follower read vs the Node HTTP ceiling')
      ? ([
          [
            "follower reads vs the bare fastify handler, plain HTTP, no auth (the target's ceiling)",
            '>= 75%',
            `${fmt(followerShare * 100)}%`,
            followerShare >= 0.75,
          ],
          [
            `follower reads vs the bare fastify handler secured as the nodes are (${securedCeiling[options.security]}): the like-for-like ceiling, for reference`,
            '',
            `${fmt(followerShareSecured * 100)}% (CPU/op ${fmt(followerCpuSecured, 2)}x)`,
            'for reference',
          ],
        ] satisfies TargetRow[])
      : []),
    ...target('leaderless write, W=quorum', 1.2, 'leaderless W=quorum writes vs etcd put'),
    ...target('leaderless read, R=quorum', 2, 'leaderless R=quorum reads vs etcd range'),
    ...(rowRan('durable write through a majority')
      ? ([
          [
            'CPU per quorum write vs per etcd put (all server processes)',
            '<= 0.4x',
            `${fmt(quorumCpu, 2)}x`,
            quorumCpu <= 0.4,
          ],
        ] satisfies TargetRow[])
      : []),
  ]

  const systemOrder = order.join(', ')
  const command = [
    `pnpm bench --suite compare --duration ${durationS} --rounds ${rounds}`,
    `--connections ${connections} --value-bytes ${valueBytes} --get-keys ${getKeys}`,
    ...(options.security === 'tls-auth' ? [] : [`--security ${options.security}`]),
    ...(allSystems ? [] : [`--systems ${order.join(',')}`]),
    ...(options.check ? ['--check'] : []),
  ].join(' ')
  const phaseKeys = (Object.keys(phaseLabels) as PhaseKey[]).filter(ran)
  const phaseRows = phaseKeys.map((key) => {
    const ps = of(key)
    const worst = (pick: (p: Phase) => number) => Math.max(...ps.map(pick))
    return `| ${systemOf[key]} | ${phaseLabels[key]} | ${perRound(key)} | ${fmt(
      worst((p) => p.latencyMs.p50),
      2,
    )} | ${fmt(
      worst((p) => p.latencyMs.p99),
      2,
    )} | ${fmt(
      worst((p) => p.latencyMs.p999),
      2,
    )} | ${ps.reduce((s, p) => s + p.errors, 0)} | ${ps.map((p) => fmt(p.serverCores, 2)).join(' / ')} | ${ps.map((p) => fmt(p.cpuUsPerOp)).join(' / ')} | ${ps.map((p) => fmt(p.loadGeneratorCores, 2)).join(' / ')} |`
  })
  await publish(options.out, {
    suite: 'compare-etcd',
    command,
    summary: `${bin === null ? `${order.join(', ')} only (--systems): ` : `etcd ${bin.version} (Debian's etcd-server: 3 members, as shipped, fsync on, plain HTTP through its JSON gateway) and `}this store (3 nodes, ${options.security === 'tls-auth' ? 'as shipped: mutual TLS between members, HTTPS and token auth for clients' : `--security ${options.security}`}) on one machine, each started afresh per round, with wrk on the same machine: ${connections} connections, ${valueBytes}-byte values, fresh keys for writes, ${fmt(getKeys)} prefilled keys for random reads, ${durationS} s per phase, ${rounds} interleaved round${rounds === 1 ? '' : 's'} (order ${systemOrder}, reversed every other round; each cell lists the rounds).`,
    body: [
      '| comparison | ours | ops/s | baseline | ops/s | ours / baseline | CPU µs/op ours | CPU µs/op baseline | CPU ours / baseline |',
      '|---|---|---:|---|---:|---:|---:|---:|---:|',
      ...rowsRun.map(
        (row) =>
          `| ${row.name} | ${phaseLabels[row.ours]} | ${perRound(row.ours)} | ${phaseLabels[row.baseline]} | ${perRound(row.baseline)} | ${ratioText(row)} | ${fmt(cpu(row.ours))} | ${fmt(cpu(row.baseline))} | ${fmt(cpuRatio(row), 2)}x |`,
      ),
      '',
      'CPU µs/op: user + system CPU of every server process of the system (3 nodes, 3 etcd members, or the one fastify process), from /proc/PID/stat before and after the phase, per successful operation. Ratios are of the means over rounds.',
      '',
      '| system | phase | ops/s | p50 ms | p99 ms | p99.9 ms | errors | server CPU (cores) | CPU µs/op | wrk CPU (cores) |',
      '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|',
      ...phaseRows,
      '',
      ...targetTable(targets),
      '',
      `The run took ${fmt(elapsedS)} s. Load average (1 min) ${fmt(loadBefore, 2)} before it and ${fmt(loadAfter, 2)} after (the machine has ${cpus().length} cores; other work on it weighs on every figure). The targets are printed, never asserted.`,
    ],
    json: {
      etcd: bin,
      security: options.security,
      connections,
      valueBytes,
      getKeys,
      durationS,
      rounds,
      elapsedS,
      loadAverage: { before: loadBefore, after: loadAfter },
      rows: summaryRows,
      phases: run.phases,
      targets: targets.map(([name, goal, measured, ok]) => ({ name, goal, measured, met: ok })),
    },
  })

  if (options.check) {
    const problems: string[] = []
    for (const key of phaseKeys) {
      const ps = of(key)
      if (ps.length !== rounds)
        problems.push(`${phaseLabels[key]}: ${ps.length} of ${rounds} rounds`)
      for (const p of ps) {
        if (!(p.throughput > 0) || !Number.isFinite(p.cpuUsPerOp)) {
          problems.push(`${phaseLabels[key]}, round ${p.round}: no successful operations measured`)
        } else if (p.errors > p.requests * 0.01) {
          problems.push(
            `${phaseLabels[key]}, round ${p.round}: ${p.errors} errors in ${p.requests} requests`,
          )
        }
      }
    }
    for (const r of summaryRows) {
      if (!Number.isFinite(r.ratio) || !Number.isFinite(r.cpuRatio)) {
        problems.push(`${r.name}: no ratio`)
      }
    }
    if (problems.length > 0) throw new Error(`the guard failed:\n  ${problems.join('\n  ')}`)
    say(
      `guard: every phase ran and produced numbers (${run.phases.length} phases in ${fmt(elapsedS)} s); speed is not checked`,
    )
  }
}
