import {
  allLsn,
  isMajority,
  majority,
  majorityLsn,
  NotLeaderError,
  type AppendMessage,
} from '../src/index.js'
import { Harness } from './harness.js'

describe('quorum arithmetic', () => {
  it.each([
    [1, 1],
    [2, 2],
    [3, 2],
    [4, 3],
    [5, 3],
  ])('majority of %i is %i', (members, needed) => {
    expect(majority(members)).toBe(needed)
    expect(isMajority(needed, members)).toBe(true)
    expect(isMajority(needed - 1, members)).toBe(false)
  })

  it('majorityLsn and allLsn', () => {
    expect(majorityLsn([10, 3, 7])).toBe(7)
    expect(majorityLsn([10, 3, 7, 9, 1])).toBe(7)
    expect(majorityLsn([5])).toBe(5)
    expect(majorityLsn([10, 3, 7, 9])).toBe(7)
    expect(allLsn([10, 3, 7])).toBe(3)
  })
})

function cluster(config?: ConstructorParameters<typeof Harness>[1]): Harness {
  const h = new Harness(['a', 'b', 'c'], config)
  h.node('a').core.becomeLeader()
  h.node('b').core.becomeFollower(1, 'a')
  h.node('c').core.becomeFollower(1, 'a')
  h.connect('a')
  return h
}

