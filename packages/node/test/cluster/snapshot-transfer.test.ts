/**
 * A snapshot transfer in process, between two real LevelDB stores in a temporary directory:
 * the sender's chunks go straight to the receiver (the "link" is a list), so chunking, the
 * digest check and every refusal can be seen without sockets.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pino } from 'pino'
import { ReplicaCore } from '@kvstore/core'
import { EntryKind, OpType, type Frame, type LogEntry } from '@kvstore/protocol'
import { Store } from '@kvstore/storage'
import { SnapshotReceiver } from '../../src/cluster/snapshot-receiver.js'
import { SnapshotSender } from '../../src/cluster/snapshot-sender.js'

const logger = pino({ level: 'silent' })

let root: string
const stores: Store[] = []

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'kv-snapshot-transfer-'))
})

afterEach(async () => {
  for (const store of stores.splice(0)) await store.close()
  await rm(root, { recursive: true, force: true })
})

async function openStore(name: string): Promise<Store> {
  const store = await Store.open({ dir: join(root, name), nodeId: name, fsync: false })
  stores.push(store)
  if (store.meta.epoch < 1) await store.setHardState({ epoch: 1 })
  return store
}

/** A leader store holding `keys` keys (committed), written in entries of 10 puts. */
async function leaderWith(keys: number): Promise<Store> {
  const store = await openStore('a')
  for (let lsn = 1; lsn * 10 <= keys; lsn++) {
    const ops = Array.from({ length: 10 }, (_, i) => ({
      type: OpType.Put,
      key: Buffer.from(`key-${String((lsn - 1) * 10 + i).padStart(5, '0')}`),
      value: Buffer.alloc(50, lsn),
    }))
    const entry: LogEntry = {
      epoch: 1,
      lsn,
      kind: EntryKind.Batch,
      ops,
      timestampMs: 1_700_000_000_000 + lsn,
      requestId: '',
    }
    await store.append([entry], { commitLsn: lsn })
  }
  return store
}

function core(id: string): ReplicaCore {
  return new ReplicaCore(
    {
      id,
      members: ['a', 'b', 'c'],
      heartbeatTicks: 1,
      probeTimeoutTicks: 3,
      appendEntriesMax: 16,
      appendBytesMax: 1024,
      inflightAppendsMax: 4,
      inflightBytesMax: 4096,
      logCacheBytesMax: 1 << 20,
    },
    {
      epoch: 1,
      vote: '',
      commitLsn: 0,
      lastLsn: 0,
      lastEpoch: 0,
      logStartLsn: 1,
      compactedEpoch: 0,
      epochRuns: [],
    },
  )
}

/** A sender on `leader` whose frames are collected, and what it reported. */
function sender(leader: Store, chunkBytesMax: number, sendOk = () => true) {
  const frames: Frame[] = []
  const failed: string[] = []
  const snapshotSender = new SnapshotSender({
    openSnapshot: () => leader.openSnapshot(),
    self: 'a',
    epoch: () => 1,
    chunkBytesMax,
    send: (_to, frame) => {
      if (!sendOk()) return false
      frames.push(frame)
      return true
    },
    drained: () => Promise.resolve(),
    onFailed: (to) => failed.push(to),
    logger,
  })
  return { snapshotSender, frames, failed }
}

/** A receiver on `follower` (core `followerCore`), and what it did to the link. */
function receiver(follower: Store, followerCore: ReplicaCore) {
  const resets: string[] = []
  const refusals: string[] = []
  let badFrames = 0
  const snapshotReceiver = new SnapshotReceiver({
    store: follower,
    core: followerCore,
    link: { setReading: () => {}, reset: (_peer, reason) => resets.push(reason) },
    security: { onRefused: (reason) => refusals.push(reason) },
    logger,
    onChange: () => {},
    onBadFrame: () => badFrames++,
    stopped: () => false,
    installedMembership: () => null,
  })
  return { snapshotReceiver, resets, refusals, badFrames: () => badFrames }
}

async function deliver(to: SnapshotReceiver, frames: Frame[], from = 'a'): Promise<void> {
  for (const frame of frames) to.receive(from, frame)
  await to.idle()
}

function chunkBody(frame: Frame) {
  if (frame.body.kind !== 'snapshotChunk') throw new Error('not a chunk')
  return frame.body
}

