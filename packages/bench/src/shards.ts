/**
 * pnpm bench --suite shards: what sharding buys and costs (issue 17, "Figures"). Every node of
 * every cluster is capped to the same CPU share (`nodeCpuCap`, cgroups as cpu-cap.ts applies
 * them), so that the nodes, not the load generator or the machine, set the pace.
 *
 *  1. Group scaling: the closed-loop maximum of quorum writes (wrk, like quorumPutMaximum)
 *     against 1 group of 3 (owning every slot) and against 2 groups of 3 (2,048 slots each),
 *     interleaved over `rounds`. For 2 groups, one wrk per group's leader, each with
 *     `connections` connections and only keys of its group's slots (the script computes each
 *     key's slot, CRC16 as the nodes do, and skips the others): so each key goes to its own
 *     group's leader, with no router in the way. Keys are fresh and spread uniformly over the
 *     slots. The 1-group run sends the same keys to its one leader through one wrk.
 *  2. Fence time: on the 2 groups, `moves` slot moves of `moveSlots` slots back and forth
 *     (g1 → g2, g2 → g1, ...) under quorum writes from this process (closed loops that route
 *     by slot and follow KV_ERR_WRONG_SHARD, retrying KV_ERR_SLOT_MOVING every few ms, as a
 *     router does). Per move: the node's fence (kv_shard_last_fence_seconds of the source
 *     leader: fence written to switch answered), the write unavailability the load saw (the
 *     longest stretch with no acknowledged write to the moving slots, and the span of
 *     SLOT_MOVING refusals), and the move's whole time (startedAtMs to updatedAtMs in history).
 *  3. Router overhead: on the 1 group, quorum writes through one kv-router (--shard-map, as
 *     shipped; not capped: it stands for a router on its own machine, and its CPU is reported)
 *     and straight to the leader, interleaved over `rounds`: the closed-loop maximum (wrk) of
 *     each, and p50 and p99 of quorum writes offered open-loop at 50% of the direct maximum
 *     (pacer.ts, latency from when each write was due), where a closed loop's p50 would only
 *     mirror its throughput.
 *  4. Read scaling through the router: on the 1 group, holding `getKeys` keys, GETs (wrk,
 *     random keys) through a router reading from the followers (its default), from the
 *     followers and the leader (--read-from-leader), and from the leader alone (a router given
 *     only the leader's URL); and straight to the leader for reference.
 *
 * Figures are printed and written; nothing is asserted.
 */
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { cpus, tmpdir } from 'node:os'
import { join } from 'node:path'
import { addRouter } from '@kvstore/cli'
import { slotOfKey, type GroupShardView, type ShardMove } from '@kvstore/protocol'
import {
  TestCluster,
  kvRouterBin,
  metric,
  metricValue,
  metricsText,
  startRouterProcess,
  stopRouterProcess,
  type ClusterOptions,
  type RouterProcess,
} from '@kvstore/testkit'
import { Agent, request } from 'undici'
import { prefill, waitCaughtUp } from './cluster.js'
import { cpuCapper, type CpuCapper } from './cpu-cap.js'
import { ensureWrk, fmt, say, sleep } from './common.js'
import { Latencies } from './latency.js'
import { cpuMeter, pidOf, type BenchCluster } from './node-process.js'
import { cpuSeconds, loadAverage, machineMeter, removeOnExit } from './proc.js'
import { coresCell, publish, rateCells, targetTable, type TargetRow } from './report.js'
import { benchSecurity, type BenchSecurity, type SecurityProfile } from './security.js'
import { runPaced, type PacedOptions, type PacedResult } from './pacer.js'
import { getScript, runWrk, slotPutScript, type WrkResult } from './wrk.js'

export const shardParts = ['scaling', 'fence', 'router', 'reads'] as const
export type ShardPart = (typeof shardParts)[number]

export interface ShardsBenchOptions {
  security: SecurityProfile
  /** Seconds of each measured phase. */
  durationS: number
  /** wrk connections per leader. */
  connections: number
  valueBytes: number
  /** Keys the read-scaling part reads. */
  getKeys: number
  /** The CPU share every node is capped to, in cores. */
  nodeCpuCap: number
  /** Interleaved rounds of the scaling part. */
  rounds: number
  /** Slot moves of the fence part, and slots per move. */
  moves: number
  moveSlots: number
  /** The parts to run (all by default). */
  parts: readonly ShardPart[]
  out: string
}

/** Closed loops of the fence part: on keys of the moving slots, and on keys elsewhere. */
const fenceWritersMoving = 4
const fenceWritersElsewhere = 12
/** How long a writer waits before it retries a write refused with KV_ERR_SLOT_MOVING. */
const slotMovingRetryMs = 5

type Range = readonly [first: number, last: number]

interface Deployment {
  name: string
  groups: BenchCluster[]
  /** Each group's slots at the start. */
  slots: Range[]
  mapFile: string
}

// ---- the clusters --------------------------------------------------------------------------

async function startDeployment(
  name: string,
  groups: number,
  dir: string,
  security: BenchSecurity,
): Promise<Deployment> {
  const options: ClusterOptions = {
    security,
    dir,
    logLevel: 'warn',
    keepLogs: false,
    inheritStderr: true,
  }
  await mkdir(dir, { recursive: true })
  const started = await TestCluster.startShardGroups(groups, 3, [], options)
  for (const group of started.groups) await group.waitForLeader(30_000, { connected: true })
  const per = Math.floor(4096 / groups)
  return {
    name,
    groups: started.groups,
    slots: started.groups.map((_, g) => [g * per, g === groups - 1 ? 4095 : (g + 1) * per - 1]),
    mapFile: started.mapFile,
  }
}

async function stopDeployment(deployment: Deployment | null): Promise<void> {
  if (deployment === null) return
  await Promise.all(deployment.groups.map((g) => g.stop().catch(() => undefined)))
}

const membersOf = (deployment: Deployment) => deployment.groups.flatMap((g) => g.members)

// ---- part 1: group scaling -----------------------------------------------------------------

interface ScalingRun {
  deployment: string
  groups: number
  round: number
  /** Acknowledged writes per second, all groups together. */
  throughput: number
  perGroup: { group: string; leader: string; throughput: number; result: WrkResult }[]
  latencyMs: { p50: number; p99: number; p999: number }
  errors: number
  /** KV_ERR_WRONG_SHARD refusals the leaders counted meanwhile (0 when keys went to their owner). */
  wrongShard: number
  nodeCores: Record<string, number>
  loadGeneratorCores: number
  machine: { busyCores: number; idleCores: number }
}

