/**
 * Single-leader replication on real 3-node process clusters.
 */
import { Pool } from 'undici'
import { KvClient, KvError } from '@kvstore/client'
import { rejection, TestCluster } from '@kvstore/testkit'
import { rootConnect, rootTls } from './support/certs.js'

const failure = (promise: Promise<unknown>): Promise<KvError> => rejection(promise, KvError)

describe('a 3-node single-leader cluster', () => {
  let cluster: TestCluster

  beforeAll(async () => {
    cluster = await TestCluster.start(3, ['--ack-timeout-ms', '1500', '--read-wait-ms', '500'])
  })
  afterAll(async () => {
    await cluster.stop()
  })

  it('replicates 100,000 writes (puts, deletes, batches) to every node, with equal digests', async () => {
    const pool = new Pool(cluster.leader.url, { connections: 64, connect: rootConnect() })
    const total = 100_000
    let issued = 0
    let lastLsn = 0
    const worker = async () => {
      for (;;) {
        const i = issued++
        if (i >= total) return
        let res
        if (i % 10 === 9) {
          const ops = [0, 1, 2].map((j) => ({ op: 'put', key: `b/${i}/${j}`, value: `batch-${i}` }))
          res = await pool.request({
            method: 'POST',
            path: '/v1/batch?ack=async',
            body: JSON.stringify({ ops }),
          })
        } else if (i % 10 === 5 && i > 20) {
          res = await pool.request({ method: 'DELETE', path: `/v1/kv/p/${i - 20}?ack=async` })
        } else {
          res = await pool.request({
            method: 'PUT',
            path: `/v1/kv/p/${i}?ack=async`,
            body: `value-${i}`,
          })
        }
        await res.body.text()
        expect([200, 404]).toContain(res.statusCode)
        lastLsn = Math.max(lastLsn, Number(res.headers['kv-lsn'] ?? 0))
      }
    }
    await Promise.all(Array.from({ length: 64 }, worker))
    await pool.close()
    expect(lastLsn).toBeGreaterThan(90_000)
    await cluster.waitForApplied(lastLsn)
    const digests = await Promise.all(cluster.members.map((m) => cluster.digest(m.id)))
    expect(new Set(digests.map((d) => d.digest)).size).toBe(1)
    expect(digests[0]?.appliedLsn).toBeGreaterThanOrEqual(lastLsn)
    expect(digests[0]?.keys).toBeGreaterThan(50_000)
  }, 240_000)

  it('refuses writes on a follower with the leader hint', async () => {
    const follower = cluster.followers[0]!
    const res = await fetch(`${follower.url}/v1/kv/x`, { method: 'PUT', body: 'v' })
    expect(res.status).toBe(421)
    expect(res.headers.get('kv-leader')).toBe(cluster.leader.url)
    const body = (await res.json()) as {
      error: { code: string; leaderId: string; leaderUrl: string }
    }
    expect(body.error).toMatchObject({
      code: 'KV_ERR_NOT_LEADER',
      leaderId: 'n1',
      leaderUrl: cluster.leader.url,
    })
    for (const [method, path] of [
      ['DELETE', '/v1/kv/x'],
      ['POST', '/v1/batch'],
    ]) {
      const other = await fetch(`${follower.url}${path}`, {
        method,
        body: method === 'POST' ? '{"ops":[{"op":"delete","key":"x"}]}' : undefined,
      })
      expect(other.status).toBe(421)
    }
  })

  it('ack=all fails while a follower is stopped; ack=quorum still succeeds', async () => {
    const stopped = cluster.followers[1]!
    cluster.pause(stopped.id)
    try {
      const quorum = await fetch(`${cluster.leader.url}/v1/kv/durable-q?ack=quorum`, {
        method: 'PUT',
        body: 'q',
      })
      expect(quorum.status).toBe(200)
      const all = await fetch(`${cluster.leader.url}/v1/kv/durable-a?ack=all`, {
        method: 'PUT',
        body: 'a',
      })
      expect(all.status).toBe(504)
      const body = (await all.json()) as { error: { code: string; lsn: number; session: string } }
      expect(body.error.code).toBe('KV_ERR_ACK_TIMEOUT')
      expect(body.error.lsn).toBeGreaterThan(0)
      // The write is durable on the leader, as the error says.
      const readBack = await fetch(`${cluster.leader.url}/v1/kv/durable-a`)
      expect(await readBack.text()).toBe('a')
    } finally {
      cluster.resume(stopped.id)
    }
    // Once the follower is back, ack=all works again.
    const all = await fetch(`${cluster.leader.url}/v1/kv/durable-b?ack=all`, {
      method: 'PUT',
      body: 'b',
    })
    expect(all.status).toBe(200)
  })

  it('a restarted follower catches up from its own LSN', async () => {
    const follower = cluster.followers[0]!
    expect(await cluster.stopMember(follower.id)).toBe(0)
    const client = new KvClient({ ...rootTls(), url: cluster.leader.url, ack: 'quorum' })
    for (let i = 0; i < 500; i++) await client.put(`restart/${i}`, `v${i}`)
    await client.close()
    await cluster.startMember(follower.id)
    const leaderLsn = await cluster.waitForApplied()
    const [leader, caughtUp] = await Promise.all([
      cluster.digest(cluster.leader.id),
      cluster.digest(follower.id),
    ])
    expect(caughtUp).toEqual(leader)
    expect(leaderLsn).toBeGreaterThan(0)
    // It resumed from its LSN: no snapshot was needed.
    const metrics = await (await fetch(`${follower.url}/metrics`)).text()
    expect(metrics).toMatch(/kv_replication_snapshots_installed_total 0/)
  })

  it('a write retried with the same request id is applied once', async () => {
    const send = () =>
      fetch(`${cluster.leader.url}/v1/kv/once`, {
        method: 'PUT',
        body: 'first',
        headers: { 'kv-request-id': 'req-once-1', 'if-none-match': '*' },
      })
    const first = await send()
    const retry = await send()
    expect(first.status).toBe(201)
    expect(retry.status).toBe(201)
    expect(retry.headers.get('kv-deduplicated')).toBe('true')
    expect(retry.headers.get('kv-lsn')).toBe(first.headers.get('kv-lsn'))
    // A new id is a new write: create-only now fails.
    const other = await fetch(`${cluster.leader.url}/v1/kv/once`, {
      method: 'PUT',
      body: 'second',
      headers: { 'kv-request-id': 'req-once-2', 'if-none-match': '*' },
    })
    expect(other.status).toBe(412)
    // A follower does not answer a retry from its copy of the ids: writes, retried or not,
    // go to the leader.
    await cluster.waitForApplied()
    const followerRetry = await fetch(`${cluster.followers[0]!.url}/v1/kv/once`, {
      method: 'PUT',
      body: 'first',
      headers: { 'kv-request-id': 'req-once-1' },
    })
    expect(followerRetry.status).toBe(421)
  })

  it('GET /v1/cluster shows every member, its role, LSNs and lag', async () => {
    await cluster.waitForApplied()
    for (const m of cluster.members) {
      const view = (await (await fetch(`${m.url}/v1/cluster`)).json()) as {
        leaderId: string
        members: {
          id: string
          role: string
          ackedLsn: number
          lagEntries: number
          connected: boolean
        }[]
      }
      expect(view.leaderId).toBe('n1')
      expect(view.members.map((x) => [x.id, x.role])).toEqual([
        ['n1', 'leader'],
        ['n2', 'follower'],
        ['n3', 'follower'],
      ])
    }
    const fromLeader = (await (await fetch(`${cluster.leader.url}/v1/cluster`)).json()) as {
      commitLsn: number
      members: { id: string; ackedLsn: number; connected: boolean; lastContactMs: number }[]
    }
    for (const m of fromLeader.members) {
      expect(m.connected).toBe(true)
      expect(m.ackedLsn).toBeGreaterThanOrEqual(fromLeader.commitLsn)
    }
    // Every view gives each member's epoch and applied LSN; followers learn the others' from
    // the leader's heartbeats, so allow a few of them.
    const written = (await (await fetch(`${cluster.leader.url}/v1/status`)).json()) as {
      appliedLsn: number
    }
    for (const m of cluster.members) {
      let members: { id: string; epoch: number | null; appliedLsn: number | null }[] = []
      for (let i = 0; i < 50; i++) {
        const view = (await (await fetch(`${m.url}/v1/cluster`)).json()) as {
          epoch: number
          members: typeof members
        }
        members = view.members
        expect(view.epoch).toBe(1)
        if (members.every((x) => x.epoch === 1 && (x.appliedLsn ?? 0) >= written.appliedLsn)) break
        await new Promise((resolve) => setTimeout(resolve, 100))
      }
      expect(members.map((x) => [x.id, x.epoch])).toEqual([
        ['n1', 1],
        ['n2', 1],
        ['n3', 1],
      ])
      for (const x of members) expect(x.appliedLsn).toBeGreaterThanOrEqual(written.appliedLsn)
    }
  })
})

