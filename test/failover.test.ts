/**
 * Failover on real 3-node process clusters: the leader killed with -9 under quorum load,
 * paused past the election timeout and resumed, and a node that lost its disk rejoining.
 */
import { execFile } from 'node:child_process'
import { rm } from 'node:fs/promises'
import { promisify } from 'node:util'
import { Pool } from 'undici'
import { KvClient } from '@kvstore/client'
import { kvBin, type ClusterMember, TestCluster, until } from '@kvstore/testkit'
import { rootConnect, rootEnv, rootTls } from './support/certs.js'

/** Runs the kv CLI (the built one, as a user would) and returns its standard output. */
async function kv(...args: string[]): Promise<string> {
  const { stdout } = await promisify(execFile)(process.execPath, [kvBin, ...args], {
    env: { ...process.env, ...rootEnv() },
  })
  return stdout
}

async function digests(cluster: TestCluster): Promise<string[]> {
  const running = cluster.members.filter((m) => m.process !== null)
  const all = await Promise.all(running.map((m) => cluster.digest(m.id)))
  return all.map((d) => `${d.appliedLsn}:${d.digest}`)
}

interface Accepted {
  node: string
  epoch: number
  lsn: number
}

/** The epoch and LSN in a session token (s1.<epoch base 36>.<lsn base 36>). */
function positionOf(session: string): { epoch: number; lsn: number } {
  const [, epoch, lsn] = session.split('.')
  return { epoch: parseInt(epoch ?? '', 36), lsn: parseInt(lsn ?? '', 36) }
}

/**
 * Writers that send to every member in turn (so a deposed leader is tried too) and record
 * which node accepted what, at which epoch. Failures are expected during a failover.
 */
function startWriters(cluster: TestCluster, count: number, prefix: string) {
  const acked = new Map<string, string>()
  const accepted: Accepted[] = []
  const pools = new Map(
    cluster.members.map((m) => [m.id, new Pool(m.url, { connections: 8, connect: rootConnect() })]),
  )
  let stop = false
  const writer = async (w: number) => {
    for (let i = 0; !stop; i++) {
      const member = cluster.members[i % cluster.members.length] as ClusterMember
      const key = `${prefix}/${w}/${i}`
      try {
        const res = await (pools.get(member.id) as Pool).request({
          method: 'PUT',
          path: `/v1/kv/${key}?ack=quorum`,
          body: `v-${w}-${i}`,
          headersTimeout: 4000,
          bodyTimeout: 4000,
        })
        await res.body.text()
        if (res.statusCode === 200) {
          acked.set(key, `v-${w}-${i}`)
          accepted.push({ node: member.id, ...positionOf(String(res.headers['kv-session'])) })
        }
      } catch {
        await new Promise((resolve) => setTimeout(resolve, 20))
      }
    }
  }
  const running = Array.from({ length: count }, (_, w) => writer(w))
  return {
    acked,
    accepted,
    async stop() {
      stop = true
      await Promise.all(running)
      await Promise.all([...pools.values()].map((p) => p.close()))
    },
  }
}

/** Reads every key back from `url`; returns the keys that are missing or different. */
async function missingOn(url: string, acked: Map<string, string>): Promise<string[]> {
  const pool = new Pool(url, { connections: 16, connect: rootConnect() })
  const missing: string[] = []
  const keys = [...acked.keys()]
  for (let i = 0; i < keys.length; i += 64) {
    await Promise.all(
      keys.slice(i, i + 64).map(async (key) => {
        const res = await pool.request({ method: 'GET', path: `/v1/kv/${key}` })
        const body = await res.body.text()
        if (res.statusCode !== 200 || body !== acked.get(key)) missing.push(key)
      }),
    )
  }
  await pool.close()
  return missing
}

/** One node accepted writes in each epoch. */
function oneLeaderPerEpoch(accepted: Accepted[]): Map<number, Set<string>> {
  const byEpoch = new Map<number, Set<string>>()
  for (const a of accepted) {
    const nodes = byEpoch.get(a.epoch) ?? new Set<string>()
    nodes.add(a.node)
    byEpoch.set(a.epoch, nodes)
  }
  return byEpoch
}

