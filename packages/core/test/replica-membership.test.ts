import {
  MembershipChangeInProgressError,
  majoritiesCanBeDisjoint,
  singleChangeProblem,
  type CoreMembership,
  type NodeId,
} from '../src/index.js'
import { Harness } from './harness.js'

/** a, b, c vote; d and e run outside the configuration (started to join). */
function cluster(): Harness {
  const h = new Harness(['a', 'b', 'c', 'd', 'e'], {}, {}, {}, ['a', 'b', 'c'])
  h.node('a').core.becomeLeader()
  for (const id of ['b', 'c', 'd', 'e']) h.node(id).core.becomeFollower(1, 'a')
  h.connectAll()
  h.propose('a', 1) // an entry of the leader's epoch, committed: it may change the configuration
  return h
}

/** The leader proposes `next` as a configuration entry (durable at once). */
function change(h: Harness, leader: NodeId, next: CoreMembership): number {
  const { core } = h.node(leader)
  const slot = core.nextSlot()
  const entry = { ...slot, data: Buffer.from(`config-${slot.lsn}`), membership: next }
  core.propose(entry)
  h.node(leader).disk.push(entry)
  core.persisted(slot.lsn)
  h.process()
  return slot.lsn
}

describe('configuration rules', () => {
  it('a change may add or remove one voter; learners come and go freely', () => {
    const abc = { voters: ['a', 'b', 'c'], learners: [] }
    expect(singleChangeProblem(abc, { voters: ['a', 'b', 'c', 'd'], learners: [] })).toBeNull()
    expect(singleChangeProblem(abc, { voters: ['a', 'b'], learners: [] })).toBeNull()
    expect(singleChangeProblem(abc, { voters: ['a', 'b', 'c'], learners: ['d', 'e'] })).toBeNull()
    expect(singleChangeProblem(abc, { voters: ['a', 'b', 'd'], learners: [] })).toMatch(
      /one voter at a time/,
    )
    expect(singleChangeProblem(abc, { voters: ['a', 'b', 'c', 'd', 'e'], learners: [] })).toMatch(
      /adds 2/,
    )
    expect(singleChangeProblem(abc, { voters: [], learners: ['a'] })).toMatch(/at least one voter/)
  })

  it('majorities of configurations one change apart always overlap; two changes apart need not', () => {
    expect(majoritiesCanBeDisjoint(['a', 'b', 'c'], ['a', 'b', 'c', 'd'])).toBe(false)
    expect(majoritiesCanBeDisjoint(['a', 'b', 'c'], ['a', 'b'])).toBe(false)
    expect(majoritiesCanBeDisjoint(['a', 'b', 'c', 'd'], ['a', 'b', 'c', 'd', 'e'])).toBe(false)
    // {a,b} is a majority of abc, {c,d,e} one of abcde.
    expect(majoritiesCanBeDisjoint(['a', 'b', 'c'], ['a', 'b', 'c', 'd', 'e'])).toBe(true)
    expect(majoritiesCanBeDisjoint(['a', 'b'], ['c', 'd'])).toBe(true)
  })
})

