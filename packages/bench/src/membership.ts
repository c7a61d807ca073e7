/**
 * pnpm bench --suite membership: what adding a member to a running single-leader cluster costs.
 *
 *  1. A 3-node cluster as shipped, prefilled with `keys` keys of `valueBytes` random bytes
 *     (base64 text), then the log compacted, so a new member must catch up by snapshot.
 *  2. The closed-loop maximum of quorum writes (wrk, 10 s); then quorum writes offered at 50%
 *     of it (the pacer: latency from when each was due) for `durationS`: the steady state.
 *  3. A fourth node starts with --join; it is added as a learner (POST /admin/v1/members) while
 *     the same 50% load runs, and promoted once it is caught up (its lag within the leader's
 *     learnerPromoteLagEntriesMax); the load stops then. Reported: the time from the add to the
 *     promotion (the snapshot and the log after it), the bytes of data it took over, and the
 *     load's p50, p99 and max during the catch-up beside the steady state's.
 *
 * Figures are printed and written; nothing is asserted.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { KvClient } from '@kvstore/client'
import { metric } from '@kvstore/testkit'
import { prefillRandom, waitCaughtUp } from './cluster.js'
import { ensureWrk, fmt, say, sleep } from './common.js'
import { startBenchCluster } from './node-process.js'
import { runPaced, type PacedOptions, type PacedResult } from './pacer.js'
import { removeOnExit } from './proc.js'
import { publish } from './report.js'
import { benchSecurity, type SecurityProfile } from './security.js'
import { quorumPutMaximum, warmUpQuorumPuts } from './wrk.js'

export interface MembershipBenchOptions {
  security: SecurityProfile
  /** Seconds of the steady-state phase. */
  durationS: number
  connections: number
  valueBytes: number
  /** Keys in the cluster before the new member joins. */
  keys: number
  out: string
}

interface Phase {
  name: string
  seconds: number
  result: PacedResult
}