describe('the leader killed with -9 under quorum writes', () => {
  let cluster: TestCluster
  beforeAll(async () => {
    cluster = await TestCluster.start(3)
  })
  afterAll(async () => {
    await cluster.stop()
  })

  it('a survivor with the highest LSN takes over, and every acknowledged write is there', async () => {
    const old = cluster.leader
    const writers = startWriters(cluster, 16, 'kill')
    let survivorsAtKill: Record<string, number> = {}
    try {
      await until('writes to flow', () => writers.acked.size > 2000)
      await cluster.kill(old.id)
      const killedAt = Date.now()
      // Nobody leads for at least an election timeout: the survivors' logs stand still.
      survivorsAtKill = Object.fromEntries(
        await Promise.all(cluster.followers.map(async (m) => [m.id, await cluster.logEnd(m.id)])),
      ) as Record<string, number>
      const ackedAtKill = writers.acked.size
      const leader = await cluster.waitForLeader()
      expect(leader.id).not.toBe(old.id)
      // Within a few seconds (detection 1-2 s, then one election).
      expect(Date.now() - killedAt).toBeLessThan(10_000)
      await until('writes on the new leader', () => writers.acked.size > ackedAtKill + 500)
    } finally {
      await writers.stop()
    }
    const leader = cluster.leader
    const elected = (leader.process?.logs ?? []).find((l) => l.msg === 'elected leader')
    expect(elected).toBeDefined()
    // The winner held the most up-to-date log of the survivors.
    const highest = Math.max(...Object.values(survivorsAtKill))
    expect(elected?.lastLsn).toBe(highest)
    // Every write acknowledged (before and after the kill) is on the new leader.
    expect(await missingOn(leader.url, writers.acked)).toEqual([])
    for (const [epoch, nodes] of oneLeaderPerEpoch(writers.accepted))
      expect([epoch, [...nodes]]).toEqual([epoch, [expect.any(String)]])
    // The old leader comes back as a follower and converges.
    await cluster.startMember(old.id)
    expect((await cluster.waitForLeader()).id).toBe(leader.id)
    await cluster.waitForApplied()
    expect(new Set(await digests(cluster)).size).toBe(1)
  }, 120_000)
})

describe('the leader paused past the election timeout', () => {
  let cluster: TestCluster
  beforeAll(async () => {
    cluster = await TestCluster.start(3)
  })
  afterAll(async () => {
    await cluster.stop()
  })

  it('is replaced, refuses the writes it finds on waking, steps down, and one node writes per epoch', async () => {
    const old = cluster.leader
    const writers = startWriters(cluster, 8, 'pause')
    let late: Promise<number> = Promise.resolve(0)
    try {
      await until('writes to flow', () => writers.acked.size > 500)
      cluster.pause(old.id)
      // The others elect a new leader; waitForLeader skips the paused node's silence.
      await until('a new leader', async () => {
        const views = await Promise.all(
          cluster.followers.map((m) =>
            fetch(`${m.url}/v1/cluster`, { signal: AbortSignal.timeout(500) })
              .then((r) => r.json() as Promise<{ writable: boolean }>)
              .catch(() => null),
          ),
        )
        return views.some((v) => v?.writable === true)
      })
      // A write that reaches the old leader while it sleeps is read when it wakes.
      late = fetch(`${old.url}/v1/kv/late?ack=async`, { method: 'PUT', body: 'late' }).then(
        (r) => r.status,
      )
      await new Promise((resolve) => setTimeout(resolve, 200))
    } finally {
      cluster.resume(old.id)
    }
    const lateStatus = await late
    await until('writes to continue', async () => writers.acked.size > 1000)
    await writers.stop()
    // Even an async write is refused: the old leader had not heard from a majority for longer
    // than an election timeout when it woke, so it no longer counts itself leader.
    expect(lateStatus).toBe(421)
    const leader = await cluster.waitForLeader()
    expect(leader.id).not.toBe(old.id)
    expect((await cluster.status(old.id)).role).toBe('follower')
    expect(
      (old.process?.logs ?? []).some((l) => l.msg === 'elected leader' && (l.epoch as number) > 1),
    ).toBe(false)
    // One node accepted writes per epoch, and the epochs of accepted writes only went up in
    // LSN order.
    const byEpoch = oneLeaderPerEpoch(writers.accepted)
    expect(byEpoch.size).toBeGreaterThanOrEqual(2)
    for (const [epoch, nodes] of byEpoch) expect([epoch, nodes.size]).toEqual([epoch, 1])
    const sorted = [...writers.accepted].sort((a, b) => a.lsn - b.lsn)
    const regressions = sorted.filter((a, i) => i > 0 && a.epoch < sorted[i - 1]!.epoch)
    expect(regressions.map((a) => [a, sorted[sorted.indexOf(a) - 1]])).toEqual([])
    // And no LSN was acknowledged twice (an old leader confirming its own replaced entry).
    const twice = sorted.filter((a, i) => i > 0 && a.lsn === sorted[i - 1]!.lsn)
    expect(twice).toEqual([])
    expect(await missingOn(leader.url, writers.acked)).toEqual([])
    expect((await fetch(`${leader.url}/v1/kv/late`)).status).toBe(404)
    await cluster.waitForApplied()
    expect(new Set(await digests(cluster)).size).toBe(1)
  }, 120_000)
})

