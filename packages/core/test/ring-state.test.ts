import { HashRing } from '../src/ring.js'
import { WriteQuorum, changeReachable } from '../src/leaderless/write-quorum.js'
import {
  RingPlacement,
  acceptorFor,
  agreementQuorum,
  chooseValue,
  compareBallots,
  handoffStreams,
  handoffTargets,
  handsOver,
  onAccept,
  onPrepare,
  planAdvance,
  planJoin,
  planLeave,
  planReplace,
  ringProblem,
  sameRing,
  seedRing,
  type AcceptorState,
  type Ballot,
  type RingPlan,
  type RingState,
} from '../src/leaderless/ring-state.js'
import { prng } from '../src/prng.js'

const member = (id: string, port: number) => ({
  id,
  clientUrl: `https://127.0.0.1:${port}`,
  peerUrl: `https://127.0.0.1:${port + 100}`,
})
const five = seedRing(['n1', 'n2', 'n3', 'n4', 'n5'].map((id, i) => member(id, 7001 + i)))
const keys = Array.from({ length: 5000 }, (_, i) => `user/${i}`)
const allUp = () => true

function ringOf(plan: RingPlan): RingState {
  if ('refusal' in plan) throw new Error(`refused: ${plan.refusal.message}`)
  expect(ringProblem(plan.ring)).toBeNull()
  return plan.ring
}

describe('ring changes: planning', () => {
  it('a seeded ring is version 1 with every member an owner', () => {
    expect(five.version).toBe(1)
    expect(five.members.map((m) => m.state)).toEqual(['owner', 'owner', 'owner', 'owner', 'owner'])
    expect(ringProblem(five)).toBeNull()
  })

  it('a join goes through three versions: streaming, switched, done', () => {
    const joining = ringOf(planJoin(five, member('n6', 7006), 1000))
    expect(joining.version).toBe(2)
    expect(joining.change).toMatchObject({ kind: 'join', member: 'n6', phase: 'streaming' })
    const switched = planAdvance(joining)
    expect(switched.version).toBe(3)
    expect(switched.change?.phase).toBe('switched')
    expect(ringProblem(switched)).toBeNull()
    const done = planAdvance(switched)
    expect(done.version).toBe(4)
    expect(done.change).toBeNull()
    expect(done.members.find((m) => m.id === 'n6')?.state).toBe('owner')
    expect(ringProblem(done)).toBeNull()
  })

  it('one change at a time: a second gets KV_ERR_MEMBERSHIP_CHANGE_IN_PROGRESS', () => {
    const joining = ringOf(planJoin(five, member('n6', 7006), 0))
    for (const plan of [
      planJoin(joining, member('n7', 7007), 0),
      planLeave(joining, 'n2', 3, allUp, 0),
      planReplace(joining, 'n3', member('n7', 7007), allUp, 0),
    ]) {
      expect('refusal' in plan && plan.refusal.code).toBe('KV_ERR_MEMBERSHIP_CHANGE_IN_PROGRESS')
    }
  })

  it('removing the joining member aborts the join', () => {
    const joining = ringOf(planJoin(five, member('n6', 7006), 0))
    const aborted = ringOf(planLeave(joining, 'n6', 3, allUp, 0))
    expect(aborted.change).toBeNull()
    expect(aborted.members.map((m) => m.id)).toEqual(['n1', 'n2', 'n3', 'n4', 'n5'])
    expect(aborted.version).toBe(3)
  })

  it('refuses an unknown or removed id, a leave below N members, a dead leaver, a taken id or URL', () => {
    const code = (plan: RingPlan) => ('refusal' in plan ? plan.refusal.code : null)
    expect(code(planLeave(five, 'n9', 3, allUp, 0))).toBe('KV_ERR_NOT_A_MEMBER')
    expect(code(planReplace(five, 'n9', member('n7', 7007), allUp, 0))).toBe('KV_ERR_NOT_A_MEMBER')
    const three = seedRing(['n1', 'n2', 'n3'].map((id, i) => member(id, 7001 + i)))
    expect(code(planLeave(three, 'n2', 3, allUp, 0))).toBe('KV_ERR_WOULD_LOSE_QUORUM')
    expect(code(planLeave(five, 'n2', 3, (id) => id !== 'n2', 0))).toBe('KV_ERR_WOULD_LOSE_QUORUM')
    expect(code(planJoin(five, member('n2', 7009), 0))).toBe('KV_ERR_INVALID_ARGUMENT')
    expect(
      code(
        planJoin(
          five,
          { ...member('n6', 7006), clientUrl: five.members[0]?.clientUrl as string },
          0,
        ),
      ),
    ).toBe('KV_ERR_INVALID_ARGUMENT')
    // A removed id never comes back.
    const leaving = ringOf(planLeave(five, 'n2', 3, allUp, 0))
    const gone = planAdvance(planAdvance(leaving))
    expect(gone.removed).toEqual(['n2'])
    expect(gone.members.map((m) => m.id)).toEqual(['n1', 'n3', 'n4', 'n5'])
    expect(code(planLeave(gone, 'n2', 3, allUp, 0))).toBe('KV_ERR_NOT_A_MEMBER')
    expect(code(planJoin(gone, member('n2', 7020), 0))).toBe('KV_ERR_INVALID_ARGUMENT')
  })

  it('replacing a dead member needs every other member up', () => {
    const down = new Set(['n3', 'n4'])
    const plan = planReplace(five, 'n3', member('n7', 7007), (id) => !down.has(id), 0)
    expect('refusal' in plan && plan.refusal.code).toBe('KV_ERR_WOULD_LOSE_QUORUM')
    const ok = ringOf(planReplace(five, 'n3', member('n7', 7007), (id) => id !== 'n3', 0))
    expect(ok.members.find((m) => m.id === 'n7')).toMatchObject({ state: 'joining', tokens: 'n3' })
    expect(ok.members.find((m) => m.id === 'n3')?.state).toBe('leaving')
    const done = planAdvance(planAdvance(ok))
    expect(done.removed).toEqual(['n3'])
    expect(done.members.find((m) => m.id === 'n7')).toMatchObject({ state: 'owner', tokens: 'n3' })
  })

  it('ringProblem catches malformed rings', () => {
    expect(ringProblem({ ...five, version: 0 })).toMatch(/version/)
    expect(ringProblem({ ...five, members: [...five.members].reverse() })).toMatch(/sorted/)
    expect(ringProblem({ ...five, removed: ['n1'] })).toMatch(/both/)
    const joining = ringOf(planJoin(five, member('n6', 7006), 0))
    expect(ringProblem({ ...joining, change: null })).toMatch(/no change/)
  })

  it('sameRing compares content, not object layout', () => {
    const a = ringOf(planJoin(five, member('n6', 7006), 5))
    const b: RingState = JSON.parse(JSON.stringify(a)) as RingState
    expect(sameRing(a, b)).toBe(true)
    expect(sameRing(a, planAdvance(a))).toBe(false)
  })
})