describe('the SDK against a 3-node cluster', () => {
  let cluster: TestCluster
  beforeAll(async () => {
    cluster = await TestCluster.start(3, ['--read-wait-ms', '2000'])
  })
  afterAll(async () => {
    await cluster.stop()
  })

  it('finds the leader from any member and spreads reads over the followers', async () => {
    const client = new KvClient({ ...rootTls(), url: cluster.followers[1]!.url })
    const put = await client.put('sdk/a', 'one')
    expect(put.version).toBeGreaterThan(0)
    // Followers whose streams are not up yet are left out of reads; wait for the cluster to
    // settle, then let the client see it.
    await cluster.waitForApplied()
    for (let i = 0; i < 50; i++) {
      const view = await client.cluster()
      if (view.members.every((m) => m.connected && m.lagMs === 0)) break
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
    const servedBy = new Set<string>()
    for (let i = 0; i < 6; i++) {
      const got = await client.get('sdk/a')
      expect(got?.value.toString()).toBe('one')
      servedBy.add(got?.servedBy ?? '')
    }
    expect([...servedBy].sort()).toEqual(cluster.followers.map((f) => f.url).sort())
    await client.close()
  })

  it('read-your-writes holds on a follower that has not yet received the write', async () => {
    // A client whose view of the cluster stays as it is now: both followers in step.
    const client = new KvClient({
      ...rootTls(),
      url: cluster.leader.url,
      maxLagMs: 1500,
      followerReadTimeoutMs: 3000,
      refreshIntervalMs: 600_000,
    })
    await client.put('ryw/k', 'old', { ack: 'all' })
    await client.cluster()
    for (const f of cluster.followers) cluster.pause(f.id)
    let reads: Promise<Awaited<ReturnType<KvClient['get']>>>[] = []
    try {
      // Only the leader has the new value: neither follower can have it while stopped.
      await client.put('ryw/k', 'new', { ack: 'async' })
      // One read to each follower (round-robin); each waits there for the session's LSN.
      reads = [client.get('ryw/k'), client.get('ryw/k')]
      await new Promise((resolve) => setTimeout(resolve, 300))
    } finally {
      for (const f of cluster.followers) cluster.resume(f.id)
    }
    const got = await Promise.all(reads)
    expect(got.map((g) => g?.servedBy).sort()).toEqual(cluster.followers.map((f) => f.url).sort())
    for (const g of got) expect(g?.value.toString()).toBe('new')
    await client.close()
  })

  it('stops reading from a lagging follower and returns to it once caught up', async () => {
    const lagging = cluster.followers[0]!
    const client = new KvClient({
      ...rootTls(),
      url: cluster.leader.url,
      ack: 'quorum',
      maxLagMs: 300,
      refreshIntervalMs: 100,
    })
    await client.put('lag/warm', 'x')
    cluster.pause(lagging.id)
    try {
      for (let i = 0; i < 30; i++) await client.put(`lag/${i}`, 'v')
      await new Promise((resolve) => setTimeout(resolve, 800))
      await client.cluster()
      const served = new Set<string>()
      for (let i = 0; i < 10; i++) served.add((await client.get('lag/warm'))?.servedBy ?? '')
      expect(served.has(lagging.url)).toBe(false)
    } finally {
      cluster.resume(lagging.id)
    }
    await cluster.waitForApplied()
    await new Promise((resolve) => setTimeout(resolve, 400))
    await client.cluster()
    const served = new Set<string>()
    for (let i = 0; i < 10; i++) served.add((await client.get('lag/warm'))?.servedBy ?? '')
    expect(served.has(lagging.url)).toBe(true)
    await client.close()
  })

  it('retries a write after the leader was unreachable, applying it once', async () => {
    const client = new KvClient({
      ...rootTls(),
      url: cluster.members.map((m) => m.url),
      timeoutMs: 400,
      attempts: 20,
    })
    await client.put('retry/warm', 'x', { ack: 'all' })
    const before = (await cluster.status(cluster.leader.id)).appliedLsn
    cluster.pause(cluster.leader.id)
    let put: ReturnType<KvClient['put']>
    try {
      // Every attempt times out while the leader is stopped; the ones it has received are
      // served once it runs again, and all carry the same request id. The pause stays below
      // the election timeout (1 s), so the leader keeps leading.
      put = client.put('retry/k', 'v1', { requestId: 'sdk-retry-1', ack: 'all', ifAbsent: true })
      await new Promise((resolve) => setTimeout(resolve, 800))
    } finally {
      cluster.resume(cluster.leader.id)
    }
    const result = await put
    expect(result.lsn).toBe(before + 1)
    await cluster.waitForApplied()
    // Applied once: the log grew by exactly one entry, on every member.
    for (const m of cluster.members)
      expect((await cluster.status(m.id)).appliedLsn).toBe(before + 1)
    expect((await client.get('retry/k', { fromLeader: true }))?.version).toBe(before + 1)
    // The same id again answers like the first; a new id is a new (create-only) write.
    const again = await client.put('retry/k', 'v1', { requestId: 'sdk-retry-1', ifAbsent: true })
    expect(again.lsn).toBe(result.lsn)
    expect((await failure(client.put('retry/k', 'v2', { ifAbsent: true }))).code).toBe(
      'KV_ERR_PRECONDITION_FAILED',
    )
    expect((await cluster.status(cluster.leader.id)).appliedLsn).toBe(before + 1)
    await client.close()
  })
})

describe('a follower behind the compacted log', () => {
  let cluster: TestCluster
  beforeAll(async () => {
    cluster = await TestCluster.start(3, [
      '--log-retention-entries',
      '100',
      '--log-retention-entries-max',
      '200',
    ])
  })
  afterAll(async () => {
    await cluster.stop()
  })

  it('catches up through a snapshot, then from the log', async () => {
    const follower = cluster.followers[1]!
    const client = new KvClient({ ...rootTls(), url: cluster.leader.url, ack: 'quorum' })
    for (let i = 0; i < 50; i++) await client.put(`snap/${i}`, `before-${i}`)
    expect(await cluster.stopMember(follower.id)).toBe(0)
    // 300 log entries (each batch is one), far past the 40 the leader may keep for n3.
    for (let start = 0; start < 3000; start += 10) {
      await client.batch(
        Array.from({ length: 10 }, (_, j) => ({
          op: 'put' as const,
          key: `snap/${(start + j) % 700}`,
          value: `after-${start + j}`,
        })),
      )
    }
    await client.delete('snap/3')
    const compacted = (await (
      await fetch(`${cluster.leader.url}/admin/v1/compact`, { method: 'POST' })
    ).json()) as {
      logStartLsn: number
    }
    expect(compacted.logStartLsn).toBeGreaterThan(250)
    await cluster.startMember(follower.id)
    await cluster.waitForApplied()
    const [leader, restored] = await Promise.all([
      cluster.digest(cluster.leader.id),
      cluster.digest(follower.id),
    ])
    expect(restored).toEqual(leader)
    const metrics = await (await fetch(`${follower.url}/metrics`)).text()
    expect(metrics).toMatch(/kv_replication_snapshots_installed_total 1/)
    // After the snapshot it follows the log again.
    await client.put('snap/after', 'tail')
    await cluster.waitForApplied()
    expect(await (await fetch(`${follower.url}/v1/kv/snap/after`)).text()).toBe('tail')
    await client.close()
  })
})
