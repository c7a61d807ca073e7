/**
 * Regions (multi-leader) on real processes: two regions of three nodes (us: n1-n3, eu: n4-n6),
 * TLS and auth as shipped, each region reaching the other through a TCP proxy per member that
 * a test can cut (an inter-region partition) and heal.
 *
 * - Concurrent writes of one key in both regions converge to one value on all six nodes, and
 *   the loser is in the conflict record with its winner; a write that saw the winner is not a
 *   conflict; deletes converge too (tombstones).
 * - A region's leader killed while it ships: every acknowledged write arrives, once.
 * - A partition heals and the regions converge; every acknowledged write is the final value,
 *   or a recorded loser.
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { Agent, request } from 'undici'
import { encodeRegionBatch, type RegionBatch } from '@kvstore/protocol'
import { CutProxy, TestCluster, metricTotal, until, type ClusterMember } from '@kvstore/testkit'
import { testCertsDir } from './support/certs.js'

let us: TestCluster
let eu: TestCluster
const proxies: CutProxy[] = []

beforeAll(async () => {
  // Tombstones may go after 1 s once the other region caught up past them (with a 0.5 s skew
  // allowance and the 5 s ack timeout as margin), so a test can watch one being collected.
  const args = ['--region-tombstone-gc-ms', '1000', '--region-clock-skew-max-ms', '500']
  const started = await TestCluster.startRegions(['us', 'eu'], 3, args, {
    urlsFor: async (_viewer, _region, member) => {
      const proxy = await CutProxy.start('127.0.0.1', {
        host: '127.0.0.1',
        port: Number(new URL(member.url).port),
      })
      proxies.push(proxy)
      return `https://127.0.0.1:${proxy.port}`
    },
  })
  ;[us, eu] = started.regions as [TestCluster, TestCluster]
}, 120_000)
afterAll(async () => {
  await eu?.stop()
  await us?.stop()
  for (const p of proxies) await p.close()
}, 60_000)

const cut = () => proxies.forEach((p) => p.cut('refuse'))
const heal = () => proxies.forEach((p) => p.heal())

interface WriteAnswer {
  status: number
  stamp?: string
  previousStamp?: string | null
  error?: { code: string }
}

async function write(
  member: ClusterMember,
  key: string,
  value: string | null,
): Promise<WriteAnswer> {
  const res = await fetch(`${member.url}/v1/kv/${encodeURIComponent(key)}`, {
    method: value === null ? 'DELETE' : 'PUT',
    ...(value === null ? {} : { body: value }),
  })
  const body = (await res.json()) as Omit<WriteAnswer, 'status'>
  return { status: res.status, ...body }
}

async function read(member: ClusterMember, key: string): Promise<string | null> {
  const res = await fetch(`${member.url}/v1/kv/${encodeURIComponent(key)}`)
  if (res.status === 404) return null
  expect(res.status).toBe(200)
  return res.text()
}

interface Conflict {
  key: string
  detectedIn: string
  winner: { stamp: string; value: string | null; deleted: boolean }
  loser: { stamp: string; value: string | null; deleted: boolean }
}

async function conflicts(member: ClusterMember): Promise<Conflict[]> {
  const out: Conflict[] = []
  let after: string | null = null
  for (;;) {
    const res = await fetch(
      `${member.url}/admin/v1/conflicts?limit=1000${after !== null ? `&after=${after}` : ''}`,
    )
    const page = (await res.json()) as {
      conflicts: (Conflict & { id: string })[]
      next: string | null
    }
    out.push(...page.conflicts)
    if (page.next === null) return out
    after = page.next
  }
}

/** Every running member of both regions: the same digest of live user keys. */
async function converged(timeoutMs = 30_000): Promise<string> {
  let digests: string[] = []
  await until(
    'all six nodes converge',
    async () => {
      const members = [...us.active(), ...eu.active()]
      digests = await Promise.all(
        members.map(async (m) => {
          const res = await fetch(`${m.url}/admin/v1/regions/digest`)
          return ((await res.json()) as { digest: string }).digest
        }),
      )
      return digests.every((d) => d === digests[0])
    },
    timeoutMs,
    100,
  )
  return digests[0] as string
}