export async function runMembershipBench(options: MembershipBenchOptions): Promise<void> {
  ensureWrk()
  const { durationS, connections, valueBytes, keys } = options
  const work = await mkdtemp(join(tmpdir(), 'kv-bench-membership-'))
  removeOnExit(work)
  const security = await benchSecurity(options.security, work)
  const phases: Phase[] = []
  let maximum = 0
  let join_: {
    addToPromoteMs: number
    dataBytes: number
    snapshotsInstalled: number
    lagWhenPromoted: number
  } | null = null
  try {
    say(`== a 3-node cluster (${security.profile}), ${fmt(keys)} keys of ${valueBytes} bytes`)
    const cluster = await startBenchCluster(join(work, 'cluster'), 3, security, [
      '--log-retention-entries',
      '1000',
    ])
    try {
      const { leader } = cluster
      const authorization = await security.authorization(leader.url)
      const client = new KvClient({ url: cluster.members.map((m) => m.url), ...security.client })
      try {
        const started = performance.now()
        await prefillRandom(client, keys, valueBytes)
        say(`   prefilled in ${fmt((performance.now() - started) / 1000, 1)} s`)
        await waitCaughtUp(cluster)
        const compacted = await fetch(`${leader.url}/admin/v1/compact`, {
          method: 'POST',
          ...(authorization !== undefined ? { headers: { authorization } } : {}),
        })
        if (compacted.status !== 200) throw new Error(`compact: HTTP ${compacted.status}`)
        await compacted.body?.cancel()

        say('   warming up (ack=quorum, 3 s)...')
        await warmUpQuorumPuts({
          url: leader.url,
          valueBytes,
          authorization,
          scriptDir: work,
          connections,
        })
        await waitCaughtUp(cluster)
        ;({ maximum } = await quorumPutMaximum({
          url: leader.url,
          valueBytes,
          authorization,
          scriptDir: work,
          connections,
          durationS: 10,
        }))
        const rate = Math.max(1, Math.round(maximum / 2))
        say(`== closed-loop maximum: ${fmt(maximum)}/s quorum writes; 50% is ${fmt(rate)}/s`)
        await waitCaughtUp(cluster)
        const paced = {
          url: leader.url,
          rate,
          connections,
          valueBytes,
          query: '?ack=quorum',
          tls: security.client.tls as PacedOptions['tls'],
          authorization,
        }
        say(`== steady state: 50% for ${durationS} s`)
        const steady = await runPaced({ ...paced, durationS, prefix: 'bench/steady/' })
        phases.push({ name: 'steady state', seconds: durationS, result: steady })
        say(`   ${describe(steady)}`)

        say('== n4 joins: added as a learner under the same load, promoted once caught up')
        await waitCaughtUp(cluster)
        const n4 = await cluster.startJoining('n4')
        const call = async (method: string, path: string, body?: unknown) => {
          const res = await fetch(`${cluster.leader.url}${path}`, {
            method,
            headers: {
              ...(authorization !== undefined ? { authorization } : {}),
              ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
            },
            ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
          })
          return { status: res.status, body: (await res.json()) as Record<string, unknown> }
        }
        let promoted = false
        let lagWhenPromoted = 0
        const addAt = performance.now()
        let promotedAt = addAt
        const joining = (async () => {
          const added = await call('POST', '/admin/v1/members', {
            id: 'n4',
            clientUrl: n4.url,
            peerUrl: n4.peerUrl,
          })
          if (added.status !== 200) throw new Error(`add n4: ${JSON.stringify(added.body)}`)
          const deadline = performance.now() + 30 * 60_000
          for (;;) {
            const answer = await call('POST', '/admin/v1/members/n4/promote')
            if (answer.status === 200) break
            const error = answer.body.error as { code?: string; lagEntries?: number } | undefined
            if (error?.code !== 'KV_ERR_LEARNER_BEHIND' || performance.now() > deadline) {
              throw new Error(`promote n4: ${JSON.stringify(answer.body)}`)
            }
            lagWhenPromoted = error.lagEntries ?? 0
            await sleep(100)
          }
          promotedAt = performance.now()
          promoted = true
        })()
        let joinError: unknown = null
        joining.catch((err: unknown) => {
          joinError = err
        })
        const during = await runPaced({
          ...paced,
          durationS: 30 * 60,
          prefix: 'bench/join/',
          stopWhen: () => promoted || joinError !== null,
        })
        await joining
        const seconds = (promotedAt - addAt) / 1000
        phases.push({ name: 'n4 catching up', seconds, result: during })
        const status = (await (await fetch(`${n4.url}/v1/digest`)).json()) as { bytes: number }
        join_ = {
          addToPromoteMs: promotedAt - addAt,
          dataBytes: status.bytes,
          snapshotsInstalled: await metric(n4.url, 'kv_replication_snapshots_installed_total'),
          lagWhenPromoted,
        }
        say(
          `   added → promoted in ${fmt(seconds, 1)} s: ${fmt(status.bytes / 1e6, 1)} MB of keys and values (${fmt(status.bytes / 1e6 / seconds, 1)} MB/s), ${join_.snapshotsInstalled} snapshot(s)`,
        )
        say(`   ${describe(during)}`)
      } finally {
        await client.close()
      }
    } finally {
      await cluster.stop()
    }
  } finally {
    await rm(work, { recursive: true, force: true })
  }
  const rows = phases.map(
    (p) =>
      `| ${p.name} | ${fmt(p.seconds, 1)} | ${fmt(p.result.throughput)} | ${fmt(p.result.latencyMs.p50, 1)} | ${fmt(p.result.latencyMs.p99, 1)} | ${fmt(p.result.latencyMs.max, 1)} | ${fmt(p.result.errors)} |`,
  )
  await publish(options.out, {
    suite: 'membership',
    command: `pnpm bench --suite membership --keys ${keys} --value-bytes ${valueBytes} --duration ${durationS} --connections ${connections}${options.security === 'tls-auth' ? '' : ` --security ${options.security}`}`,
    summary: `Adding a fourth member to a 3-node single-leader cluster (${options.security === 'tls-auth' ? 'as shipped: TLS and token auth' : `--security ${options.security}`}) holding ${fmt(keys)} keys of ${valueBytes} bytes, its log compacted (the new member catches up by snapshot, then by log), under quorum writes at 50% of the closed-loop maximum. Load generator and nodes share the machine.`,
    body: [
      join_ === null
        ? 'The join did not complete.'
        : `n4 added as a learner → caught up → promoted in ${fmt(join_.addToPromoteMs / 1000, 1)} s, taking over ${fmt(join_.dataBytes / 1e6, 1)} MB of keys and values (${fmt(join_.dataBytes / 1e6 / (join_.addToPromoteMs / 1000), 1)} MB/s; ${join_.snapshotsInstalled} snapshot installed).`,
      '',
      `Quorum writes at 50% of the closed-loop maximum (${fmt(maximum)}/s, wrk with ${connections} connections), latency from when each write was due:`,
      '',
      '| phase | seconds | writes/s | p50 ms | p99 ms | max ms | errors |',
      '|---|---:|---:|---:|---:|---:|---:|',
      ...rows,
    ],
    json: { keys, valueBytes, maximum, phases, join: join_ },
  })
}

function describe(r: PacedResult): string {
  return `${fmt(r.throughput)}/s, p50 ${fmt(r.latencyMs.p50, 1)} ms, p99 ${fmt(r.latencyMs.p99, 1)} ms, max ${fmt(r.latencyMs.max, 1)} ms, ${fmt(r.errors)} errors`
}
