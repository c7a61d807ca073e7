/**
 * Workloads for leaderless mode, in plain HTTP (undici): any node takes any key, so each
 * operation goes to a node picked at random (with the client's seed) among the ring's members
 * as the cluster's views name them (`RingMembers`): clients follow ring changes.
 *
 * - ll-set: every client adds unique elements (a key written once, `PUT ?w=W`); after the
 *   faults heal, one read of every element ever attempted (`GET ?r=R`), recorded as one
 *   `readAll` whose value is the elements found. The lost-writes checker then compares: with
 *   R + W > N (and strict quorums, `sloppy=false`), every acknowledged add must be found.
 *
 * - ll-register: every process writes its own key (one writer per key), each write carrying the
 *   context of the previous one, with increasing values, and after each acknowledged write reads
 *   the key back at R through a random node. Values stand in for versions, so the session
 *   checker tests read-your-writes and monotonic reads: with R + W > N (strict quorums) a read
 *   must see the process's last acknowledged write, whatever the faults.
 *
 * An add is `ok` on 200, `fail` only when it certainly did not happen (a 400, or a connection
 * that was never made), and `info` otherwise: a 503 KV_ERR_QUORUM_UNAVAILABLE may still have
 * left the value on the coordinator or on a replica, and a timeout may have done anything.
 * After an info the client retires and its successor gets a new process number.
 */
import { keyPath } from '@kvstore/client'
import { Pool } from 'undici'
import type { ChaosCluster, ChaosNode } from './cluster.js'
import { prng } from './nemesis.js'
import type { Workload, WorkloadOptions } from './workloads.js'

/** Write and read quorums of a leaderless run: a number of replicas, 'quorum' or 'all'. */
export interface LeaderlessQuorums {
  w: string
  r: string
  /** Let writes count hinted stand-ins outside the preference list towards W. */
  sloppy: boolean
}

const requestTimeoutMs = 5000

/** Plain HTTP/1.1 to every node of the cluster, one pool each. One attempt per call. */
export class NodePools {
  private readonly pools = new Map<string, Pool>()

  constructor(private readonly tls: ChaosCluster['tls']) {}

  private pool(node: ChaosNode): Pool {
    let pool = this.pools.get(node.url)
    if (!pool) {
      pool = new Pool(node.url, {
        connect: this.tls,
        connections: 4,
        headersTimeout: requestTimeoutMs,
        bodyTimeout: requestTimeoutMs,
      })
      this.pools.set(node.url, pool)
    }
    return pool
  }

  async send(
    node: ChaosNode,
    method: 'GET' | 'PUT',
    path: string,
    body?: string,
    headers: Record<string, string> = {},
  ): Promise<{ status: number; body: string; headers: Record<string, unknown> }> {
    const res = await this.pool(node).request({
      method,
      path,
      ...(body !== undefined
        ? { body, headers: { 'content-type': 'application/octet-stream', ...headers } }
        : { headers }),
      signal: AbortSignal.timeout(requestTimeoutMs),
    })
    return { status: res.statusCode, body: await res.body.text(), headers: res.headers }
  }

  async close(): Promise<void> {
    await Promise.all([...this.pools.values()].map((p) => p.close()))
  }
}

/**
 * The coordinators a leaderless client picks from: the ring's members as the cluster
 * describes them (GET /v1/cluster, asked again every second of a member it knows, as the SDK
 * learns them), so clients follow joins, leaves and replacements: a new member is used once
 * the ring names it, a removed one no longer. Only a view at least as new (by ring version)
 * as the last replaces it. Until a view answers, the cluster's nodes.
 */
export class RingMembers {
  private members: ChaosNode[]
  private version = -1
  private turn = 0
  private refreshing: Promise<void> | null = null
  private readonly timer: NodeJS.Timeout

  constructor(private readonly cluster: ChaosCluster) {
    this.members = [...cluster.nodes]
    this.timer = setInterval(() => {
      this.refreshing ??= this.refresh().finally(() => {
        this.refreshing = null
      })
    }, 1000)
    this.timer.unref()
  }

  /** The members to coordinate through now. */
  get nodes(): readonly ChaosNode[] {
    return this.members
  }

  private async refresh(): Promise<void> {
    // Members it knows first, then the cluster's nodes (seeds), one answer is enough.
    const known = [...this.members, ...this.cluster.nodes]
    for (let i = 0; i < known.length; i++) {
      const node = known[(this.turn + i) % known.length] as ChaosNode
      try {
        const res = await fetch(`${node.url}/v1/cluster`, { signal: AbortSignal.timeout(1000) })
        if (!res.ok) {
          await res.arrayBuffer()
          continue
        }
        const view = (await res.json()) as {
          mode?: string
          ringVersion?: number
          members?: { id: string; clientUrl: string }[]
        }
        if (view.mode !== 'leaderless' || view.members === undefined) continue
        const version = view.ringVersion ?? 0
        if (version >= this.version && view.members.length > 0) {
          this.version = version
          this.members = view.members
            .map((m) => ({ id: m.id, url: m.clientUrl }))
            .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
        }
        this.turn++
        return
      } catch {
        // the next one
      }
    }
  }

