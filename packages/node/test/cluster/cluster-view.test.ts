import { ClusterTracker, type ViewCore } from '../../src/cluster/cluster-view.js'
import type { MemberConfig } from '../../src/config.js'

const member = (id: string): MemberConfig => ({
  id,
  clientUrl: `https://${id}:8080`,
  peerUrl: `https://${id}:9090`,
})

/** A leader n1 whose followers n2 and n3 hold `match[id]`; the clock is `clock.ms`. */
function leaderTracker(
  match: Record<string, number>,
  clock: { ms: number },
  lastLsn: () => number,
) {
  const core: ViewCore = {
    isLeader: true,
    leaderId: 'n1',
    epoch: 2,
    commitLsn: 0,
    get lastLsn() {
      return lastLsn()
    },
    leaderLastLsn: 0,
    matchOf: (id) => match[id] ?? 0,
    isVoter: () => true,
    membershipLsn: 0,
    pendingMembershipLsn: null,
  }
  const members = ['n1', 'n2', 'n3'].map(member)
  return new ClusterTracker({
    cluster: { mode: 'single-leader', self: members[0]!, members, leaderId: 'n1' },
    core,
    members: () => members.map((m) => ({ ...m, voter: true })),
    clusterId: 'kv-test',
    appliedLsn: lastLsn,
    isConnected: () => true,
    writable: () => true,
    now: () => clock.ms,
  })
}

describe('the leader measures follower lag', () => {
  it('dates a follower lag by its oldest missing entry, whatever the number of proposals', () => {
    const clock = { ms: 1_000 }
    let last = 0
    const match: Record<string, number> = { n2: 0, n3: 0 }
    const tracker = leaderTracker(match, clock, () => last)
    // 20,000 proposals, 10 per millisecond: more than the tracker keeps, so old ones are trimmed.
    for (let lsn = 1; lsn <= 20_000; lsn++) {
      if (lsn % 10 === 1) clock.ms++
      last = lsn
      tracker.proposed(lsn)
    }
    const now = clock.ms
    const lagOf = (id: string) => tracker.view().members.find((m) => m.id === id)!
    // n2 holds everything: no lag.
    match.n2 = 20_000
    expect(lagOf('n2')).toMatchObject({ lagEntries: 0, lagMs: 0 })
    // n3 misses 19,991 onwards, proposed at the last millisecond but one.
    match.n3 = 19_990
    expect(lagOf('n3')).toMatchObject({ lagEntries: 10, lagMs: 0 })
    match.n3 = 19_989
    expect(lagOf('n3')).toMatchObject({ lagEntries: 11, lagMs: 1 })
    // 15,001 was proposed at ms 2,501 (each ms holds 10 LSNs from 1,001 + 10k on).
    match.n3 = 15_000
    expect(lagOf('n3')).toMatchObject({ lagEntries: 5_000, lagMs: now - 2_501 })
    // Behind everything the tracker still remembers: aged by the oldest sighting kept.
    match.n3 = 0
    const oldest = lagOf('n3').lagMs
    expect(oldest).toBeGreaterThan(now - 2_501)
    expect(oldest).toBeLessThan(now - 1_000)
    clock.ms += 50
    expect(lagOf('n3').lagMs).toBe(oldest + 50)
  })
})