async function wrongShardRefusals(deployment: Deployment): Promise<number> {
  let total = 0
  for (const group of deployment.groups)
    total += await metric(group.leader.url, 'kv_shard_refusals_total', 'reason="wrong_shard"')
  return total
}

async function scalingRun(
  deployment: Deployment,
  round: number,
  prefix: string,
  security: BenchSecurity,
  options: { connections: number; valueBytes: number; durationS: number; scriptDir: string },
): Promise<ScalingRun> {
  const leaders = deployment.groups.map((g) => g.leader)
  const auth = await Promise.all(leaders.map((l) => security.authorization(l.url)))
  const script = (g: number, p: string) =>
    slotPutScript(p, options.valueBytes, [deployment.slots[g] as Range], {
      query: '?ack=quorum',
      authorization: auth[g],
    })
  // Warm-up: 3 s on every leader at once, results discarded.
  await Promise.all(
    leaders.map((leader, g) =>
      runWrk({
        url: leader.url,
        script: script(g, `warm/r${round}/`),
        scriptDir: options.scriptDir,
        connections: options.connections,
        durationS: 3,
      }),
    ),
  )
  for (const group of deployment.groups) await waitCaughtUp(group)
  const wrongBefore = await wrongShardRefusals(deployment)
  const meter = await cpuMeter(membersOf(deployment))
  const machine = await machineMeter()
  const results = await Promise.all(
    leaders.map((leader, g) =>
      runWrk({
        url: leader.url,
        script: script(g, prefix),
        scriptDir: options.scriptDir,
        connections: options.connections,
        durationS: options.durationS,
      }),
    ),
  )
  const machineCores = await machine.stop()
  const nodeCores = await meter.stop()
  const wrongShard = (await wrongShardRefusals(deployment)) - wrongBefore
  for (const group of deployment.groups) await waitCaughtUp(group)
  const acked = (r: WrkResult) => Math.max(0, r.requests - r.errors) / r.durationS
  const perGroup = results.map((result, g) => ({
    group: `g${g + 1}`,
    leader: (leaders[g] as { id: string }).id,
    throughput: acked(result),
    result,
  }))
  return {
    deployment: deployment.name,
    groups: deployment.groups.length,
    round,
    throughput: perGroup.reduce((sum, p) => sum + p.throughput, 0),
    perGroup,
    // Percentiles across several wrk runs: the worst of each, an upper bound.
    latencyMs: {
      p50: Math.max(...results.map((r) => r.latencyMs.p50)),
      p99: Math.max(...results.map((r) => r.latencyMs.p99)),
      p999: Math.max(...results.map((r) => r.latencyMs.p999)),
    },
    errors: results.reduce((sum, r) => sum + r.errors, 0),
    wrongShard,
    nodeCores,
    loadGeneratorCores: results.reduce((sum, r) => sum + r.loadGeneratorCores, 0),
    machine: machineCores,
  }
}

// ---- part 2: fence time under load ---------------------------------------------------------

/** What one write of the fence load ended with, and when (performance.now(), ms). */
export interface WriteEvent {
  atMs: number
  ok: boolean
}

/**
 * The write unavailability the load saw in [fromMs, toMs]: the longest stretch between two
 * acknowledged writes (of `acks`, sorted by time) that overlaps the window, and the span of
 * the refusals in it (first to last; 0 when none).
 */
export function unavailability(
  acks: readonly number[],
  refusals: readonly number[],
  fromMs: number,
  toMs: number,
): { longestGapMs: number; refusals: number; refusalSpanMs: number } {
  let longestGapMs = 0
  let previous: number | null = null
  for (const at of acks) {
    if (previous !== null && at >= fromMs && previous <= toMs)
      longestGapMs = Math.max(longestGapMs, at - previous)
    previous = at
    if (at > toMs) break
  }
  // Acknowledgements stopped inside the window (or never came): count up to its end.
  if (previous === null) longestGapMs = toMs - fromMs
  else if (previous < toMs) longestGapMs = Math.max(longestGapMs, toMs - previous)
  const inside = refusals.filter((at) => at >= fromMs && at <= toMs)
  const first = inside[0]
  const last = inside[inside.length - 1]
  return {
    longestGapMs,
    refusals: inside.length,
    refusalSpanMs: first === undefined || last === undefined ? 0 : last - first,
  }
}

/**
 * Closed-loop quorum writers that route each key by its slot, as a router does: to the leader
 * of the group that owns it as far as they know, learning a new owner from
 * KV_ERR_WRONG_SHARD and a new leader from KV_ERR_NOT_LEADER, and retrying KV_ERR_SLOT_MOVING
 * every `slotMovingRetryMs`. Acknowledgements and SLOT_MOVING refusals of keys of the moving
 * slots are kept with their time.
 */
class RoutedWriters {
  readonly movingAcks: number[] = []
  readonly movingRefusals: number[] = []
  acked = 0
  errors = 0
  lastError = ''
  readonly latencies = new Latencies()
  private running = true
  private loops: Promise<void>[] = []
  private readonly owner = new Map<number, string>()

  constructor(
    private readonly agent: Agent,
    private readonly leaders: Map<string, string>,
    slots: { group: string; range: Range }[],
    private readonly authorization: string | undefined,
    private readonly valueBytes: number,
  ) {
    for (const { group, range } of slots)
      for (let slot = range[0]; slot <= range[1]; slot++) this.owner.set(slot, group)
  }

  start(movingKeys: readonly string[], otherKeys: readonly string[]): void {
    const body = 'v'.repeat(this.valueBytes)
    const loop = async (keys: readonly string[], moving: boolean, offset: number) => {
      for (let i = offset; this.running; i++) {
        const key = keys[i % keys.length] as string
        const began = performance.now()
        const at = await this.write(key, body, moving)
        if (at !== null) this.latencies.record(at - began)
      }
    }
    for (let w = 0; w < fenceWritersMoving; w++) this.loops.push(loop(movingKeys, true, w * 7919))
    for (let w = 0; w < fenceWritersElsewhere; w++)
      this.loops.push(loop(otherKeys, false, w * 7919))
  }