it('concurrent writes of one key converge everywhere and the loser is recorded', async () => {
  const ul = await us.waitForLeader()
  const el = await eu.waitForLeader()
  cut()
  try {
    const a = await write(ul, 'cart/1', 'us-apples')
    const b = await write(el, 'cart/1', 'eu-pears')
    // A delete in one region against a put in the other.
    await write(ul, 'cart/2', 'us-first')
    await write(el, 'cart/2', 'eu-second')
    const d = await write(ul, 'cart/2', null)
    expect([a.status, b.status, d.status]).toEqual([200, 200, 200])
    expect(a.stamp).toMatch(/^[0-9]+\.[0-9]+@us$/)
    expect(b.stamp).toMatch(/@eu$/)
  } finally {
    heal()
  }
  await converged()
  const values = await Promise.all([...us.active(), ...eu.active()].map((m) => read(m, 'cart/1')))
  expect(new Set(values).size).toBe(1)
  const winner = values[0] as string
  expect(['us-apples', 'eu-pears']).toContain(winner)
  const loser = winner === 'us-apples' ? 'eu-pears' : 'us-apples'
  // Both regions detect the conflict when the other's write arrives; both record it.
  for (const m of [ul, el]) {
    const recorded = (await conflicts(m)).filter((c) => c.key === 'cart/1')
    expect(recorded).toHaveLength(1)
    expect(recorded[0]?.winner.value).toBe(winner)
    expect(recorded[0]?.loser.value).toBe(loser)
  }
  // cart/2 converged too, to the later of the delete and eu's put, on every node.
  const second = await Promise.all([...us.active(), ...eu.active()].map((m) => read(m, 'cart/2')))
  expect(new Set(second).size).toBe(1)

  // A write that saw the winner is a causal overwrite: applied everywhere, no new record.
  const before = (await conflicts(ul)).length + (await conflicts(el)).length
  const next = await write(el, 'cart/1', 'eu-after')
  const stampOfWinner = (await conflicts(el)).find((c) => c.key === 'cart/1')?.winner.stamp
  expect(next.previousStamp).toBe(stampOfWinner)
  await converged()
  expect(await read(ul, 'cart/1')).toBe('eu-after')
  expect((await conflicts(ul)).length + (await conflicts(el)).length).toBe(before)
}, 120_000)

it('a region leader killed while shipping loses nothing and applies nothing twice', async () => {
  const el = await eu.waitForLeader()
  let ul = await us.waitForLeader()
  const acked = new Map<string, string>()
  const conflictsBefore = (await conflicts(el)).length
  // Each key is written three times in order: a batch shipped twice would bring an older
  // value back over a newer one, which shows as a conflict (or a wrong final value).
  let killed = false
  for (let round = 0; round < 3; round++) {
    for (let i = 0; i < 40; i++) {
      const key = `ship/${i}`
      const value = `v${round}-${i}`
      for (let attempt = 0; ; attempt++) {
        const answer = await write(ul, key, value).catch(() => null)
        if (answer?.status === 200) {
          acked.set(key, value)
          break
        }
        expect(attempt).toBeLessThan(100)
        ul = await us.waitForLeader()
      }
      if (round === 1 && i === 20 && !killed) {
        // Mid-stream: the shipping leader dies; a new one resumes from eu's cursor.
        killed = true
        await us.kill(ul.id)
        ul = await us.waitForLeader()
      }
    }
  }
  await until(
    'eu has every acknowledged write',
    async () => {
      for (const [key, value] of acked) if ((await read(el, key)) !== value) return false
      return true
    },
    30_000,
    100,
  )
  expect((await conflicts(el)).length).toBe(conflictsBefore)
  // The killed member comes back and catches up; the regions agree.
  const dead = us.members.find((m) => !us.active().includes(m))
  if (dead !== undefined) await us.startMember(dead.id)
  await us.waitForLeader()
  await converged()
}, 180_000)

