/**
 * The replicator's message <-> frame translation, in process: every message kind survives the
 * trip through a frame and the wire codec, and an append whose entries do not fit is refused
 * before the core sees it.
 */
import type { CoreEntry, Message } from '@kvstore/core'
import {
  EntryKind,
  KvError,
  decodeFrame,
  encodeFrame,
  encodeLogEntry,
  type Frame,
  type MemberState,
} from '@kvstore/protocol'
import { frameOfMessage, messageOfFrame, type FrameContext } from '../../src/cluster/frames.js'

const members: MemberState[] = [
  {
    id: 'a',
    role: 'leader',
    matchLsn: 7,
    lagEntries: 0,
    lagMs: 0,
    lastContactMs: 0,
    connected: true,
    appliedLsn: 7,
    epoch: 3,
  },
]

function context(self: string): FrameContext {
  return {
    self,
    nowMs: () => 1_700_000_000_000,
    appliedLsn: () => 5,
    lagMs: () => 12,
    memberStates: () => members,
    archivedLsn: () => null,
  }
}

function entry(lsn: number, epoch: number): CoreEntry {
  const data = encodeLogEntry({
    epoch,
    lsn,
    kind: EntryKind.Noop,
    ops: [],
    timestampMs: 1_700_000_000_000,
    requestId: '',
  })
  return { lsn, epoch, data }
}

/** Sends `message` from its sender through the wire codec and reads it at its receiver. */
function roundTrip(message: Message): { frame: Frame; back: ReturnType<typeof messageOfFrame> } {
  const frame = frameOfMessage(message, context(message.from))
  const wire = encodeFrame(frame)
  const decoded = decodeFrame(wire.subarray(4))
  return { frame: decoded, back: messageOfFrame(message.to, message.from, decoded) }
}

const base = { from: 'a', to: 'b', epoch: 3 }

