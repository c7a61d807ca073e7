/**
 * The dirty-read workload: half the clients write keys once each (`<prefix>d/<n>` = `n`, at
 * the run's `ack`), the other half read the newest of those keys at `readConsistency`
 * (`committed` by default), each client bound to one node (a plain HTTP client that follows a
 * 421's hint, so a client bound to an isolated leader keeps reading from it). After the run,
 * one committed listing of every key on the leader, after a write at ack=all that commits
 * everything before it, gives the final state; with every node's rollback records it tells
 * which observed values never committed (checkers/dirty-reads.ts).
 *
 * Under ack=async with the leader isolated, the old leader keeps taking writes until it steps
 * down, and they are rolled back when it rejoins: a default-level read on it shows them
 * (the teeth), a committed read must not.
 *
 * A watcher bound to each node (GET /v1/watch on that node only, resumed there from its last
 * LSN) records every value its events show: a watch streams committed changes only, so the
 * isolated leader's watcher must not show its rolled-back writes either (a node built with
 * --unsafe-watch-applied is caught).
 */
import { Pool } from 'undici'
import { KvClient, keyPath } from '@kvstore/client'
import type { ChaosCluster, ChaosNode } from './cluster.js'
import { checkDirtyReads, observationsOf, type RolledBackValue } from './checkers/dirty-reads.js'
import type { Operation, Verdict } from './history.js'
import { prng } from './nemesis.js'
import {
  BoundClient,
  codeOf,
  errorCode,
  pauseAfterError,
  refused,
  refusedBeforeApply,
  type Workload,
  type WorkloadOptions,
} from './workloads.js'

/** Reads go to the newest this many keys (some still in flight, some rolled back later). */
const readWindowKeys = 30

/** The key of element `n`. */
export function dirtyKey(prefix: string, n: number): string {
  return `${prefix}d/${n}`
}

export function dirtyReadWorkload(options: WorkloadOptions): Workload {
  const { history, cluster } = options
  const level = options.readConsistency ?? 'committed'
  const query = level === 'default' ? '' : `?consistency=${level}`
  let element = 0
  let stopping = false
  let nextProcess = options.clients
  const clients: BoundClient[] = []
  const idOf = new Map<string, string>()
  const nodeOf = (url: string) => {
    for (const n of cluster.nodes) idOf.set(n.url, n.id)
    return idOf.get(url) ?? url
  }
  const watchers = cluster.nodes.map((node, i) =>
    watchNode(
      node,
      cluster.tls,
      `${options.prefix}d/`,
      () => stopping,
      (key, value) => {
        const process = 2_000_000 + i
        history.record({ process, f: 'watch', key, type: 'invoke', value: null })
        history.record({ process, f: 'watch', key, type: 'ok', value, node: node.id })
      },
    ),
  )
  const running = Array.from({ length: options.clients }, async (_, i) => {
    const random = prng(options.seed * 1000 + i)
    const home = (cluster.nodes[i % cluster.nodes.length] as ChaosNode).url
    const client = new BoundClient(home, cluster.tls, undefined, random)
    clients.push(client)
    // Even clients write, odd ones read: with 3 nodes and 6 clients a writer and a reader
    // are bound to every node.
    const writer = i % 2 === 0
    let process = i
    while (!stopping) {
      if (writer) {
        const n = ++element
        const key = dirtyKey(options.prefix, n)
        history.record({ process, f: 'write', key, type: 'invoke', value: String(n) })
        try {
          const res = await client.send(
            'PUT',
            `/v1/kv/${keyPath(key)}?ack=${options.ack}`,
            String(n),
            {
              'content-type': 'application/octet-stream',
            },
          )
          if (res.status === 200) {
            history.record({
              process,
              f: 'write',
              key,
              type: 'ok',
              value: String(n),
              node: nodeOf(res.url),
            })
            continue
          }
          const code = errorCode(res.body)
          await pauseAfterError()
          if (refusedBeforeApply.has(code)) {
            history.record({
              process,
              f: 'write',
              key,
              type: 'fail',
              value: String(n),
              error: code,
            })
            continue
          }
          history.record({ process, f: 'write', key, type: 'info', value: String(n), error: code })
        } catch (err) {
          await pauseAfterError()
          if (refused(err)) {
            history.record({
              process,
              f: 'write',
              key,
              type: 'fail',
              value: String(n),
              error: 'ECONNREFUSED',
            })
            continue
          }
          history.record({
            process,
            f: 'write',
            key,
            type: 'info',
            value: String(n),
            error: codeOf(err),
          })
        }
        process = nextProcess++
        continue
      }
      const newest = element
      if (newest === 0) {
        await pauseAfterError()
        continue
      }
      const n = Math.max(1, newest - Math.floor(random() * readWindowKeys))
      const key = dirtyKey(options.prefix, n)
      history.record({ process, f: 'read', key, type: 'invoke', value: null })
      try {
        const res = await client.send('GET', `/v1/kv/${keyPath(key)}${query}`)
        if (
          res.status === 200 ||
          (res.status === 404 && errorCode(res.body) === 'KV_ERR_KEY_NOT_FOUND')
        ) {
          history.record({
            process,
            f: 'read',
            key,
            type: 'ok',
            value: res.status === 200 ? res.body : null,
            node: nodeOf(res.url),
          })
          continue
        }
        history.record({
          process,
          f: 'read',
          key,
          type: 'fail',
          value: null,
          error: errorCode(res.body),
        })
      } catch (err) {
        history.record({ process, f: 'read', key, type: 'fail', value: null, error: codeOf(err) })
      }
      await pauseAfterError()
    }
  })
  return {
    async stop() {
      stopping = true
      await Promise.all(running)
      await Promise.all(clients.map((c) => c.close()))
      await Promise.all(watchers.map((w) => w.stop()))
    },
    async finish() {
      const client = new KvClient({
        url: cluster.nodes.map((n) => n.url),
        tls: cluster.tls,
        timeoutMs: 5000,
        retryForMs: 20_000,
        readFrom: 'leader',
        session: false,
      })
      const process = 1_000_000
      history.record({ process, f: 'readAll', type: 'invoke', value: null })
      try {
        // A write at ack=all commits every entry before it on every member.
        await client.put(`${options.prefix}d-end`, 'end', { ack: 'all' })
        const state: [string, string][] = []
        for await (const item of client.listAll({
          prefix: `${options.prefix}d/`,
          values: true,
          consistency: 'committed',
        })) {
          state.push([item.key, Buffer.from(item.valueBase64 ?? '', 'base64').toString('utf8')])
        }
        history.record({ process, f: 'readAll', type: 'ok', value: state })
      } catch (err) {
        history.record({ process, f: 'readAll', type: 'fail', value: null, error: codeOf(err) })
      } finally {
        await client.close()
      }
    },
  }
}

