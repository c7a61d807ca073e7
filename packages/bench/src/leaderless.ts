/**
 * The leaderless suite (pnpm bench --mode leaderless): a 5-node leaderless cluster with N=3
 * replicas per key on this machine, measured at each write and read quorum.
 *
 *  1. Writes: `connections` closed-loop clients PUT fresh keys with `valueBytes`-byte values at
 *     w=1, w=quorum (2 of 3) and w=all (3 of 3), `durationS` each.
 *  2. Reads: `getKeys` keys are loaded first (w=all) and read for 3 s to warm the caches, then
 *     the clients GET random ones among them at r=1, r=quorum and r=all, `durationS` each.
 *
 * Each request goes to the first member of its key's preference list (the ring is rebuilt
 * here from GET /v1/cluster with `HashRing` from @kvstore/core), so no request pays the
 * forwarding hop; `--route any` sends them round-robin to every node instead.
 *
 * The load generator is this process (undici, plain HTTP/1.1 keep-alive); its CPU is
 * reported beside the figures, as is every node's. Nothing here is a target: on a small,
 * shared machine the figures say how the quorums compare, not how fast the store is.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { HashRing, prng } from '@kvstore/core'
import { keyPath } from '@kvstore/client'
import { Pool } from 'undici'
import { benchSecurity, type SecurityProfile } from './security.js'
import { fmt, gauge, say, sleep } from './common.js'
import { Latencies } from './latency.js'
import {
  cpuMeter,
  closeLeaderlessBenchCluster,
  startLeaderlessBenchCluster,
  type BenchMember,
} from './node-process.js'
import { machine } from './proc.js'
import { coresCell, publish, rateCells } from './report.js'

export type Route = 'preference' | 'any'

/** The Authorization header every request of the load carries (tls-auth), set once per run. */
let authHeaders: Record<string, string> = {}

export interface LeaderlessOptions {
  security: SecurityProfile
  durationS: number
  connections: number
  valueBytes: number
  getKeys: number
  nodes: number
  replicas: number
  route: Route
  out: string
}

interface ClusterInfo {
  mode: string
  replicas: number
  vnodes: number
  conflicts: string
  members: { id: string; hintBacklog?: number }[]
}

async function clusterInfo(url: string): Promise<ClusterInfo> {
  const res = await fetch(`${url}/v1/cluster`, { signal: AbortSignal.timeout(5000) })
  if (!res.ok) throw new Error(`GET ${url}/v1/cluster answered ${res.status}`)
  return (await res.json()) as ClusterInfo
}

/** Where each request goes: the key's coordinator of choice. */
class Router {
  private readonly ring: HashRing
  private readonly byId: Map<string, Pool>
  private readonly pools: Pool[]
  private turn = 0

  constructor(
    private readonly route: Route,
    members: BenchMember[],
    info: ClusterInfo,
    poolConnections: number,
    private readonly security: { connect?: object; authorization?: string | undefined } = {},
  ) {
    this.ring = new HashRing(
      info.members.map((m) => m.id),
      info.vnodes,
    )
    this.pools = members.map(
      (m) =>
        new Pool(m.url, {
          ...(security.connect !== undefined ? { connect: security.connect } : {}),
          connections: poolConnections,
          pipelining: 1,
          headersTimeout: 30_000,
          bodyTimeout: 30_000,
        }),
    )
    this.byId = new Map(members.map((m, i) => [m.id, this.pools[i] as Pool]))
  }

  poolFor(key: string): Pool {
    if (this.route === 'any') return this.pools[this.turn++ % this.pools.length] as Pool
    const head = this.ring.preferenceList(key, 1)[0] as string
    return this.byId.get(head) as Pool
  }

  async close(): Promise<void> {
    await Promise.all(this.pools.map((p) => p.close()))
  }
}

export interface LoadResult {
  requests: number
  ok: number
  durationS: number
  throughput: number
  latencyMs: { p50: number; p99: number; p999: number; max: number }
  /** Non-2xx answers and transport errors, by status and error code. */
  errors: Record<string, number>
  errorCount: number
  /** Reads that found siblings (300) or nothing (404), counted apart from `ok`. */
  siblings: number
  notFound: number
  loadGeneratorCores: number
}

interface Request {
  pool: Pool
  method: 'GET' | 'PUT'
  path: string
  body?: Buffer
}

function errorName(status: number, body: string): string {
  try {
    const code = (JSON.parse(body) as { error?: { code?: string } }).error?.code
    return `${status} ${code ?? ''}`.trim()
  } catch {
    return String(status)
  }
}

/**
 * Runs `connections` closed loops for `durationS` seconds (or until `count` requests were
 * sent, when given): each sends `next()` and waits for its answer. Latency is from send to
 * the end of the answer's body.
 */
