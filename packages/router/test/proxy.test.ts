/**
 * The router in this process in front of fake groups (test/fake-group.ts): how it follows
 * leaders, retries, ejects and re-admits members, bounds what it holds, and what it passes on.
 */
import { mkdtemp, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { slotOfKey } from '@kvstore/protocol'
import { parseRouterConfig } from '../src/config.js'
import { KvRouter } from '../src/router.js'
import { FakeGroup } from './fake-group.js'

async function startRouter(
  group: FakeGroup,
  extra: string[] = [],
  urls = group.urls,
): Promise<KvRouter> {
  const { config } = parseRouterConfig(
    [
      '--group',
      `${group.id}=${urls.join(',')}`,
      '--port',
      '0',
      '--log-level',
      'silent',
      '--probe-interval-ms',
      '50',
      '--probe-timeout-ms',
      '200',
      '--follower-read-timeout-ms',
      '200',
      '--retry-for-ms',
      '1500',
      ...extra,
    ],
    {},
  )
  return KvRouter.start(config)
}

interface MemberView {
  id: string
  state: string
  inReadPool: boolean
  role: string
}

async function members(router: KvRouter): Promise<MemberView[]> {
  const res = await fetch(`${router.url}/v1/cluster`)
  const view = (await res.json()) as { router: { groups: { members: MemberView[] }[] } }
  return (view.router.groups[0] as { members: MemberView[] }).members
}

async function until(what: string, check: () => Promise<boolean> | boolean, ms = 5000) {
  const deadline = Date.now() + ms
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

describe('the router in front of a fake group', () => {
  let group: FakeGroup
  let router: KvRouter

  beforeEach(async () => {
    group = await FakeGroup.start('g1')
  })
  afterEach(async () => {
    await router?.stop()
    await group.close()
  })

  it('finds the leader by probing, writes there, reads round-robin from the followers', async () => {
    router = await startRouter(group)
    const put = await fetch(`${router.url}/v1/kv/a`, { method: 'PUT', body: 'A' })
    expect(put.status).toBe(200)
    expect(put.headers.get('kv-served-by')).toBe('g1n1')
    expect(put.headers.get('kv-group')).toBe('g1')
    // One group: the node's session token passes as it is.
    expect(put.headers.get('kv-session')).toMatch(/^s1\./)
    const seen = new Set<string>()
    for (let i = 0; i < 6; i++) {
      const res = await fetch(`${router.url}/v1/kv/a`)
      expect(await res.text()).toBe('A')
      seen.add(res.headers.get('kv-served-by') as string)
    }
    expect([...seen].sort()).toEqual(['g1n2', 'g1n3'])
  })

  it('learns a member the leader names that it was not given (a member added or replaced)', async () => {
    router = await startRouter(group, [], group.urls.slice(0, 2))
    await until('the third member to be learnt and read from', async () =>
      (await members(router)).some((m) => m.id === 'g1n3' && m.inReadPool),
    )
    expect((await members(router)).map((m) => m.id)).toEqual(['g1n1', 'g1n2', 'g1n3'])
  })

  it('keeps a write on one request id through NOT_LEADER, makes one when none was sent, and never forwards kv-on-behalf-of', async () => {
    router = await startRouter(group, ['--probe-interval-ms', '60000'])
    // The leader moves to n2 without the router probing: n1 answers NOT_LEADER naming n2.
    group.leaderId = 'g1n2'
    const res = await fetch(`${router.url}/v1/kv/b`, {
      method: 'PUT',
      body: 'B',
      headers: { 'kv-on-behalf-of': 'root', 'kv-request-id': 'my-id' },
    })
    expect(res.status).toBe(200)
    expect(res.headers.get('kv-served-by')).toBe('g1n2')
    const n1 = group.node('g1n1').seen.filter((s) => s.method === 'PUT')
    const n2 = group.node('g1n2').seen.filter((s) => s.method === 'PUT')
    expect(n1.map((s) => s.headers['kv-request-id'])).toEqual(['my-id'])
    expect(n2.map((s) => s.headers['kv-request-id'])).toEqual(['my-id'])
    for (const s of [...n1, ...n2]) expect(s.headers['kv-on-behalf-of']).toBeUndefined()
    // No request id given: the router makes one.
    await fetch(`${router.url}/v1/kv/c`, { method: 'DELETE' })
    const del = group.node('g1n2').seen.find((s) => s.method === 'DELETE')
    expect(del?.headers['kv-request-id']).toMatch(/^[0-9a-f-]{36}$/)
  })

  it('retries a write through an election and answers it once the new leader takes it', async () => {
    router = await startRouter(group, ['--retry-for-ms', '5000'])
    const n1 = group.node('g1n1')
    n1.mode = 'drop'
    group.leaderId = 'nobody'
    const write = fetch(`${router.url}/v1/kv/e`, { method: 'PUT', body: 'E' })
    await new Promise((resolve) => setTimeout(resolve, 300))
    group.leaderId = 'g1n3'
    group.epoch = 2
    const res = await write
    expect(res.status).toBe(200)
    expect(res.headers.get('kv-served-by')).toBe('g1n3')
  })

  it('answers KV_ERR_GROUP_UNAVAILABLE with Retry-After when no leader appears within --retry-for-ms', async () => {
    router = await startRouter(group, ['--retry-for-ms', '300'])
    for (const n of group.nodes) n.mode = 'drop'
    const res = await fetch(`${router.url}/v1/kv/x`, { method: 'PUT', body: 'x' })
    expect(res.status).toBe(503)
    expect(res.headers.get('retry-after')).toBe('1')
    const body = (await res.json()) as { error: { code: string; group: string } }
    expect(body.error).toMatchObject({ code: 'KV_ERR_GROUP_UNAVAILABLE', group: 'g1' })
  })

  it('hands a read to the leader when a follower fails, hangs or is behind, and ejects one that keeps failing', async () => {
    router = await startRouter(group, [
      '--eject-failures',
      '2',
      '--eject-ms',
      '60000',
      '--eject-ms-max',
      '60000',
      '--probe-interval-ms',
      '60000',
    ])
    group.data.set('k', 'v')
    const n2 = group.node('g1n2')
    const n3 = group.node('g1n3')
    n2.mode = 'drop'
    n3.mode = 'hang'
    for (let i = 0; i < 4; i++) {
      const res = await fetch(`${router.url}/v1/kv/k`)
      expect(res.status).toBe(200)
      expect(res.headers.get('kv-served-by')).toBe('g1n1')
    }
    const view = await members(router)
    expect(view.find((m) => m.id === 'g1n2')?.state).toBe('ejected')
    expect(view.find((m) => m.id === 'g1n3')?.state).toBe('ejected')
    expect(view.filter((m) => m.inReadPool)).toEqual([])
    // Still answered by the leader while no follower can.
    expect((await fetch(`${router.url}/v1/kv/k`)).headers.get('kv-served-by')).toBe('g1n1')
  })

  it('sends a read behind its session to the leader (KV_ERR_REPLICA_BEHIND)', async () => {
    router = await startRouter(group)
    group.data.set('k', 'v')
    for (const id of ['g1n2', 'g1n3'])
      group.node(id).scripted.push({
        prefix: '/v1/kv/k',
        status: 503,
        body: { error: { code: 'KV_ERR_REPLICA_BEHIND', message: 'behind', appliedLsn: 1 } },
      })
    const res = await fetch(`${router.url}/v1/kv/k`, { headers: { 'kv-session': 's1.1.5' } })
    expect(res.status).toBe(200)
    expect(res.headers.get('kv-served-by')).toBe('g1n1')
    // The follower was asked with the session and a bounded wait.
    const asked = [...group.node('g1n2').seen, ...group.node('g1n3').seen].find((s) =>
      s.url.startsWith('/v1/kv/k'),
    )
    expect(asked?.headers['kv-session']).toBe('s1.1.5')
    expect(asked?.headers['kv-read-wait-ms']).toBe('1000')
  })

  it('takes a lagging follower out of the read pool and puts it back when it catches up', async () => {
    router = await startRouter(group, ['--max-lag-ms', '100'])
    group.data.set('k', 'v')
    await until(
      'both followers to read',
      async () => (await members(router)).filter((m) => m.inReadPool).length === 2,
    )
    group.node('g1n3').lagMs = 5000
    await until('n3 to leave', async () =>
      (await members(router)).every(
        (m) => m.id !== 'g1n3' || (!m.inReadPool && m.state === 'lagging'),
      ),
    )
    for (let i = 0; i < 4; i++)
      expect((await fetch(`${router.url}/v1/kv/k`)).headers.get('kv-served-by')).toBe('g1n2')
    group.node('g1n3').lagMs = 0
    await until('n3 to return', async () =>
      (await members(router)).some((m) => m.id === 'g1n3' && m.inReadPool),
    )
  })

  it('ejects an unresponsive follower by probe and re-admits it when it answers again', async () => {
    router = await startRouter(group)
    await until(
      'both followers to read',
      async () => (await members(router)).filter((m) => m.inReadPool).length === 2,
    )
    group.node('g1n2').mode = 'hang'
    await until('n2 to be unresponsive', async () =>
      (await members(router)).some((m) => m.id === 'g1n2' && m.state === 'unresponsive'),
    )
    group.node('g1n2').mode = 'ok'
    await until('n2 to return', async () =>
      (await members(router)).some((m) => m.id === 'g1n2' && m.inReadPool),
    )
  })

  it('refuses what it cannot take with coded errors: unknown routes, methods, oversized values, too many requests in flight', async () => {
    router = await startRouter(group, [
      '--value-bytes-max',
      '10',
      '--inflight-requests-max',
      '1',
      '--response-bytes-max',
      '65536',
      '--inflight-body-bytes-max',
      '1048576',
      '--request-body-bytes-max',
      '1000',
      '--upstream-timeout-ms',
      '300',
      '--retry-for-ms',
      '300',
    ])
    const code = async (res: Response) =>
      ((await res.json()) as { error: { code: string } }).error.code
    const notFound = await fetch(`${router.url}/admin/v1/members`)
    expect(notFound.status).toBe(404)
    expect(await code(notFound)).toBe('KV_ERR_ROUTE_NOT_FOUND')
    const method = await fetch(`${router.url}/v1/batch`, { method: 'GET' })
    expect(method.status).toBe(405)
    expect(await code(method)).toBe('KV_ERR_METHOD_NOT_ALLOWED')
    const big = await fetch(`${router.url}/v1/kv/big`, { method: 'PUT', body: 'x'.repeat(11) })
    expect(big.status).toBe(413)
    expect(await code(big)).toBe('KV_ERR_VALUE_TOO_LARGE')
    // One request hangs at the leader; a second finds the router full.
    group.node('g1n1').mode = 'hang'
    const hanging = fetch(`${router.url}/v1/kv/h`, { method: 'PUT', body: 'h' }).catch(() => null)
    await until('the first to be in flight', () =>
      group.node('g1n1').seen.some((s) => s.url === '/v1/kv/h'),
    )
    const second = await fetch(`${router.url}/v1/kv/h2`, { method: 'PUT', body: 'h' })
    expect(second.status).toBe(503)
    expect(await code(second)).toBe('KV_ERR_OVERLOADED')
    group.node('g1n1').server.closeAllConnections()
    await hanging
  })
})

describe('the router in front of two fake shard groups', () => {
  let g1: FakeGroup
  let g2: FakeGroup
  let router: KvRouter
  let file: string

  beforeEach(async () => {
    g1 = await FakeGroup.start('g1')
    g2 = await FakeGroup.start('g2')
    g1.owns = (slot) => slot < 2048
    g1.other = 'g2'
    g2.owns = (slot) => slot >= 2048
    g2.other = 'g1'
    file = join(await mkdtemp(join(tmpdir(), 'kv-router-test-')), 'map.json')
    await writeFile(
      file,
      JSON.stringify({
        groups: [
          { id: 'g1', members: g1.nodes.map((n) => ({ id: n.id, url: n.url })), slots: '0-2047' },
          {
            id: 'g2',
            members: g2.nodes.map((n) => ({ id: n.id, url: n.url })),
            slots: '2048-4095',
          },
        ],
      }),
    )
    const { config } = parseRouterConfig(
      [
        '--shard-map',
        file,
        '--port',
        '0',
        '--log-level',
        'silent',
        '--probe-interval-ms',
        '50',
        '--map-refresh-interval-ms',
        '3600000',
      ],
      {},
    )
    router = await KvRouter.start(config)
  })
  afterEach(async () => {
    await router?.stop()
    await g1.close()
    await g2.close()
  })

  it('refreshes a stale map on KV_ERR_WRONG_SHARD and follows the new owner', async () => {
    // Slots 0-2047 move to g2 (version 2) while the router still has the file's map.
    g1.owns = () => false
    g2.owns = () => true
    g2.claims = [{ first: 0, last: 4095, group: 'g2', version: 2, sinceLsn: 7 }]
    g1.claims = []
    const key = 'k1'
    expect(slotOfKey(key)).toBeLessThan(2048)
    const res = await fetch(`${router.url}/v1/kv/${key}`, { method: 'PUT', body: 'v' })
    expect(res.status).toBe(200)
    expect(res.headers.get('kv-group')).toBe('g2')
    expect(res.headers.get('kv-session')).toMatch(/^r1\./)
    await until('the map to be refreshed', async () => {
      const shards = (await (await fetch(`${router.url}/v1/shards`)).json()) as {
        version: number
      }
      return shards.version === 2
    })
    // A read of the moved slot needs g2 to have applied the move (sinceLsn 7).
    await fetch(`${router.url}/v1/kv/${key}`)
    const read = g2.nodes
      .flatMap((n) => n.seen)
      .filter((s) => s.method === 'GET' && s.url === `/v1/kv/${key}`)
    expect(read.at(-1)?.headers['kv-session']).toBe('s1.0.7')
  })

  it('merges listings of both groups, and refuses a batch across them', async () => {
    for (let i = 0; i < 25; i++) {
      const key = `p/${String(i).padStart(2, '0')}`
      ;(slotOfKey(key) < 2048 ? g1 : g2).data.set(key, 'v')
    }
    const seen: string[] = []
    let cursor: string | null = null
    for (let i = 0; i < 20; i++) {
      const q = new URLSearchParams({ prefix: 'p/', limit: '4' })
      if (cursor !== null) q.set('cursor', cursor)
      const page = (await (await fetch(`${router.url}/v1/kv?${q}`)).json()) as {
        items: { key: string }[]
        nextCursor: string | null
      }
      seen.push(...page.items.map((x) => x.key))
      cursor = page.nextCursor
      if (cursor === null) break
    }
    expect(seen).toEqual(Array.from({ length: 25 }, (_, i) => `p/${String(i).padStart(2, '0')}`))
    const cross = await fetch(`${router.url}/v1/batch`, {
      method: 'POST',
      body: JSON.stringify({
        ops: [
          { op: 'put', key: 'k1', value: '1' },
          { op: 'put', key: 'a', value: '2' },
        ],
      }),
    })
    expect(cross.status).toBe(400)
    expect(await cross.json()).toMatchObject({
      error: { code: 'KV_ERR_CROSS_SHARD', slots: [418, 3207], groups: ['g1', 'g2'] },
    })
    // Nothing reached a group.
    expect(
      g1.nodes
        .concat(g2.nodes)
        .flatMap((n) => n.seen)
        .some((s) => s.url === '/v1/batch'),
    ).toBe(false)
  })
})

describe('the router reloading its shard map file', () => {
  it('takes a group the file gains (SIGHUP) and routes to it the slots it claims', async () => {
    const g1 = await FakeGroup.start('g1')
    const g2 = await FakeGroup.start('g2')
    const dir = await mkdtemp(join(tmpdir(), 'kv-router-reload-'))
    const file = join(dir, 'map.json')
    const entry = (g: FakeGroup, slots: string) => ({
      id: g.id,
      members: g.nodes.map((n) => ({ id: n.id, url: n.url })),
      slots,
    })
    await writeFile(file, JSON.stringify({ groups: [entry(g1, '0-4095')] }))
    const { config } = parseRouterConfig(
      ['--shard-map', file, '--port', '0', '--log-level', 'silent', '--probe-interval-ms', '50'],
      {},
    )
    const router = await KvRouter.start(config)
    try {
      // g2 joins the file with no slots, then claims slots 0-999 (a move's outcome).
      await writeFile(file, JSON.stringify({ groups: [entry(g1, '0-4095'), entry(g2, '')] }))
      g2.claims = [{ first: 0, last: 999, group: 'g2', version: 2, sinceLsn: 3 }]
      g1.owns = (slot) => slot >= 1000
      g1.other = 'g2'
      await router.reload()
      const key = 'k1'
      expect(slotOfKey(key)).toBeLessThan(1000)
      const res = await fetch(`${router.url}/v1/kv/${key}`, { method: 'PUT', body: 'v' })
      expect(res.status).toBe(200)
      expect(res.headers.get('kv-group')).toBe('g2')
      // Two groups now: the router's own session tokens.
      expect(res.headers.get('kv-session')).toMatch(/^r1\./)
    } finally {
      await router.stop()
      await g1.close()
      await g2.close()
    }
  })
})
