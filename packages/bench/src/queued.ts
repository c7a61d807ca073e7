/**
 * Queued writes (ack=queued), a script of its own beside the suites (it does not touch
 * main.ts): `node packages/bench/dist/queued.js [--duration S] [--outage-s S] [--clients N]
 * [--security tls-auth|tls|plaintext] [--out DIR]`. On a 3-node single-leader cluster:
 *
 * 1. Accept latency against quorum: --clients closed loops for --duration seconds each, PUT
 *    ack=quorum to the leader, then PUT ack=queued to a follower (the 202 is the answer: the
 *    write is fsynced in that member's outbox), then ack=queued to the leader itself.
 * 2. Drain after an outage: the leader and the other follower are paused (SIGSTOP), so no
 *    leader can exist, for --outage-s seconds (10) while the clients queue writes on the
 *    remaining follower; then both resume and the outbox drains to whoever leads. The drain rate
 *    is the entries queued over the time from the resume until kv_outbox_entries is 0 (every
 *    write applied with ack=quorum and its ticket recorded).
 *
 * Prints a table and writes JSON and markdown to --out (bench-results), like the suites.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { Pool } from 'undici'
import { fmt, gauge, say, sleep } from './common.js'
import { Latencies, type LatencySummary } from './latency.js'
import { startBenchCluster } from './node-process.js'
import { publish } from './report.js'
import { benchSecurity, securityProfiles, type SecurityProfile } from './security.js'

interface Phase {
  name: string
  target: string
  writes: number
  errors: number
  perSecond: number
  latency: LatencySummary
}

/** Closed loops of PUTs to `url` for `seconds`; `path(i)` names each write. */
async function closedLoop(
  pool: Pool,
  clients: number,
  seconds: number,
  path: (client: number, i: number) => string,
  expected: number,
): Promise<{ latencies: Latencies; writes: number; errors: number; seconds: number }> {
  const latencies = new Latencies()
  let writes = 0
  let errors = 0
  const started = performance.now()
  const until = started + seconds * 1000
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      for (let i = 0; performance.now() < until; i++) {
        const t0 = performance.now()
        try {
          const res = await pool.request({
            method: 'PUT',
            path: path(c, i),
            body: 'v'.repeat(100),
            headersTimeout: 10_000,
            bodyTimeout: 10_000,
          })
          await res.body.text()
          if (res.statusCode === expected) {
            latencies.record(performance.now() - t0)
            writes++
          } else errors++
        } catch {
          errors++
        }
      }
    }),
  )
  return { latencies, writes, errors, seconds: (performance.now() - started) / 1000 }
}

