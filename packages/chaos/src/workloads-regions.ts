/**
 * The workload of a `--regions` run. Two kinds of clients in every region, each a closed loop
 * with a short think time, each recording its operations in the history (for the report) and
 * in the structured lists the region checkers take:
 *
 * - writers (`writersPerRegion`): each bound to a member of its region (following 421 leader
 *   hints, within the region), writing the shared keys `<prefix>x<i>` with `ack=quorum` and a
 *   value unique in the run (`<region>-w<client>-<seq>`). Every acknowledged write keeps the
 *   response's `stamp` and `previousStamp`. A write refused before it was applied (not the
 *   leader, not ready, connection refused) is `fail`; a timeout or any other error is `info`
 *   (it may have been applied), and the client retires (a new process number).
 * - queued sessions (`queuedPerRegion`): each bound to a member that follows its region's
 *   leader when the run starts, writing keys that only it writes
 *   (`<prefix>q/<region>-p<process>-<j>`, 3 of them) with `ack=queued`, keeping every 202's
 *   ticket (and the member that holds it). A session whose request got no answer cannot know
 *   whether it was queued: it retires, and its successor writes keys of its own.
 *
 * After the faults heal, `drainTickets` asks the holding member for every ticket until each
 * is `applied` or `failed`, or the time is up.
 */
import { keyPath } from '@kvstore/client'
import type { QueuedSubmission, RegionWrite, TicketState } from './checkers/regions.js'
import { currentLeader, type ChaosNode } from './cluster.js'
import type { OpFunction } from './history.js'
import { prng } from './nemesis.js'
import type { RegionsCluster } from './regions-cluster.js'
import {
  BoundClient,
  codeOf,
  errorCode,
  pauseAfterError,
  refused,
  refusedBeforeApply,
  type HistoryRecorder,
} from './workloads.js'

export interface RegionsWorkloadOptions {
  cluster: RegionsCluster
  history: HistoryRecorder
  seed: number
  /** The key prefix (each run uses its own). */
  prefix: string
  /** Quorum writers per region (default 3). */
  writersPerRegion?: number
  /** Queued sessions per region (default 1; 0: none). */
  queuedPerRegion?: number
  /** Shared keys (default 4). */
  sharedKeys?: number
}

