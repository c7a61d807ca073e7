/**
 * A `--regions` run: N regions (2 by default) of single-leader kv-node processes joined by
 * cuttable links (see regions-cluster.ts), the regions workload (see workloads-regions.ts), the
 * nemeses partition-regions, kill, kill-leader, pause and pause-leader, then:
 *
 * 1. heal (links whole, paused nodes continued, killed nodes started again);
 * 2. recovery: every region agrees on one leader (30 s);
 * 3. drain: every accepted queued write's ticket is asked for until it is applied or failed
 *    (`settleTimeoutMs`, 60 s by default);
 * 4. region convergence: `GET /admin/v1/regions/digest` on every node until all are equal
 *    (`settleTimeoutMs`);
 * 5. the final reads: one listing of the run's prefix per region (its leader), with values and
 *    stamps, and every node's conflict record (`GET /admin/v1/conflicts`, all pages);
 * 6. the checkers: region-convergence, conflict-accounting, queued-tickets.
 */
import { join } from 'node:path'
import {
  checkConflictAccounting,
  checkQueuedTickets,
  checkRegionConvergence,
  type ConflictRecord,
  type ConflictSide,
  type FinalItem,
  type FinalRead,
  type RegionDigest,
} from './checkers/regions.js'
import { UnsupportedFault, waitForLeader, type ChaosNode } from './cluster.js'
import { pairOperations, type Verdict } from './history.js'
import { regionsModeNemeses, runNemesis, type FaultWindow } from './nemesis.js'
import { RegionsProcessCluster } from './regions-cluster.js'
import { writeReport, type RunSummary } from './report.js'
import type { ChaosOptions, ChaosResult } from './run.js'
import { chaosSecurity } from './security.js'
import { startRegionsWorkload } from './workloads-regions.js'
import { HistoryRecorder, errorCode } from './workloads.js'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** The command that replays a regions run. */
export function regionsCommand(options: ChaosOptions): string {
  const args = options.nodeArgs ?? []
  const flag = (name: string) => (args.includes(`--${name}`) ? ` --${name}` : '')
  const other = args.filter(
    (a) => a !== '--unsafe-region-skip-conflict-record' && a !== '--unsafe-outbox-apply-twice',
  )
  return `pnpm chaos --backend process --regions ${options.regions ?? 2} --nemesis ${options.nemeses.join(',')} --duration ${options.durationMs / 1000}s --seed ${options.seed} --nodes ${options.nodes} --clients ${options.writersPerRegion ?? 3} --queued-clients ${options.queuedPerRegion ?? 1}${options.healthyMs !== undefined ? ` --healthy-ms ${options.healthyMs}` : ''}${options.faultMs !== undefined ? ` --fault-ms ${options.faultMs}` : ''}${other.map((a) => ` --node-arg=${a}`).join('')}${flag('unsafe-region-skip-conflict-record')}${flag('unsafe-outbox-apply-twice')}`
}

/** Refuses what a regions run cannot do, before anything starts. */
export function validateRegionsOptions(options: ChaosOptions): void {
  if (options.backend !== 'process')
    throw new UnsupportedFault('--regions runs on the process backend only (--backend process)')
  if (options.mode === 'leaderless') throw new Error('--regions needs single-leader regions')
  if (options.router === true) throw new Error('--regions and --router do not go together')
  if (options.workload !== 'regions')
    throw new Error(`--regions runs the regions workload, not ${options.workload}`)
  const refused = options.nemeses.filter(
    (n) => !(regionsModeNemeses as readonly string[]).includes(n),
  )
  if (refused.length > 0)
    throw new UnsupportedFault(
      `${refused.join(', ')}: not with --regions, which takes ${regionsModeNemeses.join(', ')}`,
    )
  const regions = options.regions ?? 2
  if (!Number.isInteger(regions) || regions < 2 || regions > 3)
    throw new Error('--regions must be 2 or 3')
}