describe('a node that lost its disk', () => {
  let cluster: TestCluster
  beforeAll(async () => {
    cluster = await TestCluster.start(3)
  })
  afterAll(async () => {
    await cluster.stop()
  })

  it('rejoins as a follower and catches up, even when it was the leader', async () => {
    for (let i = 0; i < 200; i++) {
      const res = await fetch(`${cluster.leader.url}/v1/kv/wipe/${i}`, {
        method: 'PUT',
        body: `v${i}`,
      })
      expect(res.status).toBe(200)
    }
    const old = cluster.leader
    await cluster.kill(old.id)
    await rm(old.dataDir, { recursive: true, force: true })
    await cluster.startMember(old.id)
    const leader = await cluster.waitForLeader()
    expect(leader.id).not.toBe(old.id)
    await cluster.waitForApplied()
    expect(new Set(await digests(cluster)).size).toBe(1)
    expect(await (await fetch(`${old.url}/v1/kv/wipe/199`)).text()).toBe('v199')
    const logs = old.process?.logs ?? []
    expect(logs.some((l) => l.msg === 'elected leader')).toBe(false)
    // It stays a follower through more writes.
    const res = await fetch(`${leader.url}/v1/kv/wipe/after`, { method: 'PUT', body: 'x' })
    expect(res.status).toBe(200)
    expect((await cluster.status(old.id)).role).toBe('follower')
  }, 120_000)
})

