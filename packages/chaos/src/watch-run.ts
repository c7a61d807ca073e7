/**
 * The watch workload (`--workload watch`, process backend): writers put, delete and batch keys
 * under a few prefixes (ack as the run says) while watchers follow prefixes with the SDK's
 * `watch()` — half of them starting on followers, each with its own order of members, so a
 * kill or pause sends them to other nodes — and the nemesis kills and pauses nodes. After
 * healing, each watcher must catch up to the final commit LSN, and the watch checker compares
 * what each received with the committed history (checkers/watch.ts).
 */
import { join } from 'node:path'
import { KvClient, type WatchEvent } from '@kvstore/client'
import {
  checkWatch,
  type AckedWrite,
  type WatchEventRecord,
  type WatcherRecord,
} from './checkers/watch.js'
import { waitForLeader, type ChaosNode } from './cluster.js'
import type { Verdict } from './history.js'
import { runNemesis, type FaultWindow } from './nemesis.js'
import { ProcessCluster } from './process-cluster.js'
import { writeReport, type RunSummary } from './report.js'
import type { ChaosOptions, ChaosResult } from './run.js'
import { chaosSecurity } from './security.js'
import { HistoryRecorder } from './workloads.js'

/** Watchers per run, and how many prefixes they and the writers spread over. */
const watcherCount = 6
const prefixCount = 3

function recordOf(event: WatchEvent): WatchEventRecord | null {
  if (event.type === 'progress') return null
  if ('ops' in event) {
    return {
      lsn: event.lsn,
      type: event.type,
      ops: event.ops.map((op) => ({
        type: op.type,
        key: op.key,
        ...(op.value !== undefined ? { value: op.value.toString('base64') } : {}),
      })),
    }
  }
  return {
    lsn: event.lsn,
    type: event.type,
    ops: [
      {
        type: event.type,
        key: event.key,
        ...(event.value !== undefined ? { value: event.value.toString('base64') } : {}),
      },
    ],
  }
}