export async function runQueuedBench(options: {
  security: SecurityProfile
  clients: number
  durationS: number
  outageS: number
  out: string
  command: string
}): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'kv-bench-queued-'))
  const security = await benchSecurity(options.security, dir)
  const cluster = await startBenchCluster(join(dir, 'cluster'), 3, security)
  const connect = security.client.tls ?? {}
  const pools: Pool[] = []
  const poolOf = (url: string) => {
    const pool = new Pool(url, { connections: options.clients, connect })
    pools.push(pool)
    return pool
  }
  try {
    const leader = cluster.leader
    const [follower, other] = cluster.followers as [
      (typeof cluster.followers)[0],
      (typeof cluster.followers)[0],
    ]
    const toLeader = poolOf(leader.url)
    const toFollower = poolOf(follower.url)
    const phases: Phase[] = []
    const run = async (
      name: string,
      target: string,
      pool: Pool,
      query: string,
      expected: number,
    ) => {
      say(`${name}: ${options.clients} clients for ${options.durationS} s`)
      const r = await closedLoop(
        pool,
        options.clients,
        options.durationS,
        (c, i) => `/v1/kv/bench/${name}/${c}/${i}?${query}`,
        expected,
      )
      phases.push({
        name,
        target,
        writes: r.writes,
        errors: r.errors,
        perSecond: r.writes / r.seconds,
        latency: r.latencies.summary(),
      })
    }
    // Warm up connections and the JIT.
    await closedLoop(toLeader, options.clients, 1, (c, i) => `/v1/kv/warm/${c}/${i}`, 200)
    await run('quorum', `leader ${leader.id}`, toLeader, 'ack=quorum', 200)
    await run('queued', `follower ${follower.id}`, toFollower, 'ack=queued', 202)
    await until0(follower.url, 60_000)
    await run('queued-on-leader', `leader ${leader.id}`, toLeader, 'ack=queued', 202)
    await until0(leader.url, 60_000)

    // The outage: nobody can lead while two of three members are paused.
    say(
      `outage: ${leader.id} and ${other.id} paused for ${options.outageS} s; queueing on ${follower.id}`,
    )
    cluster.pause(leader.id)
    cluster.pause(other.id)
    let queued: Awaited<ReturnType<typeof closedLoop>>
    try {
      queued = await closedLoop(
        toFollower,
        options.clients,
        options.outageS,
        (c, i) => `/v1/kv/bench/outage/${c}/${i}?ack=queued`,
        202,
      )
    } finally {
      cluster.resume(leader.id)
      cluster.resume(other.id)
    }
    const resumedAt = performance.now()
    const atResume = await gauge(follower.url, 'kv_outbox_entries')
    let firstDrainAt = Infinity
    for (;;) {
      const left = await gauge(follower.url, 'kv_outbox_entries')
      if (left < atResume && firstDrainAt === Infinity) firstDrainAt = performance.now()
      if (left === 0) break
      if (performance.now() - resumedAt > 300_000) throw new Error(`${left} entries still queued`)
      await sleep(20)
    }
    const drainedAt = performance.now()
    const drainS = (drainedAt - resumedAt) / 1000
    const flowS = (drainedAt - Math.min(firstDrainAt, drainedAt)) / 1000
    const drain = {
      queued: queued.writes,
      refused: queued.errors,
      entriesAtResume: atResume,
      acceptPerSecond: queued.writes / queued.seconds,
      acceptLatency: queued.latencies.summary(),
      drainSeconds: drainS,
      /** Entries over the time from the resume to an empty outbox (election or lease included). */
      drainPerSecond: atResume / drainS,
      /** From the first entry recorded to the last: the forwarder's own rate. */
      flowSeconds: flowS,
      flowPerSecond: flowS > 0 ? atResume / flowS : 0,
    }
    const ms = (n: number) => fmt(n, 2)
    const body = [
      '| phase | to | writes | writes/s | p50 ms | p99 ms | max ms | errors |',
      '|---|---|---:|---:|---:|---:|---:|---:|',
      ...phases.map(
        (p) =>
          `| ${p.name} | ${p.target} | ${p.writes} | ${fmt(p.perSecond)} | ${ms(p.latency.p50)} | ${ms(p.latency.p99)} | ${ms(p.latency.max)} | ${p.errors} |`,
      ),
      `| queued during the outage | follower ${follower.id} | ${drain.queued} | ${fmt(drain.acceptPerSecond)} | ${ms(drain.acceptLatency.p50)} | ${ms(drain.acceptLatency.p99)} | ${ms(drain.acceptLatency.max)} | ${drain.refused} |`,
      '',
      `Drain after the ${options.outageS} s outage: ${drain.entriesAtResume} entries queued on ${follower.id}; empty ${fmt(drain.drainSeconds, 2)} s after the resume (${fmt(drain.drainPerSecond)} entries/s, the new election or lease included), ${fmt(drain.flowSeconds, 2)} s from the first entry applied (${fmt(drain.flowPerSecond)} entries/s). Each entry is applied by the leader with ack=quorum and its ticket fsynced on ${follower.id}.`,
    ]
    await publish(options.out, {
      suite: 'queued',
      command: options.command,
      summary: `Queued writes (ack=queued) against quorum on a 3-node single-leader cluster (${options.security}), ${options.clients} closed-loop clients, 100-byte values.`,
      body,
      json: {
        clients: options.clients,
        durationS: options.durationS,
        outageS: options.outageS,
        phases,
        drain,
      },
    })
  } finally {
    await Promise.all(pools.map((p) => p.close()))
    await cluster.stop()
    await rm(dir, { recursive: true, force: true })
  }
}

/** Waits until `url`'s outbox is empty. */
async function until0(url: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while ((await gauge(url, 'kv_outbox_entries')) !== 0) {
    if (Date.now() > deadline) throw new Error(`the outbox of ${url} did not drain`)
    await sleep(20)
  }
}

if (
  process.argv[1] !== undefined &&
  import.meta.url.endsWith(process.argv[1].split('/').pop() ?? '-')
) {
  const { values } = parseArgs({
    options: {
      security: { type: 'string', default: 'tls-auth' },
      clients: { type: 'string', default: '16' },
      duration: { type: 'string', default: '5' },
      'outage-s': { type: 'string', default: '10' },
      out: { type: 'string', default: 'bench-results' },
    },
  })
  const security = values.security as SecurityProfile
  if (!securityProfiles.includes(security))
    throw new Error(`--security: one of ${securityProfiles.join(', ')}`)
  await runQueuedBench({
    security,
    clients: Number(values.clients),
    durationS: Number(values.duration),
    outageS: Number(values['outage-s']),
    out: String(values.out),
    command: `node packages/bench/dist/queued.js ${process.argv.slice(2).join(' ')}`.trim(),
  })
  process.exit(0)
}