  async stop(): Promise<void> {
    clearInterval(this.timer)
    await this.refreshing
  }
}

function errorCode(status: number, body: string): string {
  try {
    return (JSON.parse(body) as { error?: { code?: string } }).error?.code ?? `HTTP ${status}`
  } catch {
    return `HTTP ${status}`
  }
}

/**
 * The key is absent: 404 with KV_ERR_KEY_NOT_FOUND. Not any 404: a member removed from the
 * ring answers 404 KV_ERR_NOT_A_MEMBER, which says nothing about the key.
 */
function notFound(status: number, body: string): boolean {
  return status === 404 && errorCode(status, body) === 'KV_ERR_KEY_NOT_FOUND'
}

function transportCode(err: unknown): string {
  const e = err as { code?: string; cause?: { code?: string }; name?: string; message?: string }
  return e.code ?? e.cause?.code ?? e.name ?? String(e.message ?? err)
}

const pauseAfterError = () => new Promise((r) => setTimeout(r, 50))

/** A KV_ERR_QUORUM_UNAVAILABLE that says nothing was written (`written: false`). */
function refusedUnwritten(body: string): boolean {
  try {
    return (JSON.parse(body) as { error?: { written?: boolean } }).error?.written === false
  } catch {
    return false
  }
}

/**
 * ll-register: one key per process, written with increasing values (each write carrying the
 * context of the one before, so they replace each other) and read back after every
 * acknowledged write through a random node. Recorded as register writes and reads with the
 * value as the version, for the session checker.
 */
export function llRegisterWorkload(options: WorkloadOptions, quorums: LeaderlessQuorums): Workload {
  const { history, cluster } = options
  const pools = new NodePools(options.cluster.tls)
  const ring = new RingMembers(cluster)
  let stopping = false
  let nextProcess = options.clients
  const keyOf = (process: number) => `${options.prefix}r/${process}`
  const running = Array.from({ length: options.clients }, async (_, i) => {
    const random = prng(options.seed * 1000 + 500 + i)
    const pick = () => ring.nodes[Math.floor(random() * ring.nodes.length)] as ChaosNode
    let process = i
    let value = 0
    let context: string | undefined
    while (!stopping) {
      const key = keyOf(process)
      // Write the next value.
      value++
      let node = pick()
      history.record({ process, f: 'write', type: 'invoke', key, value })
      let written = false
      try {
        const res = await pools.send(
          node,
          'PUT',
          `/v1/kv/${keyPath(key)}?w=${quorums.w}&sloppy=${quorums.sloppy}`,
          String(value),
          context === undefined ? {} : { 'kv-context': context },
        )
        if (res.status === 200) {
          context = (JSON.parse(res.body) as { context: string }).context
          history.record({
            process,
            f: 'write',
            type: 'ok',
            key,
            value,
            version: value,
            node: node.id,
          })
          written = true
        } else if (res.status === 400 || refusedUnwritten(res.body)) {
          history.record({
            process,
            f: 'write',
            type: 'fail',
            key,
            value,
            error: errorCode(res.status, res.body),
            node: node.id,
          })
          value-- // never written: the next write reuses the value
          await pauseAfterError()
          continue
        } else {
          history.record({
            process,
            f: 'write',
            type: 'info',
            key,
            value,
            error: errorCode(res.status, res.body),
            node: node.id,
          })
        }
      } catch (err) {
        const code = transportCode(err)
        if (code === 'ECONNREFUSED') {
          history.record({
            process,
            f: 'write',
            type: 'fail',
            key,
            value,
            error: code,
            node: node.id,
          })
          value--
          await pauseAfterError()
          continue
        }
        history.record({
          process,
          f: 'write',
          type: 'info',
          key,
          value,
          error: code,
          node: node.id,
        })
      }
      if (!written) {
        // The outcome is unknown: this process retires; its successor takes a fresh key.
        await pauseAfterError()
        process = nextProcess++
        value = 0
        context = undefined
        continue
      }
      // Read it back through another random node.
      node = pick()
      history.record({ process, f: 'read', type: 'invoke', key, value: null })
      try {
        const res = await pools.send(
          node,
          'GET',
          `/v1/kv/${keyPath(key)}?r=${quorums.r}&format=json`,
        )
        if (res.status === 200) {
          const body = JSON.parse(res.body) as { siblings: { valueBase64: string }[] }
          const seen = body.siblings.map((s) =>
            Number(Buffer.from(s.valueBase64, 'base64').toString()),
          )
          const newest = Math.max(...seen)
          history.record({
            process,
            f: 'read',
            type: 'ok',
            key,
            value: newest,
            version: newest,
            node: node.id,
          })
        } else if (notFound(res.status, res.body)) {
          history.record({
            process,
            f: 'read',
            type: 'ok',
            key,
            value: null,
            version: 0,
            node: node.id,
          })
        } else {
          // A read changes nothing: one without an answer simply did not happen.
          history.record({
            process,
            f: 'read',
            type: 'fail',
            key,
            value: null,
            error: errorCode(res.status, res.body),
            node: node.id,
          })
          await pauseAfterError()
        }
      } catch (err) {
        history.record({
          process,
          f: 'read',
          type: 'fail',
          key,
          value: null,
          error: transportCode(err),
          node: node.id,
        })
        await pauseAfterError()
      }
    }
  })
  return {
    async stop() {
      stopping = true
      await Promise.all(running)
      await ring.stop()
    },
    async finish() {
      await pools.close()
    },
  }
}