export async function runWatchChaos(options: ChaosOptions): Promise<ChaosResult> {
  const log = options.log ?? ((line: string) => process.stdout.write(`${line}\n`))
  if (options.backend !== 'process')
    throw new Error('the watch workload runs on the process backend (--backend process)')
  const stamp = new Date().toISOString().replace(/[:.]/g, '-')
  const unsafe = (options.nodeArgs ?? []).filter((a) => a.startsWith('--unsafe-'))
  const name = `${stamp}-process-watch-${options.nemeses.join('+')}-${options.ack}-seed${options.seed}`
  const dir = join(options.out, name)
  log(
    `chaos: watch under ${options.nemeses.join(', ')} on ${options.nodes} process nodes, ack=${options.ack}, ${options.durationMs / 1000} s, seed ${options.seed}${unsafe.length > 0 ? ` (${unsafe.join(' ')})` : ''}`,
  )
  const security = await chaosSecurity(options.certsDir ?? join(dir, 'certs'))
  const cluster = await ProcessCluster.start({
    nodes: options.nodes,
    env: { KV_DEFAULT_ACK: options.ack, ...options.nodeEnv },
    args: ['--watch-progress-interval-ms', '200', ...(options.nodeArgs ?? [])],
    logDir: join(dir, 'logs'),
    security,
  })
  const history = new HistoryRecorder()
  const verdicts: Verdict[] = []
  let windows: FaultWindow[] = []
  const prefix = `chaos-${options.seed}/w/`
  const prefixes = Array.from({ length: prefixCount }, (_, i) => `${prefix}${i}/`)
  const urls = (first: number) =>
    cluster.nodes.map(
      (_, i) => (cluster.nodes[(first + i) % cluster.nodes.length] as ChaosNode).url,
    )
  const client = (first: number, extra: Partial<ConstructorParameters<typeof KvClient>[0]> = {}) =>
    new KvClient({
      url: urls(first),
      tls: cluster.tls,
      ack: options.ack === 'all' ? 'all' : options.ack === 'async' ? 'async' : 'quorum',
      timeoutMs: 2000,
      retryForMs: 3000,
      refreshIntervalMs: 500,
      ...extra,
    })
  const acked: AckedWrite[] = []
  const counts = { ok: 0, fail: 0, info: 0 }
  try {
    const admin = client(0)
    const startLsn = (await admin.put(`${prefix}start`, 'x')).lsn
    // Watchers: each its own client, starting on member (i mod nodes); i odd: whole prefix.
    const stopWatchers = new AbortController()
    const watchers: (WatcherRecord & { done: Promise<unknown> })[] = []
    for (let i = 0; i < watcherCount; i++) {
      const watchPrefix = i % 2 === 1 ? prefix : (prefixes[i % prefixCount] as string)
      const wc = client(i % cluster.nodes.length)
      const record: WatcherRecord & { done: Promise<unknown> } = {
        id: `w${i + 1}`,
        prefix: watchPrefix,
        fromLsn: startLsn,
        position: startLsn,
        events: [],
        nodes: [urls(i % cluster.nodes.length)[0] as string],
        reconnects: 0,
        done: Promise.resolve(),
      }
      record.done = (async () => {
        try {
          for await (const event of wc.watch(watchPrefix, {
            fromLsn: startLsn,
            progress: true,
            idleTimeoutMs: 1500,
            retryForMs: 120_000,
            signal: stopWatchers.signal,
            onReconnect: (info) => {
              record.reconnects++
              record.nodes.push(`after ${info.reason.slice(0, 60)}`)
            },
          })) {
            record.position = Math.max(record.position, event.lsn)
            const r = recordOf(event)
            if (r !== null) record.events.push(r)
          }
        } catch (err) {
          record.nodes.push(`ended: ${(err as Error).message.slice(0, 100)}`)
        } finally {
          await wc.close()
        }
      })()
      watchers.push(record)
    }
    // Writers: puts, deletes and batches across the prefixes (and one outside every prefix).
    let stop = false
    const writers = Array.from({ length: options.clients }, async (_, c) => {
      const wc = client(0)
      for (let i = 0; !stop; i++) {
        const p = prefixes[(c + i) % prefixCount] as string
        const key = `${p}${c}/${i % 20}`
        const value = `v-${c}-${i}`
        try {
          if (i % 10 === 7) {
            const result = await wc.batch([
              { op: 'put', key, value },
              { op: 'put', key: `chaos-${options.seed}/other/${c}`, value },
              { op: 'delete', key: `${prefixes[(c + i + 1) % prefixCount]}${c}/${(i + 3) % 20}` },
            ])
            acked.push({ key, value: Buffer.from(value).toString('base64'), lsn: result.lsn })
          } else if (i % 10 === 3) {
            await wc.delete(key)
          } else {
            const result = await wc.put(key, value)
            acked.push({ key, value: Buffer.from(value).toString('base64'), lsn: result.lsn })
          }
          counts.ok++
        } catch {
          counts.info++
          await new Promise((r) => setTimeout(r, 50))
        }
      }
      await wc.close()
    })
    try {
      windows = await runNemesis({
        cluster,
        nemeses: options.nemeses,
        seed: options.seed,
        durationMs: options.durationMs,
        ...(options.healthyMs !== undefined ? { healthyMs: options.healthyMs } : {}),
        ...(options.faultMs !== undefined ? { faultMs: options.faultMs } : {}),
        clock: () => history.now(),
        log,
      })
      const left = options.durationMs - history.now()
      if (left > 0) await new Promise((r) => setTimeout(r, left))
    } finally {
      stop = true
      await Promise.all(writers)
    }
    await cluster.heal()
    for (const node of cluster.nodes) await cluster.start(node.id)
    const leader = await waitForLeader(cluster, 30_000)
    // One more write, so the final commit LSN is in the leader's current epoch.
    const finalLsn = (await admin.put(`${prefix}end`, 'x')).lsn
    // Every watcher catches up (bounded), then the history is read from the leader.
    const deadline = Date.now() + 30_000
    while (Date.now() < deadline && watchers.some((w) => w.position < finalLsn))
      await new Promise((r) => setTimeout(r, 100))
    stopWatchers.abort()
    await Promise.all(watchers.map((w) => w.done))
    const reference: WatchEventRecord[] = []
    const rc = new KvClient({ url: leader.url, tls: cluster.tls, timeoutMs: 5000 })
    try {
      for await (const event of rc.watch('', { fromLsn: startLsn, progress: true })) {
        if (event.type === 'progress') {
          if (event.lsn >= finalLsn) break
          continue
        }
        const r = recordOf(event)
        if (r !== null) reference.push(r)
      }
    } finally {
      await rc.close()
      await admin.close()
    }
    verdicts.push(
      checkWatch({
        watchers,
        history: reference.filter((e) => e.lsn <= finalLsn),
        historyFromLsn: startLsn,
        commitLsn: finalLsn,
        acked,
      }),
    )
  } finally {
    await cluster.stop()
  }
  const valid: boolean | 'unknown' = verdicts.some((v) => v.valid === false)
    ? false
    : verdicts.some((v) => v.valid === 'unknown')
      ? 'unknown'
      : true
  const summary: RunSummary = {
    command:
      options.command ??
      `pnpm chaos --backend process --workload watch --nemesis ${options.nemeses.join(',')} --ack ${options.ack} --duration ${options.durationMs / 1000}s --seed ${options.seed} --nodes ${options.nodes} --clients ${options.clients}${unsafe.length > 0 ? ` ${unsafe.join(' ')}` : ''}`,
    backend: 'process',
    workload: 'watch',
    nemeses: options.nemeses,
    ack: options.ack,
    seed: options.seed,
    durationMs: options.durationMs,
    operations: counts,
    verdicts,
    valid,
  }
  await writeReport(dir, summary, history.events, [], windows, {})
  for (const v of verdicts) {
    log(
      `  ${v.valid === true ? 'valid  ' : v.valid === false ? 'INVALID' : 'unknown'}  ${v.checker}: ${v.summary}`,
    )
  }
  log(`  ${counts.ok} ok writes, ${counts.info} unknown; report: ${join(dir, 'report.html')}`)
  return { summary, dir, windows }
}
