/**
 * pnpm bench --suite handoff: how fast a leaderless ring change moves data.
 *
 * A 5-member leaderless cluster (N=3) as shipped is loaded with `keys` keys of `valueBytes`
 * random bytes at w=all (every replica holds every key, so each handoff moves the same data
 * whatever the timing). Then, on the idle cluster:
 *
 *  1. join: a sixth member starts with --join and is added (POST /admin/v1/members); it pulls
 *     the ranges it gains from the members it displaces, the ring moves to `switched` and then
 *     ends the change;
 *  2. leave: n1 is removed (DELETE /admin/v1/members/n1); it pushes its ranges to the members
 *     that take them over.
 *
 * For each: the keys and bytes the handoff streamed (kv_handoff_keys_streamed_total and
 * kv_handoff_bytes_streamed_total of the member driving it), the time from the admin call to
 * the end of the change (agreement on three ring versions and the wait for every member
 * included), and keys/s and MB/s over that time. --handoff-max-rate stays at its default
 * (64 MiB/s), above what one machine streams here. Figures are printed and written; nothing
 * is asserted.
 */
import { randomBytes } from 'node:crypto'
import { mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { keyPath } from '@kvstore/client'
import { metric } from '@kvstore/testkit'
import { Pool } from 'undici'
import { fmt, loadInBatches, say, sleep } from './common.js'
import { closeLeaderlessBenchCluster, startLeaderlessBenchCluster } from './node-process.js'
import { loadAverage, removeOnExit } from './proc.js'
import { publish } from './report.js'
import { benchSecurity, type SecurityProfile } from './security.js'

export interface HandoffBenchOptions {
  security: SecurityProfile
  keys: number
  valueBytes: number
  connections: number
  out: string
}

interface ChangeRow {
  change: 'join' | 'leave'
  member: string
  keys: number
  bytes: number
  seconds: number
  keysPerS: number
  mbPerS: number
  ringVersion: number
}

async function membersView(
  url: string,
): Promise<{ version: number; changeInProgress: boolean; members: { id: string }[] }> {
  const res = await fetch(`${url}/admin/v1/members`, { signal: AbortSignal.timeout(10_000) })
  if (!res.ok) throw new Error(`GET ${url}/admin/v1/members answered ${res.status}`)
  return (await res.json()) as {
    version: number
    changeInProgress: boolean
    members: { id: string }[]
  }
}

/** Runs the admin call, then waits (at most `timeoutMs`) for the change it started to end. */
async function timedChange(
  url: string,
  call: () => Promise<Response>,
  timeoutMs: number,
): Promise<{ seconds: number; ringVersion: number }> {
  const started = performance.now()
  const res = await call()
  const body = await res.text()
  if (!res.ok) throw new Error(`the ring change was refused: ${res.status} ${body}`)
  const deadline = started + timeoutMs
  for (;;) {
    const view = await membersView(url)
    if (!view.changeInProgress)
      return { seconds: (performance.now() - started) / 1000, ringVersion: view.version }
    if (performance.now() > deadline)
      throw new Error(`the ring change did not end within ${timeoutMs / 1000} s`)
    await sleep(50)
  }
}

export async function runHandoffBench(options: HandoffBenchOptions): Promise<void> {
  const { keys, valueBytes, connections } = options
  const work = await mkdtemp(join(tmpdir(), 'kv-bench-handoff-'))
  removeOnExit(work)
  const security = await benchSecurity(options.security, work)
  const rows: ChangeRow[] = []
  let loadS = 0
  say('== starting a 5-member leaderless cluster (N=3)')
  const cluster = await startLeaderlessBenchCluster(work, 5, security, ['--replicas', '3'])
  try {
    const urls = cluster.members.map((m) => m.url)
    const authorization = await security.authorization(urls[0] as string)
    const headers = authorization === undefined ? {} : { authorization }
    const pools = urls.map(
      (url) =>
        new Pool(url, {
          connections: Math.ceil(connections / urls.length),
          ...(security.client.tls !== undefined ? { connect: security.client.tls } : {}),
        }),
    )
    say(`== loading ${fmt(keys)} keys of ${valueBytes} bytes (w=all)`)
    const loadStarted = performance.now()
    await loadInBatches(
      { total: keys, batch: 1, workers: connections, timeoutMs: 30 * 60_000, what: 'the keys' },
      async (i) => {
        const res = await (pools[i % pools.length] as Pool).request({
          method: 'PUT',
          path: `/v1/kv/${keyPath(`handoff/${i}`)}?w=all`,
          body: randomBytes(valueBytes),
          headers: { ...headers, 'content-type': 'application/octet-stream' },
        })
        const text = await res.body.text()
        if (res.statusCode !== 200) throw new Error(`PUT answered ${res.statusCode}: ${text}`)
      },
    )
    loadS = (performance.now() - loadStarted) / 1000
    say(`   ${fmt(keys / loadS)} keys/s`)
    await Promise.all(pools.map((p) => p.close()))
    await sleep(1000)

    // ---- join ------------------------------------------------------------------------------
    say('== join: n6 pulls the ranges it gains')
    const n6 = await cluster.join('n6')
    const n1 = urls[0] as string
    const joined = await timedChange(
      n1,
      () =>
        fetch(`${n1}/admin/v1/members`, {
          method: 'POST',
          body: JSON.stringify({ id: 'n6', clientUrl: n6.url, peerUrl: n6.peerUrl }),
          headers: { 'content-type': 'application/json' },
        }),
      30 * 60_000,
    )
    rows.push(await row('join', 'n6', n6.url, joined.seconds, joined.ringVersion))

    // ---- leave -----------------------------------------------------------------------------
    say('== leave: n1 pushes its ranges to the members that take them over')
    const n2 = urls[1] as string
    const left = await timedChange(
      n2,
      () => fetch(`${n2}/admin/v1/members/n1`, { method: 'DELETE' }),
      30 * 60_000,
    )
    rows.push(await row('leave', 'n1', n1, left.seconds, left.ringVersion))
  } finally {
    await closeLeaderlessBenchCluster(cluster)
  }

  const table = [
    '| change | driver | keys streamed | MB streamed | seconds (admin call to end) | keys/s | MB/s |',
    '|---|---|---:|---:|---:|---:|---:|',
    ...rows.map(
      (r) =>
        `| ${r.change} | ${r.member} | ${fmt(r.keys)} | ${fmt(r.bytes / 1e6, 1)} | ${fmt(r.seconds, 2)} | ${fmt(r.keysPerS)} | ${fmt(r.mbPerS, 2)} |`,
    ),
  ]
  await publish(options.out, {
    suite: 'handoff',
    command: `pnpm bench --suite handoff --keys ${keys} --value-bytes ${valueBytes} --connections ${connections} --security ${options.security}`,
    summary: `A 5-member leaderless cluster (N=3, ${options.security}) holding ${fmt(keys)} keys of ${valueBytes} random bytes (loaded at w=all in ${fmt(loadS, 1)} s): a sixth member joins, then n1 leaves, on an idle cluster; --handoff-max-rate at its default (64 MiB/s).`,
    body: [
      ...table,
      '',
      `Keys and MB are what the driving member streamed (kv_handoff_keys_streamed_total, kv_handoff_bytes_streamed_total: keys and values, not the wire bytes); the time runs from the admin call to the end of the change, so it includes agreeing on three ring versions and waiting for every member to hold the switched ring. Every process shares this machine's cores (1-minute load average ${fmt(await loadAverage(), 2)}).`,
    ],
    json: { keys, valueBytes, connections, loadSeconds: loadS, changes: rows },
  })
}

async function row(
  change: 'join' | 'leave',
  member: string,
  url: string,
  seconds: number,
  ringVersion: number,
): Promise<ChangeRow> {
  const keys = await metric(url, 'kv_handoff_keys_streamed_total')
  const bytes = await metric(url, 'kv_handoff_bytes_streamed_total')
  const r: ChangeRow = {
    change,
    member,
    keys,
    bytes,
    seconds,
    keysPerS: keys / seconds,
    mbPerS: bytes / 1e6 / seconds,
    ringVersion,
  }
  say(
    `   ${fmt(keys)} keys, ${fmt(bytes / 1e6, 1)} MB in ${fmt(seconds, 2)} s: ${fmt(r.keysPerS)} keys/s, ${fmt(r.mbPerS, 2)} MB/s`,
  )
  return r
}
