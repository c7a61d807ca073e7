/**
 * pnpm bench --suite security: what TLS and authentication cost, measured side by side in one
 * run. For each round, a fresh 3-node single-leader cluster per profile (plaintext, TLS, TLS
 * with token auth), in turn, so that the machine's drift falls on every profile alike:
 *
 *   - PUT ack=quorum to the leader (wrk, closed loop), the durable write through a majority;
 *   - GET of prefilled keys from one follower (wrk).
 *
 * wrk keeps its connections open (keep-alive), so TLS handshakes happen once per connection;
 * with token auth every request carries `Authorization: Bearer`, checked once and then served
 * from the node's cache of verified tokens. Target: quorum writes lose at most 15% with TLS
 * and auth.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { KvClient } from '@kvstore/client'
import { ensureWrk, fmt, say } from './common.js'
import { pidOf, startBenchCluster } from './node-process.js'
import { cpuSeconds } from './proc.js'
import { publish, targetTable } from './report.js'
import { benchSecurity, type SecurityProfile } from './security.js'
import { getScript, putScript, runWrk, warmUpQuorumPuts, type WrkResult } from './wrk.js'

export interface SecuritySuiteOptions {
  durationS: number
  connections: number
  valueBytes: number
  getKeys: number
  rounds: number
  out: string
}

interface Measurement {
  profile: SecurityProfile
  round: number
  quorumPut: WrkResult
  followerGet: WrkResult
  /** CPU of the three nodes during the quorum phase, per write (µs). */
  cpuPerWriteUs: number
}

const profiles: SecurityProfile[] = ['plaintext', 'tls', 'tls-auth']

const names: Record<SecurityProfile, string> = {
  plaintext: 'plaintext (unsafe baseline)',
  tls: 'TLS (mutual between members, HTTPS for clients)',
  'tls-auth': 'TLS + token auth (as shipped)',
}

const mean = (values: number[]): number => values.reduce((a, b) => a + b, 0) / values.length

export async function runSecurityBench(options: SecuritySuiteOptions): Promise<void> {
  const { durationS, connections, valueBytes, rounds } = options
  // Fewer keys than the read suites: the point is the per-request cost, not the cache.
  const getKeys = Math.min(options.getKeys, 20_000)
  ensureWrk()
  const work = await mkdtemp(join(tmpdir(), 'kv-bench-security-'))
  const measurements: Measurement[] = []
  try {
    for (let round = 1; round <= rounds; round++) {
      for (const profile of profiles) {
        say(`== round ${round}/${rounds}: ${names[profile]}`)
        const security = await benchSecurity(profile, work)
        const dir = join(work, `r${round}-${profile}`)
        const cluster = await startBenchCluster(dir, 3, security)
        try {
          const leader = cluster.leader
          const follower = cluster.followers[0]
          if (follower === undefined) throw new Error('no follower')
          const authorization = await security.authorization(leader.url)
          await warmUpQuorumPuts({
            url: leader.url,
            valueBytes,
            authorization,
            scriptDir: work,
            connections,
          })
          const before = await Promise.all(cluster.members.map((m) => cpuSeconds(pidOf(m))))
          const quorumPut = await runWrk({
            url: leader.url,
            script: putScript('bench/q/', valueBytes, { query: '?ack=quorum', authorization }),
            scriptDir: work,
            connections,
            durationS,
          })
          const after = await Promise.all(cluster.members.map((m) => cpuSeconds(pidOf(m))))
          const cpuS = after.reduce((sum, a, i) => sum + a - (before[i] ?? 0), 0)
          const client = new KvClient({ url: leader.url, ...security.client })
          try {
            const value = 'v'.repeat(valueBytes)
            for (let start = 0; start < getKeys; start += 1000) {
              const ops = []
              for (let i = start; i < Math.min(getKeys, start + 1000); i++)
                ops.push({ op: 'put' as const, key: `bench/g/${i}`, value })
              await client.batch(ops, { ack: 'all' })
            }
          } finally {
            await client.close()
          }
          const followerAuth = await security.authorization(follower.url)
          const getScriptText = getScript('bench/g/', getKeys, { authorization: followerAuth })
          await runWrk({
            url: follower.url,
            script: getScriptText,
            scriptDir: work,
            connections,
            durationS: 2,
          })
          const followerGet = await runWrk({
            url: follower.url,
            script: getScriptText,
            scriptDir: work,
            connections,
            durationS,
          })
          const m: Measurement = {
            profile,
            round,
            quorumPut,
            followerGet,
            cpuPerWriteUs: (cpuS / Math.max(1, quorumPut.requests)) * 1e6,
          }
          measurements.push(m)
          say(
            `   quorum PUT ${fmt(quorumPut.throughput)}/s (p99 ${fmt(quorumPut.latencyMs.p99, 1)} ms, ${quorumPut.errors} errors, ${fmt(m.cpuPerWriteUs)} µs CPU/write); follower GET ${fmt(followerGet.throughput)}/s (p99 ${fmt(followerGet.latencyMs.p99, 1)} ms, ${followerGet.errors} errors)`,
          )
        } finally {
          await cluster.stop()
        }
      }
    }
  } finally {
    await rm(work, { recursive: true, force: true })
  }

  const byProfile = (p: SecurityProfile) => measurements.filter((m) => m.profile === p)
  const put = (p: SecurityProfile) => mean(byProfile(p).map((m) => m.quorumPut.throughput))
  const get = (p: SecurityProfile) => mean(byProfile(p).map((m) => m.followerGet.throughput))
  const base = { put: put('plaintext'), get: get('plaintext') }
  const lossPut = 1 - put('tls-auth') / base.put
  const rows = profiles.map((p) => {
    const ms = byProfile(p)
    const puts = ms.map((m) => fmt(m.quorumPut.throughput)).join(' / ')
    const gets = ms.map((m) => fmt(m.followerGet.throughput)).join(' / ')
    const p99 = fmt(Math.max(...ms.map((m) => m.quorumPut.latencyMs.p99)), 1)
    const cpu = fmt(mean(ms.map((m) => m.cpuPerWriteUs)))
    const errors = ms.reduce((sum, m) => sum + m.quorumPut.errors + m.followerGet.errors, 0)
    return `| ${names[p]} | ${puts} | ${fmt((put(p) / base.put) * 100)}% | ${p99} | ${cpu} | ${gets} | ${fmt((get(p) / base.get) * 100)}% | ${errors} |`
  })
  await publish(options.out, {
    suite: 'security',
    command: `pnpm bench --suite security --duration ${durationS} --rounds ${rounds} --connections ${connections} --value-bytes ${valueBytes}`,
    summary: `The cost of TLS and auth: a 3-node single-leader cluster per profile, wrk on the same machine, ${connections} connections, ${valueBytes}-byte values, ${durationS} s per phase, fsync on, ${rounds} interleaved rounds (each cell lists the rounds).`,
    body: [
      '| profile | PUT ack=quorum ops/s | vs plaintext | worst p99 ms | node CPU µs/write (3 nodes) | follower GET ops/s | vs plaintext | errors |',
      '|---|---:|---:|---:|---:|---:|---:|---:|',
      ...rows,
      '',
      ...targetTable([
        [
          'quorum writes with TLS and auth',
          'lose at most 15%',
          `lose ${fmt(lossPut * 100, 1)}%`,
          lossPut <= 0.15,
        ],
      ]),
    ],
    json: {
      connections,
      valueBytes,
      durationS,
      rounds,
      measurements,
      quorumPutLossWithTlsAndAuth: lossPut,
    },
  })
}
