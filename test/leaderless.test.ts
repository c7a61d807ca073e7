/**
 * Leaderless mode on real 5-node clusters (N = 3) of kv-node processes: quorum reads after
 * acknowledged writes, hinted handoff, anti-entropy convergence for keys never read, siblings
 * and their resolution, last-write-wins, deletes through downtime, and the sibling cap.
 */
import { afterAll, afterEach, describe, expect, it } from 'vitest'
import { HashRing, compareHlc } from '@kvstore/core'
import type { LeaderlessWriteResponse } from '@kvstore/protocol'
import { keyPath, LeaderlessCluster, metricTotal, prng, testSeed, waitFor } from '@kvstore/testkit'
import { memberTls } from './support/certs.js'

const ids = ['n1', 'n2', 'n3', 'n4', 'n5']
const ring = new HashRing(ids, 64)
const replicasOf = (key: string) => ring.preferenceList(key, 3)

/** A leaderless PUT or DELETE answer, as the API contract defines it. */
type WriteBody = LeaderlessWriteResponse

async function put(
  url: string,
  key: string,
  value: string,
  options: { w?: string | number; context?: string; sloppy?: boolean } = {},
): Promise<{ status: number; body: WriteBody & { error?: { code: string } } }> {
  const q = new URLSearchParams()
  if (options.w !== undefined) q.set('w', String(options.w))
  if (options.sloppy) q.set('sloppy', 'true')
  const res = await fetch(`${url}/v1/kv/${keyPath(key)}?${q}`, {
    method: 'PUT',
    body: value,
    headers: options.context ? { 'kv-context': options.context } : {},
  })
  return {
    status: res.status,
    body: (await res.json()) as WriteBody & { error?: { code: string } },
  }
}

async function del(
  url: string,
  key: string,
  options: { w?: string | number; context?: string } = {},
): Promise<{ status: number; body: WriteBody & { error?: { code: string } } }> {
  const q = new URLSearchParams()
  if (options.w !== undefined) q.set('w', String(options.w))
  const res = await fetch(`${url}/v1/kv/${keyPath(key)}?${q}`, {
    method: 'DELETE',
    headers: options.context ? { 'kv-context': options.context } : {},
  })
  return {
    status: res.status,
    body: (await res.json()) as WriteBody & { error?: { code: string } },
  }
}

interface ReadResult {
  status: number
  values: string[]
  context: string | null
  timestamps: string[]
  code?: string
}

async function get(
  url: string,
  key: string,
  options: { r?: string | number; repair?: 'blocking' } = {},
): Promise<ReadResult> {
  const q = new URLSearchParams({ format: 'json' })
  if (options.r !== undefined) q.set('r', String(options.r))
  if (options.repair) q.set('repair', options.repair)
  const res = await fetch(`${url}/v1/kv/${keyPath(key)}?${q}`)
  const context = res.headers.get('kv-context')
  const body = (await res.json()) as {
    siblings?: { valueBase64: string; timestamp: string }[]
    error?: { code: string }
  }
  if (res.status !== 200) {
    return { status: res.status, values: [], context, timestamps: [], code: body.error?.code }
  }
  const siblings = body.siblings ?? []
  return {
    status: res.status,
    values: siblings.map((s) => Buffer.from(s.valueBase64, 'base64').toString()).sort(),
    context,
    timestamps: siblings.map((s) => s.timestamp),
  }
}

function parseHlc(text: string): { wallMs: number; logical: number; node: string } {
  const [wall, logical, ...node] = text.split('.')
  return { wallMs: Number(wall), logical: Number(logical), node: node.join('.') }
}

/** Every replica set's Merkle root, as each running member reports it. */
async function rootsConverged(
  cluster: LeaderlessCluster,
): Promise<{ ok: boolean; detail: string }> {
  const bySet = new Map<string, Map<string, number>>()
  for (const m of cluster.running) {
    const res = await fetch(`${m.url}/admin/v1/ranges`)
    const body = (await res.json()) as { ranges: { replicas: string; root: number }[] }
    for (const r of body.ranges) {
      if (!bySet.has(r.replicas)) bySet.set(r.replicas, new Map())
      bySet.get(r.replicas)?.set(m.id, r.root)
    }
  }
  const differing = [...bySet].filter(([, roots]) => new Set(roots.values()).size > 1)
  return {
    ok: differing.length === 0 && bySet.size > 0,
    detail: JSON.stringify(differing.map(([set, roots]) => [set, Object.fromEntries(roots)])),
  }
}

const clusters: LeaderlessCluster[] = []
async function startCluster(args: string[] = []): Promise<LeaderlessCluster> {
  const cluster = await LeaderlessCluster.start(5, ['--replicas', '3', ...args])
  clusters.push(cluster)
  return cluster
}
afterEach(async () => {
  await Promise.all(clusters.splice(0).map((c) => c.close()))
})
afterAll(async () => {
  await Promise.all(clusters.splice(0).map((c) => c.close()))
})

