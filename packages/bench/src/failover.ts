/**
 * The failover suite (pnpm bench --suite failover): how long a 3-node cluster cannot take
 * writes when its leader is killed with -9, as a client sees it.
 *
 * Each trial: 8 SDK clients write (ack=quorum) in closed loops for 2 s; the leader gets
 * SIGKILL; the time until the next write succeeds through the SDK (which finds the new leader
 * and retries with the same request id) is the unavailability. Elections per failover are the
 * epoch increase (a pre-vote that fails does not raise the epoch). Then the killed node is
 * restarted as a follower, the cluster is left to catch up, and the next trial kills the new
 * leader. Defaults throughout: heartbeat 100 ms, election timeout 1000-2000 ms.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { KvClient } from '@kvstore/client'
import { fmt, say, sleep } from './common.js'
import { Latencies } from './latency.js'
import { startBenchCluster, type BenchCluster } from './node-process.js'
import { publish, targetTable } from './report.js'
import { benchSecurity, type BenchSecurity, type SecurityProfile } from './security.js'

export interface FailoverOptions {
  security: SecurityProfile
  trials: number
  out: string
}

interface Trial {
  killed: string
  newLeader: string
  /** From SIGKILL to the first write that succeeded through the SDK afterwards. */
  unavailableMs: number
  /** From SIGKILL until the survivors named a writable leader (polling /v1/cluster). */
  electedMs: number
  /** Epoch increase across the failover: 1 means one election decided it. */
  elections: number
  /** Writes acknowledged before the kill that the new leader does not have (must be 0). */
  lost: number
  /** Writes that failed through the SDK (they should ride through). */
  failedWrites: number
}

const writers = 8

async function epochOf(url: string): Promise<number> {
  const res = await fetch(`${url}/v1/status`, { signal: AbortSignal.timeout(2000) })
  return ((await res.json()) as { epoch: number }).epoch
}

async function caughtUp(cluster: BenchCluster, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const statuses = await Promise.all(
      cluster.members.map((m) =>
        fetch(`${m.url}/v1/status`, { signal: AbortSignal.timeout(2000) })
          .then((r) => r.json() as Promise<{ appliedLsn: number }>)
          .catch(() => ({ appliedLsn: -1 })),
      ),
    )
    const lsns = statuses.map((s) => s.appliedLsn)
    if (lsns.every((l) => l === lsns[0] && l > 0)) return
    if (Date.now() > deadline) throw new Error(`members did not catch up: ${lsns.join(', ')}`)
    await sleep(50)
  }
}

async function runTrial(
  cluster: BenchCluster,
  index: number,
  security: BenchSecurity,
): Promise<Trial> {
  const client = new KvClient({
    ...security.client,
    url: cluster.members.map((m) => m.url),
    ack: 'quorum',
    readFrom: 'leader',
  })
  const old = cluster.leader
  const epochBefore = await epochOf(old.url)
  let killedAt = Infinity
  let firstAfterKill = Infinity
  let stop = false
  let failedWrites = 0
  const ackedBeforeKill: string[] = []
  const loops = Array.from({ length: writers }, async (_, w) => {
    for (let i = 0; !stop; i++) {
      const key = `failover/${index}/${w}/${i}`
      try {
        const result = await client.put(key, 'v', { requestId: `fo-${index}-${w}-${i}` })
        const now = performance.now()
        // The session token is s1.<epoch>.<lsn> (base 36): a write of a later epoch went
        // through the new leader. (An answer of the old leader can still arrive just after
        // the kill.)
        const epoch = parseInt(result.session.split('.')[1] ?? '0', 36)
        if (epoch > epochBefore) firstAfterKill = Math.min(firstAfterKill, now)
        else ackedBeforeKill.push(key)
      } catch {
        failedWrites++
      }
    }
  })
  await sleep(2000)
  killedAt = performance.now()
  await cluster.kill(old.id)
  // Watch the survivors for a writable leader, to split detection+election from the client.
  let electedAt = Infinity
  const survivors = cluster.members.filter((m) => m.id !== old.id)
  while (electedAt === Infinity && performance.now() - killedAt < 30_000) {
    const views = await Promise.all(
      survivors.map((m) =>
        fetch(`${m.url}/v1/cluster`, { signal: AbortSignal.timeout(500) })
          .then((r) => r.json() as Promise<{ writable: boolean }>)
          .catch(() => null),
      ),
    )
    if (views.some((v) => v?.writable === true)) electedAt = performance.now()
    else await sleep(10)
  }
  while (firstAfterKill === Infinity && performance.now() - killedAt < 30_000) await sleep(10)
  await sleep(500)
  stop = true
  await Promise.all(loops)
  await client.close()
  const leader = await cluster.waitForLeader(30_000, { connected: true })
  const elections = (await epochOf(leader.url)) - epochBefore
  let lost = 0
  for (const key of ackedBeforeKill.slice(-500)) {
    const res = await fetch(`${leader.url}/v1/kv/${key}`)
    await res.arrayBuffer()
    if (res.status !== 200) lost++
  }
  await cluster.startMember(old.id)
  await cluster.waitForLeader(30_000, { connected: true })
  await caughtUp(cluster)
  return {
    killed: old.id,
    newLeader: leader.id,
    unavailableMs: firstAfterKill - killedAt,
    electedMs: electedAt - killedAt,
    elections,
    lost,
    failedWrites,
  }
}

