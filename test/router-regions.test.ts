/**
 * kv-router in regions mode in front of two real regions of three nodes (us: n1-n3, eu: n4-n6;
 * TLS and auth as shipped), one router per region, each with its own router certificate and
 * both started with the same prefixes (`eu/` is eu's, `us/` is us's; any other key is the
 * router's own home region's):
 *
 * - writes through either router land in the key's home region (its leader stamps them);
 * - a session read after a write through the router sees it, reading from followers (an SDK
 *   client keeps the router's token, with a position per region);
 * - a batch across home regions is refused with KV_ERR_CROSS_REGION before any node sees it,
 *   and one region's batch is applied there;
 * - GET /v1/regions through a router answers from its home region's leader;
 * - keys written through both routers in both regions converge: the regions digest is equal
 *   on all six nodes.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { makeRouterCert } from '@kvstore/cli'
import { KvClient } from '@kvstore/client'
import { decodeRouterSession } from '@kvstore/protocol'
import {
  TestCluster,
  startRouterProcess,
  stopRouterProcess,
  until,
  type ClusterMember,
  type RouterProcess,
} from '@kvstore/testkit'
import { rootTls, testCertsDir } from './support/certs.js'

let us: TestCluster
let eu: TestCluster
let files: string[]
let certDir: string
let viaUs: RouterProcess
let viaEu: RouterProcess

/** A router certificate (kv://<cluster>/router/<id>) signed by the run's CA, in `dir`. */
async function makeRouterCertIn(dir: string, id: string): Promise<void> {
  const certs = testCertsDir()
  const ca = {
    certPem: await readFile(join(certs, 'ca.crt'), 'utf8'),
    keyPem: await readFile(join(certs, 'ca.key'), 'utf8'),
  }
  const clusterId = (await readFile(join(certs, 'cluster-id'), 'utf8')).trim()
  const pair = await makeRouterCert(ca, { clusterId, routerId: id })
  await writeFile(join(dir, `${id}.crt`), pair.certPem)
  await writeFile(join(dir, `${id}.key`), pair.keyPem, { mode: 0o600 })
}

/** A router in regions mode whose home is `home`, reading `file` (that region's own). */
function routerArgs(id: string, file: string, home: string): string[] {
  return [
    '--id',
    id,
    '--regions',
    file,
    '--home-region',
    home,
    '--home-region-prefix',
    'eu/=eu',
    '--home-region-prefix',
    'us/=us',
    '--cert-file',
    join(certDir, `${id}.crt`),
    '--key-file',
    join(certDir, `${id}.key`),
    '--ca-file',
    join(testCertsDir(), 'ca.crt'),
    // Its probes act for root; callers' requests act for the caller (kv-on-behalf-of).
    '--probe-user',
    'root',
    '--probe-interval-ms',
    '200',
    '--probe-timeout-ms',
    '500',
    '--max-lag-ms',
    '1000',
  ]
}

beforeAll(async () => {
  const started = await TestCluster.startRegions(['us', 'eu'], 3, ['--ack-timeout-ms', '3000'])
  ;[us, eu] = started.regions as [TestCluster, TestCluster]
  files = started.files
  certDir = await mkdtemp(join(tmpdir(), 'kv-router-regions-'))
  await makeRouterCertIn(certDir, 'r-us')
  await makeRouterCertIn(certDir, 'r-eu')
  viaUs = await startRouterProcess(routerArgs('r-us', files[0] as string, 'us'))
  viaEu = await startRouterProcess(routerArgs('r-eu', files[1] as string, 'eu'))
  // Both routers know both regions' leaders and have followers to read from.
  for (const router of [viaUs, viaEu])
    await until(
      `${router.url} to know both regions`,
      async () => {
        const view = (await (await fetch(`${router.url}/v1/cluster`)).json()) as {
          router: { groups: { leaderId: string | null; members: { inReadPool: boolean }[] }[] }
        }
        return view.router.groups.every(
          (g) => g.leaderId !== null && g.members.filter((m) => m.inReadPool).length >= 2,
        )
      },
      20_000,
      100,
    )
}, 180_000)
afterAll(async () => {
  if (viaEu !== undefined) await stopRouterProcess(viaEu)
  if (viaUs !== undefined) await stopRouterProcess(viaUs)
  await eu?.stop()
  await us?.stop()
  if (certDir !== undefined) await rm(certDir, { recursive: true, force: true })
})

const ids = (cluster: TestCluster) => cluster.members.map((m) => m.id)

interface Answer {
  status: number
  region: string | null
  servedBy: string | null
  session: string | null
  body: {
    stamp?: string
    results?: { key: string; stamp?: string }[]
    session?: string
    error?: { code: string }
  }
}