export async function runRegionsChaos(options: ChaosOptions): Promise<ChaosResult> {
  validateRegionsOptions(options)
  const log = options.log ?? ((line: string) => process.stdout.write(`${line}\n`))
  const regionCount = options.regions ?? 2
  const settleMs = options.settleTimeoutMs ?? 60_000
  const stamp = new Date().toISOString().replace(/[:.]/g, '-')
  const name = `${stamp}-process-regions${regionCount}-${options.nemeses.join('+')}-seed${options.seed}`
  const dir = join(options.out, name)
  log(
    `chaos: regions under ${options.nemeses.join(', ')} on ${regionCount} regions of ${options.nodes} process nodes, ack=quorum and queued, ${options.durationMs / 1000} s, seed ${options.seed}`,
  )
  const security = await chaosSecurity(options.certsDir ?? join(dir, 'certs'))
  const cluster = await RegionsProcessCluster.start({
    regions: regionCount,
    nodesPerRegion: options.nodes,
    args: options.nodeArgs ?? [],
    ...(options.nodeEnv !== undefined ? { env: options.nodeEnv } : {}),
    logDir: join(dir, 'logs'),
    security,
  })
  log(
    `  regions: ${cluster.regions.map((r) => `${r.id} = ${r.cluster.nodes.map((n) => n.id).join(',')}`).join('; ')}`,
  )
  const history = new HistoryRecorder()
  const verdicts: Verdict[] = []
  let windows: FaultWindow[] = []
  const prefix = `chaos-${options.seed}/`
  try {
    const workload = await startRegionsWorkload({
      cluster,
      history,
      seed: options.seed,
      prefix,
      writersPerRegion: options.writersPerRegion ?? 3,
      queuedPerRegion: options.queuedPerRegion ?? 1,
    })
    try {
      windows = await runNemesis({
        cluster,
        nemeses: options.nemeses,
        // A 30 s run has about five rounds: make sure every named nemesis is among them.
        everyOnce: true,
        seed: options.seed,
        durationMs: options.durationMs,
        ...(options.healthyMs !== undefined ? { healthyMs: options.healthyMs } : {}),
        ...(options.faultMs !== undefined ? { faultMs: options.faultMs } : {}),
        clock: () => history.now(),
        log,
      })
      const left = options.durationMs - history.now()
      if (left > 0) await sleep(left)
    } finally {
      await workload.stop()
    }
    // Heal everything and bring killed nodes back.
    await cluster.heal()
    for (const node of cluster.nodes) await cluster.start(node.id)
    const leaders = await Promise.all(
      cluster.regions.map((r) =>
        waitForLeader(r.cluster, 30_000).then(
          (leader) => ({
            region: r.id,
            leader: leader as ChaosNode | null,
            text: `${r.id}: ${leader.id} leads`,
          }),
          (err: unknown) => ({
            region: r.id,
            leader: null as ChaosNode | null,
            text: `${r.id}: ${(err as Error).message}`,
          }),
        ),
      ),
    )
    const recovered = leaders.every((l) => l.leader !== null)
    verdicts.push({
      checker: 'recovery',
      valid: recovered,
      summary: `after healing${recovered ? '' : ', a region did not agree on one leader'}: ${leaders.map((l) => l.text).join('; ')}`,
      details: {},
    })
    // Every queued write ends before the regions can settle.
    const drained = await workload.drainTickets(settleMs)
    log(
      `  tickets: ${drained.tickets.length} asked for, ${drained.tickets.filter((t) => t.status === 'applied' || t.status === 'failed').length} ended after ${(drained.waitedMs / 1000).toFixed(1)} s`,
    )
    const converged = await convergedRegionDigests(cluster, recovered ? settleMs : 5000)
    verdicts.push(checkRegionConvergence(converged.digests, converged.waitedMs))
    const finals: FinalRead[] = []
    for (const l of leaders) {
      const region = cluster.regions.find((r) => r.id === l.region)
      const node = l.leader ?? region?.cluster.nodes.find((n) => cluster.isRunning(n.id))
      finals.push(
        node === undefined
          ? { region: l.region, node: '', items: null, error: 'no node runs' }
          : await finalRead(l.region, node, prefix),
      )
    }
    const conflicts = await readConflicts(
      cluster.nodes.filter((n) => cluster.isRunning(n.id)),
      (id) => cluster.regionOf(id),
      cluster.regions.map((r) => r.id),
    )
    verdicts.push(
      checkConflictAccounting({
        writes: workload.writes,
        finals,
        conflicts: conflicts.records,
        keys: workload.sharedKeys,
        conflictsComplete: conflicts.complete,
      }),
    )
    const queuedKeys = new Set(workload.submissions.map((s) => s.key))
    if ((options.queuedPerRegion ?? 1) > 0) {
      verdicts.push(
        checkQueuedTickets({
          submissions: workload.submissions,
          tickets: drained.tickets,
          finals: finals.map((f) => ({
            ...f,
            items: f.items === null ? null : f.items.filter((i) => queuedKeys.has(i.key)),
          })),
          drainedMs: drained.waitedMs,
        }),
      )
    }
    const ops = pairOperations(history.events)
    const counts = { ok: 0, fail: 0, info: 0 }
    for (const op of ops) counts[op.type]++
    const valid: boolean | 'unknown' = verdicts.some((v) => v.valid === false)
      ? false
      : verdicts.some((v) => v.valid === 'unknown')
        ? 'unknown'
        : true
    const summary: RunSummary = {
      command: options.command ?? regionsCommand(options),
      backend: 'process',
      workload: 'regions',
      nemeses: options.nemeses,
      ack: 'quorum+queued',
      seed: options.seed,
      durationMs: options.durationMs,
      operations: counts,
      verdicts,
      valid,
      regions: {
        regions: cluster.regions.map((r) => ({
          id: r.id,
          members: r.cluster.nodes.map((n) => n.id),
        })),
        conflictRecordsRead: conflicts.records.length,
        conflictReadErrors: conflicts.errors.slice(0, 20),
      },
    }
    await writeReport(dir, summary, history.events, ops, windows, {})
    for (const v of verdicts) {
      log(
        `  ${v.valid === true ? 'valid  ' : v.valid === false ? 'INVALID' : 'unknown'}  ${v.checker}: ${v.summary}`,
      )
    }
    log(
      `  ${counts.ok} ok, ${counts.fail} fail, ${counts.info} info; report: ${join(dir, 'report.html')}`,
    )
    return { summary, dir, windows }
  } finally {
    await cluster.stop()
  }
}