async function closedLoop(options: {
  connections: number
  durationS?: number
  count?: number
  next: (i: number) => Request
}): Promise<LoadResult> {
  const latencies = new Latencies()
  const errors: Record<string, number> = {}
  let errorCount = 0
  let ok = 0
  let siblings = 0
  let notFound = 0
  let sent = 0
  const started = performance.now()
  const endAt = options.durationS === undefined ? Infinity : started + options.durationS * 1000
  const count = options.count ?? Infinity
  const cpuBefore = process.cpuUsage()
  const fail = (name: string) => {
    errors[name] = (errors[name] ?? 0) + 1
    errorCount++
  }
  await Promise.all(
    Array.from({ length: options.connections }, async () => {
      while (performance.now() < endAt && sent < count) {
        const request = options.next(sent++)
        const t0 = performance.now()
        try {
          const res = await request.pool.request({
            method: request.method,
            path: request.path,
            ...(request.body !== undefined
              ? {
                  body: request.body,
                  headers: { ...authHeaders, 'content-type': 'application/octet-stream' },
                }
              : { headers: authHeaders }),
          })
          const status = res.statusCode
          if (status === 200) {
            await res.body.dump()
            ok++
            latencies.record(performance.now() - t0)
          } else if (status === 300 || status === 404) {
            await res.body.dump()
            if (status === 300) siblings++
            else notFound++
            latencies.record(performance.now() - t0)
          } else {
            fail(errorName(status, await res.body.text()))
          }
        } catch (err) {
          fail((err as { code?: string }).code ?? (err as Error).message)
          await sleep(10)
        }
      }
    }),
  )
  const durationS = (performance.now() - started) / 1000
  const cpu = process.cpuUsage(cpuBefore)
  return {
    requests: sent,
    ok,
    durationS,
    throughput: ok / durationS,
    latencyMs: latencies.summary(),
    errors,
    errorCount,
    siblings,
    notFound,
    loadGeneratorCores: (cpu.user + cpu.system) / 1e6 / durationS,
  }
}

/** A counter summed over every node (0 where a node does not export it). */
async function clusterCounter(members: BenchMember[], name: string): Promise<number> {
  let sum = 0
  for (const m of members) sum += await gauge(m.url, name).catch(() => 0)
  return sum
}

type Quorum = '1' | 'quorum' | 'all'

interface Phase {
  operation: 'PUT' | 'GET'
  quorum: Quorum
  /** How many replicas that quorum is, with N = replicas. */
  replicasWaitedFor: number
  result: LoadResult
  nodeCores: Record<string, number>
  readRepairs: number
  hintsStored: number
}

