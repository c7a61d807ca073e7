/**
 * kv-router in front of two real sharded groups of three (g1 owns slots 0-2047, g2 the rest;
 * TLS and auth as shipped): each key goes to its group, a batch across groups is refused with
 * KV_ERR_CROSS_SHARD, a listing merges both groups in key order page by page, sessions span
 * groups, and a router whose map went stale after a slot move recovers by itself on the first
 * KV_ERR_WRONG_SHARD.
 */
import { join } from 'node:path'
import { slotOfKey, type GroupShardView, type ShardMove } from '@kvstore/protocol'
import {
  TestCluster,
  startRouterProcess,
  stopRouterProcess,
  until,
  type RouterProcess,
} from '@kvstore/testkit'
import { testCertsDir } from './support/certs.js'

let g1: TestCluster
let g2: TestCluster
let mapFile: string
let router: RouterProcess

beforeAll(async () => {
  const started = await TestCluster.startShardGroups(2, 3, ['--ack-timeout-ms', '3000'])
  ;[g1, g2] = started.groups as [TestCluster, TestCluster]
  mapFile = started.mapFile
  const certs = testCertsDir()
  router = await startRouterProcess([
    '--shard-map',
    mapFile,
    '--cert-file',
    join(certs, 'n9.crt'),
    '--key-file',
    join(certs, 'n9.key'),
    '--ca-file',
    join(certs, 'ca.crt'),
    '--identity-cert',
    join(certs, 'root.crt'),
    '--identity-key',
    join(certs, 'root.key'),
    '--probe-interval-ms',
    '200',
    // The map is refreshed only when a group says it is wrong: the stale-map test relies on it.
    '--map-refresh-interval-ms',
    '3600000',
  ])
}, 120_000)
afterAll(async () => {
  if (router !== undefined) await stopRouterProcess(router)
  await g2?.stop()
  await g1?.stop()
})

const kvUrl = (key: string) => `${router.url}/v1/kv/${encodeURIComponent(key)}`

function keysIn(first: number, last: number, tag: string, count: number): string[] {
  const out: string[] = []
  for (let i = 0; out.length < count; i++) {
    const key = `${tag}-${i}`
    const slot = slotOfKey(key)
    if (slot >= first && slot <= last) out.push(key)
  }
  return out
}

async function put(
  key: string,
  value: string,
  session?: string,
): Promise<{ status: number; servedBy: string | null; session: string | null; body: unknown }> {
  const res = await fetch(kvUrl(key), {
    method: 'PUT',
    body: value,
    headers: session === undefined ? {} : { 'kv-session': session },
  })
  return {
    status: res.status,
    servedBy: res.headers.get('kv-served-by'),
    session: res.headers.get('kv-session'),
    body: await res.json(),
  }
}

const ids = (cluster: TestCluster) => cluster.members.map((m) => m.id)

