/**
 * Home-region routing and the region calls of the SDK, against small HTTP/2 servers that stand
 * in for the leaders of three regions (the node's routes live in another package): every write
 * goes to its key's home region (longest prefix wins, else the client's home region), reads go
 * there too and carry that region's session, a batch spanning home regions is refused before
 * anything is sent, queued writes and their tickets stay in their region, and `regions()`,
 * `conflicts()` and `regionDigest()` read what the nodes answer.
 */
import { createServer, type Http2Server, type IncomingHttpHeaders } from 'node:http2'
import type { AddressInfo } from 'node:net'
import {
  HomeRegions,
  KvClient,
  KvError,
  RegionalClient,
  type RegionConflict,
} from '../src/index.js'

interface FakeRegion {
  id: string
  /** The region its node says it is in (a misconfigured client may reach another). */
  says: string | null
  nodeId: string
  url: string
  server: Http2Server
  /** Every request but GET /v1/cluster: `METHOD path`, with its session header. */
  calls: { call: string; session: string | undefined }[]
  lsn: number
  conflicts: RegionConflict[]
}

const regions: FakeRegion[] = []

function region(id: string): FakeRegion {
  return regions.find((r) => r.id === id) as FakeRegion
}

function regionsView(r: FakeRegion) {
  return {
    region: r.says,
    leader: true,
    regions: regions.map((x) => ({ id: x.id, members: [{ id: x.nodeId, url: x.url }] })),
    shipping: regions
      .filter((x) => x !== r)
      .map((x) => ({
        to: x.id,
        state: 'streaming',
        cursor: 4,
        commitLsn: 5,
        lagEntries: 1,
        lagMs: 12,
        shippedEntries: 4,
        shippedBatches: 2,
        lastShippedAtMs: 1,
        error: null,
      })),
    receiving: regions
      .filter((x) => x !== r)
      .map((x) => ({ from: x.id, cursor: 3, lastAppliedAtMs: 1, sourceCommitLsn: 3 })),
    conflicts: { recorded: r.conflicts.length, localLost: 1, remoteLost: 0, collected: 0 },
  }
}

function clusterView(r: FakeRegion) {
  return {
    mode: 'single-leader',
    clusterId: 'c1',
    leaderId: r.nodeId,
    leaderUrl: r.url,
    epoch: 1,
    commitLsn: r.lsn,
    self: r.nodeId,
    writable: true,
    members: [
      {
        id: r.nodeId,
        role: 'leader',
        clientUrl: r.url,
        peerUrl: null,
        epoch: 1,
        ackedLsn: r.lsn,
        appliedLsn: r.lsn,
        lagEntries: 0,
        lagMs: 0,
        lastContactMs: 0,
        connected: true,
      },
    ],
    ...(r.says === null ? {} : { regions: regionsView(r) }),
  }
}

function conflict(n: number, r: FakeRegion): RegionConflict {
  const side = (region: string, value: string) => ({
    stamp: `${1000 + n}.0@${region}`,
    region,
    deleted: false,
    value,
    valueBase64: Buffer.from(value).toString('base64'),
  })
  return {
    id: `${String(n).padStart(20, '0')}-0`,
    key: `k${n}`,
    keyBase64: Buffer.from(`k${n}`).toString('base64'),
    detectedIn: r.id,
    lsn: n,
    atMs: 1,
    winner: side('eu', `w${n}`),
    loser: side('us', `l${n}`),
  }
}

