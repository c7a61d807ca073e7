/**
 * Single-leader replication under faults, on real 3-node process clusters: the leader killed
 * with -9 in the middle of a snapshot. (Failover under load: failover.test.ts.)
 */
import { TestCluster, until } from '@kvstore/testkit'

async function digests(cluster: TestCluster): Promise<string[]> {
  const all = await Promise.all(cluster.members.map((m) => cluster.digest(m.id)))
  return all.map((d) => `${d.appliedLsn}:${d.digest}`)
}

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
    // The other follower (the only complete copy left) is elected and sends the snapshot
    // again; the member with a half-installed state never campaigns.
    await until(
      'the snapshot to be installed',
      () => logs().some((l) => l.msg === 'snapshot installed'),
      60_000,
    )
    expect(logs().some((l) => l.msg === 'elected leader')).toBe(false)
    await cluster.startMember(leader.id)
    await cluster.waitForLeader()
    await cluster.waitForApplied()
    expect(new Set(await digests(cluster)).size).toBe(1)
    const got = await fetch(`${follower.url}/v1/kv/big/199/99`)
    expect(await got.text()).toBe(value)
  }, 120_000)
})
