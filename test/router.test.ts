/**
 * kv-router in front of a real 3-node single-leader group (TLS and auth on, as shipped): writes
 * reach the leader, reads spread over the followers, a paused follower leaves the read pool
 * and comes back, a killed leader costs an SDK client no write, and a rate-limited client is
 * refused while another is served.
 */
import { readFileSync } from 'node:fs'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Agent, fetch as fetchVia } from 'undici'
import { makeRouterCert } from '@kvstore/cli'
import { KvClient } from '@kvstore/client'
import {
  TestCluster,
  startRouterProcess,
  stopRouterProcess,
  until,
  type RouterProcess,
} from '@kvstore/testkit'
import { caPem, rootPassword, rootTls, testCertsDir } from './support/certs.js'

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

interface RouterClusterView {
  router: {
    groups: {
      id: string
      leaderId: string | null
      members: { id: string; state: string; inReadPool: boolean; role: string }[]
    }[]
  }
}

/** kv-router flags for a router in front of `cluster` as group g1. */
function routerArgs(cluster: TestCluster, extra: string[] = []): string[] {
  const certs = testCertsDir()
  return [
    '--group',
    `g1=${cluster.members.map((m) => m.url).join(',')}`,
    // The client port's certificate: any the CA signed for 127.0.0.1.
    '--cert-file',
    join(certs, 'n9.crt'),
    '--key-file',
    join(certs, 'n9.key'),
    '--ca-file',
    join(certs, 'ca.crt'),
    // Until the nodes know router certificates, the router reaches them as root (development).
    '--identity-cert',
    join(certs, 'root.crt'),
    '--identity-key',
    join(certs, 'root.key'),
    '--max-lag-ms',
    '1000',
    '--probe-interval-ms',
    '200',
    '--probe-timeout-ms',
    '500',
    ...extra,
  ]
}

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

async function routerView(
  router: RouterProcess,
): Promise<RouterClusterView['router']['groups'][0]> {
  const res = await fetch(`${router.url}/v1/cluster`)
  expect(res.status).toBe(200)
  const view = (await res.json()) as RouterClusterView
  return view.router.groups[0] as RouterClusterView['router']['groups'][0]
}