// The step-by-step replication scenarios are text traces: testdata/replication.txt (trace.test.ts).
describe('replication', () => {
  it('a leader restarted at a new epoch makes followers drop entries it lost', () => {
    const h = cluster()
    h.propose('a', 3)
    // Entries 4 and 5 reached the followers (they were durable on the leader), then the
    // leader's disk lost them (fsync off and a power cut). It restarts at epoch 2.
    h.propose('a', 2, 'lost')
    expect(h.log('b')).toHaveLength(5)
    for (const id of ['b', 'c']) h.node('a').core.peerDisconnected(id)
    const leader = h.restart('a', { keep: 3, epoch: 2 }).core
    leader.becomeLeader()
    h.connect('a')
    h.propose('a', 3, 'new')
    expect(h.log('b')).toEqual(h.log('a'))
    expect(h.log('c')).toEqual(h.log('a'))
    expect(h.log('a')).toEqual(['v-1', 'v-2', 'v-3', 'new-4', 'new-5', 'new-6'])
  })

  it('a follower whose state is being replaced refuses appends and gets a snapshot', () => {
    const h = cluster()
    h.propose('a', 10)
    const follower = h.node('c')
    // The node began installing a snapshot, or an install broke off: its state is partial.
    follower.core.awaitSnapshot()
    const diskBefore = follower.disk.length
    h.propose('a', 5)
    const asked = h.delivered.filter(
      (m) => m.type === 'appendAck' && m.from === 'c' && m.reject && m.hintLsn === 0,
    )
    expect(asked.length).toBeGreaterThan(0)
    expect(follower.snapshotLsn).toBeGreaterThanOrEqual(10)
    expect(follower.disk.length).toBeLessThanOrEqual(diskBefore)
    h.propose('a', 2)
    expect(follower.core.lastLsn).toBe(17)
    expect(h.node('a').core.allMatchLsn()).toBe(17)
  })

  it('a follower that installs a snapshot before it knows the leader reports it with the next heartbeat', () => {
    const h = cluster({ logCacheBytesMax: 64 })
    h.node('a').core.peerDisconnected('c')
    h.propose('a', 30)
    const leader = h.node('a')
    leader.core.compacted(21, 1)
    leader.disk = leader.disk.filter((e) => e.lsn >= 21)
    leader.diskStart = 21
    // c restarts: it has not heard from any leader when the snapshot lands.
    const restarted = h.restart('c')
    expect(restarted.core.leaderId).toBeNull()
    leader.core.peerConnected('c')
    h.process()
    expect(restarted.snapshotLsn).toBeGreaterThanOrEqual(20)
    // Entries written after the snapshot reach it once the leader learns its match.
    h.propose('a', 3, 'after', false)
    h.persistLeader('a')
    h.tick(3)
    expect(h.node('c').core.lastLsn).toBe(33)
    expect(leader.core.allMatchLsn()).toBe(33)
  })

  it('takes a snapshot only from a member it would take an append from', () => {
    const h = cluster()
    h.propose('a', 3)
    const c = h.node('c').core
    // Another member at the epoch of the leader c follows: refused, c still follows a.
    expect(c.snapshotOffered('b', 1)).toBe(false)
    expect(c.leaderId).toBe('a')
    // The leader it follows: taken. Itself, a stranger, an older epoch: refused.
    expect(c.snapshotOffered('a', 1)).toBe(true)
    expect(c.snapshotOffered('c', 1)).toBe(false)
    expect(c.snapshotOffered('x', 1)).toBe(false)
    c.becomeFollower(2, null)
    expect(c.snapshotOffered('a', 1)).toBe(false)
    // No leader known at this epoch: the sender becomes the leader, and then no one else.
    expect(c.snapshotOffered('b', 2)).toBe(true)
    expect(c.leaderId).toBe('b')
    expect(c.snapshotOffered('a', 2)).toBe(false)
    // A later epoch: followed at once, as an append would be; a bomb is not.
    expect(c.snapshotOffered('a', 3)).toBe(true)
    expect([c.epoch, c.leaderId]).toEqual([3, 'a'])
    expect(c.snapshotOffered('b', 2 ** 53 - 1)).toBe(false)
    expect(c.epoch).toBe(3)
    // A leader never takes one.
    expect(h.node('a').core.snapshotOffered('b', 1)).toBe(false)
    expect(h.node('a').core.isLeader).toBe(true)
  })

  it('a follower that follows another leader refuses its snapshot (a member with a bug)', () => {
    const h = cluster({ logCacheBytesMax: 64 })
    h.node('a').core.peerDisconnected('c')
    h.propose('a', 30)
    const leader = h.node('a')
    leader.core.compacted(21, 1)
    leader.disk = leader.disk.filter((e) => e.lsn >= 21)
    leader.diskStart = 21
    // c believes b leads epoch 1 (impossible with members that follow the protocol).
    h.node('c').core.becomeFollower(1, 'b')
    leader.core.peerConnected('c')
    h.process()
    expect(h.snapshotsRefused).toBeGreaterThan(0)
    expect(h.node('c').snapshotLsn).toBe(0)
  })

  it('sends a snapshot to an empty follower once the log no longer starts at 1', () => {
    // A cache too small to hold the old entries, as on a busy leader.
    const h = cluster({ logCacheBytesMax: 64 })
    h.node('a').core.peerDisconnected('c')
    h.propose('a', 30)
    const leader = h.node('a')
    leader.core.compacted(21, 1)
    leader.disk = leader.disk.filter((e) => e.lsn >= 21)
    leader.diskStart = 21
    // c never had a single entry: its next LSN is 1, before the log start.
    expect(h.log('c')).toEqual([])
    leader.core.peerConnected('c')
    h.process()
    expect(h.node('c').snapshotLsn).toBeGreaterThanOrEqual(20)
    expect(h.node('c').core.lastLsn).toBe(30)
  })

  it('never has more appends in flight than the window allows', () => {
    const h = cluster({ inflightAppendsMax: 2, appendEntriesMax: 1 })
    // Followers take entries but their disks stall: nothing is acknowledged.
    h.autoPersist = false
    h.propose('a', 20)
    const appendsTo = (id: string) =>
      h.delivered.filter(
        (m): m is AppendMessage => m.type === 'append' && m.to === id && m.entries.length > 0,
      ).length
    expect(appendsTo('b')).toBe(2)
    expect(appendsTo('c')).toBe(2)
    // Each durable acknowledgement frees the window for more, until everything is there.
    for (let i = 0; i < 20 && h.log('b').length < 20; i++) h.flushDisks()
    expect(h.log('b')).toEqual(h.log('a'))
  })

  it('never has more bytes in flight than the window allows', () => {
    const h = cluster({ inflightAppendsMax: 100, appendEntriesMax: 1, inflightBytesMax: 20 })
    h.autoPersist = false
    h.propose('a', 20)
    const inFlight = h.delivered.filter(
      (m): m is AppendMessage => m.type === 'append' && m.to === 'b' && m.entries.length > 0,
    )
    const bytes = inFlight.map((m) => m.entries.reduce((sum, e) => sum + e.data.length, 0))
    // A new append starts only while fewer than 20 bytes are in flight.
    expect(bytes.slice(0, -1).reduce((a, b) => a + b, 0)).toBeLessThan(20)
    expect(bytes.reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(20)
  })

  it('refuses proposals on a follower', () => {
    const h = cluster()
    expect(() => h.node('b').core.nextSlot()).toThrow(NotLeaderError)
    expect(() => h.node('b').core.nextSlot()).toThrow(/the leader is a/)
  })

  it('refuses a lower epoch and tells the sender the current one', () => {
    const h = cluster()
    h.node('b').core.becomeFollower(5, null)
    h.propose('a', 1)
    const refusal = h.delivered.find(
      (m) => m.type === 'appendAck' && m.from === 'b' && m.reject && m.epoch === 5,
    )
    expect(refusal).toBeDefined()
    // The old leader steps down when it hears the higher epoch.
    expect(h.node('a').core.isLeader).toBe(false)
    expect(h.node('a').core.epoch).toBe(5)
  })

  it('a node that leads again uses the streams already up, without waiting for a reconnect', () => {
    const h = cluster()
    h.propose('a', 2)
    h.node('b').core.becomeFollower(5, null)
    h.propose('a', 1, 'refused')
    expect(h.node('a').core.isLeader).toBe(false)
    // The streams stay up; the node moves past epoch 5 and leads again.
    const a = h.node('a').core
    a.setEpoch(6)
    a.becomeLeader()
    h.process()
    // Its followers hear of epoch 6 at once, before any new write.
    expect(h.node('b').core.epoch).toBe(6)
    expect(h.node('c').core.epoch).toBe(6)
    h.propose('a', 2, 'again')
    expect(h.log('b')).toEqual(h.log('a'))
    expect(h.log('c')).toEqual(h.log('a'))
    expect(a.commitLsn).toBe(5)
  })

  it('a follower replaces an uncommitted tail from an older epoch with the leader log', () => {
    // b holds three entries of epoch 1 that nobody else has; a leads epoch 2 with its own
    // four entries. a starts probing after its last entry, as a new leader does, so b must
    // notice that its entry 3 is of another epoch (the log matching check) and go back.
    const h = new Harness(
      ['a', 'b', 'c'],
      {},
      {
        a: [
          [2, 'new-1'],
          [2, 'new-2'],
          [2, 'new-3'],
          [2, 'new-4'],
        ],
        b: [
          [1, 'stale-1'],
          [1, 'stale-2'],
          [1, 'stale-3'],
        ],
      },
    )
    h.node('a').core.becomeLeader()
    h.node('b').core.becomeFollower(2, 'a')
    h.node('c').core.becomeFollower(2, 'a')
    h.connect('a')
    h.tick(3)
    expect(h.log('b')).toEqual(['new-1', 'new-2', 'new-3', 'new-4'])
    expect(h.log('c')).toEqual(h.log('a'))
    const rejects = h.delivered.filter((m) => m.type === 'appendAck' && m.from === 'b' && m.reject)
    expect(rejects.length).toBeGreaterThanOrEqual(2)
  })

  it('a new leader does not commit older-epoch entries by counting replicas', () => {
    // a and b hold entries of epoch 1 that were never committed; a now leads epoch 2.
    const old: [number, string][] = [
      [1, 'old-1'],
      [1, 'old-2'],
      [1, 'old-3'],
    ]
    const h = new Harness(['a', 'b', 'c'], {}, { a: old, b: old })
    h.node('a').core.setEpoch(2)
    h.node('a').core.becomeLeader()
    h.node('b').core.becomeFollower(2, 'a')
    h.node('c').core.becomeFollower(2, 'a')
    h.connect('a')
    h.tick(3)
    // A majority holds entry 3, but it is from epoch 1: counting replicas does not commit it.
    expect(h.node('a').core.matchOf('b')).toBe(3)
    expect(h.node('a').core.commitLsn).toBe(0)
    // Once an entry of the leader's own epoch reaches a majority, everything before commits.
    h.propose('a', 1, 'new')
    h.persistLeader('a')
    h.process()
    expect(h.node('a').core.commitLsn).toBe(4)
  })
})
