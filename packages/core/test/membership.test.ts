import { ReplicaCore, type CoreConfig, type CoreInit, type Message } from '../src/index.js'
import { testConfig } from './harness.js'

const noop = new Uint8Array([0])

function core(id: string, init: Partial<CoreInit>, config: Partial<CoreConfig> = {}): ReplicaCore {
  return new ReplicaCore(
    {
      ...testConfig,
      id,
      members: ['n1', 'n2', 'n3'],
      electionTicks: 10,
      random: () => 0,
      makeNoop: () => noop,
      ...config,
    },
    {
      epoch: 1,
      vote: '',
      commitLsn: 0,
      logStartLsn: 1,
      compactedEpoch: 0,
      lastLsn: 0,
      lastEpoch: 0,
      ...init,
    },
  )
}

describe('membership changes', () => {
  it('a lone voter that wins by its own vote sends nothing at its new epoch before that epoch is durable', () => {
    // n1 is the only voter; n2 a learner it replicates to. Its election asks nobody, so no
    // vote request (sent only after persistence) proves the new epoch durable: a crash before
    // the write would restart it at the old epoch, free to lead the new one again with a
    // different log, while n2 holds entries of the first.
    const n1 = core('n1', {
      epoch: 1,
      commitLsn: 1,
      lastLsn: 1,
      lastEpoch: 1,
      memberships: [{ lsn: 1, membership: { voters: ['n1'], learners: ['n2'] } }],
    })
    n1.peerConnected('n2')
    for (let i = 0; i < 30 && !n1.isLeader; i++) n1.tick()
    expect(n1.isLeader).toBe(true)
    expect(n1.epoch).toBe(2)
    const atNewEpoch = (ms: Message[]) => ms.filter((m) => m.epoch >= 2)
    const first = n1.takeReady()
    expect(first.hardState).toMatchObject({ epoch: 2, vote: 'n1' })
    expect(atNewEpoch(first.sendNow)).toEqual([])
    expect(atNewEpoch(first.sendAfterPersist).length).toBeGreaterThan(0)
    // Later Readies too, until the node reports an entry of epoch 2 durable (written after
    // the hard state): their messages wait for every earlier write.
    for (let i = 0; i < 5; i++) n1.tick()
    const second = n1.takeReady()
    expect(atNewEpoch(second.sendNow)).toEqual([])
    expect(atNewEpoch(second.sendAfterPersist).length).toBeGreaterThan(0)
    const noopEntry = first.entries[0]
    expect(noopEntry).toMatchObject({ lsn: 2, epoch: 2 })
    n1.persisted(2, 2)
    for (let i = 0; i < 5; i++) n1.tick()
    expect(atNewEpoch(n1.takeReady().sendNow).length).toBeGreaterThan(0)
  })
})

describe('votes across configurations', () => {
  it('a member promoted by an entry it has not received yet still votes for a candidate that counts it', () => {
    // n3 was the only voter, added n4 as a learner (LSN 1) and promoted it (LSN 2): the
    // promotion is in effect on n3, so n3 needs n4's vote, but n4 never got that entry and
    // still sees itself as a learner. Refusing would leave no one able to win, ever: n3
    // cannot win without n4, and nobody else is a voter. The candidate decides whose vote
    // counts (its configuration); the voter only checks the candidate's log and its own vote.
    const learnerConfig = { lsn: 1, membership: { voters: ['n3'], learners: ['n4'] } }
    const n3 = core(
      'n3',
      {
        epoch: 1,
        commitLsn: 1,
        lastLsn: 2,
        lastEpoch: 1,
        memberships: [
          learnerConfig,
          { lsn: 2, membership: { voters: ['n3', 'n4'], learners: [] } },
        ],
      },
      { members: ['n3'] },
    )
    const n4 = core(
      'n4',
      { epoch: 1, commitLsn: 1, lastLsn: 1, lastEpoch: 1, memberships: [learnerConfig] },
      { members: ['n3'] },
    )
    expect(n4.isVoter('n4')).toBe(false)
    const nodes = { n3, n4 } as Record<string, ReplicaCore>
    // n3's durable log, read back when its cache does not hold what n4 needs.
    const disk = [
      { lsn: 1, epoch: 1, data: noop, membership: learnerConfig.membership },
      { lsn: 2, epoch: 1, data: noop, membership: { voters: ['n3', 'n4'], learners: [] } },
    ]
    n3.peerConnected('n4')
    n4.peerConnected('n3')
    const pump = () => {
      for (let round = 0; round < 20; round++) {
        let moved = false
        for (const c of Object.values(nodes)) {
          if (!c.hasReady()) continue
          const ready = c.takeReady()
          const last = ready.entries[ready.entries.length - 1]
          if (last) c.persisted(last.lsn, last.epoch)
          for (const load of ready.loads) {
            c.entriesLoaded(load.to, disk.slice(load.fromLsn - 1))
            moved = true
          }
          for (const m of [...ready.sendNow, ...ready.sendAfterPersist]) {
            nodes[m.to]?.step(m)
            moved = true
          }
        }
        if (!moved) return
      }
    }
    for (let i = 0; i < 40 && !n3.isLeader; i++) {
      n3.tick()
      n4.tick()
      pump()
    }
    expect(n3.isLeader).toBe(true)
    expect(n4.votedFor).toBe('n3')
    // The new leader brings n4 the promotion; n4 then sees itself a voter.
    for (let i = 0; i < 10; i++) {
      n3.tick()
      n4.tick()
      pump()
    }
    expect(n4.isVoter('n4')).toBe(true)
    expect(n3.commitLsn).toBeGreaterThanOrEqual(3)
  })
})