export async function runFailoverBench(options: FailoverOptions): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), 'kv-bench-failover-'))
  const security = await benchSecurity(options.security, work)
  const trials: Trial[] = []
  try {
    say('== starting a 3-node cluster (defaults: heartbeat 100 ms, election timeout 1000 ms)')
    const cluster = await startBenchCluster(work, 3, security)
    try {
      for (let i = 0; i < options.trials; i++) {
        const trial = await runTrial(cluster, i, security)
        trials.push(trial)
        say(
          `   trial ${i + 1}/${options.trials}: killed ${trial.killed}, ${trial.newLeader} leads; next write after ${fmt(trial.unavailableMs)} ms (leader visible after ${fmt(trial.electedMs)} ms), ${trial.elections} election(s), ${trial.lost} lost, ${trial.failedWrites} failed writes`,
        )
      }
    } finally {
      await cluster.stop()
    }
  } finally {
    await rm(work, { recursive: true, force: true })
  }
  const unavailable = Latencies.of(trials.map((t) => t.unavailableMs))
  const elected = Latencies.of(trials.map((t) => t.electedMs))
  const elections = trials.map((t) => t.elections)
  const summary = {
    trials: trials.length,
    unavailableMs: {
      p50: unavailable.percentile(50),
      p99: unavailable.percentile(99),
      max: unavailable.max,
    },
    electedMs: { p50: elected.percentile(50), p99: elected.percentile(99) },
    electionsPerFailover: {
      mean: elections.reduce((a, b) => a + b, 0) / elections.length,
      max: Math.max(...elections),
    },
    lostWrites: trials.reduce((a, t) => a + t.lost, 0),
    failedWrites: trials.reduce((a, t) => a + t.failedWrites, 0),
  }
  const targets = [
    [
      'median time to the next write',
      '< 1500 ms',
      `${fmt(summary.unavailableMs.p50)} ms`,
      summary.unavailableMs.p50 < 1500,
    ],
    [
      'p99 time to the next write',
      '< 3000 ms',
      `${fmt(summary.unavailableMs.p99)} ms`,
      summary.unavailableMs.p99 < 3000,
    ],
    [
      'elections per failover',
      '1 (no storm)',
      `${fmt(summary.electionsPerFailover.mean, 2)} mean, ${summary.electionsPerFailover.max} max`,
      summary.electionsPerFailover.max <= 1,
    ],
    ['acknowledged writes lost', '0', String(summary.lostWrites), summary.lostWrites === 0],
  ] as const
  await publish(options.out, {
    suite: 'failover',
    command: `pnpm bench --suite failover --trials ${options.trials}`,
    summary: `kill -9 the leader of a 3-node cluster under 8 closed-loop SDK writers (ack=quorum), ${trials.length} trials, default timeouts (heartbeat 100 ms, election timeout 1000-2000 ms).`,
    body: [
      '| failover | p50 ms | p99 ms | max ms |',
      '|---|---:|---:|---:|',
      `| kill -9 to the next successful SDK write | ${fmt(summary.unavailableMs.p50)} | ${fmt(summary.unavailableMs.p99)} | ${fmt(summary.unavailableMs.max)} |`,
      `| kill -9 to a writable leader in /v1/cluster | ${fmt(summary.electedMs.p50)} | ${fmt(summary.electedMs.p99)} | ${fmt(elected.max)} |`,
      '',
      `Elections per failover: ${fmt(summary.electionsPerFailover.mean, 2)} mean, ${summary.electionsPerFailover.max} max. SDK writes that failed: ${summary.failedWrites}. Acknowledged writes missing on the new leader: ${summary.lostWrites}.`,
      '',
      ...targetTable(targets),
    ],
    json: { summary, trials },
  })
}