it('an inter-region partition heals and the regions converge; every write is final or a recorded loser', async () => {
  const ul = await us.waitForLeader()
  const el = await eu.waitForLeader()
  const acked: { key: string; value: string; stamp: string }[] = []
  cut()
  try {
    for (let i = 0; i < 30; i++) {
      const key = `p/${i % 10}`
      for (const [m, r] of [
        [ul, 'us'],
        [el, 'eu'],
      ] as const) {
        const value = `${r}-${i}`
        const answer = await write(m, key, value)
        expect(answer.status).toBe(200)
        acked.push({ key, value, stamp: answer.stamp as string })
      }
    }
    // While cut, each region serves its own writes, and shows the other as behind.
    const view = (await (await fetch(`${ul.url}/v1/regions`)).json()) as {
      shipping: { to: string; lagEntries: number }[]
    }
    expect(view.shipping[0]?.lagEntries).toBeGreaterThan(0)
  } finally {
    heal()
  }
  await converged()
  await until(
    'shipping caught up both ways',
    async () => {
      for (const m of [ul, el]) {
        const view = (await (await fetch(`${m.url}/v1/regions`)).json()) as {
          shipping: { lagEntries: number; state: string }[]
        }
        if (view.shipping.some((s) => s.lagEntries !== 0 || s.state !== 'streaming')) return false
      }
      return true
    },
    20_000,
    100,
  )
  const losers = new Set(
    [...(await conflicts(ul)), ...(await conflicts(el))].map((c) => c.loser.stamp),
  )
  const finals = new Map<string, string | null>()
  for (let k = 0; k < 10; k++) finals.set(`p/${k}`, await read(ul, `p/${k}`))
  // Per key and region, the writes are sequential: each overwrote the previous one of its
  // region (which it saw). Only the last write of each region per key can be final or lost.
  const lastOf = new Map<string, { key: string; value: string; stamp: string }>()
  for (const w of acked) lastOf.set(`${w.key} ${w.stamp.split('@')[1]}`, w)
  for (const w of lastOf.values()) {
    const final = finals.get(w.key)
    expect(final === w.value || losers.has(w.stamp), `${w.key}=${w.value} vanished`).toBe(true)
  }
  // Every key had concurrent writes: one of the two lost, and is recorded.
  for (let k = 0; k < 10; k++) {
    const region = [...lastOf.values()].filter((w) => w.key === `p/${k}`)
    expect(region.filter((w) => losers.has(w.stamp))).toHaveLength(1)
  }
}, 180_000)