describe('kv-router in front of a 3-node group', () => {
  let cluster: TestCluster
  let router: RouterProcess

  beforeAll(async () => {
    cluster = await TestCluster.start(3, ['--ack-timeout-ms', '3000', '--read-wait-ms', '1000'])
    router = await startRouterProcess(routerArgs(cluster))
  })
  afterAll(async () => {
    if (router !== undefined) await stopRouterProcess(router)
    await cluster?.stop()
  })

  it('sends writes to the leader and spreads reads over the followers', async () => {
    const leader = cluster.leader.id
    const followers = cluster.followers.map((m) => m.id).sort()
    for (let i = 0; i < 10; i++) {
      const res = await fetch(`${router.url}/v1/kv/spread/${i}?ack=all`, {
        method: 'PUT',
        body: `v${i}`,
      })
      expect(res.status).toBe(200)
      expect(res.headers.get('kv-served-by')).toBe(leader)
      const body = (await res.json()) as { key: string; session: string }
      expect(body.key).toBe(`spread/${i}`)
    }
    const servedBy = new Map<string, number>()
    for (let i = 0; i < 30; i++) {
      const res = await fetch(`${router.url}/v1/kv/spread/${i % 10}`)
      expect(res.status).toBe(200)
      expect(await res.text()).toBe(`v${i % 10}`)
      const by = res.headers.get('kv-served-by') as string
      servedBy.set(by, (servedBy.get(by) ?? 0) + 1)
    }
    // Round-robin over the two followers; the leader serves no reads while they are healthy.
    expect([...servedBy.keys()].sort()).toEqual(followers)
    for (const count of servedBy.values()) expect(count).toBeGreaterThanOrEqual(10)
    // A missing key is the node's own 404; a linearizable read goes to the leader.
    const missing = await fetch(`${router.url}/v1/kv/spread/none`)
    expect(missing.status).toBe(404)
    expect(((await missing.json()) as { error: { code: string } }).error.code).toBe(
      'KV_ERR_KEY_NOT_FOUND',
    )
    const linearizable = await fetch(`${router.url}/v1/kv/spread/1?consistency=linearizable`)
    expect(linearizable.status).toBe(200)
    expect(linearizable.headers.get('kv-served-by')).toBe(leader)
    // The router's view names the leader and both followers as healthy.
    const view = await routerView(router)
    expect(view.leaderId).toBe(leader)
    expect(
      view.members
        .filter((m) => m.inReadPool)
        .map((m) => m.id)
        .sort(),
    ).toEqual(followers)
  })

  it('speaks the API the SDK expects: sessions, batches, listings, conditions', async () => {
    const client = new KvClient({ url: router.url, ...rootTls(), maxLagMs: 1000 })
    try {
      const put = await client.put('sdk/a', 'one')
      // A write's token is the node's own with one group, and a read after it sees it.
      expect(put.session).toMatch(/^s1\./)
      const got = await client.get('sdk/a')
      expect(got?.value.toString()).toBe('one')
      await expect(client.put('sdk/a', 'two', { ifVersion: put.version })).resolves.toMatchObject({
        key: 'sdk/a',
      })
      await expect(client.put('sdk/a', 'three', { ifVersion: put.version })).rejects.toMatchObject({
        code: 'KV_ERR_PRECONDITION_FAILED',
      })
      const batch = await client.batch([
        { op: 'put', key: 'sdk/b', value: 'b' },
        { op: 'put', key: 'sdk/c', value: 'c' },
      ])
      expect(batch.results).toHaveLength(2)
      const page = await client.list({ prefix: 'sdk/' })
      expect(page.items.map((i) => i.key)).toEqual(['sdk/a', 'sdk/b', 'sdk/c'])
      await client.delete('sdk/c')
      expect(await client.get('sdk/c')).toBeNull()
      // HEAD: the headers of a GET, no body.
      const head = await fetch(`${router.url}/v1/kv/sdk/a`, { method: 'HEAD' })
      expect(head.status).toBe(200)
      expect(head.headers.get('etag')).toMatch(/^"\d+"$/)
      expect(await head.text()).toBe('')
    } finally {
      await client.close()
    }
  })

  it('takes a paused follower out of the read pool within the lag bound, and back after SIGCONT', async () => {
    const paused = (cluster.followers[0] as { id: string }).id
    const inPool = async (id: string) =>
      (await routerView(router)).members.find((m) => m.id === id)?.inReadPool === true
    expect(await inPool(paused)).toBe(true)
    cluster.pause(paused)
    const pausedAt = Date.now()
    try {
      await until(
        'the paused follower to leave the read pool',
        async () => !(await inPool(paused)),
        20_000,
        20,
      )
      const outAfterMs = Date.now() - pausedAt
      // The bound is --max-lag-ms (1 s); a probe that times out (500 ms) finds it sooner. The
      // margin is for a loaded machine.
      expect(outAfterMs).toBeLessThan(3000)
      // Reads go on, none to the paused follower; writes too (a majority is up).
      for (let i = 0; i < 20; i++) {
        const res = await fetch(`${router.url}/v1/kv/spread/${i % 10}`)
        expect(res.status).toBe(200)
        await res.arrayBuffer()
        expect(res.headers.get('kv-served-by')).not.toBe(paused)
      }
      const put = await fetch(`${router.url}/v1/kv/paused/x`, { method: 'PUT', body: 'x' })
      expect(put.status).toBe(200)
    } finally {
      cluster.resume(paused)
    }
    await until('the follower to come back to the read pool', () => inPool(paused), 20_000, 50)
    const servedBy = new Set<string>()
    for (let i = 0; i < 20; i++) {
      const res = await fetch(`${router.url}/v1/kv/spread/${i % 10}`)
      expect(res.status).toBe(200)
      await res.arrayBuffer()
      servedBy.add(res.headers.get('kv-served-by') as string)
    }
    expect(servedBy).toContain(paused)
  })

  it('refuses a client over its rate limit with 429 while another client is served', async () => {
    const limited = await startRouterProcess(
      routerArgs(cluster, [
        '--id',
        'r2',
        '--rate-limit-per-credential',
        '5',
        '--rate-limit-per-credential-burst',
        '10',
      ]),
    )
    try {
      // Client B logs in through the router (one request of A's certificate, as it carries it).
      const login = await fetch(`${limited.url}/v1/auth/token`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ user: 'root', password: rootPassword() }),
      })
      expect(login.status).toBe(200)
      const { token } = (await login.json()) as { token: string }
      // Client A (root's certificate) asks far more than 5 a second.
      let refused = 0
      let served = 0
      for (let i = 0; i < 40; i++) {
        const res = await fetch(`${limited.url}/v1/kv/spread/${i % 10}`)
        if (res.status === 429) {
          refused++
          expect(res.headers.get('retry-after')).toMatch(/^[1-9]\d*$/)
          const body = (await res.json()) as { error: { code: string } }
          expect(body.error.code).toBe('KV_ERR_RATE_LIMITED')
        } else {
          expect(res.status).toBe(200)
          await res.arrayBuffer()
          served++
        }
      }
      expect(refused).toBeGreaterThan(0)
      expect(served).toBeLessThan(40)
      // Client B, with its own credential, is served meanwhile.
      for (let i = 0; i < 5; i++) {
        const res = await fetch(`${limited.url}/v1/kv/spread/${i}`, {
          headers: { authorization: `Bearer ${token}` },
        })
        expect(res.status).toBe(200)
        await res.arrayBuffer()
      }
      // A listing with values costs 10 tokens: B's bucket (10) affords one, not two.
      const list = () =>
        fetch(`${limited.url}/v1/kv?prefix=spread/&values=true`, {
          headers: { authorization: `Bearer ${token}` },
        })
      await sleep(2100)
      expect((await list()).status).toBe(200)
      expect((await list()).status).toBe(429)
      await sleep(2100)
      const metrics = await fetch(`${limited.url}/metrics`, {
        headers: { authorization: `Bearer ${token}` },
      })
      expect(metrics.status).toBe(200)
      expect(await metrics.text()).toMatch(
        /kv_router_rate_limited_total\{limit="credential"\} [1-9]/,
      )
    } finally {
      await stopRouterProcess(limited)
    }
  })

  it('acts for the user a client certificate names (kv-on-behalf-of), with a router certificate of its own', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kv-router-cert-'))
    let acting: RouterProcess | undefined
    try {
      await makeRouterCertIn(dir, 'r3')
      // reader may read spread/ and nothing else.
      const leader = cluster.leader.url
      const admin = async (path: string, body: unknown) => {
        const res = await fetch(`${leader}${path}`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(body),
        })
        expect(res.status, `${path}: ${await res.text()}`).toBeLessThan(300)
      }
      await admin('/admin/v1/roles', { name: 'spread-reader' })
      await admin('/admin/v1/roles/spread-reader/grant', { access: 'read', prefix: 'spread/' })
      await admin('/admin/v1/users', { name: 'reader', roles: ['spread-reader'] })
      acting = await startRouterProcess(
        routerArgs(cluster, [
          '--id',
          'r3',
          '--cert-file',
          join(dir, 'r3.crt'),
          '--key-file',
          join(dir, 'r3.key'),
          '--identity-cert',
          join(dir, 'r3.crt'),
          '--identity-key',
          join(dir, 'r3.key'),
          '--probe-user',
          'root',
          // One multiplexed HTTP/2 connection per node, for a change.
          '--upstream-protocol',
          'h2',
        ]),
      )
      const url = acting.url
      // Its probes act for root: it knows the leader and the followers' health.
      await until('the router to know the leader', async () => {
        const view = await routerView(acting as RouterProcess)
        return view.leaderId === cluster.leader.id && view.members.some((m) => m.inReadPool)
      })
      const certs = testCertsDir()
      const as = (user: string) =>
        new Agent({
          connect: {
            ca: caPem(),
            cert: readFileSync(join(certs, `${user}.crt`)),
            key: readFileSync(join(certs, `${user}.key`)),
          },
        })
      const reader = as('reader')
      const anonymous = new Agent({ connect: { ca: caPem() } })
      try {
        const code = async (res: { json(): Promise<unknown> }) =>
          ((await res.json()) as { error: { code: string } }).error.code
        const seed = await fetch(`${url}/v1/kv/spread/1`, { method: 'PUT', body: 'v1' })
        expect(seed.status).toBe(200)
        await seed.arrayBuffer()
        // reader's own grants apply through the router: it reads spread/, writes nothing.
        const read = await fetchVia(`${url}/v1/kv/spread/1`, { dispatcher: reader })
        expect(read.status).toBe(200)
        await read.arrayBuffer()
        const write = await fetchVia(`${url}/v1/kv/spread/1`, {
          method: 'PUT',
          body: 'no',
          dispatcher: reader,
          // A client's own kv-on-behalf-of is never passed on.
          headers: { 'kv-on-behalf-of': 'root' },
        })
        expect(write.status).toBe(403)
        expect(await code(write)).toBe('KV_ERR_PERMISSION_DENIED')
        // root's certificate: root's grants.
        const rootWrite = await fetch(`${url}/v1/kv/spread/by-root`, { method: 'PUT', body: 'ok' })
        expect(rootWrite.status).toBe(200)
        await rootWrite.arrayBuffer()
        // No credential: the router's certificate lends nothing.
        const nobody = await fetchVia(`${url}/v1/kv/spread/1`, { dispatcher: anonymous })
        expect(nobody.status).toBe(401)
        expect(await code(nobody)).toBe('KV_ERR_UNAUTHENTICATED')
        // The router's own endpoints ask the group who the caller is.
        expect((await fetchVia(`${url}/v1/cluster`, { dispatcher: anonymous })).status).toBe(401)
        expect((await fetchVia(`${url}/metrics`, { dispatcher: reader })).status).toBe(403)
        expect((await fetch(`${url}/metrics`)).status).toBe(200)
      } finally {
        await reader.close()
        await anonymous.close()
      }
    } finally {
      if (acting !== undefined) await stopRouterProcess(acting)
      await rm(dir, { recursive: true, force: true })
    }
  })

  it('rides through a leader killed with kill -9: an SDK client through the router loses no write', async () => {
    const client = new KvClient({ url: router.url, ...rootTls() })
    const acked = new Map<string, string>()
    const failures: unknown[] = []
    let stop = false
    const writer = async (w: number) => {
      for (let i = 0; !stop; i++) {
        const key = `failover/${w}/${i}`
        try {
          await client.put(key, `v${i}`, { ack: 'quorum' })
          acked.set(key, `v${i}`)
        } catch (err) {
          failures.push(err)
        }
      }
    }
    const writers = Array.from({ length: 4 }, (_, w) => writer(w))
    try {
      await sleep(1000)
      const old = cluster.leader.id
      await cluster.kill(old)
      const next = await cluster.waitForLeader()
      expect(next.id).not.toBe(old)
      await sleep(1500)
      stop = true
      await Promise.all(writers)
      expect(failures).toEqual([])
      expect(acked.size).toBeGreaterThan(20)
      // Every acknowledged write is there.
      const found = new Map<string, string>()
      let cursor: string | undefined
      for (;;) {
        const page = await client.list({
          prefix: 'failover/',
          values: true,
          limit: 1000,
          ...(cursor !== undefined ? { cursor } : {}),
        })
        for (const item of page.items)
          found.set(item.key, Buffer.from(item.valueBase64 ?? '', 'base64').toString())
        if (page.nextCursor === null) break
        cursor = page.nextCursor
      }
      for (const [key, value] of acked) expect(found.get(key)).toBe(value)
      // The router retried (the SDK saw no error, so it had nothing to retry).
      const metrics = await (await fetch(`${router.url}/metrics`)).text()
      const retries = [...metrics.matchAll(/^kv_router_retries_total\{reason="(\w+)"\} (\d+)$/gm)]
      expect(retries.reduce((n, m) => n + Number(m[2]), 0)).toBeGreaterThan(0)
      // Writes now reach the new leader.
      const res = await fetch(`${router.url}/v1/kv/failover/after`, { method: 'PUT', body: 'x' })
      expect(res.status).toBe(200)
      expect(res.headers.get('kv-served-by')).toBe(next.id)
    } finally {
      stop = true
      await Promise.all(writers)
      await client.close()
    }
  })
})
