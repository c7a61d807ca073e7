import {
  CoreInvariantError,
  ReplicaCore,
  epochFreeMax,
  epochMax,
  epochStepMax,
  type Message,
  type NodeId,
  type VoteAckMessage,
  type VoteMessage,
} from '../src/index.js'
import { Harness, testConfig } from './harness.js'

const noop = new TextEncoder().encode('noop')
const electionTicks = 10

/**
 * Three members with elections on. `first` times out first (its random draw is 0), the others
 * later and at different ticks (draws 0.5 and 0.95), so tests know who campaigns.
 */
function electing(first: NodeId = 'a', logs: ConstructorParameters<typeof Harness>[2] = {}) {
  const perNode: Record<NodeId, { random: () => number }> = {}
  const later = [0.5, 0.95]
  for (const id of ['a', 'b', 'c']) {
    const draw = id === first ? 0 : (later.shift() as number)
    perNode[id] = { random: () => draw }
  }
  const h = new Harness(
    ['a', 'b', 'c'],
    { electionTicks, makeNoop: () => noop, heartbeatTicks: 1 },
    logs,
    perNode,
  )
  h.connectAll()
  return h
}

function leaders(h: Harness): NodeId[] {
  return [...h.nodes].filter(([, n]) => n.core.isLeader).map(([id]) => id)
}

// The step-by-step elections scenarios are text traces: testdata/elections.txt (trace.test.ts).
describe('elections', () => {
  it('a vote is durable before it is granted, and a candidate asks only once its own is', () => {
    const h = electing('a')
    h.autoPersist = false
    const a = h.node('a').core
    a.campaign(true) // straight to a vote (as after a handover)
    const ready = a.takeReady()
    expect(ready.hardState).toEqual({ epoch: 2, vote: 'a', commitLsn: 0 })
    expect(ready.sendNow.filter((m) => m.type === 'vote')).toEqual([])
    expect(ready.sendAfterPersist.filter((m) => m.type === 'vote')).toHaveLength(2)
    const request = ready.sendAfterPersist.find((m) => m.to === 'b') as VoteMessage
    const b = h.node('b').core
    b.step(request)
    const answer = b.takeReady()
    expect(answer.hardState).toMatchObject({ epoch: 2, vote: 'a' })
    expect(answer.sendNow).toEqual([])
    expect(answer.sendAfterPersist).toMatchObject([{ type: 'voteAck', granted: true, to: 'a' }])
  })

  it('grants one vote per epoch', () => {
    const h = electing('a')
    const b = h.node('b').core
    const ask = (from: NodeId): VoteAckMessage => {
      b.step({
        type: 'vote',
        from,
        to: 'b',
        epoch: 5,
        lastLsn: 0,
        lastEpoch: 0,
        preVote: false,
        transfer: false,
      })
      return b.takeReady().sendAfterPersist.find((m) => m.type === 'voteAck') as VoteAckMessage
    }
    expect(ask('a').granted).toBe(true)
    expect(ask('c').granted).toBe(false)
    expect(ask('a').granted).toBe(true) // the same candidate again (a retry) is fine
    expect(b.votedFor).toBe('a')
  })

  it('votes only for a candidate whose log is at least as up to date', () => {
    // b's last entry is of epoch 3; c has more entries, but of epoch 2.
    const h = electing('c', {
      a: [
        [2, 'x'],
        [3, 'y'],
      ],
      b: [
        [2, 'x'],
        [3, 'y'],
      ],
      c: [
        [2, 'x'],
        [2, 'z'],
        [2, 'w'],
      ],
    })
    const b = h.node('b').core
    const vote = (from: NodeId, lastLsn: number, lastEpoch: number): boolean => {
      b.step({
        type: 'vote',
        from,
        to: 'b',
        epoch: 9,
        lastLsn,
        lastEpoch,
        preVote: true,
        transfer: false,
      })
      const acks = b.takeReady().sendAfterPersist
      return (acks.find((m) => m.type === 'voteAck') as VoteAckMessage).granted
    }
    expect(vote('c', 3, 2)).toBe(false) // longer, but an older last epoch
    expect(vote('a', 1, 3)).toBe(false) // same last epoch, shorter
    expect(vote('a', 2, 3)).toBe(true) // same last epoch and LSN
    expect(vote('a', 1, 4)).toBe(true) // a later last epoch
    // c times out first, again and again, but a and b refuse it; one of them wins, and y
    // (on a majority) survives.
    h.tick(electionTicks * 4)
    expect(leaders(h)).toHaveLength(1)
    expect(leaders(h)).not.toContain('c')
    for (const id of ['a', 'b', 'c']) expect(h.log(id).slice(0, 2)).toEqual(['x', 'y'])
  })

  it('a member that hears the leader ignores vote requests (leader stickiness)', () => {
    const h = electing('a')
    h.tick(electionTicks)
    const b = h.node('b').core
    const request: Message = {
      type: 'vote',
      from: 'c',
      to: 'b',
      epoch: 7,
      lastLsn: 99,
      lastEpoch: 7,
      preVote: false,
      transfer: false,
    }
    b.step(request)
    expect(b.epoch).toBe(2)
    expect(b.hasReady()).toBe(false)
    // A handover (transfer) is the exception.
    b.step({ ...request, transfer: true })
    expect(b.epoch).toBe(7)
    expect(b.votedFor).toBe('c')
  })
})

