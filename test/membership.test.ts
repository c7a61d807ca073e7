/**
 * Online membership changes on a real single-leader cluster (kv-node processes, LevelDB, TLS),
 * under `ack=quorum` load from the SDK the whole time: grow 3 → 5, shrink 5 → 3 (the leader
 * among the removed), a removed member restarted with its old data, a killed member replaced,
 * a learner promoted too early, and a second change while one is in flight. At the end every
 * acknowledged write is read back, linearizably, and the remaining members' digests agree.
 */
import { KvClient, KvError } from '@kvstore/client'
import type { Membership, MembershipChangeResponse } from '@kvstore/protocol'
import { TestCluster, metric, until } from '@kvstore/testkit'
import { rootTls } from './support/certs.js'

let cluster: TestCluster

beforeAll(async () => {
  cluster = await TestCluster.start(3, [
    '--learner-promote-lag-entries-max',
    '50',
    '--membership-catch-up-timeout-ms',
    '20000',
    // Compaction keeps 50 entries: a new member catches up by snapshot, then by log.
    '--log-retention-entries',
    '50',
  ])
})
afterAll(async () => {
  await cluster.stop()
})

interface Answer<T> {
  status: number
  body: T & { error?: { code: string; leaderUrl?: string | null } & Record<string, unknown> }
}

/** An admin call to the leader, following KV_ERR_NOT_LEADER hints (a leader removing itself). */
async function admin<T = MembershipChangeResponse>(
  method: string,
  path: string,
  body?: unknown,
): Promise<Answer<T>> {
  let url = (await cluster.waitForLeader()).url
  for (let hop = 0; ; hop++) {
    const res = await fetch(`${url}${path}`, {
      method,
      ...(body !== undefined
        ? { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } }
        : {}),
    })
    const answer = { status: res.status, body: (await res.json()) as Answer<T>['body'] }
    const hint = answer.body.error?.leaderUrl
    if (answer.body.error?.code !== 'KV_ERR_NOT_LEADER' || typeof hint !== 'string' || hop > 3)
      return answer
    url = hint
  }
}

const spec = (id: string) => ({
  id,
  clientUrl: cluster.member(id).url,
  peerUrl: cluster.member(id).peerUrl,
})

async function members(): Promise<Membership> {
  const answer = await admin<Membership>('GET', '/admin/v1/members')
  expect(answer.status).toBe(200)
  return answer.body
}

/** Voters and learners, sorted, as the leader sees them. */
async function roles(): Promise<{ voters: string[]; learners: string[] }> {
  const view = await members()
  return {
    voters: view.members
      .filter((m) => m.role === 'voter')
      .map((m) => m.id)
      .sort(),
    learners: view.members
      .filter((m) => m.role === 'learner')
      .map((m) => m.id)
      .sort(),
  }
}

/** Promotes `id` once it has caught up (KV_ERR_LEARNER_BEHIND until then). */
async function promoteWhenCaughtUp(id: string): Promise<void> {
  await until(
    `${id} to be promoted`,
    async () => {
      const answer = await admin('POST', `/admin/v1/members/${id}/promote`)
      if (answer.status === 200) return true
      expect(answer.body.error?.code).toBe('KV_ERR_LEARNER_BEHIND')
      return false
    },
    30_000,
    200,
  )
}

/** Writers through the SDK (which finds the leader), recording every acknowledged write. */
function startLoad(prefix: string, writers = 4) {
  const client = new KvClient({
    ...rootTls(),
    url: cluster.members.map((m) => m.url),
    timeoutMs: 5000,
  })
  const acked = new Map<string, string>()
  const failures = new Map<string, number>()
  let stopped = false
  const loop = async (w: number) => {
    for (let i = 0; !stopped; i++) {
      const key = `${prefix}/${w}/${i}`
      const value = `v${w}.${i}`
      try {
        await client.put(key, value, { ack: 'quorum' })
        acked.set(key, value)
      } catch (err) {
        const code = err instanceof KvError ? err.code : 'other'
        failures.set(code, (failures.get(code) ?? 0) + 1)
        await new Promise((resolve) => setTimeout(resolve, 20))
      }
    }
  }
  const running = Array.from({ length: writers }, (_, w) => loop(w))
  return {
    acked,
    failures,
    async stop(): Promise<void> {
      stopped = true
      await Promise.all(running)
      await client.close()
    },
  }
}