  /** Writes `key` until acknowledged (or stopped); returns the time of the acknowledgement. */
  private async write(key: string, body: string, moving: boolean): Promise<number | null> {
    const slot = slotOfKey(key)
    const requestId = `fence-${process.pid}-${Math.random().toString(36).slice(2)}`
    while (this.running) {
      const group = this.owner.get(slot) as string
      const url = this.leaders.get(group) as string
      let status = 0
      let error: { code?: string; group?: string; leaderUrl?: string | null } | undefined
      try {
        const res = await request(`${url}/v1/kv/${encodeURIComponent(key)}?ack=quorum`, {
          method: 'PUT',
          body,
          dispatcher: this.agent,
          headers: {
            'content-type': 'application/octet-stream',
            'kv-request-id': requestId,
            ...(this.authorization !== undefined ? { authorization: this.authorization } : {}),
          },
          headersTimeout: 10_000,
          bodyTimeout: 10_000,
        })
        status = res.statusCode
        const text = await res.body.text()
        if (status !== 200)
          error = (JSON.parse(text) as { error?: typeof error }).error ?? { code: text }
      } catch (err) {
        error = { code: (err as Error).message }
      }
      const at = performance.now()
      if (status === 200) {
        this.acked++
        if (moving) this.movingAcks.push(at)
        return at
      }
      if (error?.code === 'KV_ERR_SLOT_MOVING') {
        if (moving) this.movingRefusals.push(at)
        await sleep(slotMovingRetryMs)
      } else if (error?.code === 'KV_ERR_WRONG_SHARD' && typeof error.group === 'string') {
        this.owner.set(slot, error.group)
      } else if (error?.code === 'KV_ERR_NOT_LEADER' && typeof error.leaderUrl === 'string') {
        this.leaders.set(group, error.leaderUrl)
      } else {
        this.errors++
        this.lastError = `${status} ${JSON.stringify(error)}`
        await sleep(20)
      }
    }
    return null
  }

  async stop(): Promise<void> {
    this.running = false
    await Promise.all(this.loops)
  }
}

/** `count` keys `tag`-0, `tag`-1, ... whose slots are in `range` (or out of it, with `outside`). */
function keysOfSlots(tag: string, range: Range, count: number, outside = false): string[] {
  const keys: string[] = []
  for (let i = 0; keys.length < count; i++) {
    const key = `${tag}-${i}`
    const slot = slotOfKey(key)
    if ((slot >= range[0] && slot <= range[1]) !== outside) keys.push(key)
  }
  return keys
}

interface MoveRun {
  index: number
  from: string
  to: string
  slots: string
  phase: string
  /** kv_shard_last_fence_seconds of the source leader after the move, in ms (done moves). */
  fenceMs: number | null
  /** startedAtMs to updatedAtMs in the source's history. */
  moveMs: number
  /** From the POST to this process seeing the move in the history. */
  wallMs: number
  longestGapMs: number
  refusals: number
  refusalSpanMs: number
  error: string
}

interface FencePart {
  moves: MoveRun[]
  baseline: { seconds: number; throughput: number; longestGapMs: number }
  during: { seconds: number; throughput: number; errors: number; lastError: string }
  latencyMs: { p50: number; p99: number; max: number }
  totalMoveMs: number
}

async function call(
  url: string,
  method: string,
  authorization: string | undefined,
  body?: unknown,
): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(url, {
    method,
    headers: {
      ...(authorization !== undefined ? { authorization } : {}),
      ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
    },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    signal: AbortSignal.timeout(10_000),
  })
  const text = await res.text()
  return {
    status: res.status,
    body: text === '' ? {} : (JSON.parse(text) as Record<string, unknown>),
  }
}

async function fencePart(
  deployment: Deployment,
  security: BenchSecurity,
  options: { moves: number; moveSlots: number; valueBytes: number; durationS: number },
): Promise<FencePart> {
  const [g1, g2] = deployment.groups as [BenchCluster, BenchCluster]
  const groupOf = { g1, g2 } as Record<string, BenchCluster>
  const authorization = await security.authorization(g1.leader.url)
  const moving: Range = [0, options.moveSlots - 1]
  const slotsText = `0-${options.moveSlots - 1}`
  const agent = new Agent({
    connections: fenceWritersMoving + fenceWritersElsewhere,
    ...(security.client.tls !== undefined ? { connect: security.client.tls } : {}),
  })
  const writers = new RoutedWriters(
    agent,
    new Map([
      ['g1', g1.leader.url],
      ['g2', g2.leader.url],
    ]),
    deployment.groups.map((_, g) => ({ group: `g${g + 1}`, range: deployment.slots[g] as Range })),
    authorization,
    options.valueBytes,
  )
  const movingKeys = keysOfSlots('fence/m', moving, 64 * options.moveSlots)
  const otherKeys = keysOfSlots('fence/o', moving, 20_000, true)
  writers.start(movingKeys, otherKeys)
  const moves: MoveRun[] = []
  let baseline: FencePart['baseline'] = { seconds: 0, throughput: 0, longestGapMs: 0 }
  let during: FencePart['during'] = { seconds: 0, throughput: 0, errors: 0, lastError: '' }
  try {
    const baselineS = Math.min(5, options.durationS)
    say(`   baseline: ${baselineS} s of the load without moves`)
    await sleep(1000)
    const ackedAt = writers.acked
    const baselineFrom = performance.now()
    await sleep(baselineS * 1000)
    const baselineTo = performance.now()
    baseline = {
      seconds: (baselineTo - baselineFrom) / 1000,
      throughput: ((writers.acked - ackedAt) * 1000) / (baselineTo - baselineFrom),
      longestGapMs: unavailability(writers.movingAcks, [], baselineFrom, baselineTo).longestGapMs,
    }
    say(
      `   ${fmt(baseline.throughput)} writes/s; longest stretch without an acknowledged write to slots ${slotsText}: ${fmt(baseline.longestGapMs, 1)} ms`,
    )
    const ackedBefore = writers.acked
    const errorsBefore = writers.errors
    const movesFrom = performance.now()
    for (let index = 0; index < options.moves; index++) {
      const from = index % 2 === 0 ? 'g1' : 'g2'
      const to = index % 2 === 0 ? 'g2' : 'g1'
      const source = groupOf[from] as BenchCluster
      const leader = await source.waitForLeader()
      const doneBefore = await metric(leader.url, 'kv_shard_moves_total', 'outcome="done"')
      const postedAt = performance.now()
      const started = await call(`${leader.url}/admin/v1/shards/moves`, 'POST', authorization, {
        slots: slotsText,
        to,
      })
      if (started.status !== 202)
        throw new Error(
          `move ${index + 1} refused: ${started.status} ${JSON.stringify(started.body)}`,
        )
      const id = (started.body.move as ShardMove).id
      let finished: ShardMove | undefined
      const deadline = postedAt + 120_000
      while (finished === undefined) {
        if (performance.now() > deadline) throw new Error(`move ${id} did not end within 120 s`)
        await sleep(20)
        const view = await call(`${leader.url}/v1/shards`, 'GET', authorization).catch(() => null)
        finished = (view?.body as GroupShardView | undefined)?.history?.find((m) => m.id === id)
      }
      const seenAt = performance.now()
      // The leader counts the move done, then records its fence: read both from one scrape.
      let fenceS: number | null = null
      while (finished.phase === 'done' && fenceS === null && performance.now() < seenAt + 10_000) {
        const text = await metricsText(leader.url)
        if (metricValue(text, 'kv_shard_moves_total', 'outcome="done"') > doneBefore)
          fenceS = metricValue(text, 'kv_shard_last_fence_seconds')
        else await sleep(10)
      }
      // Let the load find the new owner before the window closes.
      await sleep(300)
      const window = unavailability(
        writers.movingAcks,
        writers.movingRefusals,
        postedAt,
        performance.now(),
      )
      const run: MoveRun = {
        index: index + 1,
        from,
        to,
        slots: slotsText,
        phase: finished.phase,
        fenceMs: fenceS === null ? null : fenceS * 1000,
        moveMs: finished.updatedAtMs - finished.startedAtMs,
        wallMs: seenAt - postedAt,
        ...window,
        error: finished.error,
      }
      moves.push(run)
      say(
        `   move ${run.index} ${from} → ${to} ${run.phase}: fence ${run.fenceMs === null ? '-' : fmt(run.fenceMs, 1)} ms, no acknowledged write for ${fmt(run.longestGapMs, 1)} ms, ${run.refusals} SLOT_MOVING refusals over ${fmt(run.refusalSpanMs, 1)} ms, move ${fmt(run.moveMs)} ms`,
      )
      await sleep(200)
    }
    const movesTo = performance.now()
    during = {
      seconds: (movesTo - movesFrom) / 1000,
      throughput: ((writers.acked - ackedBefore) * 1000) / (movesTo - movesFrom),
      errors: writers.errors - errorsBefore,
      lastError: writers.lastError,
    }
  } finally {
    await writers.stop()
    await agent.close()
  }
  const latency = writers.latencies.summary()
  return {
    moves,
    baseline,
    during,
    latencyMs: { p50: latency.p50, p99: latency.p99, max: latency.max },
    totalMoveMs: moves.reduce((sum, m) => sum + m.moveMs, 0),
  }
}