describe('ring changes: pending ranges', () => {
  it('a join moves only the keys the new member takes; each gains it and loses one old owner', () => {
    const joining = ringOf(planJoin(five, member('n6', 7006), 0))
    const placement = new RingPlacement(joining, 3, 64)
    let moved = 0
    for (const key of keys) {
      const { before, after } = placement.listsOf(key)
      const write = placement.writePlacement(key)
      // Streaming: reads and W on the owners before; the joining member is pending.
      expect(placement.readList(key)).toEqual(before)
      expect(write.countSet).toEqual(before)
      if (after.includes('n6')) {
        moved++
        expect(write.extra).toEqual(['n6'])
        const displaced = before.filter((m) => !after.includes(m))
        expect(displaced).toHaveLength(1)
        expect(
          handsOver({ before, after }, displaced[0] as string, 'n6', displaced[0] as string),
        ).toBe(true)
      } else {
        expect(write.extra).toEqual([])
        expect(after).toEqual(before)
      }
    }
    // About N/M = 3/6 of the keys gain the sixth member.
    expect(moved / keys.length).toBeGreaterThan(0.35)
    expect(moved / keys.length).toBeLessThan(0.65)
    // Switched: reads and W on the owners after; the displaced owner still gets the writes.
    const switched = new RingPlacement(planAdvance(joining), 3, 64)
    for (const key of keys.slice(0, 500)) {
      const { before, after } = switched.listsOf(key)
      expect(switched.readList(key)).toEqual(after)
      expect(switched.writePlacement(key).extra).toEqual(before.filter((m) => !after.includes(m)))
    }
  })

  it('handoff streams count the arcs taken from each displaced member', () => {
    const joining = ringOf(planJoin(five, member('n6', 7006), 0))
    const placement = new RingPlacement(joining, 3, 64)
    const streams = handoffStreams(placement, 'n6')
    expect([...streams.keys()].every((m) => ['n1', 'n2', 'n3', 'n4', 'n5'].includes(m))).toBe(true)
    expect([...streams.values()].reduce((a, b) => a + b, 0)).toBeGreaterThan(64)
    const leaving = new RingPlacement(ringOf(planLeave(five, 'n2', 3, allUp, 0)), 3, 64)
    const targets = handoffTargets(leaving, 'n2')
    expect(targets.has('n2')).toBe(false)
    expect(targets.size).toBeGreaterThan(0)
  })

  it('a replacement takes exactly the replaced member’s ranges', () => {
    const replacing = ringOf(planReplace(five, 'n3', member('n7', 7007), (id) => id !== 'n3', 0))
    const placement = new RingPlacement(replacing, 3, 64)
    for (const key of keys) {
      const { before, after } = placement.listsOf(key)
      expect(after).toEqual(before.map((m) => (m === 'n3' ? 'n7' : m)))
    }
    expect([...handoffStreams(placement, 'n7').keys()]).toEqual(['n3'])
  })

  it('W counts the owners reads use, and W + extra in all', () => {
    const q = new WriteQuorum({ w: 2, sloppy: false, extra: 1 })
    q.sent()
    q.sent()
    q.sent()
    q.replicaAcked()
    expect(q.status).toBe('waiting') // 2 of the counted, but 2 in all < 3
    q.pendingOwnerAcked()
    expect(q.status).toBe('met')
    const onlyPending = new WriteQuorum({ w: 2, sloppy: false, extra: 1 })
    onlyPending.sent()
    onlyPending.sent()
    onlyPending.pendingOwnerAcked()
    onlyPending.failed()
    expect(onlyPending.status).toBe('unreachable') // the pending owner never counts toward W
    expect(changeReachable(2, 1, 2, 1)).toBe(true)
    expect(changeReachable(3, 0, 2, 1)).toBe(true)
    expect(changeReachable(2, 0, 2, 1)).toBe(false)
    expect(changeReachable(1, 1, 2, 1)).toBe(false)
  })

  it('an acknowledged write is on W owners of either side, whatever W + extra acked it', () => {
    // The safety argument of ring-state.ts, checked over every ack set the rule accepts.
    const joining = ringOf(planJoin(five, member('n6', 7006), 0))
    for (const ring of [joining, planAdvance(joining)]) {
      const placement = new RingPlacement(ring, 3, 64)
      for (const key of keys.slice(0, 300)) {
        const { before, after } = placement.listsOf(key)
        const { countSet, extra } = placement.writePlacement(key)
        const targets = [...countSet, ...extra]
        for (let mask = 0; mask < 1 << targets.length; mask++) {
          const acked = targets.filter((_, i) => mask & (1 << i))
          const counted = acked.filter((m) => countSet.includes(m)).length
          if (counted < 2 || acked.length < 2 + extra.length) continue
          expect(acked.filter((m) => before.includes(m)).length).toBeGreaterThanOrEqual(2)
          expect(acked.filter((m) => after.includes(m)).length).toBeGreaterThanOrEqual(2)
        }
      }
    }
  })
})