describe('epoch bounds (the epoch bomb)', () => {
  const heartbeat = (from: NodeId, to: NodeId, epoch: number): Message => ({
    type: 'heartbeat',
    from,
    to,
    epoch,
    commitLsn: 0,
    leaderLastLsn: 0,
  })

  /** Ticks until exactly one leader leads at the highest epoch and every node follows it. */
  function settle(h: Harness): NodeId {
    for (let i = 0; i < 40; i++) {
      h.tick(electionTicks)
      const top = Math.max(...[...h.nodes.values()].map((n) => n.core.epoch))
      const [leader, ...more] = leaders(h)
      if (
        leader !== undefined &&
        more.length === 0 &&
        h.node(leader).core.epoch === top &&
        [...h.nodes.values()].every((n) => n.core.epoch === top && n.core.leaderId === leader)
      )
        return leader
    }
    throw new Error('no leader settled')
  }

  /** The leader commits a new entry on every node. */
  function commitsEverywhere(h: Harness, leader: NodeId): void {
    h.propose(leader, 1, 'after')
    h.tick(2)
    const lsn = h.node(leader).core.lastLsn
    for (const [id, node] of h.nodes) {
      expect(node.core.commitLsn, id).toBe(lsn)
      expect(h.log(id).at(-1), id).toBe(`after-${lsn}`)
    }
  }

  it('a follower sent a message at epochMax still elects a leader with the others, which commits', () => {
    const h = electing('a')
    const b = h.node('b').core
    b.step(heartbeat('c', 'b', epochMax))
    // Had b taken epochMax, no candidate could ever ask for epochMax + 1 (peers refuse it):
    // the wedge of the epoch bomb, only lower.
    const leader = settle(h)
    commitsEverywhere(h, leader)
    // It was too far above b's epoch to take from one message: dropped and counted.
    expect(h.node(leader).core.epoch).toBe(2)
    expect(b.epochMessagesDropped).toBe(1)
    // And the same once a leader leads.
    h.node('c').core.step(heartbeat('b', 'c', epochMax))
    expect(h.node('c').core.epoch).toBe(2)
    commitsEverywhere(h, leader)
  })

  it('after the highest epoch one message can carry, the cluster elects past it and commits', () => {
    const h = electing('a')
    h.tick(electionTicks)
    expect(leaders(h)).toEqual(['a'])
    const worst = epochFreeMax + epochStepMax
    h.node('b').core.step(heartbeat('c', 'b', worst))
    expect(h.node('b').core.epoch).toBe(worst)
    h.process()
    const leader = settle(h)
    expect(h.node(leader).core.epoch).toBeGreaterThan(worst)
    expect(h.node(leader).core.epoch).toBeLessThan(epochMax)
    commitsEverywhere(h, leader)
  })

  it('a message above epochMax, or not an integer, changes nothing', () => {
    const h = electing('a')
    h.tick(electionTicks)
    const b = h.node('b').core
    const before = { epoch: b.epoch, leader: b.leaderId, vote: b.votedFor }
    const bombs = [epochMax + 1, 2 ** 53 - 1, 2 ** 53, Infinity, NaN, 2.5, -1]
    for (const epoch of bombs) {
      b.step(heartbeat('a', 'b', epoch))
      b.step({ ...heartbeat('c', 'b', epoch), type: 'heartbeatAck', matchLsn: 0 })
      b.step({
        type: 'vote',
        from: 'c',
        to: 'b',
        epoch,
        lastLsn: 99,
        lastEpoch: 1,
        preVote: false,
        transfer: true,
      })
      expect(b.hasReady()).toBe(false)
    }
    expect({ epoch: b.epoch, leader: b.leaderId, vote: b.votedFor }).toEqual(before)
    expect(b.epochMessagesDropped).toBe(bombs.length * 3)
    commitsEverywhere(h, 'a')
  })

  it('above epochFreeMax one message moves a node at most epochStepMax, unless a majority vouches', () => {
    const h = electing('a')
    const b = h.node('b').core
    // Below epochFreeMax, any higher epoch is taken at once, as before.
    b.step(heartbeat('a', 'b', epochFreeMax - 7))
    expect(b.epoch).toBe(epochFreeMax - 7)
    b.step(heartbeat('a', 'b', epochFreeMax + epochStepMax))
    expect(b.epoch).toBe(epochFreeMax + epochStepMax)
    const next = b.epoch + epochStepMax
    b.step(heartbeat('a', 'b', next + 1))
    expect(b.epoch).toBe(epochFreeMax + epochStepMax)
    b.step(heartbeat('a', 'b', next))
    expect(b.epoch).toBe(next)
    // c fell far behind (it was down, or lost its disk): one member alone cannot move it ...
    const c = h.node('c').core
    const far = next + 10 * epochStepMax
    c.step(heartbeat('a', 'c', far))
    c.step(heartbeat('a', 'c', far))
    expect(c.epoch).toBe(1)
    // ... a majority of the members can (c asks with a pre-vote; both answer with their epoch).
    c.step({ type: 'voteAck', from: 'b', to: 'c', epoch: far, granted: false, preVote: true })
    expect(c.epoch).toBe(far)
  })

  it('a stale heartbeat from a node that now leads at the receiver epoch only makes it probe', () => {
    // The simulator's epoch bombs found this: the refusal of an older-epoch message carried
    // hint 0, which a leader reads as "send me a snapshot".
    const h = electing('a')
    h.tick(electionTicks)
    expect(leaders(h)).toEqual(['a'])
    h.propose('a', 3)
    const a = h.node('a').core
    const b = h.node('b').core
    const seen = h.delivered.length
    b.step(heartbeat('a', 'b', a.epoch - 1))
    h.process()
    const refusal = h.delivered.slice(seen)[0]
    expect(refusal).toMatchObject({ type: 'appendAck', from: 'b', reject: true, epoch: a.epoch })
    // No snapshot was sent (the harness would have installed one on b).
    expect(h.node('b').snapshotLsn).toBe(0)
    expect(refusal).toMatchObject({ hintLsn: b.lastLsn + 1 })
    commitsEverywhere(h, 'a')
  })

  it('never produces an epoch above epochMax: the invariants hold where the epoch is raised', () => {
    const h = electing('a')
    const a = h.node('a').core
    expect(() => a.becomeFollower(epochMax + 1, null)).toThrow(CoreInvariantError)
    expect(() => a.setEpoch(2 ** 53)).toThrow(CoreInvariantError)
    a.setEpoch(epochMax)
    expect(a.epoch).toBe(epochMax)
    expect(() => a.campaign()).toThrow(/cannot campaign past epoch/)
    expect(() => a.campaign(true)).toThrow(/cannot campaign past epoch/)
    expect(
      () =>
        new ReplicaCore(
          { ...testConfig, id: 'a', members: ['a', 'b', 'c'] },
          {
            epoch: 2 ** 53 - 1,
            vote: '',
            commitLsn: 0,
            logStartLsn: 1,
            compactedEpoch: 0,
            lastLsn: 0,
            lastEpoch: 0,
            epochRuns: [],
          },
        ),
    ).toThrow(/initial epoch/)
  })
})