describe('snapshot transfer between two stores', () => {
  it('ships the state in chunks; the follower installs it with the same digest', async () => {
    const leader = await leaderWith(300)
    const follower = await openStore('b')
    const followerCore = core('b')
    const { snapshotSender, frames, failed } = sender(leader, 2000)
    await snapshotSender.send('b')
    expect(failed).toEqual([])
    expect(snapshotSender.sent).toBe(1)
    // 300 records of ~70 bytes, 2000 bytes a chunk: several chunks, in sequence.
    expect(frames.length).toBeGreaterThan(5)
    expect(frames.map((f) => chunkBody(f).sequence)).toEqual(frames.map((_, i) => i))
    expect(frames.map((f) => chunkBody(f).last)).toEqual(
      frames.map((_, i) => i === frames.length - 1),
    )
    const last = chunkBody(frames[frames.length - 1] as Frame)
    expect(last.snapshotLsn).toBe(30)
    // The digest the sender computed is the storage's own digest of that state.
    expect(last.digest).toBe((await leader.digest()).digest)

    const { snapshotReceiver, resets, badFrames } = receiver(follower, followerCore)
    await deliver(snapshotReceiver, frames)
    expect(resets).toEqual([])
    expect(badFrames()).toBe(0)
    expect(snapshotReceiver.installed).toBe(1)
    expect(follower.appliedLsn).toBe(30)
    expect((await follower.digest()).digest).toBe(last.digest)
    expect(followerCore.commitLsn).toBe(30)
    expect(followerCore.leaderId).toBe('a')
  })

  it('refuses a copy whose digest does not match, and waits for a new snapshot', async () => {
    const leader = await leaderWith(50)
    const follower = await openStore('b')
    const followerCore = core('b')
    const { snapshotSender, frames } = sender(leader, 1 << 20)
    await snapshotSender.send('b')
    const last = chunkBody(frames[frames.length - 1] as Frame)
    last.digest = '0'.repeat(64)
    const { snapshotReceiver, resets } = receiver(follower, followerCore)
    await deliver(snapshotReceiver, frames)
    expect(snapshotReceiver.installed).toBe(0)
    expect(resets).toEqual(['snapshot digest mismatch'])
    expect(follower.isInstallingSnapshot).toBe(true)
    expect(followerCore.commitLsn).toBe(0)
    // The same snapshot sent again from the start is taken.
    const again = sender(leader, 1 << 20)
    await again.snapshotSender.send('b')
    await deliver(snapshotReceiver, again.frames)
    expect(snapshotReceiver.installed).toBe(1)
    expect((await follower.digest()).digest).toBe((await leader.digest()).digest)
  })

  it('refuses a snapshot from a member that is not the leader it follows', async () => {
    const leader = await leaderWith(20)
    const follower = await openStore('b')
    const followerCore = core('b')
    followerCore.becomeFollower(1, 'c')
    const { snapshotSender, frames } = sender(leader, 1 << 20)
    await snapshotSender.send('b')
    const { snapshotReceiver, resets, refusals, badFrames } = receiver(follower, followerCore)
    await deliver(snapshotReceiver, frames, 'a')
    expect(snapshotReceiver.installed).toBe(0)
    expect(refusals).toEqual(['bad_frame'])
    expect(resets).toEqual(['snapshot failed'])
    expect(badFrames()).toBe(1)
    expect(follower.isInstallingSnapshot).toBe(false) // nothing was touched
  })

  it('refuses a snapshot of a later epoch than it was sent at', async () => {
    const leader = await leaderWith(20)
    const follower = await openStore('b')
    const { snapshotSender, frames } = sender(leader, 1 << 20)
    await snapshotSender.send('b')
    const later = frames.map((f) => ({ ...f, body: { ...chunkBody(f), snapshotEpoch: 2 } }))
    const r = receiver(follower, core('b'))
    await deliver(r.snapshotReceiver, later)
    expect(r.refusals).toEqual(['bad_frame'])
    expect(r.snapshotReceiver.installed).toBe(0)
  })

  it('refuses chunks out of order and abandons the install', async () => {
    const leader = await leaderWith(100)
    const follower = await openStore('b')
    const followerCore = core('b')
    const { snapshotSender, frames } = sender(leader, 1000)
    await snapshotSender.send('b')
    expect(frames.length).toBeGreaterThan(3)
    const { snapshotReceiver, resets } = receiver(follower, followerCore)
    await deliver(snapshotReceiver, [frames[0] as Frame, frames[2] as Frame, ...frames.slice(3)])
    expect(resets[0]).toBe('snapshot failed')
    expect(snapshotReceiver.installed).toBe(0)
    expect(follower.isInstallingSnapshot).toBe(true)
    // The rest of that transfer is refused too: only a new first chunk starts over.
    expect(resets.length).toBe(frames.length - 2)
  })

  it('a sender whose stream is gone reports the failure; one asked again sends afresh', async () => {
    const leader = await leaderWith(100)
    const broken = sender(leader, 1000, () => false)
    await broken.snapshotSender.send('b')
    expect(broken.failed).toEqual(['b'])
    expect(broken.snapshotSender.sent).toBe(0)

    const twice = sender(leader, 1000)
    const first = twice.snapshotSender.send('b')
    expect(twice.snapshotSender.isSending('b')).toBe(true)
    await twice.snapshotSender.send('b') // asked again while the first runs
    await first
    // The core is told once the first ends, so that it asks for a fresh snapshot.
    expect(twice.failed).toEqual(['b'])
    expect(twice.snapshotSender.sent).toBe(1)
  })
})