// ---- parts 3 and 4: through a kv-router ----------------------------------------------------

/**
 * kv-router flags for the run's security, as `kv-cluster --groups` runs it: in TLS profiles
 * its own router certificate (kv://<cluster>/router/r1, made here with `kv certs add-router`)
 * for its HTTPS port and towards the groups; with auth, its own calls (probes, map refreshes)
 * act for root, and callers' bearer tokens pass through to the groups.
 */
async function routerArgs(security: BenchSecurity, args: string[]): Promise<string[]> {
  const certs = security.certsDir
  if (certs === null) return args
  if (!existsSync(join(certs, 'r1.crt'))) await addRouter({ dir: certs, routerId: 'r1' })
  return [
    '--id',
    'r1',
    '--certs-dir',
    certs,
    ...(security.profile === 'tls-auth' ? ['--probe-user', 'root'] : []),
    ...args,
  ]
}

/** Waits until the router's read pool for its one group holds `members` members. */
async function waitReadPool(router: RouterProcess, members: number): Promise<void> {
  const deadline = performance.now() + 30_000
  for (;;) {
    const view = (await fetch(`${router.url}/v1/cluster`)
      .then((r) => r.json())
      .catch(() => null)) as {
      router?: { groups?: { leaderId: string | null; members: { inReadPool: boolean }[] }[] }
    } | null
    const group = view?.router?.groups?.[0]
    if (
      group !== undefined &&
      group.leaderId !== null &&
      group.members.filter((m) => m.inReadPool).length === members
    )
      return
    if (performance.now() > deadline)
      throw new Error(
        `the router's read pool did not reach ${members} members within 30 s: ${JSON.stringify(view)}`,
      )
    await sleep(100)
  }
}

/**
 * Waits (at most `timeoutMs`) until every member of `group` used under `coresMax` of a core
 * over one second; returns how long it took.
 */
async function waitQuiet(
  group: BenchCluster,
  coresMax = 0.05,
  timeoutMs = 60_000,
): Promise<number> {
  const started = performance.now()
  for (;;) {
    const meter = await cpuMeter(group.members)
    await sleep(1000)
    const cores = await meter.stop()
    if (Object.values(cores).every((c) => c < coresMax)) return performance.now() - started
    if (performance.now() - started > timeoutMs) {
      say(`   note: the nodes were still busy after ${timeoutMs / 1000} s (${coresCell(cores)})`)
      return performance.now() - started
    }
  }
}

/** CPU of one process, in cores, over a stretch of wall time. */
async function processMeter(pid: number): Promise<{ stop(): Promise<number> }> {
  const before = await cpuSeconds(pid)
  const started = performance.now()
  return {
    async stop() {
      return ((await cpuSeconds(pid)) - before) / ((performance.now() - started) / 1000)
    },
  }
}

interface OverheadRun {
  path: 'direct' | 'router'
  round: number
  result: WrkResult
  /** Acknowledged writes per second. */
  throughput: number
  nodeCores: Record<string, number>
  routerCores: number
}

interface OverheadPaced {
  path: 'direct' | 'router'
  round: number
  rate: number
  result: PacedResult
  routerCores: number
}

interface OverheadPart {
  closed: OverheadRun[]
  paced: OverheadPaced[]
  throughputRatio: number
  closedP50DiffMs: number
  pacedP50DiffMs: number
  pacedP99DiffMs: number
  rate: number
}