/** One node's region digest, or why it gave none. */
async function regionDigestOf(node: ChaosNode, region: string): Promise<RegionDigest> {
  try {
    const res = await fetch(`${node.url}/admin/v1/regions/digest`, {
      signal: AbortSignal.timeout(10_000),
    })
    const text = await res.text()
    if (!res.ok)
      return {
        node: node.id,
        region,
        digest: null,
        error: `HTTP ${res.status} ${errorCode(text)}`,
      }
    const body = JSON.parse(text) as { digest?: unknown; keys?: unknown; appliedLsn?: unknown }
    if (typeof body.digest !== 'string')
      return { node: node.id, region, digest: null, error: 'the answer has no digest' }
    return {
      node: node.id,
      region,
      digest: body.digest,
      ...(typeof body.keys === 'number' ? { keys: body.keys } : {}),
      ...(typeof body.appliedLsn === 'number' ? { appliedLsn: body.appliedLsn } : {}),
    }
  } catch (err) {
    return { node: node.id, region, digest: null, error: (err as Error).message }
  }
}

/** Polls every node's region digest until all are equal or `timeoutMs` passes. */
async function convergedRegionDigests(
  cluster: RegionsProcessCluster,
  timeoutMs: number,
): Promise<{ digests: RegionDigest[]; waitedMs: number }> {
  const started = Date.now()
  for (;;) {
    const digests = await Promise.all(
      cluster.nodes.map((n) => regionDigestOf(n, cluster.regionOf(n.id))),
    )
    const first = digests[0]?.digest ?? null
    const same = first !== null && digests.every((d) => d.digest === first)
    if (same || Date.now() - started > timeoutMs) return { digests, waitedMs: Date.now() - started }
    await sleep(500)
  }
}