describe('kv-router in front of two shard groups', () => {
  it('sends each key to its group, and its session spans both groups', async () => {
    const [a] = keysIn(0, 2047, 'route-a', 1) as [string]
    const [b] = keysIn(2048, 4095, 'route-b', 1) as [string]
    const first = await put(a, 'in g1')
    expect(first.status).toBe(200)
    expect(ids(g1)).toContain(first.servedBy)
    // The router's token, also in the body in place of the node's.
    expect(first.session).toMatch(/^r1\./)
    expect((first.body as { session: string }).session).toBe(first.session)
    const second = await put(b, 'in g2', first.session as string)
    expect(second.status).toBe(200)
    expect(ids(g2)).toContain(second.servedBy)
    const token = second.session as string
    // The token now holds a position in each group: reads of both see their writes.
    const decoded = JSON.parse(Buffer.from(token.slice(3), 'base64url').toString()) as [
      number,
      [string, number, number][],
    ]
    expect(decoded[1].map((e) => e[0])).toEqual(['g1', 'g2'])
    for (const [key, value] of [
      [a, 'in g1'],
      [b, 'in g2'],
    ] as const) {
      const res = await fetch(kvUrl(key), { headers: { 'kv-session': token } })
      expect(res.status).toBe(200)
      expect(await res.text()).toBe(value)
      expect(res.headers.get('kv-session')).toMatch(/^r1\./)
    }
    // A node's token cannot be placed in one of several groups.
    const refused = await fetch(kvUrl(a), { headers: { 'kv-session': 's1.1.5' } })
    expect(refused.status).toBe(400)
    expect(((await refused.json()) as { error: { code: string } }).error.code).toBe(
      'KV_ERR_INVALID_SESSION',
    )
  })

  it('refuses a batch across groups with KV_ERR_CROSS_SHARD, and takes hash-tagged keys', async () => {
    const [a] = keysIn(0, 2047, 'batch-a', 1) as [string]
    const [b] = keysIn(2048, 4095, 'batch-b', 1) as [string]
    const cross = await fetch(`${router.url}/v1/batch`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        ops: [
          { op: 'put', key: a, value: '1' },
          { op: 'put', key: b, value: '2' },
        ],
      }),
    })
    expect(cross.status).toBe(400)
    const body = (await cross.json()) as {
      error: { code: string; slots: number[]; groups: string[] }
    }
    expect(body.error.code).toBe('KV_ERR_CROSS_SHARD')
    expect(body.error.slots).toEqual([slotOfKey(a), slotOfKey(b)].sort((x, y) => x - y))
    expect(body.error.groups).toEqual(['g1', 'g2'])
    // Nothing was written.
    expect((await fetch(kvUrl(a))).status).toBe(404)
    const tagged = await fetch(`${router.url}/v1/batch`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        ops: [
          { op: 'put', key: '{user42}/profile', value: 'p' },
          { op: 'put', key: '{user42}/cart', value: 'c' },
        ],
      }),
    })
    expect(tagged.status).toBe(200)
    const owner = slotOfKey('{user42}/profile') < 2048 ? g1 : g2
    expect(ids(owner)).toContain(tagged.headers.get('kv-served-by'))
  })

  it('lists a prefix across both groups, complete and in key order, page by page', async () => {
    const keys = Array.from({ length: 41 }, (_, i) => `list/${String(i).padStart(3, '0')}`)
    let token: string | undefined
    for (const key of keys) {
      const answer = await put(key, `v-${key}`, token)
      expect(answer.status).toBe(200)
      token = answer.session as string
    }
    const groupsOf = new Set(keys.map((k) => (slotOfKey(k) < 2048 ? 'g1' : 'g2')))
    expect(groupsOf.size).toBe(2)
    for (const values of [false, true]) {
      const seen: string[] = []
      let cursor: string | null = null
      for (let pages = 0; pages < 50; pages++) {
        const query = new URLSearchParams({ prefix: 'list/', limit: '6' })
        if (values) query.set('values', 'true')
        if (cursor !== null) query.set('cursor', cursor)
        const res = await fetch(`${router.url}/v1/kv?${query}`, {
          headers: { 'kv-session': token as string },
        })
        expect(res.status).toBe(200)
        const page = (await res.json()) as {
          items: { key: string; valueBase64?: string }[]
          nextCursor: string | null
        }
        expect(page.items.length).toBeLessThanOrEqual(6)
        for (const item of page.items) {
          seen.push(item.key)
          if (values)
            expect(Buffer.from(item.valueBase64 ?? '', 'base64').toString()).toBe(`v-${item.key}`)
          else expect(item.valueBase64).toBeUndefined()
        }
        cursor = page.nextCursor
        if (cursor === null) break
      }
      expect(seen).toEqual(keys)
    }
  })

  it('recovers by itself from a stale map after a slot move (KV_ERR_WRONG_SHARD)', async () => {
    const moved = keysIn(0, 99, 'moved', 3)
    const [before, after, third] = moved as [string, string, string]
    const written = await put(before, 'written before the move')
    expect(ids(g1)).toContain(written.servedBy)
    // Move slots 0-99 from g1 to g2 behind the router's back.
    const leader = await g1.waitForLeader()
    const started = await fetch(`${leader.url}/admin/v1/shards/moves`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ slots: '0-99', to: 'g2' }),
    })
    expect(started.status).toBe(202)
    const id = ((await started.json()) as { move: ShardMove }).move.id
    await until(
      `move ${id} to finish`,
      async () => {
        const res = await fetch(`${(await g1.waitForLeader()).url}/v1/shards`)
        const view = (await res.json()) as GroupShardView
        return view.history.some((m) => m.id === id && m.phase === 'done')
      },
      60_000,
      100,
    )
    // The router still routes slots 0-99 to g1: g1 says WRONG_SHARD, the router refreshes its
    // map and goes to g2, and the client sees none of it.
    const mapBefore = (
      (await (await fetch(`${router.url}/v1/shards`)).json()) as { version: number }
    ).version
    const write = await put(after, 'written after the move')
    expect(write.status).toBe(200)
    expect(ids(g2)).toContain(write.servedBy)
    const mapAfter = (
      (await (await fetch(`${router.url}/v1/shards`)).json()) as { version: number }
    ).version
    expect(mapAfter).toBeGreaterThan(mapBefore)
    // The next write of a moved slot goes straight to g2.
    expect(ids(g2)).toContain((await put(third, 'x')).servedBy)
    // The write made before the move is read from g2 (whose replicas have the move's LSN).
    const read = await fetch(kvUrl(before))
    expect(read.status).toBe(200)
    expect(await read.text()).toBe('written before the move')
    expect(ids(g2)).toContain(read.headers.get('kv-served-by'))
    const metrics = await (await fetch(`${router.url}/metrics`)).text()
    expect(metrics).toMatch(
      /kv_router_map_refreshes_total\{trigger="wrong_shard",result="changed"\} [1-9]/,
    )
    expect(metrics).toMatch(/kv_router_retries_total\{reason="wrong_shard"\} [1-9]/)
  })

  it('forwards a slot move to the leader of the group owning the slots, and an abort to the group it names', async () => {
    const [key] = keysIn(300, 309, 'forwarded', 1) as [string]
    expect((await put(key, 'before')).status).toBe(200)
    const started = await fetch(`${router.url}/admin/v1/shards/moves`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ slots: '300-309', to: 'g2' }),
    })
    expect(started.status).toBe(202)
    expect(started.headers.get('kv-served-by')).toBe((await g1.waitForLeader()).id)
    const id = ((await started.json()) as { move: ShardMove }).move.id
    await until(
      `move ${id} to finish`,
      async () => {
        const res = await fetch(`${(await g1.waitForLeader()).url}/v1/shards`)
        const view = (await res.json()) as GroupShardView
        return view.history.some((m) => m.id === id && m.phase === 'done')
      },
      60_000,
      100,
    )
    // The key follows its slot.
    const read = await fetch(kvUrl(key))
    expect(await read.text()).toBe('before')
    expect(ids(g2)).toContain(read.headers.get('kv-served-by'))
    // An abort goes to the group named; with several groups one must be named.
    const unnamed = await fetch(`${router.url}/admin/v1/shards/moves/abort`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{}',
    })
    expect(unnamed.status).toBe(400)
    expect(((await unnamed.json()) as { error: { code: string } }).error.code).toBe(
      'KV_ERR_INVALID_ARGUMENT',
    )
    const abort = await fetch(`${router.url}/admin/v1/shards/moves/abort`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ group: 'g2' }),
    })
    // The group's own answer (no move in flight there), from its leader.
    expect(abort.headers.get('kv-group')).toBe('g2')
    expect(ids(g2)).toContain(abort.headers.get('kv-served-by'))
    await abort.arrayBuffer()
  })
})
