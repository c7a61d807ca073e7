/**
 * Workloads: clients that run operations in closed loops and record each as an invoke and a
 * completion (ok, fail or info) in the history.
 *
 * - register: reads, writes and compare-and-sets on a few keys. Reads are linearizable reads
 *   on the leader; writes wait for `ack`. A compare-and-set reads the key (linearizably), then
 *   writes with If-Match on the version it saw, so it takes effect only if the value is still
 *   the expected one.
 * - set: every client adds unique elements (a key written once); after the run, one read of
 *   every element.
 * - session: clients write and read a few keys through the SDK with sessions and follower
 *   reads, recording the versions they see.
 * - ll-set (leaderless mode): the set, in plain HTTP with write and read quorums; see
 *   workloads-leaderless.ts.
 * - ll-register (leaderless mode): one key per process, written with increasing values and
 *   read back at R after every acknowledged write (read-your-writes under R + W > N).
 *
 * A failure is `fail` only when the write certainly did not happen (its condition failed, or
 * a read); anything else (timeouts, a deposed leader, a lost connection) is `info`, and the
 * client retires: its successor gets a new process number.
 */
import { KvClient, KvError, keyPath } from '@kvstore/client'
import { slotOfKey } from '@kvstore/protocol'
import { Pool } from 'undici'
import type { ChaosCluster, ChaosNode } from './cluster.js'
import { prng } from './nemesis.js'
import type { HistoryEvent, OpFunction } from './history.js'
import { dirtyReadWorkload } from './workloads-dirty.js'
import {
  llRegisterWorkload,
  llSetWorkload,
  type LeaderlessQuorums,
} from './workloads-leaderless.js'
import { locksWorkload } from './workloads-locks.js'

export const workloadNames = [
  'register',
  'set',
  'session',
  'll-set',
  'll-register',
  'regions',
  'dirty-read',
  'watch',
  'locks',
] as const
/** The workloads of each cluster mode. */
export const leaderlessWorkloads: readonly WorkloadName[] = ['ll-set', 'll-register']
export type WorkloadName = (typeof workloadNames)[number]
export type AckMode = 'async' | 'quorum' | 'all'

export class HistoryRecorder {
  readonly events: HistoryEvent[] = []
  private readonly started = performance.now()

  now(): number {
    return performance.now() - this.started
  }

  record(event: Omit<HistoryEvent, 'index' | 'time'>): void {
    this.events.push({ ...event, index: this.events.length, time: this.now() })
  }
}

export interface WorkloadOptions {
  cluster: ChaosCluster
  history: HistoryRecorder
  ack: AckMode
  clients: number
  seed: number
  /** The key prefix (each run uses its own). */
  prefix: string
  /**
   * Session workload only, for its teeth test: read from followers without session tokens.
   * The session checker must then find read-your-writes or monotonic-read violations.
   */
  noSessions?: boolean
  /** Leaderless workloads: the write and read quorums (default quorum, strict). */
  quorums?: LeaderlessQuorums
  /**
   * --router: the routers' URLs. Clients then talk to these only, never to a node: each
   * operation goes to one of them drawn at random, and a router that refused a connection or
   * timed out is left alone for a second.
   */
  routers?: readonly ChaosNode[]
  /** The register's keys (default `registerKeys(prefix)`). */
  registerKeys?: readonly string[]
  /** dirty-read workload: the reads' consistency (default committed; default is its teeth). */
  readConsistency?: 'default' | 'committed'
  /** Locks workload only, for its teeth test: resource writes carry no fencing token. */
  unfenced?: boolean
}

export interface Workload {
  /** Stops the clients; resolves when every operation in flight has completed. */
  stop(): Promise<void>
  /** After the faults heal: final reads the checker needs (the set's read of every element). */
  finish(): Promise<void>
}

/** A connection that was never made: the request certainly did not reach the node. */
export function refused(err: unknown): boolean {
  const e = err as { code?: string; cause?: { code?: string } }
  return e.code === 'ECONNREFUSED' || e.cause?.code === 'ECONNREFUSED'
}

export const pauseAfterError = () => new Promise((r) => setTimeout(r, 50))