describe('leaderless mode, 5 nodes, N = 3', () => {
  it('with R + W > N a read after an acknowledged write returns it, from any coordinator', async () => {
    const cluster = await startCluster()
    const random = prng(testSeed('ll-read-after-write'))
    const pick = () => cluster.members[Math.floor(random() * 5)]?.url as string
    for (const [w, r] of [
      ['quorum', 'quorum'],
      ['1', 'all'],
      ['all', '1'],
      ['2', '2'],
    ] as const) {
      for (let i = 0; i < 25; i++) {
        const key = `raw/${w}-${r}/${i}`
        const written = await put(pick(), key, `v-${i}`, { w })
        expect(written.status).toBe(200)
        expect(written.body.acks).toBeGreaterThanOrEqual(written.body.w)
        expect(replicasOf(key)).toContain(written.body.coordinator)
        const read = await get(pick(), key, { r })
        expect(read.values).toEqual([`v-${i}`])
      }
    }
    // A chain of overwrites, each carrying the context of the write before, through random
    // coordinators: every read right after an ack sees exactly that value.
    let context: string | undefined
    for (let i = 0; i < 30; i++) {
      const written = await put(pick(), 'raw/chain', `c-${i}`, context ? { context } : {})
      expect(written.status).toBe(200)
      context = written.body.context
      const read = await get(pick(), 'raw/chain')
      expect(read.values).toEqual([`c-${i}`])
    }
  })

  it('with one replica down, quorum writes succeed through hinted handoff, and the hints replay once it is back', async () => {
    // Anti-entropy is slowed right down so that only the hints can bring the replica up to date.
    const cluster = await startCluster(['--anti-entropy-interval-ms', '600000'])
    const down = 'n2'
    const keys = Array.from({ length: 400 }, (_, i) => `hh/${i}`).filter((k) =>
      replicasOf(k).includes(down),
    )
    expect(keys.length).toBeGreaterThan(100)
    await cluster.stop(down)
    await cluster.waitForViews()
    for (const [i, key] of keys.entries()) {
      const coordinator = cluster.members.find(
        (m) => m.id !== down && replicasOf(key).includes(m.id),
      )
      const written = await put(coordinator?.url as string, key, `hinted-${i}`)
      expect(written.status, JSON.stringify(written.body)).toBe(200)
      expect(written.body.acks).toBeGreaterThanOrEqual(2)
    }
    // A hint is sent beside the write and may land just after the answer (which needed only
    // W acks): wait for them all. Exactly one per write, none lost or doubled.
    const heldFor = async () =>
      (
        await Promise.all(
          cluster.running.map(async (m) => (await cluster.hints(m.id)).byTarget[down] ?? 0),
        )
      ).reduce((a, b) => a + b, 0)
    await waitFor(async () => (await heldFor()) >= keys.length, {
      timeoutMs: 5000,
      message: 'not every write left a hint',
    })
    expect(await heldFor()).toBe(keys.length)
    // Before the replica returns, it holds none of these keys.
    await cluster.startMember(down)
    await waitFor(
      async () => {
        const backlog = await Promise.all(cluster.running.map((m) => cluster.hints(m.id)))
        return backlog.every((b) => (b.byTarget[down] ?? 0) === 0)
      },
      { timeoutMs: 20_000, message: 'the hints for n2 were not replayed' },
    )
    let replayed = 0
    for (const m of cluster.running) replayed += await metricTotal(m.url, 'kv_hints_replayed_total')
    expect(replayed).toBe(keys.length)
    // No read touched these keys, and anti-entropy did not run: the hints alone put them there.
    for (const [i, key] of keys.entries()) {
      const copy = await cluster.local(down, key)
      expect(
        copy?.siblings.map((s) => Buffer.from(s.valueBase64 ?? '', 'base64').toString()),
      ).toEqual([`hinted-${i}`])
    }
    expect(await metricTotal(cluster.member(down).url, 'kv_anti_entropy_keys_repaired_total')).toBe(
      0,
    )
    expect(await metricTotal(cluster.member(down).url, 'kv_read_repairs_total')).toBe(0)
  })

  it('a digest read fetches a newer value that only a versions-only answer shows, and repairs the data replica', async () => {
    // No hints and no anti-entropy: only the read can bring the stale replica up to date.
    const cluster = await startCluster(['--anti-entropy-interval-ms', '600000', '--hints-max', '0'])
    const key = 'digest/k'
    const [stale, second] = replicasOf(key) as [string, string, string]
    const url = (id: string) => cluster.member(id).url
    const first = await put(url(stale), key, 'v1', { w: 'all' })
    expect(first.status).toBe(200)
    const mismatches = () => metricTotal(url(stale), 'kv_read_digest_mismatches_total')
    // All three agree: the data comes from the coordinator, the versions from the others, and
    // no value travels twice.
    expect((await get(url(stale), key, { r: 'all' })).values).toEqual(['v1'])
    expect(await mismatches()).toBe(0)
    await cluster.stop(stale)
    await cluster.waitForViews()
    // v2 replaces v1 (it carries v1's context) on the two replicas that are up.
    const overwrite = await put(url(second), key, 'v2', { w: 2, context: first.body.context })
    expect(overwrite.status).toBe(200)
    await cluster.startMember(stale)
    expect((await cluster.local(stale, key))?.siblings.map((s) => s.valueBase64)).toEqual([
      Buffer.from('v1').toString('base64'),
    ])
    // The coordinator's own copy (the data) is older than the versions the others sent: it
    // fetches v2 before answering, never answering v1.
    const read = await get(url(stale), key, { r: 2 })
    expect(read.values).toEqual(['v2'])
    expect(await mismatches()).toBeGreaterThanOrEqual(1)
    await waitFor(
      async () =>
        (await cluster.local(stale, key))?.siblings.map((s) => s.valueBase64).join() ===
        Buffer.from('v2').toString('base64'),
      { timeoutMs: 5000, message: 'read repair did not bring the data replica up to date' },
    )
  })

  it('sloppy writes count hints toward W; strict ones do not, and say how many replicas took them', async () => {
    const cluster = await startCluster(['--quorum-timeout-ms', '1000'])
    const key = 'sloppy/k'
    const [coordinator, second, third] = replicasOf(key) as [string, string, string]
    await cluster.stop(second)
    await cluster.stop(third)
    await cluster.waitForViews()
    const strict = await put(cluster.member(coordinator).url, key, 'strict')
    expect(strict.status).toBe(503)
    expect(strict.body.error?.code).toBe('KV_ERR_QUORUM_UNAVAILABLE')
    // Too few replicas are reachable to ever reach W: refused before anything is written.
    expect(strict.body.error).toMatchObject({ required: 2, acks: 0, written: false })
    const sloppy = await put(cluster.member(coordinator).url, key, 'sloppy', { sloppy: true })
    expect(sloppy.status, JSON.stringify(sloppy.body)).toBe(200)
    expect(sloppy.body.acks).toBeGreaterThanOrEqual(2)
    expect(sloppy.body.hinted.length).toBeGreaterThanOrEqual(1)
    await cluster.startMember(second)
    await cluster.startMember(third)
    await waitFor(
      async () =>
        (await Promise.all(cluster.running.map((m) => cluster.hints(m.id)))).every(
          (h) => h.total === 0,
        ),
      { timeoutMs: 20_000, message: 'hints were not replayed' },
    )
    // Both returned replicas hold the sloppy write; the refused one is nowhere.
    for (const id of [second, third]) {
      const copy = await cluster.local(id, key)
      expect(
        copy?.siblings.map((s) => Buffer.from(s.valueBase64 ?? '', 'base64').toString()),
      ).toEqual(['sloppy'])
    }
    expect((await get(cluster.member(third).url, key, { r: 'all' })).values).toEqual(['sloppy'])
  })

  it('a write retried with the same kv-request-id is applied once, also through a forwarding member', async () => {
    const cluster = await startCluster()
    const key = 'idem/k'
    const outsider = ids.find((id) => !replicasOf(key).includes(id)) as string
    const send = (url: string, value: string) =>
      fetch(`${url}/v1/kv/${keyPath(key)}`, {
        method: 'PUT',
        body: value,
        headers: { 'kv-request-id': 'order-42' },
      })
    const first = await send(cluster.member(outsider).url, 'paid')
    expect(first.status).toBe(200)
    expect(first.headers.get('kv-deduplicated')).toBeNull()
    await first.arrayBuffer()
    const retry = await send(cluster.member(outsider).url, 'paid')
    expect(retry.status).toBe(200)
    expect(retry.headers.get('kv-deduplicated')).toBe('true')
    await retry.arrayBuffer()
    expect((await get(cluster.member('n1').url, key, { r: 'all' })).values).toEqual(['paid'])
    // The id is bound to its request: on another value, or on another key the same member
    // coordinates, it is refused, and nothing is written.
    const otherValue = await send(cluster.member(outsider).url, 'refunded')
    expect(otherValue.status).toBe(409)
    expect(((await otherValue.json()) as { error: { code: string } }).error.code).toBe(
      'KV_ERR_REQUEST_ID_REUSED',
    )
    // Another key the outsider forwards to the same coordinator (the first of its replicas).
    const coordinator = replicasOf(key)[0]
    const otherKey = Array.from({ length: 500 }, (_, i) => `idem/other-${i}`).find(
      (k) => replicasOf(k)[0] === coordinator && !replicasOf(k).includes(outsider),
    ) as string
    const other = await fetch(`${cluster.member(outsider).url}/v1/kv/${keyPath(otherKey)}`, {
      method: 'PUT',
      body: 'x',
      headers: { 'kv-request-id': 'order-42' },
    })
    expect(other.status).toBe(409)
    expect(other.headers.get('kv-deduplicated')).toBeNull()
    await other.arrayBuffer()
    expect((await get(cluster.member('n1').url, key, { r: 'all' })).values).toEqual(['paid'])
    expect((await get(cluster.member('n1').url, otherKey, { r: 'all' })).status).toBe(404)
    // Without an id, the same blind write twice is two siblings: that is what ids are for.
    await put(cluster.member(outsider).url, 'idem/blind', 'v')
    await put(cluster.member(outsider).url, 'idem/blind', 'v')
    expect((await get(cluster.member('n1').url, 'idem/blind')).values).toEqual(['v', 'v'])
  })

  it("a delete sent to a member outside the key's replicas deletes it (forwarded without a context)", async () => {
    const cluster = await startCluster()
    const key = 'fwd/del'
    const outsider = ids.find((id) => !replicasOf(key).includes(id)) as string
    expect((await put(cluster.member(replicasOf(key)[0] as string).url, key, 'v')).status).toBe(200)
    const deleted = await del(cluster.member(outsider).url, key)
    expect(deleted.status).toBe(200)
    expect(replicasOf(key)).toContain(deleted.body.coordinator)
    for (const m of cluster.members) {
      expect((await get(m.url, key, { r: 'quorum' })).status, m.id).toBe(404)
    }
  })

  it('refuses contexts the cluster cannot have made, so one request cannot hide later writes or break a key', async () => {
    const cluster = await startCluster()
    const key = 'ctx/forged'
    const coordinator = replicasOf(key)[0] as string
    const url = cluster.member(coordinator).url
    const first = await put(url, key, 'v1')
    const { decodeContext, encodeContext } = await import('@kvstore/protocol')
    const actor = Object.keys(decodeContext(first.body.context).vector)[0] as string
    const forge = (vector: Record<string, number>) => encodeContext({ vector, siblings: [] })
    // More writes of this coordinator than it ever made: refused.
    const inflated = await put(url, key, 'x', { context: forge({ [actor]: 1e12 }) })
    expect(inflated.status).toBe(400)
    expect(inflated.body.error?.code).toBe('KV_ERR_INVALID_CONTEXT')
    // Too many actors for a record to hold: refused, and the key keeps working.
    const crowd: Record<string, number> = {}
    for (let i = 0; i < 1024; i++) crowd[`a${i}.x`] = 1
    const crowded = await put(url, key, 'x', { context: forge(crowd) })
    expect(crowded.status).toBe(400)
    expect(crowded.body.error?.code).toBe('KV_ERR_INVALID_CONTEXT')
    const second = await put(url, key, 'v2', { context: first.body.context })
    expect(second.status).toBe(200)
    expect((await get(cluster.member('n1').url, key, { r: 'all' })).values).toEqual(['v2'])
    await put(url, key, 'v3', { context: second.body.context })
    expect((await get(cluster.member('n2').url, key, { r: 'all' })).values).toEqual(['v3'])
    // The coordinator restarts fine.
    await cluster.restart(coordinator)
    expect((await get(cluster.member(coordinator).url, key, { r: 'all' })).values).toEqual(['v3'])
  })

  it('a wiped member is refilled by anti-entropy before it reports ready, and its reads count only then', async () => {
    // Anti-entropy rounds are 10 minutes apart: only the refill at start can bring the data.
    const cluster = await startCluster(['--anti-entropy-interval-ms', '600000'])
    const wiped = 'n3'
    const keys = Array.from({ length: 120 }, (_, i) => `wipe/${i}`).filter((k) =>
      replicasOf(k).includes(wiped),
    )
    for (const key of keys)
      expect((await put(cluster.member('n1').url, key, key, { w: 'all' })).status).toBe(200)
    await cluster.stop(wiped)
    const { rm } = await import('node:fs/promises')
    await rm(cluster.member(wiped).dataDir, { recursive: true, force: true })
    await cluster.startMember(wiped) // waits for GET /ready, which waits for the refill
    const view = (await (await fetch(`${cluster.member(wiped).url}/v1/cluster`)).json()) as {
      refilling: boolean
    }
    expect(view.refilling).toBe(false)
    for (const key of keys) {
      expect((await cluster.local(wiped, key))?.siblings.length, key).toBe(1)
    }
    expect(
      await metricTotal(cluster.member(wiped).url, 'kv_anti_entropy_keys_repaired_total'),
    ).toBe(keys.length)
    const log = cluster
      .member(wiped)
      .process?.logs.find((l) => l.msg === 'refilled after a fresh start; reads here count again')
    expect(log).toMatchObject({ repaired: keys.length })
    for (const key of keys.slice(0, 20)) {
      expect((await get(cluster.member(wiped).url, key, { r: 1 })).values).toEqual([key])
    }
  })

  it('after a member is cut off and comes back, every replica set converges through anti-entropy, keys never read included', async () => {
    // No hints (window 0): only anti-entropy can repair what the cut-off member missed.
    const cluster = await startCluster([
      '--hint-window-ms',
      '0',
      '--anti-entropy-interval-ms',
      '1000',
      '--tombstone-gc-ms',
      '60000',
    ])
    const cut = 'n3'
    cluster.pause(cut) // SIGSTOP: unreachable, like a partition, with its state kept
    const written: string[] = []
    try {
      await waitFor(
        async () => {
          const view = (await (await fetch(`${cluster.member('n1').url}/v1/cluster`)).json()) as {
            members: { id: string; up: boolean }[]
          }
          return view.members.find((m) => m.id === cut)?.up === false
        },
        { timeoutMs: 10_000, message: 'n3 was not seen down' },
      )
      for (let i = 0; i < 300; i++) {
        const key = `ae/${i}`
        const coordinator = cluster.members.find(
          (m) => m.id !== cut && replicasOf(key).includes(m.id),
        )
        const res = await put(coordinator?.url as string, key, `ae-${i}`)
        expect(res.status).toBe(200)
        written.push(key)
      }
      const hints = await Promise.all(
        cluster.members.filter((m) => m.id !== cut).map((m) => cluster.hints(m.id)),
      )
      expect(hints.every((h) => h.total === 0)).toBe(true)
      // Let the calls still queued for the paused member time out (quorumTimeoutMs is 2 s).
      await new Promise((resolve) => setTimeout(resolve, 3000))
    } finally {
      cluster.resume(cut)
    }
    const before = await rootsConverged(cluster)
    expect(before.ok).toBe(false)
    const startedMs = Date.now()
    await waitFor(async () => (await rootsConverged(cluster)).ok, {
      timeoutMs: 20_000,
      message: 'replica sets did not converge within 20 s',
    })
    const convergedMs = Date.now() - startedMs
    expect(convergedMs).toBeLessThan(20_000)
    // The cut-off member now holds every key it is a replica of, though none was read.
    const mine = written.filter((k) => replicasOf(k).includes(cut))
    expect(mine.length).toBeGreaterThan(50)
    for (const key of mine) expect((await cluster.local(cut, key))?.siblings).toHaveLength(1)
    // Writes still in flight to the paused member when it woke may land directly; the
    // rest (most, since in-flight calls time out after 2 s) came by anti-entropy.
    expect(
      await metricTotal(cluster.member(cut).url, 'kv_anti_entropy_keys_repaired_total'),
    ).toBeGreaterThan(mine.length / 2)
    let readRepairs = 0
    for (const m of cluster.running)
      readRepairs += await metricTotal(m.url, 'kv_read_repairs_total')
    expect(readRepairs).toBe(0)
    // The cluster view reports the exchanges.
    const view = (await (await fetch(`${cluster.member(cut).url}/v1/cluster`)).json()) as {
      members: { id: string; lastAntiEntropyMs: number | null }[]
    }
    expect(
      view.members.filter((m) => m.id !== cut).every((m) => m.lastAntiEntropyMs !== null),
    ).toBe(true)
  })

  it('anti-entropy compares key digests and sends only the records that differ, not whole leaves', async () => {
    // 3 nodes, N = 3: one replica set, 1,024 leaves, some 8 keys in each. No hints, no
    // scheduled exchanges: only the exchange asked for below repairs the member that was down.
    const cluster = await LeaderlessCluster.start(3, [
      '--replicas',
      '3',
      '--anti-entropy-interval-ms',
      '600000',
      '--hints-max',
      '0',
    ])
    clusters.push(cluster)
    const url = (id: string) => cluster.member(id).url
    const keys = Array.from({ length: 8000 }, (_, i) => `aed/${i}`)
    const contexts = new Map<string, string>()
    for (let i = 0; i < keys.length; i += 50) {
      await Promise.all(
        keys.slice(i, i + 50).map(async (key) => {
          const res = await put(url('n1'), key, 'v1', { w: 'all' })
          expect(res.status).toBe(200)
          contexts.set(key, res.body.context)
        }),
      )
    }
    await cluster.stop('n3')
    await cluster.waitForViews()
    // 40 keys change while n3 is down: 30 overwritten, 10 new.
    const changed = [...keys.filter((_, i) => i % 250 === 0).slice(0, 30)]
    for (const key of changed) {
      const res = await put(url('n1'), key, 'v2', { w: 2, context: contexts.get(key) })
      expect(res.status).toBe(200)
    }
    for (let i = 0; i < 10; i++)
      expect((await put(url('n2'), `aed/new/${i}`, 'new', { w: 2 })).status).toBe(200)
    await cluster.startMember('n3')
    const sent = async () => {
      let total = 0
      for (const m of cluster.running)
        total += await metricTotal(m.url, 'kv_anti_entropy_records_sent_total')
      return total
    }
    const before = await sent()
    const res = await fetch(`${url('n3')}/admin/v1/anti-entropy`, { method: 'POST' })
    expect(res.status).toBe(200)
    expect((await rootsConverged(cluster)).ok).toBe(true)
    for (const key of changed)
      expect((await cluster.local('n3', key))?.siblings.map((s) => s.valueBase64)).toEqual([
        Buffer.from('v2').toString('base64'),
      ])
    // 40 keys differ from each of n1 and n2: their records went to n3, and nothing else did
    // (by records, every key of the ~40 differing leaves, some 320 per peer, would have).
    const records = (await sent()) - before
    expect(records).toBeGreaterThanOrEqual(40)
    expect(records).toBeLessThanOrEqual(2 * 40)
  })

  it('concurrent writes without a context become siblings, and a write with the context resolves them', async () => {
    const cluster = await startCluster()
    const key = 'sib/profile'
    const [a, b] = replicasOf(key)
    const urlA = cluster.member(a as string).url
    const urlB = cluster.member(b as string).url
    await Promise.all([put(urlA, key, 'from-a'), put(urlB, key, 'from-b')])
    const read = await get(cluster.member('n1').url, key)
    expect(read.values).toEqual(['from-a', 'from-b'])
    // Without ?format=json the read answers 300 Multiple Choices.
    const raw = await fetch(`${urlA}/v1/kv/${keyPath(key)}`)
    expect(raw.status).toBe(300)
    expect(raw.headers.get('kv-siblings')).toBe('2')
    await raw.arrayBuffer()
    // A third blind write adds a third sibling.
    await put(cluster.member('n5').url, key, 'blind')
    expect((await get(urlB, key)).values).toEqual(['blind', 'from-a', 'from-b'])
    // The write carrying the context of the last read resolves all of them.
    const seen = await get(urlB, key)
    const resolved = await put(urlA, key, 'merged', { context: seen.context ?? '' })
    expect(resolved.status).toBe(200)
    const after = await get(cluster.member('n4').url, key, { r: 'all' })
    expect(after.values).toEqual(['merged'])
    for (const id of replicasOf(key)) {
      await waitFor(async () => (await cluster.local(id, key))?.siblings.length === 1, {
        timeoutMs: 10_000,
        message: `${id} kept stale siblings`,
      })
    }
    // A context resolves only what it saw: a write concurrent with the resolution survives.
    const ctx = (await get(urlA, key)).context as string
    await put(urlB, key, 'concurrent')
    await put(urlA, key, 'resolution', { context: ctx })
    expect((await get(urlA, key, { r: 'all' })).values).toEqual(['concurrent', 'resolution'])
  })

  it('under lww the write with the highest timestamp wins on every replica, as the README says', async () => {
    const cluster = await startCluster(['--conflicts', 'lww', '--anti-entropy-interval-ms', '1000'])
    const key = 'lww/k'
    const writes = await Promise.all(
      cluster.members.flatMap((m) => [0, 1, 2, 3].map((j) => put(m.url, key, `${m.id}-${j}`))),
    )
    for (const w of writes) expect(w.status).toBe(200)
    const winner = [...writes].sort((x, y) =>
      compareHlc(parseHlc(y.body.timestamp), parseHlc(x.body.timestamp)),
    )[0]
    // The winning value is the one whose acknowledged timestamp is highest.
    const winnerValue = (winner?.body as WriteBody & { value?: string }).timestamp
    const winnerRead = await get(cluster.member('n1').url, key, { r: 'all', repair: 'blocking' })
    expect(winnerRead.values).toHaveLength(1)
    expect(winnerRead.timestamps).toEqual([winnerValue])
    for (const id of replicasOf(key)) {
      await waitFor(
        async () => (await cluster.local(id, key))?.siblings[0]?.timestamp === winnerValue,
        { timeoutMs: 10_000, message: `${id} did not settle on the winner` },
      )
      expect((await cluster.local(id, key))?.siblings).toHaveLength(1)
    }
    // 20 writes, one survivor: the others were discarded, and counted.
    let discarded = 0
    for (const m of cluster.members) discarded += await metricTotal(m.url, 'kv_lww_discarded_total')
    expect(discarded).toBeGreaterThan(0)
    // A write that read first (any coordinator) comes after what it read: it wins.
    const later = await put(cluster.member('n2').url, key, 'after-read')
    expect(compareHlc(parseHlc(later.body.timestamp), parseHlc(winnerValue))).toBeGreaterThan(0)
    expect((await get(cluster.member('n5').url, key)).values).toEqual(['after-read'])
    // A delete is a timestamped tombstone; a later write brings the key back.
    expect((await del(cluster.member('n3').url, key)).status).toBe(200)
    expect((await get(cluster.member('n4').url, key)).status).toBe(404)
    await put(cluster.member('n1').url, key, 'reborn')
    expect((await get(cluster.member('n2').url, key)).values).toEqual(['reborn'])
  })

  it('a deleted key stays deleted through a replica downtime, hinted handoff and anti-entropy', async () => {
    const cluster = await startCluster([
      '--anti-entropy-interval-ms',
      '500',
      '--hint-window-ms',
      '60000',
      '--tombstone-gc-ms',
      '120000',
    ])
    const keys = Array.from({ length: 200 }, (_, i) => `del/${i}`).filter((k) =>
      replicasOf(k).includes('n4'),
    )
    for (const key of keys)
      expect((await put(cluster.member('n1').url, key, 'alive', { w: 'all' })).status).toBe(200)
    await cluster.stop('n4')
    await cluster.waitForViews()
    // Delete everything while n4, which still holds the values, is down.
    for (const key of keys) {
      const coordinator = replicasOf(key).find((id) => id !== 'n4') as string
      const res = await del(cluster.member(coordinator).url, key)
      expect(res.status, JSON.stringify(res.body)).toBe(200)
    }
    await cluster.startMember('n4')
    // While hints and anti-entropy run, quorum reads (R + W > N) through every member never
    // see a value, though n4 still holds them all.
    const deadline = Date.now() + 3000
    while (Date.now() < deadline) {
      for (const key of keys.slice(0, 20)) {
        for (const m of cluster.members) {
          const read = await get(m.url, key, { r: 'quorum' })
          expect(read.status, `${key} through ${m.id}`).toBe(404)
        }
      }
    }
    await waitFor(
      async () =>
        (await Promise.all(cluster.running.map((m) => cluster.hints(m.id)))).every(
          (h) => h.total === 0,
        ) && (await rootsConverged(cluster)).ok,
      { timeoutMs: 20_000, message: 'hints not replayed or replicas not converged' },
    )
    // Once converged, even single-replica reads at every replica find nothing.
    for (const key of keys) {
      for (const id of replicasOf(key)) {
        expect((await get(cluster.member(id).url, key, { r: 1 })).status, `${key} at ${id}`).toBe(
          404,
        )
      }
    }
    for (const key of keys) {
      for (const id of replicasOf(key)) {
        const copy = await cluster.local(id, key)
        expect(
          copy?.siblings.every((s) => s.tombstone),
          `${key} at ${id}`,
        ).toBe(true)
      }
    }
    // And through another downtime and anti-entropy rounds, nothing comes back.
    await cluster.restart('n4')
    await new Promise((resolve) => setTimeout(resolve, 2000))
    for (const key of keys)
      expect((await get(cluster.member('n4').url, key, { r: 'all' })).status).toBe(404)
    expect((await rootsConverged(cluster)).ok).toBe(true)
  })

  it('a tombstone outlives a replica that is down past tombstoneGcMs, and is collected once every replica holds it', async () => {
    const cluster = await startCluster([
      '--anti-entropy-interval-ms',
      '200',
      '--hint-window-ms',
      '500',
      '--tombstone-gc-ms',
      '2500',
    ])
    const key = 'gc/one'
    const replicas = replicasOf(key)
    const [first, second, stale] = replicas as [string, string, string]
    await put(cluster.member(first).url, key, 'v', { w: 'all' })
    // One replica goes down holding the value, and stays down well past tombstoneGcMs.
    await cluster.terminate(stale)
    await cluster.waitForViews()
    expect((await del(cluster.member(first).url, key)).status).toBe(200)
    await new Promise((resolve) => setTimeout(resolve, 6000))
    // The live replicas keep the tombstone: the stale one could not confirm it.
    for (const id of [first, second]) {
      expect(
        (await cluster.local(id, key))?.siblings.every((s) => s.tombstone),
        id,
      ).toBe(true)
      expect(await metricTotal(cluster.member(id).url, 'kv_tombstones_awaiting_replicas')).toBe(1)
      expect(await metricTotal(cluster.member(id).url, 'kv_tombstones_collected_total')).toBe(0)
    }
    // It comes back with the deleted value on its disk; reads never show it, and once it
    // holds the tombstone (anti-entropy: its hint expired) every replica collects it.
    await cluster.startMember(stale)
    const deadline = Date.now() + 15_000
    for (;;) {
      for (const m of cluster.members) {
        expect((await get(m.url, key, { r: 'quorum' })).status, `through ${m.id}`).toBe(404)
      }
      const copies = await Promise.all(replicas.map((id) => cluster.local(id, key)))
      if (copies.every((c) => c === null)) break
      expect(Date.now(), `not collected: ${JSON.stringify(copies)}`).toBeLessThan(deadline)
      await new Promise((resolve) => setTimeout(resolve, 200))
    }
    let collected = 0
    for (const m of cluster.running)
      collected += await metricTotal(m.url, 'kv_tombstones_collected_total')
    expect(collected).toBe(3)
    for (const id of replicas) {
      expect((await get(cluster.member(id).url, key, { r: 1 })).status, id).toBe(404)
    }
    expect((await rootsConverged(cluster)).ok).toBe(true)
  })

  it('the sibling cap holds: blind writes past it are refused, and a context resolves them', async () => {
    const cluster = await startCluster(['--siblings-max', '4', '--siblings-warn', '3'])
    const key = 'cap/k'
    const statuses: number[] = []
    const codes: (string | undefined)[] = []
    for (let i = 0; i < 8; i++) {
      const res = await put(cluster.members[i % 5]?.url as string, key, `s${i}`, { w: 'all' })
      statuses.push(res.status)
      codes.push(res.body.error?.code)
    }
    expect(statuses.slice(0, 4)).toEqual([200, 200, 200, 200])
    expect(statuses.slice(4)).toEqual([409, 409, 409, 409])
    expect(codes[4]).toBe('KV_ERR_TOO_MANY_SIBLINGS')
    const read = await get(cluster.member('n1').url, key, { r: 'all' })
    expect(read.values).toHaveLength(4)
    for (const id of replicasOf(key))
      expect((await cluster.local(id, key))?.siblings.length).toBeLessThanOrEqual(4)
    let warnings = 0
    for (const m of cluster.members)
      warnings += await metricTotal(m.url, 'kv_sibling_warnings_total')
    expect(warnings).toBeGreaterThan(0)
    const resolved = await put(cluster.member('n2').url, key, 'one', {
      context: read.context as string,
    })
    expect(resolved.status).toBe(200)
    expect((await get(cluster.member('n3').url, key, { r: 'all' })).values).toEqual(['one'])
    // Concurrent blind writes at every coordinator at once may race past the coordinator's
    // check; replicas then merge down to the cap (oldest dropped) and count what they drop.
    await Promise.all(
      Array.from({ length: 15 }, (_, i) =>
        put(cluster.members[i % 5]?.url as string, key, `race${i}`, { w: 1 }),
      ),
    )
    await waitFor(
      async () => {
        const copies = await Promise.all(replicasOf(key).map((id) => cluster.local(id, key)))
        return copies.every((c) => (c?.siblings.length ?? 0) <= 4)
      },
      { timeoutMs: 10_000, message: 'a replica holds more siblings than the cap' },
    )
    const final = await get(cluster.member('n1').url, key, { r: 'all', repair: 'blocking' })
    expect(final.values.length).toBeLessThanOrEqual(4)
  })

  it('refuses bad input with stable codes: contexts, w and r, single-leader options, bad peer frames', async () => {
    const cluster = await startCluster()
    const url = cluster.member('n1').url
    const bad = await fetch(`${url}/v1/kv/x`, {
      method: 'PUT',
      body: 'v',
      headers: { 'kv-context': '!!!' },
    })
    expect(bad.status).toBe(400)
    expect(((await bad.json()) as { error: { code: string } }).error.code).toBe(
      'KV_ERR_INVALID_CONTEXT',
    )
    const forged = await fetch(`${url}/v1/kv/x`, {
      method: 'PUT',
      body: 'v',
      headers: { 'kv-context': Buffer.from('not a record').toString('base64url') },
    })
    expect(((await forged.json()) as { error: { code: string } }).error.code).toBe(
      'KV_ERR_INVALID_CONTEXT',
    )
    for (const [query, code] of [
      ['w=4', 'KV_ERR_INVALID_ARGUMENT'],
      ['w=0', 'KV_ERR_INVALID_ARGUMENT'],
      ['w=most', 'KV_ERR_INVALID_ARGUMENT'],
      ['ack=quorum', 'KV_ERR_UNSUPPORTED_IN_MODE'],
      ['colour=red', 'KV_ERR_INVALID_ARGUMENT'],
    ] as const) {
      const res = await fetch(`${url}/v1/kv/x?${query}`, { method: 'PUT', body: 'v' })
      expect(((await res.json()) as { error: { code: string } }).error.code, query).toBe(code)
    }
    const r = await fetch(`${url}/v1/kv/x?r=9`)
    expect(((await r.json()) as { error: { code: string } }).error.code).toBe(
      'KV_ERR_INVALID_ARGUMENT',
    )
    const ifMatch = await fetch(`${url}/v1/kv/x`, {
      method: 'PUT',
      body: 'v',
      headers: { 'if-match': '"3"' },
    })
    expect(((await ifMatch.json()) as { error: { code: string } }).error.code).toBe(
      'KV_ERR_UNSUPPORTED_IN_MODE',
    )
    const list = await fetch(`${url}/v1/kv?prefix=a`)
    expect(((await list.json()) as { error: { code: string } }).error.code).toBe(
      'KV_ERR_UNSUPPORTED_IN_MODE',
    )
    const batch = await fetch(`${url}/v1/batch`, { method: 'POST', body: '{"ops":[]}' })
    expect(((await batch.json()) as { error: { code: string } }).error.code).toBe(
      'KV_ERR_UNSUPPORTED_IN_MODE',
    )
    const missing = await fetch(`${url}/v1/kv/never-written`)
    expect(missing.status).toBe(404)
    expect(((await missing.json()) as { error: { code: string } }).error.code).toBe(
      'KV_ERR_KEY_NOT_FOUND',
    )
    const big = await fetch(`${url}/v1/kv/${'k'.repeat(2000)}`, { method: 'PUT', body: 'v' })
    expect(((await big.json()) as { error: { code: string } }).error.code).toBe(
      'KV_ERR_KEY_TOO_LARGE',
    )

    // The peer port refuses garbage and requests meant for another cluster, and keeps serving.
    const http2 = await import('node:http2')
    const peer = (body: Uint8Array) =>
      new Promise<{ status: number; body: Buffer }>((resolve, reject) => {
        // As member n1, with its certificate: the peer port takes nothing else.
        const session = http2.connect(cluster.member('n2').peerUrl, memberTls('n1'))
        session.on('error', reject)
        const stream = session.request({ ':method': 'POST', ':path': '/peer/v1/ll' })
        const chunks: Buffer[] = []
        let status = 0
        stream.on('response', (h) => (status = Number(h[':status'])))
        stream.on('data', (c: Buffer) => chunks.push(c))
        stream.on('end', () => {
          session.close()
          resolve({ status, body: Buffer.concat(chunks) })
        })
        stream.end(body)
      })
    const { decodePeerReply, encodePeerRequest } = await import('@kvstore/protocol')
    const garbage = await peer(Buffer.from([0xff, 0xff, 0xff, 0x01, 0x02]))
    expect(garbage.status).toBe(400)
    expect(decodePeerReply(garbage.body)).toMatchObject({
      kind: 'refusal',
      code: 'KV_ERR_BAD_FRAME',
    })
    const foreign = await peer(
      encodePeerRequest({ clusterId: 'another', from: 'n1', to: 'n2', body: { kind: 'ping' } }),
    )
    expect(decodePeerReply(foreign.body)).toMatchObject({
      kind: 'refusal',
      code: 'KV_ERR_CLUSTER_MISMATCH',
    })
    // A member with other ring settings is refused the same way.
    const clusterId = ((await (await fetch(`${url}/v1/cluster`)).json()) as { clusterId: string })
      .clusterId
    const otherRing = await peer(
      encodePeerRequest({
        clusterId: `${clusterId}/replicas=3/vnodes=32/conflicts=siblings`,
        from: 'n1',
        to: 'n2',
        body: { kind: 'ping' },
      }),
    )
    expect(decodePeerReply(otherRing.body)).toMatchObject({
      kind: 'refusal',
      code: 'KV_ERR_CLUSTER_MISMATCH',
    })
    const sameRing = await peer(
      encodePeerRequest({
        clusterId: `${clusterId}/replicas=3/vnodes=64/conflicts=siblings`,
        from: 'n1',
        to: 'n2',
        body: { kind: 'ping' },
      }),
    )
    expect(decodePeerReply(sameRing.body)).toMatchObject({ kind: 'pong' })
    // On the multiplexed channel, a frame with an impossible length closes the channel.
    const closed = await new Promise<string>((resolve) => {
      const session = http2.connect(cluster.member('n2').peerUrl, memberTls('n1'))
      session.on('error', () => {})
      const stream = session.request({ ':method': 'POST', ':path': '/peer/v1/ll-stream' })
      stream.on('error', () => {})
      stream.on('close', () => {
        session.close()
        resolve(`closed with code ${stream.rstCode}`)
      })
      stream.resume()
      stream.write(Buffer.from([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1]))
    })
    expect(closed).toBe(`closed with code ${http2.constants.NGHTTP2_PROTOCOL_ERROR}`)
    expect((await put(url, 'still/works', 'yes')).status).toBe(200)
    expect((await get(cluster.member('n2').url, 'still/works')).values).toEqual(['yes'])
  })
})
