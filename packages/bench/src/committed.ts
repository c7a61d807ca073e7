/**
 * `pnpm bench --suite committed`: the cost of `consistency=committed` reads against default
 * reads, on a 3-node single-leader cluster holding --get-keys keys (100 bytes each). Closed
 * loops of GETs of random keys (--connections concurrent requests, --duration seconds per
 * phase), each level right after the other on the same node:
 *
 * 1. idle: nothing uncommitted, so a committed read is the default read plus a comparison
 *    (or, on a read-cache miss, one LevelDB snapshot read);
 * 2. under writes: ack=async PUTs of random keys run against the leader meanwhile, so some
 *    entries are always above the commit LSN;
 * 3. a window of uncommitted entries: both followers are paused (SIGSTOP) while --window
 *    (2000) ack=async writes overwrite or delete random keys; committed reads on the leader then
 *    walk undo records back (a deleted key scans the whole window).
 *
 * Prints a table and writes JSON and markdown to --out (bench-results).
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Pool } from 'undici'
import { fmt, loadInBatches, say } from './common.js'
import { Latencies, type LatencySummary } from './latency.js'
import { startBenchCluster } from './node-process.js'
import { publish } from './report.js'
import { benchSecurity, type SecurityProfile } from './security.js'

interface Phase {
  scenario: string
  node: string
  level: 'default' | 'committed'
  reads: number
  errors: number
  perSecond: number
  latency: LatencySummary
}

/** Closed loops of GETs of random keys for `seconds`; 200 and 404 both count as answers. */
async function readLoop(
  pool: Pool,
  concurrency: number,
  seconds: number,
  keys: number,
  query: string,
): Promise<{ latencies: Latencies; reads: number; errors: number; seconds: number }> {
  const latencies = new Latencies()
  let reads = 0
  let errors = 0
  const started = performance.now()
  const until = started + seconds * 1000
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < until) {
        const key = Math.floor(Math.random() * keys)
        const t0 = performance.now()
        try {
          const res = await pool.request({ method: 'GET', path: `/v1/kv/b/${key}${query}` })
          await res.body.arrayBuffer()
          if (res.statusCode === 200 || res.statusCode === 404) {
            latencies.record(performance.now() - t0)
            reads++
          } else errors++
        } catch {
          errors++
        }
      }
    }),
  )
  return { latencies, reads, errors, seconds: (performance.now() - started) / 1000 }
}