async function overheadPart(
  deployment: Deployment,
  security: BenchSecurity,
  options: {
    rounds: number
    durationS: number
    connections: number
    valueBytes: number
    scriptDir: string
    /** Lift every node's CPU cap, and put it back. */
    uncap: () => Promise<void>
    recap: () => Promise<void>
  },
): Promise<OverheadPart> {
  const group = deployment.groups[0] as BenchCluster
  const router = await startRouterProcess(
    await routerArgs(security, ['--shard-map', deployment.mapFile]),
  )
  try {
    await waitReadPool(router, 2)
    const leader = group.leader
    const authorization = await security.authorization(leader.url)
    const urls = { direct: leader.url, router: router.url }
    const script = (prefix: string) =>
      slotPutScript(prefix, options.valueBytes, [[0, 4095]], {
        query: '?ack=quorum',
        authorization,
      })
    for (const path of ['direct', 'router'] as const)
      await runWrk({
        url: urls[path],
        script: script(`warm/${path}/`),
        scriptDir: options.scriptDir,
        connections: options.connections,
        durationS: 3,
      })
    await waitCaughtUp(group)
    const closed: OverheadRun[] = []
    for (let round = 1; round <= options.rounds; round++) {
      for (const path of ['direct', 'router'] as const) {
        const meter = await cpuMeter(group.members)
        const routerMeter = await processMeter(router.pid)
        const result = await runWrk({
          url: urls[path],
          script: script(`bench/overhead/${path}/r${round}/`),
          scriptDir: options.scriptDir,
          connections: options.connections,
          durationS: options.durationS,
        })
        const run: OverheadRun = {
          path,
          round,
          result,
          throughput: Math.max(0, result.requests - result.errors) / result.durationS,
          routerCores: await routerMeter.stop(),
          nodeCores: await meter.stop(),
        }
        closed.push(run)
        await waitCaughtUp(group)
        say(
          `   round ${round} ${path}: ${fmt(run.throughput)}/s, p50 ${fmt(result.latencyMs.p50, 2)} ms, p99 ${fmt(result.latencyMs.p99, 2)} ms, ${result.errors} errors; leader ${fmt(run.nodeCores[leader.id] ?? 0, 2)} cores, router ${fmt(run.routerCores, 2)}`,
        )
      }
    }
    const directMax = mean(closed.filter((r) => r.path === 'direct').map((r) => r.throughput))
    const rate = Math.max(1, Math.round(directMax / 2))
    // A capped node is stopped for the rest of each 100 ms period once it has used its share:
    // latencies then measure the throttling, not the router. The open loop runs uncapped.
    await options.uncap()
    say(`   open loop at ${fmt(rate)}/s (50% of the capped direct maximum), caps lifted:`)
    const paced: OverheadPaced[] = []
    for (let round = 1; round <= options.rounds; round++) {
      for (const path of ['direct', 'router'] as const) {
        const routerMeter = await processMeter(router.pid)
        const result = await runPaced({
          url: urls[path],
          rate,
          durationS: options.durationS,
          connections: options.connections,
          valueBytes: options.valueBytes,
          prefix: `bench/overhead/paced/${path}/r${round}/`,
          query: '?ack=quorum',
          tls: security.client.tls as PacedOptions['tls'],
          authorization,
        })
        paced.push({ path, round, rate, result, routerCores: await routerMeter.stop() })
        await waitCaughtUp(group)
        say(
          `   round ${round} ${path}: ${fmt(result.throughput)}/s, p50 ${fmt(result.latencyMs.p50, 2)} ms, p99 ${fmt(result.latencyMs.p99, 2)} ms, ${result.errors} errors`,
        )
      }
    }
    await options.recap()
    const of = <T extends { path: string }>(runs: T[], path: string, value: (r: T) => number) =>
      mean(runs.filter((r) => r.path === path).map(value))
    return {
      closed,
      paced,
      rate,
      throughputRatio: of(closed, 'router', (r) => r.throughput) / directMax,
      closedP50DiffMs:
        of(closed, 'router', (r) => r.result.latencyMs.p50) -
        of(closed, 'direct', (r) => r.result.latencyMs.p50),
      pacedP50DiffMs:
        of(paced, 'router', (r) => r.result.latencyMs.p50) -
        of(paced, 'direct', (r) => r.result.latencyMs.p50),
      pacedP99DiffMs:
        of(paced, 'router', (r) => r.result.latencyMs.p99) -
        of(paced, 'direct', (r) => r.result.latencyMs.p99),
    }
  } finally {
    await stopRouterProcess(router)
  }
}

interface ReadRun {
  name: string
  /** Members the reads went to. */
  readers: string
  result: WrkResult
  nodeCores: Record<string, number>
  routerCores: number | null
}

async function readsPart(
  deployment: Deployment,
  security: BenchSecurity,
  options: {
    durationS: number
    connections: number
    valueBytes: number
    getKeys: number
    scriptDir: string
  },
): Promise<ReadRun[]> {
  const group = deployment.groups[0] as BenchCluster
  const leader = group.leader
  const authorization = await security.authorization(leader.url)
  say(`   loading ${fmt(options.getKeys)} keys of ${options.valueBytes} bytes (ack=all)`)
  await prefill(leader.url, 'bench/read/', options.valueBytes, options.getKeys, security)
  await waitCaughtUp(group)
  // LevelDB compacts what the load wrote, on the nodes' capped CPU: let it finish first.
  const quietMs = await waitQuiet(group)
  say(`   the nodes were quiet ${fmt(quietMs / 1000, 1)} s after the load`)
  const script = getScript('bench/read/', options.getKeys, { authorization })
  const runs: ReadRun[] = []
  const measure = async (
    name: string,
    readers: string,
    url: string,
    router: RouterProcess | null,
  ) => {
    await runWrk({
      url,
      script,
      scriptDir: options.scriptDir,
      connections: options.connections,
      durationS: 2,
    })
    const meter = await cpuMeter(group.members)
    const routerMeter = router === null ? null : await processMeter(router.pid)
    const result = await runWrk({
      url,
      script,
      scriptDir: options.scriptDir,
      connections: options.connections,
      durationS: options.durationS,
    })
    const run: ReadRun = {
      name,
      readers,
      result,
      routerCores: routerMeter === null ? null : await routerMeter.stop(),
      nodeCores: await meter.stop(),
    }
    runs.push(run)
    say(
      `   ${name}: ${fmt(result.throughput)}/s, p50 ${fmt(result.latencyMs.p50, 2)} ms, p99 ${fmt(result.latencyMs.p99, 2)} ms, ${result.errors} errors; nodes ${coresCell(run.nodeCores)}${run.routerCores === null ? '' : `; router ${fmt(run.routerCores, 2)}`}`,
    )
  }
  const followers = group.followers.map((m) => m.id).join(', ')
  const configs = [
    {
      name: 'router, followers (default)',
      readers: followers,
      pool: 2,
      args: ['--shard-map', deployment.mapFile],
    },
    {
      name: 'router, followers and leader (--read-from-leader)',
      readers: group.members.map((m) => m.id).join(', '),
      pool: 3,
      args: ['--shard-map', deployment.mapFile, '--read-from-leader'],
    },
    {
      name: 'router, leader only (--group g1=<leader URL> --read-from-leader)',
      readers: leader.id,
      pool: 1,
      args: ['--group', `g1=${leader.url}`, '--read-from-leader'],
    },
  ]
  for (const config of configs) {
    const router = await startRouterProcess(await routerArgs(security, config.args))
    try {
      await waitReadPool(router, config.pool)
      await measure(config.name, config.readers, router.url, router)
    } finally {
      await stopRouterProcess(router)
    }
  }
  await measure('direct to the leader (no router)', leader.id, leader.url, null)
  return runs
}