export interface RegionsWorkload {
  /** The shared keys the writers write. */
  readonly sharedKeys: readonly string[]
  /** Every write of the shared keys. */
  readonly writes: RegionWrite[]
  /** Every queued write. */
  readonly submissions: QueuedSubmission[]
  /** Stops the clients; resolves when every operation in flight has completed. */
  stop(): Promise<void>
  /** Polls every accepted ticket until it is applied or failed, or `timeoutMs` passes. */
  drainTickets(timeoutMs: number): Promise<{ tickets: TicketState[]; waitedMs: number }>
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** The shared keys: `<prefix>x0`, `<prefix>x1`, ... */
export function sharedKeysOf(prefix: string, count: number): string[] {
  return Array.from({ length: count }, (_, i) => `${prefix}x${i}`)
}

export async function startRegionsWorkload(
  options: RegionsWorkloadOptions,
): Promise<RegionsWorkload> {
  const { cluster, history } = options
  const writersPerRegion = options.writersPerRegion ?? 3
  const queuedPerRegion = options.queuedPerRegion ?? 1
  const keys = sharedKeysOf(options.prefix, options.sharedKeys ?? 4)
  const writes: RegionWrite[] = []
  const submissions: QueuedSubmission[] = []
  const clients: BoundClient[] = []
  let stopping = false
  const regions = cluster.regions
  let nextProcess = regions.length * (writersPerRegion + queuedPerRegion)
  const idOf = (url: string) => cluster.nodes.find((n) => n.url === url)?.id ?? url
  const nodeById = (id: string): ChaosNode | undefined => cluster.nodes.find((n) => n.id === id)

  // Queued sessions go to members that follow their region's leader at the start.
  const followers = new Map<string, ChaosNode[]>()
  for (const region of regions) {
    const leader = await currentLeader(region.cluster)
    const rest = region.cluster.nodes.filter((n) => n.id !== leader?.id)
    followers.set(region.id, rest.length > 0 ? [...rest] : [...region.cluster.nodes])
  }

  const writer = async (region: (typeof regions)[number], index: number, process: number) => {
    const random = prng(options.seed * 1000 + process)
    const home = region.cluster.nodes[index % region.cluster.nodes.length] as ChaosNode
    const client = new BoundClient(home.url, cluster.tls)
    clients.push(client)
    let seq = 0
    while (!stopping) {
      await sleep(10 + 40 * random())
      if (stopping) break
      const key = keys[Math.floor(random() * keys.length)] as string
      const value = `${region.id}-w${index}-${++seq}`
      const record = (
        type: 'invoke' | 'ok' | 'fail' | 'info',
        extra: Record<string, unknown> = {},
      ) => history.record({ process, f: 'write', key, type, value, region: region.id, ...extra })
      const invokeTime = history.now()
      record('invoke')
      const done = (
        type: RegionWrite['type'],
        extra: Partial<RegionWrite> & { version?: number } = {},
      ) => {
        const { version, ...rest } = extra
        writes.push({
          process,
          region: region.id,
          key,
          value,
          type,
          invokeTime,
          completeTime: type === 'info' ? Infinity : history.now(),
          ...rest,
        })
        record(type, {
          ...(rest.node !== undefined ? { node: rest.node } : {}),
          ...(rest.error !== undefined ? { error: rest.error } : {}),
          ...(rest.stamp !== undefined ? { stamp: rest.stamp } : {}),
          ...(rest.previousStamp !== undefined ? { previousStamp: rest.previousStamp } : {}),
          ...(version !== undefined ? { version } : {}),
        })
      }
      try {
        const res = await client.send('PUT', `/v1/kv/${keyPath(key)}?ack=quorum`, value, {
          'content-type': 'application/octet-stream',
        })
        const node = idOf(res.url)
        if (res.status === 200 || res.status === 201) {
          const body = JSON.parse(res.body) as {
            version?: number
            stamp?: string
            previousStamp?: string | null
          }
          done('ok', {
            node,
            ...(typeof body.stamp === 'string' ? { stamp: body.stamp } : {}),
            // Absent stays absent: the checker reports a response without it.
            ...(body.previousStamp !== undefined ? { previousStamp: body.previousStamp } : {}),
            ...(typeof body.version === 'number' ? { version: body.version } : {}),
          })
          continue
        }
        const code = errorCode(res.body)
        await pauseAfterError()
        if (refusedBeforeApply.has(code)) {
          done('fail', { node, error: code })
          continue
        }
        done('info', { node, error: code })
      } catch (err) {
        await pauseAfterError()
        if (refused(err)) {
          done('fail', { node: home.id, error: 'ECONNREFUSED' })
          continue
        }
        done('info', { node: home.id, error: codeOf(err) })
      }
      // The outcome is unknown: this client retires; a new process takes its place.
      process = nextProcess++
    }
  }

  const queued = async (region: (typeof regions)[number], index: number, first: number) => {
    const random = prng(options.seed * 1000 + 500 + first)
    const pool = followers.get(region.id) as ChaosNode[]
    const home = pool[index % pool.length] as ChaosNode
    const client = new BoundClient(home.url, cluster.tls)
    clients.push(client)
    let process = first
    let seq = 0
    while (!stopping) {
      await sleep(30 + 60 * random())
      if (stopping) break
      const key = `${options.prefix}q/${region.id}-p${process}-${Math.floor(random() * 3)}`
      const value = `q-${region.id}-p${process}-${++seq}`
      const f: OpFunction = 'enqueue'
      const record = (
        type: 'invoke' | 'ok' | 'fail' | 'info',
        extra: Record<string, unknown> = {},
      ) => history.record({ process, f, key, type, value, region: region.id, ...extra })
      record('invoke')
      const submission = (
        outcome: QueuedSubmission['outcome'],
        extra: Partial<QueuedSubmission> = {},
      ) =>
        submissions.push({
          session: process,
          seq,
          region: region.id,
          node: home.id,
          key,
          value,
          outcome,
          ...extra,
        })
      let unknown = false
      try {
        const res = await client.send('PUT', `/v1/kv/${keyPath(key)}?ack=queued`, value, {
          'content-type': 'application/octet-stream',
        })
        const node = idOf(res.url)
        if (res.status === 202) {
          const body = JSON.parse(res.body) as { ticket?: string; node?: string }
          if (typeof body.ticket === 'string') {
            const holder = typeof body.node === 'string' ? body.node : node
            submission('accepted', { ticket: body.ticket, node: holder })
            record('ok', { node: holder, ticket: body.ticket })
            continue
          }
          submission('unknown', { node, error: 'a 202 without a ticket' })
          record('info', { node, error: 'a 202 without a ticket' })
          unknown = true
        } else if (res.status >= 400 && res.status < 500 && res.status !== 408) {
          // Refused at accept time (syntax, auth, size): nothing was queued.
          const code = errorCode(res.body)
          submission('refused', { node, error: code })
          record('fail', { node, error: code })
          await pauseAfterError()
        } else if (res.status === 503) {
          // The outbox is full (or the node is not ready, shutting down): nothing was queued.
          const code = errorCode(res.body)
          submission('refused', { node, error: code })
          record('fail', { node, error: code })
          await pauseAfterError()
        } else {
          // A 200 (applied at once?), a 500: not what ack=queued answers; it may have been.
          const code = `HTTP ${res.status} ${errorCode(res.body)}`
          submission('unknown', { node, error: code })
          record('info', { node, error: code })
          unknown = true
        }
      } catch (err) {
        await pauseAfterError()
        if (refused(err)) {
          submission('refused', { error: 'ECONNREFUSED' })
          record('fail', { node: home.id, error: 'ECONNREFUSED' })
        } else {
          submission('unknown', { error: codeOf(err) })
          record('info', { node: home.id, error: codeOf(err) })
          unknown = true
        }
      }
      if (unknown) {
        // A new session, with keys of its own.
        process = nextProcess++
        seq = 0
      }
    }
  }

  const running: Promise<void>[] = []
  regions.forEach((region, r) => {
    for (let i = 0; i < writersPerRegion; i++)
      running.push(writer(region, i, r * writersPerRegion + i))
    for (let i = 0; i < queuedPerRegion; i++)
      running.push(queued(region, i, regions.length * writersPerRegion + r * queuedPerRegion + i))
  })

  return {
    sharedKeys: keys,
    writes,
    submissions,
    async stop() {
      stopping = true
      await Promise.all(running)
      await Promise.all(clients.map((c) => c.close()))
    },
    async drainTickets(timeoutMs) {
      const started = Date.now()
      const states = new Map<string, TicketState>()
      const holders = new Map<string, string>()
      for (const s of submissions) {
        if (s.outcome !== 'accepted' || s.ticket === undefined) continue
        states.set(s.ticket, { ticket: s.ticket, status: 'unknown' })
        holders.set(s.ticket, s.node)
      }
      const ended = (t: TicketState) => t.status === 'applied' || t.status === 'failed'
      for (;;) {
        const open = [...states.values()].filter((t) => !ended(t))
        if (open.length === 0 || Date.now() - started > timeoutMs) break
        for (let i = 0; i < open.length; i += 16) {
          await Promise.all(
            open.slice(i, i + 16).map(async (t) => {
              const node = nodeById(holders.get(t.ticket) as string)
              if (node === undefined) return
              states.set(t.ticket, await askTicket(node, t.ticket, holders))
            }),
          )
        }
        if ([...states.values()].every(ended)) break
        await sleep(250)
      }
      return { tickets: [...states.values()], waitedMs: Date.now() - started }
    },
  }
}

/**
 * `GET /v1/tickets/<id>` on the member holding it. A 404 that names another member
 * (`details.node`) moves the ticket's holder there for the next round.
 */
async function askTicket(
  node: ChaosNode,
  ticket: string,
  holders: Map<string, string>,
): Promise<TicketState> {
  try {
    const res = await fetch(`${node.url}/v1/tickets/${encodeURIComponent(ticket)}`, {
      signal: AbortSignal.timeout(3000),
    })
    const text = await res.text()
    if (res.status === 200) {
      const body = JSON.parse(text) as {
        status?: string
        lsn?: number
        error?: { code?: string } | null
      }
      const status =
        body.status === 'applied' || body.status === 'failed' || body.status === 'pending'
          ? body.status
          : 'unknown'
      return {
        ticket,
        status,
        ...(typeof body.lsn === 'number' ? { lsn: body.lsn } : {}),
        ...(body.error?.code !== undefined ? { error: body.error.code } : {}),
      }
    }
    if (res.status === 404) {
      const body = JSON.parse(text) as { error?: { code?: string; details?: { node?: string } } }
      if (body.error?.code === 'KV_ERR_TICKET_NOT_FOUND') {
        const other = body.error.details?.node
        if (typeof other === 'string' && other !== node.id) holders.set(ticket, other)
        return { ticket, status: 'not-found', error: 'KV_ERR_TICKET_NOT_FOUND' }
      }
    }
    return { ticket, status: 'unknown', error: `HTTP ${res.status} ${errorCode(text)}` }
  } catch (err) {
    return { ticket, status: 'unknown', error: codeOf(err) }
  }
}