describe('configuration changes in the replica', () => {
  it('a learner receives the log, counts toward no quorum, and never campaigns', () => {
    const h = cluster()
    change(h, 'a', { voters: ['a', 'b', 'c'], learners: ['d'] })
    expect(h.node('d').core.isMember('d')).toBe(true)
    expect(h.node('d').core.isVoter('d')).toBe(false)
    h.propose('a', 3)
    expect(h.log('d')).toEqual(h.log('a'))
    // With b and c cut off, the learner's acknowledgements commit nothing.
    h.isolate('a', ['b', 'c'])
    const commit = h.node('a').core.commitLsn
    h.propose('a', 2)
    expect(h.node('d').core.lastLsn).toBe(h.node('a').core.lastLsn)
    expect(h.node('a').core.commitLsn).toBe(commit)
    // A learner never campaigns, however long it waits.
    h.node('d').core.campaign()
    expect(h.node('d').core.roleName).toBe('follower')
  })

  it('takes effect on append, before it commits, and a truncation brings the old one back', () => {
    const h = cluster()
    h.isolate('a', ['c', 'd', 'e'])
    // b gets the change, which cannot commit (a and b are 2 of the 4 voters it makes).
    const lsn = change(h, 'a', { voters: ['a', 'b', 'c', 'd'], learners: [] })
    expect(h.node('b').core.isVoter('d')).toBe(true)
    expect(h.node('b').core.pendingMembershipLsn).toBe(lsn)
    expect(h.node('a').core.commitLsn).toBeLessThan(lsn)
    // c leads a new epoch without it (c, d and e have not seen it): b truncates it.
    h.isolate('a', ['b'])
    const c = h.node('c').core
    c.becomeFollower(c.epoch + 1, null)
    for (const id of ['b', 'd', 'e']) h.node(id).core.becomeFollower(c.epoch, 'c')
    c.becomeLeader()
    h.connect('c')
    h.propose('c', 1, 'c')
    expect(h.node('b').core.isVoter('d')).toBe(false)
    expect(h.node('b').core.membershipLsn).toBe(0)
    expect(h.log('b')).toEqual(h.log('c'))
  })

  it('refuses a second change while one is in flight, and any before an entry of the epoch commits', () => {
    const h = cluster()
    h.isolate('a', ['b', 'c'])
    change(h, 'a', { voters: ['a', 'b', 'c'], learners: ['d'] })
    expect(() =>
      h.node('a').core.checkMembershipChange({ voters: ['a', 'b', 'c'], learners: ['d', 'e'] }),
    ).toThrow(MembershipChangeInProgressError)
    h.isolate('a', ['b', 'c'], false)
    h.propose('a', 1)
    expect(h.node('a').core.pendingMembershipLsn).toBeNull()
    h.node('a').core.checkMembershipChange({ voters: ['a', 'b', 'c'], learners: ['d', 'e'] })

    // A new leader whose no-op is not committed yet may not change anything.
    const b = h.node('b').core
    h.isolate('b', ['a', 'c', 'd', 'e'])
    b.becomeFollower(b.epoch + 1, null)
    b.becomeLeader()
    expect(b.leaderReady).toBe(false)
    expect(() => b.checkMembershipChange({ voters: ['a', 'b', 'c'], learners: [] })).toThrow(
      /has not committed an entry of its epoch/,
    )
  })

  it("a removed member's vote requests move nothing while a leader is heard", () => {
    // Elections on: a follower that heard its leader within the election timeout ignores vote
    // requests (leader stickiness); with the peer port refusing a removed member and pre-votes
    // that move no epoch, that is what keeps a removed member that comes back from disrupting.
    const h = new Harness(['a', 'b', 'c'], {
      electionTicks: 10,
      random: () => 0.5,
      makeNoop: () => Buffer.from('noop'),
    })
    h.node('a').core.becomeLeader()
    for (const id of ['b', 'c']) h.node(id).core.becomeFollower(1, 'a')
    h.connectAll()
    h.propose('a', 1)
    change(h, 'a', { voters: ['a', 'b'], learners: [] })
    h.tick(2)
    const epoch = h.node('b').core.epoch
    for (const preVote of [true, false]) {
      h.node('b').core.step({
        type: 'vote',
        from: 'c',
        to: 'b',
        epoch: epoch + 5,
        lastLsn: 100,
        lastEpoch: epoch + 4,
        preVote,
        transfer: false,
      })
    }
    h.process()
    expect(h.node('b').core.epoch).toBe(epoch)
    expect(h.node('b').core.votedFor).toBe('')
    expect(h.node('a').core.isLeader).toBe(true)
  })

  it('a leader that removes itself stops counting itself, and steps down once it commits', () => {
    const h = cluster()
    const lsn = change(h, 'a', { voters: ['b', 'c'], learners: [] })
    expect(h.node('a').core.commitLsn).toBeGreaterThanOrEqual(lsn)
    expect(h.node('a').core.isLeader).toBe(false)
    expect(h.node('a').core.isVoter('a')).toBe(false)
  })

  it('a new voter counts toward the majority as soon as the change is in the log', () => {
    const h = cluster()
    change(h, 'a', { voters: ['a', 'b', 'c'], learners: ['d'] })
    change(h, 'a', { voters: ['a', 'b', 'c', 'd'], learners: [] })
    // Four voters need three acknowledgements: a and d alone commit nothing.
    h.isolate('a', ['b', 'c'])
    const commit = h.node('a').core.commitLsn
    h.propose('a', 2)
    expect(h.node('a').core.commitLsn).toBe(commit)
    h.isolate('a', ['b'], false)
    h.process()
    expect(h.node('a').core.commitLsn).toBe(h.node('a').core.lastLsn)
  })
})