export function llSetWorkload(options: WorkloadOptions, quorums: LeaderlessQuorums): Workload {
  const { history, cluster } = options
  const pools = new NodePools(options.cluster.tls)
  const setKey = (element: number) => `${options.prefix}s/${element}`
  const attempted: number[] = []
  let element = 0
  let stopping = false
  let nextProcess = options.clients
  const ring = new RingMembers(cluster)

  const running = Array.from({ length: options.clients }, async (_, i) => {
    const random = prng(options.seed * 1000 + i)
    let process = i
    while (!stopping) {
      const node = ring.nodes[Math.floor(random() * ring.nodes.length)] as ChaosNode
      const value = ++element
      attempted.push(value)
      history.record({ process, f: 'add', type: 'invoke', value })
      try {
        const res = await pools.send(
          node,
          'PUT',
          `/v1/kv/${keyPath(setKey(value))}?w=${quorums.w}&sloppy=${quorums.sloppy}`,
          '1',
        )
        if (res.status === 200) {
          const coordinator = (JSON.parse(res.body) as { coordinator?: string }).coordinator
          history.record({
            process,
            f: 'add',
            type: 'ok',
            value,
            node: coordinator ?? node.id,
          })
          continue
        }
        const code = errorCode(res.status, res.body)
        await pauseAfterError()
        if (res.status === 400 || refusedUnwritten(res.body)) {
          // Refused before anything was stored (a bad argument, or too few replicas
          // reachable to ever reach W): certainly not applied.
          history.record({ process, f: 'add', type: 'fail', value, error: code, node: node.id })
          continue
        }
        history.record({ process, f: 'add', type: 'info', value, error: code, node: node.id })
      } catch (err) {
        const code = transportCode(err)
        await pauseAfterError()
        if (code === 'ECONNREFUSED') {
          history.record({ process, f: 'add', type: 'fail', value, error: code, node: node.id })
          continue
        }
        history.record({ process, f: 'add', type: 'info', value, error: code, node: node.id })
      }
      process = nextProcess++
    }
  })

  return {
    async stop() {
      stopping = true
      await Promise.all(running)
      await ring.stop()
    },
    async finish() {
      try {
        await finalRead(options, quorums, pools, attempted, setKey)
      } finally {
        await pools.close()
      }
    },
  }
}

/**
 * Reads every attempted element once at R, spread over the nodes, retrying a read that gets
 * no definite answer (200 or 300: present; 404 KV_ERR_KEY_NOT_FOUND: absent) on the next node, for at most 60 s in
 * all. The `readAll` is ok only when every element got a definite answer; otherwise it fails,
 * and the checker cannot decide.
 */
async function finalRead(
  options: WorkloadOptions,
  quorums: LeaderlessQuorums,
  pools: NodePools,
  attempted: readonly number[],
  setKey: (element: number) => string,
): Promise<void> {
  const { history, cluster } = options
  const process = 1_000_000
  const deadline = Date.now() + 60_000
  history.record({ process, f: 'readAll', type: 'invoke', value: null })
  const present: number[] = []
  const unresolved: number[] = []
  const errors = new Map<string, number>()
  let next = 0
  const running = (c: ChaosCluster) => c.nodes.filter((n) => c.isRunning(n.id))
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      for (let i = next++; i < attempted.length; i = next++) {
        const value = attempted[i] as number
        let answer: boolean | null = null
        for (let attempt = 0; answer === null && Date.now() < deadline; attempt++) {
          const nodes = running(cluster)
          const node = nodes[(i + attempt) % Math.max(1, nodes.length)]
          if (node === undefined) break
          try {
            const res = await pools.send(
              node,
              'GET',
              `/v1/kv/${keyPath(setKey(value))}?r=${quorums.r}`,
            )
            if (res.status === 200 || res.status === 300) answer = true
            else if (notFound(res.status, res.body)) answer = false
            else {
              const code = errorCode(res.status, res.body)
              errors.set(code, (errors.get(code) ?? 0) + 1)
            }
          } catch (err) {
            const code = transportCode(err)
            errors.set(code, (errors.get(code) ?? 0) + 1)
          }
          if (answer === null) await pauseAfterError()
        }
        if (answer === true) present.push(value)
        else if (answer === null) unresolved.push(value)
      }
    }),
  )
  if (unresolved.length > 0) {
    history.record({
      process,
      f: 'readAll',
      type: 'fail',
      value: null,
      error: `${unresolved.length} of ${attempted.length} elements got no definite answer within 60 s (${[
        ...errors,
      ]
        .map(([k, v]) => `${k}: ${v}`)
        .join(', ')})`,
    })
    return
  }
  present.sort((a, b) => a - b)
  history.record({ process, f: 'readAll', type: 'ok', value: present })
}