/** What the fake leader answers: status, body, headers. */
function answer(
  r: FakeRegion,
  method: string,
  path: string,
  headers: IncomingHttpHeaders,
): { status: number; body: unknown; headers?: Record<string, string> } {
  const url = new URL(path, 'http://x')
  const stamp = () => `${1000 + r.lsn}.0@${r.id}`
  if (method === 'GET' && url.pathname === '/v1/cluster')
    return { status: 200, body: clusterView(r) }
  if (method === 'GET' && url.pathname === '/v1/regions')
    return { status: 200, body: regionsView(r) }
  if (method === 'GET' && url.pathname === '/admin/v1/regions/digest')
    return {
      status: 200,
      body: { region: r.id, appliedLsn: r.lsn, digest: 'ab'.repeat(32), keys: 2 },
    }
  if (method === 'GET' && url.pathname === '/admin/v1/conflicts') {
    const limit = Number(url.searchParams.get('limit') ?? 100)
    const after = url.searchParams.get('after')
    const rest = r.conflicts.filter((c) => after === null || c.id > after)
    const page = rest.slice(0, limit)
    return {
      status: 200,
      body: { conflicts: page, next: rest.length > limit ? (page.at(-1)?.id ?? null) : null },
    }
  }
  if (method === 'GET' && url.pathname === '/v1/kv')
    return { status: 200, body: { items: [], nextCursor: null, appliedLsn: r.lsn } }
  if (url.pathname.startsWith('/v1/tickets/'))
    return {
      status: 200,
      body: {
        ticket: decodeURIComponent(url.pathname.slice('/v1/tickets/'.length)),
        status: 'applied',
        acceptedAtMs: 1,
        lsn: r.lsn,
        session: `s1.1.${r.lsn}`,
      },
    }
  if (headers['kv-ack'] === 'queued') {
    r.lsn++
    return {
      status: 202,
      body: { ticket: `${r.nodeId}.${r.lsn}`, node: r.nodeId, status: 'pending', acceptedAtMs: 1 },
    }
  }
  if (url.pathname.startsWith('/v1/kv/')) {
    const key = decodeURIComponent(url.pathname.slice('/v1/kv/'.length))
    if (method === 'GET')
      return {
        status: 200,
        body: `value of ${key} in ${r.id}`,
        headers: { etag: `"${r.lsn}"`, 'kv-stamp': stamp(), 'kv-session': `s1.1.${r.lsn}` },
      }
    r.lsn++
    const session = `s1.1.${r.lsn}`
    return {
      status: 200,
      body:
        method === 'PUT'
          ? { key, version: r.lsn, lsn: r.lsn, session, stamp: stamp(), previousStamp: null }
          : { key, deleted: true, lsn: r.lsn, previousVersion: 1, session, stamp: stamp() },
      headers: { 'kv-session': session },
    }
  }
  if (method === 'POST' && url.pathname === '/v1/batch') {
    r.lsn++
    return {
      status: 200,
      body: { lsn: r.lsn, session: `s1.1.${r.lsn}`, results: [] },
      headers: { 'kv-session': `s1.1.${r.lsn}` },
    }
  }
  return { status: 404, body: { error: { code: 'KV_ERR_NOT_FOUND', message: 'fake: no route' } } }
}

async function startRegion(id: string, nodeId: string): Promise<void> {
  const r: FakeRegion = {
    id,
    says: id,
    nodeId,
    url: '',
    server: null as unknown as Http2Server,
    calls: [],
    lsn: 1,
    conflicts: [],
  }
  r.server = createServer((req, res) => {
    void (async () => {
      for await (const _ of req) void _
      const method = req.method ?? 'GET'
      const path = req.url ?? '/'
      if (path !== '/v1/cluster')
        r.calls.push({
          call: `${method} ${path}`,
          session: req.headers['kv-session'] as string | undefined,
        })
      const a = answer(r, method, path, req.headers)
      const text = typeof a.body === 'string' ? a.body : JSON.stringify(a.body)
      res.writeHead(a.status, {
        'content-type':
          typeof a.body === 'string' ? 'application/octet-stream' : 'application/json',
        ...a.headers,
      })
      res.end(text)
    })()
  })
  await new Promise<void>((resolve) => r.server.listen(0, '127.0.0.1', resolve))
  r.url = `http://127.0.0.1:${(r.server.address() as AddressInfo).port}`
  regions.push(r)
}

beforeAll(async () => {
  await startRegion('us', 'n1')
  await startRegion('eu', 'n4')
  await startRegion('ap', 'n7')
})

afterAll(async () => {
  for (const r of regions) await new Promise((resolve) => r.server.close(resolve))
})

beforeEach(() => {
  for (const r of regions) {
    r.calls = []
    r.says = r.id
    r.conflicts = []
  }
})

function client(options: { checkRegions?: boolean } = {}): RegionalClient {
  return new RegionalClient({
    regions: { us: region('us').url, eu: [region('eu').url], ap: region('ap').url },
    homeRegion: 'us',
    homeRegionByPrefix: { 'eu/': 'eu', 'eu/fr/': 'us', 'ap/': 'ap' },
    retryForMs: 500,
    ...options,
  })
}

async function withClient<T>(fn: (c: RegionalClient) => Promise<T>, options = {}): Promise<T> {
  const c = client(options)
  try {
    return await fn(c)
  } finally {
    await c.close()
  }
}

const calls = (id: string) => region(id).calls.map((c) => c.call)