export function codeOf(err: unknown): string {
  return err instanceof KvError ? err.code : err instanceof Error ? err.message : String(err)
}

function clientFor(
  cluster: ChaosCluster,
  ack: AckMode,
  session: boolean,
  readFrom: 'leader' | 'followers' = session ? 'followers' : 'leader',
  routers?: readonly ChaosNode[],
  index = 0,
): KvClient {
  // Through routers: each client starts on its own router and fails over to the others (a
  // router says it is a one-member cluster, so the SDK never learns a node's URL).
  const urls =
    routers === undefined
      ? cluster.nodes.map((n) => n.url)
      : routers.map((_, i) => (routers[(index + i) % routers.length] as ChaosNode).url)
  return new KvClient({
    url: urls,
    tls: cluster.tls,
    ack,
    timeoutMs: 2000,
    retryForMs: 3000,
    session,
    readFrom,
    refreshIntervalMs: 500,
  })
}

export function startWorkload(name: WorkloadName, options: WorkloadOptions): Workload {
  switch (name) {
    case 'register':
      return registerWorkload(options)
    case 'set':
      return setWorkload(options)
    case 'dirty-read':
      return dirtyReadWorkload(options)
    case 'session':
      return sessionWorkload(options)
    case 'll-set':
      return llSetWorkload(options, options.quorums ?? { w: 'quorum', r: 'quorum', sloppy: false })
    case 'll-register':
      return llRegisterWorkload(
        options,
        options.quorums ?? { w: 'quorum', r: 'quorum', sloppy: false },
      )
    case 'regions':
      throw new Error('the regions workload runs with --regions (see workloads-regions.ts)')
    case 'watch':
      throw new Error('the watch workload has its own runner (see watch-run.ts)')
    case 'locks':
      // Lock holders with fencing tokens (workloads-locks.ts); `unfenced` is its teeth.
      return locksWorkload(
        { ...options, ...(options.unfenced === true ? { unfenced: true } : {}) },
        (i) => clientFor(options.cluster, options.ack, false, 'leader', undefined, i),
      )
  }
}

/** Runs `count` client loops; each gets a process number, renewed after an info. */
function loops(
  options: WorkloadOptions,
  body: (state: { process: number; random: () => number; client: KvClient }) => Promise<boolean>,
  session = false,
  readFrom: 'leader' | 'followers' = session ? 'followers' : 'leader',
): { stop(): Promise<void>; clients: KvClient[] } {
  let stopping = false
  let nextProcess = options.clients
  const clients: KvClient[] = []
  const running = Array.from({ length: options.clients }, async (_, i) => {
    const client = clientFor(options.cluster, options.ack, session, readFrom, options.routers, i)
    clients.push(client)
    const state = { process: i, random: prng(options.seed * 1000 + i), client }
    while (!stopping) {
      const retired = await body(state)
      if (retired) state.process = nextProcess++
    }
  })
  return {
    clients,
    async stop() {
      stopping = true
      await Promise.all(running)
      await Promise.all(clients.map((c) => c.close()))
    },
  }
}

/**
 * A plain HTTP client bound to one node, as the simplest real client is: it sends every
 * operation to its node and follows a 421's leader hint (at most twice). It does not retry:
 * each operation is one attempt, so its outcome is exactly what the cluster answered. (The SDK
 * is smarter about finding the leader, which would hide a stale leader from the checker.)
 *
 * Through routers (`routers`), each operation goes to a router drawn at random instead, no
 * hint is followed (a router finds leaders and owners itself; a client never talks to a node),
 * and a router that refused a connection or timed out is skipped for a second.
 */
export class BoundClient {
  private readonly pools = new Map<string, Pool>()
  /** Router URL -> until when (performance.now()) it is skipped. */
  private readonly routerDown = new Map<string, number>()
  constructor(
    private home: string,
    private readonly tls: ChaosCluster['tls'],
    private readonly routers?: readonly ChaosNode[],
    private readonly random: () => number = Math.random,
  ) {}

  get homeUrl(): string {
    return this.home
  }

  /** Binds the client to another node (its node was removed from the cluster). */
  rehome(url: string): void {
    this.home = url
  }

