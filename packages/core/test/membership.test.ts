import {
  ReplicaCore,
  type CoreConfig,
  type CoreEntry,
  type CoreInit,
  type CoreMembership,
  type Message,
} from '../src/index.js'
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

/**
 * Cores with durable logs (entries persist at once), every stream up and every message
 * delivered, the leader's disk loads served: enough to see who can win and commit.
 */
class Cluster {
  readonly disks = new Map<string, CoreEntry[]>()
  constructor(readonly cores: Record<string, ReplicaCore>) {
    for (const [id, c] of Object.entries(cores)) {
      this.disks.set(id, [])
      for (const other of Object.keys(cores)) if (other !== id) c.peerConnected(other)
    }
  }

  withLog(id: string, entries: CoreEntry[]): this {
    this.disks.set(id, [...entries])
    return this
  }

  run(ticks: number, until: () => boolean = () => false): void {
    for (let t = 0; t < ticks && !until(); t++) {
      for (const c of Object.values(this.cores)) c.tick()
      this.pump()
    }
  }

  private pump(): void {
    for (let round = 0; round < 50; round++) {
      let moved = false
      for (const [id, c] of Object.entries(this.cores)) {
        if (!c.hasReady()) continue
        const ready = c.takeReady()
        const disk = this.disks.get(id) as CoreEntry[]
        if (ready.truncateAfter !== null) disk.length = Math.min(disk.length, ready.truncateAfter)
        disk.push(...ready.entries)
        const last = ready.entries[ready.entries.length - 1]
        if (last) c.persisted(last.lsn, last.epoch)
        for (const load of ready.loads) {
          c.entriesLoaded(load.to, disk.slice(load.fromLsn - 1))
          moved = true
        }
        for (const m of [...ready.sendNow, ...ready.sendAfterPersist]) {
          this.cores[m.to]?.step(m)
          moved = true
        }
      }
      if (!moved) return
    }
  }
}

function configEntry(lsn: number, epoch: number, membership: CoreMembership): CoreEntry {
  return { lsn, epoch, data: noop, membership }
}

describe('campaigning across configurations', () => {
  it('a voter whose removal is in its log but not committed still campaigns, and commits it', () => {
    // The leader n2 removed n1 ({n2,n3}, LSN 1, committed) and then itself ({n3}, LSN 2, on
    // n2 only), and crashed. n2 alone holds LSN 2: n3 cannot win without n2's vote, which n2
    // refuses (n3's log is behind), and n1 is no voter to either. Only n2 can move on: it
    // campaigns, counting the voters of {n3} (not itself), commits LSN 2 with an entry of its
    // own epoch, and steps down; n3, the only voter left, leads.
    const c1 = { voters: ['n2', 'n3'], learners: [] }
    const c2 = { voters: ['n3'], learners: [] }
    const seed = { voters: ['n1', 'n2', 'n3'], learners: [] }
    const log = [configEntry(1, 1, c1), configEntry(2, 1, c2)]
    const cluster = new Cluster({
      n1: core('n1', {}),
      n2: core('n2', {
        lastLsn: 2,
        lastEpoch: 1,
        memberships: [
          { lsn: 0, membership: seed },
          { lsn: 1, membership: c1 },
          { lsn: 2, membership: c2 },
        ],
      }),
      n3: core('n3', {
        commitLsn: 1,
        lastLsn: 1,
        lastEpoch: 1,
        memberships: [{ lsn: 1, membership: c1 }],
      }),
    })
      .withLog('n2', log)
      .withLog('n3', log.slice(0, 1))
    const { n2, n3 } = cluster.cores as Record<string, ReplicaCore>
    expect(n2!.isVoter('n2')).toBe(false)
    cluster.run(200, () => n3!.isLeader)
    expect(n3!.isLeader).toBe(true)
    expect(n3!.committedMembershipLsn).toBe(2)
    expect(n2!.isLeader).toBe(false)
  })
})

describe('vote requests across configurations', () => {
  it('a voter answers a candidate its own (older) configuration does not name yet', () => {
    // n1 led {n1} + learners, promoted n2 (LSN 2), added and promoted n3 (LSN 3, 4; LSN 4
    // committed by n1 and n3), then proposed its own removal {n2,n3} (LSN 5, on n1 and n3).
    // n2 missed LSN 4 and 5: to it n3 is a learner. n3 holds the newest log and needs n2's
    // vote; n2's own configuration {n1,n2} needs n1's, which n1 refuses (n2's log is behind);
    // n1's {n2,n3} needs n3's. If n2 dropped n3's request for not being a voter in n2's
    // configuration, nobody could ever win. Raft servers answer RequestVote without consulting
    // their configuration; the candidate's configuration decides whose vote counts.
    const c = (lsn: number, voters: string[], learners: string[] = []) =>
      configEntry(lsn, 1, { voters, learners })
    const log = [
      c(1, ['n1'], ['n2']),
      c(2, ['n1', 'n2']),
      c(3, ['n1', 'n2'], ['n3']),
      c(4, ['n1', 'n2', 'n3']),
      c(5, ['n2', 'n3']),
    ]
    const at = (e: CoreEntry) => ({ lsn: e.lsn, membership: e.membership as CoreMembership })
    const init = (last: number, commit: number) => ({
      commitLsn: commit,
      lastLsn: last,
      lastEpoch: 1,
      memberships: log.slice(commit - 1, last).map(at),
    })
    const cluster = new Cluster({
      // Election timeouts apart, so that no two candidates split the votes forever.
      n1: core('n1', init(5, 4), { members: ['n1'], random: () => 0 }),
      n2: core('n2', init(3, 3), { members: ['n1'], random: () => 0.3 }),
      n3: core('n3', init(5, 4), { members: ['n1'], random: () => 0.6 }),
    })
      .withLog('n1', log)
      .withLog('n2', log.slice(0, 3))
      .withLog('n3', log)
    const { n2, n3 } = cluster.cores as Record<string, ReplicaCore>
    expect(n2!.isVoter('n3')).toBe(false)
    cluster.run(300, () => n2!.committedMembershipLsn === 5 && n3!.committedMembershipLsn === 5)
    expect(n2!.committedMembershipLsn).toBe(5)
    expect(n3!.committedMembershipLsn).toBe(5)
    const leader = Object.values(cluster.cores).find((x) => x.isLeader)
    expect(['n2', 'n3']).toContain(leader?.id)
  })
})