describe('HomeRegions', () => {
  it('picks the region of the longest matching prefix, else the home region', () => {
    const homes = new HomeRegions(['us', 'eu'], 'us', {
      'eu/': 'eu',
      'eu/fr/': 'us',
      e: 'eu',
      '': 'us',
    })
    expect(homes.of('eu/de/1')).toBe('eu')
    expect(homes.of('eu/fr/1')).toBe('us')
    expect(homes.of('eu/f')).toBe('eu')
    expect(homes.of('east')).toBe('eu')
    expect(homes.of('us/1')).toBe('us')
    expect(new HomeRegions(['us', 'eu'], 'eu').of('anything')).toBe('eu')
  })

  it('refuses regions it was not given, and bad region ids or URLs', () => {
    expect(() => new HomeRegions(['us'], 'eu')).toThrow(/homeRegion is "eu", which is not one of/)
    expect(() => new HomeRegions(['us'], 'us', { 'x/': 'ap' })).toThrow(
      /homeRegionByPrefix\["x\/"\]/,
    )
    const make = (o: object) => () =>
      new RegionalClient({ regions: { us: 'http://h:1' }, homeRegion: 'us', ...o })
    expect(make({ regions: {} })).toThrow(/at least one region/)
    expect(make({ regions: { US: 'http://h:1' } })).toThrow(/region id "US" is not valid/)
    expect(make({ regions: { us: [] } })).toThrow(/region us needs at least one node URL/)
    expect(make({ regions: { us: 'ftp://h' } })).toThrow(/only https:\/\/ and http:\/\//)
    expect(make({ homeRegion: 'eu' })).toThrow(KvError)
  })
})

describe('RegionalClient', () => {
  it("writes each key in its home region and reads it there, with that region's session", async () => {
    await withClient(async (c) => {
      expect(c.regionIds).toEqual(['us', 'eu', 'ap'])
      expect([c.homeOf('cart/1'), c.homeOf('eu/cart/1'), c.homeOf('eu/fr/1')]).toEqual([
        'us',
        'eu',
        'us',
      ])
      const put = await c.put('eu/cart/1', 'pears')
      expect(put.stamp).toMatch(/@eu$/)
      await c.put('cart/1', 'apples')
      await c.delete('eu/fr/1')
      const got = await c.get('eu/cart/1')
      expect(got?.value.toString()).toBe('value of eu/cart/1 in eu')
      expect(got?.stamp).toMatch(/^\d+\.0@eu$/)
      expect(calls('eu')).toEqual(['PUT /v1/kv/eu/cart/1', 'GET /v1/kv/eu/cart/1'])
      expect(calls('us')).toEqual(['PUT /v1/kv/cart/1', 'DELETE /v1/kv/eu/fr/1'])
      expect(calls('ap')).toEqual([])
      // The read in eu carried eu's session (its own write), never us's.
      expect(region('eu').calls[1]?.session).toBe(put.session)
      expect(c.sessions).toEqual({
        us: expect.stringMatching(/^s1\./),
        eu: expect.any(String),
        ap: null,
      })
      // A read may name another region: a nearer copy.
      await c.get('eu/cart/1', { region: 'ap' })
      expect(calls('ap')).toEqual(['GET /v1/kv/eu/cart/1'])
    })
  })

  it('sends a batch to its home region and refuses one that spans regions, sending nothing', async () => {
    await withClient(async (c) => {
      await c.batch([
        { op: 'put', key: 'eu/a', value: '1' },
        { op: 'delete', key: 'eu/b' },
      ])
      expect(calls('eu')).toEqual(['POST /v1/batch'])
      let error: unknown
      try {
        await c.batch([
          { op: 'put', key: 'eu/a', value: '1' },
          { op: 'put', key: 'cart/1', value: '2' },
          { op: 'put', key: 'eu/c', value: '3' },
        ])
      } catch (err) {
        error = err
      }
      expect(error).toBeInstanceOf(KvError)
      expect((error as KvError).code).toBe('KV_ERR_CROSS_REGION')
      expect((error as KvError).message).toMatch(
        /2 home regions \("eu\/a" in eu, "cart\/1" in us\)/,
      )
      expect((error as KvError).details).toEqual({
        regions: ['eu', 'us'],
        keys: ['eu/a', 'cart/1'],
      })
      await expect(
        c.batchQueued([
          { op: 'put', key: 'ap/1', value: '1' },
          { op: 'put', key: 'x', value: '2' },
        ]),
      ).rejects.toThrow(/home regions/)
      expect(calls('eu')).toEqual(['POST /v1/batch'])
      expect(calls('us')).toEqual([])
      expect(calls('ap')).toEqual([])
    })
  })

  it('queues writes in the home region and asks that region for their tickets', async () => {
    await withClient(async (c) => {
      const queued = await c.putQueued('ap/likes/1', '1')
      expect(queued.node).toBe('n7')
      const ticket = await c.waitTicket(queued.ticket, { timeoutMs: 2000 })
      expect(ticket.status).toBe('applied')
      expect(calls('ap')).toEqual([
        'PUT /v1/kv/ap/likes/1',
        `GET /v1/tickets/${encodeURIComponent(queued.ticket)}`,
      ])
      await c.deleteQueued('eu/x')
      expect(calls('eu')).toEqual(['DELETE /v1/kv/eu/x'])
    })
    // A new client learns which region holds a ticket from the regions view.
    await withClient(async (c) => {
      for (const r of regions) r.calls = []
      expect((await c.ticket('n4.9')).status).toBe('applied')
      expect(calls('eu')).toEqual([`GET /v1/tickets/n4.9`])
      await expect(c.ticket('n99.1')).rejects.toMatchObject({ code: 'KV_ERR_TICKET_NOT_FOUND' })
    })
  })

  it('lists from the home region of the prefix', async () => {
    await withClient(async (c) => {
      expect((await c.list({ prefix: 'eu/' })).items).toEqual([])
      await c.list({ prefix: 'eu/', region: 'ap' })
      for await (const _ of c.listAll({ prefix: 'ap/x' })) void _
      expect(calls('eu')).toEqual(['GET /v1/kv?prefix=eu%2F'])
      expect(calls('ap')).toEqual(['GET /v1/kv?prefix=eu%2F', 'GET /v1/kv?prefix=ap%2Fx'])
    })
  })

  it('refuses a region whose URLs reach another region, or no region', async () => {
    region('eu').says = 'us'
    await withClient(async (c) => {
      await expect(c.put('eu/1', 'x')).rejects.toThrow(
        /the URLs given for region eu reach region us/,
      )
      await expect(c.get('eu/1')).rejects.toMatchObject({ code: 'KV_ERR_INVALID_ARGUMENT' })
      expect(calls('eu')).toEqual([])
      // The other regions are not affected.
      await expect(c.put('cart/1', 'x')).resolves.toMatchObject({ key: 'cart/1' })
    })
    region('eu').says = null
    await withClient(async (c) => {
      await expect(c.put('eu/1', 'x')).rejects.toThrow(/reach a cluster that is in no region/)
    })
    await withClient(
      async (c) => {
        await c.put('eu/1', 'x')
        expect(calls('eu')).toEqual(['PUT /v1/kv/eu/1'])
      },
      { checkRegions: false },
    )
  })

  it("reads a region's view, its conflict record page by page, and its digest", async () => {
    region('eu').conflicts = [1, 2, 3, 4, 5].map((n) => conflict(n, region('eu')))
    await withClient(async (c) => {
      const view = await c.regions({ region: 'eu' })
      expect(view.region).toBe('eu')
      expect(view.shipping.map((s) => [s.to, s.state, s.lagEntries])).toEqual([
        ['us', 'streaming', 1],
        ['ap', 'streaming', 1],
      ])
      expect((await c.regions()).region).toBe('us')
      const first = await c.conflicts({ region: 'eu', limit: 2 })
      expect(first.conflicts.map((x) => x.key)).toEqual(['k1', 'k2'])
      expect(first.next).toBe(first.conflicts[1]?.id)
      const second = await c.conflicts({ region: 'eu', limit: 2, after: first.next as string })
      expect(second.conflicts.map((x) => x.key)).toEqual(['k3', 'k4'])
      const all: string[] = []
      for await (const x of c.conflictsAll({ region: 'eu', limit: 2 })) all.push(x.key)
      expect(all).toEqual(['k1', 'k2', 'k3', 'k4', 'k5'])
      expect((await c.conflicts()).conflicts).toEqual([])
      expect(await c.regionDigest({ region: 'ap' })).toMatchObject({ region: 'ap', keys: 2 })
      expect(calls('eu')).toContain('GET /admin/v1/conflicts?limit=2&after=00000000000000000002-0')
    })
    // The same calls on a plain KvClient of one region.
    const eu = new KvClient({ url: region('eu').url })
    try {
      expect((await eu.regions()).receiving.map((r) => r.from)).toEqual(['us', 'ap'])
      expect((await eu.cluster()).regions?.region).toBe('eu')
      expect((await eu.conflicts({ limit: 1 })).conflicts).toHaveLength(1)
      expect((await eu.regionDigest()).digest).toMatch(/^[0-9a-f]{64}$/)
    } finally {
      await eu.close()
    }
  })

  it('gives each region its own KvClient, and refuses a region it was not given', async () => {
    await withClient(async (c) => {
      expect(c.region('eu')).toBeInstanceOf(KvClient)
      expect(c.region('eu')).not.toBe(c.region('us'))
      expect(() => c.region('sa')).toThrow(/region "sa" is not one of this client's regions/)
      await expect(c.get('x', { region: 'sa' })).rejects.toMatchObject({
        code: 'KV_ERR_INVALID_ARGUMENT',
      })
    })
  })
})
