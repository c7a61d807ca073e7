/**
 * The SDK's home-region routing against two real regions of three processes (us: n1-n3, eu:
 * n4-n6), TLS and auth as shipped: a `RegionalClient` writes each key in its home region (the
 * write's stamp names it), reads it there on a follower with read-your-writes, refuses a batch
 * spanning home regions, queues writes in the home region and waits for their tickets there;
 * every region converges to the same state, and `regions()`, `conflicts()` and `regionDigest()`
 * read what the nodes say.
 */
import { KvClient, KvError, RegionalClient, type RegionConflict } from '@kvstore/client'
import { compareStamps, parseStamp } from '@kvstore/protocol'
import { TestCluster, until } from '@kvstore/testkit'
import { rootTls } from './support/certs.js'

let us: TestCluster
let eu: TestCluster
let client: RegionalClient

beforeAll(async () => {
  const started = await TestCluster.startRegions(['us', 'eu'], 3)
  ;[us, eu] = started.regions as [TestCluster, TestCluster]
  client = new RegionalClient({
    regions: { us: us.members.map((m) => m.url), eu: eu.members.map((m) => m.url) },
    homeRegion: 'us',
    homeRegionByPrefix: { 'eu/': 'eu', 'eu/shared/': 'us' },
    ...rootTls(),
  })
}, 120_000)
afterAll(async () => {
  await client?.close()
  await eu?.stop()
  await us?.stop()
})

it('writes each key in its home region and reads it back there, from a follower', async () => {
  const a = await client.put('eu/cart/1', 'pears')
  const b = await client.put('cart/1', 'apples')
  const c = await client.put('eu/shared/1', 'plums')
  // The stamp names the region that took the write.
  expect(a.stamp).toMatch(/@eu$/)
  expect(b.stamp).toMatch(/@us$/)
  expect(c.stamp).toMatch(/@us$/)
  // Read-your-writes within the home region: the default reads go to followers, with the
  // region's session, and see the write at once.
  for (let i = 0; i < 5; i++) {
    const got = await client.get('eu/cart/1')
    expect(got?.value.toString()).toBe('pears')
    expect(got?.stamp).toBe(a.stamp)
    expect(eu.members.map((m) => m.url)).toContain(got?.servedBy)
  }
  expect((await client.get('cart/1'))?.stamp).toBe(b.stamp)
  expect(client.sessions).toEqual({
    us: expect.stringMatching(/^s1\./),
    eu: expect.stringMatching(/^s1\./),
  })

  // Each region has the other's writes once shipped, under the same stamp.
  await until(
    'us has eu/cart/1 and eu has cart/1',
    async () =>
      (await client.get('eu/cart/1', { region: 'us' }))?.stamp === a.stamp &&
      (await client.get('cart/1', { region: 'eu' }))?.stamp === b.stamp,
    30_000,
    100,
  )

  // Deletes go home too, and reach the other region as tombstones.
  const d = await client.delete('eu/cart/1')
  expect(d.stamp).toMatch(/@eu$/)
  expect(await client.get('eu/cart/1')).toBeNull()
  await until(
    'the delete reaches us',
    async () => (await client.get('eu/cart/1', { region: 'us' })) === null,
    30_000,
    100,
  )
})

it('applies a batch in its home region and refuses one that spans regions', async () => {
  const ok = await client.batch([
    { op: 'put', key: 'eu/b/1', value: '1' },
    { op: 'put', key: 'eu/b/2', value: '2' },
  ])
  expect(ok.results.map((r) => r.stamp)).toEqual([
    expect.stringMatching(/@eu$/),
    expect.stringMatching(/@eu$/),
  ])
  const before = (await client.region('us').status()).commitLsn
  let error: unknown
  try {
    await client.batch([
      { op: 'put', key: 'eu/b/3', value: '3' },
      { op: 'put', key: 'b/4', value: '4' },
    ])
  } catch (err) {
    error = err
  }
  expect(error).toBeInstanceOf(KvError)
  expect(error).toMatchObject({
    code: 'KV_ERR_CROSS_REGION',
    details: { regions: ['eu', 'us'], keys: ['eu/b/3', 'b/4'] },
  })
  expect(await client.get('eu/b/3')).toBeNull()
  expect(await client.get('b/4')).toBeNull()
  expect((await client.region('us').status()).commitLsn).toBe(before)
})