describe('ring changes: agreement', () => {
  const b = (round: number, proposer: string): Ballot => ({ round, proposer })

  it('ballots order by round, then proposer', () => {
    expect(compareBallots(b(1, 'n2'), b(2, 'n1'))).toBeLessThan(0)
    expect(compareBallots(b(2, 'n2'), b(2, 'n1'))).toBeGreaterThan(0)
    expect(compareBallots(b(2, 'n1'), b(2, 'n1'))).toBe(0)
  })

  it('an acceptor promises only higher ballots and accepts at or above its promise', () => {
    const p1 = onPrepare(1, null, 2, b(1, 'n1'))
    expect(p1.reply).toEqual({ kind: 'promise', accepted: null })
    expect(p1.persist).toBe(true)
    const p0 = onPrepare(1, p1.state, 2, b(1, 'n1'))
    expect(p0.reply.kind).toBe('rejected')
    const ring = ringOf(planJoin(five, member('n6', 7006), 0))
    expect(onAccept(1, p1.state, b(0, 'n9'), ring).reply.kind).toBe('rejected')
    const a = onAccept(1, p1.state, b(1, 'n1'), ring)
    expect(a.reply.kind).toBe('accepted')
    // A later prepare learns what was accepted.
    const p2 = onPrepare(1, a.state, 2, b(2, 'n3'))
    expect(p2.reply).toEqual({ kind: 'promise', accepted: { ballot: b(1, 'n1'), ring } })
  })

  it('stale and behind acceptors say so instead of voting', () => {
    expect(onPrepare(3, null, 2, b(1, 'n1')).reply.kind).toBe('stale')
    expect(onPrepare(1, null, 4, b(1, 'n1')).reply.kind).toBe('behind')
    const ring = ringOf(planJoin(five, member('n6', 7006), 0))
    expect(onAccept(2, null, b(1, 'n1'), ring).reply.kind).toBe('stale')
    // Once the committed version moves on, the state for the next version starts afresh.
    const s: AcceptorState = { version: 2, promised: b(5, 'n2'), accepted: null }
    expect(acceptorFor(2, s)).toEqual({ version: 3, promised: null, accepted: null })
    expect(acceptorFor(1, s)).toBe(s)
  })

  it('a proposer adopts the ring accepted under the highest ballot', () => {
    const mine = ringOf(planJoin(five, member('n6', 7006), 0))
    const theirs = ringOf(planLeave(five, 'n2', 3, allUp, 0))
    const older = ringOf(planJoin(five, member('n8', 7008), 0))
    expect(chooseValue([null, null], mine)).toEqual({ ring: mine, own: true })
    const chosen = chooseValue(
      [null, { ballot: b(1, 'n1'), ring: older }, { ballot: b(2, 'n4'), ring: theirs }],
      mine,
    )
    expect(chosen).toEqual({ ring: theirs, own: false })
  })

  it('two proposers never get two different rings chosen for one version (random schedules)', () => {
    const random = prng(20261203)
    const acceptors = five.members.map((m) => m.id)
    const quorum = agreementQuorum(five)
    for (let trial = 0; trial < 300; trial++) {
      const states = new Map<string, AcceptorState | null>(acceptors.map((id) => [id, null]))
      const proposals = [
        ringOf(planJoin(five, member('n6', 7006), 0)),
        ringOf(planLeave(five, 'n2', 3, allUp, 0)),
        ringOf(planJoin(five, member('n7', 7007), 0)),
      ]
      const chosen: RingState[] = []
      for (let step = 0; step < 12; step++) {
        const which = Math.floor(random() * proposals.length)
        const ballot = b(step + 1, `p${which}`)
        // Each message reaches a random subset of acceptors.
        const reached = acceptors.filter(() => random() < 0.7)
        const promises: ({ ballot: Ballot; ring: RingState } | null)[] = []
        for (const id of reached) {
          const r = onPrepare(1, states.get(id) ?? null, 2, ballot)
          states.set(id, r.state)
          if (r.reply.kind === 'promise') promises.push(r.reply.accepted)
        }
        if (promises.length < quorum) continue
        const value = chooseValue(promises, proposals[which] as RingState).ring
        let accepted = 0
        for (const id of acceptors.filter(() => random() < 0.7)) {
          const r = onAccept(1, states.get(id) ?? null, ballot, value)
          states.set(id, r.state)
          if (r.reply.kind === 'accepted') accepted++
        }
        if (accepted >= quorum) chosen.push(value)
      }
      for (const ring of chosen) expect(sameRing(ring, chosen[0] as RingState)).toBe(true)
    }
  })
})