  private pool(url: string): Pool {
    let pool = this.pools.get(url)
    if (!pool) {
      pool = new Pool(url, {
        connect: this.tls,
        connections: 2,
        headersTimeout: 2000,
        bodyTimeout: 2000,
      })
      this.pools.set(url, pool)
    }
    return pool
  }

  /** The router for the next operation: a random one of those not skipped (any if none). */
  private pickRouter(routers: readonly ChaosNode[]): string {
    const now = performance.now()
    const up = routers.filter((r) => (this.routerDown.get(r.url) ?? 0) <= now)
    const from = up.length > 0 ? up : routers
    return (from[Math.floor(this.random() * from.length)] as ChaosNode).url
  }

  /** Status, body and headers of the answer; throws on a timeout or a lost connection. */
  async send(
    method: 'GET' | 'PUT',
    path: string,
    body?: string,
    headers: Record<string, string> = {},
  ): Promise<{ status: number; body: string; headers: Record<string, string>; url: string }> {
    const routers = this.routers
    let url = routers === undefined ? this.home : this.pickRouter(routers)
    for (let hop = 0; ; hop++) {
      let res
      try {
        res = await this.pool(url).request({
          method,
          path,
          ...(body !== undefined ? { body } : {}),
          headers,
          signal: AbortSignal.timeout(routers === undefined ? 2500 : 12_000),
        })
      } catch (err) {
        // Fail over: the next operation goes to another router.
        if (routers !== undefined) this.routerDown.set(url, performance.now() + 1000)
        throw err
      }
      const text = await res.body.text()
      const flat: Record<string, string> = {}
      for (const [k, v] of Object.entries(res.headers)) if (typeof v === 'string') flat[k] = v
      if (res.statusCode === 421 && hop < 2 && routers === undefined) {
        const hint = (JSON.parse(text) as { error?: { leaderUrl?: string | null } }).error
          ?.leaderUrl
        if (typeof hint === 'string' && hint !== url) {
          url = hint
          continue
        }
      }
      return { status: res.statusCode, body: text, headers: flat, url }
    }
  }

  async close(): Promise<void> {
    await Promise.all([...this.pools.values()].map((p) => p.close()))
  }
}

export function errorCode(body: string): string {
  try {
    return (JSON.parse(body) as { error?: { code?: string } }).error?.code ?? 'unknown'
  } catch {
    return 'unknown'
  }
}

/** A write refused before it was applied: nothing happened. */
export const refusedBeforeApply: ReadonlySet<string> = new Set([
  'KV_ERR_PRECONDITION_FAILED',
  'KV_ERR_NOT_LEADER',
  'KV_ERR_NOT_READY',
  'KV_ERR_OVERLOADED',
  'KV_ERR_SHUTTING_DOWN',
])

/**
 * Through a router, fewer answers are certain. The router retries a write (after a timeout,
 * an unreachable leader, an election, a moving slot, a wrong shard) with the same request id,
 * so its last answer may follow an attempt that was applied. A node looks a request id up
 * before anything else, so an applied earlier attempt comes back as its own result: a failed
 * condition is still certain. Every other error is `info` (even a 429: a node's rate limit may
 * answer a retry).
 */
const refusedBeforeApplyByRouter = new Set(['KV_ERR_PRECONDITION_FAILED'])

/** Slots the shard groups start with: g1 the first half, g2 the second (2 groups). */
const halfSlots = 2048

/**
 * The register's 5 keys. They are `<prefix>r<i>-<j>`, with the first j that puts key i's slot
 * in the first half of the slots for even i and the second half for odd i: with two groups
 * (g1 owning 0-2047, g2 2048-4095 at the start) the keys live in both.
 */
export function registerKeys(prefix: string): string[] {
  return Array.from({ length: 5 }, (_, i) => {
    for (let j = 0; ; j++) {
      const key = `${prefix}r${i}-${j}`
      if (slotOfKey(key) < halfSlots === (i % 2 === 0)) return key
    }
  })
}

/** Slots the set's first `count` elements live in (the set writes `<prefix>s/<n>`). */
export function setSlots(prefix: string, count = 4000): number[] {
  return [...new Set(Array.from({ length: count }, (_, n) => slotOfKey(`${prefix}s/${n + 1}`)))]
}

