/**
 * Single-leader replication under faults, on real 3-node process clusters: the leader killed
 * with -9 under load and mid-snapshot, and a member started with the wrong leader.
 */
import { Pool } from 'undici'
import { TestCluster } from './support/cluster.js'

const until = async (what: string, check: () => Promise<boolean> | boolean, timeoutMs = 20_000) => {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

async function digests(cluster: TestCluster): Promise<string[]> {
  const all = await Promise.all(cluster.members.map((m) => cluster.digest(m.id)))
  return all.map((d) => `${d.appliedLsn}:${d.digest}`)
}

async function epochOf(url: string): Promise<number> {
  return ((await (await fetch(`${url}/v1/cluster`)).json()) as { epoch: number }).epoch
}

describe('the leader killed with -9 under write load', () => {
  let cluster: TestCluster
  beforeAll(async () => {
    cluster = await TestCluster.start(3)
  })
  afterAll(async () => {
    await cluster.stop()
  })

  it('keeps every acknowledged write on every member, and the members converge', async () => {
    const leader = cluster.leader
    const acked = new Map<string, string>()
    let stop = false
    const pool = new Pool(leader.url, { connections: 16 })
    // Writers keep going through the kill: their failures are expected, their successes are
    // promises that must hold.
    const writer = async (w: number) => {
      const ack = w % 2 === 0 ? 'quorum' : 'async'
      for (let i = 0; !stop; i++) {
        const key = `kill/${w}/${i}`
        try {
          const res = await pool.request({
            method: 'PUT',
            path: `/v1/kv/${key}?ack=${ack}`,
            body: `v-${w}-${i}`,
            headersTimeout: 3000,
            bodyTimeout: 3000,
          })
          await res.body.text()
          if (res.statusCode === 200) acked.set(key, `v-${w}-${i}`)
        } catch {
          if (stop) return
          await new Promise((resolve) => setTimeout(resolve, 20))
        }
      }
    }
    const writers = Array.from({ length: 16 }, (_, w) => writer(w))
    try {
      await until('writes to flow', () => acked.size > 2000)
      await cluster.kill(leader.id)
      const ackedAtKill = acked.size
      await cluster.startMember(leader.id)
      await until('writes after the restart', () => acked.size > ackedAtKill + 500)
    } finally {
      stop = true
      await Promise.all(writers)
      await pool.close()
    }
    // A new epoch began with the restart.
    expect(await epochOf(leader.url)).toBe(2)
    await cluster.waitForApplied()
    const all = await digests(cluster)
    expect(new Set(all).size).toBe(1)
    // Every acknowledged write is there, on the leader (and so, by the digests, everywhere).
    const check = new Pool(leader.url, { connections: 16 })
    const missing: string[] = []
    const keys = [...acked.keys()]
    for (let i = 0; i < keys.length; i += 64) {
      await Promise.all(
        keys.slice(i, i + 64).map(async (key) => {
          const res = await check.request({ method: 'GET', path: `/v1/kv/${key}` })
          const body = await res.body.text()
          if (res.statusCode !== 200 || body !== acked.get(key)) missing.push(key)
        }),
      )
    }
    await check.close()
    expect(missing).toEqual([])
  }, 90_000)
})

describe('a snapshot cut off by the leader dying', () => {
  let cluster: TestCluster
  beforeAll(async () => {
    cluster = await TestCluster.start(3, [
      '--log-retention-entries',
      '50',
      '--log-retention-entries-max',
      '100',
      '--replication-append-bytes-max',
      '64KiB',
    ])
  })
  afterAll(async () => {
    await cluster.stop()
  })

  it('is asked for again and installed once the leader is back', async () => {
    const leader = cluster.leader
    const follower = cluster.followers[1]!
    expect(await cluster.stopMember(follower.id)).toBe(0)
    // 20 MB of state in 200 log entries: a snapshot of several hundred chunks.
    const value = 'x'.repeat(1000)
    for (let b = 0; b < 200; b++) {
      const ops = Array.from({ length: 100 }, (_, i) => ({
        op: 'put',
        key: `big/${b}/${i}`,
        value,
      }))
      const res = await fetch(`${leader.url}/v1/batch`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ ops }),
      })
      expect(res.status).toBe(200)
    }
    await fetch(`${leader.url}/admin/v1/compact`, { method: 'POST' })
    await cluster.startMember(follower.id)
    const logs = () => cluster.member(follower.id).process?.logs ?? []
    await until('the snapshot to begin', () =>
      logs().some((l) => l.msg === 'installing a snapshot'),
    )
    await cluster.kill(leader.id)
    await until('the follower to give the install up', () =>
      logs().some((l) => l.msg === 'abandoning a snapshot install'),
    )
    expect(logs().some((l) => l.msg === 'snapshot installed')).toBe(false)
    await cluster.startMember(leader.id)
    await until(
      'the snapshot to be installed',
      () => logs().some((l) => l.msg === 'snapshot installed'),
      60_000,
    )
    await cluster.waitForApplied()
    expect(new Set(await digests(cluster)).size).toBe(1)
    const got = await fetch(`${follower.url}/v1/kv/big/199/99`)
    expect(await got.text()).toBe(value)
  }, 120_000)
})

describe('a member started with the wrong leader', () => {
  let cluster: TestCluster
  beforeAll(async () => {
    cluster = await TestCluster.start(3, ['--ack-timeout-ms', '1000'])
  })
  afterAll(async () => {
    await cluster.stop()
  })

  it('is refused by the others, and what it wrote alone is dropped once it is fixed', async () => {
    const [n1, n2, n3] = cluster.members as [
      (typeof cluster.members)[0],
      (typeof cluster.members)[0],
      (typeof cluster.members)[0],
    ]
    const put = (url: string, key: string, ack: string) =>
      fetch(`${url}/v1/kv/${key}?ack=${ack}`, { method: 'PUT', body: key })
    expect((await put(n1.url, 'before', 'all')).status).toBe(200)
    expect(await cluster.stopMember(n3.id)).toBe(0)
    await cluster.startMember(n3.id, ['--leader', n3.id])
    // n3 now believes it leads; n1 and n2 refuse to talk to it.
    await until('the streams to be refused', () =>
      (cluster.member(n3.id).process?.logs ?? []).some(
        (l) => l.msg === 'refusing a peer stream' && l.code === 'KV_ERR_CLUSTER_MISMATCH',
      ),
    )
    // It cannot confirm anything; what it takes alone is on its own disk only.
    expect((await put(n3.url, 'rogue', 'quorum')).status).toBe(504)
    // The real leader carries on with n2.
    expect((await put(n1.url, 'during', 'quorum')).status).toBe(200)
    expect(await epochOf(n3.url)).toBe(2)

    // Fixed: n3 follows n1 again. Its epoch (2) is above n1's (1): n1 moves past it and leads on.
    expect(await cluster.stopMember(n3.id)).toBe(0)
    await cluster.startMember(n3.id)
    await until('n1 to lead at a new epoch', async () => (await epochOf(n1.url)) === 3)
    expect((await put(n1.url, 'after', 'all')).status).toBe(200)
    await cluster.waitForApplied()
    expect(new Set(await digests(cluster)).size).toBe(1)
    expect((await fetch(`${n3.url}/v1/kv/rogue`)).status).toBe(404)
    for (const key of ['before', 'during', 'after']) {
      expect(await (await fetch(`${n3.url}/v1/kv/${key}`)).text()).toBe(key)
    }
    expect((await cluster.status(n1.id)).role).toBe('leader')
    expect((await cluster.status(n2.id)).role).toBe('follower')
  }, 60_000)
})