describe('an old leader that held unreplicated async writes', () => {
  let cluster: TestCluster
  beforeAll(async () => {
    cluster = await TestCluster.start(3)
  })
  afterAll(async () => {
    await cluster.stop()
  })

  it('truncates them on its return, keeps them in the rollback record, and converges', async () => {
    const old = cluster.leader
    for (let i = 0; i < 20; i++) {
      const res = await fetch(`${old.url}/v1/kv/base/${i}?ack=quorum`, { method: 'PUT', body: 'b' })
      expect(res.status).toBe(200)
    }
    await cluster.waitForApplied()
    // The followers die: the leader's async writes are durable on it alone. (A pause would
    // not do: the frames would wait in the paused followers' socket buffers and arrive.)
    const followers = cluster.followers
    for (const f of followers) await cluster.kill(f.id)
    const unconfirmed: string[] = []
    for (let i = 0; i < 10; i++) {
      const res = await fetch(`${old.url}/v1/kv/lost/${i}?ack=async`, {
        method: 'PUT',
        body: `lost-${i}`,
        headers: { 'kv-request-id': `lost-${i}` },
      })
      if (res.status === 200) unconfirmed.push(`lost/${i}`)
    }
    expect(unconfirmed.length).toBeGreaterThan(0)
    await cluster.kill(old.id)
    for (const f of followers) await cluster.startMember(f.id)
    const leader = await cluster.waitForLeader()
    expect(leader.id).not.toBe(old.id)
    const after = await fetch(`${leader.url}/v1/kv/newer?ack=quorum`, { method: 'PUT', body: 'n' })
    expect(after.status).toBe(200)
    // The old leader returns: its tail conflicts with the new leader's log and is removed.
    await cluster.startMember(old.id)
    // Its log is longer than the new leader's, so an applied LSN says nothing: compare digests.
    await until('the digests to converge', async () => new Set(await digests(cluster)).size === 1)
    for (const key of unconfirmed) expect((await fetch(`${old.url}/v1/kv/${key}`)).status).toBe(404)
    const record = (await (await fetch(`${old.url}/admin/v1/rollbacks`)).json()) as {
      count: number
      rollbacks: {
        seq: number
        requestId: string
        ops: { op: string; key: string; valueBase64: string }[]
      }[]
    }
    expect(record.count).toBe(unconfirmed.length)
    expect(record.rollbacks.map((r) => r.ops[0]?.key)).toEqual(unconfirmed)
    expect(record.rollbacks.map((r) => r.requestId)).toEqual(
      unconfirmed.map((k) => k.replace('/', '-')),
    )
    expect(Buffer.from(record.rollbacks[0]!.ops[0]!.valueBase64, 'base64').toString()).toBe(
      'lost-0',
    )
    const viaCli = JSON.parse(await kv('--url', old.url, 'rollbacks')) as { count: number }
    expect(viaCli.count).toBe(unconfirmed.length)
    const metrics = await (await fetch(`${old.url}/metrics`)).text()
    expect(metrics).toContain(`kv_rollback_entries_total ${unconfirmed.length}`)
    expect(old.process?.logs.some((l) => String(l.msg).startsWith('removed log entries'))).toBe(
      true,
    )
    // An operator reconciles them, then clears the record.
    const cleared = (await (
      await fetch(`${old.url}/admin/v1/rollbacks?through=${record.rollbacks.at(-1)!.seq}`, {
        method: 'DELETE',
      })
    ).json()) as { deleted: number; count: number }
    expect(cleared).toEqual({ deleted: unconfirmed.length, count: 0 })
  }, 120_000)
})