function registerWorkload(options: WorkloadOptions): Workload {
  const { history, cluster, routers } = options
  const keys = options.registerKeys ?? Array.from({ length: 5 }, (_, i) => `${options.prefix}r${i}`)
  const certain = routers === undefined ? refusedBeforeApply : refusedBeforeApplyByRouter
  let counter = 0
  const lastSeen = new Map<string, unknown>()
  const clients: BoundClient[] = []
  let stopping = false
  let nextProcess = options.clients
  const path = (key: string) => `/v1/kv/${keyPath(key)}`
  // Every node seen during the run, removed ones too (the membership nemesis changes them).
  const idOf = new Map<string, string>()
  for (const r of routers ?? []) idOf.set(r.url, r.id)
  /** Who served an answer: the node, or through a router `r1>n4` (its kv-served-by). */
  const nodeOf = (url: string, headers: Record<string, string> = {}) => {
    for (const n of cluster.nodes) idOf.set(n.url, n.id)
    const name = idOf.get(url) ?? url
    const servedBy = headers['kv-served-by']
    return routers !== undefined && servedBy !== undefined ? `${name}>${servedBy}` : name
  }

  /** A linearizable read: [value, version, node], or an error code. */
  const read = async (client: BoundClient, key: string) => {
    const res = await client.send('GET', `${path(key)}?consistency=linearizable`)
    if (res.status === 200) {
      const version = Number((res.headers.etag ?? '"0"').replaceAll('"', ''))
      return { value: Number(res.body) as unknown, version, node: nodeOf(res.url, res.headers) }
    }
    if (res.status === 404 && errorCode(res.body) === 'KV_ERR_KEY_NOT_FOUND')
      return { value: null as unknown, version: 0, node: nodeOf(res.url, res.headers) }
    return { error: errorCode(res.body) }
  }

  const running = Array.from({ length: options.clients }, async (_, i) => {
    const random = prng(options.seed * 1000 + i)
    const client = new BoundClient(
      (cluster.nodes[i % cluster.nodes.length] as { url: string }).url,
      cluster.tls,
      routers,
      prng(options.seed * 1000 + 500 + i),
    )
    clients.push(client)
    let process = i
    while (!stopping) {
      // A client whose node left the cluster (the membership nemesis) moves to a member.
      if (
        routers === undefined &&
        !cluster.nodes.some((n) => n.url === client.homeUrl) &&
        cluster.nodes.length > 0
      ) {
        client.rehome((cluster.nodes[i % cluster.nodes.length] as { url: string }).url)
      }
      const key = keys[Math.floor(random() * keys.length)] as string
      const roll = random()
      const record = (
        f: OpFunction,
        type: HistoryEvent['type'],
        value: unknown,
        extra: Partial<HistoryEvent> = {},
      ) => history.record({ process, f, key, type, value, ...extra })
      if (roll < 0.5 || (roll >= 0.8 && !lastSeen.has(key))) {
        record('read', 'invoke', null)
        try {
          const got = await read(client, key)
          if ('error' in got) {
            record('read', 'fail', null, { error: got.error })
            await pauseAfterError()
          } else {
            lastSeen.set(key, got.value)
            record('read', 'ok', got.value, { node: got.node, version: got.version })
          }
        } catch (err) {
          record('read', 'fail', null, { error: codeOf(err) })
          await pauseAfterError()
        }
        continue
      }
      const cas = roll >= 0.8
      const value = ++counter
      const expected = cas ? (lastSeen.get(key) ?? null) : null
      const input = cas ? [expected, value] : value
      const f: OpFunction = cas ? 'cas' : 'write'
      record(f, 'invoke', input)
      let headers: Record<string, string> = {}
      if (cas) {
        // Compare-and-set: read the version of the expected value, then write only if the
        // key is still at that version.
        try {
          const got = await read(client, key)
          if ('error' in got || got.value !== expected) {
            record(f, 'fail', input, { error: 'error' in got ? got.error : 'mismatch' })
            if (!('error' in got)) lastSeen.set(key, got.value)
            continue
          }
          // From absent: create-only; else only at the version that holds the expected value.
          headers =
            got.value === null ? { 'if-none-match': '*' } : { 'if-match': `"${got.version}"` }
        } catch (err) {
          record(f, 'fail', input, { error: codeOf(err) })
          continue
        }
      }
      try {
        const res = await client.send('PUT', `${path(key)}?ack=${options.ack}`, String(value), {
          'content-type': 'application/octet-stream',
          ...headers,
        })
        if (res.status === 200 || res.status === 201) {
          const version = (JSON.parse(res.body) as { version: number }).version
          record(f, 'ok', input, { version, node: nodeOf(res.url, res.headers) })
          lastSeen.set(key, value)
          continue
        }
        const code = errorCode(res.body)
        await pauseAfterError()
        if (certain.has(code)) {
          record(f, 'fail', input, { error: code, node: nodeOf(res.url, res.headers) })
          continue
        }
        record(f, 'info', input, { error: code, node: nodeOf(res.url, res.headers) })
      } catch (err) {
        await pauseAfterError()
        if (refused(err)) {
          record(f, 'fail', input, { error: 'ECONNREFUSED' })
          continue
        }
        record(f, 'info', input, { error: codeOf(err) })
      }
      // The outcome is unknown: this client retires; a new process takes its place.
      process = nextProcess++
    }
  })
  return {
    async stop() {
      stopping = true
      await Promise.all(running)
      await Promise.all(clients.map((c) => c.close()))
    },
    finish: async () => {},
  }
}