/** Runs the leaderless suite; resolves once the report is written. */
export async function runLeaderlessBench(options: LeaderlessOptions): Promise<void> {
  const { durationS, connections, valueBytes, getKeys, nodes, replicas, route } = options
  if (replicas > nodes) throw new Error(`--replicas ${replicas} needs at least as many --nodes`)
  const quorumOf = (q: Quorum) =>
    q === '1' ? 1 : q === 'all' ? replicas : Math.floor(replicas / 2) + 1
  const work = await mkdtemp(join(tmpdir(), 'kv-bench-leaderless-'))
  const security = await benchSecurity(options.security, work)
  const phases: Phase[] = []
  const value = Buffer.alloc(valueBytes, 'v')
  let info: ClusterInfo | null = null
  let prefill: LoadResult | null = null
  try {
    say(`== starting a ${nodes}-node leaderless cluster (N=${replicas})`)
    const cluster = await startLeaderlessBenchCluster(work, nodes, security, [
      '--replicas',
      String(replicas),
    ])
    const members = cluster.members
    try {
      info = await clusterInfo((members[0] as BenchMember).url)
      if (info.mode !== 'leaderless') {
        throw new Error(`the nodes run in ${info.mode} mode, not leaderless`)
      }
      const authorization = await security.authorization((members[0] as BenchMember).url)
      authHeaders = authorization === undefined ? {} : { authorization }
      const router = new Router(route, members, info, connections, {
        ...(security.client.tls !== undefined ? { connect: security.client.tls } : {}),
      })
      try {
        const measure = async (
          operation: Phase['operation'],
          quorum: Quorum,
          run: () => Promise<LoadResult>,
        ) => {
          const repairsBefore = await clusterCounter(members, 'kv_read_repairs_total')
          const hintsBefore = await clusterCounter(members, 'kv_hints_stored_total')
          const meter = await cpuMeter(members)
          const result = await run()
          const nodeCores = await meter.stop()
          const phase: Phase = {
            operation,
            quorum,
            replicasWaitedFor: quorumOf(quorum),
            result,
            nodeCores,
            readRepairs: (await clusterCounter(members, 'kv_read_repairs_total')) - repairsBefore,
            hintsStored: (await clusterCounter(members, 'kv_hints_stored_total')) - hintsBefore,
          }
          phases.push(phase)
          say(
            `   ${fmt(result.throughput)}/s, p99 ${fmt(result.latencyMs.p99, 1)} ms, ${result.errorCount} errors${result.notFound > 0 ? `, ${result.notFound} not found` : ''}${result.siblings > 0 ? `, ${result.siblings} with siblings` : ''}`,
          )
        }

        say('   warming up (w=quorum, 3 s)...')
        let warm = 0
        await closedLoop({
          connections,
          durationS: 3,
          next: () => {
            const key = `bench-ll/warm/${warm++}`
            return {
              pool: router.poolFor(key),
              method: 'PUT',
              path: `/v1/kv/${keyPath(key)}?w=quorum`,
              body: value,
            }
          },
        })

        for (const w of ['1', 'quorum', 'all'] as const) {
          say(`== PUT w=${w} for ${durationS} s with ${connections} connections`)
          let counter = 0
          await measure('PUT', w, () =>
            closedLoop({
              connections,
              durationS,
              next: () => {
                const key = `bench-ll/w${w}/${counter++}`
                return {
                  pool: router.poolFor(key),
                  method: 'PUT',
                  path: `/v1/kv/${keyPath(key)}?w=${w}`,
                  body: value,
                }
              },
            }),
          )
          await sleep(500)
        }

        say(`== reads: loading ${fmt(getKeys)} keys (w=all)...`)
        prefill = await closedLoop({
          connections,
          count: getKeys,
          next: (i) => {
            const key = `bench-ll/get/${i}`
            return {
              pool: router.poolFor(key),
              method: 'PUT',
              path: `/v1/kv/${keyPath(key)}?w=all`,
              body: value,
            }
          },
        })
        if (prefill.errorCount > 0) {
          throw new Error(
            `loading the read keys failed for ${prefill.errorCount} keys: ${JSON.stringify(prefill.errors)}`,
          )
        }
        say(`   loaded in ${fmt(prefill.durationS, 1)} s`)
        say('   warming up reads (r=quorum, 3 s)...')
        const warmRandom = prng(7)
        await closedLoop({
          connections,
          durationS: 3,
          next: () => {
            const key = `bench-ll/get/${Math.floor(warmRandom() * getKeys)}`
            return {
              pool: router.poolFor(key),
              method: 'GET',
              path: `/v1/kv/${keyPath(key)}?r=quorum`,
            }
          },
        })
        for (const r of ['1', 'quorum', 'all'] as const) {
          say(`== GET r=${r} for ${durationS} s with ${connections} connections`)
          const random = prng(42)
          await measure('GET', r, () =>
            closedLoop({
              connections,
              durationS,
              next: () => {
                const key = `bench-ll/get/${Math.floor(random() * getKeys)}`
                return {
                  pool: router.poolFor(key),
                  method: 'GET',
                  path: `/v1/kv/${keyPath(key)}?r=${r}`,
                }
              },
            }),
          )
        }
      } finally {
        await router.close()
      }
    } finally {
      await closeLeaderlessBenchCluster(cluster)
    }
  } finally {
    await rm(work, { recursive: true, force: true })
  }

  const errorText = (r: LoadResult) =>
    r.errorCount === 0
      ? '0'
      : `${r.errorCount} (${Object.entries(r.errors)
          .map(([k, v]) => `${k}: ${v}`)
          .join(', ')})`
  const rows = phases.map((p) => {
    const name =
      p.operation === 'PUT'
        ? `PUT w=${p.quorum} (${p.replicasWaitedFor} of ${replicas})`
        : `GET r=${p.quorum} (${p.replicasWaitedFor} of ${replicas})`
    const r = p.result
    return `| ${name} | ${rateCells(r)} | ${errorText(r)} | ${p.operation === 'GET' ? `${r.notFound} / ${r.siblings}` : ''} | ${p.readRepairs} | ${p.hintsStored} | ${coresCell(p.nodeCores)} | ${fmt(r.loadGeneratorCores, 2)} |`
  })
  const routeText =
    route === 'preference'
      ? "each request to the first member of its key's preference list"
      : 'requests round-robin over every node (a write outside its preference list is forwarded)'
  await publish(options.out, {
    suite: 'leaderless',
    command: `pnpm bench --mode leaderless --duration ${durationS} --connections ${connections} --value-bytes ${valueBytes} --get-keys ${getKeys} --nodes ${nodes} --replicas ${replicas} --route ${route}`,
    summary: `${nodes}-node leaderless cluster (N=${replicas}, ${info?.vnodes ?? '?'} vnodes, conflicts=${info?.conflicts ?? '?'}) and the load generator on one machine: ${connections} closed-loop connections (undici, HTTP/1.1), ${routeText}; ${valueBytes}-byte values, fresh keys for writes, ${fmt(getKeys)} preloaded keys (w=all) for reads; ${durationS} s per row; fsync on.`,
    body: [
      '| operation | ops/s | p50 ms | p99 ms | p99.9 ms | errors | GET not found / siblings | read repairs | hints stored | node CPU (cores) | load generator CPU |',
      '|---|---:|---:|---:|---:|---|---:|---:|---:|---|---:|',
      ...rows,
      '',
      `Loading the ${fmt(getKeys)} read keys at w=all took ${prefill ? fmt(prefill.durationS, 1) : '?'} s. Every process shares ${(await machine()).cores} cores: the figures compare the quorums with each other on this machine and are no measure of capacity.`,
    ],
    json: {
      nodes,
      replicas,
      vnodes: info?.vnodes ?? null,
      conflicts: info?.conflicts ?? null,
      route,
      connections,
      valueBytes,
      durationS,
      getKeys,
      prefill,
      phases,
    },
  })
}