it('refuses forged and malformed batches with coded errors, and applies none of them', async () => {
  const el = await eu.waitForLeader()
  const dir = testCertsDir()
  // n1 is a member of us: its certificate may ship us's writes to eu, and nothing else.
  const asN1 = new Agent({
    connect: {
      ca: readFileSync(join(dir, 'ca.crt')),
      cert: readFileSync(join(dir, 'n1.crt')),
      key: readFileSync(join(dir, 'n1.key')),
    },
  })
  const ship = async (body: Buffer, dispatcher?: Agent) => {
    const res = await request(`${el.url}/internal/v1/regions/ship`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-protobuf' },
      body,
      ...(dispatcher !== undefined ? { dispatcher } : {}),
    })
    return {
      status: res.statusCode,
      code: ((await res.body.json()) as { error?: { code: string } }).error?.code,
    }
  }
  const cursor = async () => {
    const res = await request(`${el.url}/internal/v1/regions/cursor`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ source: 'us' }),
      dispatcher: asN1,
    })
    return ((await res.body.json()) as { cursor: number }).cursor
  }
  const at = await cursor()
  const batch = (over: Partial<RegionBatch> = {}, wallMs = Date.now()): Buffer => {
    const b: RegionBatch = {
      source: 'us',
      sourceEpoch: 1,
      fromLsn: at + 1,
      throughLsn: at + 1,
      sourceCommitLsn: at + 1,
      sentAtMs: Date.now(),
      entries: [
        {
          lsn: at + 1,
          timestampMs: Date.now(),
          ops: [
            {
              type: 1,
              key: Buffer.from('forged/1'),
              value: Buffer.from('x'),
              stamp: { wallMs, logical: 0, region: over.source ?? 'us' },
            },
          ],
        },
      ],
      ...over,
    }
    return Buffer.from(encodeRegionBatch(b))
  }
  try {
    // Root (a user, even an admin) may not ship.
    expect(await ship(batch())).toMatchObject({ status: 401, code: 'KV_ERR_UNAUTHENTICATED' })
    // A member of us may not ship as another region.
    expect(await ship(batch({ source: 'eu' }), asN1)).toMatchObject({
      status: 403,
      code: 'KV_ERR_PERMISSION_DENIED',
    })
    // Bytes that are not a batch.
    expect(await ship(Buffer.from('not protobuf'), asN1)).toMatchObject({
      status: 400,
      code: 'KV_ERR_MALFORMED_BODY',
    })
    // A batch that skips entries past eu's cursor.
    expect(
      await ship(
        batch({ fromLsn: at + 5, throughLsn: at + 5, sourceCommitLsn: at + 5, entries: [] }),
        asN1,
      ),
    ).toMatchObject({ status: 409, code: 'KV_ERR_REGION_GAP' })
    // A write stamped two hours ahead of eu's clock.
    expect(await ship(batch({}, Date.now() + 2 * 3600_000), asN1)).toMatchObject({
      status: 409,
      code: 'KV_ERR_CLOCK_SKEW',
    })
    expect(await read(el, 'forged/1')).toBeNull()
    expect(await cursor()).toBe(at)
  } finally {
    await asN1.close()
  }
}, 60_000)

it('collects a tombstone only once the other region has caught up past it', async () => {
  const ul = await us.waitForLeader()
  const el = await eu.waitForLeader()
  expect((await write(ul, 'gc/1', 'here')).status).toBe(200)
  await converged()
  const collected = (m: ClusterMember) => metricTotal(m.url, 'kv_region_tombstones_collected_total')
  // Earlier tests' tombstones (cart/2's delete) are collected once both regions are past them:
  // wait until both leaders hold none and their counts settle, so that what is counted below is
  // this test's tombstone only (a late collection of cart/2 was once counted as gc/1's).
  const kept = (m: ClusterMember) => metricTotal(m.url, 'kv_region_tombstones')
  let counts = [await collected(ul), await collected(el)]
  await until(
    'both leaders hold no earlier tombstone, and their counts settle',
    async () => {
      await new Promise((resolve) => setTimeout(resolve, 1000))
      const now = [await collected(ul), await collected(el)]
      const settled = now[0] === counts[0] && now[1] === counts[1]
      counts = now
      return settled && (await kept(ul)) === 0 && (await kept(el)) === 0
    },
    30_000,
    0,
  )
  const before = { us: counts[0] as number, eu: counts[1] as number }
  cut()
  try {
    expect((await write(ul, 'gc/1', null)).status).toBe(200)
    // Well past the 1 s minimum (and the 5.5 s margin): eu has not caught up past the delete,
    // so us keeps its tombstone; an older write of eu's could still be on its way.
    await new Promise((resolve) => setTimeout(resolve, 8000))
    expect(await collected(ul)).toBe(before.us)
  } finally {
    heal()
  }
  // Once the link is back, both regions hold the delete, then both collect it.
  await until(
    'both regions collect the tombstone',
    async () => (await collected(ul)) > before.us && (await collected(el)) > before.eu,
    30_000,
    200,
  )
  await converged()
  expect(await read(ul, 'gc/1')).toBeNull()
  expect(await read(el, 'gc/1')).toBeNull()
}, 90_000)