describe('snapshots a follower does not need', () => {
  function follower(): ReplicaCore {
    // Entries 1..10 of epoch 1, committed up to 5, following n1 at epoch 1 (a probe found
    // them all matching n1's log).
    const n2 = core('n2', { epoch: 1, commitLsn: 5, lastLsn: 10, lastEpoch: 1 })
    n2.step({
      type: 'append',
      from: 'n1',
      to: 'n2',
      epoch: 1,
      prevLsn: 10,
      prevEpoch: 1,
      entries: [],
      commitLsn: 5,
      leaderLastLsn: 10,
    })
    n2.takeReady()
    return n2
  }

  it('refuses a snapshot its log already holds: installing it would drop entries it acknowledged', () => {
    // The leader went back on a stale refusal and sent its committed state (LSN 7); this node
    // holds entry 7 of the same epoch and may have acknowledged up to 10, counted toward the
    // majority. Replacing the log would lose them; the leader probes instead.
    const n2 = follower()
    expect(n2.snapshotOffered('n1', 1, { lsn: 7, epoch: 1 })).toBe(false)
    // Its commit LSN may then move up to 10, past the snapshot's LSN: installing it later
    // would have broken the core's invariant (commit LSN above the snapshot's) and crashed it.
    // Below its commit LSN: nothing to gain either.
    expect(n2.snapshotOffered('n1', 1, { lsn: 4, epoch: 1 })).toBe(false)
    // A snapshot past its log, or whose last entry it holds from another epoch, it takes.
    expect(n2.snapshotOffered('n1', 1, { lsn: 12, epoch: 1 })).toBe(true)
    expect(follower().snapshotOffered('n1', 1, { lsn: 8, epoch: 2 })).toBe(true)
  })

  it('tells the leader it installed a snapshot again with each heartbeat until an append arrives', () => {
    // The leader sends nothing but heartbeats to a follower it owes a snapshot, and leaves that
    // state on the follower's append acknowledgement only: sent once, a lossy link could drop it
    // and leave the follower without entries for good.
    const n2 = core('n2', { epoch: 1, commitLsn: 2, lastLsn: 3, lastEpoch: 1 })
    const heartbeat = {
      type: 'heartbeat',
      from: 'n1',
      to: 'n2',
      epoch: 1,
      commitLsn: 2,
      leaderLastLsn: 20,
    } as const
    n2.step(heartbeat)
    expect(n2.snapshotOffered('n1', 1, { lsn: 12, epoch: 1 })).toBe(true)
    n2.awaitSnapshot()
    n2.snapshotInstalled(12, 1, null)
    n2.takeReady() // its acknowledgement, lost
    const acks = () =>
      n2.takeReady().sendAfterPersist.filter((m) => m.type === 'appendAck' && m.matchLsn === 12)
    n2.step(heartbeat)
    expect(acks()).toHaveLength(1)
    n2.step(heartbeat)
    expect(acks()).toHaveLength(1)
    // The leader replicates again: that was heard.
    n2.step({ ...heartbeat, type: 'append', prevLsn: 12, prevEpoch: 1, entries: [] })
    n2.takeReady()
    n2.step(heartbeat)
    expect(acks()).toHaveLength(0)
  })

  it('refusing a snapshot whose last entry it holds, tells the leader how far its log matches', () => {
    // The leader believes this node matches up to 5 only, and cannot probe below its own log
    // start: unless the refusal says the log matches up to the snapshot's LSN (it holds that
    // entry, so it holds the leader's log up to there), the leader would offer it again forever.
    const n2 = core('n2', { epoch: 1, commitLsn: 5, lastLsn: 10, lastEpoch: 1 })
    n2.step({ type: 'heartbeat', from: 'n1', to: 'n2', epoch: 1, commitLsn: 5, leaderLastLsn: 12 })
    n2.takeReady()
    expect(n2.snapshotOffered('n1', 1, { lsn: 8, epoch: 1 })).toBe(false)
    const acks = n2.takeReady().sendAfterPersist.filter((m) => m.type === 'appendAck')
    expect(acks).toMatchObject([{ to: 'n1', matchLsn: 8, reject: false }])
  })
})