// ---- the suite -----------------------------------------------------------------------------

function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return 0
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] as number
}

const mean = (values: readonly number[]): number =>
  values.length === 0 ? 0 : values.reduce((sum, v) => sum + v, 0) / values.length

export async function runShardsBench(options: ShardsBenchOptions): Promise<void> {
  const { durationS, connections, valueBytes, nodeCpuCap, rounds, parts } = options
  ensureWrk()
  const found = await cpuCapper()
  if ('unavailable' in found)
    throw new Error(`the shards suite caps every node's CPU and cannot here: ${found.unavailable}`)
  const capper: CpuCapper = found
  const loadBefore = await loadAverage()
  const work = await mkdtemp(join(tmpdir(), 'kv-bench-shards-'))
  const workOnExit = removeOnExit(work)
  const security = await benchSecurity(options.security, work)
  const scaling: ScalingRun[] = []
  let fence: FencePart | null = null
  let overhead: OverheadPart | null = null
  let reads: ReadRun[] = []
  let routerSkipped: string | null = null
  let one: Deployment | null = null
  let two: Deployment | null = null
  try {
    const needsTwo = parts.includes('scaling') || parts.includes('fence')
    const needsOne = parts.some((p) => p !== 'fence')
    say(
      `== starting ${[needsOne ? '1 group of 3' : '', needsTwo ? '2 groups of 3' : ''].filter((d) => d !== '').join(' and ')} (${security.profile}), every node capped at ${nodeCpuCap} CPU`,
    )
    if (needsOne) one = await startDeployment('1 group', 1, join(work, 'one'), security)
    if (needsTwo) two = await startDeployment('2 groups', 2, join(work, 'two'), security)
    for (const deployment of [one, two])
      for (const member of deployment === null ? [] : membersOf(deployment))
        await capper.cap(pidOf(member), nodeCpuCap)
    say(`   capped (${capper.description})`)

    if (parts.includes('scaling') && one !== null && two !== null) {
      for (let round = 1; round <= rounds; round++) {
        for (const deployment of [one, two]) {
          say(
            `== round ${round}: quorum writes to ${deployment.name}, ${durationS} s, ${connections} connections per leader`,
          )
          const run = await scalingRun(deployment, round, `bench/scale/r${round}/`, security, {
            connections,
            valueBytes,
            durationS,
            scriptDir: work,
          })
          scaling.push(run)
          say(
            `   ${fmt(run.throughput)}/s (${run.perGroup.map((p) => `${p.group} ${fmt(p.throughput)}`).join(', ')}), p99 ${fmt(run.latencyMs.p99, 1)} ms, ${run.errors} errors; nodes ${coresCell(run.nodeCores)}; wrk ${fmt(run.loadGeneratorCores, 2)}; machine idle ${fmt(run.machine.idleCores, 2)} cores`,
          )
        }
      }
    }

    if (parts.includes('fence') && two !== null) {
      say(
        `== fence time: ${options.moves} moves of slots 0-${options.moveSlots - 1} back and forth between g1 and g2 under quorum writes`,
      )
      fence = await fencePart(two, security, {
        moves: options.moves,
        moveSlots: options.moveSlots,
        valueBytes,
        durationS,
      })
    }
    // The router parts run on the 1 group alone.
    await stopDeployment(two)
    two = null

    const wantsRouter = parts.includes('router') || parts.includes('reads')
    if (wantsRouter && !existsSync(kvRouterBin)) {
      routerSkipped = `${kvRouterBin} is missing (pnpm build builds it)`
      say(`note: the router parts are skipped: ${routerSkipped}`)
    }
    if (parts.includes('router') && routerSkipped === null && one !== null) {
      say(
        `== router overhead: quorum writes through one kv-router and straight to the leader, ${rounds} rounds`,
      )
      const deployment = one
      overhead = await overheadPart(deployment, security, {
        rounds,
        durationS,
        connections,
        valueBytes,
        scriptDir: work,
        uncap: () => capper.release(),
        recap: async () => {
          for (const member of membersOf(deployment)) await capper.cap(pidOf(member), nodeCpuCap)
        },
      })
    }
    if (parts.includes('reads') && routerSkipped === null && one !== null) {
      say('== read scaling through the router (1 group)')
      reads = await readsPart(one, security, {
        durationS,
        connections,
        valueBytes,
        getKeys: options.getKeys,
        scriptDir: work,
      })
    }
  } finally {
    await capper.release()
    await stopDeployment(two)
    await stopDeployment(one)
    await rm(work, { recursive: true, force: true })
    workOnExit.forget()
  }
  const loadAfter = await loadAverage()

  // ---- the report --------------------------------------------------------------------------
  const body: string[] = []
  const targets: TargetRow[] = []
  const json: Record<string, unknown> = {
    durationS,
    connections,
    valueBytes,
    nodeCpuCap,
    rounds,
    loadAverage: { before: loadBefore, after: loadAfter },
  }
  const capNote = `Every node capped at ${nodeCpuCap} CPU (${capper.description}): the 6 nodes of 2 groups may use at most ${fmt(6 * nodeCpuCap, 2)} of the machine's ${cpus().length} cores, so the rest is left to wrk and the kernel; the machine's idle cores during each run are in the table.`

  if (scaling.length > 0) {
    const oneRuns = scaling.filter((r) => r.groups === 1)
    const twoRuns = scaling.filter((r) => r.groups === 2)
    const ratio = mean(twoRuns.map((r) => r.throughput)) / mean(oneRuns.map((r) => r.throughput))
    const cappedLeaders = twoRuns.every((r) =>
      r.perGroup.every((p) => (r.nodeCores[p.leader] ?? 0) >= 0.9 * nodeCpuCap),
    )
    const idle = Math.min(...scaling.map((r) => r.machine.idleCores))
    body.push(
      `### Group scaling: quorum writes, 1 group of 3 against 2 groups of 3`,
      '',
      `${capNote} wrk (closed loop, ${connections} connections per leader, ${durationS} s, ${valueBytes}-byte values, fresh keys spread uniformly over the slots). For 2 groups, one wrk per group's leader, each sending only keys of its own group's slots (the script computes the slot as the nodes do: no router, no refusals; the leaders' KV_ERR_WRONG_SHARD counts are in the table). Rounds interleave 1 and 2 groups.`,
      '',
      '| deployment | round | writes/s | per group | p50 ms | p99 ms | p99.9 ms | errors | wrong shard | node CPU (cores) | wrk CPU | machine idle (cores) |',
      '|---|---:|---:|---|---:|---:|---:|---:|---:|---|---:|---:|',
      ...scaling.map(
        (r) =>
          `| ${r.deployment} | ${r.round} | ${fmt(r.throughput)} | ${r.perGroup.map((p) => `${p.group} ${fmt(p.throughput)}`).join(', ')} | ${fmt(r.latencyMs.p50, 2)} | ${fmt(r.latencyMs.p99, 2)} | ${fmt(r.latencyMs.p999, 2)} | ${fmt(r.errors)} | ${fmt(r.wrongShard)} | ${coresCell(r.nodeCores)} | ${fmt(r.loadGeneratorCores, 2)} | ${fmt(r.machine.idleCores, 2)} |`,
      ),
      '',
      `2 groups against 1: ${fmt(ratio, 2)}x (mean of ${twoRuns.length} and ${oneRuns.length} runs). ${cappedLeaders && idle > 0.1 ? `Every leader used at least 90% of its cap in the 2-group runs and the machine kept at least ${fmt(idle, 2)} cores idle throughout: the nodes were the bottleneck.` : `Caution: ${cappedLeaders ? '' : 'a leader used less than 90% of its cap in a 2-group run'}${!cappedLeaders && idle <= 0.1 ? ' and ' : ''}${idle <= 0.1 ? `the machine had only ${fmt(idle, 2)} cores idle in a run` : ''}, so something other than the capped nodes may have set the pace.`}`,
      '',
    )
    targets.push([
      'write throughput, 2 groups vs 1 (same CPU cap per node)',
      '>= 1.8x',
      `${fmt(ratio, 2)}x`,
      ratio >= 1.8,
    ])
    json.scaling = { runs: scaling, ratio, leadersAtCap: cappedLeaders, minIdleCores: idle }
  }

  if (fence !== null) {
    const done = fence.moves.filter((m) => m.phase === 'done')
    const fences = done.flatMap((m) => (m.fenceMs === null ? [] : [m.fenceMs]))
    const gaps = fence.moves.map((m) => m.longestGapMs)
    const spans = fence.moves.map((m) => m.refusalSpanMs)
    const moveMs = fence.moves.map((m) => m.moveMs)
    const row = (name: string, values: number[]) =>
      `| ${name} | ${fmt(percentile(values, 50), 1)} | ${fmt(percentile(values, 99), 1)} | ${fmt(Math.max(0, ...values), 1)} |`
    body.push(
      `### Fence time: ${fence.moves.length} slot moves of ${options.moveSlots} slots under quorum writes`,
      '',
      `On the 2 groups (same caps), slots 0-${options.moveSlots - 1} moved g1 → g2 → g1 ... ${fence.moves.length} times (${done.length} done, ${fence.moves.length - done.length} aborted) while ${fenceWritersMoving + fenceWritersElsewhere} closed loops in this process wrote with ack=quorum (${fenceWritersMoving} on ${fmt(64 * options.moveSlots)} keys of the moving slots, ${fenceWritersElsewhere} on keys of the other slots), each routing by slot like a router: on to the owner named by KV_ERR_WRONG_SHARD, retrying KV_ERR_SLOT_MOVING every ${slotMovingRetryMs} ms. Fence: the source leader's kv_shard_last_fence_seconds (fence written to switch answered). Unavailability: the longest stretch with no acknowledged write to the moving slots, from the move's POST to 300 ms after it ended (the baseline without moves: ${fmt(fence.baseline.longestGapMs, 1)} ms). Move: startedAtMs to updatedAtMs in the source's history.`,
      '',
      '| per move | p50 ms | p99 ms | max ms |',
      '|---|---:|---:|---:|',
      row('fence (node)', fences),
      row('no acknowledged write to the moving slots (load)', gaps),
      row('SLOT_MOVING refusals, first to last (load)', spans),
      row('whole move', moveMs),
      '',
      `Total move time ${fmt(fence.totalMoveMs / 1000, 2)} s over ${fence.moves.length} moves; the ${fence.moves.length} moves took ${fmt(fence.during.seconds, 1)} s of wall time with pauses. Quorum writes: ${fmt(fence.baseline.throughput)}/s without moves, ${fmt(fence.during.throughput)}/s during them; write latency (until acknowledged, retries included) p50 ${fmt(fence.latencyMs.p50, 1)} ms, p99 ${fmt(fence.latencyMs.p99, 1)} ms, max ${fmt(fence.latencyMs.max, 1)} ms; ${fence.during.errors} other errors${fence.during.errors > 0 ? ` (last: ${fence.during.lastError})` : ''}.`,
      '',
    )
    targets.push([
      'p99 fence time per move (node)',
      'reported',
      `${fmt(percentile(fences, 99), 1)} ms`,
      'reported',
    ])
    json.fence = fence
  }

  if (overhead !== null) {
    const closedRows = overhead.closed.map(
      (r) =>
        `| ${r.path === 'router' ? 'through the router' : 'to the leader'} | ${r.round} | closed loop | ${fmt(r.throughput)} | ${fmt(r.result.latencyMs.p50, 2)} | ${fmt(r.result.latencyMs.p99, 2)} | ${fmt(r.result.errors)} | ${fmt(
          Object.entries(r.nodeCores).reduce((max, [, v]) => Math.max(max, v), 0),
          2,
        )} | ${r.path === 'router' ? fmt(r.routerCores, 2) : ''} |`,
    )
    const pacedRows = overhead.paced.map(
      (r) =>
        `| ${r.path === 'router' ? 'through the router' : 'to the leader'} | ${r.round} | open loop at ${fmt(r.rate)}/s, uncapped | ${fmt(r.result.throughput)} | ${fmt(r.result.latencyMs.p50, 2)} | ${fmt(r.result.latencyMs.p99, 2)} | ${fmt(r.result.errors)} | | ${r.path === 'router' ? fmt(r.routerCores, 2) : ''} |`,
    )
    const routerRuns = overhead.closed.filter((r) => r.path === 'router')
    const usPerWrite = mean(
      routerRuns.map((r) => (r.routerCores * 1e6) / Math.max(1, r.throughput)),
    )
    body.push(
      '### Router overhead: quorum writes through one kv-router against straight to the leader',
      '',
      `The 1 group (nodes capped as above), one kv-router (run as \`kv-cluster --groups\` runs it: \`--shard-map\`, its own router certificate, \`--probe-user root\` with auth, defaults otherwise; not capped, as if on its own machine: its CPU is in the table), wrk with ${connections} connections (closed loop, ${durationS} s) and then the pacer at 50% of the capped direct maximum with every cap lifted (open loop, latency from when each write was due: a light load, so that neither path queues and a capped node's throttling, up to ${fmt(100 - 100 * nodeCpuCap)} ms of each 100 ms period, does not swamp the router's hop), direct and router runs interleaved over ${rounds} rounds. A closed loop's p50 follows its throughput (${connections} connections in flight), so the latency compared is the open loop's.`,
      '',
      '| path | round | load | writes/s | p50 ms | p99 ms | errors | leader CPU (cores) | router CPU (cores) |',
      '|---|---:|---|---:|---:|---:|---:|---:|---:|',
      ...closedRows,
      ...pacedRows,
      '',
      `Through the router: ${fmt(overhead.throughputRatio * 100, 1)}% of the direct throughput; p50 ${overhead.pacedP50DiffMs >= 0 ? '+' : ''}${fmt(overhead.pacedP50DiffMs, 2)} ms and p99 ${overhead.pacedP99DiffMs >= 0 ? '+' : ''}${fmt(overhead.pacedP99DiffMs, 2)} ms at ${fmt(overhead.rate)}/s (closed loop p50 ${overhead.closedP50DiffMs >= 0 ? '+' : ''}${fmt(overhead.closedP50DiffMs, 2)} ms); the router spent about ${fmt(usPerWrite)} µs of CPU per write.`,
      '',
    )
    targets.push(
      [
        'router throughput vs direct (quorum writes)',
        '>= 85%',
        `${fmt(overhead.throughputRatio * 100, 1)}%`,
        overhead.throughputRatio >= 0.85,
      ],
      [
        'router p50 latency added (open loop, light load, uncapped)',
        '<= +0.5 ms',
        `${overhead.pacedP50DiffMs >= 0 ? '+' : ''}${fmt(overhead.pacedP50DiffMs, 2)} ms`,
        overhead.pacedP50DiffMs <= 0.5,
      ],
    )
    json.routerOverhead = { ...overhead, routerCpuUsPerWrite: usPerWrite }
  } else if (parts.includes('router')) {
    targets.push([
      'router throughput vs direct (quorum writes)',
      '>= 85%',
      '-',
      `not measured: ${routerSkipped ?? 'no router'}`,
    ])
  }

  if (reads.length > 0) {
    const followersOnly = reads[0] as ReadRun
    const leaderOnly = reads[2] as ReadRun
    const ratio = followersOnly.result.throughput / Math.max(1, leaderOnly.result.throughput)
    const allRatio =
      (reads[1] as ReadRun).result.throughput / Math.max(1, leaderOnly.result.throughput)
    body.push(
      '### Read scaling through the router (1 group)',
      '',
      `The 1 group (nodes capped as above) holding ${fmt(options.getKeys)} keys of ${valueBytes} bytes; GETs of random keys (default consistency) with wrk, ${connections} connections, ${durationS} s each, through a fresh kv-router per row (not capped; its CPU is in the table: one Node.js process, so about 1 core is its ceiling).`,
      '',
      '| reads | served by | reads/s | p50 ms | p99 ms | p99.9 ms | errors | node CPU (cores) | router CPU (cores) |',
      '|---|---|---:|---:|---:|---:|---:|---|---:|',
      ...reads.map(
        (r) =>
          `| ${r.name} | ${r.readers} | ${rateCells(r.result)} | ${fmt(r.result.errors)} | ${coresCell(r.nodeCores)} | ${r.routerCores === null ? '' : fmt(r.routerCores, 2)} |`,
      ),
      '',
      `Through the router, the followers served ${fmt(ratio, 2)}x the reads of the leader alone, and followers and leader together ${fmt(allRatio, 2)}x.`,
      '',
    )
    targets.push([
      'reads through the router: followers vs the leader alone',
      'reported',
      `${fmt(ratio, 2)}x`,
      'reported',
    ])
    json.reads = { runs: reads, followersVsLeader: ratio, allVsLeader: allRatio }
  } else if (parts.includes('reads')) {
    targets.push([
      'reads through the router',
      'reported',
      '-',
      `not measured: ${routerSkipped ?? 'no router'}`,
    ])
  }

  body.push(
    ...targetTable(targets),
    '',
    `Load average (1 min) ${fmt(loadBefore, 2)} before the run and ${fmt(loadAfter, 2)} after (the machine has ${cpus().length} cores; other work on it weighs on every figure). The targets are printed, never asserted.`,
  )
  json.targets = targets.map(([name, goal, measured, ok]) => ({ name, goal, measured, met: ok }))
  const allParts = parts.length === shardParts.length
  await publish(options.out, {
    suite: 'shards',
    command: `pnpm bench --suite shards --duration ${durationS} --connections ${connections} --value-bytes ${valueBytes} --node-cpu-cap ${nodeCpuCap} --rounds ${rounds} --moves ${options.moves} --move-slots ${options.moveSlots} --get-keys ${options.getKeys}${allParts ? '' : ` --parts ${parts.join(',')}`}${options.security === 'tls-auth' ? '' : ` --security ${options.security}`}`,
    summary: `Sharding (${options.security === 'tls-auth' ? 'as shipped: TLS and token auth' : `--security ${options.security}`}): single-leader groups of 3 behind a shard map of 4,096 slots, every node capped at ${nodeCpuCap} CPU, the load generator on the same machine.`,
    body,
    json,
  })
}