export async function runCommittedBench(options: {
  security: SecurityProfile
  durationS: number
  connections: number
  getKeys: number
  window: number
  out: string
  command: string
}): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'kv-bench-committed-'))
  const security = await benchSecurity(options.security, dir)
  const cluster = await startBenchCluster(join(dir, 'cluster'), 3, security)
  const connect = security.client.tls ?? {}
  const pools: Pool[] = []
  const poolOf = (url: string) => {
    const pool = new Pool(url, { connections: Math.min(options.connections, 32), connect })
    pools.push(pool)
    return pool
  }
  const value = 'v'.repeat(100)
  try {
    const leader = cluster.leader
    const follower = cluster.followers[0] as (typeof cluster.followers)[0]
    const other = cluster.followers[1] as (typeof cluster.followers)[0]
    const toLeader = poolOf(leader.url)
    const toFollower = poolOf(follower.url)
    say(`loading ${fmt(options.getKeys)} keys`)
    await loadInBatches(
      { total: options.getKeys, batch: 200, workers: 8, timeoutMs: 600_000, what: 'keys' },
      async (start, end) => {
        const ops = []
        for (let k = start; k < end; k++) ops.push({ op: 'put', key: `b/${k}`, value })
        const res = await toLeader.request({
          method: 'POST',
          path: '/v1/batch?ack=all',
          body: JSON.stringify({ ops }),
          headers: { 'content-type': 'application/json' },
        })
        const text = await res.body.text()
        if (res.statusCode !== 200) throw new Error(`loading: ${res.statusCode} ${text}`)
      },
    )
    const phases: Phase[] = []
    const measure = async (scenario: string, node: 'leader' | 'follower') => {
      const pool = node === 'leader' ? toLeader : toFollower
      const id = node === 'leader' ? leader.id : follower.id
      for (const level of ['default', 'committed'] as const) {
        say(`${scenario}: ${level} reads on ${id} for ${options.durationS} s`)
        const r = await readLoop(
          pool,
          options.connections,
          options.durationS,
          options.getKeys,
          level === 'committed' ? '?consistency=committed' : '',
        )
        phases.push({
          scenario,
          node: `${node} ${id}`,
          level,
          reads: r.reads,
          errors: r.errors,
          perSecond: r.reads / r.seconds,
          latency: r.latencies.summary(),
        })
      }
    }
    // Warm up connections, the JIT and the read cache.
    await readLoop(toLeader, options.connections, 2, options.getKeys, '')
    await readLoop(toFollower, options.connections, 2, options.getKeys, '')
    await measure('idle', 'leader')
    await measure('idle', 'follower')

    // Under ack=async writes of random keys.
    let writing = true
    let writes = 0
    const writers = Array.from({ length: 4 }, async () => {
      while (writing) {
        const k = Math.floor(Math.random() * options.getKeys)
        const res = await toLeader.request({
          method: 'PUT',
          path: `/v1/kv/b/${k}?ack=async`,
          body: value,
        })
        await res.body.arrayBuffer()
        if (res.statusCode === 200) writes++
      }
    })
    const writesFrom = performance.now()
    await measure('under async writes', 'leader')
    await measure('under async writes', 'follower')
    writing = false
    await Promise.all(writers)
    const writesPerSecond = writes / ((performance.now() - writesFrom) / 1000)

    // A window of uncommitted entries on the leader: the followers are paused.
    say(`window: ${follower.id} and ${other.id} paused; ${options.window} async writes`)
    cluster.pause(follower.id)
    cluster.pause(other.id)
    let windowEntries = 0
    try {
      for (let i = 0; i < options.window; i++) {
        const k = Math.floor(Math.random() * options.getKeys)
        const res = await toLeader.request({
          method: i % 10 === 9 ? 'DELETE' : 'PUT',
          path: `/v1/kv/b/${k}?ack=async`,
          ...(i % 10 === 9 ? {} : { body: value }),
        })
        await res.body.arrayBuffer()
        if (res.statusCode === 200) windowEntries++
      }
      await measure(`${fmt(windowEntries)} entries uncommitted`, 'leader')
    } finally {
      cluster.resume(follower.id)
      cluster.resume(other.id)
    }

    const ms = (n: number) => fmt(n, 2)
    const ratio = (p: Phase) => {
      const base = phases.find(
        (q) => q.scenario === p.scenario && q.node === p.node && q.level === 'default',
      )
      return base === undefined || p.level === 'default'
        ? ''
        : `${fmt(p.perSecond / base.perSecond, 2)}x`
    }
    const body = [
      '| scenario | node | level | reads/s | vs default | p50 ms | p99 ms | max ms | errors |',
      '|---|---|---|---:|---:|---:|---:|---:|---:|',
      ...phases.map(
        (p) =>
          `| ${p.scenario} | ${p.node} | ${p.level} | ${fmt(p.perSecond)} | ${ratio(p)} | ${ms(p.latency.p50)} | ${ms(p.latency.p99)} | ${ms(p.latency.max)} | ${p.errors} |`,
      ),
      '',
      `Under async writes: ${fmt(writesPerSecond)} PUT/s (4 closed loops on the leader) ran beside the reads.`,
      `The window: ${fmt(windowEntries)} ack=async writes (one in ten a delete) on the leader while both followers were paused; a committed read of a key they changed walks its undo records back, and one of a key absent now scans every undo record in the window.`,
    ]
    await publish(options.out, {
      suite: 'committed',
      command: options.command,
      summary: `consistency=committed reads against default reads on a 3-node single-leader cluster (${options.security}), ${fmt(options.getKeys)} keys of 100 bytes, GETs of random keys from ${options.connections} closed loops, ${options.durationS} s per phase.`,
      body,
      json: {
        keys: options.getKeys,
        durationS: options.durationS,
        connections: options.connections,
        window: windowEntries,
        writesPerSecond,
        phases,
      },
    })
  } finally {
    await Promise.all(pools.map((p) => p.close()))
    await cluster.stop()
    await rm(dir, { recursive: true, force: true })
  }
}