describe('a leadership transfer', () => {
  let cluster: TestCluster
  beforeAll(async () => {
    cluster = await TestCluster.start(3)
  })
  afterAll(async () => {
    await cluster.stop()
  })

  it('hands over to a named member and to the best one under quorum writes, losing nothing', async () => {
    const writers = startWriters(cluster, 8, 'transfer')
    const epochOf = async (id: string) =>
      ((await (await fetch(`${cluster.member(id).url}/v1/status`)).json()) as { epoch: number })
        .epoch
    const startEpoch = await epochOf(cluster.leader.id)
    try {
      await until('writes to flow', () => writers.acked.size > 300)
      const first = cluster.leader
      const target = cluster.followers[1]!
      const res = await fetch(`${first.url}/admin/v1/transfer-leadership`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ to: target.id }),
      })
      expect(res.status).toBe(200)
      expect(((await res.json()) as { leaderId: string }).leaderId).toBe(target.id)
      // The answer waits until the new leader takes writes: one sent there at once is taken,
      // not refused with KV_ERR_NOT_READY while its first entry commits.
      const firstWrite = await fetch(`${target.url}/v1/kv/transfer-first`, {
        method: 'PUT',
        body: 'x',
      })
      expect(firstWrite.status, await firstWrite.clone().text()).toBe(200)
      expect((await cluster.waitForLeader()).id).toBe(target.id)
      const mark = writers.acked.size
      await until('writes on the new leader', () => writers.acked.size > mark + 300)
      // To the best follower, with the CLI (which finds the leader from any member).
      const second = JSON.parse(await kv('--url', first.url, '--json', 'transfer')) as {
        from: string
        leaderId: string
      }
      expect(second.from).toBe(target.id)
      const next = second.leaderId
      expect(next).not.toBe(target.id)
      expect((await cluster.waitForLeader()).id).toBe(next)
      const mark2 = writers.acked.size
      await until('writes after the second handover', () => writers.acked.size > mark2 + 300)
    } finally {
      await writers.stop()
    }
    const leader = cluster.leader
    expect(await missingOn(leader.url, writers.acked)).toEqual([])
    for (const [epoch, nodes] of oneLeaderPerEpoch(writers.accepted))
      expect([epoch, nodes.size]).toEqual([epoch, 1])
    // Two handovers, two elections: nothing timed out on the way.
    for (const m of cluster.members) expect(await epochOf(m.id)).toBe(startEpoch + 2)
    await cluster.waitForApplied()
    expect(new Set(await digests(cluster)).size).toBe(1)
    // Bad requests get stable codes.
    const follower = cluster.followers[0]!
    expect(
      (await fetch(`${follower.url}/admin/v1/transfer-leadership`, { method: 'POST' })).status,
    ).toBe(421)
    const unknown = await fetch(`${leader.url}/admin/v1/transfer-leadership`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{"to":"nope"}',
    })
    expect(((await unknown.json()) as { error: { code: string } }).error.code).toBe(
      'KV_ERR_INVALID_ARGUMENT',
    )
    const malformed = await fetch(`${leader.url}/admin/v1/transfer-leadership`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{"to":1}',
    })
    expect(((await malformed.json()) as { error: { code: string } }).error.code).toBe(
      'KV_ERR_MALFORMED_BODY',
    )
  }, 120_000)
})

describe('the SDK through a failover', () => {
  let cluster: TestCluster
  beforeAll(async () => {
    cluster = await TestCluster.start(3)
  })
  afterAll(async () => {
    await cluster.stop()
  })

  it('finds the new leader and every write succeeds once; linearizable reads see them', async () => {
    const client = new KvClient({
      ...rootTls(),
      url: cluster.members.map((m) => m.url),
      ack: 'quorum',
    })
    const old = cluster.leader
    const written: string[] = []
    let stop = false
    const errors: string[] = []
    const loops = Array.from({ length: 4 }, async (_, w) => {
      for (let i = 0; !stop; i++) {
        try {
          await client.put(`sdk/${w}/${i}`, `v${i}`, { requestId: `sdk-${w}-${i}` })
          written.push(`sdk/${w}/${i}`)
        } catch (err) {
          errors.push(String(err))
        }
      }
    })
    try {
      await until('writes to flow', () => written.length > 200)
      await cluster.kill(old.id)
      const mark = written.length
      await until('writes through the new leader', () => written.length > mark + 200, 30_000)
    } finally {
      stop = true
      await Promise.all(loops)
    }
    expect(errors).toEqual([])
    const leader = await cluster.waitForLeader()
    expect(leader.id).not.toBe(old.id)
    // Every write is there, and linearizable reads on the new leader see them.
    for (const key of written.slice(-50)) {
      const res = await fetch(`${leader.url}/v1/kv/${key}?consistency=linearizable`)
      expect(res.status).toBe(200)
      expect((await client.get(key, { consistency: 'linearizable' }))?.servedBy).toBe(leader.url)
    }
    const last = written[written.length - 1]!
    const alive = cluster.followers.find((m) => m.process !== null)!
    expect(await kv('--url', alive.url, 'get', '--linearizable', last)).toBe(
      `v${last.split('/')[2]}`,
    )
    expect(
      await missingOn(leader.url, new Map(written.map((k) => [k, `v${k.split('/')[2]}`]))),
    ).toEqual([])
    // A linearizable read is refused by a follower, with the leader named.
    const follower = cluster.followers.find((m) => m.process !== null)!
    const refused = await fetch(`${follower.url}/v1/kv/sdk/0/0?consistency=linearizable`)
    expect(refused.status).toBe(421)
    await client.close()
  }, 120_000)
})