interface WatchLine {
  type: string
  lsn?: number
  key?: string
  valueBase64?: string
  ops?: { type: string; key: string; valueBase64?: string }[]
}

/**
 * Watches `prefix` on `node` only (never another member: a watcher of the isolated leader
 * must stay on it), from the start of the log, resuming there from its last LSN when the
 * stream breaks, until `stopped()`. Each value a put shows goes to `seen`.
 */
function watchNode(
  node: ChaosNode,
  tls: ChaosCluster['tls'],
  prefix: string,
  stopped: () => boolean,
  seen: (key: string, value: string) => void,
): { stop(): Promise<void> } {
  const pool = new Pool(node.url, { connect: tls, connections: 1, bodyTimeout: 3000 })
  const abort = new AbortController()
  let position = 0
  const running = (async () => {
    while (!stopped()) {
      try {
        const res = await pool.request({
          method: 'GET',
          path: `/v1/watch?prefix=${encodeURIComponent(prefix)}&fromLsn=${position}`,
          headers: { accept: 'application/x-ndjson' },
          signal: abort.signal,
        })
        if (res.statusCode !== 200) {
          await res.body.text()
          await pauseAfterError()
          continue
        }
        let rest = ''
        for await (const chunk of res.body) {
          rest += (chunk as Buffer).toString('utf8')
          let newline: number
          while ((newline = rest.indexOf('\n')) >= 0) {
            const line = rest.slice(0, newline)
            rest = rest.slice(newline + 1)
            if (line.trim() === '') continue
            const event = JSON.parse(line) as WatchLine
            const puts =
              event.type === 'put' ? [event] : event.type === 'batch' ? (event.ops ?? []) : []
            for (const op of puts) {
              if (op.type === 'put' && op.key !== undefined)
                seen(op.key, Buffer.from(op.valueBase64 ?? '', 'base64').toString('utf8'))
            }
            if (typeof event.lsn === 'number' && event.type !== 'error')
              position = Math.max(position, event.lsn)
          }
        }
      } catch {
        // The node went away, paused past the body timeout, or the run is stopping.
      }
      if (!stopped()) await pauseAfterError()
    }
  })()
  return {
    async stop() {
      abort.abort()
      await running
      await pool.close()
    },
  }
}

/** Every (key, value) in a node's rollback records under `prefix`. */
export async function rolledBackValues(
  node: ChaosNode,
  prefix: string,
): Promise<RolledBackValue[]> {
  const out: RolledBackValue[] = []
  let after = 0
  for (;;) {
    const res = await fetch(`${node.url}/admin/v1/rollbacks?after=${after}&limit=1000`, {
      signal: AbortSignal.timeout(10_000),
    })
    const page = (await res.json()) as {
      rollbacks: { ops: { key?: string; valueBase64?: string }[] }[]
      next: number | null
    }
    for (const r of page.rollbacks) {
      for (const op of r.ops) {
        if (typeof op.key !== 'string' || !op.key.startsWith(prefix)) continue
        out.push(
          op.valueBase64 === undefined
            ? { key: op.key }
            : { key: op.key, value: Buffer.from(op.valueBase64, 'base64').toString('utf8') },
        )
      }
    }
    if (page.next === null) return out
    after = page.next
  }
}

/**
 * The dirty-read verdict of a run: the history's reads against every node's rollback records
 * and the final committed state. `level` names the consistency the reads used.
 */
export async function dirtyReadVerdict(
  cluster: ChaosCluster,
  ops: readonly Operation[],
  prefix: string,
  level: string,
): Promise<Verdict> {
  const rolledBack: RolledBackValue[] = []
  for (const node of cluster.nodes)
    rolledBack.push(...(await rolledBackValues(node, `${prefix}d/`)))
  let finalRead: Operation | null = null
  for (const op of ops) if (op.f === 'readAll' && op.type === 'ok') finalRead = op
  const finalState =
    finalRead !== null && Array.isArray(finalRead.output)
      ? new Map(finalRead.output as [string, string][])
      : null
  const verdict = checkDirtyReads({
    observations: observationsOf(ops).map((o) => ({ ...o, level })),
    rolledBack,
    finalState,
  })
  verdict.summary = `${level} reads: ${verdict.summary}`
  return verdict
}