/** Every acknowledged write, read back from the leader with a linearizable read. */
async function expectAllRead(acked: Map<string, string>): Promise<void> {
  const client = new KvClient({ ...rootTls(), url: (await cluster.waitForLeader()).url })
  try {
    const missing: string[] = []
    for (const [key, value] of acked) {
      const got = await client.get(key, { consistency: 'linearizable' })
      if (got?.value.toString() !== value) missing.push(key)
    }
    expect(missing).toEqual([])
  } finally {
    await client.close()
  }
}

async function expectDigestsAgree(): Promise<void> {
  const lsn = await cluster.waitForApplied()
  await until(
    'the members to agree',
    async () => {
      const all = await Promise.all(cluster.active().map((m) => cluster.digest(m.id)))
      return all.every((d) => d.appliedLsn === all[0]?.appliedLsn && d.digest === all[0]?.digest)
    },
    20_000,
    100,
  )
  expect(lsn).toBeGreaterThan(0)
}

it('grows 3 → 5 and shrinks 5 → 3, removing the leader too, with no acknowledged write lost', async () => {
  const load = startLoad('grow')
  try {
    await until('some writes', () => load.acked.size > 50, 20_000)
    // Two new nodes join; each is added as a learner, catches up (from a snapshot: the log
    // it would need is compacted), and is promoted.
    for (const id of ['n4', 'n5']) {
      const leaderUrl = (await cluster.waitForLeader()).url
      expect((await fetch(`${leaderUrl}/admin/v1/compact`, { method: 'POST' })).status).toBe(200)
      await cluster.startJoining(id)
      const added = await admin('POST', '/admin/v1/members', spec(id))
      expect(added.status).toBe(200)
      expect(added.body.membership.members.find((m) => m.id === id)?.role).toBe('learner')
      await promoteWhenCaughtUp(id)
      expect(
        await metric(cluster.member(id).url, 'kv_replication_snapshots_installed_total'),
      ).toBeGreaterThanOrEqual(1)
    }
    expect(await roles()).toEqual({ voters: ['n1', 'n2', 'n3', 'n4', 'n5'], learners: [] })
    // The new member sees itself a voter, at the configuration's LSN.
    const n5 = (await (await fetch(`${cluster.member('n5').url}/v1/cluster`)).json()) as {
      configLsn: number
      members: { id: string; voter?: boolean }[]
    }
    expect(n5.members.find((m) => m.id === 'n5')?.voter).toBe(true)
    expect(n5.configLsn).toBe((await members()).version)

    // A follower is stopped and removed while down (it will come back with its old data).
    const leader = (await cluster.waitForLeader()).id
    const down = cluster.followers.find((m) => ['n2', 'n3'].includes(m.id))!.id
    await cluster.stopMember(down)
    const removed = await admin('DELETE', `/admin/v1/members/${down}`)
    expect(removed.status).toBe(200)
    cluster.retired.add(down)
    // The leader removes itself: it hands leadership over first, then the new leader removes it.
    const gone = await admin('DELETE', `/admin/v1/members/${leader}`)
    expect(gone.status, JSON.stringify(gone.body)).toBe(200)
    expect(gone.body.membership.removed).toEqual(expect.arrayContaining([down, leader]))
    cluster.retired.add(leader)
    const next = await cluster.waitForLeader()
    expect(next.id).not.toBe(leader)
    expect((await roles()).voters).toHaveLength(3)
    await until('writes under the new leader', () => load.acked.size > 400, 20_000)
  } finally {
    await load.stop()
  }
  expect(load.acked.size).toBeGreaterThan(400)
  await expectAllRead(load.acked)
  await expectDigestsAgree()
}, 180_000)

