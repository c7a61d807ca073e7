/**
 * Regions mode: the routing decision (a key's home region), its configuration, and the router
 * in this process in front of two fake regions (test/fake-group.ts): keys go to their home
 * region, sessions keep a position per region, a batch across regions is refused, listings and
 * GET /v1/regions go where they belong, and the shard endpoints are refused.
 */
import { mkdtemp, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { decodeRouterSession, encodeSession } from '@kvstore/protocol'
import { RouterConfigError, parseRouterConfig, routerHelpText } from '../src/config.js'
import {
  RegionRouting,
  homeRegionPrefixesMax,
  homeRegionProblems,
  parseHomeRegionPrefix,
  regionsDirectory,
} from '../src/regions.js'
import { KvRouter } from '../src/router.js'
import { FakeGroup } from './fake-group.js'

function problem(argv: string[], env: NodeJS.ProcessEnv = {}): string {
  try {
    parseRouterConfig(argv, env)
  } catch (err) {
    expect(err).toBeInstanceOf(RouterConfigError)
    return (err as Error).message
  }
  throw new Error('the configuration was accepted')
}

describe('the home region of a key', () => {
  const routing = new RegionRouting(['us', 'eu', 'ap'], 'us', [
    { prefix: 'eu/', region: 'eu' },
    { prefix: 'eu/us-', region: 'us' },
    { prefix: 'ap', region: 'ap' },
    { prefix: 'k=v=', region: 'eu' },
  ])

  it('is the region of the longest prefix the key starts with, else the home region', () => {
    expect(routing.regionOfKey('eu/cart/1')).toBe('eu')
    expect(routing.regionOfKey('eu/')).toBe('eu')
    expect(routing.regionOfKey('eu/us-profile')).toBe('us')
    expect(routing.regionOfKey('eu/us')).toBe('eu')
    expect(routing.regionOfKey('apples')).toBe('ap')
    expect(routing.regionOfKey('eu')).toBe('us')
    expect(routing.regionOfKey('')).toBe('us')
    expect(routing.regionOfKey('users/1')).toBe('us')
    expect(routing.regionOfKey('k=v=1')).toBe('eu')
    // Prefixes compare as text, whatever the script.
    const unicode = new RegionRouting(['us', 'eu'], 'eu', [{ prefix: 'ü/😀', region: 'us' }])
    expect(unicode.regionOfKey('ü/😀/x')).toBe('us')
    expect(unicode.regionOfKey('ü/😁')).toBe('eu')
  })

  it('groups a batch by home region, with an example key of each', () => {
    expect(routing.regionsOfKeys(['eu/a', 'eu/b'])).toEqual({ regions: ['eu'], keys: ['eu/a'] })
    expect(routing.regionsOfKeys(['x', 'eu/a', 'y', 'apple'])).toEqual({
      regions: ['ap', 'eu', 'us'],
      keys: ['apple', 'eu/a', 'x'],
    })
    expect(routing.regionsOfKeys([])).toEqual({ regions: [], keys: [] })
  })

  it('lists its prefixes sorted, and refuses regions the file does not name', () => {
    expect(routing.prefixes.map((p) => p.prefix)).toEqual(['ap', 'eu/', 'eu/us-', 'k=v='])
    expect(() => new RegionRouting(['us', 'eu'], 'ap', [])).toThrow(
      /--home-region ap is not in the regions file \(regions: us, eu\)/,
    )
    expect(() => new RegionRouting(['us', 'eu'], 'us', [{ prefix: 'x', region: 'ap' }])).toThrow(
      /names region ap, not in the regions file/,
    )
    expect(
      () =>
        new RegionRouting(['us', 'eu'], 'us', [
          { prefix: 'x', region: 'us' },
          { prefix: 'x', region: 'eu' },
        ]),
    ).toThrow(/given to us and eu/)
  })

  it('parses PREFIX=REGION at the last =, and says what is wrong with a bad one', () => {
    expect(parseHomeRegionPrefix('eu/=eu', 1024)).toEqual({ prefix: 'eu/', region: 'eu' })
    expect(parseHomeRegionPrefix('a=b=eu', 1024)).toEqual({ prefix: 'a=b', region: 'eu' })
    expect(() => parseHomeRegionPrefix('eu/', 1024)).toThrow(/must be PREFIX=REGION/)
    expect(() => parseHomeRegionPrefix('=eu', 1024)).toThrow(/must be PREFIX=REGION/)
    expect(() => parseHomeRegionPrefix('eu/=EU', 1024)).toThrow(/"EU" is not a region id/)
    expect(() => parseHomeRegionPrefix('abcdef=eu', 4)).toThrow(/longer than a key/)
    expect(() => parseHomeRegionPrefix('\u0000x=eu', 1024)).toThrow(/reserved/)
    expect(homeRegionProblems('us', ['a/=eu', 'a/=us', 'b/=eu', 'b/=eu'], 1024)).toEqual([
      '--home-region-prefix gives "a/" to both eu and us',
    ])
    expect(homeRegionProblems('US', [], 1024)[0]).toMatch(/--home-region "US" is not a region id/)
    const many = Array.from({ length: homeRegionPrefixesMax + 1 }, (_, i) => `p${i}=eu`)
    expect(homeRegionProblems('us', many, 1024)[0]).toMatch(/at most 1024/)
  })

  it('makes a directory with the home region first, owning every slot', () => {
    const regions = [
      { id: 'us', members: [{ id: 'n1', url: 'https://127.0.0.1:7001' }] },
      { id: 'eu', members: [{ id: 'n4', url: 'https://127.0.0.1:7011' }] },
    ]
    const map = regionsDirectory(regions, 'eu')
    expect(map.groups.map((g) => g.id)).toEqual(['eu', 'us'])
    expect(map.slots).toEqual([{ first: 0, last: 4095, group: 'eu', version: 1, sinceLsn: 0 }])
    expect(() => regionsDirectory(regions, 'ap')).toThrow(/not in the regions file/)
  })
})

describe('the regions configuration', () => {
  const regions = ['--regions', 'regions.json']

  it('takes --regions with --home-region and any number of --home-region-prefix', () => {
    const { config } = parseRouterConfig(
      [...regions, '--home-region', 'us', '--home-region-prefix', 'eu/=eu'],
      {},
    )
    expect(config).toMatchObject({
      regions: 'regions.json',
      homeRegion: 'us',
      homeRegionPrefixes: ['eu/=eu'],
      shardMap: undefined,
      group: undefined,
    })
    const two = parseRouterConfig(
      [
        ...regions,
        '--home-region',
        'us',
        '--home-region-prefix',
        'eu/=eu',
        '--home-region-prefix=ap/=ap',
      ],
      {},
    ).config
    expect(two.homeRegionPrefixes).toEqual(['eu/=eu', 'ap/=ap'])
    // The environment: comma-separated.
    expect(
      parseRouterConfig([...regions], {
        KV_ROUTER_HOME_REGION: 'eu',
        KV_ROUTER_HOME_REGION_PREFIXES: 'us/=us,ap/=ap',
      }).config,
    ).toMatchObject({ homeRegion: 'eu', homeRegionPrefixes: ['us/=us', 'ap/=ap'] })
    // No prefix: every key is the home region's, and the default list is not shared.
    const none = parseRouterConfig([...regions, '--home-region', 'us'], {}).config
    expect(none.homeRegionPrefixes).toEqual([])
    none.homeRegionPrefixes.push('x=eu')
    expect(
      parseRouterConfig([...regions, '--home-region', 'us'], {}).config.homeRegionPrefixes,
    ).toEqual([])
  })

  it('reads the prefixes from a config file as an array', async () => {
    const file = join(await mkdtemp(join(tmpdir(), 'kv-router-regions-')), 'router.json')
    await writeFile(
      file,
      JSON.stringify({ regions: 'r.json', homeRegion: 'us', homeRegionPrefixes: ['eu/=eu'] }),
    )
    expect(parseRouterConfig(['--config', file], {}).config).toMatchObject({
      regions: 'r.json',
      homeRegion: 'us',
      homeRegionPrefixes: ['eu/=eu'],
    })
    await writeFile(file, JSON.stringify({ regions: 'r.json', homeRegionPrefixes: [1] }))
    expect(problem(['--config', file, '--home-region', 'us'])).toMatch(
      /--home-region-prefix \(from config file\) must be a list of non-empty strings/,
    )
  })

  it('refuses regions with sharding, with --group, or without a home region', () => {
    expect(problem([...regions, '--home-region', 'us', '--shard-map', 'map.json'])).toMatch(
      /--regions and --shard-map cannot go together.*not both/,
    )
    expect(problem([...regions, '--home-region', 'us', '--group', 'g1=http://a:1'])).toMatch(
      /--regions and --group cannot go together/,
    )
    expect(problem([...regions])).toMatch(/--regions needs --home-region ID/)
    expect(problem(['--group', 'g1=http://a:1', '--home-region', 'us'])).toMatch(
      /are for regions mode: give --regions FILE/,
    )
    expect(problem(['--group', 'g1=http://a:1', '--home-region-prefix', 'a=us'])).toMatch(
      /are for regions mode/,
    )
    expect(problem([...regions, '--home-region', 'us', '--home-region-prefix', 'eu'])).toMatch(
      /must be PREFIX=REGION/,
    )
    expect(problem([...regions, '--home-region', 'Us'])).toMatch(/is not a region id/)
    expect(problem([])).toMatch(/or the regions with --regions FILE/)
  })

  it('documents the regions options in --help', () => {
    const help = routerHelpText()
    expect(help).toContain('--regions FILE --home-region ID')
    expect(help).toContain('--home-region-prefix PREFIX=REGION  [KV_ROUTER_HOME_REGION_PREFIXES')
  })
})

describe('the router in front of two fake regions', () => {
  let us: FakeGroup
  let eu: FakeGroup
  let router: KvRouter
  let file: string

  const start = async (extra: string[] = []) => {
    const { config } = parseRouterConfig(
      [
        '--regions',
        file,
        '--home-region',
        'us',
        '--home-region-prefix',
        'eu/=eu',
        '--port',
        '0',
        '--log-level',
        'silent',
        '--probe-interval-ms',
        '50',
        ...extra,
      ],
      {},
    )
    return KvRouter.start(config)
  }

  beforeEach(async () => {
    us = await FakeGroup.start('us')
    eu = await FakeGroup.start('eu')
    file = join(await mkdtemp(join(tmpdir(), 'kv-router-regions-')), 'regions.json')
    const entry = (g: FakeGroup) => ({
      id: g.id,
      members: g.nodes.map((n) => ({ id: n.id, url: n.url })),
    })
    // The file lists eu first: the router still puts its home region first.
    await writeFile(file, JSON.stringify({ regions: [entry(eu), entry(us)] }))
    router = await start()
  })
  afterEach(async () => {
    await router?.stop()
    await us.close()
    await eu.close()
  })

  const seen = (g: FakeGroup, method: string, url: string) =>
    g.nodes.flatMap((n) => n.seen.filter((s) => s.method === method && s.url === url))

  it('writes each key in its home region, and its session keeps a position in each', async () => {
    eu.lsn = 40
    const first = await fetch(`${router.url}/v1/kv/users/1`, { method: 'PUT', body: 'u' })
    expect(first.status).toBe(200)
    expect(first.headers.get('kv-region')).toBe('us')
    expect(first.headers.get('kv-served-by')).toBe('usn1')
    const token1 = first.headers.get('kv-session') as string
    expect(token1).toMatch(/^r1\./)
    expect(((await first.json()) as { session: string }).session).toBe(token1)
    const second = await fetch(`${router.url}/v1/kv/eu/cart`, {
      method: 'PUT',
      body: 'e',
      headers: { 'kv-session': token1 },
    })
    expect(second.headers.get('kv-region')).toBe('eu')
    expect(second.headers.get('kv-served-by')).toBe('eun1')
    const token2 = second.headers.get('kv-session') as string
    expect([...decodeRouterSession(token2).groups]).toEqual([
      ['eu', { epoch: 1, lsn: 41 }],
      ['us', { epoch: 1, lsn: 1 }],
    ])
    expect(us.data.get('users/1')).toBe('u')
    expect(eu.data.get('eu/cart')).toBe('e')
    expect(us.data.has('eu/cart')).toBe(false)
    // A read goes to the key's home region (a follower), with that region's position.
    const read = await fetch(`${router.url}/v1/kv/eu/cart`, { headers: { 'kv-session': token2 } })
    expect(read.status).toBe(200)
    expect(await read.text()).toBe('e')
    expect(read.headers.get('kv-region')).toBe('eu')
    expect(['eun2', 'eun3']).toContain(read.headers.get('kv-served-by'))
    expect(seen(eu, 'GET', '/v1/kv/eu/cart').at(-1)?.headers['kv-session']).toBe(
      encodeSession({ epoch: 1, lsn: 41 }),
    )
    const home = await fetch(`${router.url}/v1/kv/users/1`, { headers: { 'kv-session': token2 } })
    expect(await home.text()).toBe('u')
    expect(seen(us, 'GET', '/v1/kv/users/1').at(-1)?.headers['kv-session']).toBe(
      encodeSession({ epoch: 1, lsn: 1 }),
    )
    // A node's token names no region.
    const refused = await fetch(`${router.url}/v1/kv/users/1`, {
      headers: { 'kv-session': 's1.1.1' },
    })
    expect(refused.status).toBe(400)
    expect(await refused.json()).toMatchObject({
      error: { code: 'KV_ERR_INVALID_SESSION', message: expect.stringMatching(/several regions/) },
    })
    // DELETE goes home too.
    const del = await fetch(`${router.url}/v1/kv/eu/cart`, { method: 'DELETE' })
    expect(del.headers.get('kv-region')).toBe('eu')
    expect(eu.data.has('eu/cart')).toBe(false)
  })

  it('refuses a batch across home regions with KV_ERR_CROSS_REGION, and sends one region’s to it', async () => {
    const cross = await fetch(`${router.url}/v1/batch`, {
      method: 'POST',
      body: JSON.stringify({
        ops: [
          { op: 'put', key: 'eu/a', value: '1' },
          { op: 'put', key: 'users/2', value: '2' },
          { op: 'put', key: 'eu/b', value: '3' },
        ],
      }),
    })
    expect(cross.status).toBe(400)
    expect(await cross.json()).toMatchObject({
      error: { code: 'KV_ERR_CROSS_REGION', regions: ['eu', 'us'], keys: ['eu/a', 'users/2'] },
    })
    expect([...seen(us, 'POST', '/v1/batch'), ...seen(eu, 'POST', '/v1/batch')]).toEqual([])
    const one = await fetch(`${router.url}/v1/batch`, {
      method: 'POST',
      body: JSON.stringify({
        ops: [
          { op: 'put', key: 'eu/a', value: '1' },
          { op: 'delete', key: 'eu/b' },
        ],
      }),
    })
    expect(one.status).toBe(200)
    expect(one.headers.get('kv-region')).toBe('eu')
    expect(seen(eu, 'POST', '/v1/batch')).toHaveLength(1)
    // A body the router cannot read goes to the home region, whose node explains.
    const bad = await fetch(`${router.url}/v1/batch`, { method: 'POST', body: '{"ops":' })
    expect(bad.headers.get('kv-region')).toBe('us')
  })

  it('sends a listing to its prefix’s region, and GET /v1/regions to the home region’s leader', async () => {
    eu.data.set('eu/1', 'a')
    us.data.set('users/1', 'b')
    const euList = await fetch(`${router.url}/v1/kv?prefix=eu/`)
    expect(euList.headers.get('kv-region')).toBe('eu')
    expect(((await euList.json()) as { items: { key: string }[] }).items).toEqual([
      { key: 'eu/1', version: 1, valueBytes: 1 },
    ])
    const usList = await fetch(`${router.url}/v1/kv?prefix=users/`)
    expect(usList.headers.get('kv-region')).toBe('us')
    const all = await fetch(`${router.url}/v1/kv`)
    expect(all.headers.get('kv-region')).toBe('us')

    const view = { region: 'us', regions: [], shipping: [], receiving: [], conflicts: 0 }
    for (const n of us.nodes) n.scripted.push({ prefix: '/v1/regions', status: 200, body: view })
    const regions = await fetch(`${router.url}/v1/regions`)
    expect(regions.status).toBe(200)
    expect(await regions.json()).toEqual(view)
    expect(regions.headers.get('kv-served-by')).toBe('usn1')
    expect(seen(eu, 'GET', '/v1/regions')).toEqual([])
  })

  it('says what it routes on /v1/cluster, and refuses the shard endpoints', async () => {
    const cluster = (await (await fetch(`${router.url}/v1/cluster`)).json()) as {
      router: {
        mode: string
        homeRegion: string
        homeRegionPrefixes: unknown
        groups: { id: string; slots: string; leaderId: string }[]
      }
    }
    expect(cluster.router).toMatchObject({
      mode: 'regions',
      homeRegion: 'us',
      homeRegionPrefixes: [{ prefix: 'eu/', region: 'eu' }],
    })
    expect(cluster.router.groups.map((g) => [g.id, g.slots, g.leaderId])).toEqual([
      ['us', '', 'usn1'],
      ['eu', '', 'eun1'],
    ])
    for (const [method, path] of [
      ['GET', '/v1/shards'],
      ['POST', '/admin/v1/shards/moves'],
      ['POST', '/admin/v1/shards/moves/abort'],
    ] as const) {
      const res = await fetch(`${router.url}${path}`, {
        method,
        ...(method === 'POST' ? { body: '{"slots":"0-9","to":"eu"}' } : {}),
      })
      expect(res.status).toBe(400)
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe(
        'KV_ERR_UNSUPPORTED_IN_MODE',
      )
    }
  })

  it('is ready while its home region answers, even with another region cut off', async () => {
    expect((await fetch(`${router.url}/ready`)).status).toBe(200)
    await eu.close()
    await new Promise((resolve) => setTimeout(resolve, 300))
    expect((await fetch(`${router.url}/ready`)).status).toBe(200)
    // Keys of the cut region fail with the region named, after --retry-for-ms.
    await router.stop()
    router = await start(['--retry-for-ms', '300'])
    const res = await fetch(`${router.url}/v1/kv/eu/x`, { method: 'PUT', body: 'v' })
    expect(res.status).toBe(503)
    expect(await res.json()).toMatchObject({
      error: { code: 'KV_ERR_GROUP_UNAVAILABLE', group: 'eu' },
    })
  })

  it('does not start with a home region the regions file does not name', async () => {
    const { config } = parseRouterConfig(
      ['--regions', file, '--home-region', 'ap', '--port', '0', '--log-level', 'silent'],
      {},
    )
    await expect(KvRouter.start(config)).rejects.toThrow(
      /--home-region ap is not in the regions file \(regions: eu, us\)/,
    )
    const bad = parseRouterConfig(
      [
        '--regions',
        file,
        '--home-region',
        'us',
        '--home-region-prefix',
        'x/=ap',
        '--port',
        '0',
        '--log-level',
        'silent',
      ],
      {},
    ).config
    await expect(KvRouter.start(bad)).rejects.toThrow(/names region ap, not in the regions file/)
  })
})