describe('HashRing tokens', () => {
  it('a member taking another’s tokens takes exactly its points', () => {
    const a = new HashRing(['n1', 'n2', 'n3', 'n4'], 32)
    const tokens = new Map([['n9', 'n3']])
    const b = new HashRing(['n1', 'n2', 'n4', 'n9'], 32, (id) => tokens.get(id) ?? id)
    for (const key of keys.slice(0, 2000)) {
      expect(b.preferenceList(key, 3)).toEqual(
        a.preferenceList(key, 3).map((m) => (m === 'n3' ? 'n9' : m)),
      )
    }
    expect(() => new HashRing(['n1', 'n3', 'n9'], 8, (id) => tokens.get(id) ?? id)).toThrow(
      /tokens/,
    )
  })
})

describe('AntiEntropyIndex.reassign', () => {
  it('files every key under its new replica set, as an index built afresh would', async () => {
    const { AntiEntropyIndex } = await import('../src/leaderless/anti-entropy.js')
    const state = (i: number) => ({
      vector: { a: i + 1 },
      siblings: [
        {
          dot: { node: 'a', counter: i + 1 },
          value: { value: i, hlc: { wallMs: i, logical: 0, node: 'a' } },
        },
      ],
    })
    const before = new RingPlacement(five, 3, 64)
    const after = new RingPlacement(
      planAdvance(ringOf(planJoin(five, member('n6', 7006), 0))),
      3,
      64,
    )
    const index = new AntiEntropyIndex(6)
    const fresh = new AntiEntropyIndex(6)
    for (const [i, key] of keys.slice(0, 2000).entries()) {
      index.update(before.read.replicaSet(key, 3), key, state(i))
      fresh.update(after.read.replicaSet(key, 3), key, state(i))
    }
    index.reassign((key) => after.read.replicaSet(key, 3))
    const sets = new Set(keys.slice(0, 2000).map((k) => after.read.replicaSet(k, 3)))
    for (const set of sets) {
      expect(index.root(set)).toBe(fresh.root(set))
      expect(index.keyCount(set)).toBe(fresh.keyCount(set))
      expect(index.leafDigests(set)).toEqual(fresh.leafDigests(set))
    }
    expect(index.size).toBe(2000)
  })
})