it('a removed member restarted with its old data disrupts nothing and serves no data', async () => {
  const [removedStopped] = [...cluster.retired].filter((id) => cluster.member(id).process === null)
  expect(removedStopped).toBeDefined()
  const id = removedStopped as string
  const leader = await cluster.waitForLeader()
  const epochBefore = ((await cluster.status(leader.id)) as unknown as { epoch: number }).epoch
  const refusedBefore = await metric(leader.url, 'kv_peer_refused_total', 'reason="removed_member"')
  // Its log ends before its removal: it believes it is still a voter, and campaigns.
  await cluster.startMember(id)
  const load = startLoad('after-restart', 2)
  try {
    await new Promise((resolve) => setTimeout(resolve, 5000))
  } finally {
    await load.stop()
  }
  expect(load.acked.size).toBeGreaterThan(50)
  // No election: the leader and its epoch are the same.
  expect((await cluster.waitForLeader()).id).toBe(leader.id)
  const epochAfter = ((await cluster.status(leader.id)) as unknown as { epoch: number }).epoch
  expect(epochAfter).toBe(epochBefore)
  expect(
    await metric(leader.url, 'kv_peer_refused_total', 'reason="removed_member"'),
  ).toBeGreaterThan(refusedBefore)
  // It learned it was removed, and serves no data.
  await until('the removed member to refuse reads', async () => {
    const res = await fetch(`${cluster.member(id).url}/v1/kv/any`)
    const body = (await res.json()) as { error?: { code: string } }
    return body.error?.code === 'KV_ERR_NOT_A_MEMBER'
  })
  await expectAllRead(load.acked)
  await cluster.stopMember(id)
}, 60_000)

it('replaces a killed member with a new one, never below a live majority', async () => {
  const load = startLoad('replace', 2)
  try {
    const before = await roles()
    const leader = (await cluster.waitForLeader()).id
    const [dead, other] = before.voters.filter((v) => v !== leader) as [string, string]
    await cluster.kill(dead)
    // With one of three voters dead, removing a live one would leave no live majority.
    await until(
      'the leader to see the member dead',
      async () => {
        const answer = await admin('DELETE', `/admin/v1/members/${other}`)
        expect(answer.status).not.toBe(200)
        return answer.body.error?.code === 'KV_ERR_WOULD_LOSE_QUORUM'
      },
      10_000,
      250,
    )
    // Nor may the leader remove itself now, and it is refused before any handover: no
    // election is spent on a refused removal.
    const epoch = ((await cluster.status(leader)) as unknown as { epoch: number }).epoch
    const self = await admin('DELETE', `/admin/v1/members/${leader}`)
    expect(self.body.error?.code).toBe('KV_ERR_WOULD_LOSE_QUORUM')
    expect((await cluster.waitForLeader()).id).toBe(leader)
    expect(((await cluster.status(leader)) as unknown as { epoch: number }).epoch).toBe(epoch)
    // The shortcut: the new member joins as a learner, catches up, is promoted, and the dead
    // one is removed.
    await cluster.startJoining('n6')
    const replaced = await admin('POST', `/admin/v1/members/${dead}/replace`, spec('n6'))
    expect(replaced.status).toBe(200)
    cluster.retired.add(dead)
    expect(await roles()).toEqual({
      voters: [...before.voters.filter((v) => v !== dead), 'n6'].sort(),
      learners: [],
    })
    // Called again, it changes nothing.
    const again = await admin('POST', `/admin/v1/members/${dead}/replace`, spec('n6'))
    expect(again.status).toBe(200)
    await until('writes after the replacement', () => load.acked.size > 200, 20_000)
  } finally {
    await load.stop()
  }
  await expectAllRead(load.acked)
  await expectDigestsAgree()
}, 120_000)