it('queues a write on a member of the home region and waits for its ticket there', async () => {
  const queued = await client.putQueued('eu/likes/1', '1')
  expect(eu.members.map((m) => m.id)).toContain(queued.node)
  const ticket = await client.waitTicket(queued.ticket, { timeoutMs: 30_000 })
  expect(ticket.status).toBe('applied')
  expect((await client.get('eu/likes/1'))?.value.toString()).toBe('1')
  // Another client finds the ticket's region from the regions view.
  const other = new RegionalClient({
    regions: { us: us.members.map((m) => m.url), eu: eu.members.map((m) => m.url) },
    homeRegion: 'us',
    ...rootTls(),
  })
  try {
    expect((await other.ticket(queued.ticket)).status).toBe('applied')
  } finally {
    await other.close()
  }
})

it('shows each region, its conflicts and its digest, equal once converged', async () => {
  // Concurrent writes of one key: eu's write is sent before us's arrives there (the region's
  // leader is slower to ship than a client is to write), until a pair turns out concurrent.
  let recorded = 0
  for (let round = 0; round < 10 && recorded === 0; round++) {
    const key = `race/${round}`
    await Promise.all([
      client.region('us').put(key, `us-${round}`),
      client.region('eu').put(key, `eu-${round}`),
    ])
    await until(
      `${key} converges`,
      async () => {
        const [x, y] = await Promise.all([
          client.get(key, { region: 'us', fromLeader: true }),
          client.get(key, { region: 'eu', fromLeader: true }),
        ])
        return x !== null && x.stamp === y?.stamp
      },
      30_000,
      100,
    )
    for await (const c of client.conflictsAll({ region: 'eu' })) if (c.key === key) recorded++
  }
  expect(recorded).toBeGreaterThan(0)
  const page = await client.conflicts({ region: 'eu', limit: 1 })
  expect(page.conflicts).toHaveLength(1)
  const first = page.conflicts[0] as RegionConflict
  // The larger stamp wins, in every region.
  expect(
    compareStamps(parseStamp(first.winner.stamp), parseStamp(first.loser.stamp)),
  ).toBeGreaterThan(0)
  expect(first.detectedIn).toBe('eu')

  const usView = await client.regions()
  expect(usView).toMatchObject({ region: 'us', leader: true })
  expect(usView.regions.map((r) => r.id)).toEqual(['us', 'eu'])
  expect(usView.shipping.map((s) => s.to)).toEqual(['eu'])
  expect(usView.receiving.map((r) => r.from)).toEqual(['eu'])
  const euView = await client.regions({ region: 'eu' })
  expect(euView.conflicts.recorded).toBeGreaterThan(0)
  // The view rides in GET /v1/cluster too.
  expect((await client.region('eu').cluster()).regions?.region).toBe('eu')

  await until(
    'equal digests',
    async () => {
      const [x, y] = await Promise.all([
        client.regionDigest(),
        client.regionDigest({ region: 'eu' }),
      ])
      return x.region === 'us' && y.region === 'eu' && x.digest === y.digest
    },
    30_000,
    100,
  )
})

it('refuses URLs of one region given for another', async () => {
  const crossed = new RegionalClient({
    regions: { us: eu.members.map((m) => m.url), eu: us.members.map((m) => m.url) },
    homeRegion: 'us',
    ...rootTls(),
  })
  try {
    await expect(crossed.put('x', 'y')).rejects.toThrow(
      /the URLs given for region us reach region eu/,
    )
  } finally {
    await crossed.close()
  }
  // A plain KvClient of one region talks to it as to any cluster.
  const plain = new KvClient({ url: eu.members[0]?.url as string, ...rootTls() })
  try {
    expect((await plain.regions()).region).toBe('eu')
  } finally {
    await plain.close()
  }
})