async function put(router: RouterProcess, key: string, value: string): Promise<Answer> {
  const res = await fetch(`${router.url}/v1/kv/${encodeURIComponent(key)}`, {
    method: 'PUT',
    body: value,
  })
  return {
    status: res.status,
    region: res.headers.get('kv-region'),
    servedBy: res.headers.get('kv-served-by'),
    session: res.headers.get('kv-session'),
    body: (await res.json()) as Answer['body'],
  }
}

/** The value and stamp of `key` on one node, or null. */
async function onNode(
  member: ClusterMember,
  key: string,
): Promise<{ value: string; stamp: string | null } | null> {
  const res = await fetch(`${member.url}/v1/kv/${encodeURIComponent(key)}`)
  if (res.status === 404) return null
  expect(res.status).toBe(200)
  return { value: await res.text(), stamp: res.headers.get('kv-stamp') }
}

/** Every member of both regions: the same digest of live user keys. */
async function converged(timeoutMs = 30_000): Promise<{ digest: string; keys: number }> {
  let answers: { digest: string; keys: number }[] = []
  await until(
    'all six nodes converge',
    async () => {
      answers = await Promise.all(
        [...us.active(), ...eu.active()].map(async (m) => {
          const res = await fetch(`${m.url}/admin/v1/regions/digest`)
          return (await res.json()) as { digest: string; keys: number }
        }),
      )
      return answers.every((a) => a.digest === answers[0]?.digest)
    },
    timeoutMs,
    100,
  )
  return answers[0] as { digest: string; keys: number }
}