describe('frames: message <-> frame translation', () => {
  const messages: Message[] = [
    {
      type: 'append',
      ...base,
      prevLsn: 4,
      prevEpoch: 2,
      entries: [entry(5, 2), entry(6, 3)],
      commitLsn: 4,
      leaderLastLsn: 9,
    },
    {
      type: 'append',
      ...base,
      prevLsn: 9,
      prevEpoch: 3,
      entries: [],
      commitLsn: 9,
      leaderLastLsn: 9,
    },
    { type: 'heartbeat', ...base, commitLsn: 6, leaderLastLsn: 9 },
    { type: 'appendAck', ...base, matchLsn: 6, reject: true, hintLsn: 5 },
    { type: 'heartbeatAck', ...base, matchLsn: 6 },
    { type: 'vote', ...base, lastLsn: 9, lastEpoch: 3, preVote: true, transfer: false },
    { type: 'voteAck', ...base, granted: true, preVote: false },
    { type: 'timeoutNow', ...base },
  ]

  it.each(messages.map((m) => [m.type, m] as const))('%s survives the trip', (_, message) => {
    const { back } = roundTrip(message)
    expect(back.kind).toBe('message')
    if (back.kind !== 'message') return
    expect(back.message).toEqual({
      ...message,
      ...(message.type === 'append'
        ? { entries: message.entries.map((e) => ({ ...e, data: Buffer.from(e.data) })) }
        : {}),
    })
  })

  it('carries what the node adds: the applied LSN, lag, members and the leader clock', () => {
    const ack = roundTrip({ type: 'heartbeatAck', ...base, matchLsn: 6 })
    expect(ack.frame.body).toMatchObject({ kind: 'heartbeatAck', appliedLsn: 5, lagMs: 12 })
    expect(ack.back.kind === 'message' && ack.back.appliedLsn).toBe(5)
    const heartbeat = roundTrip({ type: 'heartbeat', ...base, commitLsn: 6, leaderLastLsn: 9 })
    expect(heartbeat.frame.body).toMatchObject({ leaderClockMs: 1_700_000_000_000 })
    if (heartbeat.back.kind !== 'message') throw new Error('not a message')
    expect(heartbeat.back.members).toEqual(members)
    expect(heartbeat.back.leaderLastLsn).toBe(9)
    expect(heartbeat.back.appliedLsn).toBeNull()
  })

  it("carries a follower's log archive position in heartbeat answers, and members' in heartbeats", () => {
    const message: Message = { type: 'heartbeatAck', ...base, matchLsn: 6 }
    const none = roundTrip(message)
    expect(none.back.kind === 'message' && none.back.archive).toEqual({ lsn: null })
    const withArchive = (archivedLsn: number | null): FrameContext => ({
      ...context('a'),
      archivedLsn: () => archivedLsn,
    })
    for (const lsn of [0, 41]) {
      const frame = decodeFrame(encodeFrame(frameOfMessage(message, withArchive(lsn))).subarray(4))
      const back = messageOfFrame('b', 'a', frame)
      expect(back.kind === 'message' && back.archive).toEqual({ lsn })
    }
    const heartbeat: Message = { type: 'heartbeat', ...base, commitLsn: 6, leaderLastLsn: 9 }
    const archiving = [{ ...(members[0] as MemberState), archiving: true as const, archivedLsn: 4 }]
    const frame = decodeFrame(
      encodeFrame(
        frameOfMessage(heartbeat, { ...context('a'), memberStates: () => archiving }),
      ).subarray(4),
    )
    const back = messageOfFrame('b', 'a', frame)
    expect(back.kind === 'message' && back.members).toEqual(archiving)
    // Other messages say nothing of the archive.
    const vote = roundTrip({ type: 'voteAck', ...base, granted: true, preVote: false })
    expect(vote.back.kind === 'message' && vote.back.archive).toBeNull()
  })

  it('decodes an append entries once, for the node to keep', () => {
    const { back } = roundTrip(messages[0] as Message)
    if (back.kind !== 'message') throw new Error('not a message')
    expect(back.decoded.map((e) => [e.lsn, e.epoch, e.kind])).toEqual([
      [5, 2, EntryKind.Noop],
      [6, 3, EntryKind.Noop],
    ])
  })

  function append(entries: CoreEntry[], prevLsn = 4, prevEpoch = 2, epoch = 3): Frame {
    return frameOfMessage(
      {
        type: 'append',
        ...base,
        epoch,
        prevLsn,
        prevEpoch,
        entries,
        commitLsn: 0,
        leaderLastLsn: 9,
      },
      context('a'),
    )
  }

  it.each([
    ['an LSN gap', append([entry(5, 2), entry(7, 2)])],
    ['an LSN that does not follow prevLsn', append([entry(6, 2)])],
    ['an epoch above the sender', append([entry(5, 4)])],
    ['an epoch below prevEpoch', append([entry(5, 1)])],
    ['epochs going down', append([entry(5, 3), entry(6, 2)])],
  ])('refuses an append with %s (KV_ERR_BAD_FRAME)', (_, frame) => {
    let caught: unknown
    try {
      messageOfFrame('b', 'a', frame)
    } catch (err) {
      caught = err
    }
    expect(caught).toBeInstanceOf(KvError)
    expect((caught as KvError).code).toBe('KV_ERR_BAD_FRAME')
  })

  it('hands snapshot chunks to the receiver and ignores hellos and refusals', () => {
    const chunk: Frame = {
      from: 'a',
      epoch: 3,
      body: {
        kind: 'snapshotChunk',
        snapshotLsn: 9,
        snapshotEpoch: 3,
        sequence: 0,
        records: [],
        requests: [],
        last: true,
        digest: '',
      },
    }
    expect(messageOfFrame('b', 'a', chunk)).toEqual({ kind: 'snapshotChunk' })
    const hello: Frame = {
      from: 'a',
      epoch: 3,
      body: { kind: 'hello', clusterId: 'c', to: 'b', leader: '' },
    }
    expect(messageOfFrame('b', 'a', hello)).toEqual({ kind: 'none' })
  })
})