function setWorkload(options: WorkloadOptions): Workload {
  const { history, cluster } = options
  let element = 0
  const running = loops(options, async ({ process, client }) => {
    const value = ++element
    history.record({ process, f: 'add', type: 'invoke', value })
    try {
      const result = await client.put(`${options.prefix}s/${value}`, '1', {
        requestId: `${options.prefix}add-${value}`,
      })
      history.record({ process, f: 'add', type: 'ok', value, version: result.version })
      return false
    } catch (err) {
      history.record({ process, f: 'add', type: 'info', value, error: codeOf(err) })
      return true
    }
  })
  return {
    stop: () => running.stop(),
    async finish() {
      const client = clientFor(cluster, options.ack, false, 'leader', options.routers)
      const process = 1_000_000
      history.record({ process, f: 'readAll', type: 'invoke', value: null })
      try {
        const elements: number[] = []
        for await (const item of client.listAll({ prefix: `${options.prefix}s/` })) {
          elements.push(Number(item.key.slice(`${options.prefix}s/`.length)))
        }
        history.record({ process, f: 'readAll', type: 'ok', value: elements })
      } catch (err) {
        history.record({ process, f: 'readAll', type: 'fail', value: null, error: codeOf(err) })
      } finally {
        await client.close()
      }
    },
  }
}

function sessionWorkload(options: WorkloadOptions): Workload {
  const { history } = options
  const keys = Array.from({ length: 3 }, (_, i) => `${options.prefix}k${i}`)
  let counter = 0
  const running = loops(
    options,
    async ({ process, random, client }) => {
      const key = keys[Math.floor(random() * keys.length)] as string
      if (random() < 0.5) {
        history.record({ process, f: 'read', key, type: 'invoke', value: null })
        try {
          const got = await client.get(key)
          history.record({
            process,
            f: 'read',
            key,
            type: 'ok',
            value: got === null ? null : Number(got.value.toString('utf8')),
            node: got?.servedBy ?? '',
            ...(got ? { version: got.version } : {}),
          })
        } catch (err) {
          history.record({ process, f: 'read', key, type: 'fail', value: null, error: codeOf(err) })
        }
        return false
      }
      const value = ++counter
      history.record({ process, f: 'write', key, type: 'invoke', value })
      try {
        const result = await client.put(key, String(value))
        history.record({ process, f: 'write', key, type: 'ok', value, version: result.version })
        return false
      } catch (err) {
        history.record({ process, f: 'write', key, type: 'info', value, error: codeOf(err) })
        // A session that lost track of a write starts over as a new process (and client).
        return true
      }
    },
    options.noSessions !== true,
    'followers',
  )
  return { stop: () => running.stop(), finish: async () => {} }
}