it('idle regions write nothing to each other (no entry ping-pong), and show no lag', async () => {
  const ul = await us.waitForLeader()
  const el = await eu.waitForLeader()
  await converged()
  const applied = async () =>
    [await us.status(ul.id), await eu.status(el.id)].map((s) => s.appliedLsn)
  // Let the last entries settle: three seconds without a new one (run alone, this also waits
  // out the leader's one-time record of the other region's cursor, 5 s after the start).
  let before = await applied()
  await until(
    'the regions settle',
    async () => {
      await new Promise((resolve) => setTimeout(resolve, 3000))
      const now = await applied()
      const same = now.every((lsn, i) => lsn === before[i])
      before = now
      return same
    },
    40_000,
  )
  await new Promise((resolve) => setTimeout(resolve, 4000))
  expect(await applied()).toEqual(before)
  for (const m of [ul, el]) {
    const view = (await (await fetch(`${m.url}/v1/regions`)).json()) as {
      shipping: { lagEntries: number; lagMs: number; state: string }[]
    }
    expect(view.shipping).toEqual([
      expect.objectContaining({ lagEntries: 0, lagMs: 0, state: 'streaming' }),
    ])
  }
}, 60_000)

describe('a region cut off for longer than the other keeps its log', () => {
  let a: TestCluster
  let b: TestCluster
  const links: CutProxy[] = []

  beforeAll(async () => {
    // Logs kept for at most 50 entries past what the other region confirmed.
    const args = ['--log-retention-entries', '0', '--log-retention-entries-max', '50']
    const started = await TestCluster.startRegions(['us', 'eu'], 3, args, {
      urlsFor: async (_viewer, _region, member) => {
        const proxy = await CutProxy.start('127.0.0.1', {
          host: '127.0.0.1',
          port: Number(new URL(member.url).port),
        })
        links.push(proxy)
        return `https://127.0.0.1:${proxy.port}`
      },
    })
    ;[a, b] = started.regions as [TestCluster, TestCluster]
  }, 120_000)
  afterAll(async () => {
    await b?.stop()
    await a?.stop()
    for (const p of links) await p.close()
  }, 60_000)

  it('is re-seeded from a snapshot, then streams on, and the regions converge', async () => {
    const al = await a.waitForLeader()
    const bl = await b.waitForLeader()
    expect((await write(al, 'seed/before', 'shipped')).status).toBe(200)
    await until('eu has the first write', async () => (await read(bl, 'seed/before')) !== null)
    links.forEach((p) => p.cut('refuse'))
    try {
      for (let i = 0; i < 150; i++)
        expect((await write(al, `seed/${i % 40}`, `v${i}`)).status).toBe(200)
      expect((await write(al, 'seed/before', null)).status).toBe(200)
      // us compacts its log past what eu has (housekeeping runs every 5 s).
      await until(
        'us compacts past the cut',
        async () => {
          const view = (await (await fetch(`${al.url}/v1/status`)).json()) as {
            logStartLsn?: number
          }
          return (view.logStartLsn ?? 0) > 60
        },
        30_000,
        250,
      )
    } finally {
      links.forEach((p) => p.heal())
    }
    await until(
      'both regions converge',
      async () => {
        const all = [...a.active(), ...b.active()]
        const digests = await Promise.all(
          all.map(
            async (m) =>
              (
                (await (await fetch(`${m.url}/admin/v1/regions/digest`)).json()) as {
                  digest: string
                }
              ).digest,
          ),
        )
        return digests.every((d) => d === digests[0])
      },
      30_000,
      200,
    )
    expect(await read(bl, 'seed/before')).toBeNull()
    expect(await read(bl, 'seed/39')).toBe('v119')
    const view = (await (await fetch(`${al.url}/v1/regions`)).json()) as {
      shipping: { copiedRecords: number; state: string }[]
    }
    expect(view.shipping[0]?.copiedRecords).toBeGreaterThan(0)
    // A re-seed of us's own latest records over eu's older ones of us: no conflict.
    expect(await conflicts(bl)).toEqual([])
  }, 120_000)
})