/** One region's keys under `prefix` (one node's listing, every page, with values and stamps). */
async function finalRead(region: string, node: ChaosNode, prefix: string): Promise<FinalRead> {
  const items: FinalItem[] = []
  let cursor: string | null = null
  const deadline = Date.now() + 30_000
  try {
    do {
      const query = new URLSearchParams({ prefix, values: 'true', limit: '1000' })
      if (cursor !== null) query.set('cursor', cursor)
      const res = await fetch(`${node.url}/v1/kv?${query}`, { signal: AbortSignal.timeout(10_000) })
      const text = await res.text()
      if (!res.ok) throw new Error(`HTTP ${res.status} ${errorCode(text)}`)
      const page = JSON.parse(text) as {
        items: { key: string; version: number; valueBase64?: string; stamp?: string }[]
        nextCursor: string | null
      }
      for (const item of page.items) {
        items.push({
          key: item.key,
          value: Buffer.from(item.valueBase64 ?? '', 'base64').toString('utf8'),
          version: item.version,
          ...(typeof item.stamp === 'string' ? { stamp: item.stamp } : {}),
        })
      }
      cursor = page.nextCursor
      if (Date.now() > deadline) throw new Error('the listing took more than 30 s')
    } while (cursor !== null)
    return { region, node: node.id, items }
  } catch (err) {
    return { region, node: node.id, items: null, error: (err as Error).message }
  }
}

interface WireSide {
  stamp?: string
  region?: string
  deleted?: boolean
  value?: string | null
  valueBase64?: string | null
}

function sideOf(side: WireSide | undefined): ConflictSide {
  const value =
    typeof side?.value === 'string'
      ? side.value
      : typeof side?.valueBase64 === 'string'
        ? Buffer.from(side.valueBase64, 'base64').toString('utf8')
        : null
  return {
    stamp: side?.stamp ?? '',
    region: side?.region ?? '',
    deleted: side?.deleted === true,
    value,
  }
}

/**
 * Every node's conflict record, every page (bounded: 30 s and 1000 pages a node). A region's
 * record is replicated in it, so it is complete once one of its members answered every page.
 */
async function readConflicts(
  nodes: readonly ChaosNode[],
  regionOf: (id: string) => string,
  regions: readonly string[],
): Promise<{ records: ConflictRecord[]; complete: boolean; errors: string[] }> {
  const records: ConflictRecord[] = []
  const read = new Set<string>()
  const errors: string[] = []
  for (const node of nodes) {
    let after: string | null = null
    const deadline = Date.now() + 30_000
    try {
      for (let page = 0; ; page++) {
        if (page >= 1000 || Date.now() > deadline) throw new Error('too many pages')
        const query = new URLSearchParams({ limit: '1000' })
        if (after !== null) query.set('after', after)
        const res = await fetch(`${node.url}/admin/v1/conflicts?${query}`, {
          signal: AbortSignal.timeout(10_000),
        })
        const text = await res.text()
        if (!res.ok) throw new Error(`HTTP ${res.status} ${errorCode(text)}`)
        const body = JSON.parse(text) as {
          conflicts: {
            id: string
            key: string
            detectedIn: string
            lsn?: number
            atMs?: number
            winner?: WireSide
            loser?: WireSide
          }[]
          next: string | null
        }
        for (const c of body.conflicts) {
          records.push({
            id: c.id,
            key: c.key,
            detectedIn: c.detectedIn,
            ...(c.lsn !== undefined ? { lsn: c.lsn } : {}),
            ...(c.atMs !== undefined ? { atMs: c.atMs } : {}),
            winner: sideOf(c.winner),
            loser: sideOf(c.loser),
            readFrom: node.id,
          })
        }
        if (body.next === null || body.next === undefined || body.conflicts.length === 0) break
        after = body.next
      }
      read.add(regionOf(node.id))
    } catch (err) {
      errors.push(`${node.id}: ${(err as Error).message}`)
    }
  }
  return { records, complete: regions.every((r) => read.has(r)), errors }
}