it('refuses to promote a learner that is not connected or too far behind, and one change at a time', async () => {
  // Added before its process runs: not connected.
  const n7 = await cluster.allocateMember('n7')
  expect((await admin('POST', '/admin/v1/members', spec('n7'))).status).toBe(200)
  const early = await admin('POST', '/admin/v1/members/n7/promote')
  expect(early.status).toBe(409)
  expect(early.body.error).toMatchObject({ code: 'KV_ERR_LEARNER_BEHIND', connected: false })
  // Started, caught up, then paused while 300 entries are written: too far behind.
  cluster.joining.add('n7')
  await cluster.startMember('n7', ['--join'])
  const leader = await cluster.waitForLeader()
  await until('n7 to catch up', async () => {
    const view = await members()
    const m = view.members.find((x) => x.id === 'n7')
    return m?.connected === true && (m.lagEntries ?? Infinity) === 0
  })
  cluster.pause('n7')
  const client = new KvClient({ ...rootTls(), url: leader.url })
  try {
    for (let i = 0; i < 300; i++) await client.put(`behind/${i}`, 'x', { ack: 'quorum' })
  } finally {
    await client.close()
  }
  const behind = await admin('POST', '/admin/v1/members/n7/promote')
  expect(behind.status).toBe(409)
  expect(behind.body.error?.code).toBe('KV_ERR_LEARNER_BEHIND')
  expect(Number(behind.body.error?.lagEntries)).toBeGreaterThanOrEqual(300)
  expect((await roles()).learners).toEqual(['n7'])
  cluster.resume('n7')
  await promoteWhenCaughtUp('n7')
  expect((await roles()).voters).toContain('n7')

  // One change at a time: with the followers paused the removal of n7 cannot commit, and a
  // second change is refused meanwhile.
  // (Straight to the leader: finding it would wait on the paused members past the election
  // timeout, and the leader would step down meanwhile.)
  const leaderUrl = (await cluster.waitForLeader()).url
  const followers = cluster.followers.filter((m) => m.process !== null).map((m) => m.id)
  for (const id of followers) cluster.pause(id)
  let first: Promise<Response> | null = null
  try {
    first = fetch(`${leaderUrl}/admin/v1/members/n7`, { method: 'DELETE' })
    await new Promise((resolve) => setTimeout(resolve, 150))
    const second = await fetch(`${leaderUrl}/admin/v1/members`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        id: 'n8',
        clientUrl: 'https://127.0.0.1:1',
        peerUrl: 'https://127.0.0.1:2',
      }),
    })
    expect(second.status).toBe(409)
    expect(((await second.json()) as { error: { code: string } }).error.code).toBe(
      'KV_ERR_MEMBERSHIP_CHANGE_IN_PROGRESS',
    )
  } finally {
    for (const id of followers) cluster.resume(id)
  }
  const removal = await first
  expect(removal.status).toBe(200)
  cluster.retired.add('n7')
  expect(n7.id).toBe('n7')
  expect((await roles()).voters).not.toContain('n7')
}, 120_000)

it('answers unknown members and bad bodies with coded errors', async () => {
  const unknown = await admin('DELETE', '/admin/v1/members/nobody')
  expect(unknown.status).toBe(404)
  expect(unknown.body.error?.code).toBe('KV_ERR_NOT_A_MEMBER')
  const bad = await admin('POST', '/admin/v1/members', { id: 'n9', clientUrl: 'not a url' })
  expect(bad.status).toBe(400)
  expect(bad.body.error?.code).toBe('KV_ERR_MALFORMED_BODY')
  const badUrl = await admin('POST', '/admin/v1/members', {
    id: 'n9',
    clientUrl: 'ftp://x:1',
    peerUrl: 'https://127.0.0.1:9',
  })
  expect(badUrl.status).toBe(400)
  expect(badUrl.body.error?.code).toBe('KV_ERR_INVALID_ARGUMENT')
  // A removed id is never let back in.
  const [removed] = [...cluster.retired]
  const back = await admin('POST', '/admin/v1/members', {
    id: removed,
    clientUrl: 'https://127.0.0.1:3',
    peerUrl: 'https://127.0.0.1:4',
  })
  expect(back.status).toBe(400)
  expect(back.body.error?.code).toBe('KV_ERR_INVALID_ARGUMENT')
})
