/**
 * Lease expiry accuracy (`pnpm bench --suite leases`): on a 3-node single-leader cluster, keys
 * written with `?ttlMs=` for each TTL, --lease-keys of them per TTL (in waves of 20 at once),
 * and for each the time from the PUT's acknowledgement until a GET on the leader, and on a
 * follower, first answers 404. The lateness (that time minus the TTL) is the figure: how late
 * after its TTL a key really vanishes, as a client sees it. It includes the lessor's tick (10 ms),
 * writing the Expiry entry (a quorum commit for the follower) and the 5 ms poll.
 *
 * The lease's deadline starts when the leader applies the grant, before the PUT is
 * acknowledged, so lateness can be slightly negative (by the PUT's commit time), never more.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Pool } from 'undici'
import { fmt, say, sleep } from './common.js'
import { startBenchCluster } from './node-process.js'
import { publish } from './report.js'
import { benchSecurity, type SecurityProfile } from './security.js'

export interface LeaseBenchOptions {
  security: SecurityProfile
  keys: number
  ttls: number[]
  out: string
  command: string
}

interface Spread {
  n: number
  min: number
  p50: number
  p90: number
  p99: number
  max: number
}

function spreadOf(values: number[]): Spread {
  const sorted = [...values].sort((a, b) => a - b)
  const at = (p: number) =>
    sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? 0
  return {
    n: sorted.length,
    min: sorted[0] ?? 0,
    p50: at(50),
    p90: at(90),
    p99: at(99),
    max: sorted[sorted.length - 1] ?? 0,
  }
}

const waveSize = 20
const pollMs = 5

export async function runLeasesBench(options: LeaseBenchOptions): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'kv-bench-leases-'))
  const security = await benchSecurity(options.security, dir)
  const cluster = await startBenchCluster(join(dir, 'cluster'), 3, security)
  const connect = security.client.tls ?? {}
  const leader = cluster.leader
  const follower = cluster.followers[0] as (typeof cluster.followers)[0]
  const toLeader = new Pool(leader.url, { connections: waveSize, connect })
  const toFollower = new Pool(follower.url, { connections: waveSize, connect })
  const status = async (pool: Pool, path: string, method = 'GET', body?: string) => {
    const res = await pool.request({ method, path, ...(body !== undefined ? { body } : {}) })
    await res.body.text()
    return res.statusCode
  }
  /** Polls until the key is gone; returns when (performance.now()). */
  const goneAt = async (pool: Pool, key: string, from: number): Promise<number> => {
    const wait = from - performance.now()
    if (wait > 0) await sleep(wait)
    for (;;) {
      if ((await status(pool, `/v1/kv/${key}`)) === 404) return performance.now()
      await sleep(pollMs)
    }
  }
  const rows: { ttlMs: number; leader: Spread; follower: Spread }[] = []
  try {
    for (const ttlMs of options.ttls) {
      say(`TTL ${ttlMs} ms: ${options.keys} keys in waves of ${waveSize}`)
      const onLeader: number[] = []
      const onFollower: number[] = []
      for (let done = 0; done < options.keys; done += waveSize) {
        const n = Math.min(waveSize, options.keys - done)
        await Promise.all(
          Array.from({ length: n }, async (_, i) => {
            const key = `bench/ttl-${ttlMs}/${done + i}`
            const code = await status(
              toLeader,
              `/v1/kv/${key}?ttlMs=${ttlMs}&ack=quorum`,
              'PUT',
              'v',
            )
            const acked = performance.now()
            if (code !== 200) throw new Error(`PUT ${key} answered ${code}`)
            // Start polling a little before the TTL: a key never goes much earlier.
            const from = acked + ttlMs - 20
            const [l, f] = await Promise.all([
              goneAt(toLeader, key, from),
              goneAt(toFollower, key, from),
            ])
            onLeader.push(l - acked - ttlMs)
            onFollower.push(f - acked - ttlMs)
          }),
        )
      }
      rows.push({ ttlMs, leader: spreadOf(onLeader), follower: spreadOf(onFollower) })
    }
    const ms = (n: number) => fmt(n, 1)
    const body = [
      '| TTL ms | keys | where | min ms | p50 ms | p90 ms | p99 ms | max ms |',
      '|---:|---:|---|---:|---:|---:|---:|---:|',
      ...rows.flatMap((r) =>
        (['leader', 'follower'] as const).map((where) => {
          const s = r[where]
          return `| ${r.ttlMs} | ${s.n} | ${where === 'leader' ? `leader ${leader.id}` : `follower ${follower.id}`} | ${ms(s.min)} | ${ms(s.p50)} | ${ms(s.p90)} | ${ms(s.p99)} | ${ms(s.max)} |`
        }),
      ),
      '',
      `Lateness: the time from a PUT ?ttlMs=T's acknowledgement until a GET first answers 404, minus T (polled every ${pollMs} ms from T - 20 ms). The leader decides expiry on a ${10} ms tick and writes it as one Expiry entry; a follower sees it once that entry reaches it.`,
    ]
    await publish(options.out, {
      suite: 'leases',
      command: options.command,
      summary: `Lease expiry accuracy on a 3-node single-leader cluster (${options.security}): keys written with ?ttlMs=, ${options.keys} per TTL, ${waveSize} at once.`,
      body,
      json: { keys: options.keys, waveSize, pollMs, rows },
    })
  } finally {
    await toLeader.close()
    await toFollower.close()
    await cluster.stop()
    await rm(dir, { recursive: true, force: true })
  }
}