describe('kv-router in front of two regions', () => {
  it('writes each key in its home region, through either router', async () => {
    const cases = [
      { router: viaUs, key: 'eu/cart/1', home: 'eu' },
      { router: viaUs, key: 'us/profile/1', home: 'us' },
      { router: viaUs, key: 'plain/from-us', home: 'us' },
      { router: viaEu, key: 'eu/cart/2', home: 'eu' },
      { router: viaEu, key: 'us/profile/2', home: 'us' },
      { router: viaEu, key: 'plain/from-eu', home: 'eu' },
    ]
    for (const { router, key, home } of cases) {
      const answer = await put(router, key, `${key} in ${home}`)
      expect(answer.status, JSON.stringify(answer.body)).toBe(200)
      expect(answer.region).toBe(home)
      const region = home === 'us' ? us : eu
      expect(answer.servedBy).toBe((await region.waitForLeader()).id)
      // The home region's leader stamped it: the write is that region's.
      expect(answer.body.stamp).toMatch(new RegExp(`@${home}$`))
      expect(answer.session).toMatch(/^r1\./)
      expect(answer.body.session).toBe(answer.session)
      const there = await onNode(region.leader, key)
      expect(there?.value).toBe(`${key} in ${home}`)
      expect(there?.stamp).toBe(answer.body.stamp)
    }
  })

  // Reads go to the home region's followers (the router's read pool), with the position the
  // client's token holds in that region: a read right after a write sees it.
  it('gives a session read-your-writes in both regions through one router, reading from followers', async () => {
    const keys = ['eu/ryw/1', 'eu/ryw/2', 'us/ryw/1', 'ryw/home/1']
    for (const router of [viaUs, viaEu]) {
      const client = new KvClient({ url: router.url, ...rootTls() })
      try {
        const stale: string[] = []
        const servedBy = new Set<string>()
        for (let round = 0; round < 25; round++) {
          for (const key of keys) {
            const value = `${key}@${router.url}#${round}`
            await client.put(key, value)
            const got = await client.get(key)
            if (got?.value.toString() !== value)
              stale.push(`${key}: wrote ${value}, read ${got?.value.toString() ?? 'nothing'}`)
          }
        }
        expect(stale).toEqual([])
        // The client's session is the router's, with a position in each region.
        const session = decodeRouterSession(client.session as string)
        expect([...session.groups.keys()].sort()).toEqual(['eu', 'us'])
        // And plain fetch: a read with the write's token, from a follower, sees the write.
        for (let i = 0; i < 10; i++) {
          const key = `eu/fetch/${i}`
          const written = await put(router, key, `v${i}`)
          expect(written.status).toBe(200)
          const res = await fetch(`${router.url}/v1/kv/${key}`, {
            headers: { 'kv-session': written.session as string },
          })
          expect(res.status).toBe(200)
          expect(await res.text()).toBe(`v${i}`)
          expect(res.headers.get('kv-region')).toBe('eu')
          servedBy.add(res.headers.get('kv-served-by') as string)
        }
        expect([...servedBy].every((id) => ids(eu).includes(id))).toBe(true)
        expect([...servedBy].some((id) => id !== eu.leader.id)).toBe(true)
      } finally {
        await client.close()
      }
    }
  })

  it('refuses a batch across home regions with KV_ERR_CROSS_REGION, and applies one region’s there', async () => {
    const cross = await fetch(`${viaUs.url}/v1/batch`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        ops: [
          { op: 'put', key: 'eu/batch/a', value: '1' },
          { op: 'put', key: 'us/batch/b', value: '2' },
        ],
      }),
    })
    expect(cross.status).toBe(400)
    expect(await cross.json()).toMatchObject({
      error: {
        code: 'KV_ERR_CROSS_REGION',
        regions: ['eu', 'us'],
        keys: ['eu/batch/a', 'us/batch/b'],
      },
    })
    // Nothing was written anywhere.
    for (const m of [us.leader, eu.leader]) {
      expect(await onNode(m, 'eu/batch/a')).toBeNull()
      expect(await onNode(m, 'us/batch/b')).toBeNull()
    }
    // A batch of eu's keys, sent through us's router, is applied by eu's leader.
    const one = await fetch(`${viaUs.url}/v1/batch`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        ops: [
          { op: 'put', key: 'eu/batch/a', value: '1' },
          { op: 'put', key: 'eu/batch/c', value: '3' },
        ],
      }),
    })
    const body = (await one.json()) as Answer['body']
    expect(one.status, JSON.stringify(body)).toBe(200)
    expect(one.headers.get('kv-region')).toBe('eu')
    // Each op is stamped by eu's leader.
    expect(body.results?.map((r) => r.stamp?.replace(/^.*@/, ''))).toEqual(['eu', 'eu'])
    expect((await onNode(eu.leader, 'eu/batch/c'))?.value).toBe('3')
  })

  it('answers GET /v1/regions from its home region’s leader', async () => {
    for (const [router, home, other] of [
      [viaUs, 'us', 'eu'],
      [viaEu, 'eu', 'us'],
    ] as const) {
      const res = await fetch(`${router.url}/v1/regions`)
      expect(res.status).toBe(200)
      const view = (await res.json()) as {
        region: string
        regions: { id: string }[]
        shipping: { to: string }[]
      }
      expect(view.region).toBe(home)
      expect(view.regions.map((r) => r.id)).toContain(other)
      // Shipping is known on the leader only: that is where the router asked.
      expect(view.shipping.map((s) => s.to)).toEqual([other])
      expect(res.headers.get('kv-served-by')).toBe((home === 'us' ? us : eu).leader.id)
    }
  })

  it('converges the keys written through both routers in both regions', async () => {
    const written = new Map<string, string>()
    const writes: Promise<void>[] = []
    for (const [router, tag] of [
      [viaUs, 'us'],
      [viaEu, 'eu'],
    ] as const) {
      writes.push(
        (async () => {
          for (let i = 0; i < 30; i++) {
            // Keys of both regions, and keys of the router's own home region.
            for (const key of [`eu/conv/${tag}/${i}`, `us/conv/${tag}/${i}`, `conv/${tag}/${i}`]) {
              const answer = await put(router, key, `${key}=${i}`)
              expect(answer.status).toBe(200)
              written.set(key, `${key}=${i}`)
            }
          }
        })(),
      )
    }
    await Promise.all(writes)
    // A key no prefix claims is each router's home region's: written through both routers,
    // it is written in both regions, and last-writer-wins settles it the same everywhere.
    expect((await put(viaUs, 'shared/1', 'from us')).region).toBe('us')
    expect((await put(viaEu, 'shared/1', 'from eu')).region).toBe('eu')
    const { keys } = await converged()
    expect(keys).toBeGreaterThanOrEqual(written.size)
    // Each region has the other's writes: read on a follower of the region that did not
    // write them.
    const usFollower = us.followers[0] as ClusterMember
    const euFollower = eu.followers[0] as ClusterMember
    for (const [key, value] of written) {
      expect((await onNode(usFollower, key))?.value, key).toBe(value)
      expect((await onNode(euFollower, key))?.value, key).toBe(value)
    }
    const shared = await Promise.all(
      [...us.active(), ...eu.active()].map(async (m) => (await onNode(m, 'shared/1'))?.value),
    )
    expect(new Set(shared).size).toBe(1)
    expect(['from us', 'from eu']).toContain(shared[0])
    // Nothing else conflicted: each of those keys was written in one region only.
    for (const m of [us.leader, eu.leader]) {
      const res = await fetch(`${m.url}/admin/v1/conflicts?limit=1000`)
      const page = (await res.json()) as { conflicts: { key: string }[] }
      expect(page.conflicts.filter((c) => c.key.includes('conv/'))).toEqual([])
    }
  })
})
